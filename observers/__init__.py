"""The record: writing runs into stores, reading them back, reporting and syncing them."""

from ingredients.sacred_import import import_sacred_without_pandas

import_sacred_without_pandas()  # before anything here imports Sacred

from observers.store import RecordError, open_store, resolve_run

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
    """pandas and matplotlib load only when a table or plot is asked for, not when a run starts."""
    if name in ("load_runs", "load_metrics", "compare"):
        from observers import tables

        return getattr(tables, name)
    if name == "plot_metric":
        from observers.plots import plot_metric

        return plot_metric
    raise AttributeError(f"module 'observers' has no attribute '{name}'")
