"""Image sources: the shard files a path names (a file, a folder or a glob), their schema and
image column, read a record batch at a time into packed encoded bytes (Blobs, in memory or, above
data.in_memory_mb, in a scratch file read with pread) and labels; the class mapping and the data's
fingerprint. ingredients/image_decoding.py decodes the bytes, ingredients/images.py draws the
splits.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import pyarrow as pa

from ingredients.checkout import resolve_path
from ingredients.fingerprints import file_fingerprint, in_background
from ingredients.scratch import remove_with, sweep_orphans, writer_tag
from ingredients.table_files import column_list, read_schema

IMAGE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")


MANIFEST = "manifest.json"  # written by `reprolab pack`: each shard's size and sha256


SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


SCRATCH = "reprolab-images-{tag}-*.bin"


READ_ROWS = 1024  # rows per record batch read from a shard


READ_BUFFER = 2**20  # bytes of a Parquet column chunk read at a time


def fail(message: str) -> NoReturn:
    raise ValueError(message)


def is_pattern(path: str) -> bool:
    """A glob pattern rather than one path."""
    return any(c in path for c in "*?[")


def source_files(path: str | Path, key: str = "data.path") -> list[Path]:
    """The shard files a path names: the file itself, a folder's table files (recursively,
    sorted) or a glob's matches (sorted); one sentence when there are none."""
    text = str(path)
    if is_pattern(text):
        base = text if Path(text).expanduser().is_absolute() else str(resolve_path("."))
        pattern = text if Path(text).is_absolute() else os.path.join(base, text)
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
        files = [f for f in files if f.is_file()]
    else:
        where = resolve_path(text)
        if where.is_dir():
            files = sorted(
                p for p in where.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            files = [where] if where.is_file() else []
    if not files:
        fail(f"{key}: no Parquet or Arrow file found at {text}")
    return files


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "ipc"


def record_batches(file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The shard's columns, a record batch at a time, with flat memory however large the file
    or its row groups: Parquet through a buffered reader without pre-buffering (pyarrow.dataset's
    scanner read whole row groups ahead), Arrow IPC batch by batch from the file (not
    memory-mapped: touched pages would count as resident). Once the caller is done with a batch,
    the pool's freed pages go back to the system: mimalloc kept them, and peak RSS grew with
    the file although pyarrow never held more than a few MB (see benchmarks/images.py)."""
    pool = pa.default_memory_pool()
    for batch in _batches(file, columns):
        yield batch
        pool.release_unused()


def _batches(file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if file_format(file) == "parquet":
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER)
        yield from reader.iter_batches(batch_size=READ_ROWS, columns=columns, use_threads=False)
        return
    import pyarrow.ipc as ipc

    with pa.OSFile(str(file)) as source:
        try:
            found = ipc.open_file(source, options=_only(ipc.open_file(source).schema, columns))
            batches: Iterator[pa.RecordBatch] = (
                found.get_batch(i) for i in range(found.num_record_batches)
            )
        except pa.ArrowInvalid:  # the streaming format (Hugging Face datasets writes it): read
            source.seek(0)  # through, message by message (a stream has no footer to skip with)
            batches = iter(ipc.open_stream(source))
        for batch in batches:
            yield batch.select(columns)


def _only(schema: pa.Schema, columns: list[str]):
    """IPC read options that skip the other columns' buffers (a pass over the labels does not
    read the image bytes)."""
    import pyarrow.ipc as ipc

    return ipc.IpcReadOptions(included_fields=[schema.get_field_index(c) for c in columns])


def read_shards_schema(files: Sequence[Path]) -> pa.Schema:
    """The schema of the first shard (all must be of one format: Parquet or Arrow IPC)."""
    if len({file_format(f) for f in files}) > 1:
        fail(f"data.path: shards mix Parquet and Arrow files ({files[0]}, ...); use one format")
    return read_schema(files[0], file_format(files[0]))  # one sentence when it cannot


class Column(NamedTuple):
    """The image column and how its images are stored."""

    name: str
    kind: str  # binary | hf (struct {bytes, path}) | pixels (fixed-size list of uint8)


def column_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        if "bytes" in names and column_kind(kind.field("bytes").type) == "binary":
            return "hf"
    if pa.types.is_fixed_size_list(kind) and pa.types.is_uint8(kind.value_type):
        return "pixels"
    return None


def find_image_column(
    schema: pa.Schema, where: str, image_column: str | None, features=None
) -> Column | None:
    """The image column named by data.image_column, else the one encoded-image column of the
    schema (or, with no data.features, its one uint8 pixel-list column); None when it has none."""
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            fail(
                f"data.image_column: column {image_column!r} is not in {where} "
                f"(columns: {column_list(names)})"
            )
        kind = column_kind(schema.field(image_column).type)
        if kind is None:
            fail(
                f"data.image_column: column {image_column!r} in {where} holds "
                f"{schema.field(image_column).type}, not encoded images (binary or "
                "{bytes, path}) or uint8 pixel lists"
            )
        return Column(image_column, kind)
    found = {n: column_kind(schema.field(n).type) for n in names}
    encoded = [n for n, k in found.items() if k in ("binary", "hf")]
    if len(encoded) > 1:
        fail(
            f"data.image_column: {where} has {len(encoded)} image columns "
            f"({', '.join(encoded)}); set data.image_column to one of them"
        )
    if encoded:
        return Column(encoded[0], found[encoded[0]])  # type: ignore[arg-type]  # kind binary or hf
    pixels = [n for n, k in found.items() if k == "pixels"]
    if features is None and len(pixels) == 1:
        return Column(pixels[0], "pixels")
    return None


class Blobs:
    """Encoded images packed end to end: `offsets[i]:offsets[i+1]` is image i, in a numpy
    buffer or, above the memory budget, in a scratch file read with pread (flat RSS)."""

    def __init__(self, offsets: np.ndarray, buffer: np.ndarray | None, path: str | None):
        self.offsets, self.buffer, self.path = offsets, buffer, path
        self._fd: int | None = None
        if path is not None:
            remove_with(self, path)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a worker opens its own descriptor

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> bytes | memoryview:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if self.buffer is not None:
            return self.buffer[start:end].data
        if self._fd is None:
            assert self.path is not None  # no buffer: the images are in the scratch file
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, end - start, start)


class BlobWriter:
    """Collects encoded images into memory, or into a scratch file once past `budget` bytes."""

    sizes: list[np.ndarray]
    chunks: list[np.ndarray]

    def __init__(self, budget: float):
        self.budget, self.sizes, self.chunks, self.held = budget, [], [], 0
        self.file: io.BufferedWriter | None = None
        self.path: str | None = None

    def add(self, values: pa.Array) -> None:
        """Append a binary array's values (nulls are refused by the caller)."""
        kind = np.dtype(np.int64 if pa.types.is_large_binary(values.type) else np.int32)
        offsets = np.frombuffer(
            values.buffers()[1], kind, len(values) + 1, values.offset * kind.itemsize
        )
        data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        self.sizes.append(np.diff(offsets).astype(np.int64))
        if self.file is None and self.held + len(data) > self.budget:
            sweep_orphans(tempfile.gettempdir(), SCRATCH)
            fd, self.path = tempfile.mkstemp(
                prefix=f"reprolab-images-{writer_tag()}-", suffix=".bin"
            )
            self.file = os.fdopen(fd, "wb")
            for chunk in self.chunks:
                self.file.write(chunk.data)
            self.chunks = []
        if self.file is not None:
            self.file.write(data.data)
        else:
            self.chunks.append(data.copy())
        self.held += len(data)

    def finish(self) -> Blobs:
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if self.file is not None:
            self.file.close()
            return Blobs(offsets, None, self.path)
        buffer = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.uint8)
        return Blobs(offsets, buffer, None)


