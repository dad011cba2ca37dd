"""Importing Sacred without pandas, before any module of this project imports Sacred."""

from __future__ import annotations

import sys
import warnings


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
