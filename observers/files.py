"""Writing files so that a reader (or a crash) never sees half of one."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import secrets
import signal
import stat
import time
from contextlib import contextmanager
from pathlib import Path

from ingredients.scratch import sweep_orphans, writer_tag

# A temporary file's name, beside the file it becomes: .<name>.<random>.<pid>@<host>.tmp
TMP_PATTERN = ".*.{tag}.tmp"

# Tests only: a process SIGKILLs itself at a durable step (a file about to be renamed into place,
# the file renamed, a line appended, a claim created, a document written by sync) and logs each
# step to a file, so a test can place a kill between any two writes: an uninterrupted run's log
# names every point. The kill is "N" (the Nth step) or "N:PATTERN" (the Nth step whose
# description matches the regular expression: steady where timed writes, such as Sacred's
# heartbeat every 10 s, shift the count). Both variables are taken out of the environment at
# import, so the runs a launcher starts neither inherit the kill nor add to its log; unset, a
# step costs one test.
KILL_AT_STEP_VARIABLE = "REPROLAB_TEST_KILL_AT_STEP"
WRITE_LOG_VARIABLE = "REPROLAB_TEST_WRITE_LOG"
_KILL_AT, _, _KILL_PATTERN = os.environ.pop(KILL_AT_STEP_VARIABLE, "").partition(":")
_WRITE_LOG = os.environ.pop(WRITE_LOG_VARIABLE, "")
_steps = [0, 0]  # every step, the steps matching the kill's pattern


def durable_step(what: str | os.PathLike) -> None:
    """A point between two durable writes (what: the file or document just written or about to
    be); nothing unless a test set the variables above."""
    if not (_KILL_AT or _WRITE_LOG):
        return
    _steps[0] += 1
    if _WRITE_LOG:
        with open(_WRITE_LOG, "a") as log:
            log.write(f"{_steps[0]} {os.getpid()} {what}\n")
    if _KILL_PATTERN and re.search(_KILL_PATTERN, str(what)):
        _steps[1] += 1
    if _KILL_AT == str(_steps[1] if _KILL_PATTERN else _steps[0]):
        os.kill(os.getpid(), signal.SIGKILL)


class StoreWriteError(Exception):
    """A file of a run's record could not be written (a full disk, a read-only store, ...)."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        self.path = str(getattr(error, "filename", None) or path)
        self.cause = error.strerror or str(error) or type(error).__name__
        super().__init__(f"could not write {self.path}: {self.cause}")


@contextmanager
def writing(path: str | os.PathLike):
    """Any OSError in the block becomes a StoreWriteError naming the path (or the error's own)."""
    try:
        yield
    except OSError as error:
        raise StoreWriteError(path, error) from error


def temporary_beside(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside path, tagged with this process (see sweep_temporaries)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.{writer_tag()}.tmp")


def sweep_temporaries(directory: str | os.PathLike, pattern: str = TMP_PATTERN) -> None:
    """Remove temporary files that killed processes left in directory (pattern: its glob)."""
    sweep_orphans(directory, pattern)


def utc(moment: dt.datetime) -> dt.datetime:
    """A moment as timezone-aware UTC (Sacred's times are naive UTC)."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


STALE_HEARTBEAT = dt.timedelta(minutes=2)  # Sacred beats every 10 s: a RUNNING run silent this
# long has probably died


def record_time(value) -> dt.datetime | None:
    """A timezone-aware UTC datetime from a record's ISO text (file store) or a datetime
    (MongoDB); a naive one is UTC, as Sacred writes it. TypeError or ValueError on anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise TypeError(f"not a time: {value!r}")
    return utc(value)


def utc_text(moment: dt.datetime) -> str:
    """ISO text with its offset, '2026-12-01T00:00:00.123456+00:00', as every record writes times."""
    return utc(moment).isoformat()


@contextmanager
def replacing(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside path and rename it over path when the block succeeds.

    The file is created with 0o666 so the umask decides its mode, as for any other file."""
    path = Path(path)
    tmp = temporary_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        durable_step(tmp)
        os.replace(tmp, path)
        durable_step(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


NAME_MAX = 255  # bytes of one file name on Linux's file systems (ext4, xfs, btrfs, tmpfs)


def check_name(name: str, what: str) -> None:
    """Refuse a name no folder can hold as a file name in one sentence (not OSError later)."""
    size = len(os.fsencode(str(name)))
    if size > NAME_MAX - 16:  # room for an extension and a temporary file's suffix
        raise ValueError(
            f"{what} {str(name)[:40]}... is {size} bytes long; names of at most "
            f"{NAME_MAX - 16} bytes fit in a file name"
        )


def open_lock_file(path: str | os.PathLike) -> int:
    """An open descriptor of a lock file in a store, created if absent. Never through a link
    (a copied store's link could create or lock a file outside it) and never a FIFO or device
    (opening one can wait for ever): OSError for anything but a regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


@contextmanager
def exclusive_lock(path: str | os.PathLike, wait_s: float):
    """An exclusive flock on a store's lock file for the block: yields True, or False when it
    could not be opened or another process held it for more than wait_s seconds (holders keep
    it for one read and one write; a killed holder's lock is freed with its process)."""
    try:
        fd = open_lock_file(path)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.01)  # another writer holds it for a moment
        yield True
    finally:
        os.close(fd)  # closing releases the lock
