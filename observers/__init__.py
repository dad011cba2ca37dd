"""Where runs live: attaching stores when a run starts, reading runs back, and the reprolab CLI."""

import warnings

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin (setuptools<82) keeps it working.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from observers.store import RecordError, open_store, resolve_run

# pandas and matplotlib load only when a table or plot is asked for, not when a run starts.
_LAZY = {"load_runs": "observers.tables", "load_metrics": "observers.tables",
         "compare": "observers.tables", "plot_metric": "observers.plots"}

__all__ = ["RecordError", "compare", "load_metrics", "load_runs", "open_store", "plot_metric",
           "resolve_run"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'observers' has no attribute '{name}'")