def _binary_values(chunk: pa.Array, column: Column) -> pa.Array:
    """The binary array of an image column chunk (the `bytes` field of the HF struct)."""
    if column.kind == "hf":
        return chunk.field("bytes")
    return chunk


@dataclass
class Where:
    """How a dataset row is named in errors: its shard file and row within it."""

    files: list[str]
    starts: np.ndarray  # first global row of each file
    column: str

    def name(self, row: int) -> str:
        k = int(np.searchsorted(self.starts, row, side="right") - 1)
        return f"row {row - int(self.starts[k])} of column {self.column!r} in {self.files[k]}"


@dataclass
class Source:
    """What one path (the training data, or a separate val/test path) holds."""

    files: list[Path]
    images: Blobs | np.ndarray
    labels: pa.ChunkedArray
    splits: np.ndarray | None  # normalised split names per row, when split_column is set
    where: Where
    first: bytes | np.ndarray  # the first image, for detection


def read_source(
    path: str, key: str, column: Column, target: str, split_column: str | None, budget: float
) -> Source:
    """Read the label (and split) columns into memory and the images into Blobs (or a uint8
    pixel matrix), shard by shard, a record batch at a time."""
    files = source_files(path, key)
    schema = read_shards_schema(files)
    where = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)"
    wanted = [column.name, target] + ([split_column] if split_column else [])
    for name in wanted[1:]:
        if name not in schema.names:
            setting = "data.target" if name == target else "data.split_column"
            fail(
                f"{setting}: column {name!r} is not in {where} "
                f"(columns: {column_list(schema.names)})"
            )
    if (
        column.name not in schema.names
        or column_kind(schema.field(column.name).type) != column.kind
    ):
        find_image_column(schema, where, column.name)  # names the problem
    writer = BlobWriter(budget) if column.kind != "pixels" else None
    pixels, labels, splits, starts, total = [], [], [], [], 0
    try:
        for file in files:
            starts.append(total)
            for batch in record_batches(file, wanted):
                values = batch.column(column.name)
                if values.null_count:
                    row = total + int(
                        np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]
                    )
                    fail(
                        f"data: row {row - starts[-1]} of column {column.name!r} in {file} is missing"
                    )
                if writer is not None:
                    writer.add(_binary_values(values, column))
                else:
                    size = values.type.list_size
                    flat = values.flatten().to_numpy(zero_copy_only=False)
                    pixels.append(flat.reshape(-1, size))
                # copies: a slice would keep the batch's image bytes alive (an IPC body is one buffer)
                labels.append(pa.concat_arrays([batch.column(target)]))
                if split_column:
                    splits.append(pa.concat_arrays([batch.column(split_column)]))
                total += batch.num_rows
    except (pa.ArrowException, OSError) as error:
        fail(f"{key}: cannot read {where} ({type(error).__name__}: {error})")
    if total == 0:
        fail(f"{key}: {where} has no rows")
    images = writer.finish() if writer is not None else np.concatenate(pixels)
    first = bytes(images.get(0)) if isinstance(images, Blobs) else images[0]
    return Source(
        files,
        images,
        pa.chunked_array(labels, schema.field(target).type),
        _split_names(pa.chunked_array(splits), split_column, where) if split_column else None,
        Where([str(f) for f in files], np.asarray(starts, np.int64), column.name),
        first,
    )


