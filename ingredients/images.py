"""Image data: encoded images (PNG, JPEG, WebP) or raw uint8 pixels in Parquet / Arrow IPC shards,
split into train / val (/ test) ImageDatasets with what the run records about them.

The image column is found from the schema (binary, the Hugging Face `{bytes, path}` struct, or a
fixed-size list of uint8), channels and size from the first image. Reading the shards is
ingredients/image_sources.py, decoding ingredients/image_decoding.py; this module holds the
config keys, the split rules and the normalisation statistics.
"""

# ruff: noqa: F841  (Sacred config scopes assign names that look unused)
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ingredients.checkout import resolve_path
from ingredients.image_decoding import ImageDataset, decoder, detect_shape
from ingredients.image_sources import (
    IMAGE_SUFFIXES,
    Column,
    Source,
    class_mapping,
    fail,
    file_format,
    find_image_column,
    fingerprint_in_background,
    hf_class_names,
    is_pattern,
    label_indices,
    read_shards_schema,
    read_source,
    record_batches,
    source_files,
)
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
from ingredients.splits import split_rows
from ingredients.table_files import column_list, read_schema

STATS_IMAGES = 10000  # training images decoded to compute the normalisation mean and std


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
        schema = read_shards_schema(files)
    else:  # one file: its schema without importing pyarrow.dataset (a table run pays nothing)
        files, schema = [where], read_schema(where, file_format(where))
    column = find_image_column(schema, str(files[0]), cfg.get("image_column"), cfg.get("features"))
    if column is None and many:
        fail(f"data.path: {path} has no image column; set data.image_column")
    return column


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
    schema = read_shards_schema(main.files)
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
        fail(f"data: {cfg['path']} leaves an empty train or validation split")
    train = dataset(main, train_rows, labels)
    normalization = None
    if cfg["standardize"]:
        mean, std = cfg.get("mean"), cfg.get("std")
        source = "config"
        if mean is None or std is None:
            mean, std = channel_statistics(train)
            source = f"training split (first {min(len(train), STATS_IMAGES)} images)"
        if len(mean) != shape[0] or len(std) != shape[0]:
            fail(f"data.mean and data.std need one value per channel ({shape[0]})")
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
            "format": file_format(main.files[0]),
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
    """(rows, sample shape, classes) of an image source, from its schema, labels and first image;
    read once while its shards are unchanged (a run checks its config several times)."""
    files = tuple(source_files(cfg["path"]))
    stats = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    given = tuple(_hashable(cfg.get(key)) for key in SHAPE_KEYS)
    return _described(files, stats, str(cfg["path"]), cfg["target"], given, column)


SHAPE_KEYS = ("shape", "channels", "image_size")  # the keys detect_shape reads


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


@functools.lru_cache(maxsize=4)
def _described(
    files: tuple[Path, ...], stats: tuple, path: str, target: str, given: tuple, column: Column
) -> tuple[int, tuple[int, int, int], int]:
    """describe_images' work; stats (each shard's size and mtime) keys the cache only."""
    cfg = {**dict(zip(SHAPE_KEYS, given)), "path": path, "target": target}
    schema = read_shards_schema(files)
    if target not in schema.names:
        fail(
            f"data.target: column {target!r} is not in {files[0]} (columns: {column_list(schema.names)})"
        )
    column_of_labels = pa.chunked_array(
        [pa.concat_arrays([b.column(target)]) for f in files for b in record_batches(f, [target])],
        schema.field(target).type,
    )
    classes = class_mapping(column_of_labels, hf_class_names(schema, target))
    labels = label_indices(column_of_labels, classes, target, path)
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
