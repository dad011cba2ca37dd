"""Sacred ingredients: one per concern (data, model, optimizer, seeding), each a config scope plus captured factories."""

import numbers
import sys
import warnings

# Sacred commands that only show the config: they must work even when the config cannot run.
INSPECTION_COMMANDS = frozenset(
    {"print_config", "print_named_configs", "print_dependencies", "save_config"}
)


def is_int(value) -> bool:
    """An integer (numpy's too), but not a bool (True would pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(key: str, value, ok: bool, expected: str) -> None:
    """Refuse a config value in one sentence naming its key."""
    if not ok:
        raise ValueError(f"{key} must be {expected}, got {value!r}")


def import_sacred_without_pandas() -> None:
    """Import Sacred with pandas hidden: Sacred imports pandas (0.2-0.3 s) only to serialize pandas
    objects in a config, which a run's record never holds, and a run or an empty `reprolab ls`
    needs no pandas. Code that wants pandas imports it as usual afterwards."""
    # Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin (setuptools<82) keeps it working.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    if "sacred" in sys.modules or "pandas" in sys.modules:
        return
    sys.modules["pandas"] = None  # type: ignore[assignment]  # makes `import pandas` fail fast
    try:
        import sacred  # noqa: F401
    finally:
        del sys.modules["pandas"]


import_sacred_without_pandas()  # ingredient modules import Sacred next
