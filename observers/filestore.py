"""The default store: Sacred's FileStorageObserver layout, written so that recording stays cheap.

Sacred rewrites the whole metrics.json at every heartbeat, so a heartbeat costs more the longer
the run. Here each heartbeat appends only its new points to metrics.jsonl; when the run ends,
metrics.json is written once in Sacred's layout (so Omniboard-style readers and Sacred's tools
still find it) and the journal is removed. info.json is rewritten only when the info changed.
JSON files are replaced atomically, so a reader never sees half a file.

A write that fails (a full disk, a read-only store) raises StoreWriteError naming the file and
the cause, and leaves what was recorded before as it was: no temporary file, no torn line.
Sources are copied atomically, and a stored copy that does not match its hash is written again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
from pathlib import Path

from sacred.dependencies import get_digest
from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

from observers.files import (
    StoreWriteError,
    durable_step,
    replacing,
    sweep_temporaries,
    utc,
    utc_text,
    writing,
)
from observers.records import MAX_RUN_ID, RUN_FILE_BYTES, is_run_id, loads_plain, read_regular

JOURNAL = "metrics.jsonl"


def write_json_atomic(path: Path, obj, indent: int | None = 2) -> None:
    """Write JSON to a temporary file beside path, then rename it over path.

    indent=None writes compact JSON with the C encoder, several times faster for large files."""
    text = json.dumps(obj, sort_keys=True, indent=indent)
    with writing(path), replacing(path) as f:
        f.write(text)


def append_whole(path: Path, data: bytes) -> None:
    """Append data to path (created if missing), or nothing: a write that fails part-way is cut
    off again."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
    durable_step(path)


