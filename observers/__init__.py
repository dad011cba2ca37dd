"""Where runs live: attaching stores when a run starts, reading runs back, and the reprolab CLI."""

from ingredients.sacred_import import import_sacred_without_pandas

import_sacred_without_pandas()  # before anything here imports Sacred

from observers.store import RecordError, open_store, resolve_run

# pandas and matplotlib load only when a table or plot is asked for, not when a run starts.
_LAZY = {
    "load_runs": "observers.tables",
    "load_metrics": "observers.tables",
    "compare": "observers.tables",
    "plot_metric": "observers.plots",
}

__all__ = [
    "RecordError",
    "compare",
    "load_metrics",
    "load_runs",
    "open_store",
    "plot_metric",
    "resolve_run",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'observers' has no attribute '{name}'")
