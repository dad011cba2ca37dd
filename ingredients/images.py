"""Image data: encoded images (PNG, JPEG, WebP) or raw uint8 pixels in Parquet / Arrow IPC shards.

The image column is found from the schema (binary, the Hugging Face `{bytes, path}` struct, or a
fixed-size list of uint8), channels and size from the first image. Encoded bytes are kept packed
(one buffer and an offsets array, in memory or, above data.in_memory_mb, in a scratch file read
with pread) and decoded a whole batch at a time with Pillow in the loader's worker processes, as
uint8: the float conversion and augmentation happen on the run's device (ingredients/augment.py).
"""

# ruff: noqa: F841  (Sacred config scopes assign names that look unused)
from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import math
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import pyarrow as pa
import torch
from sacred.utils import SacredError

from ingredients.checkout import resolve_path
from ingredients.schema import (
    POSITIVE_INT,
    TEXT,
    Rule,
    check_values,
    is_int,
    list_of,
    nullable,
    number,
)
from ingredients.scratch import sweep_orphans, writer_tag
from ingredients.splits import split_rows
from ingredients.table_files import read_schema

IMAGE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather", ".ipc")
MANIFEST = "manifest.json"  # written by `reprolab pack`: each shard's size and sha256
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
STATS_IMAGES = 10000  # training images decoded to compute the normalisation mean and std
SCRATCH = "reprolab-images-{tag}-*.bin"
SCRATCH_BYTES = 16 * 2**20  # the most decoded pixels a dataset keeps between batches


# fmt: off
def image_config():
    image_column = None           # images: column of encoded images (binary or Hugging Face {bytes, path}) or uint8 pixel lists; None finds it from the schema
    channels = None               # images: decode to 1 (grey) or 3 (RGB) channels; None takes the first image's
    image_size = None             # images: [height, width] every image is decoded to (resized if it differs); None takes the first image's
    split_column = None           # images: column naming each row's split (train, val or validation, test); None draws validation rows with val_fraction and split_seed
    val_path = None               # images: a separate validation file, folder or glob of shards; None draws it from data.path
    test_path = None              # images: a separate test file, folder or glob, evaluated once with the best checkpoint (never used to choose it)
    augment = []                  # images: training augmentation on the device, e.g. [{'name': 'crop', 'padding': 4}, {'name': 'flip'}]; see docs/data.md, Images
    mean = None                   # images: per-channel mean of data.standardize; None computes it from the training split (recorded)
    std = None                    # images: per-channel std of data.standardize; None computes it from the training split (recorded)
# fmt: on


SCHEMA = {
    "image_column": nullable(Rule(TEXT.accepts, "a column name")),
    "channels": Rule(lambda v: v is None or (is_int(v) and v in (1, 3)), "None, 1 or 3"),
    "image_size": nullable(Rule(list_of(POSITIVE_INT, length=2).accepts, "[height, width]")),
    "split_column": nullable(Rule(TEXT.accepts, "a column name")),
    "val_path": nullable(Rule(TEXT.accepts, "a file, folder or glob")),
    "test_path": nullable(Rule(TEXT.accepts, "a file, folder or glob")),
    "augment": Rule(
        lambda v: isinstance(v, list) and all(isinstance(s, dict) and "name" in s for s in v),
        "a list of {'name': ..., parameters} steps",
    ),
    "mean": nullable(Rule(list_of(number(0), min_len=1).accepts, "a list of numbers >= 0")),
    "std": nullable(
        Rule(list_of(number(0, low_open=True), min_len=1).accepts, "a list of positive numbers")
    ),
}


class BadImage(ValueError, SacredError):
    """An image that cannot be decoded: one sentence naming the file, row and column, which ends
    a started run as FAILED without a traceback (a SacredError, like OneSentenceError).

    Raised in a loader worker, torch re-raises it in the run's process with the worker's
    traceback as the message; the sentence is recovered from its last line."""

    def __init__(self, message: str):
        if message.startswith("Caught "):
            last = message.strip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        SacredError.__init__(self, message, print_traceback=False)


def _fail(message: str) -> NoReturn:
    raise ValueError(message)


# --------------------------------------------------------------------------- sources


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
        _fail(f"{key}: no Parquet or Arrow file found at {text}")
    return files


