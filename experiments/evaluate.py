"""`reprolab evaluate RUN --data PATH [--split test]`: a recorded image run's best checkpoint on
other data; loss, accuracy and the confusion matrix are printed and appended to the run's
evaluations (observers/evaluations.py), never changing what the run recorded."""

from __future__ import annotations

import numpy as np
import torch

from experiments.checkpoint import checkpoint_from_bytes
from experiments.loop import make_loss
from ingredients.augment import Augmenter
from ingredients.image_decoding import ImageDataset
from ingredients.image_sources import (
    SPLIT_NAMES,
    fingerprint_source,
    label_indices,
    read_source,
)
from ingredients.images import image_source
from ingredients.model import build_model
from observers.evaluations import add_evaluation
from observers.store import RecordError, resolve_run

BATCH = 256


def load_best(store, run_id: int) -> tuple[dict, dict, dict]:
    """The run's config, info and best checkpoint, its SHA-256 checked against the record."""
    info, config = store.info(run_id), store.config(run_id)
    record = (info.get("checkpoints") or {}).get("best.pt")
    if not record or not info.get("images"):
        raise RecordError(f"run {run_id} has no best.pt checkpoint of an image model to evaluate")
    data = store.artifact(run_id, "best.pt")
    return config, info, checkpoint_from_bytes(data, record["sha256"], f"run {run_id}'s best.pt")


def dataset_for(path: str, split: str | None, config: dict, images: dict) -> ImageDataset:
    """The rows of PATH (those of `split` when the data has a split column) as the run saw them."""
    cfg = {**config["data"], "path": path}
    if split is None:
        cfg["split_column"] = None
    column = image_source(cfg)
    if column is None:
        raise ValueError(f"--data: {path} holds no image column")
    budget = cfg["in_memory_mb"] * 2**20  # above it the images stream, as in training
    source = read_source(path, "--data", column, cfg["target"], cfg.get("split_column"), budget)
    labels = label_indices(source.labels, images["classes"], cfg["target"], path)
    rows = np.arange(len(labels))
    if split is not None:
        rows = rows[source.splits == split_name(split, path, source.splits)]
    if len(rows) == 0:
        raise ValueError(f"--data: {path} has no rows{f' of split {split}' if split else ''}")
    shape = (images["channels"], *images["size"])
    return ImageDataset(source.images, torch.from_numpy(labels[rows]), rows, shape, source.where)


def split_name(split: str, path: str, splits: np.ndarray | None) -> str:
    """The split column's name for --split (validation is val), or one sentence why it has none."""
    if splits is None:
        raise ValueError(f"--split {split}: {path} has no split column (data.split_column)")
    name = SPLIT_NAMES.get(split.lower())
    if name is None:
        raise ValueError(f"--split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    return name


@torch.no_grad()
def run_model(net, dataset: ImageDataset, augmenter: Augmenter, loss: str, outputs: int) -> dict:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted)."""
    loss_fn, total, confusion = make_loss(loss), 0.0, np.zeros((outputs, outputs), np.int64)
    net.eval()
    for start in range(0, len(dataset), BATCH):
        x, y = dataset[np.arange(start, min(start + BATCH, len(dataset)))]
        out = net(augmenter(x, None))
        total += float(loss_fn(out, y)) * len(y)
        np.add.at(confusion, (y.numpy(), out.argmax(1).numpy()), 1)
    n = max(len(dataset), 1)
    return {
        "loss": total / n,
        "accuracy": float(np.trace(confusion)) / n,
        "confusion": confusion.tolist(),
    }


def evaluate_command(args) -> int:
    """The `reprolab evaluate` handler."""
    store, run_id = resolve_run(args.run, args.store)
    config, info, state = load_best(store, run_id)
    images, outputs = info["images"], info["task"]["outputs"]
    dataset = dataset_for(args.data, args.split, config, images)
    model_cfg = {k: v for k, v in config["model"].items() if k != "sync_batchnorm"}
    net = build_model((images["channels"], *images["size"]), outputs, **model_cfg)
    net.load_state_dict(state["model"])
    augmenter = Augmenter([], images["normalization"], images["channels"])
    result = run_model(net, dataset, augmenter, config["loss"], outputs)
    print(f"run {run_id} best.pt (epoch {state['epoch']}) on {args.data}, {len(dataset)} rows")
    print(f"loss {result['loss']:.4f} accuracy {result['accuracy']:.4f}")
    names = images.get("classes") or [str(i) for i in range(outputs)]
    width = max(6, *(len(str(v)) for row in result["confusion"] for v in row))
    print("confusion (rows: true, columns: predicted)")
    print(f"  {'':>14} " + " ".join(f"{str(name)[:width]:>{width}}" for name in names))
    for name, row in zip(names, result["confusion"]):
        print(f"  {str(name)[:14]:>14} " + " ".join(f"{v:>{width}}" for v in row))
    add_evaluation(
        store,
        run_id,
        {
            "data": args.data,
            "split": args.split,
            "rows": len(dataset),
            "fingerprint": fingerprint_source(args.data),
            "checkpoint": {"name": "best.pt", "epoch": state["epoch"]},
            **result,
        },
    )
    return 0
