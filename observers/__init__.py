"""Where runs live: attaching stores when a run starts, reading runs back, and the reprolab CLI."""

import warnings

# Sacred 0.8.7 imports pkg_resources, which warns on every start; the pin (setuptools<82) keeps it working.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

from observers.store import RecordError, open_store, resolve_run

__all__ = ["RecordError", "open_store", "resolve_run"]