def _file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return "parquet" if suffix in (".parquet", ".pq") else "ipc"


READ_ROWS = 1024  # rows per record batch read from a shard
READ_BUFFER = 2**20  # bytes of a Parquet column chunk read at a time


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
    if _file_format(file) == "parquet":
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER)
        yield from reader.iter_batches(batch_size=READ_ROWS, columns=columns, use_threads=False)
        return
    import pyarrow.ipc as ipc

    with pa.OSFile(str(file)) as source:
        try:
            found = ipc.open_file(source)
            batches: Iterator[pa.RecordBatch] = (
                found.get_batch(i) for i in range(found.num_record_batches)
            )
        except pa.ArrowInvalid:  # the streaming format (Hugging Face datasets writes it)
            source.seek(0)
            batches = iter(ipc.open_stream(source))
        for batch in batches:
            yield batch.select(columns)


def _read_schema(files: list[Path]) -> pa.Schema:
    """The schema of the first shard (all must be of one format: Parquet or Arrow IPC)."""
    if len({_file_format(f) for f in files}) > 1:
        _fail(f"data.path: shards mix Parquet and Arrow files ({files[0]}, ...); use one format")
    return read_schema(files[0], _file_format(files[0]))  # one sentence when it cannot


class Column(NamedTuple):
    """The image column and how its images are stored."""

    name: str
    kind: str  # binary | hf (struct {bytes, path}) | pixels (fixed-size list of uint8)


def _column_kind(kind: pa.DataType) -> str | None:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        if "bytes" in names and _column_kind(kind.field("bytes").type) == "binary":
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
            _fail(
                f"data.image_column: column {image_column!r} is not in {where} "
                f"(columns: {', '.join(names[:8])})"
            )
        kind = _column_kind(schema.field(image_column).type)
        if kind is None:
            _fail(
                f"data.image_column: column {image_column!r} in {where} holds "
                f"{schema.field(image_column).type}, not encoded images (binary or "
                "{bytes, path}) or uint8 pixel lists"
            )
        return Column(image_column, kind)
    found = {n: _column_kind(schema.field(n).type) for n in names}
    encoded = [n for n, k in found.items() if k in ("binary", "hf")]
    if len(encoded) > 1:
        _fail(
            f"data.image_column: {where} has {len(encoded)} image columns "
            f"({', '.join(encoded)}); set data.image_column to one of them"
        )
    if encoded:
        return Column(encoded[0], found[encoded[0]])  # type: ignore[arg-type]  # kind binary or hf
    pixels = [n for n, k in found.items() if k == "pixels"]
    if features is None and len(pixels) == 1:
        return Column(pixels[0], "pixels")
    return None


@functools.cache
def _defaults() -> dict:
    from sacred.config import ConfigScope

    return dict(ConfigScope(image_config)())


def with_defaults(cfg: dict) -> dict:
    """A data config with the image keys it lacks (one built before they existed) at defaults."""
    return {**_defaults(), **cfg}


def image_source(cfg: dict) -> Column | None:
    """The image column when data.path is image data (an image column, or a folder or glob of
    shards), else None: the numeric path of ingredients/data.py reads it."""
    cfg = with_defaults(cfg)
    path = str(cfg["path"])
    try:
        where = resolve_path(path)
        many = is_pattern(path) or where.is_dir()
    except (OSError, ValueError):
        return None
    if not many and not (where.is_file() and where.suffix.lower() in IMAGE_SUFFIXES):
        return None
    check_values("data", {k: cfg.get(k) for k in SCHEMA}, SCHEMA)
    if many:
        files = source_files(path)
        schema = _read_schema(files)
    else:  # one file: its schema without importing pyarrow.dataset (a table run pays nothing)
        files, schema = [where], read_schema(where, _file_format(where))
    column = find_image_column(schema, str(files[0]), cfg.get("image_column"), cfg.get("features"))
    if column is None and many:
        _fail(f"data.path: {path} has no image column; set data.image_column")
    return column


# --------------------------------------------------------------------------- encoded bytes


class Blobs:
    """Encoded images packed end to end: `offsets[i]:offsets[i+1]` is image i, in a numpy
    buffer or, above the memory budget, in a scratch file read with pread (flat RSS)."""

    def __init__(self, offsets: np.ndarray, buffer: np.ndarray | None, path: str | None):
        self.offsets, self.buffer, self.path = offsets, buffer, path
        self._fd: int | None = None
        self._pid = os.getpid()
        if path is not None:
            weakref.finalize(self, _remove_if_owner, path, os.getpid())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}  # a worker opens its own descriptor

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

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])


