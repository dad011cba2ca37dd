"""Which process wrote a record, and whether it still runs.

A pid alone is reused by the system, so a process is named by its pid, its start time (clock
ticks since boot, field 22 of /proc/<pid>/stat) and its host. On this host that tells a live
writer from a dead one for certain; on another host it cannot be told, and the reader falls back
on the record's age (a heartbeat, a claim's time).
"""

from __future__ import annotations

import os

from ingredients.scratch import HOST


def start_time(pid: int) -> int | None:
    """The start time of process pid (clock ticks since boot), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields follow the last ')'
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        return None if fields[0] == b"Z" else int(fields[19])  # a zombie has ended
    except (IndexError, ValueError):
        return None


def this_process(pid: int | None = None) -> dict:
    """{"pid", "start", "host"} of this process (or of pid, a process of this host)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_time(pid), "host": HOST}


def process_alive(record: object) -> bool | None:
    """Whether the process a record names ({"pid", "start", "host"}) still runs: True or False
    on this host; None when it ran elsewhere or the record is not of that shape."""
    if not isinstance(record, dict) or record.get("host") != HOST:
        return None
    pid, start = record.get("pid"), record.get("start")
    if type(pid) is not int or pid <= 0 or (start is not None and type(start) is not int):
        return None
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def exit_signal(pid: int) -> int | None:
    """The signal that ended a process its parent has not reaped yet (a zombie; 0 when it
    exited by itself), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] != b"Z" or len(fields) < 50:
        return None
    return int(fields[-1]) & 0x7F
