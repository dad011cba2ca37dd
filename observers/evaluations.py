"""Evaluations of a recorded run, kept apart from what the run recorded: `evaluations.json`
beside its run.json (file store), appended by replacing the file whole, never touching
run.json, info.json or metrics.json. MongoDB stores are not supported yet."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from observers.files import replacing, utc_text
from observers.store import FileRunStore, RecordError, RunStore

FILE = "evaluations.json"


def _path(store: RunStore, run_id: int) -> Path:
    if not isinstance(store, FileRunStore):
        raise RecordError(f"evaluations are kept in file stores only; {store.location} is not one")
    return store.run_dir(run_id) / FILE


def read_evaluations(store: RunStore, run_id: int) -> list[dict]:
    """The run's evaluations, oldest first ([] when none or not a file store)."""
    if not isinstance(store, FileRunStore):
        return []
    path = store.run_dir(run_id) / FILE
    return json.loads(path.read_text()) if path.is_file() else []


def add_evaluation(store: RunStore, run_id: int, result: dict) -> list[dict]:
    """Append one evaluation (stamped with the time) atomically; returns them all."""
    path = _path(store, run_id)
    entries = read_evaluations(store, run_id)
    entries.append({"time": utc_text(dt.datetime.now(dt.UTC)), **result})
    with replacing(path) as f:
        json.dump(entries, f, indent=1)
    return entries


def evaluation_lines(store: RunStore, run_id: int) -> list[str]:
    """`reprolab show`'s lines about a run's evaluations."""
    entries = read_evaluations(store, run_id)
    if not entries:
        return []
    lines = ["evaluations:"]
    for e in entries:
        accuracy = f"  accuracy {e['accuracy']:.4f}" if e.get("accuracy") is not None else ""
        lines.append(
            f"  {e['time']}  {e['data']} ({e.get('split') or 'all'}, {e['rows']} rows)  "
            f"loss {e['loss']:.4f}{accuracy}"
        )
    return lines
