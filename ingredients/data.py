"""Data ingredient: a Parquet, Arrow IPC or CSV table read by pyarrow, split, standardised, batched.

Batches are gathered from columnar memory by index, a whole batch at a time (no per-sample
`__getitem__` + collate). Large memory-mapped IPC files are gathered batch by batch straight
from the map instead of being materialised.
"""

# ruff: noqa: F841  (Sacred config scopes assign names that look unused)
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


# fmt: off
@data.config
def config():
    path = "data/digits.parquet"  # Parquet, Feather/Arrow IPC or CSV file; relative to the working directory or the repository root
    format = "auto"               # auto (by extension) | parquet | ipc | csv
    target = "label"              # target column
    features = None               # list of feature columns, or None for every column but the target
    shape = None                  # reshape each sample's features, e.g. [1, 8, 8] for the CNN; None keeps a flat vector
    standardize = True            # standardise features with mean/std of the training split only
    val_fraction = 0.2            # fraction of rows held out for validation, in (0, 1)
    split_seed = 0                # seed of the train/validation split (fixed, so runs with different seeds share one split)
    batch_size = 64               # samples per training batch
    shuffle = True                # reshuffle the training set every epoch
    drop_last = False             # drop the last incomplete training batch
    num_workers = 0               # loader worker processes (0 gathers batches in the main process)
    pin_memory = True             # pin host memory for faster copies to the GPU (only takes effect when CUDA is used)
    in_memory_mb = 1024           # IPC files whose float32 feature matrix exceeds this many MB are gathered batch by batch from the memory map
# fmt: on


# --------------------------------------------------------------------------- datasets


class MappedFeatures:
    """Feature columns of a memory-mapped Arrow IPC file, gathered and standardised per batch."""

    def __init__(
        self, path: Path, columns: list[str], mean: np.ndarray | None, std: np.ndarray | None
    ) -> None:
        self.path, self.columns = path, columns
        self.mean = mean.astype(np.float32) if mean is not None else None
        self.std = std.astype(np.float32) if std is not None else None
        self._views: list[list[np.ndarray]] | None = None
        self._starts = np.zeros(1, dtype=np.int64)

    def __getstate__(self) -> dict:
        """Pickle without the mapped views: spawned workers re-open the map instead of copying."""
        return {**self.__dict__, "_views": None}

    def _open(self) -> list[list[np.ndarray]]:
        """Zero-copy numpy views of every record batch's feature columns."""
        batches = [b for b in _read_ipc(self.path).select(self.columns).to_batches() if b.num_rows]
        self._starts = np.cumsum([0] + [b.num_rows for b in batches[:-1]], dtype=np.int64)
        self._views = [[col.to_numpy(zero_copy_only=True) for col in b.columns] for b in batches]
        return self._views

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of the file as a standardised (len(rows), n_features) float32 matrix."""
        views = self._views if self._views is not None else self._open()
        out = np.empty((len(rows), len(self.columns)), dtype=np.float32)
        chunk = np.searchsorted(self._starts, rows, side="right") - 1
        for c in np.unique(chunk) if len(views) > 1 else [0]:
            sel = chunk == c if len(views) > 1 else slice(None)
            local = rows[sel] - self._starts[c]
            for j, column in enumerate(views[c]):
                out[sel, j] = column[local]
        if self.mean is not None:
            out -= self.mean
            out /= self.std
        return out


class ColumnarDataset(torch.utils.data.Dataset):
    """A split of the table; `dataset[indices]` gathers a whole (features, targets) batch at once."""

    def __init__(
        self,
        features: torch.Tensor | MappedFeatures,
        targets: torch.Tensor,
        rows: np.ndarray,
        sample_shape: tuple[int, ...],
    ) -> None:
        # (n, *sample_shape) float32 tensor, or columns gathered from a memory map per batch
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
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if isinstance(self.features, torch.Tensor):
            x = self.features.index_select(0, idx)
        else:
            x = torch.from_numpy(self.features.gather(self.rows[idx.numpy()])).reshape(
                -1, *self.sample_shape
            )
        return x, self.targets.index_select(0, idx)


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


def _check_columns(
    schema: pa.Schema, path: Path, target: str, features: Sequence[str] | None
) -> list[str]:
    """Check that target and features exist and are numeric; return the feature columns."""
    names = schema.names
    wanted = list(features) if features is not None else [n for n in names if n != target]
    for key, column in [("target", target)] + [("features", f) for f in wanted]:
        if column not in names:
            _fail(f"data.{key}: column {column!r} is not in {path} (columns: {_abbrev(names)})")
        kind = schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            _fail(
                f"data.{key}: column {column!r} in {path} must be integer or floating point, "
                f"got {kind}"
            )
    if not wanted:
        _fail(f"data.features: {path} has no column besides the target {target!r}")
    return wanted


# --------------------------------------------------------------------------- reading


def _read_ipc(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC file (Feather v2, file or stream format) as a zero-copy table."""
    source = pa.memory_map(str(path), "r")
    try:
        return pa_ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa_ipc.open_stream(source).read_all()


