"""Training on encoded images: bit-exact with loader workers and random augmentation (twice,
`reprolab rerun --verify`, resumed, SIGKILLed mid-epoch and resumed), the test split evaluated once, `reprolab evaluate`, a bad
image ending the run FAILED with one sentence."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = REPO_ROOT / "experiments" / "train.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FASHION = REPO_ROOT / "data" / "fashion-mnist"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(path: Path, n: int, seed: int, bad_row: int | None = None) -> None:
    """n 12x12 RGB PNGs of 3 classes (a bright bar's row) with string labels."""
    rng = np.random.default_rng(seed)
    blobs, labels = [], []
    for i in range(n):
        a = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
        a[1 + (i % 3) * 4 : 3 + (i % 3) * 4, :, i % 3] = 240
        blobs.append(png(a) if i != bad_row else b"not an image")
        labels.append(["red", "green", "blue"][i % 3])
    pq.write_table(pa.table({"image": blobs, "label": labels}), path)


ARGS = (
    "seed=3",
    "model.name=cnn",
    "model.channels=[8]",
    "data.batch_size=16",
    "data.num_workers=2",
    "optimizer.schedule=none",
    "data.augment=[{'name': 'crop', 'padding': 2}, {'name': 'flip'}, {'name': 'color_jitter'}]",
)


def train(store: Path, data: Path, *updates: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), "-F", str(store), "with", f"data.path={data}",
         f"data.test_path={data.with_name('test.parquet')}", *ARGS, *updates],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
    )  # fmt: skip


