"""The index of a file store: finished runs' `load_runs` rows in one Arrow IPC file, a cache.

`runs/.reprolab/runs-index.arrow` holds, per finished run (final status, metrics sealed), the
row load_runs gives plus a signature of its record files. It is never the truth: a row is used
only while its run folder is the same folder (inode) and, when the row is returned, while the
stat of its run.json, config.json and metrics.json is unchanged; anything else is read from the
records, as are running runs, always. The file is replaced whole (temporary file + rename) under
a lock, each writer merging into what is there, so two processes updating it lose nothing. A
missing, damaged or foreign file (wrong schema, garbage, object-encoding keys) is rebuilt.
Reading it runs nothing: plain Arrow types only, checked before use; config cells are JSON text
read by observers.records.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ingredients.progress import progress
from observers.files import exclusive_lock, replacing
from observers.records import RecordError, loads_plain
from observers.rows import (
    RECORD_COLUMNS,
    SUMMARY_STATS,
    check_config_keys,
    complete_row,
    matches,
    record_row,
    runs_frame,
    same_value,
    typed_column,
)
from observers.store import FileRunStore

INDEX = Path(".reprolab") / "runs-index.arrow"
LOCK = Path(".reprolab") / "runs-index.lock"
VERSION = {b"reprolab.index": b"1"}  # schema metadata; another value reads as damaged
FINAL = frozenset({"COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT", "PRUNED"})  # a run that ended
SIGNED = ("run.json", "config.json", "metrics.json")  # the files a row is read from
SIGNATURE, FOLDER = "_index.signature", "_index.folder"  # internal columns (never a metric's)
SMALL_STORE = 1000  # up to this many runs, metric-summaries.json is kept as before too
PROGRESS_AFTER = 1000  # runs read at once before a progress bar may show (on a terminal)
CATCH_UP = 10_000  # runs an index lacks that are indexed in chunks of this many, first
WHOLE_FILE = 1 << 22  # bytes of an index read whole (about 6,000 runs); larger: by column
BATCH_ROWS = 4096  # rows per record batch of the file: a page of ls reads one or two
MORE_BATCHES = 32  # small batches of appended rows kept before the file is written compacted
LOCK_WAIT = 10.0  # seconds a writer waits for another; then it leaves the index as it is
TEXT, TIME = pa.string(), pa.timestamp("us", tz="UTC")
RECORD_TYPES = {  # tables.RECORD_COLUMNS as Arrow types
    "experiment": TEXT,
    "status": TEXT,
    "start_time": TIME,
    "stop_time": TIME,
    "heartbeat": TIME,
    "duration": pa.duration("us"),
    "host": TEXT,
    "processes": pa.int64(),
    "git_commit": TEXT,
    "git_dirty": pa.bool_(),
    "result": pa.float64(),
    "note": TEXT,
    "sweep": TEXT,
    "sweep_index": pa.int64(),
    "trial": pa.int64(),
    "pruned_epoch": pa.int64(),
}
STATS = (".last", ".min", ".max")


class Damaged(ValueError):
    """The index file is not one this module wrote (or no longer whole): it is rebuilt."""


# --------------------------------------------------------------------------- reading runs


def indexed_runs(
    store: FileRunStore,
    run_ids: Iterable[int] | None,
    statuses: set[str] | None,
    experiments: set[str] | None,
    sweep: str | None,
    wanted: dict,
    last: int | None = None,
) -> tuple[pd.DataFrame, int]:
    """load_runs' table of the runs that match (the last `last` of them) and how many match.

    Only the rows returned are checked against their files and read when stale, so the cost
    follows the answer, not the store; new, replaced and running runs are read every time."""
    present = store.run_ids()
    ids = present if run_ids is None else _known(store, present, run_ids)
    index = IndexFile.open(store.root)
    if index is None and (store.root / INDEX).is_dir():
        store.skipped.append(_folder_in_place(store.root / INDEX))
    filters = (statuses, experiments, sweep, wanted, last)
    try:
        read: dict[int, tuple[dict, int]] = {}
        if ids is present:  # every run is read that the index lacks: a chunk at a time
            index, read = _caught_up(store, present, index)
        return _select(store, present, ids, index, *filters, read)
    except Damaged:  # a planted or broken cell: the file goes, the answer comes from records
        (store.root / INDEX).unlink(missing_ok=True)
        return _select(store, present, ids, None, *filters, {})
    finally:
        if index is not None:
            index.close()


def _caught_up(store: FileRunStore, present: list[int], index) -> tuple[IndexFile | None, dict]:
    """The index, once given the rows of the finished runs it lacks, CATCH_UP runs read and
    written at a time, where it lacks more than CATCH_UP: a first call on a big store then holds
    one chunk's rows at once, not every run's. With it, the rows read that it does not hold
    (unfinished runs; a chunk it could not take), which the call uses rather than read again."""
    _, unindexed = _positions(index, None, store.listing)
    held: dict[int, tuple[dict, int]] = {}
    if len(unindexed) <= CATCH_UP:
        return index, held
    for start in range(0, len(unindexed), CATCH_UP):
        chunk = unindexed[start : start + CATCH_UP]
        label = f"indexing runs {start + 1}-{start + len(chunk)} of {len(unindexed)}"
        rows = _read_rows(store, chunk, len(present), label)
        new = {i: entry for i, entry in rows.items() if _indexable(entry[0], store.root)}
        held.update((i, entry) for i, entry in rows.items() if i not in new)
        if new and not _added(store, list(new.values()), present, store.folders):
            held.update(new)  # read-only, full, or another writer holds the lock
            break
    if index is not None:
        index.close()
    return IndexFile.open(store.root), held


def _added(store, rows: list[tuple[dict, int]], present, folders, drop=frozenset()) -> bool:
    """Whether these finished runs' (row, signature) were merged into the index, the rows of
    `drop` taken out; False where it cannot be written (read-only, full, locked by another)."""
    table = encode([row for row, _ in rows], [signature for _, signature in rows], folders)
    try:
        return write_index(store.root, table, drop=set(drop), present=set(present))
    except (OSError, pa.ArrowException):
        return False


def _folder_in_place(path: Path) -> str:
    """A note on a folder where the index file belongs; an empty one is removed (so the index
    is rebuilt), one holding files is left to its owner and runs are read without an index."""
    try:
        path.rmdir()
        return f"{path} was an empty folder, not the index file: removed, the index is rebuilt"
    except OSError:
        return f"{path} is a folder, not the index file, so runs were read without the index"


def _select(store, present, ids, index, statuses, experiments, sweep, wanted, last, read):
    """indexed_runs for one reading of the index (None: no usable index); `read`: rows of runs
    read already this call."""
    folders = store.folders
    everything = ids is present  # sorted, each once: lists are merged, not scanned
    position, unindexed = _positions(index, None if everything else ids, store.listing)
    live_ids = unindexed if everything else [i for i in dict.fromkeys(ids) if i not in position]
    live = {i: read[i] for i in live_ids if i in read}
    live.update(_read_rows(store, [i for i in live_ids if i not in read], len(present)))
    matching = row_matcher(statuses, experiments, sweep, wanted)
    candidates = index_matches(index, position, statuses, experiments, sweep, wanted)
    checked: set[int] = set()
    while True:
        if everything:
            chosen = sorted([*candidates, *(i for i, (row, _) in live.items() if matching(row))])
        else:
            chosen = [i for i in ids if i in candidates or (i in live and matching(live[i][0]))]
        shown = chosen[-last:] if last else chosen
        unchecked = [i for i in dict.fromkeys(shown) if i in candidates and i not in checked]
        stale = [i for i in unchecked if _signature(store.root, i) != candidates[i]]
        checked.update(unchecked)
        if not stale:
            break
        live.update(_read_rows(store, stale, len(present)))
        for run_id in stale:
            candidates.pop(run_id)
            position.pop(run_id)
    if wanted and not chosen:
        check_keys_in(store, index, position, live, wanted)
    _update(store, index, present, folders, live)
    return table_of_rows(index, position, live, shown), len(chosen)


def _known(store: FileRunStore, present: list[int], run_ids: Iterable[int]) -> list[int]:
    """The ids asked for, in their order; the first one not in the store is an error."""
    known = set(present)
    ids = [int(run_id) for run_id in run_ids]
    for run_id in ids:
        if run_id not in known:
            raise RecordError(f"no run {run_id} in {store.location}")
    return ids


def _ids(index: IndexFile | None) -> np.ndarray:
    return np.zeros(0, np.int64) if index is None else index.numbers("run_id")


def _positions(index, ids: list[int] | None, listing) -> tuple[dict[int, int], list[int]]:
    """{run id: row of the index} for the runs asked for (None: every run present) whose folder
    is still the same one, found with one vectorised lookup of the store's listing (run ids
    and their folders' inodes); and the present runs, in order, the index has no row of."""
    present, inodes = np.array(listing[0], np.int64), np.array(listing[1], np.uint64)
    order = np.argsort(present)
    present, inodes = present[order], inodes[order]
    if index is None or not len(present):
        return {}, present.tolist()
    run_ids = _ids(index)
    at = np.minimum(np.searchsorted(present, run_ids), len(present) - 1)
    same = (present[at] == run_ids) & (inodes[at] == index.numbers(FOLDER))
    if ids is not None:
        same &= np.isin(run_ids, np.asarray(ids, np.int64))
    rows = np.flatnonzero(same)
    unindexed = np.ones(len(present), bool)
    unindexed[at[rows]] = False
    return dict(zip(run_ids[rows].tolist(), rows.tolist(), strict=True)), present[
        unindexed
    ].tolist()


