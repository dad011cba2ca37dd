"""Import paths in the config ('package.module:callable'): found where a Python user expects, never
from inside a run store, and recorded so a rerun can compare the code it finds now with it.

The module is looked for on Python's path (PYTHONPATH and the installed packages), then in the
current directory (as `python -m` would): where the user's Python finds it now, never in a folder
a record names. Where each module lies is checked before anything of it is imported: a run store
is data that others may write, so code inside one is never imported.
An import path that a record chose (a rerun's or a resumed run's config) may name only the user's
own code: never Python's or an installed package's (`torch.hub:load` would run whatever folder
the record's kwargs name), unless the user names it again themselves.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Callable
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from ingredients.checkout import run_store_around

FROM_RECORD_VARIABLE = "REPROLAB_FROM_RECORD"  # set by `reprolab rerun`: how to trust its record
RESOLVED: dict[str, dict] = {}  # config key -> the import path, its file and what was searched
FROM_RECORD: dict[str, str] = {}  # config key a record chose -> how the user can run it anyway


def chosen_by_record(key: str) -> str | None:
    """How to run installed code named by `key` when a record chose its value; None: the user did."""
    return FROM_RECORD.get(key) or os.environ.get(FROM_RECORD_VARIABLE) or None


@functools.cache
def installed_locations() -> tuple[str, ...]:
    """Where the standard library and installed distributions live (as given and resolved)."""
    paths = sysconfig.get_paths()
    found = [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    found += site.getsitepackages() + [site.getusersitepackages()]
    both = {str(Path(p)) for p in found} | {str(Path(p).resolve()) for p in found}
    return tuple(sorted(place + os.sep for place in both))


def installed_code(file: str | None) -> bool:
    """Whether a module file is Python's own or an installed distribution's (no file: built in)."""
    return file is None or os.path.realpath(file).startswith(installed_locations())


def search_path() -> list[str]:
    """Folders searched, in order: Python's path, then the current directory."""
    entries = [os.path.abspath(p or ".") for p in sys.path] + [os.getcwd()]
    return list(dict.fromkeys(e for e in entries if os.path.isdir(e)))


def _locate(module_name: str, extra: list[str]) -> tuple[list[ModuleSpec], str | None] | None:
    """Specs of the module and its parent packages, found without running any of them (Python's
    own finders first, editable installs included, then the `extra` folders), and the extra
    folder it was found in (None: Python finds it by itself); None when it is nowhere."""
    parts = module_name.split(".")
    try:
        spec, entry = importlib.util.find_spec(parts[0]), None  # a top-level name runs nothing
    except (ImportError, ValueError):
        spec, entry = None, None
    for folder in extra if spec is None else ():
        spec, entry = PathFinder.find_spec(parts[0], [folder]), folder
        if spec is not None:
            break
    if spec is None:
        return None
    specs = [spec]
    for depth in range(2, len(parts) + 1):
        locations = specs[-1].submodule_search_locations
        spec = PathFinder.find_spec(".".join(parts[:depth]), list(locations or []))
        if spec is None:
            return None
        specs.append(spec)
    return specs, entry


def module_file(module_name: str, extra: list[str]) -> str | None:
    """The file Python would import for a dotted module name now (its own finders, then the
    `extra` folders), found without running any of it; None when it is nowhere or not a name."""
    if not all(part.isidentifier() for part in module_name.split(".")):
        return None
    found = _locate(module_name, extra)
    origin = found[0][-1].origin if found else None
    return origin if origin and os.path.isabs(origin) else None


def _files(spec: ModuleSpec) -> list[str]:
    return (
        [spec.origin]
        if spec.origin and os.path.isabs(spec.origin)
        else list(spec.submodule_search_locations or [])
    )


def import_callable(key: str, path: str) -> Callable:
    """The callable that `path` ('package.module:callable') names; `key` names the config key in
    every error, each one sentence."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{key}: '{path}' is not an import path 'package.module:callable'")
    searched = search_path()
    if module_name in sys.modules:
        files = [getattr(sys.modules[module_name], "__file__", None)]
    else:
        found = _locate(module_name, [os.getcwd()])
        if found is None:
            python_path = os.environ.get("PYTHONPATH") or "not set"
            raise ValueError(
                f"{key}: cannot import '{path}': no module '{module_name}' in the current "
                f"directory ({os.getcwd()}), on PYTHONPATH ({python_path}) or among the "
                f"installed packages"
            )
        specs, entry = found
        files = [f for spec in specs for f in _files(spec)] or [None]
        for file in filter(None, files):
            store = run_store_around(file)
            if store is not None:
                raise ValueError(
                    f"{key}: refusing to import '{path}' from {file}: it lies inside the run "
                    f"store {store}, and code kept in a run store is never run"
                )
        if entry is not None:
            sys.path.append(entry)  # after the installed packages: it never shadows one of them
    remedy = chosen_by_record(key)
    if remedy and installed_code(files[-1]):
        raise ValueError(
            f"{key}: the record names '{path}', installed code ({files[-1] or 'built in'}) rather "
            f"than your own, and a record does not choose what runs; {remedy}"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{key}: cannot import '{path}': {error}") from None
    if not callable(factory):
        raise ValueError(f"{key}: '{path}' is not callable")
    RESOLVED[key] = {
        "import_path": path,
        "file": getattr(sys.modules[module_name], "__file__", None),
        "searched": searched,
    }
    return factory