def _remove_if_owner(path: str, owner: int) -> None:
    if os.getpid() == owner:
        try:
            os.unlink(path)
        except OSError:
            pass


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


# --------------------------------------------------------------------------- decoding


def _pillow():
    from PIL import Image

    return Image


MODES = {1: "L", 3: "RGB"}


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _simplejpeg():
    """simplejpeg when installed (JPEG only, 4-9x Pillow's rate on small images), else None."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


@functools.cache
def _kornia_png():
    """kornia_rs's 8-bit PNG decoder (kornia's own dependency: 4-8x Pillow's rate on small
    images, its per-image Python overhead being most of Pillow's time), else None."""
    try:
        import kornia_rs
    except ImportError:
        return None
    return kornia_rs


def decoder() -> str:
    """Which decoders this process uses (recorded: they must be the same on a rerun)."""
    fast, png = _simplejpeg(), _kornia_png()
    jpeg = f"simplejpeg {fast.__version__}" if fast else "Pillow"
    png_name = f"kornia_rs {png.__version__}" if png else "Pillow"
    return f"JPEG: {jpeg}, PNG: {png_name}, else Pillow {_pillow().__version__}"


def _fast_jpeg(blob, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """A JPEG of the right size decoded by simplejpeg, else None (Pillow takes it)."""
    fast = _simplejpeg()
    if fast is None or blob[:2] != b"\xff\xd8":
        return None
    try:
        pixels = fast.decode_jpeg(blob, colorspace="RGB" if mode == "RGB" else "GRAY")
    except ValueError:  # CMYK, damaged...: Pillow decides
        return None
    if pixels.shape[:2] != size:
        return None
    return pixels if mode == "RGB" else pixels[:, :, 0]


def _fast_png(blob, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """An 8-bit RGB (or grey, for mode L) PNG of the right size decoded by kornia_rs, else None:
    Pillow takes palettes, alpha, 16 bits, other sizes and damaged files (kornia_rs refuses them)."""
    fast = _kornia_png()
    if fast is None or blob[:8] != PNG_MAGIC:
        return None
    try:
        pixels = fast.io.decode_image_png_u8(bytes(blob), size, "rgb" if mode == "RGB" else "mono")
    except Exception:  # kornia_rs raises a bare Exception for every refusal
        return None
    return pixels if mode == "RGB" else pixels[:, :, 0]


def decode_one(blob, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3) in `mode`, resized to `size` (H, W) if needed."""
    pixels = _fast_png(blob, mode, size)
    if pixels is None:
        pixels = _fast_jpeg(blob, mode, size)
    if pixels is not None:
        return pixels
    Image = _pillow()
    with Image.open(io.BytesIO(blob)) as image:
        if image.format == "JPEG" and image.mode != mode:
            image.draft(mode, (size[1], size[0]))  # decode straight to grey/RGB (no re-encoding)
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image)


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker, in shared memory from the start, so
    handing it to the run's process does not copy it there (as torch's default collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


@dataclass
class Where:
    """How a dataset row is named in errors: its shard file and row within it."""

    files: list[str]
    starts: np.ndarray  # first global row of each file
    column: str

    def name(self, row: int) -> str:
        k = int(np.searchsorted(self.starts, row, side="right") - 1)
        return f"row {row - int(self.starts[k])} of column {self.column!r} in {self.files[k]}"


class ImageDataset(torch.utils.data.Dataset):
    """A split of image rows; `dataset[indices]` decodes a whole uint8 (N, C, H, W) batch."""

    def __init__(
        self,
        images: Blobs | np.ndarray,
        targets: torch.Tensor,
        rows: np.ndarray,
        sample_shape: tuple[int, int, int],
        where: Where,
    ) -> None:
        self.images = images  # Blobs of encoded images, or an (n, C*H*W) uint8 pixel matrix
        self.targets, self.rows, self.sample_shape, self.where = targets, rows, sample_shape, where
        self._buffer: np.ndarray | None = None  # decode's scratch (see _scratch)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_memory(self) -> bool:
        """Raw pixels are gathered in this process; encoded images are decoded in workers."""
        return isinstance(self.images, np.ndarray)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = self.rows[idx]
        y = torch.from_numpy(np.take(self.targets.numpy(), idx))
        if isinstance(self.images, np.ndarray):
            x = np.take(self.images, rows, axis=0)
            return torch.from_numpy(x).reshape(-1, *self.sample_shape), y
        return self.decode(rows), y

    def decode(self, rows: np.ndarray) -> torch.Tensor:
        """Decode the images of `rows` into one uint8 (N, C, H, W) tensor: RGB images into an
        (N, H, W, 3) array first, then one transposing copy for the whole batch."""
        assert isinstance(self.images, Blobs)  # pixel matrices are gathered, not decoded
        c, h, w = self.sample_shape
        out = _batch_tensor((len(rows), c, h, w))
        pixels = out.numpy().reshape(len(rows), h, w) if c == 1 else self._scratch(len(rows))
        mode = MODES[c]
        for i, row in enumerate(rows.tolist()):
            try:
                pixels[i] = decode_one(self.images.get(row), mode, (h, w))
            except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError...
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise BadImage(
                    f"data: {self.where.name(row)} is not an image Pillow can decode "
                    f"as {mode} ({reason})"
                ) from None
        if c == 3:
            np.copyto(out.numpy(), pixels.transpose(0, 3, 1, 2))
        return out

    def _scratch(self, n: int) -> np.ndarray:
        """An (n, H, W, 3) buffer, up to SCRATCH_BYTES reused batch after batch (no fresh pages
        to fault in for every batch)."""
        _, h, w = self.sample_shape
        if self._buffer is not None and len(self._buffer) >= n:
            return self._buffer[:n]
        buffer = np.empty((n, h, w, 3), np.uint8)
        if buffer.nbytes <= SCRATCH_BYTES:
            self._buffer = buffer
        return buffer

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_buffer": None}  # a worker fills its own


# --------------------------------------------------------------------------- reading a source


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
    schema = _read_schema(files)
    where = str(files[0]) if len(files) == 1 else f"{path} ({len(files)} shards)"
    wanted = [column.name, target] + ([split_column] if split_column else [])
    for name in wanted[1:]:
        if name not in schema.names:
            setting = "data.target" if name == target else "data.split_column"
            _fail(
                f"{setting}: column {name!r} is not in {where} "
                f"(columns: {', '.join(schema.names[:8])})"
            )
    if (
        column.name not in schema.names
        or _column_kind(schema.field(column.name).type) != column.kind
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
                    _fail(
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
        _fail(f"{key}: cannot read {where} ({type(error).__name__}: {error})")
    if total == 0:
        _fail(f"{key}: {where} has no rows")
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
        _fail(
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
        _fail(f"data.target: column {target!r} in {where} has {labels.null_count} missing labels")
    kind = labels.type.value_type if pa.types.is_dictionary(labels.type) else labels.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = {name: i for i, name in enumerate(classes or [])}
        names = labels.cast(kind).to_pylist()
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            _fail(f"data.target: {where} has labels {unknown[:3]} that the training split lacks")
        return np.fromiter((index[n] for n in names), np.int64, len(names))
    if not pa.types.is_integer(kind):
        _fail(
            f"data.target: column {target!r} in {where} must hold integer or string labels, got {kind}"
        )
    values = np.asarray(labels.to_numpy(), np.int64)
    if len(values) and values.min() < 0:
        _fail(f"data.target: column {target!r} in {where} has negative labels")
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


def detect_shape(first, column: Column, cfg: dict) -> tuple[int, int, int]:
    """(channels, height, width): config keys first, else the first image (or a square list)."""
    if column.kind == "pixels":
        size = len(first)
        if cfg.get("shape"):
            shape = tuple(int(s) for s in cfg["shape"])
        elif math.isqrt(size) ** 2 == size:
            shape = (1, math.isqrt(size), math.isqrt(size))
        else:
            _fail(f"data.shape: {size} pixels per row is not a square image; set data.shape")
        if len(shape) != 3 or math.prod(shape) != size:
            _fail(f"data.shape {list(shape)} does not hold the {size} pixels of each row")
        return shape
    try:
        Image = _pillow()
        with Image.open(io.BytesIO(first)) as image:
            width, height = image.size
            found = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    except Exception as error:
        _fail(f"data: the first image of column {column.name!r} is not an image ({error})")
    channels = cfg.get("channels") or found
    h, w = cfg.get("image_size") or (height, width)
    return (int(channels), int(h), int(w))


# --------------------------------------------------------------------------- fingerprints


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
            _fail(f"data.path: the shards in {folder} differ from those its {MANIFEST} lists")
        for name, entry in listed.items():
            if (folder / name).stat().st_size != entry["size"]:
                _fail(f"data.path: shard {folder / name} has another size than {MANIFEST} records")
        return {
            "size": sum(e["size"] for e in listed.values()),
            "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "manifest": str(manifest),
            "shards": listed,
        }
    shards = {}
    for f in files:
        with open(f, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        shards[str(f)] = {"size": f.stat().st_size, "sha256": digest}
    if len(files) == 1 and not folder and not is_pattern(str(path)):
        return shards[str(files[0])]
    combined = hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()
    return {"size": sum(s["size"] for s in shards.values()), "sha256": combined, "shards": shards}


def fingerprint_in_background(paths: list[str]) -> Callable[[float | None], dict]:
    """Fingerprint the sources on a thread; the returned function waits up to `timeout` s."""
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = {p: fingerprint_source(p) for p in paths}
        except BaseException as error:
            result["error"] = error

    thread = threading.Thread(target=work, name="image-fingerprint", daemon=True)
    thread.start()

    def wait(timeout: float | None = None) -> dict:
        thread.join(timeout)
        if thread.is_alive():
            return {"size": None, "sha256": None}
        if "error" in result:
            raise result["error"]
        main, *others = result["value"].values()
        extra = dict(zip(paths[1:], others))
        return {**main, **({"others": extra} if extra else {})}

    return wait


# --------------------------------------------------------------------------- splits


def channel_statistics(dataset: ImageDataset, limit: int = STATS_IMAGES) -> tuple[list, list]:
    """Per-channel mean and std (of pixels / 255) over the first `limit` training images."""
    total = np.zeros(dataset.sample_shape[0]), np.zeros(dataset.sample_shape[0])
    count = 0
    for start in range(0, min(len(dataset), limit), 512):
        x, _ = dataset[np.arange(start, min(start + 512, len(dataset), limit))]
        x = x.double().div_(255).transpose(0, 1).reshape(x.shape[1], -1)
        total[0].__iadd__(x.sum(1).numpy())
        total[1].__iadd__((x * x).sum(1).numpy())
        count += x.shape[1]
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean * mean, 0)).clip(min=1e-6)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


@dataclass
class ImageInfo:
    """What a run records about its images."""

    column: str
    kind: str
    shape: tuple[int, int, int]
    classes: list[str] | None
    normalization: dict | None
    augment: list = field(default_factory=list)

    def record(self) -> dict:
        """Plain JSON copies (Sacred's read-only dicts and shared objects do not record well)."""
        return json.loads(
            json.dumps(
                {
                    "column": self.column,
                    "storage": self.kind,
                    "channels": self.shape[0],
                    "size": list(self.shape[1:]),
                    "classes": self.classes,
                    "normalization": self.normalization,
                    "augment": self.augment,
                    "decoder": decoder(),
                }
            )
        )


def load_image_splits(cfg: dict, column: Column, splits_type):
    """Train / val (/ test) ImageDatasets of data.path and, if given, data.val_path and
    data.test_path or a split column; otherwise validation rows are drawn as for tables."""
    budget = cfg["in_memory_mb"] * 2**20
    main = read_source(
        cfg["path"], "data.path", column, cfg["target"], cfg.get("split_column"), budget
    )
    schema = _read_schema(main.files)
    classes = class_mapping(main.labels, hf_class_names(schema, cfg["target"]))
    labels = label_indices(main.labels, classes, cfg["target"], cfg["path"])
    shape = detect_shape(main.first, column, cfg)

    def dataset(source: Source, rows: np.ndarray, y: np.ndarray) -> ImageDataset:
        return ImageDataset(source.images, torch.from_numpy(y[rows]), rows, shape, source.where)

    def separate(key: str) -> ImageDataset | None:
        if not cfg.get(key):
            return None
        other = read_source(cfg[key], f"data.{key}", column, cfg["target"], None, budget)
        y = label_indices(other.labels, classes, cfg["target"], cfg[key])
        return dataset(other, np.arange(len(y)), y)

    every = np.arange(len(labels))
    test = separate("test_path")
    val = separate("val_path")
    if main.splits is not None:
        train_rows = every[main.splits == "train"]
        val_rows = every[main.splits == "val"]
        test_rows = every[main.splits == "test"]
        if val is None:
            val = dataset(main, val_rows, labels)
        if test is None and len(test_rows):
            test = dataset(main, test_rows, labels)
        rule = {"split_column": cfg["split_column"]}
    elif val is None:
        train_rows, val_rows = split_rows(len(labels), cfg["val_fraction"], cfg["split_seed"])
        val = dataset(main, val_rows, labels)
        rule = {"split_seed": cfg["split_seed"], "val_fraction": cfg["val_fraction"]}
    else:
        train_rows, rule = every, {"val_path": cfg["val_path"]}
    if not len(train_rows) or not len(val):
        _fail(f"data: {cfg['path']} leaves an empty train or validation split")
    train = dataset(main, train_rows, labels)
    normalization = None
    if cfg["standardize"]:
        mean, std = cfg.get("mean"), cfg.get("std")
        source = "config"
        if mean is None or std is None:
            mean, std = channel_statistics(train)
            source = f"training split (first {min(len(train), STATS_IMAGES)} images)"
        if len(mean) != shape[0] or len(std) != shape[0]:
            _fail(f"data.mean and data.std need one value per channel ({shape[0]})")
        normalization = {"mean": list(mean), "std": list(std), "from": source}
    num_classes = max(len(classes) if classes else 0, int(labels.max()) + 1)
    info = ImageInfo(column.name, column.kind, shape, classes, normalization, list(cfg["augment"]))
    paths = [cfg["path"]] + [cfg[k] for k in ("val_path", "test_path") if cfg.get(k)]
    split = {
        **rule,
        "train_rows": len(train),
        "val_rows": len(val),
        "test_rows": len(test) if test is not None else 0,
        "val_rows_sha256": hashlib.sha256(val.rows.astype("<i8").tobytes()).hexdigest(),
    }
    return splits_type(
        train=train,
        val=val,
        input_shape=shape,
        num_classes=num_classes,
        file={
            "path": str(main.files[0]) if len(main.files) == 1 else str(cfg["path"]),
            "format": _file_format(main.files[0]),
            "rows": len(labels),
            "columns": schema.names,
        },
        digest=fingerprint_in_background(paths),
        standardization=dict(normalization) if normalization else None,
        split=split,
        test=test,
        images=info,
    )


def describe_images(cfg: dict, column: Column) -> tuple[int, tuple[int, int, int], int]:
    """(rows, sample shape, classes) of an image source, from its schema, labels and first image
    (cached by the data ingredient's caller)."""
    files = source_files(cfg["path"])
    schema = _read_schema(files)
    target = cfg["target"]
    if target not in schema.names:
        _fail(
            f"data.target: column {target!r} is not in {files[0]} (columns: {', '.join(schema.names[:8])})"
        )
    column_of_labels = pa.chunked_array(
        [pa.concat_arrays([b.column(target)]) for f in files for b in record_batches(f, [target])],
        schema.field(target).type,
    )
    classes = class_mapping(column_of_labels, hf_class_names(schema, target))
    labels = label_indices(column_of_labels, classes, target, str(cfg["path"]))
    batches = (b for f in files for b in record_batches(f, [column.name]) if b.num_rows)
    first = next(batches).column(0)[0]
    if column.kind == "hf":
        first = first["bytes"]
    value = first.as_py()
    first = np.asarray(value, np.uint8) if column.kind == "pixels" else value
    shape = detect_shape(first, column, cfg)
    classes_n = max(len(classes) if classes else 0, int(labels.max()) + 1 if len(labels) else 1)
    return len(labels), shape, classes_n


def check_images_config(cfg: dict) -> None:
    """The image keys' values against their rules (one sentence naming the key)."""
    check_values("data", {k: cfg.get(k) for k in SCHEMA if k in cfg}, SCHEMA)
    from ingredients.augment import check_steps

    check_steps(cfg.get("augment") or [])
