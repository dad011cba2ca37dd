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

import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from observers.files import replacing
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
    try:
        return _select(
            store, present, ids, read_index(store.root), statuses, experiments, sweep, wanted, last
        )
    except Damaged:  # a planted or broken cell: the file goes, the answer comes from records
        (store.root / INDEX).unlink(missing_ok=True)
        return _select(store, present, ids, None, statuses, experiments, sweep, wanted, last)


def _select(store, present, ids, index, statuses, experiments, sweep, wanted, last):
    """indexed_runs for one reading of the index (None: no usable index)."""
    folders = getattr(store, "folders", {})
    position = _positions(index, ids, folders)
    live_ids = [i for i in dict.fromkeys(ids) if i not in position]
    live = _read_rows(store, live_ids, len(present))
    matching = _matcher(statuses, experiments, sweep, wanted)
    candidates = _index_matches(index, position, statuses, experiments, sweep, wanted)
    checked: set[int] = set()
    while True:
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
        _check_keys(store, index, position, live, wanted)
    _update(store, index, present, folders, live, stale_ids=set(live) & set(_ids(index).tolist()))
    return _frame(index, position, live, shown), len(chosen)


def _known(store: FileRunStore, present: list[int], run_ids: Iterable[int]) -> list[int]:
    """The ids asked for, in their order; the first one not in the store is an error."""
    known = set(present)
    ids = [int(run_id) for run_id in run_ids]
    for run_id in ids:
        if run_id not in known:
            raise RecordError(f"no run {run_id} in {store.location}")
    return ids


def _ids(index: pa.Table | None) -> np.ndarray:
    return np.zeros(0, np.int64) if index is None else index["run_id"].to_numpy()


def _positions(index: pa.Table | None, ids: list[int], folders: dict[int, int]) -> dict[int, int]:
    """{run id: row of the index} for the runs asked for whose folder is still the same one."""
    if index is None:
        return {}
    wanted = set(ids)
    inodes = index[FOLDER].to_numpy()
    return {
        int(run_id): row
        for row, run_id in enumerate(_ids(index).tolist())
        if run_id in wanted and folders.get(run_id) == int(inodes[row])
    }


def _matcher(statuses, experiments, sweep, wanted):
    """The filter for a row read from the records (load_runs' own rules)."""

    def matching(row: dict) -> bool:
        return matches(row, statuses, experiments, wanted) and (
            sweep is None or row.get("sweep") == str(sweep)
        )

    return matching


def _index_matches(index, position, statuses, experiments, sweep, wanted) -> dict[int, int]:
    """{run id: stored signature} of the index rows that pass the filters, by their columns."""
    if not position:
        return {}
    rows = np.fromiter(position.values(), np.int64, len(position))
    keep = np.ones(len(rows), bool)
    for column, allowed in (("status", statuses), ("experiment", experiments)):
        if allowed is not None:
            keep &= np.isin(_texts(index, column, rows), list(allowed))
    if sweep is not None:
        keep &= _texts(index, "sweep", rows) == str(sweep)
    for key, value in wanted.items():
        keep &= _config_equals(index, f"config.{key}", rows, value)
    signatures = index[SIGNATURE].to_numpy()[rows]
    ids = list(position)
    return {ids[k]: int(signatures[k]) for k in np.flatnonzero(keep)}


def _texts(index: pa.Table, column: str, rows: np.ndarray) -> np.ndarray:
    return index[column].take(pa.array(rows)).to_numpy(zero_copy_only=False).astype(object)


def _config_equals(index: pa.Table, column: str, rows: np.ndarray, wanted) -> np.ndarray:
    """Which rows hold a config value equal to wanted (each distinct value decoded once)."""
    if column not in index.column_names:
        return np.zeros(len(rows), bool)
    values, codes = _decoded(index[column].take(pa.array(rows)))
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


def _check_keys(store, index, position, live, wanted) -> None:
    """load_runs' error for a config key that no run considered has."""
    rows = [row for row, _ in live.values()]
    if index is not None and position:
        taken = index.take(pa.array(list(position.values())))
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


def _read_rows(store: FileRunStore, run_ids: list[int], size: int) -> dict[int, tuple[dict, int]]:
    """{run id: (load_runs row, signature taken before reading)} read from the records."""
    if not run_ids:
        return {}
    signatures = {run_id: _signature(store.root, run_id) for run_id in run_ids}
    reader = store if size <= SMALL_STORE else FileRunStore(store.root, cache=False)
    rows = {}
    for run_id in _progress(run_ids):
        rows[run_id] = record_row(store, run_id)
    summaries = reader.metric_summaries(run_ids)
    for run_id, row in rows.items():
        complete_row(store, row, summaries[run_id])
    return {run_id: (row, signatures[run_id]) for run_id, row in rows.items()}


def _progress(run_ids: list[int]):
    """The ids, behind a progress bar when there are many and stderr is a terminal."""
    if len(run_ids) < PROGRESS_AFTER or not sys.stderr.isatty():
        return run_ids
    from tqdm import tqdm

    return tqdm(run_ids, desc="reading runs into the index", unit="run", delay=0.5)


