"""Data ingredient: a Parquet, Arrow IPC or CSV table read by pyarrow, split, standardised, batched.

The config, its validation, reading and splitting live here; the file's SHA-256 is computed on a
thread once the data is loaded, so the first batch does not wait for it. How rows are gathered
(in memory or from the file) is in ingredients/columnar.py, how batches are handed out in
ingredients/batches.py.
"""

# ruff: noqa: F841  (Sacred config scopes assign names that look unused)
from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np
import pyarrow as pa
import torch
from sacred import Ingredient

from ingredients.batches import BatchIndexSampler, BatchLoader, GroupSampler, group_size, keep
from ingredients.checkout import looked_in, resolve_path
from ingredients.columnar import (
    POSITIONAL_READS,
    ColumnarDataset,
    MappedIPC,
    RowFile,
    block_statistics,
    features_in_memory,
    moments,
    numeric_view,
    row_file,
    row_major,
    source_blocks,
    spill,
    width,
)
from ingredients.fingerprints import file_fingerprint, in_background
from ingredients.image_sources import fingerprint_source
from ingredients.images import SCHEMA as IMAGE_SCHEMA
from ingredients.images import (  # image data: encoded images or uint8 pixels (see images.py)
    check_images_config,
    describe_images,
    image_config,
    image_source,
    load_image_splits,
    with_defaults,
)
from ingredients.schema import (
    BOOLEAN,
    INSPECTION_COMMANDS,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    TEXT,
    Rule,
    check_section,
    check_values,
    integer,
    list_of,
    nullable,
    number,
    shown,
)
from ingredients.splits import split_rows, validation_rows
from ingredients.table_files import column_list, csv, parquet, read_schema, reading

# Explicit globals and no git query: Sacred would scan the whole stack (slow); the run's
# sources and their git state are gathered once by experiments/base.py.
data = Ingredient("data", _caller_globals=globals(), save_git_info=False)

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
SPILL_ROWS = 65536  # rows per record batch read when data above the budget is copied row-major


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
    drop_last = False             # drop the last incomplete training batch; under torchrun the last incomplete global batch (kept, it is split between the processes so every sample is seen once)
    num_workers = 0               # worker processes reading batches of a file-backed dataset (in-memory batches are gathered in the main process, cheaper than any hand-over)
    pin_memory = True             # pin host memory for faster copies to the GPU (only takes effect when CUDA is used)
    in_memory_mb = 1024           # Parquet and Arrow IPC data whose float32 features exceed this many MB are read per batch from disk instead of loaded: row-major IPC from the file itself, others from a row-major copy in the temporary directory ($TMPDIR); CSV is always loaded
# fmt: on


data.config(image_config)  # the image keys (image_column, augment, ...), declared in images.py

COLUMN = Rule(TEXT.accepts, "a column name")
# What each key of the config accepts, checked before a run starts (see ingredients/__init__.py).
# Loader workers a run may fork: each is a process holding a copy of the loader's state.
MAX_WORKERS = min(64, 4 * (os.cpu_count() or 1))


SCHEMA = {
    "path": Rule(TEXT.accepts, "a file path"),
    "format": Rule(
        lambda v: isinstance(v, str) and v.lower() in ("auto", *FORMATS),
        "auto, parquet, ipc (feather, arrow) or csv",
    ),
    "target": COLUMN,
    "features": Rule(
        nullable(list_of(COLUMN, min_len=1)).accepts, "None or a non-empty list of column names"
    ),
    "shape": Rule(
        nullable(list_of(POSITIVE_INT, min_len=1)).accepts,
        "None or a non-empty list of positive integers",
    ),
    "standardize": BOOLEAN,
    "val_fraction": number(0, 1, low_open=True, high_open=True),
    "split_seed": integer(0),
    "batch_size": POSITIVE_INT,
    "shuffle": BOOLEAN,
    "drop_last": BOOLEAN,
    "num_workers": integer(
        0, MAX_WORKERS + 1, words=f"an integer in [0, {MAX_WORKERS}] (64, and 4 per CPU core)"
    ),
    "pin_memory": BOOLEAN,
    "in_memory_mb": NON_NEGATIVE_NUMBER,
    **IMAGE_SCHEMA,  # image_column, augment, ... (ingredients/images.py)
}


