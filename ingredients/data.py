"""Data ingredient: a Parquet, Arrow IPC or CSV table read by pyarrow, split, standardised, batched.

Batches are gathered from columnar memory by index, several batches at a time (one gather,
then views; no per-sample `__getitem__` + collate). A table within the memory budget becomes
one row-major float32 matrix per split, transposed from the columns a cache-sized tile at a
time on a few threads, while the file's SHA-256 is computed on another. An uncompressed Arrow
IPC file above the budget stays on disk: row-major features (one fixed-size-list column, see
`row_major_table`) are read a row at a time with positional reads, so the process holds only
the batch; one column per feature is gathered with one `take` over the file's memory map.
Worker processes (num_workers) only serve such file-backed data.
"""

# ruff: noqa: F841  (Sacred config scopes assign names that look unused)
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice, repeat
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import torch
from sacred import Ingredient

from ingredients import INSPECTION_COMMANDS

data = Ingredient("data")

REPO_ROOT = Path(__file__).resolve().parent.parent
FORMATS = {"parquet": "parquet", "ipc": "ipc", "feather": "ipc", "arrow": "ipc", "csv": "csv"}
EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".feather": "ipc",
    ".arrow": "ipc",
    ".ipc": "ipc",
    ".arrows": "ipc",
    ".csv": "csv",
}
COMPRESSED_CSV = (".gz", ".bz2", ".zst", ".lz4")
TILE_ROWS = 16384  # rows per tile when columns are transposed into a row-major matrix (a few MB)
STATS_ROWS = 8192  # training rows per block of the standardisation statistics (a few MB)
MAX_READ_BYTES = 4 * 2**20  # largest single positional read when a row-major file is scanned
GROUP_BYTES = 4 * 2**20  # about this much feature data per gather (then split into batches)
LOAD_THREADS = min(4, os.cpu_count() or 1)  # threads building the in-memory matrices


# fmt: off
@data.config
def config():
    path = "data/digits.parquet"  # Parquet, Feather/Arrow IPC or CSV file; relative to the working directory or the repository root
    format = "auto"               # auto (by extension) | parquet | ipc | csv
    target = "label"              # target column
    features = None               # list of feature columns (numeric, or fixed-size lists of numbers), or None for every column but the target
    shape = None                  # reshape each sample's features, e.g. [1, 8, 8] for the CNN; None keeps a flat vector
    standardize = True            # standardise features with mean/std of the training split only
    val_fraction = 0.2            # fraction of rows held out for validation, in (0, 1)
    split_seed = 0                # seed of the train/validation split (fixed, so runs with different seeds share one split)
    batch_size = 64               # samples per training batch
    shuffle = True                # reshuffle the training set every epoch
    drop_last = False             # drop the last incomplete training batch
    num_workers = 0               # worker processes reading batches of a file-backed dataset (in-memory batches are gathered in the main process, cheaper than any hand-over)
    pin_memory = True             # pin host memory for faster copies to the GPU (only takes effect when CUDA is used)
    in_memory_mb = 1024           # uncompressed IPC files whose float32 features exceed this many MB are read per batch from the file instead of loaded
# fmt: on


# --------------------------------------------------------------------------- columns as numpy


def _width(kind: pa.DataType) -> int:
    """Feature values per row in a column: the list size of a fixed-size list, else 1."""
    return kind.list_size if pa.types.is_fixed_size_list(kind) else 1


def _numpy_view(array: pa.Array) -> np.ndarray:
    """Zero-copy numpy view of a null-free column chunk: (rows,), or (rows, width) for a list."""
    if pa.types.is_fixed_size_list(array.type):
        values = array.flatten().to_numpy(zero_copy_only=True)
        return values.reshape(len(array), array.type.list_size)
    return array.to_numpy(zero_copy_only=True)


