"""Scratch files named after the process that writes them, and sweeping those of dead writers.

A process killed (SIGKILL, power loss) cannot remove its scratch files. Each carries its writer's
tag, `<pid>@<host>`, in its name, so the next run can tell an orphan (its writer is gone) from a
file another live process is still writing, even in a folder that several machines share."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import weakref
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
_TAG = r"(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9-]+))?"  # no host: a local folder ($TMPDIR)


def writer_tag() -> str:
    """This process, as scratch file names carry it."""
    return f"{os.getpid()}@{HOST}"


def running(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(directory: str | os.PathLike, pattern: str) -> None:
    """Delete the files (or folders) under directory matching pattern, a glob whose last part
    holds one `{tag}`, whose writer was on this host and no longer runs. Best effort: a failure is ignored."""
    name = pattern.rsplit("/", 1)[-1]  # the pattern's folders are globbed only
    matching = re.compile(
        ".*".join(re.escape(part) for part in name.split("*")).replace(re.escape("{tag}"), _TAG)
    )
    for path in Path(directory).glob(pattern.replace("{tag}", "*")):
        found = matching.fullmatch(path.name)
        if found is None or found["host"] not in (None, HOST) or running(int(found["pid"])):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def remove_with(owner: object, path: str | os.PathLike) -> None:
    """Delete the scratch file at path when owner is garbage-collected or the process exits,
    but only in this process: forked loader workers inherit the finalizer and must leave the
    file to their parent."""
    weakref.finalize(owner, _remove_if_writer, str(path), os.getpid())


def _remove_if_writer(path: str, writer: int) -> None:
    if os.getpid() == writer:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
