"""Sacred ingredients: one per concern (data, model, optimizer, seeding), each a config scope plus captured factories."""

import numbers

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