def row_matcher(statuses, experiments, sweep, wanted):
    """The filter for a row read from the records (load_runs' own rules)."""

    def matching(row: dict) -> bool:
        return matches(row, statuses, experiments, wanted) and (
            sweep is None or row.get("sweep") == str(sweep)
        )

    return matching


def index_matches(index, position, statuses, experiments, sweep, wanted) -> dict[int, int]:
    """{run id: stored signature} of the index rows that pass the filters, by their columns
    (each filter a pyarrow kernel over its one column)."""
    if not position:
        return {}
    rows = np.fromiter(position.values(), np.int64, len(position))
    keep = np.ones(len(index), bool)
    for column, allowed in (("status", statuses), ("experiment", experiments)):
        if allowed is not None:
            keep &= _flags(pc.is_in(index.column(column), pa.array(sorted(allowed), TEXT)))
    if sweep is not None:
        keep &= _flags(pc.equal(index.column("sweep"), str(sweep)))
    for key, value in wanted.items():
        keep &= _config_equals(index, f"config.{key}", value)
    kept = rows[keep[rows]]
    run_ids = _ids(index)[kept].tolist()
    return dict(zip(run_ids, index.numbers(SIGNATURE)[kept].tolist(), strict=True))


def _flags(mask: pa.ChunkedArray) -> np.ndarray:
    """A boolean column as numpy, null read as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)


def _config_equals(index: IndexFile, column: str, wanted) -> np.ndarray:
    """Which rows hold a config value equal to wanted (each distinct value decoded once)."""
    if column not in index.names:
        return np.zeros(len(index), bool)
    values, codes = _decoded(index.column(column))
    equal = np.array([same_value(v, wanted) for v in values] + [False], bool)
    return equal[codes]


def _decoded(column: pa.ChunkedArray) -> tuple[list, np.ndarray]:
    """The distinct config values of a JSON-text column and each row's code (-1: absent)."""
    encoded = column.combine_chunks().dictionary_encode()
    values = _cells(encoded.dictionary.to_pylist())
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return values, codes


