"""Writing files so that a reader (or a crash) never sees half of one."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def utc(moment: dt.datetime) -> dt.datetime:
    """A moment as timezone-aware UTC (Sacred's times are naive UTC)."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def utc_text(moment: dt.datetime) -> str:
    """ISO text with its offset, '2026-12-01T00:00:00.123456+00:00', as every record writes times."""
    return utc(moment).isoformat()


@contextmanager
def replacing(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside path and rename it over path when the block succeeds.

    The file is created with 0o666 so the umask decides its mode, as for any other file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
