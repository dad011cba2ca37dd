"""The default store: Sacred's FileStorageObserver layout, written so that recording stays cheap.

Sacred rewrites the whole metrics.json at every heartbeat, so a heartbeat costs more the longer
the run. Here each heartbeat appends only its new points to metrics.jsonl; when the run ends,
metrics.json is written once in Sacred's layout (so Omniboard-style readers and Sacred's tools
still find it) and the journal is removed. JSON files are replaced atomically, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

JOURNAL = "metrics.jsonl"


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temporary file beside path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, sort_keys=True, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
        lines = [
            json.dumps(
                {
                    "name": name,
                    "steps": series["steps"],
                    "values": series["values"],
                    "timestamps": [t.isoformat() for t in series["timestamps"]],
                }
            )
            for name, series in metrics_by_name.items()
        ]
        if lines:
            with open(Path(self.dir) / JOURNAL, "a") as f:
                f.write("\n".join(lines) + "\n")

    def _seal_metrics(self) -> None:
        journal = Path(self.dir) / JOURNAL
        if journal.exists():
            write_json_atomic(Path(self.dir) / "metrics.json", read_journal(journal))
            journal.unlink()

    def completed_event(self, stop_time, result):
        self._seal_metrics()
        super().completed_event(stop_time, result)

    def interrupted_event(self, interrupt_time, status):
        self._seal_metrics()
        super().interrupted_event(interrupt_time, status)

    def failed_event(self, fail_time, fail_trace):
        self._seal_metrics()
        super().failed_event(fail_time, fail_trace)