def _cells(texts: list[str]) -> list:
    """Config values from their JSON texts, parsed as one array (lists were tuples); a cell
    that is not one JSON value, or holds an object, means a foreign file."""
    try:
        values = loads_plain("[" + ",".join(texts) + "]")
    except ValueError as error:  # bad JSON, or an object-encoding key
        raise Damaged(f"a config cell is not plain JSON: {error}") from None
    if len(values) != len(texts):  # a cell such as '1, 2' spans two values
        raise Damaged("a config cell holds more than one value")
    return [_tupled(value) for value in values]


def _tupled(value):
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):  # flatten_config never leaves one: planted
        raise Damaged("a config cell holds an object")
    return value


def check_keys_in(store, index, position, live, wanted) -> None:
    """load_runs' error for a config key that no run considered has."""
    rows = [row for row, _ in live.values()]
    if index is not None and position:
        taken = index.rows(list(position.values()))
        rows.append(
            {
                c: True
                for c in taken.column_names
                if c.startswith("config.") and taken[c].null_count < len(taken)
            }
        )
    check_config_keys(store, rows, wanted)


# --------------------------------------------------------------------------- reading records


def _signature(root: Path, run_id: int) -> int:
    """A number that changes when run.json, config.json or metrics.json is written, replaced,
    touched or removed (mtime, size, ctime and inode of each)."""
    parts = []
    folder = f"{root}/{run_id}/"
    for name in SIGNED:
        try:
            s = os.stat(folder + name)
            parts += (s.st_mtime_ns, s.st_size, s.st_ctime_ns, s.st_ino)
        except OSError:
            parts += (-1, -1, -1, -1)
    return hash(tuple(parts))


