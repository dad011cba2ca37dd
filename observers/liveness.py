"""Whether the process that recorded a run is still there: on this host by its pid and start
time (a pid is reused, its start time is not), elsewhere by the heartbeat (see tables.py).

A run records `meta.process` when it starts; a reader that finds it RUNNING while that process
is gone shows it as FAILED with a note, without writing to the store (a store is data).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

GONE_NOTE = "its process (pid {pid} on {host}) is gone: it died without recording its end"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks after boot (None: no such process, or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name in parentheses may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def exit_signal(pid: int) -> int | None:
    """The signal that ended a process not yet reaped by its parent (a zombie; 0 when it
    exited by itself), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] != "Z" or len(fields) < 50:
        return None
    return int(fields[-1]) & 0x7F


def this_process() -> dict:
    """What identifies this process later: host, pid, boot and start time."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "boot_id": _boot_id(),
        "start_ticks": start_ticks(pid),
    }


def process_gone(process) -> bool:
    """Whether a recorded process is known to be gone: it ran on this host and its pid is free,
    or now names another process, or the host has rebooted. Unknown (another host, no record,
    a record of the wrong shape) is False: the heartbeat decides there."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return False
    pid, ticks, boot = process.get("pid"), process.get("start_ticks"), process.get("boot_id")
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(ticks, int):
        return False
    if boot and _boot_id() and boot != _boot_id():
        return True
    return start_ticks(pid) != ticks