def _indexable(row: dict, root: Path) -> bool:
    """A run whose record no longer changes by itself: a final status, metrics sealed."""
    return row.get("status") in FINAL and os.path.isfile(root / str(row["run_id"]) / "metrics.json")


# --------------------------------------------------------------------------- the frame


def _frame(index, position, live, shown: list[int]) -> pd.DataFrame:
    """load_runs' table of the shown runs, in their order, from index rows and rows read."""
    if not shown:
        return runs_frame([])
    parts, where = [], {}
    from_index = [i for i in dict.fromkeys(shown) if i in position]
    if from_index:
        rows = [position[i] for i in from_index]
        whole = rows == list(range(len(index)))  # every row, in order: no copy
        parts.append(index if whole else index.take(pa.array(rows)))
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
        data[name] = typed_column(_series(table[name]), dtype)
    for column in sorted(c for c in present if c.startswith("config.")):
        values, codes = _decoded(table[column])
        cells = np.empty(len(values) + 1, object)
        cells[:-1], cells[-1] = values, np.nan
        data[column] = pd.Series(cells[codes]).infer_objects()
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


def _series(column: pa.ChunkedArray) -> pd.Series:
    """A record column as pandas (text and bool as objects with None, as rows read give them)."""
    if pa.types.is_string(column.type) or pa.types.is_boolean(column.type):
        return pd.Series(column.to_numpy(zero_copy_only=False).astype(object), dtype=object)
    return column.to_pandas()


# --------------------------------------------------------------------------- the file


def read_index(root: Path) -> pa.Table | None:
    """The store's index, or None when there is none or it is damaged (then it is rebuilt)."""
    path = Path(root) / INDEX
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size == 0:
            return None  # a FIFO or device planted there is never read
        with os.fdopen(fd, "rb", closefd=False) as f:  # read, not mapped: a truncation
            data = f.read()  # by another process cannot crash this one
        table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
        check(table)
        return table
    except (pa.ArrowException, OSError, ValueError, TypeError):  # Damaged is a ValueError
        return None
    finally:
        os.close(fd)


def check(table: pa.Table) -> None:
    """Damaged unless the table has this module's schema: plain types only, one row per run id,
    final statuses; its buffers are validated before any value is read."""
    schema = table.schema
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
    if any(name not in schema.names for name in expected):
        raise Damaged("a column is missing")
    table.validate(full=True)
    ids = table["run_id"]
    if ids.null_count or table["status"].null_count or table[SIGNATURE].null_count:
        raise Damaged("a run id, status or signature is missing")
    if len(np.unique(ids.to_numpy())) != len(table):
        raise Damaged("a run id appears twice")
    if not set(table["status"].unique().to_pylist()) <= FINAL:
        raise Damaged("a row of a run that has not ended")


def _update(store, index, present, folders, live, stale_ids: set[int]) -> None:
    """Add the finished runs just read to the index, drop rows of runs gone or replaced."""
    new = [(row, signature) for row, signature in live.values() if _indexable(row, store.root)]
    known = set(present)
    gone = [i for i in _ids(index).tolist() if i not in known or folders.get(i) is None]
    if not new and not gone and not stale_ids:
        return
    table = encode([r for r, _ in new], [s for _, s in new], folders)
    try:
        write_index(store.root, table, drop=set(gone) | stale_ids, present=known)
    except (OSError, pa.ArrowException):
        pass  # a read-only or full store is read without an index


def write_index(root: Path, rows: pa.Table, drop: set[int], present: set[int]) -> None:
    """Merge rows into the index under its lock and replace the file whole: a row another
    writer added meanwhile is kept unless its run is gone (dropped, or no longer a folder)."""
    (Path(root) / INDEX).parent.mkdir(exist_ok=True)
    with _locked(Path(root) / LOCK) as locked:
        if not locked:
            return
        current = read_index(root)
        parts = [rows]
        if current is not None:
            ids = current["run_id"].to_numpy()
            renewed = set(rows["run_id"].to_pylist())
            keep = [
                k
                for k, run_id in enumerate(ids.tolist())
                if run_id not in renewed
                and run_id not in drop
                and (run_id in present or (Path(root) / str(run_id)).is_dir())
            ]
            parts.insert(0, current.take(pa.array(keep, pa.int64())))
        merged = pa.concat_tables(parts, promote_options="default")
        merged = merged.take(pc.sort_indices(merged["run_id"]))
        names = [
            c for c in merged.column_names if c in _fixed() or merged[c].null_count < len(merged)
        ]
        merged = merged.select(names).replace_schema_metadata(VERSION)
        _write(Path(root) / INDEX, merged)


def _fixed() -> set[str]:
    return {"run_id", SIGNATURE, FOLDER, *RECORD_TYPES}


def _write(path: Path, table: pa.Table) -> None:
    with replacing(path, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table.combine_chunks())


class _locked:
    """An exclusive flock on path for the block (yields False when none came in LOCK_WAIT)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o666)
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                return False
        except OSError:
            return False
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)  # another writer holds it for a moment

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
