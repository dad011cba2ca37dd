"""A run's sources: every module of this repository it imported, and the user's own code from
outside it, each with its hash and its repository's git state (gathered once per run)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sacred.dependencies import Source, get_digest
from sacred.utils import get_by_dotted_path

from ingredients.checkout import CHECKOUT_ROOT
from ingredients.imports import RESOLVED, installed_locations
from observers.provenance import git

# Installed packages live under these, also in a virtualenv inside the repository (venv/, env/).
INSTALLED_PARTS = frozenset({".venv", "site-packages", "dist-packages"})


def is_own_code(file: str) -> bool:
    """Whether a file is part of this repository and not an installed package inside it."""
    path = Path(file).resolve()
    return path.is_relative_to(CHECKOUT_ROOT) and not INSTALLED_PARTS & set(
        path.relative_to(CHECKOUT_ROOT).parts
    )


def own_modules() -> tuple[list[str], dict[str, str]]:
    """Files of the imported modules that are this repository's (Sacred only sees direct
    imports), and {module: file} of those that are the user's own code outside it (cwd,
    PYTHONPATH, a sibling folder, an editable install). Files of the standard library and of
    installed distributions are skipped by their path's prefix before anything is resolved
    (there are over a thousand with torch loaded)."""
    installed = installed_locations()
    inside, outside = set(), {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (
            not isinstance(file, str)
            or not file.endswith(".py")
            or not os.path.isabs(file)
            or file.startswith(installed)
        ):
            continue
        if is_own_code(file):
            inside.add(file)
            continue
        path = Path(file).resolve()
        if (
            path.is_file()
            and not path.is_relative_to(CHECKOUT_ROOT)
            and not INSTALLED_PARTS & set(path.parts)
            and not str(path).startswith(installed)
        ):
            outside.setdefault(str(path), name)
    return sorted(inside), {name: file for file, name in sorted(outside.items())}


def import_root(module: str, file: str) -> str:
    """The search-path folder a module was imported from: its file less the module's dotted name
    (/x/pkg/mod.py of pkg.mod, or /x/pkg/__init__.py of pkg, gives /x)."""
    path, parts = Path(file), module.split(".")
    stem = path.parent if path.name == "__init__.py" else path.with_suffix("")
    if module == "__main__" or stem.parts[-len(parts) :] != tuple(parts):
        return str(path.parent)
    return str(stem.parents[len(parts) - 1])


def repository_state(directory: str) -> tuple[str | None, str | None, bool | None]:
    """(url, commit, dirty) of the git repository holding `directory`, as Sacred records them,
    from three git calls per repository (Sacred asks git once per source file, twice)."""
    top_and_head = git(Path(directory), "rev-parse", "--show-toplevel", "HEAD")
    if top_and_head is None:
        return None, None, None
    top, commit = top_and_head.split()[:2]
    dirty = bool((git(Path(top), "status", "--porcelain", "--untracked-files=no") or "").strip())
    url = (git(Path(top), "config", "--get", "remote.origin.url") or "").strip()
    return url or "git:/" + top, commit, dirty


# Set while configs are only checked (sweeps/command.py's validate): no checked run is recorded,
# so the sources (a scan of every imported module and three git calls) are gathered once.
_checking: dict[str, tuple[list[Source], dict[str, str]]] | None = None


@contextmanager
def gathered_once() -> Iterator[None]:
    """While the block checks configs, gather the sources for the first and reuse them."""
    global _checking
    _checking = {}
    try:
        yield
    finally:
        _checking = None


def own_sources() -> tuple[list[Source], dict[str, str]]:
    """Sources of this repository's imported modules and of the user's code outside it, each
    with its hash and its repository's git state; and {module: file} of the ones outside."""
    if _checking is not None:
        if "sources" not in _checking:
            _checking["sources"] = gather_sources()
        return _checking["sources"]
    return gather_sources()


def gather_sources() -> tuple[list[Source], dict[str, str]]:
    states = functools.cache(repository_state)  # asked once per folder and run, never reused
    inside, outside = own_modules()
    sources = [Source(file, get_digest(file), *states(str(CHECKOUT_ROOT))) for file in inside]
    for module, file in outside.items():
        sources.append(Source(file, get_digest(file), *states(import_root(module, file))))
    return sources, outside


def record_sources(ex, run) -> None:
    """Every module of the user's own code imported by now, the run's setup and a model given
    by import path included (Sacred only sees the experiment's direct imports), becomes one of
    the run's sources: the repository's by their path in it, the rest by absolute path, with
    the folder each was imported from in the info, so a rerun finds them there again."""
    sources, outside = own_sources()
    known = {source.filename for source in sources}
    gathered = set().union(*(ingredient.sources for ingredient, _ in ex.traverse_ingredients()))
    sources += [s for s in gathered if s.filename not in known]
    run.experiment_info["sources"] = [
        (s.filename, s.digest) if s.filename in outside.values() else s.to_json(ex.base_dir)
        for s in sorted(sources)
    ]
    repositories = {(s.repo, s.commit, s.is_dirty) for s in sources if s.repo}
    run.experiment_info["repositories"] = [
        {"url": url, "commit": commit, "dirty": dirty}
        for url, commit, dirty in sorted(repositories)
    ]
    if outside:
        run.info["outside_code"] = {
            "roots": sorted({import_root(module, file) for module, file in outside.items()}),
            "modules": outside,
        }
    resolved = {
        key: found
        for key, found in RESOLVED.items()  # this run's, not an earlier one's
        if get_by_dotted_path(run.config, key) == found["import_path"]
    }
    if resolved:
        run.info["import_paths"] = resolved
