"""Columnar features: batch rows gathered from Arrow columns in memory or read from a file.

A table within the memory budget becomes one row-major float32 matrix per split, transposed from
the columns a cache-sized block at a time on a few threads, the training statistics taken from
each block while it is in cache. Above the budget, features are read a row at a time with
positional reads (RowFile) and standardised batch by batch: from the file itself when it is
uncompressed Arrow IPC with one fixed-size-list feature column (row-major), else from a row-major
copy spilled to the temporary directory one record batch at a time. Statistics are merged block
by block, in the same blocks either way.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import torch

from ingredients.scratch import remove_with, sweep_orphans

TILE_ROWS = 16384  # rows per tile when columns are transposed into a row-major matrix (a few MB)
POSITIONAL_READS = hasattr(os, "preadv")  # RowFile's pread (not on Windows: data stays in memory)
STATS_ROWS = 8192  # training rows per block of the standardisation statistics (a few MB)
MAX_READ_BYTES = 4 * 2**20  # largest single positional read when a row-major file is scanned
LOAD_THREADS = min(4, os.cpu_count() or 1)  # threads building the in-memory matrices


# --------------------------------------------------------------------------- columns as numpy


def width(kind: pa.DataType) -> int:
    """Feature values per row in a column: the list size of a fixed-size list, else 1."""
    return kind.list_size if pa.types.is_fixed_size_list(kind) else 1


def numeric_view(array: pa.Array) -> np.ndarray:
    """Zero-copy read-only numpy view of a null-free integer or float array, from its data
    buffer: pyarrow's to_numpy imports pandas (0.3 s), which a run has no other use for."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    if len(array) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)


def _numpy_view(array: pa.Array) -> np.ndarray:
    """Zero-copy numpy view of a null-free column chunk: (rows,), or (rows, width) for a list."""
    if pa.types.is_fixed_size_list(array.type):
        values = numeric_view(array.flatten())
        return values.reshape(len(array), array.type.list_size)
    return numeric_view(array)


def chunk_views(table: pa.Table, columns: list[str]) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """First row of each non-empty record batch and numpy views of its feature columns."""
    starts, views, row = [], [], 0
    for batch in table.select(columns).to_batches():
        if batch.num_rows:
            starts.append(row)
            views.append([_numpy_view(column) for column in batch.columns])
        row += batch.num_rows
    return np.asarray(starts, dtype=np.int64), views


def row_major(table: pa.Table, columns: list[str], n_features: int) -> np.ndarray:
    """The feature columns of the whole table as one row-major float32 matrix."""
    starts, views = chunk_views(table, columns)
    matrix = np.empty((table.num_rows, n_features), dtype=np.float32)
    gather_sorted(starts, views, np.arange(table.num_rows), matrix)
    return matrix


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


def gather_sorted(
    starts: np.ndarray,
    views: list[list[np.ndarray]],
    rows: np.ndarray,
    out: np.ndarray,
) -> None:
    """Copy feature rows `rows` (ascending) into the float32 matrix out, record batch by record
    batch, each a cache-sized tile at a time."""
    first = np.searchsorted(rows, starts)
    end = np.append(first[1:], len(rows))
    for c in np.flatnonzero(first < end):  # the record batches holding any of the rows
        _gather_chunk(views[c], rows[first[c] : end[c]] - starts[c], out[first[c] : end[c]])


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
        if isinstance(positions, slice):  # plain columns only: torch transposes twice as fast
            torch.from_numpy(out[t0 : t0 + len(tile_rows)]).copy_(torch.from_numpy(tile).T)
        elif flat:
            out[t0 : t0 + len(tile_rows), positions] = tile.T
        for j, values in enumerate(views):
            if values.ndim == 2:
                out[t0 : t0 + len(tile_rows), offsets[j] : offsets[j + 1]] = values[tile_rows]


