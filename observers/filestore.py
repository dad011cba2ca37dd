"""The default store: Sacred's FileStorageObserver layout, written so that recording stays cheap.

Sacred rewrites the whole metrics.json at every heartbeat, so a heartbeat costs more the longer
the run. Here each heartbeat appends only its new points to metrics.jsonl; when the run ends,
metrics.json is written once in Sacred's layout (so Omniboard-style readers and Sacred's tools
still find it) and the journal is removed. info.json is rewritten only when the info changed.
JSON files are replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

from observers.files import replacing, utc, utc_text

JOURNAL = "metrics.jsonl"


def write_json_atomic(path: Path, obj, indent: int | None = 2) -> None:
    """Write JSON to a temporary file beside path, then rename it over path.

    indent=None writes compact JSON with the C encoder, several times faster for large files."""
    text = json.dumps(obj, sort_keys=True, indent=indent)
    with replacing(path) as f:
        f.write(text)


def read_journal(path: Path) -> dict:
    """Metrics from a journal in Sacred's metrics.json shape; a torn last line is skipped."""
    metrics: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written right now
            series = metrics.setdefault(entry["name"], {"steps": [], "values": [], "timestamps": []})
            for key in ("steps", "values", "timestamps"):
                series[key] += entry[key]
    return metrics


class FileStore(FileStorageObserver):
    """Sacred's file store with an append-only metrics journal and atomic JSON writes."""

    def __init__(self, basedir: str | os.PathLike, **kwargs):
        super().__init__(str(basedir), **kwargs)

    def save_json(self, obj, filename):
        write_json_atomic(Path(self.dir) / filename, flatten(obj))

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
            with open(Path(self.dir) / JOURNAL, "a") as f:
                f.write("\n".join(lines) + "\n")

    def heartbeat_event(self, info, captured_out, beat_time, result):
        """Sacred's heartbeat (new output appended, run.json rewritten), info.json only if changed."""
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
        tmp = Path(self.dir) / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        self.save_file(filename, tmp.name)
        os.replace(tmp, Path(self.dir) / name)  # a killed run never leaves half a checkpoint
        if name not in self.run_entry["artifacts"]:
            self.run_entry["artifacts"].append(name)
            self.save_json(self.run_entry, "run.json")

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        return super().started_event(ex_info, command, host_info, utc(start_time), config,
                                     meta_info, _id)

    def _seal_metrics(self) -> None:
        journal = Path(self.dir) / JOURNAL
        if journal.exists():
            metrics = read_journal(journal)
            write_json_atomic(Path(self.dir) / "metrics.json", metrics, indent=None)
            journal.unlink()

    def completed_event(self, stop_time, result):
        self._seal_metrics()
        super().completed_event(utc(stop_time), result)

    def interrupted_event(self, interrupt_time, status):
        self._seal_metrics()
        super().interrupted_event(utc(interrupt_time), status)

    def failed_event(self, fail_time, fail_trace):
        self._seal_metrics()
        super().failed_event(utc(fail_time), fail_trace)