def _read_rows(
    store: FileRunStore, run_ids: list[int], size: int, label: str = "reading runs into the index"
) -> dict[int, tuple[dict, int]]:
    """{run id: (load_runs row, signature taken before reading)} read from the records."""
    if not run_ids:
        return {}
    signatures = {run_id: _signature(store.root, run_id) for run_id in run_ids}
    reader = store if size <= SMALL_STORE else FileRunStore(store.root, cache=False)
    rows = {}
    bar = progress(run_ids, len(run_ids) >= PROGRESS_AFTER, label, "run")
    for run_id in bar:
        rows[run_id] = record_row(store, run_id)
    summaries = reader.metric_summaries(run_ids)
    for run_id, row in rows.items():
        complete_row(store, row, summaries[run_id])
    return {run_id: (row, signatures[run_id]) for run_id, row in rows.items()}


def _indexable(row: dict, root: Path) -> bool:
    """A run whose record no longer changes by itself: a final status, metrics sealed."""
    return row.get("status") in FINAL and os.path.isfile(root / str(row["run_id"]) / "metrics.json")


# --------------------------------------------------------------------------- the frame


def table_of_rows(index, position, live, shown: list[int]) -> pd.DataFrame:
    """load_runs' table of the shown runs, in their order, from index rows and rows read."""
    if not shown:
        return runs_frame([])
    parts, where = [], {}
    from_index = [i for i in dict.fromkeys(shown) if i in position]
    if from_index:
        parts.append(index.rows([position[i] for i in from_index]))
        where.update({run_id: k for k, run_id in enumerate(from_index)})
    from_live = [i for i in dict.fromkeys(shown) if i not in position]
    if from_live:
        parts.append(encode([live[i][0] for i in from_live], [0] * len(from_live), {}))
        where.update({run_id: len(from_index) + k for k, run_id in enumerate(from_live)})
    table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
    order = [where[i] for i in shown]
    return decode(table if order == list(range(len(table))) else table.take(pa.array(order)))


