"""The checkout reprolab runs from, and the one rule for "this folder is a run store".

A run store is data that others may write, so no code inside one is ever imported or run, and
its files are the project's output, not its code (never listed as untracked sources).
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT_ROOT = Path(__file__).resolve().parents[1]  # the repository this reprolab runs from
STORE_MARKERS = ("_sources", ".reprolab", "run.json")  # a store's sources and cache, a run's record


def looks_like_store(folder: Path) -> bool:
    """Whether a folder is a run store or a run, by Sacred's file-store layout: a store's
    `_sources` or `.reprolab`, a run's `run.json`, or numbered folders holding a run.json."""
    if any((folder / marker).exists() for marker in STORE_MARKERS):
        return True
    try:
        return any(
            child.name.isdigit() and (child / "run.json").is_file() for child in folder.iterdir()
        )
    except OSError:
        return False


def run_store_around(path: str | os.PathLike) -> Path | None:
    """The run store (or run directory) a file or folder lies in, itself included."""
    real = Path(os.path.realpath(path))
    return next((folder for folder in [real, *real.parents] if looks_like_store(folder)), None)


def in_run_store(
    path: Path, store_root: str | os.PathLike | None = None, root: Path = CHECKOUT_ROOT
) -> bool:
    """Whether a path of the checkout at `root` lies in the store being read (`store_root`) or
    in any folder between it and the checkout's root that looks like a run store."""
    if store_root is not None and path.is_relative_to(Path(store_root).resolve()):
        return True
    for folder in path.parents:
        if folder == root or not folder.is_relative_to(root):
            return False
        if looks_like_store(folder):
            return True
    return False


def resolve_path(path: str | Path, cwd: Path | None = None, root: Path = CHECKOUT_ROOT) -> Path:
    """Absolute path of the data file: a relative path is looked up in the working directory,
    then in the code's root (so the bundled dataset is found from anywhere). A rerun passes the
    directory and root its run will have."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p.resolve()
    if ((cwd or Path.cwd()) / p).exists():
        return ((cwd or Path.cwd()) / p).resolve()
    return (root / p).resolve()


def looked_in(path: str | Path, cwd: Path | None = None, root: Path = CHECKOUT_ROOT) -> str:
    """' (looked in A and B)': where resolve_path looks for a relative path, each folder once;
    nothing for an absolute one."""
    if Path(path).expanduser().is_absolute():
        return ""
    folders = dict.fromkeys([str((cwd or Path.cwd()).resolve()), str(root)])
    return f" (looked in {' and '.join(folders)})"
