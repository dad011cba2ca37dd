"""`reprolab pack FOLDER OUT`: an image folder (class subfolders) into Parquet shards.

Each shard holds the encoded bytes exactly as read (never re-encoded), the class name as
`label` and the path relative to FOLDER. Shards are written under a temporary name and renamed;
the manifest (each shard's rows, size and SHA-256) is rewritten after every shard, so an
interrupted pack resumes after its last finished shard. The manifest's hash then stands for the
whole set in a run's record (see image_sources.fingerprint_source).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ingredients.image_sources import MANIFEST

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
FORMAT = "reprolab-pack/1"


class PackError(ValueError):
    """A folder that cannot be packed, or an OUT that belongs to another pack: one sentence."""


def image_files(folder: Path) -> list[tuple[str, str]]:
    """(relative path, class) of every image file under the class subfolders, sorted."""
    if not folder.is_dir():
        raise PackError(f"pack: {folder} is not a folder")
    found = []
    for label in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for file in sorted((folder / label).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                found.append((file.relative_to(folder).as_posix(), label))
    if not found:
        raise PackError(f"pack: {folder} has no images in class subfolders (FOLDER/CLASS/IMAGE)")
    return found


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def pack(
    folder: str | Path, out: str | Path, shard_size: int = 10000, progress: bool = True
) -> dict:
    """Pack FOLDER into OUT/shard-NNNNN.parquet plus OUT/manifest.json; returns the manifest."""
    folder, out = Path(folder).resolve(), Path(out)
    files = image_files(folder)
    listing = hashlib.sha256("\n".join(f"{p}\t{c}" for p, c in files).encode()).hexdigest()
    classes = sorted({c for _, c in files})
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "files_sha256": listing,
        "shard_size": shard_size,
        "rows": len(files),
        "classes": classes,
        "shards": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    old = out / MANIFEST
    if old.is_file():
        before = json.loads(old.read_text())
        if (before.get("files_sha256"), before.get("shard_size")) != (listing, shard_size):
            raise PackError(
                f"pack: {out} holds a pack of other files or shard size; use a new OUT folder"
            )
        manifest["shards"] = {
            name: entry
            for name, entry in before["shards"].items()
            if (out / name).is_file() and (out / name).stat().st_size == entry["size"]
        }
    starts = range(0, len(files), shard_size)
    done = sum(manifest["shards"].get(_name(i), {}).get("rows", 0) for i in range(len(starts)))
    with tqdm(
        total=len(files), initial=done, unit="img", disable=None if progress else True
    ) as bar:
        for number, start in enumerate(starts):
            name = _name(number)
            if name in manifest["shards"]:
                continue
            chunk = files[start : start + shard_size]
            manifest["shards"][name] = _write_shard(folder, out / name, chunk)
            _write_json(out / MANIFEST, manifest)
            bar.update(len(chunk))
    _write_json(out / MANIFEST, manifest)
    return manifest


def _name(number: int) -> str:
    return f"shard-{number:05d}.parquet"


def _write_shard(folder: Path, target: Path, chunk: list[tuple[str, str]]) -> dict:
    """One shard of (image bytes, label, path), renamed into place once complete."""
    table = pa.table(
        {
            "image": pa.array([(folder / p).read_bytes() for p, _ in chunk], pa.binary()),
            "label": pa.array([c for _, c in chunk], pa.string()),
            "path": pa.array([p for p, _ in chunk], pa.string()),
        }
    )
    partial = target.with_name(target.name + ".partial")
    # encoded images do not compress further; small row groups keep a streamed read's memory low
    pq.write_table(table, partial, compression="none", row_group_size=1000)
    os.replace(partial, target)
    with open(target, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"rows": len(chunk), "size": target.stat().st_size, "sha256": digest}