def _chunk_views(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """First row of each non-empty record batch and numpy views of its feature columns."""
    starts, views, row = [], [], 0
    for batch in table.select(columns).to_batches():
        if batch.num_rows:
            starts.append(row)
            views.append([_numpy_view(column) for column in batch.columns])
        row += batch.num_rows
    return np.asarray(starts, dtype=np.int64), views


def _view_width(view: np.ndarray) -> int:
    """Feature values per row in a column view (2-D for fixed-size lists)."""
    return view.shape[1] if view.ndim == 2 else 1


def _take(values: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[...] = values[rows] for a 1-D column, cast to out's dtype."""
    if values.dtype == out.dtype:
        np.take(values, rows, out=out)
    else:
        out[...] = values[rows]


def _in_threads(function: Callable, items: Sequence) -> list:
    """function over items on LOAD_THREADS threads (numpy releases the GIL in copies and
    reductions), the results in the order of the items, so the outcome never depends on timing."""
    if LOAD_THREADS < 2 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        return list(pool.map(function, items))


def _gather_sorted(
    starts: np.ndarray,
    views: list[list[np.ndarray]],
    rows: np.ndarray,
    out: np.ndarray,
    threads: bool = False,
) -> None:
    """Copy feature rows `rows` (ascending) into the float32 matrix out, record batch by record
    batch (on several threads if asked), each a cache-sized tile at a time."""
    first = np.searchsorted(rows, starts)
    end = [*first[1:], len(rows)]

    def copy_chunk(c: int) -> None:
        _gather_chunk(views[c], rows[first[c] : end[c]] - starts[c], out[first[c] : end[c]])

    chunks = range(len(views))
    if threads:
        _in_threads(copy_chunk, chunks)
    else:
        for c in chunks:
            copy_chunk(c)


def _gather_chunk(views: list[np.ndarray], local: np.ndarray, out: np.ndarray) -> None:
    """out[i] = features of row local[i] of one record batch: plain columns are gathered into a
    column-major tile that fits in cache, then transposed; list columns are copied row-wise."""
    offsets = np.cumsum([0, *map(_view_width, views)])
    flat = [j for j, view in enumerate(views) if view.ndim == 1]
    positions = slice(None) if len(flat) == out.shape[1] else offsets[flat]
    slab = np.empty((len(flat), min(TILE_ROWS, max(len(local), 1))), dtype=np.float32)
    for t0 in range(0, len(local), TILE_ROWS):
        tile_rows = local[t0 : t0 + TILE_ROWS]
        tile = slab[:, : len(tile_rows)]
        for i, j in enumerate(flat):
            _take(views[j], tile_rows, tile[i])
        if flat:
            out[t0 : t0 + len(tile_rows), positions] = tile.T
        for j, values in enumerate(views):
            if values.ndim == 2:
                out[t0 : t0 + len(tile_rows), offsets[j] : offsets[j + 1]] = values[tile_rows]


def _standardize(matrix: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> None:
    """In place: subtract the mean and divide by the std (float32), if there are statistics."""
    if mean is not None:
        matrix -= mean
        matrix /= std


def _moments(block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Rows, mean and sum of squared deviations per feature of one block, in float64."""
    x = block.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    return len(x), mean, np.einsum("ij,ij->j", x, x)


def _block_statistics(
    moments: Iterable[tuple[int, np.ndarray, np.ndarray]], n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (0 becomes 1) per feature from the blocks' moments, merged in block order
    with Chan's formula (a constant feature gives exactly 0: float32 sums are exact in float64)."""
    count, mean, m2 = 0, np.zeros(n_features), np.zeros(n_features)
    for n, block_mean, block_m2 in moments:
        delta, total = block_mean - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + block_m2 + delta**2 * (count * n / total)
        count = total
    std = np.sqrt(m2 / max(count, 1))
    return mean, np.where(std > 0, std, 1.0)


def _matrix_blocks(matrix: np.ndarray) -> list[np.ndarray]:
    """The matrix in blocks (views) of STATS_ROWS rows."""
    return [matrix[start : start + STATS_ROWS] for start in range(0, len(matrix), STATS_ROWS)]


def _source_blocks(source: MappedColumns | RowFile, rows: np.ndarray) -> Iterator[np.ndarray]:
    """Rows `rows` of a file-backed source in blocks of STATS_ROWS rows (the same blocks as
    _matrix_blocks gives for the in-memory matrix, so both give bit-identical statistics)."""
    for start in range(0, len(rows), STATS_ROWS):
        part = rows[start : start + STATS_ROWS]
        block = np.empty((len(part), source.n_features), dtype=np.float32)
        source.gather_sorted(part, block)
        yield block


# --------------------------------------------------------------------------- file-backed features


def _open_ipc(path: Path) -> tuple[pa.Table, pa.Buffer]:
    """Memory-map an Arrow IPC file (Feather v2, file or stream format): the zero-copy table and
    the whole mapping as one buffer (uncompressed columns point into it)."""
    whole = pa.memory_map(str(path), "r").read_buffer()
    try:
        return pa_ipc.open_file(pa.BufferReader(whole)).read_all(), whole
    except pa.ArrowInvalid:
        return pa_ipc.open_stream(pa.BufferReader(whole)).read_all(), whole


def _element_offset(view: np.ndarray, whole: pa.Buffer) -> int | None:
    """Position of the view's first value in the mapping, in items; None if outside or unaligned."""
    start = view.ctypes.data - whole.address
    end = start + view.nbytes
    if start < 0 or end > whole.size or start % view.itemsize:
        return None  # compressed columns are decompressed into memory outside the mapping
    return start // view.itemsize


def _is_mapped(views: list[list[np.ndarray]], whole: pa.Buffer) -> bool:
    """True when every feature column lies in the file's memory map (uncompressed, aligned)."""
    return all(_element_offset(v, whole) is not None for chunk in views for v in chunk)


class MappedColumns:
    """Feature columns of an uncompressed Arrow IPC file, gathered per batch from its memory map
    with one `take` per dtype over the mapped bytes. Pages a batch touches stay mapped (and count
    in resident memory) until the kernel reclaims them; row-major files use RowFile instead."""

    def __init__(self, path: Path, columns: list[str], n_features: int) -> None:
        self.path, self.columns, self.n_features = path, columns, n_features
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._state: tuple | None = None

    def __getstate__(self) -> dict:
        """Pickle without the mapping: spawned workers map the file again."""
        return {**self.__dict__, "_state": None}

    def _open(self) -> tuple:
        """Chunk starts, views, and per dtype: flat view, element offsets, row strides, positions."""
        table, whole = _open_ipc(self.path)
        starts, views = _chunk_views(table, self.columns)
        columns = [(j, i, v) for j, v in enumerate(views[0]) for i in range(_view_width(v))]
        groups = []
        for dtype in sorted({v.dtype for v in views[0]}, key=str):
            chosen = [(n, j, i) for n, (j, i, v) in enumerate(columns) if v.dtype == dtype]
            offsets = np.array(
                [[_element_offset(chunk[j], whole) + i for _, j, i in chosen] for chunk in views],
                dtype=np.int64,
            )
            strides = np.array([_view_width(views[0][j]) for _, j, _ in chosen], dtype=np.int64)
            positions = [n for n, _, _ in chosen]
            everything = slice(None) if len(positions) == self.n_features else positions
            flat = np.frombuffer(whole, dtype=dtype, count=whole.size // dtype.itemsize)
            groups.append((flat, offsets, strides, everything))
        self._state = (starts, views, groups)
        return self._state

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of the file as a standardised (len(rows), n_features) float32 matrix."""
        starts, _, groups = self._state or self._open()
        chunk = np.searchsorted(starts, rows, side="right") - 1
        local = rows - starts[chunk]
        out = np.empty((len(rows), self.n_features), dtype=np.float32)
        for flat, offsets, strides, positions in groups:
            index = offsets[chunk] + local[:, None] * strides
            if positions == slice(None) and flat.dtype == out.dtype:
                np.take(flat, index, out=out)
            else:
                out[:, positions] = flat[index]
        _standardize(out, self.mean, self.std)
        return out

    def gather_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Raw feature rows `rows` (ascending) into out, for the statistics."""
        starts, views, _ = self._state or self._open()
        _gather_sorted(starts, views, rows, out)


class RowFile:
    """Row-major features (one fixed-size-list column) of an uncompressed Arrow IPC file, read with
    one positional read per row (pread): the page cache holds the file, this process the batch."""

    def __init__(
        self, path: Path, width: int, dtype: np.dtype, starts: np.ndarray, offsets: np.ndarray
    ) -> None:
        self.path, self.n_features, self.dtype = path, width, np.dtype(dtype)
        self.row_bytes = width * self.dtype.itemsize
        self.starts, self.offsets = starts, offsets  # first row and its byte offset, per chunk
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        """Pickle without the file descriptor: spawned workers open the file again."""
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _file(self) -> int:
        """The file descriptor, opened on first use in each process."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def _read(self, buffer: memoryview, offset: int) -> None:
        """Fill buffer from the file at offset, or fail if the file is shorter than recorded."""
        while len(buffer):
            count = os.preadv(self._file(), [buffer], offset)
            if count <= 0:
                raise OSError(f"data.path: {self.path} ended early (changed while reading?)")
            buffer, offset = buffer[count:], offset + count

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Byte offset of each row in the file."""
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        return self.offsets[chunk] + (rows - self.starts[chunk]) * self.row_bytes

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of the file as a standardised (len(rows), n_features) float32 matrix."""
        fd, size = self._file(), self.row_bytes
        raw = b"".join(map(os.pread, repeat(fd), repeat(size), self._positions(rows).tolist()))
        if len(raw) != size * len(rows):
            raise OSError(f"data.path: {self.path} ended early (changed while reading?)")
        out = np.frombuffer(raw, dtype=self.dtype).reshape(len(rows), -1).astype(np.float32)
        _standardize(out, self.mean, self.std)
        return out

    def gather_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Raw rows `rows` (ascending) into out, reading contiguous stretches of the file."""
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        span_rows = max(1, MAX_READ_BYTES // self.row_bytes)
        start = 0
        while start < len(rows):
            c = chunk[start]
            chunk_end = self.starts[c + 1] if c + 1 < len(self.starts) else np.iinfo(np.int64).max
            limit = min(rows[start] + span_rows, chunk_end)
            end = int(np.searchsorted(rows, limit, side="left"))
            span = np.empty((rows[end - 1] - rows[start] + 1, self.n_features), dtype=self.dtype)
            self._read(memoryview(span).cast("B"), int(self._positions(rows[start : start + 1])[0]))
            out[start:end] = span[rows[start:end] - rows[start]]
            start = end


def _row_file(path: Path, table: pa.Table, column: str, whole: pa.Buffer) -> RowFile | None:
    """A RowFile for a single fixed-size-list feature column lying in the mapping, else None."""
    kind = table.schema.field(column).type
    if not pa.types.is_fixed_size_list(kind) or not hasattr(os, "preadv"):  # no pread on Windows
        return None
    starts, views = _chunk_views(table, [column])
    offsets = [_element_offset(chunk[0], whole) for chunk in views]
    if any(o is None for o in offsets):
        return None
    itemsize = views[0][0].itemsize
    byte_offsets = np.asarray(offsets, dtype=np.int64) * itemsize
    return RowFile(path, kind.list_size, views[0][0].dtype, starts, byte_offsets)


class ColumnarDataset(torch.utils.data.Dataset):
    """A split of the table; `dataset[indices]` gathers a whole (features, targets) batch at once."""

    def __init__(
        self,
        features: torch.Tensor | MappedColumns | RowFile,
        targets: torch.Tensor,
        rows: np.ndarray,
        sample_shape: tuple[int, ...],
    ) -> None:
        # (n, *sample_shape) float32 tensor, or a file-backed source gathered per batch
        self.features = features
        self.targets = targets  # (n,) int64 or float32
        self.rows = rows  # row numbers in the file, sorted
        self.sample_shape = sample_shape

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_memory(self) -> bool:
        """True when the features are one contiguous float32 tensor."""
        return isinstance(self.features, torch.Tensor)

    def __getitem__(
        self, indices: torch.Tensor | np.ndarray | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the batch at positions `indices` (1-D) of this split."""
        if isinstance(indices, torch.Tensor):
            indices = indices.numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        # numpy's take: one thread, never waiting for torch's intra-op threads on a busy machine
        if isinstance(self.features, torch.Tensor):
            x = torch.from_numpy(np.take(self.features.numpy(), idx, axis=0))
        else:
            x = torch.from_numpy(self.features.gather(self.rows[idx])).reshape(
                -1, *self.sample_shape
            )
        return x, torch.from_numpy(np.take(self.targets.numpy(), idx))


@dataclass
class Splits:
    """What load_splits returns: the two datasets and what the model and the run record need."""

    train: ColumnarDataset
    val: ColumnarDataset
    input_shape: tuple[int, ...]  # one sample's feature shape
    num_classes: int  # max label + 1 for integer targets, 1 for float targets
    fingerprint: dict  # path, format, size, sha256, rows, columns of the data file
    standardization: dict | None  # {"mean": [...], "std": [...]} of the training split, or None
    split: dict | None = None  # split_seed, val_fraction, row counts, sha256 of the val rows


# --------------------------------------------------------------------------- validation


def _fail(message: str) -> NoReturn:
    """Raise the one-sentence ValueError a user sees for bad input."""
    raise ValueError(message)


def _is_int(value: object) -> bool:
    """True for integers (numpy ones too) but not for booleans."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _abbrev(names: Sequence[str], limit: int = 8) -> str:
    """Column names for an error message, shortened to the first and last few."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join([*names[:4], "...", *names[-2:]]) + f"; {len(names)} in all"


def resolve_path(path: str | Path) -> Path:
    """Absolute path of the data file: a relative path is looked up in the working directory,
    then in the repository root (so the bundled dataset is found from anywhere)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()


def resolve_format(path: Path, format: str) -> str:
    """Canonical format (parquet | ipc | csv) from `format` or, for auto, the file's extension."""
    if format != "auto":
        if not isinstance(format, str) or format.lower() not in FORMATS:
            _fail(f"data.format must be auto, parquet, ipc (feather, arrow) or csv, got {format!r}")
        return FORMATS[format.lower()]
    name = path.name.lower()
    for suffix in COMPRESSED_CSV:
        if name.endswith(".csv" + suffix):
            return "csv"
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        _fail(
            f"data.format: cannot tell the format of {path} from its extension; "
            "set data.format to parquet, ipc or csv"
        )
    return found


def _check_options(
    val_fraction: float,
    split_seed: int,
    standardize: bool,
    shape: Sequence[int] | None,
    features: Sequence[str] | None,
    target: str,
    in_memory_mb: float,
) -> None:
    """Validate the cheap config values before touching the file."""
    if (
        not isinstance(val_fraction, (int, float))
        or isinstance(val_fraction, bool)
        or not 0 < val_fraction < 1
    ):
        _fail(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
    if not _is_int(split_seed):
        _fail(f"data.split_seed must be an integer, got {split_seed!r}")
    if not isinstance(standardize, bool):
        _fail(f"data.standardize must be true or false, got {standardize!r}")
    if shape is not None and (
        not isinstance(shape, (list, tuple))
        or not shape
        or not all(_is_int(s) and s > 0 for s in shape)
    ):
        _fail(f"data.shape must be None or a non-empty list of positive integers, got {shape!r}")
    if not isinstance(target, str) or not target:
        _fail(f"data.target must be a column name, got {target!r}")
    if features is not None:
        if (
            not isinstance(features, (list, tuple))
            or not features
            or not all(isinstance(f, str) for f in features)
        ):
            _fail(
                f"data.features must be None or a non-empty list of column names, got {features!r}"
            )
        if len(set(features)) != len(features):
            _fail(f"data.features lists a column twice: {list(features)!r}")
        if target in features:
            _fail(f"data.features must not contain the target column {target!r}")
    if (
        not isinstance(in_memory_mb, (int, float))
        or isinstance(in_memory_mb, bool)
        or in_memory_mb < 0
    ):
        _fail(f"data.in_memory_mb must be a non-negative number, got {in_memory_mb!r}")


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _check_columns(
    schema: pa.Schema, path: Path, target: str, features: Sequence[str] | None
) -> list[str]:
    """Check that target and features exist and are numeric; return the feature columns."""
    names = schema.names
    wanted = list(features) if features is not None else [n for n in names if n != target]
    if target not in names:
        _fail(f"data.target: column {target!r} is not in {path} (columns: {_abbrev(names)})")
    if not _is_number(schema.field(target).type):
        _fail(
            f"data.target: column {target!r} in {path} must be integer or floating point, "
            f"got {schema.field(target).type}"
        )
    for column in wanted:
        if column not in names:
            _fail(f"data.features: column {column!r} is not in {path} (columns: {_abbrev(names)})")
        kind = schema.field(column).type
        if not (
            _is_number(kind) or (pa.types.is_fixed_size_list(kind) and _is_number(kind.value_type))
        ):
            _fail(
                f"data.features: column {column!r} in {path} must be integer or floating point "
                f"(or a fixed-size list of them), got {kind}"
            )
    if not wanted:
        _fail(f"data.features: {path} has no column besides the target {target!r}")
    return wanted


def _feature_count(schema: pa.Schema, columns: list[str]) -> int:
    """Feature values per row: one per plain column, list_size per fixed-size-list column."""
    return sum(_width(schema.field(c).type) for c in columns)


# --------------------------------------------------------------------------- reading


def _sample_shape(shape: Sequence[int] | None, n_features: int) -> tuple[int, ...]:
    """One sample's shape; a configured shape must hold exactly the feature values."""
    sample_shape = tuple(int(s) for s in shape) if shape is not None else (n_features,)
    if math.prod(sample_shape) != n_features:
        _fail(
            f"data.shape {list(sample_shape)} holds {math.prod(sample_shape)} values "
            f"but there are {n_features} feature values per row"
        )
    return sample_shape


def read_schema(path: Path, fmt: str) -> pa.Schema:
    """The file's schema, reading as little of it as the format allows."""
    try:
        if fmt == "parquet":
            return pq.read_schema(path)
        if fmt == "csv":
            return pa_csv.open_csv(path).schema
        source = pa.memory_map(str(path), "r")
        try:
            return pa_ipc.open_file(source).schema
        except pa.ArrowInvalid:
            source.seek(0)
            return pa_ipc.open_stream(source).schema
    except (pa.ArrowException, OSError) as error:
        raise ValueError(
            f"data.path: cannot read {path} as {fmt} ({type(error).__name__}: {error})"
        ) from None


@data.config_hook
def validate(config, command_name, logger):
    """Refuse bad data settings before the run starts, reading only the file's schema."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    cfg = config["data"]
    _check_options(
        cfg["val_fraction"],
        cfg["split_seed"],
        cfg["standardize"],
        cfg["shape"],
        cfg["features"],
        cfg["target"],
        cfg["in_memory_mb"],
    )
    _check_loader_options(
        cfg["batch_size"], cfg["shuffle"], cfg["drop_last"], cfg["num_workers"], cfg["pin_memory"]
    )
    file = resolve_path(cfg["path"])
    if not file.is_file():
        _fail(f"data.path: file not found: {cfg['path']} (looked in {Path.cwd()} and {REPO_ROOT})")
    fmt = resolve_format(file, cfg["format"])
    schema = read_schema(file, fmt)
    columns = _check_columns(schema, file, cfg["target"], cfg["features"])
    _sample_shape(cfg["shape"], _feature_count(schema, columns))
    return {}


def _read_table(
    path: Path, fmt: str, target: str, features: Sequence[str] | None
) -> tuple[pa.Table, pa.Buffer | None, list[str], list[str]]:
    """Read the table (only the needed columns of Parquet); return it, the IPC mapping (or None),
    the feature columns and the file's columns."""
    whole = None
    try:
        if fmt == "parquet":
            schema = pq.read_schema(path)
            wanted = _check_columns(schema, path, target, features)
            return pq.read_table(path, columns=[*wanted, target]), None, wanted, schema.names
        if fmt == "ipc":
            table, whole = _open_ipc(path)
        else:
            table = pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(
            f"data.path: cannot read {path} as {fmt} ({type(error).__name__}: {error})"
        ) from None
    columns = _check_columns(table.schema, path, target, features)
    return table, whole, columns, table.schema.names


def fingerprint_file(path: Path) -> dict:
    """Size and SHA-256 of the file's bytes, hashed in chunks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def _fingerprint_in_background(path: Path) -> Callable[[], dict]:
    """Start hashing the file on a thread (hashlib releases the GIL, so it overlaps the reading);
    the returned function waits for the result."""
    result: dict = {}

    def work() -> None:
        try:
            result["value"] = fingerprint_file(path)
        except BaseException as error:  # handed to the waiting thread
            result["error"] = error

    thread = threading.Thread(target=work, name="data-fingerprint", daemon=True)
    thread.start()

    def wait() -> dict:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    return wait


def _check_no_nulls(table: pa.Table, columns: list[str]) -> None:
    """Refuse feature columns with missing values (list columns: in their values too)."""
    for name in columns:
        column = table.column(name)
        missing = column.null_count
        if pa.types.is_fixed_size_list(column.type):
            missing += sum(chunk.flatten().null_count for chunk in column.chunks)
        if missing:
            _fail(f"data: column {name!r} has {missing} missing values; fill or drop them first")


def _column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    """One column as a numpy array of `dtype`; nulls are rejected."""
    column = table.column(name)
    if column.null_count:
        _fail(
            f"data: column {name!r} has {column.null_count} missing values; fill or drop them first"
        )
    return column.to_numpy().astype(dtype, copy=False)


# --------------------------------------------------------------------------- splitting


def split_rows(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation row numbers from a seeded permutation of the n rows."""
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        _fail(
            f"data.val_fraction {val_fraction} leaves an empty train or validation split "
            f"of {n} rows"
        )
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(split_seed).permutation(n)[:n_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)  # sorted, without a sort


# --------------------------------------------------------------------------- load_splits


def _file_source(
    file: Path, table: pa.Table, whole: pa.Buffer | None, columns: list[str], n_features: int
) -> MappedColumns | RowFile | None:
    """The file-backed feature source of an uncompressed IPC file, or None if it must be loaded."""
    if whole is None:
        return None
    if len(columns) == 1:
        rows = _row_file(file, table, columns[0], whole)
        if rows is not None:
            return rows
    if not _is_mapped(_chunk_views(table, columns)[1], whole):
        return None  # compressed: the columns were decompressed into memory anyway
    return MappedColumns(file, columns, n_features)


def _features_in_memory(
    table: pa.Table,
    columns: list[str],
    n_features: int,
    rows: list[np.ndarray],
    standardize: bool,
) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Row-major float32 matrices per row set, standardised with the first set's statistics."""
    starts, views = _chunk_views(table, columns)
    out = []
    for r in rows:
        matrix = np.empty((len(r), n_features), dtype=np.float32)
        _gather_sorted(starts, views, r, matrix, threads=True)
        out.append(matrix)
    if not standardize:
        return out, None, None
    mean, std = _block_statistics(_in_threads(_moments, _matrix_blocks(out[0])), n_features)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    blocks = [block for matrix in out for block in _matrix_blocks(matrix)]
    _in_threads(lambda block: _standardize(block, mean32, std32), blocks)
    return out, mean, std


@data.capture
def load_splits(
    path: str,
    format: str,
    target: str,
    features: Sequence[str] | None,
    shape: Sequence[int] | None,
    standardize: bool,
    val_fraction: float,
    split_seed: int,
    in_memory_mb: float,
) -> Splits:
    """Read, validate, split and standardise the table: train/val datasets plus what runs record."""
    _check_options(val_fraction, split_seed, standardize, shape, features, target, in_memory_mb)
    file = resolve_path(path)
    if not file.is_file():
        _fail(f"data.path: file not found: {file}")
    fmt = resolve_format(file, format)
    fingerprint = _fingerprint_in_background(file)
    table, whole, columns, file_columns = _read_table(file, fmt, target, features)
    n_features = _feature_count(table.schema, columns)
    sample_shape = _sample_shape(shape, n_features)
    _check_no_nulls(table, columns)
    train_rows, val_rows = split_rows(table.num_rows, val_fraction, split_seed)
    targets, num_classes = _targets(table, target, file)
    source = None
    if table.num_rows * n_features * 4 > in_memory_mb * 2**20:
        source = _file_source(file, table, whole, columns, n_features)
    if source is not None:
        del table, whole  # unmap: batches are read from the file from now on
        mean = std = None
        if standardize:
            moments = map(_moments, _source_blocks(source, train_rows))
            mean, std = _block_statistics(moments, n_features)
            source.mean, source.std = mean.astype(np.float32), std.astype(np.float32)
        train = val = source
    else:
        (train_x, val_x), mean, std = _features_in_memory(
            table, columns, n_features, [train_rows, val_rows], standardize
        )
        train = torch.from_numpy(train_x).reshape(-1, *sample_shape)
        val = torch.from_numpy(val_x).reshape(-1, *sample_shape)
        del table, whole
    return Splits(
        train=ColumnarDataset(
            train, torch.from_numpy(targets[train_rows]), train_rows, sample_shape
        ),
        val=ColumnarDataset(val, torch.from_numpy(targets[val_rows]), val_rows, sample_shape),
        input_shape=sample_shape,
        num_classes=num_classes,
        fingerprint={
            "path": str(file),
            "format": fmt,
            **fingerprint(),
            "rows": len(targets),
            "columns": list(file_columns),
        },
        standardization={"mean": mean.tolist(), "std": std.tolist()} if standardize else None,
        split={
            "split_seed": split_seed,
            "val_fraction": val_fraction,
            "train_rows": len(train_rows),
            "val_rows": len(val_rows),
            "val_rows_sha256": hashlib.sha256(val_rows.astype("<i8").tobytes()).hexdigest(),
        },
    )


def _targets(table: pa.Table, target: str, path: Path) -> tuple[np.ndarray, int]:
    """Target array (int64 for integer columns, float32 for float ones) and the class count."""
    if pa.types.is_integer(table.schema.field(target).type):
        labels = _column(table, target, np.int64)
        if labels.min() < 0:
            _fail(
                f"data.target: column {target!r} in {path} has negative labels; "
                "classes must be 0, 1, 2, ..."
            )
        return labels, int(labels.max()) + 1
    return _column(table, target, np.float32), 1


def row_major_table(
    table: pa.Table, target: str, features: Sequence[str] | None = None, name: str = "features"
) -> pa.Table:
    """The table with its feature columns packed into one fixed-size-list column `name` (float32)
    beside the target: written as uncompressed Arrow IPC, each row's features are contiguous, so
    a file larger than memory is read a row at a time (see RowFile)."""
    columns = _check_columns(table.schema, Path("<table>"), target, features)
    _check_no_nulls(table, columns)
    starts, views = _chunk_views(table, columns)
    matrix = np.empty((table.num_rows, _feature_count(table.schema, columns)), dtype=np.float32)
    _gather_sorted(starts, views, np.arange(table.num_rows), matrix)
    packed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return pa.table({name: packed, target: table.column(target)})


# --------------------------------------------------------------------------- loading


class BatchIndexSampler(torch.utils.data.Sampler):
    """Yields whole batches of positions; shuffling draws one torch.randperm per epoch."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = (
            torch.randperm(self.n, generator=self.generator).numpy()
            if self.shuffle
            else np.arange(self.n)
        )
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class GroupSampler(torch.utils.data.Sampler):
    """Consecutive batches of a BatchIndexSampler joined into one index array: one gather (and,
    from a worker, one hand-over, which costs far more than a gather) serves several batches."""

    def __init__(self, sampler: BatchIndexSampler, group: int) -> None:
        self.sampler, self.group = sampler, group

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.group)

    def __iter__(self) -> Iterator[np.ndarray]:
        batches = iter(self.sampler)
        while group := list(islice(batches, self.group)):
            yield np.concatenate(group)


def _keep(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for ready-made batches (module level so spawned workers can pickle it)."""
    return batch


class BatchLoader:
    """Iterable of (features, targets) batches; len() is the number of batches per epoch.

    Batches are gathered `group` at a time (one gather, in this process or in a worker) and
    split into views: the batches and their order are the same whatever the group size."""

    def __init__(
        self,
        dataset: ColumnarDataset,
        sampler: BatchIndexSampler,
        pin_memory: bool,
        group: int,
        workers: torch.utils.data.DataLoader | None = None,
    ) -> None:
        self.dataset, self.sampler, self.group = dataset, sampler, group
        self.pin_memory, self.workers = pin_memory, workers
        self.batch_size = sampler.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[indices]
        return (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        groups = self.workers
        if groups is None:
            groups = map(self._gather, GroupSampler(self.sampler, self.group))
        for x, y in groups:
            yield from zip(x.split(self.batch_size), y.split(self.batch_size))


def _check_loader_options(
    batch_size: int, shuffle: bool, drop_last: bool, num_workers: int, pin_memory: bool
) -> None:
    """Validate the loader's config values."""
    if not _is_int(batch_size) or batch_size <= 0:
        _fail(f"data.batch_size must be a positive integer, got {batch_size!r}")
    if not _is_int(num_workers) or num_workers < 0:
        _fail(f"data.num_workers must be a non-negative integer, got {num_workers!r}")
    for key, value in [("shuffle", shuffle), ("drop_last", drop_last), ("pin_memory", pin_memory)]:
        if not isinstance(value, bool):
            _fail(f"data.{key} must be true or false, got {value!r}")


def _group_size(dataset: ColumnarDataset, batch_size: int, n_batches: int, workers: int) -> int:
    """Batches per gather: about GROUP_BYTES of features, yet every worker gets work."""
    batch_bytes = batch_size * math.prod(dataset.sample_shape) * 4
    by_size = max(1, GROUP_BYTES // batch_bytes)
    return max(1, min(by_size, math.ceil(n_batches / (2 * workers)))) if workers else by_size


@data.capture
def make_loader(
    dataset: ColumnarDataset,
    train: bool,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
    device_is_cuda: bool = False,
) -> BatchLoader:
    """Batches of `dataset`: shuffled by `generator` (and drop_last) for training, else in order."""
    _check_loader_options(batch_size, shuffle, drop_last, num_workers, pin_memory)
    shuffle, drop_last = (shuffle, drop_last) if train else (False, False)
    if drop_last and batch_size > len(dataset):
        _fail(
            f"data.batch_size {batch_size} exceeds the {len(dataset)} training samples "
            "and data.drop_last is set, so an epoch would have no batch"
        )
    sampler = BatchIndexSampler(len(dataset), batch_size, shuffle, drop_last, generator)
    pin = pin_memory and device_is_cuda and torch.cuda.is_available()
    # A gather from memory takes microseconds; handing a batch over from a worker process
    # (shared memory, pickling, page faults) costs far more, so only file reads get workers.
    num_workers = 0 if dataset.in_memory else num_workers
    group = _group_size(dataset, batch_size, len(sampler), num_workers)
    if num_workers == 0:
        return BatchLoader(dataset, sampler, pin, group)
    # Workers get their own generator derived from `generator`, so the batch order (drawn in this
    # process) is the same whatever num_workers is, and the generator's state stays resumable.
    worker_generator = (
        torch.Generator().manual_seed(generator.initial_seed()) if generator is not None else None
    )
    workers = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=GroupSampler(sampler, group),
        num_workers=num_workers,
        collate_fn=_keep,
        pin_memory=pin,
        worker_init_fn=worker_init_fn,
        generator=worker_generator,
        persistent_workers=True,
    )
    return BatchLoader(dataset, sampler, pin, group, workers)