def encode(rows: list[dict], signatures: list[int], folders: dict[int, int]) -> pa.Table:
    """load_runs rows as an index table: typed record columns, config cells as JSON text,
    metric summaries as float64; a key a row lacks is null there."""
    keys = dict.fromkeys(key for row in rows for key in row)
    columns = {
        "run_id": pa.array([row["run_id"] for row in rows], pa.int64()),
        SIGNATURE: pa.array(signatures, pa.int64()),
        FOLDER: pa.array([folders.get(row["run_id"], 0) for row in rows], pa.uint64()),
    }
    for name, kind in RECORD_TYPES.items():
        values = [row.get(name) for row in rows]
        if name == "sweep_index":  # a bool passes _field's int check; pandas reads it as 0/1
            values = [None if v is None else int(v) for v in values]
        columns[name] = pa.array(values, kind)
    for key in sorted(k for k in keys if k.startswith("config.")):
        cells = [json.dumps(row[key]) if key in row else None for row in rows]
        columns[key] = pa.array(cells, TEXT)
    for key in sorted(k for k in keys if k.endswith(STATS) and not k.startswith("config.")):
        columns[key] = pa.array([row.get(key) for row in rows], pa.float64())
    return pa.table(columns, metadata=VERSION)


def decode(table: pa.Table) -> pd.DataFrame:
    """The load_runs frame of an index table: the same columns, dtypes and values as
    tables.runs_frame gives for the rows read from the records (columns no row has dropped)."""
    n = len(table)
    present = [c for c in table.column_names if table[c].null_count < n]
    data = {}
    for name, dtype in RECORD_COLUMNS.items():
        column = table[name]
        data[name] = column.to_pandas() if dtype == "str" else typed_column(_series(column), dtype)
    for column in sorted(c for c in present if c.startswith("config.")):
        data[column] = _config_series(*_decoded(table[column]))
    names = sorted(
        {c.rsplit(".", 1)[0] for c in present if c.endswith(STATS) and not c.startswith("config.")}
    )
    for name in names:
        for stat_name in SUMMARY_STATS:
            column = f"{name}.{stat_name}"
            data[column] = (
                table[column].to_numpy() if column in table.column_names else np.full(n, np.nan)
            )
    frame = pd.DataFrame(data)
    frame.index = pd.Index(table["run_id"].to_numpy(), dtype="int64", name="run_id")
    return frame


def _config_series(values: list, codes: np.ndarray) -> pd.Series:
    """A config column from its distinct values and each row's code (-1: absent), typed as
    pandas infers the same cells: numbers straight to int64 or float64, anything else inferred."""
    missing = bool((codes < 0).any())
    kinds = {type(value) for value in values}
    if kinds == {int} and not missing and all(-(2**63) <= v < 2**63 for v in values):
        return pd.Series(np.array(values, np.int64)[codes])
    if kinds and kinds <= {int, float} and all(abs(v) < 2**63 for v in values if type(v) is int):
        numbers = np.append(np.array(values, np.float64), np.nan)
        return pd.Series(numbers[codes])  # code -1 picks the NaN
    cells = np.empty(len(values) + 1, object)
    cells[:-1], cells[-1] = values, np.nan
    return pd.Series(cells[codes]).infer_objects()


def _series(column: pa.ChunkedArray) -> pd.Series:
    """A record column as pandas (text and bool as objects with None, as rows read give them)."""
    if pa.types.is_string(column.type) or pa.types.is_boolean(column.type):
        return pd.Series(column.to_numpy(zero_copy_only=False).astype(object), dtype=object)
    return column.to_pandas()


# --------------------------------------------------------------------------- the file


