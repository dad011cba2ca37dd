"""Size and SHA-256 of data files, and work (such as hashing them) done on a thread while the
run goes on: hashlib releases the GIL, so hashing overlaps loading and building the model."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def file_fingerprint(path: Path) -> dict:
    """{size, sha256} of one file's bytes, hashed in chunks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def in_background(work: Callable[[], T], name: str) -> Callable[[float | None], T | None]:
    """Start work on a daemon thread. The returned function waits up to `timeout` seconds (None:
    until done) and gives work's result, None while it is unfinished, or raises what it raised."""
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = work()
        except BaseException as error:  # handed to the waiting thread
            result["error"] = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()

    def wait(timeout: float | None = None) -> T | None:
        thread.join(timeout)
        if thread.is_alive():
            return None
        if "error" in result:
            raise result["error"]
        return result["value"]

    return wait