def read_journal(path: Path) -> dict:
    """Metrics from a journal in Sacred's metrics.json shape; a torn last line is skipped.

    Read as plain data: observers.records.ObjectEncoding on an object-encoding key; a link or
    a journal over RUN_FILE_BYTES is a RecordError."""
    metrics: dict[str, dict] = {}
    for line in read_regular(path, RUN_FILE_BYTES, follow=False).splitlines():
        try:
            entry = loads_plain(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the line being written right now
        series = metrics.setdefault(entry["name"], {"steps": [], "values": [], "timestamps": []})
        for key in ("steps", "values", "timestamps"):
            series[key] += entry[key]
    return metrics


class FileStore(FileStorageObserver):
    """Sacred's file store with an append-only metrics journal and atomic writes that fail loudly."""

    def __init__(self, basedir: str | os.PathLike, **kwargs):
        super().__init__(str(basedir), **kwargs)
        self._lock = threading.RLock()  # Sacred's heartbeat thread and the run's own beats

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        try:
            started = super().started_event(
                ex_info, command, host_info, utc(start_time), config, meta_info, _id
            )
        except StoreWriteError:
            if self.dir and not os.path.exists(os.path.join(self.dir, "run.json")):
                shutil.rmtree(self.dir, ignore_errors=True)  # no half-made run folder
            self.run_entry = None
            raise
        self._sweep_resumed(config.get("resume") if isinstance(config, dict) else None)
        return started

    def _sweep_resumed(self, ref) -> None:
        """Remove the temporaries a killed run left in its folder when a run resumes it. Only
        that folder: a glob over every run folder at each start took 2 s at 100,000 runs, and
        readers never look at temporaries."""
        if ref is None or isinstance(ref, bool) or not is_run_id(str(ref)):
            return  # a run of another store, named by its path: this writer leaves it alone
        folder = Path(self.basedir) / str(ref)
        with contextlib.suppress(OSError, ValueError):  # best effort, as any sweep
            if folder.is_dir():
                sweep_temporaries(folder)

    def _maximum_existing_run_id(self) -> int:
        """The largest run id among the store's folders, of names is_run_id accepts only (Sacred
        takes any isdigit name: '²' fails its int(), '9223372036854775807' passes the bound)."""
        with os.scandir(self.basedir) as entries:
            ids = [int(e.name) for e in entries if is_run_id(e.name) and e.is_dir()]
        return max(ids, default=0)

    def _make_dir(self, _id):
        if int(_id) > MAX_RUN_ID:
            cause = f"run id {_id} would pass {MAX_RUN_ID:,}, the largest a store numbers runs to"
            raise StoreWriteError(Path(self.basedir) / str(_id), OSError(errno.EOVERFLOW, cause))
        super()._make_dir(_id)

    def _make_run_dir(self, _id):
        with writing(self.basedir):
            super()._make_run_dir(_id)

    def find_or_save(self, filename, store_dir: Path):
        """Sacred's copy of a source or resource, stored once per content as name_md5.ext; written
        atomically, and written again when a stored copy does not match its md5 (cut short)."""
        if not self.copy_artifacts and Path(filename).resolve().is_relative_to(
            Path(self.basedir).resolve()
        ):
            return filename
        name, ext = os.path.splitext(os.path.basename(filename))
        md5 = get_digest(filename)
        store_path = Path(store_dir) / f"{name}_{md5}{ext}"
        with writing(store_path):
            if store_path.is_file() and get_digest(store_path) == md5:
                return store_path
            store_path.parent.mkdir(parents=True, exist_ok=True)
            with open(filename, "rb") as source, replacing(store_path, "wb") as copy:
                shutil.copyfileobj(source, copy)
        return store_path

    def save_json(self, obj, filename):
        write_json_atomic(Path(self.dir) / filename, flatten(obj))

    def save_cout(self):
        with self._lock:
            append_whole(
                Path(self.dir) / "cout.txt", self.cout[self.cout_write_cursor :].encode("utf-8")
            )
            self.cout_write_cursor = len(self.cout)

    def log_metrics(self, metrics_by_name, info):
        """Append this heartbeat's new points, one JSON line per metric (cost: new points only)."""
        lines = [
            json.dumps(
                {
                    "name": name,
                    "steps": series["steps"],
                    "values": series["values"],
                    "timestamps": [utc_text(t) for t in series["timestamps"]],
                }
            )
            for name, series in metrics_by_name.items()
        ]
        if lines:
            with self._lock:
                append_whole(Path(self.dir) / JOURNAL, ("\n".join(lines) + "\n").encode())

    def heartbeat_event(self, info, captured_out, beat_time, result):
        """Sacred's heartbeat (new output appended, run.json rewritten), info.json only if changed."""
        with self._lock:
            self.info = info
            self.run_entry["heartbeat"] = utc_text(beat_time)
            self.run_entry["result"] = result
            self.cout = captured_out
            self.save_cout()
            self.save_json(self.run_entry, "run.json")
            if info:
                flat = flatten(info)
                written = (self.dir, json.dumps(flat, sort_keys=True))  # C encoder: a cheap test
                if written != getattr(self, "_written_info", None):
                    write_json_atomic(Path(self.dir) / "info.json", flat)
                    self._written_info = written

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        """Copy an artifact in atomically; one added again under its name (a checkpoint saved
        every epoch) replaces the file in place instead of being listed twice."""
        if name in ("run.json", "config.json", "cout.txt", "metrics.json"):
            self.save_file(filename, name)  # Sacred refuses to overwrite its own files: it raises
        target = Path(self.dir) / name
        with self._lock:
            with writing(target), open(filename, "rb") as source, replacing(target, "wb") as copy:
                shutil.copyfileobj(source, copy)  # a killed run never leaves half a checkpoint
            if name not in self.run_entry["artifacts"]:
                self.run_entry["artifacts"].append(name)
                self.save_json(self.run_entry, "run.json")

    def _seal_metrics(self) -> None:
        journal = Path(self.dir) / JOURNAL
        if journal.exists():
            metrics = read_journal(journal)
            write_json_atomic(Path(self.dir) / "metrics.json", metrics, indent=None)
            journal.unlink()

    def completed_event(self, stop_time, result):
        """Metrics sealed first: a run whose record cannot be finished is not called COMPLETED."""
        if self.run_entry is not None:
            self._seal_metrics()
            super().completed_event(utc(stop_time), result)

    def interrupted_event(self, interrupt_time, status):
        if self.run_entry is not None:
            super().interrupted_event(utc(interrupt_time), status)
            self._seal_if_possible()

    def failed_event(self, fail_time, fail_trace):
        if self.run_entry is not None:
            super().failed_event(utc(fail_time), fail_trace)
            self._seal_if_possible()

    def _seal_if_possible(self) -> None:
        """After the status is written: where metrics.json cannot be, the journal stays readable."""
        try:
            self._seal_metrics()
        except StoreWriteError:
            pass
