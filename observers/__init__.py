"""Where runs live: attaching stores when a run starts, reading runs back, and the reprolab CLI."""

from observers.store import RecordError, open_store, resolve_run

__all__ = ["RecordError", "open_store", "resolve_run"]
