"""Reading recorded runs back, whatever store holds them.

`open_store(location)` gives a reader with one interface for a file store directory and for
MongoDB (observers.mongo). Every method returns plain Python data in Sacred's shapes:
run.json's dict, the config, the info, and metrics as {name: {steps, values, timestamps}}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from observers.filestore import JOURNAL, read_journal


class RecordError(LookupError):
    """A run or record file the user named does not exist or cannot be read."""


class RunStore(Protocol):
    location: str  # printable, with any password removed

    def run_ids(self) -> list[int]: ...
    def run(self, run_id: int) -> dict: ...
    def config(self, run_id: int) -> dict: ...
    def info(self, run_id: int) -> dict: ...
    def metrics(self, run_id: int) -> dict: ...
    def artifact(self, run_id: int, name: str) -> bytes: ...
    def sources(self, run_id: int) -> dict[str, bytes]: ...


class FileRunStore:
    """Runs in a directory in Sacred's FileStorageObserver layout (one numbered folder each)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.location = str(self.root)
        if not self.root.is_dir():
            raise RecordError(f"no run store at {self.root} (directory not found)")

    def run_ids(self) -> list[int]:
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir())

    def run_dir(self, run_id: int) -> Path:
        path = self.root / str(run_id)
        if not (path / "run.json").exists():
            raise RecordError(f"no run {run_id} in {self.root}")
        return path

    def _json(self, run_id: int, filename: str, missing=None):
        path = self.run_dir(run_id) / filename
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            if missing is not None:
                return missing
            raise RecordError(f"run {run_id}: {path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"run {run_id}: {path} is damaged ({error})") from None

    def run(self, run_id: int) -> dict:
        return self._json(run_id, "run.json")

    def config(self, run_id: int) -> dict:
        return self._json(run_id, "config.json")

    def info(self, run_id: int) -> dict:
        return self._json(run_id, "info.json", missing={})

    def metrics(self, run_id: int) -> dict:
        run_dir = self.run_dir(run_id)
        for _ in range(2):  # the journal may be sealed into metrics.json between the two looks
            if (run_dir / "metrics.json").exists():
                return self._json(run_id, "metrics.json")
            try:
                return read_journal(run_dir / JOURNAL)
            except FileNotFoundError:
                continue
        return {}

    def artifact(self, run_id: int, name: str) -> bytes:
        path = self.artifact_path(run_id, name)
        return path.read_bytes()

    def artifact_path(self, run_id: int, name: str) -> Path:
        path = self.run_dir(run_id) / name
        if name not in self.run(run_id).get("artifacts", []) or not path.is_file():
            raise RecordError(f"run {run_id} has no artifact '{name}'")
        return path

    def sources(self, run_id: int) -> dict[str, bytes]:
        """Recorded source files by their path relative to the experiment's base directory."""
        files = {}
        for name, stored in self.run(run_id)["experiment"].get("sources", []):
            path = self.root / stored
            if not path.is_file():
                raise RecordError(f"run {run_id}: recorded source {name} is missing ({path})")
            files[name] = path.read_bytes()
        return files


def open_store(location: str | os.PathLike | None = None) -> RunStore:
    """A reader for a store directory or a mongodb:// URL (default: $REPROLAB_MONGO_URL or ./runs)."""
    from observers.attach import DEFAULT_STORE, MONGO_URL_VARIABLE, is_mongo_url

    location = str(location or os.environ.get(MONGO_URL_VARIABLE) or DEFAULT_STORE)
    if is_mongo_url(location):
        from observers.mongo import MongoRunStore

        return MongoRunStore(location)
    return FileRunStore(location)


def resolve_run(ref: str, store: str | None = None) -> tuple[RunStore, int]:
    """A run named by its id in a store, or by the path of its run directory."""
    if not ref.isdigit():
        path = Path(ref)
        if not path.is_dir():
            raise RecordError(f"'{ref}' is neither a run id nor a run directory")
        if not (path / "run.json").is_file() or not path.name.isdigit():
            raise RecordError(f"{path} is not a run directory (no run.json in a numbered folder)")
        return FileRunStore(path.resolve().parent), int(path.name)
    reader = open_store(store)
    if int(ref) not in reader.run_ids():
        raise RecordError(f"no run {ref} in {reader.location}")
    return reader, int(ref)
