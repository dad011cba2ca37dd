"""A checkpoint's own record beside it, so that a checkpoint is usable from the file and that
record whatever step of the bookkeeping a kill interrupted.

`last.pt` gets `last.pt.sha256` (JSON: sha256, size, epoch, step), written atomically before the
checkpoint is renamed into place (then vouching for the new hash and the one it replaces) and
again after it (the new hash only), like the record in info.json. A reader accepts the file when
its SHA-256 is one that info.json or the sidecar vouches for: run.json may not list the file
yet, info.json may be stale or missing. Both records live in the store, so a match proves the
file was not damaged, not who wrote it (a store is data); the file is still loaded with
weights_only=True. A file whose size is none of the recorded sizes is refused before it is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from observers.records import RecordError

SIDECAR = ".sha256"  # last.pt -> last.pt.sha256
MAX_SIDECAR_BYTES = 64 * 1024


class SizeMismatch(RecordError):
    """A checkpoint file's size is none of the recorded ones: refused unread."""


def sidecar_text(record: dict) -> str:
    """The sidecar's content for a checkpoint record (plain JSON)."""
    keep = ("sha256", "size", "epoch", "step", "replaces")
    return json.dumps({key: record.get(key) for key in keep if key in record}, sort_keys=True)


def _file(reader, run_id: int, name: str) -> Path | None:
    """The file `name` of a file store's run folder, listed in run.json or not (a kill may come
    between the rename and run.json); None for other stores or a file that is not there."""
    run_dir = getattr(reader, "run_dir", None)
    if run_dir is None:
        return None
    folder = run_dir(run_id)
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return None
    if not path.resolve().is_relative_to(folder.resolve()):
        raise RecordError(f"run {run_id}: {name} lies outside the run's folder")
    return path


def read_sidecar(reader, run_id: int, name: str) -> dict | None:
    """The checkpoint's sidecar record, or None when there is none or it is damaged."""
    try:
        path = _file(reader, run_id, name + SIDECAR)
        if path is not None and path.stat().st_size <= MAX_SIDECAR_BYTES:
            data = path.read_bytes()
        elif path is None and run_dir_absent(reader):
            data = reader.artifact(run_id, name + SIDECAR)
        else:
            return None
        record = json.loads(data)
    except (RecordError, OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def run_dir_absent(reader) -> bool:
    return getattr(reader, "run_dir", None) is None


def vouching(records: list) -> list[dict]:
    """Every record that vouches for a hash: each given record and the one it replaces."""
    found = []
    for record in records:
        if isinstance(record, dict) and isinstance(record.get("sha256"), str):
            found.append({k: v for k, v in record.items() if k != "replaces"})
            found += vouching([record.get("replaces")])
    return found


def checkpoint_bytes(reader, run_id: int, name: str, candidates: list[dict]) -> bytes:
    """The checkpoint's bytes, after its size is checked against the recorded sizes (a huge or
    sparse file in its place is refused without being read)."""
    path = _file(reader, run_id, name)
    if path is None:
        return reader.artifact(run_id, name)  # MongoDB, or absent: the store's own answer
    sizes = {c["size"] for c in candidates if isinstance(c.get("size"), int)}
    size = path.stat().st_size
    if sizes and size not in sizes:
        raise SizeMismatch(
            f"run {run_id}'s checkpoint {name} is {size} bytes, but its record says "
            f"{' or '.join(str(s) for s in sorted(sizes))}; it was not read"
        )
    return path.read_bytes()


def matching(data: bytes, candidates: list[dict]) -> dict | None:
    """The record whose SHA-256 is the data's, if any."""
    digest = hashlib.sha256(data).hexdigest()
    return next((c for c in candidates if c.get("sha256") == digest), None)
