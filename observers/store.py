"""Reading recorded runs back, whatever store holds them.

`open_store(location)` gives a reader with one interface for a file store directory and for
MongoDB (observers.mongo_store). Every method returns plain Python data in Sacred's shapes:
run.json's dict, the config, the info, and metrics as {name: {steps, values, timestamps}}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from observers.files import check_name, replacing
from observers.filestore import JOURNAL, read_journal
from observers.location import StoreLocation
from observers.records import (
    MAX_RUN_ID,
    RUN_FILE_BYTES,
    TABLE_BYTES,
    ObjectEncoding,
    RecordError,
    check_metrics,
    expect_object,
    is_run_id,
    load_plain,
    recorded_sources,
    refusal,
    summarize_metrics,
)

# Per-store cache of metric summaries (last/min/max per metric) of sealed metrics.json files,
# keyed by the file's stat (mtime, size, ctime, inode): listing long runs then costs a stat per
# run, not a full parse. An entry whose key or shape does not match is recomputed.
SUMMARY_CACHE = Path(".reprolab") / "metric-summaries.json"
SUMMARY_KEYS = frozenset({"last", "min", "max", "count", "last_step"})
NUMBERS = (int, float)

__all__ = [
    "RecordError",
    "FileRunStore",
    "RunStore",
    "open_store",
    "resolve_run",
    "summarize_metrics",
]


class RunStore(Protocol):
    """What every store offers. A store may also offer `metric_summaries(run_ids)` (see
    FileRunStore) as a faster path; readers fall back to `metrics` when it is absent."""

    location: str  # printable, with any password removed

    def run_ids(self) -> list[int]: ...
    def has_runs(self) -> bool: ...
    def run(self, run_id: int) -> dict: ...
    def config(self, run_id: int) -> dict: ...
    def info(self, run_id: int) -> dict: ...
    def metrics(self, run_id: int) -> dict: ...
    def artifact(self, run_id: int, name: str) -> bytes: ...
    def sources(self, run_id: int) -> dict[str, bytes]: ...


class FileRunStore:
    """Runs in a directory in Sacred's FileStorageObserver layout (one numbered folder each)."""

    def __init__(self, root: str | os.PathLike, cache: bool = True):
        self.root = Path(root)
        self.location = str(self.root)
        self.cache = cache  # keep metric summaries in root/.reprolab (best effort)
        self.skipped: list[str] = []  # notes on entries run_ids() left out
        if not self.root.is_dir():
            raise RecordError(f"no run store at {self.root} (directory not found)")

    def run_ids(self) -> list[int]:
        """The ids of the store's run folders; odd entries are left out, with a note in
        self.skipped (a name of non-ASCII digits, a linked folder from outside the store)."""
        ids, inodes, self.skipped = [], [], []
        real_root = self.root.resolve()
        with os.scandir(self.root) as entries:  # type and inode without a stat per entry
            for entry in entries:
                name = entry.name
                if not is_run_id(name):
                    if name.isdigit():  # digits of another script, superscripts, a leading zero
                        self.skipped.append(f"skipped {self.root / name}: {_not_a_run_id(name)}")
                    continue
                if not entry.is_dir():
                    continue
                link = self.root / name if entry.is_symlink() else None
                if link and not link.resolve().is_relative_to(real_root):
                    self.skipped.append(
                        f"skipped {link}: a link to {link.resolve()}, outside the store"
                    )
                    continue
                ids.append(int(name))
                inodes.append(entry.inode())
        self.listing = (ids, inodes)  # each run folder's inode, in listing order (the index)
        self.folders = dict(zip(ids, inodes, strict=True))  # run id -> its folder's inode
        return sorted(ids)

    def has_runs(self) -> bool:
        """Whether a folder named as a run is there (the first one found ends the look; run_ids
        may still leave it out, so this only tells an empty store quickly)."""
        with os.scandir(self.root) as entries:
            return any(is_run_id(entry.name) and entry.is_dir() for entry in entries)

    def run_dir(self, run_id: int) -> Path:
        path = self.root / str(run_id)
        if path.is_symlink() and not path.resolve().is_relative_to(self.root.resolve()):
            raise RecordError(f"run {run_id}: {path} links to {path.resolve()}, outside the store")
        if not (path / "run.json").exists():
            if (
                path.is_dir()
            ):  # starting (Sacred writes run.json after making the folder) or damaged
                raise RecordError(f"run {run_id}: {path / 'run.json'} is missing")
            raise RecordError(f"no run {run_id} in {self.root}")
        return path

    def _json(self, run_id: int, filename: str, missing=None):
        path = self.run_dir(run_id) / filename
        try:  # not through a link, which could show a file outside the store
            return load_plain(path, RUN_FILE_BYTES, follow=False)
        except ObjectEncoding as error:
            raise refusal(f"run {run_id}: {path}", error.key) from None
        except FileNotFoundError:
            if missing is not None:
                return missing
            raise RecordError(f"run {run_id}: {path} is missing") from None
        except RecordError as error:  # not a regular file, a link, too big
            raise RecordError(f"run {run_id}: {error}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"run {run_id}: {path} is damaged ({error})") from None

    def run(self, run_id: int) -> dict:
        return expect_object(self._json(run_id, "run.json"), f"run {run_id}: run.json")

    def config(self, run_id: int) -> dict:
        return expect_object(self._json(run_id, "config.json"), f"run {run_id}: config.json")

    def info(self, run_id: int) -> dict:
        info = self._json(run_id, "info.json", missing={})
        return expect_object(info, f"run {run_id}: info.json")

    def metrics(self, run_id: int) -> dict:
        run_dir = self.run_dir(run_id)
        for _ in range(2):  # the journal may be sealed into metrics.json between the two looks
            if (run_dir / "metrics.json").exists():
                metrics = self._json(run_id, "metrics.json")
                return check_metrics(metrics, f"run {run_id}", "metrics.json")
            try:
                return read_journal(run_dir / JOURNAL)
            except ObjectEncoding as error:
                raise refusal(f"run {run_id}: {run_dir / JOURNAL}", error.key) from None
            except FileNotFoundError:
                continue
            except RecordError as error:  # not a regular file
                raise RecordError(f"run {run_id}: {error}") from None
        return {}

    def metric_summaries(self, run_ids: list[int]) -> dict[int, dict | RecordError]:
        """summarize_metrics of each run, or the RecordError that kept it from being read.

        Sealed metrics.json files are summarised once and cached by mtime and size; a run
        still in progress (journal) is summarised afresh on every call."""
        cached = self._read_summary_cache()
        fresh: dict[str, dict] = {}
        summaries: dict[int, dict | RecordError] = {}
        for run_id in run_ids:
            try:
                summaries[run_id] = self._summary(run_id, cached, fresh)
            except RecordError as error:
                summaries[run_id] = error
            except (AttributeError, KeyError, TypeError, OverflowError) as error:  # wrong shape
                summaries[run_id] = RecordError(
                    f"run {run_id}: metrics not in Sacred's shape ({error!r})"
                )
        if fresh:
            self._write_summary_cache({**cached, **fresh})
        return summaries

    def _summary(self, run_id: int, cached: dict, fresh: dict) -> dict:
        try:
            stat = (self.root / str(run_id) / "metrics.json").stat()
        except FileNotFoundError:
            return summarize_metrics(self.metrics(run_id))  # in progress: the journal
        key = [stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns, stat.st_ino]
        entry = cached.get(str(run_id))
        if (
            isinstance(entry, dict)
            and entry.get("key") == key
            and _is_summary(entry.get("summary"))
        ):
            return entry["summary"]
        metrics = self._json(run_id, "metrics.json")
        summary = summarize_metrics(check_metrics(metrics, f"run {run_id}", "metrics.json"))
        fresh[str(run_id)] = {"key": key, "summary": summary}
        return summary

    def _read_summary_cache(self) -> dict:
        if not self.cache:
            return {}
        try:
            entries = load_plain(self.root / SUMMARY_CACHE, TABLE_BYTES)
            return entries if isinstance(entries, dict) else {}
        except (OSError, ValueError, RecordError):  # ObjectEncoding is a ValueError too
            return {}  # no cache yet, or a damaged one: rebuilt below

    def _write_summary_cache(self, entries: dict) -> None:
        if not self.cache:
            return
        with os.scandir(self.root) as found:  # not run_ids(): it would reset self.skipped
            present = {entry.name for entry in found if is_run_id(entry.name)}
        entries = {k: v for k, v in entries.items() if k in present}
        path = self.root / SUMMARY_CACHE
        try:
            path.parent.mkdir(exist_ok=True)
            with replacing(path) as f:
                json.dump(entries, f)
        except OSError:
            pass  # a read-only store is read without a cache

    def artifact(self, run_id: int, name: str) -> bytes:
        path = self.artifact_path(run_id, name)
        return path.read_bytes()

    def artifact_path(self, run_id: int, name: str) -> Path:
        run_dir = self.run_dir(run_id)
        path = run_dir / name
        run = self.run(run_id)
        artifacts = run.get("artifacts", []) if isinstance(run, dict) else None
        if not isinstance(artifacts, list) or name not in artifacts or not path.is_file():
            raise RecordError(f"run {run_id} has no artifact '{name}'")
        if not _within(path, run_dir):  # a record names only files of its own run folder
            raise RecordError(f"run {run_id}: artifact '{name}' lies outside the run's folder")
        return path

    def sources(self, run_id: int) -> dict[str, bytes]:
        """Recorded source files by their path relative to the experiment's base directory."""
        files = {}
        for name, stored in recorded_sources(self.run(run_id), run_id):
            path = self.root / stored if isinstance(stored, str) else None
            if path is None or not _within(path, self.root / "_sources"):
                raise RecordError(
                    f"run {run_id}: recorded source {name} is stored at {stored}, "
                    "outside the store's _sources folder"
                )
            if not path.is_file():
                raise RecordError(f"run {run_id}: recorded source {name} is missing ({path})")
            files[name] = path.read_bytes()
        return files


def _not_a_run_id(name: str) -> str:
    """Why a name of digits is no run's."""
    if name.isascii() and name[0] != "0":
        return f"a run id over {MAX_RUN_ID:,}, the largest a store numbers runs to"
    return "not a run id (runs are numbered 1, 2, 3, ... in ASCII digits)"


def _within(path: Path, folder: Path) -> bool:
    """Whether path, links resolved, lies inside folder (also resolved); a name the system
    cannot hold (a NUL byte, a link loop) lies nowhere."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, RuntimeError):
        return False


def _is_summary(summary) -> bool:
    """Whether a cached summary has summarize_metrics' shape (a damaged cache is recomputed)."""
    return isinstance(summary, dict) and all(
        type(stats) is dict
        and SUMMARY_KEYS <= stats.keys()
        and type(stats["last"]) in NUMBERS
        and type(stats["min"]) in NUMBERS
        and type(stats["max"]) in NUMBERS
        and type(stats["count"]) is int
        for stats in summary.values()
    )


def open_store(location: str | os.PathLike | StoreLocation | None = None) -> RunStore:
    """A reader for a store directory or a mongodb:// URL (default: $REPROLAB_MONGO_URL or ./runs)."""
    store = StoreLocation.parse(location)
    if store.is_mongo:
        from observers.mongo_store import MongoRunStore  # pymongo only when asked for

        return MongoRunStore(store.secret)
    return FileRunStore(store.secret)


def resolve_run(ref: str, store: str | None = None) -> tuple[RunStore, int]:
    """A run named by its id in a store, or by the path of its run directory."""
    if not is_run_id(ref):
        path = Path(ref)
        for part in path.parts:  # a name no folder can hold: one sentence, not OSError
            check_name(part, "run directory")
        if not path.is_dir():
            raise RecordError(f"'{ref}' is neither a run id nor a run directory")
        if not (path / "run.json").is_file() or not is_run_id(path.name):
            raise RecordError(f"{path} is not a run directory (no run.json in a numbered folder)")
        return FileRunStore(path.resolve().parent), int(path.name)
    reader = open_store(store)
    if int(ref) not in reader.run_ids():
        raise RecordError(f"no run {ref} in {reader.location}")
    return reader, int(ref)