@dataclass
class Splits:
    """What load_splits returns: the two datasets and what the model and the run record need."""

    train: ColumnarDataset
    val: ColumnarDataset
    input_shape: tuple[int, ...]  # one sample's feature shape
    num_classes: int  # max label + 1 for integer targets, 1 for float targets
    file: dict  # path, format, rows, columns of the data file
    digest: Callable[[float | None], dict]  # size and SHA-256 of the file, hashed on a thread
    standardization: dict | None  # {"mean": [...], "std": [...]} of the training split, or None
    split: dict  # split_seed, val_fraction, row counts, sha256 of the val rows
    test: ColumnarDataset | None = None  # image data: a test split, evaluated once at the end
    images: object | None = None  # image data: images.ImageInfo (column, shape, classes, ...)

    @property
    def fingerprint(self) -> dict:
        """Path, format, size, sha256, rows and columns of the data file (waits for the hash)."""
        return self.fingerprint_after(None)

    def fingerprint_after(self, timeout: float | None) -> dict:
        """The fingerprint once the file is hashed or `timeout` seconds have passed (then its
        sha256 is None)."""
        f = self.file
        return {
            "path": f["path"],
            "format": f["format"],
            **self.digest(timeout),
            "rows": f["rows"],
            "columns": f["columns"],
        }


# --------------------------------------------------------------------------- validation


def _fail(message: str) -> NoReturn:
    """Raise the one-sentence ValueError a user sees for bad input."""
    raise ValueError(message)


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


def _check_options(**values) -> None:
    """Validate config values (those given) against the schema before touching the file."""
    check_values("data", values, SCHEMA)
    features, target = values.get("features"), values.get("target")
    if features is not None:
        if len(set(features)) != len(features):
            _fail(f"data.features lists a column twice: {list(features)!r}")
        if target in features:
            _fail(f"data.features must not contain the target column {target!r}")