class IndexFile:
    """The store's index file, open: its schema checked at once, and each column read only when
    asked for (pyarrow reads just that column's buffers) and validated before any use.

    Read, not memory-mapped: a file truncated by another process then fails to read (and is
    rebuilt) instead of crashing this one; reprolab's own writers replace it whole."""

    def __init__(self, file, whole: bool):
        """whole: read the file at once and every column (for a small file one read costs less
        than choosing); else each column when asked for."""
        self._file = file
        self._source = pa.BufferReader(file.read()) if whole else pa.PythonFile(file, mode="r")
        self.schema = pa.ipc.open_file(self._source).schema
        check_schema(self.schema)
        self.names = self.schema.names
        self._columns: dict[str, pa.ChunkedArray] = {}
        self._numbers: dict[str, np.ndarray] = {}
        if whole:
            self.read(self.names)
        self._check_rows()

    @classmethod
    def open(cls, root: Path, whole: bool = False) -> IndexFile | None:
        """The store's index, or None when there is none or it is damaged (then it is rebuilt);
        whole: read at once whatever its size (its columns then point into that one read)."""
        try:
            fd = os.open(Path(root) / INDEX, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or status.st_size == 0:
            os.close(fd)  # a folder, FIFO or device planted there: unread
            return None
        file = os.fdopen(fd, "rb")
        try:
            return cls(file, whole or status.st_size <= WHOLE_FILE)
        except (pa.ArrowException, OSError, ValueError, TypeError):  # Damaged is a ValueError
            file.close()
            return None

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.numbers("run_id"))

    def column(self, name: str) -> pa.ChunkedArray:
        """One column, read on first use; Damaged when its buffers are not valid."""
        if name not in self._columns:
            self.read([name])
        return self._columns[name]

    def numbers(self, name: str) -> np.ndarray:
        """A numeric column without nulls as numpy (run id, signature, folder)."""
        if name not in self._numbers:
            self._numbers[name] = self.column(name).to_numpy()
        return self._numbers[name]

    def read(self, names: list[str]) -> None:
        """Read the columns not read yet, in one pass over the file."""
        missing = [self.names.index(n) for n in dict.fromkeys(names) if n not in self._columns]
        if not missing:
            return
        options = pa.ipc.IpcReadOptions(included_fields=missing)
        try:
            table = pa.ipc.open_file(self._source, options=options).read_all()
            table.validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise Damaged(f"columns cannot be read: {error}") from None
        self._columns.update(zip(table.column_names, table.columns, strict=True))

    def table(self) -> pa.Table:
        """Every column."""
        self.read(self.names)
        columns = [self._columns[n] for n in self.names]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def rows(self, rows: list[int]) -> pa.Table:
        """Every column of the rows, in their order (all rows in order: no copy); a few rows
        are read from the record batches that hold them only."""
        if len(rows) > len(self) // 4 or len(self._columns) == len(self.names):
            whole = self.table()
            if len(rows) == len(whole) and rows == list(range(len(whole))):
                return whole
            return whole.take(pa.array(rows, pa.int64()))
        ends = np.cumsum([len(chunk) for chunk in self.column("run_id").chunks])
        wanted = np.asarray(rows, np.int64)
        batches = np.searchsorted(ends, wanted, side="right")
        needed = np.unique(batches)
        starts = np.concatenate([[0], ends])[needed]  # first row of each batch read
        offsets = np.concatenate([[0], np.cumsum(ends[needed] - starts)])[:-1]
        try:
            reader = pa.ipc.open_file(self._source)
            parts = [reader.get_batch(int(b)) for b in needed]
            for part in parts:
                part.validate(full=True)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise Damaged(f"rows cannot be read: {error}") from None
        at = np.searchsorted(needed, batches)
        local = offsets[at] + wanted - starts[at]
        return pa.Table.from_batches(parts, schema=self.schema).take(pa.array(local))

    def _check_rows(self) -> None:
        """Damaged unless run ids are present and strictly increasing (the writer sorts them,
        so none appears twice), every row has a signature, and every status is final."""
        self.read(["run_id", SIGNATURE, FOLDER, "status"])
        for name in ("run_id", SIGNATURE, FOLDER, "status"):
            if self._columns[name].null_count:
                raise Damaged(f"a {name} is missing")
        ids = self.numbers("run_id")
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise Damaged("run ids out of order or repeated")
        if not set(self.column("status").unique().to_pylist()) <= FINAL:
            raise Damaged("a row of a run that has not ended")


def read_index(root: Path) -> pa.Table | None:
    """The store's whole index, or None when there is none or it is damaged; read in one read,
    so no column is copied (Arrow's allocator took up to 0.7 s for a 70 MB index read by column)."""
    index = IndexFile.open(root, whole=True)
    if index is None:
        return None
    try:
        return index.table()  # every column was read and checked when it was opened
    finally:
        index.close()