def record(store: Path, run: int) -> tuple[dict, dict]:
    return (
        json.loads((store / str(run) / "info.json").read_text()),
        json.loads((store / str(run) / "metrics.json").read_text()),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run 1: 2 epochs; rerun of it; run 3: 1 epoch; run 4: run 3 resumed to 2 epochs."""
    tmp = tmp_path_factory.mktemp("images")
    data, store = tmp / "train.parquet", tmp / "runs"
    write_images(data, 96, seed=0)
    write_images(tmp / "test.parquet", 24, seed=1)
    first = train(store, data, "epochs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    verify = cli("rerun", "1", "--verify", "--store", str(store))
    short = train(store, data, "epochs=1")
    assert short.returncode == 0, short.stderr[-3000:]
    resumed = train(store, data, "epochs=2", f"resume={len(os.listdir(store)) - 1}")
    return store, data, verify, resumed


def test_two_runs_with_workers_and_augmentation_are_bit_identical(runs):
    store, _, verify, _ = runs
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "final model state identical" in verify.stdout
    assert "matched bit for bit" in verify.stdout


def test_a_resumed_run_equals_the_straight_run(runs):
    store, _, _, resumed = runs
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, straight_metrics = record(store, 1)
    last = max(int(p.name) for p in store.iterdir() if p.name.isdigit())
    again, again_metrics = record(store, last)
    assert again["resumed_from"]["epoch"] == 1
    assert again["final_model_sha256"] == straight["final_model_sha256"]
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert again_metrics[name]["values"] == straight_metrics[name]["values"][1:]


# Runs train.py, but SIGKILLs itself at the second optimizer step after the first validation pass
# (epoch 1 checkpointed, epoch 2 half-trained, its loader workers busy): a kill mid-epoch at a
# known point, without sleeping.
KILLER = """
import os, runpy, signal, sys
import experiments.loop as loop

evaluated, steps = [], []
evaluate, optimizer_step = loop.evaluate, loop.optimizer_step

def evaluate_and_count(*args, **kwargs):
    evaluated.append(1)
    return evaluate(*args, **kwargs)

def step_or_die(*args, **kwargs):
    optimizer_step(*args, **kwargs)
    steps.append(bool(evaluated))
    if sum(steps) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

loop.evaluate, loop.optimizer_step = evaluate_and_count, step_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_straight_run(runs, tmp_path):
    store, data, _, _ = runs
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    killed_store = tmp_path / "runs"
    killed = subprocess.run(
        [sys.executable, str(killer), str(TRAIN), "-F", str(killed_store), "with",
         f"data.path={data}", f"data.test_path={data.with_name('test.parquet')}", *ARGS,
         "epochs=2"],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(killed_store / "1" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = train(killed_store, data, "resume=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, straight_metrics = record(store, 1)
    again, again_metrics = record(killed_store, 2)
    assert again["resumed_from"]["epoch"] == 1
    assert again["final_model_sha256"] == straight["final_model_sha256"]
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert again_metrics[name]["steps"] == [2]
        assert again_metrics[name]["values"] == straight_metrics[name]["values"][1:], name


def test_the_record_holds_images_classes_augmentation_and_the_test_result(runs):
    store, _, _, _ = runs
    info, metrics = record(store, 1)
    assert info["images"]["classes"] == ["blue", "green", "red"]
    assert info["images"]["augment"][0] == {"name": "crop", "padding": 2}
    assert info["images"]["normalization"]["from"].startswith("training split")
    assert info["test"]["rows"] == 24 and 0 <= info["test"]["test_accuracy"] <= 1
    assert metrics["test_accuracy"]["steps"] == [info["best"]["epoch"]]
    assert info["data"]["fingerprint"]["sha256"]


def test_evaluate_prints_and_records_apart_and_show_lists_it(runs):
    store, data, _, _ = runs
    before = {p.name: p.read_bytes() for p in (store / "1").iterdir() if p.is_file()}
    result = cli(
        "evaluate", "1", "--data", str(data.with_name("test.parquet")), "--store", str(store)
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((store / "1" / "info.json").read_text())
    expected = f"accuracy {info['test']['test_accuracy']:.4f}"  # the same weights, the same rows
    assert expected in result.stdout and "confusion" in result.stdout
    table = result.stdout.split("columns: predicted)\n")[1].splitlines()
    assert table[0].split() == ["blue", "green", "red"]  # the predicted classes, in order
    assert [line.split()[0] for line in table[1:4]] == ["blue", "green", "red"]
    assert sum(int(v) for line in table[1:4] for v in line.split()[1:]) == 24
    after = {p.name: p.read_bytes() for p in (store / "1").iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "evaluations.json"} == before
    saved = json.loads(after["evaluations.json"])
    assert len(saved) == 1 and sum(map(sum, saved[0]["confusion"])) == 24
    shown = cli("show", "1", "--store", str(store))
    assert "evaluations:" in shown.stdout and expected in shown.stdout


def test_evaluate_refuses_a_split_the_data_cannot_give(runs):
    """--split of data without a split column is one sentence, not all rows evaluated as it."""
    store, data, _, _ = runs
    test_file, kept = str(data.with_name("test.parquet")), store / "1" / "evaluations.json"
    before = kept.read_bytes() if kept.exists() else None
    result = cli("evaluate", "1", "--data", test_file, "--split", "test", "--store", str(store))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"reprolab: error: --split test: {test_file} has no split column (data.split_column)"
    )
    assert (kept.read_bytes() if kept.exists() else None) == before  # nothing recorded


def test_a_bad_image_fails_the_run_with_one_sentence(tmp_path):
    data = tmp_path / "train.parquet"
    write_images(data, 48, seed=0, bad_row=7)
    write_images(tmp_path / "test.parquet", 6, seed=1)
    result = train(tmp_path / "runs", data, "epochs=1", "data.standardize=False")
    assert result.returncode != 0
    assert f"row 7 of column 'image' in {data} is not an image" in result.stderr
    assert "Traceback" not in result.stderr
    run = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())
    assert run["status"] == "FAILED"


@pytest.mark.skipif(
    not (FASHION / "test.parquet").is_file(),
    reason="Fashion-MNIST not prepared (apt-get install dataset-fashion-mnist, then "
    "python data/prepare_fashion_mnist.py)",
)
def test_a_slice_of_fashion_mnist_trains(tmp_path):
    part = tmp_path / "train.parquet"
    pq.write_table(pq.read_table(FASHION / "test.parquet").slice(0, 600), part)
    pq.write_table(
        pq.read_table(FASHION / "test.parquet").slice(600, 200), tmp_path / "test.parquet"
    )
    result = train(
        tmp_path / "runs", part, "epochs=3", "data.augment=[]", "model.channels=[16, 32]"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "runs" / "1" / "info.json").read_text())
    assert info["images"]["size"] == [28, 28] and info["test"]["test_accuracy"] > 0.4


def test_evaluate_split_names_are_the_data_ingredients():
    from experiments.evaluate import split_name

    splits = np.array(["train", "val", "test"])
    assert [split_name(s, "d", splits) for s in ("Validation", "valid", "TEST")] == [
        "val",
        "val",
        "test",
    ]
    with pytest.raises(ValueError, match="--split must be one of train, val, validation"):
        split_name("dev", "d", splits)