def _is_numeric_type(kind: pa.DataType) -> bool:
    """An Arrow integer or floating-point type."""
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _check_columns(
    schema: pa.Schema, path: Path, target: str, features: Sequence[str] | None
) -> list[str]:
    """Check that target and features exist and are numeric; return the feature columns."""
    names = schema.names
    wanted = list(features) if features is not None else [n for n in names if n != target]
    if target not in names:
        _fail(
            f"data.target: column {shown(target)} is not in {path} (columns: {column_list(names)})"
        )
    if not _is_numeric_type(schema.field(target).type):
        _fail(
            f"data.target: column {target!r} in {path} must be integer or floating point, "
            f"got {schema.field(target).type}"
        )
    for column in wanted:
        if column not in names:
            _fail(
                f"data.features: column {shown(column)} is not in {path} (columns: {column_list(names)})"
            )
        kind = schema.field(column).type
        if not (
            _is_numeric_type(kind)
            or (pa.types.is_fixed_size_list(kind) and _is_numeric_type(kind.value_type))
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
    return sum(width(schema.field(c).type) for c in columns)


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


@data.config_hook
def validate(config, command_name, logger):
    """Refuse bad data settings before the run starts: every key against the schema, then the
    file's schema and contents (missing values, labels, split sizes), scanned once and cached."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    cfg = check_section("data", config, SCHEMA)
    _check_options(**cfg)
    if image_source(cfg) is not None:  # splits of image data are checked as they are read
        check_images_config(cfg)
        describe(cfg)
        return {}
    contents = describe(cfg)
    n_train = contents.rows - validation_rows(contents.rows, cfg["val_fraction"])
    if cfg["drop_last"] and cfg["batch_size"] > n_train:
        _fail(
            f"data.batch_size {cfg['batch_size']} exceeds the {n_train} training samples "
            "and data.drop_last is set, so an epoch would have no batch"
        )
    return {}


class Contents(NamedTuple):
    """What a run needs to know of the data file before it starts."""

    rows: int
    sample_shape: tuple[int, ...]  # one sample's feature shape
    integer_target: bool
    num_classes: int  # max label + 1 for integer targets, 1 for float targets
    target_range: tuple  # the target's smallest and largest value (None, None) when empty


def describe(cfg: dict) -> Contents:
    """Check the data file named by a (schema-checked) data config, reading its schema and
    scanning the used columns once (cached while the file is unchanged): missing values,
    negative labels, a shape that does not fit."""
    column = image_source(cfg)
    shape: tuple[int, ...]
    if column is not None:
        rows, shape, classes = describe_images(with_defaults(cfg), column)
        return Contents(rows, shape, True, classes, (0, classes - 1))
    file = _existing_file(cfg["path"])
    fmt = resolve_format(file, cfg["format"])
    schema = read_schema(file, fmt)
    columns = _check_columns(schema, file, cfg["target"], cfg["features"])
    shape = _sample_shape(cfg["shape"], _feature_count(schema, columns))
    stat = file.stat()
    label_range: tuple[float | None, ...]
    rows, label_range = _scan(
        file, fmt, tuple(columns), cfg["target"], stat.st_size, stat.st_mtime_ns
    )
    label_range = tuple(None if v is None else v + 0 for v in label_range)  # Parquet's -0.0
    integer_target = pa.types.is_integer(schema.field(cfg["target"]).type)
    if integer_target and label_range[0] is not None and label_range[0] < 0:
        _fail(
            f"data.target: column {cfg['target']!r} in {file} has negative labels; "
            "classes must be 0, 1, 2, ..."
        )
    classes = int(label_range[1]) + 1 if integer_target and label_range[1] is not None else 1
    validation_rows(rows, cfg["val_fraction"])
    return Contents(rows, shape, integer_target, classes, label_range)


def _existing_file(path: str) -> Path:
    """The data file's absolute path; one sentence when it is absent or cannot be a path."""
    try:
        file = resolve_path(path)
        if file.is_file():
            return file
    except (OSError, ValueError) as error:  # a name too long, a NUL byte
        reason = getattr(error, "strerror", None) or error
        _fail(f"data.path: cannot use {shown(path)} as a file path ({reason})")
    _fail(f"data.path: file not found: {path}{looked_in(path)}")


@functools.lru_cache(maxsize=4)
def _scan(
    path: Path, fmt: str, columns: tuple[str, ...], target: str, size: int, mtime_ns: int
) -> tuple[int, tuple[float | None, float | None]]:
    """Rows and the target's (min, max), refusing missing values in the columns; from Parquet
    statistics where the file has them, else read a record batch at a time. The file's size
    and mtime are part of the cache key, so an edited file is scanned again."""
    used = [*columns, target]
    with reading(path, fmt):
        if fmt == "parquet":
            from_statistics = _parquet_statistics(path, used, target)
            if from_statistics is not None:
                return from_statistics
            batches = parquet().ParquetFile(path).iter_batches(SPILL_ROWS, columns=used)
        elif fmt == "ipc":
            batches = MappedIPC(path).pieces(SPILL_ROWS)
        else:  # CSV is always read whole: read once, handed to the run (see _read_csv)
            table = csv().read_csv(path)
            _CSV_READ.clear()
            _CSV_READ[(path, size, mtime_ns)] = table
            batches = table.select(used).to_batches()
        import pyarrow.compute as pc  # here: print_config and most runs never need it (25 ms)

        rows, low, high = 0, None, None
        for batch in batches:
            _check_no_nulls(pa.Table.from_batches([batch]), used)
            rows += batch.num_rows
            ends = pc.min_max(batch.column(target))
            low = _extreme(min, low, ends["min"].as_py())
            high = _extreme(max, high, ends["max"].as_py())
    return rows, (low, high)


# The CSV table read by the pre-run check, kept for the run's load: one entry, taken once.
_CSV_READ: dict[tuple[Path, int, int], pa.Table] = {}


def _read_csv(path: Path) -> pa.Table:
    """The CSV file's table: the one the pre-run check read if the file is unchanged since."""
    stat = path.stat()
    cached = _CSV_READ.pop((path, stat.st_size, stat.st_mtime_ns), None)
    return cached if cached is not None else csv().read_csv(path)


def _extreme(pick, current, new):
    return new if current is None else current if new is None else pick(current, new)


def _parquet_statistics(path: Path, used: list[str], target: str):
    """(rows, (min, max) of the target) from the Parquet footer, refusing a used column whose
    statistics count missing values; None when a row group lacks the statistics."""
    meta = parquet().read_metadata(path)
    missing = dict.fromkeys(used, 0)
    low = high = None
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            leaf = chunk.path_in_schema  # a list column's values are at 'name.list.element'
            name = next((n for n in used if leaf == n or leaf.startswith(n + ".")), None)
            if name is None:
                continue
            stats = chunk.statistics
            if stats is None or not stats.has_null_count:
                return None
            missing[name] += stats.null_count
            if name == target:
                if not stats.has_min_max:
                    return None
                low, high = _extreme(min, low, stats.min), _extreme(max, high, stats.max)
    for name, count in missing.items():
        if count:
            _fail(f"data: column {name!r} has {count} missing values; fill or drop them first")
    return meta.num_rows, (low, high)


class Read(NamedTuple):
    """What _read_table found in the file."""

    table: pa.Table  # features and target; only the target when `on_disk` holds the features
    on_disk: RowFile | None  # features above data.in_memory_mb, read a row at a time
    columns: list[str]  # the feature columns
    n_features: int  # feature values per row
    file_columns: list[str]  # every column of the file


def _read_table(
    path: Path, fmt: str, target: str, features: Sequence[str] | None, in_memory_mb: float
) -> Read:
    """Read the table (only the needed columns of Parquet), refusing missing feature values.
    Parquet and Arrow IPC features above data.in_memory_mb stay on disk (see _load)."""
    with reading(path, fmt):
        if fmt == "csv":
            table, on_disk = _read_csv(path), None
            schema = table.schema
            columns = _check_columns(schema, path, target, features)
        else:
            schema = read_schema(path, fmt)
            columns = _check_columns(schema, path, target, features)
            table, on_disk = _load(path, fmt, schema, columns, target, in_memory_mb)
    if on_disk is None:
        _check_no_nulls(table, columns)  # data on disk was checked as it was read
    return Read(table, on_disk, columns, _feature_count(schema, columns), schema.names)


def _load(
    path: Path, fmt: str, schema: pa.Schema, columns: list[str], target: str, in_memory_mb: float
) -> tuple[pa.Table, RowFile | None]:
    """The Parquet or IPC table; above data.in_memory_mb only its target column and the RowFile
    the features are read from: the file itself if it is uncompressed row-major Arrow IPC, else a
    row-major copy written 65,536 rows at a time."""
    n_features = _feature_count(schema, columns)
    budget_rows = in_memory_mb * 2**20 / (4 * n_features) if POSITIONAL_READS else math.inf
    if fmt == "parquet":
        pq = parquet()
        wanted = [*columns, target]
        if pq.read_metadata(path).num_rows <= budget_rows:
            # ParquetFile, not read_table: read_table goes through pyarrow.dataset (0.2-0.3 s to import)
            return pq.ParquetFile(path).read(columns=wanted), None
        # pre_buffer=False: each batch is read as needed instead of whole row groups ahead
        batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(SPILL_ROWS, columns=wanted)
    else:
        ipc = MappedIPC(path)
        if ipc.rows() <= budget_rows:
            return ipc.table(), None
        if len(columns) == 1 and not ipc.compressed():  # zero-copy: row-major is read in place
            table = ipc.table()
            in_place = row_file(path, table, columns, ipc.whole)
            if in_place is not None:
                _check_no_nulls(table, columns)  # null counts are in the file's metadata
                return table.select([target]), in_place
        batches = ipc.pieces(SPILL_ROWS)
    targets: list[pa.Array] = []
    on_disk = spill(_checked(batches, columns, target, targets), columns, n_features)
    return pa.table({target: pa.chunked_array(targets, schema.field(target).type)}), on_disk


def _checked(
    batches: Iterable[pa.RecordBatch], columns: list[str], target: str, targets: list[pa.Array]
) -> Iterator[pa.RecordBatch]:
    """The batches, each refused if a feature value is missing; their targets go to `targets`."""
    for batch in batches:
        _check_no_nulls(pa.Table.from_batches([batch]), columns)
        column = batch.column(target)
        targets.append(column.take(np.arange(len(column))))  # a copy, not a view into the batch
        yield batch


def fingerprint_file(path: Path) -> dict:
    """Size and SHA-256 of the file's bytes (a folder of shards: see image_sources)."""
    return file_fingerprint(path) if path.is_file() else fingerprint_source(path)


def _fingerprint_in_background(path: Path, read: os.stat_result) -> Callable[[float | None], dict]:
    """Hash the file on a thread; the returned function waits up to `timeout` seconds (None:
    until done) and gives its size and SHA-256 (None while unfinished). A file changed since
    `read` (its stat before reading) is refused."""

    def work() -> dict:
        found = fingerprint_file(path)  # looked up when called: tests replace it
        now = path.stat()
        if (now.st_size, now.st_mtime_ns) != (read.st_size, read.st_mtime_ns):
            _fail(f"data.path: {path} changed while it was read; run again once it is stable")
        return found

    wait = in_background(work, "data-fingerprint")

    def fingerprint(timeout: float | None = None) -> dict:
        return wait(timeout) or {"size": read.st_size, "sha256": None}

    return fingerprint


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
    chunks = [numeric_view(chunk) for chunk in column.chunks]  # a copy: writable, like to_numpy's
    return np.concatenate(chunks or [np.empty(0, dtype)]).astype(dtype, copy=False)


# --------------------------------------------------------------------------- splitting


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
    _config: dict | None = None,
) -> Splits:
    """Read, validate, split and standardise the table: train/val datasets plus what runs record."""
    if _config:  # in a run (called directly, Sacred gives {}): image data takes its own path
        given: dict[str, Any] = dict(
            path=path, format=format, target=target, features=features, shape=shape
        )
        given.update(standardize=standardize, val_fraction=val_fraction, split_seed=split_seed)
        cfg = {**_config, **given, "in_memory_mb": in_memory_mb}
        column = image_source(cfg)
        if column is not None:
            return load_image_splits(cfg, column, Splits)
    _check_options(
        path=path,
        format=format,
        target=target,
        features=features,
        shape=shape,
        standardize=standardize,
        val_fraction=val_fraction,
        split_seed=split_seed,
        in_memory_mb=in_memory_mb,
    )
    file = _existing_file(path)
    fmt = resolve_format(file, format)
    read = file.stat()
    table, on_disk, columns, n_features, file_columns = _read_table(
        file, fmt, target, features, in_memory_mb
    )
    sample_shape = _sample_shape(shape, n_features)
    train_rows, val_rows = split_rows(table.num_rows, val_fraction, split_seed)
    targets, num_classes = _targets(table, target, file)
    # how batches are standardised as they are read from disk
    scale: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    train: torch.Tensor | RowFile
    val: torch.Tensor | RowFile
    if on_disk is not None:
        del table
        mean = std = None
        if standardize:
            mean, std = block_statistics(
                map(moments, source_blocks(on_disk, train_rows)), n_features
            )
            scale = (mean.astype(np.float32), std.astype(np.float32))
        train = val = on_disk
    else:
        (train_x, val_x), mean, std = features_in_memory(
            table, columns, n_features, [train_rows, val_rows], standardize
        )
        train = torch.from_numpy(train_x).reshape(-1, *sample_shape)
        val = torch.from_numpy(val_x).reshape(-1, *sample_shape)
        del table
    return Splits(
        train=ColumnarDataset(
            train, torch.from_numpy(targets[train_rows]), train_rows, sample_shape, *scale
        ),
        val=ColumnarDataset(
            val, torch.from_numpy(targets[val_rows]), val_rows, sample_shape, *scale
        ),
        input_shape=sample_shape,
        num_classes=num_classes,
        file={
            "path": str(file),
            "format": fmt,
            "rows": len(targets),
            "columns": list(file_columns),
        },
        digest=_fingerprint_in_background(file, read),
        standardization={"mean": mean.tolist(), "std": std.tolist()}
        if mean is not None and std is not None  # set exactly when standardize is
        else None,
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
    matrix = row_major(table, columns, _feature_count(table.schema, columns))
    packed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return pa.table({name: packed, target: table.column(target)})


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
    rank: int = 0,
    world_size: int = 1,
) -> BatchLoader:
    """Batches of `dataset`: shuffled by `generator` (and drop_last) for training, else in order;
    with `world_size` processes, `rank`'s part of every global batch (see BatchIndexSampler)."""
    _check_options(
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    shuffle, drop_last = (shuffle, drop_last) if train else (False, False)
    if drop_last and batch_size * world_size > len(dataset):
        processes = f" x {world_size} processes" if world_size > 1 else ""
        _fail(
            f"data.batch_size {batch_size}{processes} exceeds the {len(dataset)} training samples "
            "and data.drop_last is set, so an epoch would have no batch"
        )
    sampler = BatchIndexSampler(
        len(dataset), batch_size, shuffle, drop_last, generator, rank, world_size
    )
    pin = pin_memory and device_is_cuda and torch.cuda.is_available()
    # A gather from memory takes microseconds; handing a batch over from a worker process
    # (shared memory, pickling, page faults) costs far more, so only file reads get workers.
    num_workers = 0 if dataset.in_memory else num_workers
    group = group_size(dataset, batch_size, len(sampler), num_workers)
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
        collate_fn=keep,  # type: ignore[arg-type]  # batch_size=None: one (x, y) item, not a list
        pin_memory=pin,
        worker_init_fn=worker_init_fn,
        generator=worker_generator,
        persistent_workers=True,
    )
    return BatchLoader(dataset, sampler, pin, group, workers)