def _standardize(matrix: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> None:
    """In place: subtract the mean and divide by the std (float32), if there are statistics."""
    if mean is not None:
        matrix -= mean
        matrix /= std


def moments(block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Rows, mean and sum of squared deviations per feature of one block, in float64."""
    x = block.astype(np.float64)
    mean = x.mean(axis=0)
    x -= mean
    return len(x), mean, np.einsum("ij,ij->j", x, x)


def block_statistics(
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


def source_blocks(source: RowFile, rows: np.ndarray) -> Iterator[np.ndarray]:
    """Rows `rows` of a file-backed source in blocks of STATS_ROWS rows (the blocks
    features_in_memory takes moments of, so both give bit-identical statistics)."""
    for start in range(0, len(rows), STATS_ROWS):
        part = rows[start : start + STATS_ROWS]
        block = np.empty((len(part), source.n_features), dtype=np.float32)
        source.gather_sorted(part, block)
        yield block


# --------------------------------------------------------------------------- file-backed features


class MappedIPC:
    """An Arrow IPC file (Feather v2, file or stream format) mapped read-only. Record batches are
    read lazily: an uncompressed batch is a zero-copy view of the map (`whole`), a compressed one
    is decompressed into memory."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.whole = pa.py_buffer(self._map)

    def _reader(self) -> pa_ipc.RecordBatchFileReader | pa_ipc.RecordBatchStreamReader:
        try:
            return pa_ipc.open_file(self.whole)
        except pa.ArrowInvalid:
            return pa_ipc.open_stream(self.whole)

    def batches(self) -> Iterator[pa.RecordBatch]:
        reader = self._reader()
        if isinstance(reader, pa_ipc.RecordBatchFileReader):
            return (reader.get_batch(i) for i in range(reader.num_record_batches))
        return iter(reader)

    def rows(self) -> int:
        """Rows in the file, from its metadata when it is in the file format."""
        reader = self._reader()
        if isinstance(reader, pa_ipc.RecordBatchFileReader):
            return reader.count_rows()
        return sum(batch.num_rows for batch in reader)

    def compressed(self) -> bool:
        """True when the record batches are compressed (read into memory, not views of the map)."""
        first = next(self.batches(), None)
        start, end = self.whole.address, self.whole.address + self.whole.size
        buffers = [b for column in (first.columns if first else []) for b in column.buffers() if b]
        return any(not start <= b.address < end for b in buffers)

    def table(self) -> pa.Table:
        return self._reader().read_all()

    def pieces(self, rows: int) -> Iterator[pa.RecordBatch]:
        """The record batches in slices of at most `rows` rows; after each slice the pages read
        so far leave this process's memory (the page cache keeps them), so resident memory
        stays at one slice (one decompressed record batch for a compressed file)."""
        for batch in self.batches():
            for start in range(0, batch.num_rows, rows):
                yield batch.slice(start, rows)
                self._map.madvise(mmap.MADV_DONTNEED)


def _element_offset(view: np.ndarray, whole: pa.Buffer) -> int | None:
    """Position of the view's first value in the mapping, in items; None if outside or unaligned."""
    start = view.ctypes.data - whole.address
    end = start + view.nbytes
    if start < 0 or end > whole.size or start % view.itemsize:
        return None  # compressed columns are decompressed into memory outside the mapping
    return start // view.itemsize


class RowFile:
    """Row-major features in a file (the fixed-size-list column of an uncompressed Arrow IPC file,
    or a spilled copy), read with one positional read per row (pread): the page cache holds the
    file, this process only the batch."""

    def __init__(
        self, path: Path, width: int, dtype: np.dtype, starts: np.ndarray, offsets: np.ndarray
    ) -> None:
        self.path, self.n_features, self.dtype = path, width, np.dtype(dtype)
        self.row_bytes = width * self.dtype.itemsize
        self.starts, self.offsets = starts, offsets  # first row and its byte offset, per chunk
        self._fd: int | None = None

    def __getstate__(self) -> dict:
        """Pickle without the file descriptor: spawned workers open the file again."""
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

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
        """Rows `rows` of the file as a (len(rows), n_features) float32 matrix."""
        fd, size = self._file(), self.row_bytes
        raw = b"".join(map(os.pread, repeat(fd), repeat(size), self._positions(rows).tolist()))
        if len(raw) != size * len(rows):
            raise OSError(f"data.path: {self.path} ended early (changed while reading?)")
        return np.frombuffer(raw, dtype=self.dtype).reshape(len(rows), -1).astype(np.float32)

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
            self._read(
                span.data.cast("B"),
                int(self._positions(rows[start : start + 1])[0]),
            )
            out[start:end] = span[rows[start:end] - rows[start]]
            start = end


def row_file(path: Path, table: pa.Table, columns: list[str], whole: pa.Buffer) -> RowFile | None:
    """A RowFile over the file itself when its features are one uncompressed fixed-size-list
    column (row-major), else None."""
    kind = table.schema.field(columns[0]).type
    if len(columns) > 1 or not pa.types.is_fixed_size_list(kind):
        return None
    column = columns[0]
    starts, views = chunk_views(table, [column])
    offsets = [_element_offset(chunk[0], whole) for chunk in views]
    if any(o is None for o in offsets):
        return None
    itemsize = views[0][0].itemsize
    byte_offsets = np.asarray(offsets, dtype=np.int64) * itemsize
    return RowFile(path, kind.list_size, views[0][0].dtype, starts, byte_offsets)


SPILL_PREFIX = "reprolab-rows-"  # then the writing process's id: reprolab-rows-<pid>-<random>.f32


def spill(batches: Iterable[pa.RecordBatch], columns: list[str], n_features: int) -> RowFile:
    """Write the feature columns of the record batches, row-major float32, to a scratch file in
    the temporary directory ($TMPDIR), holding one batch in memory at a time; return a RowFile
    over it, which deletes the file when it is garbage collected or the process ends."""
    sweep_orphans(tempfile.gettempdir(), f"{SPILL_PREFIX}{{tag}}-*.f32")  # killed runs' copies
    prefix = f"{SPILL_PREFIX}{os.getpid()}-"
    with _writing_copy():  # unbuffered, so a full disk is reported by the write that hit it
        handle = tempfile.NamedTemporaryFile(
            prefix=prefix, suffix=".f32", buffering=0, delete=False
        )
    first = np.zeros(1, dtype=np.int64)  # one chunk, starting at row 0 and byte 0
    source = RowFile(Path(handle.name), n_features, np.dtype(np.float32), first, first)
    remove_with(source, handle.name)
    with handle:
        for batch in batches:
            rows = row_major(pa.Table.from_batches([batch]), columns, n_features)
            with _writing_copy():
                unwritten = rows.data.cast("B")
                while unwritten:
                    unwritten = unwritten[handle.write(unwritten) :]
    return source


@contextlib.contextmanager
def _writing_copy() -> Iterator[None]:
    """A system error while writing the row-major copy, as the one sentence a user sees."""
    try:
        yield
    except OSError as error:
        raise ValueError(
            f"data.in_memory_mb: cannot write the row-major copy of the data to "
            f"{tempfile.gettempdir()} ({type(error).__name__}: {error}); free space there, "
            "point TMPDIR at a roomier directory or raise data.in_memory_mb"
        ) from None


class ColumnarDataset(torch.utils.data.Dataset):
    """A split of the table; `dataset[indices]` gathers a whole (features, targets) batch at once.
    Features in memory are standardised already; batches read from a file are standardised with
    `mean` and `std` as they are gathered."""

    def __init__(
        self,
        features: torch.Tensor | RowFile,
        targets: torch.Tensor,
        rows: np.ndarray,
        sample_shape: tuple[int, ...],
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        # (n, *sample_shape) float32 tensor, or a file read per batch
        self.features = features
        self.targets = targets  # (n,) int64 or float32
        self.rows = rows  # row numbers in the file, sorted
        self.sample_shape = sample_shape
        self.mean, self.std = mean, std  # float32 per feature value, or None

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
            x = np.take(self.features.numpy().reshape(len(self), -1), idx, axis=0)
        else:
            x = self.features.gather(self.rows[idx])
        _standardize(x, self.mean, self.std)
        y = np.take(self.targets.numpy(), idx)
        return torch.from_numpy(x).reshape(-1, *self.sample_shape), torch.from_numpy(y)


def features_in_memory(
    table: pa.Table,
    columns: list[str],
    n_features: int,
    rows: list[np.ndarray],
    standardize: bool,
) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Row-major float32 matrices per row set, standardised with the first set's mean and std if
    asked (returned too). Blocks of STATS_ROWS rows are filled on a few threads; a block of the
    first set has its moments taken right after it is filled, while it is still in cache."""
    starts, views = chunk_views(table, columns)
    matrices = [np.empty((len(r), n_features), dtype=np.float32) for r in rows]
    blocks = [(k, start) for k, r in enumerate(rows) for start in range(0, len(r), STATS_ROWS)]

    def part(block: tuple[int, int]) -> np.ndarray:
        k, start = block
        return matrices[k][start : start + STATS_ROWS]

    def fill(block: tuple[int, int]) -> tuple | None:
        k, start = block
        gather_sorted(starts, views, rows[k][start : start + STATS_ROWS], part(block))
        return moments(part(block)) if standardize and k == 0 else None

    found = _in_threads(fill, blocks)
    if not standardize:
        return matrices, None, None
    mean, std = block_statistics((m for (k, _), m in zip(blocks, found) if k == 0), n_features)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    _in_threads(lambda block: _standardize(part(block), mean32, std32), blocks)
    return matrices, mean, std