def _sample_shape(shape: Sequence[int] | None, n_features: int) -> tuple[int, ...]:
    """One sample's shape; a configured shape must hold exactly the feature columns."""
    sample_shape = tuple(int(s) for s in shape) if shape is not None else (n_features,)
    if math.prod(sample_shape) != n_features:
        _fail(
            f"data.shape {list(sample_shape)} holds {math.prod(sample_shape)} values "
            f"but there are {n_features} feature columns"
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
    _check_options(cfg["val_fraction"], cfg["split_seed"], cfg["standardize"], cfg["shape"],
                   cfg["features"], cfg["target"], cfg["in_memory_mb"])
    _check_loader_options(cfg["batch_size"], cfg["shuffle"], cfg["drop_last"],
                          cfg["num_workers"], cfg["pin_memory"])
    file = resolve_path(cfg["path"])
    if not file.is_file():
        _fail(f"data.path: file not found: {cfg['path']} (looked in {Path.cwd()} and {REPO_ROOT})")
    fmt = resolve_format(file, cfg["format"])
    columns = _check_columns(read_schema(file, fmt), file, cfg["target"], cfg["features"])
    _sample_shape(cfg["shape"], len(columns))
    return {}


def _read_table(
    path: Path, fmt: str, target: str, features: Sequence[str] | None
) -> tuple[pa.Table, list[str], list[str]]:
    """Read the table (only the needed columns of Parquet); return it, feature and file columns."""
    try:
        if fmt == "parquet":
            schema = pq.read_schema(path)
            wanted = _check_columns(schema, path, target, features)
            return pq.read_table(path, columns=[*wanted, target]), wanted, schema.names
        table = _read_ipc(path) if fmt == "ipc" else pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(
            f"data.path: cannot read {path} as {fmt} ({type(error).__name__}: {error})"
        ) from None
    return table, _check_columns(table.schema, path, target, features), table.schema.names


def fingerprint_file(path: Path) -> dict:
    """Size and SHA-256 of the file's bytes, hashed in chunks."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


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
    order = np.random.default_rng(split_seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _column_stats(values: np.ndarray, train_rows: np.ndarray) -> tuple[float, float]:
    """Mean and std (0 → 1) of a float32 column over the training rows, computed in float64."""
    train = values[train_rows].astype(np.float64)
    mean, std = float(train.mean()), float(train.std())
    return mean, std if std > 0 else 1.0


def _features_in_memory(
    table: pa.Table, columns: list[str], rows: list[np.ndarray], standardize: bool
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Contiguous float32 feature matrices per row set, standardised with the first set's stats."""
    out = [np.empty((len(r), len(columns)), dtype=np.float32) for r in rows]
    mean, std = np.zeros(len(columns)), np.ones(len(columns))
    for j, name in enumerate(columns):
        values = _column(table, name, np.float32)
        if standardize:
            mean[j], std[j] = _column_stats(values, rows[0])
        for matrix, r in zip(out, rows):
            matrix[:, j] = values[r]
    if standardize:
        for matrix in out:
            matrix -= mean.astype(np.float32)
            matrix /= std.astype(np.float32)
    return out, mean, std


def _stats_only(
    table: pa.Table, columns: list[str], train_rows: np.ndarray, standardize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Training-split mean and std per column, one column at a time (for the memory-mapped path)."""
    mean, std = np.zeros(len(columns)), np.ones(len(columns))
    for j, name in enumerate(columns):
        if table.column(name).null_count:
            _column(table, name, np.float32)  # raises the missing-values error
        if standardize:
            mean[j], std[j] = _column_stats(_column(table, name, np.float32), train_rows)
    return mean, std


# --------------------------------------------------------------------------- load_splits


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
    table, columns, file_columns = _read_table(file, fmt, target, features)
    sample_shape = _sample_shape(shape, len(columns))
    train_rows, val_rows = split_rows(table.num_rows, val_fraction, split_seed)
    targets, num_classes = _targets(table, target, file)
    lazy = fmt == "ipc" and table.num_rows * len(columns) * 4 > in_memory_mb * 2**20
    if lazy:
        mean, std = _stats_only(table, columns, train_rows, standardize)
        stats = (mean, std) if standardize else (None, None)
        train = val = MappedFeatures(file, columns, *stats)
    else:
        (train_x, val_x), mean, std = _features_in_memory(
            table, columns, [train_rows, val_rows], standardize
        )
        train = torch.from_numpy(train_x).reshape(-1, *sample_shape)
        val = torch.from_numpy(val_x).reshape(-1, *sample_shape)
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
            **fingerprint_file(file),
            "rows": table.num_rows,
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


def _keep(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for ready-made batches (module level so spawned workers can pickle it)."""
    return batch


class BatchLoader:
    """Iterable of (features, targets) batches; len() is the number of batches per epoch."""

    def __init__(
        self,
        dataset: ColumnarDataset,
        sampler: BatchIndexSampler,
        pin_memory: bool,
        workers: torch.utils.data.DataLoader | None = None,
    ) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.pin_memory, self.workers = pin_memory, workers
        self.batch_size = sampler.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.workers is not None:
            yield from self.workers
            return
        for indices in self.sampler:
            x, y = self.dataset[torch.from_numpy(indices)]
            yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)


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
    if num_workers == 0:
        return BatchLoader(dataset, sampler, pin)
    # Workers get their own generator derived from `generator`, so the batch order (drawn in this
    # process) is the same whatever num_workers is, and the generator's state stays resumable.
    worker_generator = (
        torch.Generator().manual_seed(generator.initial_seed()) if generator is not None else None
    )
    workers = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_keep,
        pin_memory=pin,
        worker_init_fn=worker_init_fn,
        generator=worker_generator,
        persistent_workers=True,
    )
    return BatchLoader(dataset, sampler, pin, workers)