def _split_names(column: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """Each row's split (train, val, test) from a string split column."""
    values = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
    unknown = sorted({str(v) for v in values if str(v).lower() not in SPLIT_NAMES})
    if unknown:
        fail(
            f"data.split_column: column {name!r} in {where} holds {unknown[:3]}; "
            "expected train, val (validation) or test"
        )
    return np.array([SPLIT_NAMES[str(v).lower()] for v in values])


def class_mapping(labels: pa.ChunkedArray, schema_names: list[str] | None) -> list[str] | None:
    """Class names of string labels (sorted), or an HF ClassLabel's names; None for ints."""
    kind = labels.type
    if pa.types.is_dictionary(kind):
        labels = labels.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return sorted(set(labels.to_pylist()) - {None})
    return schema_names


def label_indices(
    labels: pa.ChunkedArray, classes: list[str] | None, target: str, where: str
) -> np.ndarray:
    """int64 class indices: string labels through the mapping, integer labels as they are."""
    if labels.null_count:
        fail(f"data.target: column {target!r} in {where} has {labels.null_count} missing labels")
    kind = labels.type.value_type if pa.types.is_dictionary(labels.type) else labels.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = {name: i for i, name in enumerate(classes or [])}
        names = labels.cast(kind).to_pylist()
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            fail(f"data.target: {where} has labels {unknown[:3]} that the training split lacks")
        return np.fromiter((index[n] for n in names), np.int64, len(names))
    if not pa.types.is_integer(kind):
        fail(
            f"data.target: column {target!r} in {where} must hold integer or string labels, got {kind}"
        )
    values = np.asarray(labels.to_numpy(), np.int64)
    if len(values) and values.min() < 0:
        fail(f"data.target: column {target!r} in {where} has negative labels")
    return values


def hf_class_names(schema: pa.Schema, target: str) -> list[str] | None:
    """The label names a Hugging Face dataset keeps in its schema metadata (ClassLabel)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][target]
        return list(feature["names"]) if feature.get("_type") == "ClassLabel" else None
    except (KeyError, TypeError, ValueError):
        return None


def fingerprint_source(path: str | Path) -> dict:
    """Size and SHA-256 of a file, folder or glob of shards. With a pack manifest beside the
    shards, its hash stands for them once every listed shard is there with its recorded size;
    without one, each shard is hashed. Per-shard sizes and hashes are listed either way."""
    files = source_files(str(path))
    folder = Path(path) if Path(path).is_dir() else None
    manifest = folder / MANIFEST if folder else None
    if folder is not None and manifest is not None and manifest.is_file():
        listed = json.loads(manifest.read_text())["shards"]
        found = {str(f.relative_to(folder)) for f in files}
        if set(listed) != found:
            fail(f"data.path: the shards in {folder} differ from those its {MANIFEST} lists")
        for name, entry in listed.items():
            if (folder / name).stat().st_size != entry["size"]:
                fail(f"data.path: shard {folder / name} has another size than {MANIFEST} records")
        return {
            "size": sum(e["size"] for e in listed.values()),
            "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "manifest": str(manifest),
            "shards": listed,
        }
    shards = {str(f): file_fingerprint(f) for f in files}
    if len(files) == 1 and not folder and not is_pattern(str(path)):
        return shards[str(files[0])]
    combined = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    return {"size": sum(s["size"] for s in shards.values()), "sha256": combined, "shards": shards}


def fingerprint_in_background(paths: list[str]) -> Callable[[float | None], dict]:
    """Fingerprint the sources on a thread; the returned function waits up to `timeout` s and
    gives the first source's fingerprint with the others' under "others" (sha256 None while
    unfinished)."""
    wait = in_background(lambda: [fingerprint_source(p) for p in paths], "image-fingerprint")

    def fingerprint(timeout: float | None = None) -> dict:
        found = wait(timeout)
        if found is None:
            return {"size": None, "sha256": None}
        main, *others = found
        extra = dict(zip(paths[1:], others))
        return {**main, **({"others": extra} if extra else {})}

    return fingerprint
