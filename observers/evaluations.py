"""Evaluations of a recorded run, kept apart from what the run recorded: in a file store
`evaluations.json` beside its run.json, appended by replacing the file whole, never touching
run.json, info.json or metrics.json; in MongoDB one document per evaluation in a collection of
their own (observers/mongo_store.py), never touching the run's document."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

from observers.files import replacing, utc_text
from observers.records import MAX_EVALUATIONS, ObjectEncoding, load_plain, refusal
from observers.store import FileRunStore, RecordError, RunStore

FILE = "evaluations.json"


@runtime_checkable
class KeepsEvaluations(Protocol):
    """A store that keeps evaluations itself (MongoRunStore)."""

    def evaluations(self, run_id: int) -> list[dict]: ...
    def add_evaluation(self, run_id: int, entry: dict) -> None: ...


def _path(store: FileRunStore, run_id: int) -> Path:
    return store.run_dir(run_id) / FILE


def read_evaluations(store: RunStore, run_id: int) -> list[dict]:
    """The run's evaluations, oldest first ([] when none)."""
    if isinstance(store, KeepsEvaluations):
        return store.evaluations(run_id)
    if not isinstance(store, FileRunStore):
        return []
    path = _path(store, run_id)
    if not path.is_file():
        return []
    try:
        entries = load_plain(path)
    except ObjectEncoding as error:
        raise refusal(f"run {run_id}'s {FILE}", error.key) from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RecordError(f"run {run_id}'s {FILE} is not a list of evaluations")
    return entries


def add_evaluation(store: RunStore, run_id: int, result: dict) -> None:
    """Add one evaluation (stamped with the time) in one atomic act, at most MAX_EVALUATIONS."""
    entries = read_evaluations(store, run_id)
    if len(entries) >= MAX_EVALUATIONS:
        raise RecordError(
            f"run {run_id} already keeps {len(entries)} evaluations in {store.location}, "
            f"the {MAX_EVALUATIONS} a run may hold"
        )
    entry = {"time": utc_text(dt.datetime.now(dt.UTC)), **result}
    if isinstance(store, KeepsEvaluations):
        store.add_evaluation(run_id, entry)
        return
    if not isinstance(store, FileRunStore):
        raise RecordError(f"{store.location} keeps no evaluations")
    with replacing(_path(store, run_id)) as f:
        json.dump([*entries, entry], f, indent=1)


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