def check_schema(schema: pa.Schema) -> None:
    """Damaged unless the schema is this module's: plain types only, every fixed column."""
    if (schema.metadata or {}).get(b"reprolab.index") != VERSION[b"reprolab.index"]:
        raise Damaged("not an index of this version")
    expected = {"run_id": pa.int64(), SIGNATURE: pa.int64(), FOLDER: pa.uint64(), **RECORD_TYPES}
    for field in schema:
        name = field.name
        kind = expected.get(name)
        if kind is None:
            kind = (
                TEXT
                if name.startswith("config.")
                else pa.float64()
                if name.endswith(STATS)
                else None
            )
        if kind is None or field.type != kind:
            raise Damaged(f"column {name!r} of type {field.type}")
    if any(name not in schema.names for name in expected) or len(set(schema.names)) < len(schema):
        raise Damaged("a column is missing or repeated")


def _update(store, index, present, folders, live) -> None:
    """Add the finished runs just read to the index, drop rows of runs gone or replaced (every
    run read while the index has a row of it: its row was stale, or its folder replaced)."""
    new = [(row, signature) for row, signature in live.values() if _indexable(row, store.root)]
    run_ids = _ids(index)
    read = np.fromiter(live, np.int64, len(live))
    stale = set(read[np.isin(read, run_ids)].tolist())
    gone = set(run_ids[~np.isin(run_ids, np.array(store.listing[0], np.int64))].tolist())
    if new or gone or stale:  # a store that cannot take it is read without an index
        _added(store, new, present, folders, drop=gone | stale)


def write_index(root: Path, rows: pa.Table, drop: set[int], present: set[int]) -> bool:
    """Merge rows into the index under its lock and replace the file whole: a row another
    writer added meanwhile is kept unless its run is gone (dropped, or no longer a folder).
    False when another writer held the lock for LOCK_WAIT seconds: nothing written."""
    (Path(root) / INDEX).parent.mkdir(exist_ok=True)
    with exclusive_lock(Path(root) / LOCK, LOCK_WAIT) as locked:
        if not locked:
            return False
        current = read_index(root)
        parts = [rows]
        if current is not None:
            kept = _kept(root, current, rows, drop, present)
            parts.insert(0, current if kept.all() else current.filter(pa.array(kept)))
        merged = pa.concat_tables(parts, promote_options="default")
        ids = merged["run_id"].to_numpy()
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # appended ids are the largest
            merged = merged.take(pc.sort_indices(merged["run_id"]))
        names = [
            c for c in merged.column_names if c in _fixed() or merged[c].null_count < len(merged)
        ]
        merged = merged.select(names).replace_schema_metadata(VERSION)
        _write(Path(root) / INDEX, merged)
    return True


def _kept(
    root: Path, current: pa.Table, rows: pa.Table, drop: set[int], present: set[int]
) -> np.ndarray:
    """Which rows of the current index stay: not renewed, not dropped, their run still there."""
    ids = current["run_id"].to_numpy()
    keep = ~np.isin(ids, rows["run_id"].to_numpy()) & ~np.isin(ids, list(drop))
    known = np.isin(ids, list(present))
    for k in np.flatnonzero(keep & ~known):  # added by another writer since this one looked
        keep[k] = (Path(root) / str(int(ids[k]))).is_dir()
    return keep


def _fixed() -> set[str]:
    return {"run_id", SIGNATURE, FOLDER, *RECORD_TYPES}


def _write(path: Path, table: pa.Table) -> None:
    """The table in record batches of at most BATCH_ROWS rows, so a page reads only its
    batches; rows appended stay a batch of their own (no copy of the whole table) until there
    are MORE_BATCHES more batches than full ones would make."""
    if table.column(0).num_chunks > len(table) // BATCH_ROWS + MORE_BATCHES:
        table = table.combine_chunks()
    with replacing(path, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)
