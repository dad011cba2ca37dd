"""A run whose process is gone, recognised where its record is read.

A killed run cannot write its own end, so its record says RUNNING for good. Readers show such a
run as DEAD without rewriting the record: the store may be read-only or another user's, and a
reader that rewrote it could race a live writer on another host whose heartbeat is only late.
On this host the run's process (pid, start time: run.json's meta.process) decides for certain;
for a run of another host, or one recorded before processes were, a heartbeat older than
STALE_HEARTBEAT does.
"""

from __future__ import annotations

import datetime as dt

from ingredients.processes import process_alive
from observers.files import STALE_HEARTBEAT, record_time

DEAD = "DEAD"  # read as RUNNING, but its process is gone


def process_gone(run: dict, now: dt.datetime | None = None) -> bool:
    """Whether a run recorded as RUNNING has no process left: by pid and start time on this
    host, else by a stale heartbeat (a record of any shape is read without error)."""
    if not isinstance(run, dict) or run.get("status") != "RUNNING":
        return False
    meta = run.get("meta")
    alive = process_alive(meta.get("process") if isinstance(meta, dict) else None)
    if alive is not None:
        return not alive
    try:  # before its first heartbeat, the run's start is its last sign of life
        beat = record_time(run.get("heartbeat") or run.get("start_time"))
    except (TypeError, ValueError):
        return False
    return beat is not None and (now or dt.datetime.now(dt.UTC)) - beat > STALE_HEARTBEAT


def status_now(run: dict) -> object:
    """run.json's status as it stands now: DEAD for a RUNNING run whose process is gone."""
    status = run.get("status") if isinstance(run, dict) else None
    return DEAD if process_gone(run) else status
