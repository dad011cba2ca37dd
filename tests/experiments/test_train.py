"""The main job end to end: real training on the bundled digits, the record it leaves, bad input."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from tests.helpers import REPO_ROOT, TRAIN
from tests.helpers import read_json as load


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def test_default_run_trains_to_accuracy_and_records_everything(default_run):
    run = load(default_run / "run.json")
    assert run["status"] == "COMPLETED"
    sources = {name for name, _ in run["experiment"]["sources"]}
    assert {
        "experiments/train.py",
        "ingredients/data.py",
        "ingredients/model.py",
        "ingredients/optimizer.py",
        "ingredients/seeding.py",
    } <= sources

    config = load(default_run / "config.json")
    assert config["lr"] == 0.01 and config["seed"] == 7
    assert [k for k in leaf_keys(config) if k.split(".")[-1] == "lr"] == ["lr"]

    metrics = load(default_run / "metrics.json")
    epochs = config["epochs"]
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert metrics[name]["steps"] == list(range(1, epochs + 1))
    assert max(metrics["val_accuracy"]["values"]) >= 0.95
    assert metrics["lr"]["values"][0] == 0.01
    assert metrics["train_loss"]["values"][-1] < metrics["train_loss"]["values"][0] / 5

    info = load(default_run / "info.json")
    for name in ("last.pt", "best.pt"):
        assert name in run["artifacts"]
        digest = hashlib.sha256((default_run / name).read_bytes()).hexdigest()
        assert info["checkpoints"][name]["sha256"] == digest
    data_file = REPO_ROOT / "data" / "digits.parquet"
    assert (
        info["data"]["fingerprint"]["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    )
    assert info["data"]["fingerprint"]["size"] == data_file.stat().st_size
    assert info["determinism"]["use_deterministic_algorithms"] is True
    assert info["determinism"]["cudnn_benchmark"] is False
    summary = info["model_summary"]
    assert summary["params"] == sum(row["params"] for row in summary["layers"]) > 0


def test_captured_output_is_not_flooded_by_progress_bars(default_run):
    cout = (default_run / "cout.txt").read_text()
    assert "epoch 1:" in cout and "val_accuracy=" in cout
    assert "\r" not in cout and "it/s" not in cout
    assert len(cout.splitlines()) < 60


@pytest.mark.slow
def test_same_command_twice_gives_bit_identical_metrics(default_run, train, tmp_path):
    train(tmp_path, "seed=7", "data.num_workers=2")
    first, second = load(default_run / "metrics.json"), load(tmp_path / "1" / "metrics.json")
    assert first.keys() == second.keys()
    for name in first:
        assert first[name]["values"] == second[name]["values"], name
    info_a, info_b = load(default_run / "info.json"), load(tmp_path / "1" / "info.json")
    assert info_a["final_model_sha256"] == info_b["final_model_sha256"]


@pytest.mark.slow
def test_cnn_and_debug_named_configs_compose(train, tmp_path):
    train(tmp_path, "cnn", "debug")
    config = load(tmp_path / "1" / "config.json")
    assert config["model"]["name"] == "cnn" and config["data"]["shape"] == [1, 8, 8]
    assert config["epochs"] == 1 and config["limit_batches"] == 5
    assert load(tmp_path / "1" / "metrics.json")["val_accuracy"]["steps"] == [1]
    layers = load(tmp_path / "1" / "info.json")["model_summary"]["layers"]
    assert any(row["type"] == "Conv2d" and row["output_shape"] == [16, 8, 8] for row in layers)
    assert "__doc__" not in json.dumps(config)  # named configs' docstrings are no settings
    import torch

    checkpoint = torch.load(tmp_path / "1" / "last.pt", weights_only=True)
    assert "__doc__" not in json.dumps(checkpoint["config"])


@pytest.mark.slow
def test_each_parameter_group_logs_its_lr(train, tmp_path):
    train(
        tmp_path, "debug", "epochs=2", "optimizer.param_groups=[{'pattern': '4.*', 'lr_scale': 10}]"
    )
    metrics = load(tmp_path / "1" / "metrics.json")
    default, group = metrics["lr"], metrics["lr/4.*"]
    assert default["steps"] == group["steps"] == [1, 2]
    assert default["values"][0] == 0.01 and default["values"][1] < 0.01  # cosine, per epoch
    assert group["values"] == pytest.approx([10 * v for v in default["values"]], rel=1e-12)
    assert load(tmp_path / "1" / "info.json")["metric_step"] == "epoch"


@pytest.mark.slow
def test_unobserved_records_nothing_and_F_records_where_asked(tmp_path):
    def run(*flags):
        return subprocess.run(
            [sys.executable, str(TRAIN), *flags, "with", "debug"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run("-u").returncode == 0
    assert not (tmp_path / "runs").exists()
    assert run("-F", "elsewhere").returncode == 0
    assert load(tmp_path / "elsewhere" / "1" / "run.json")["status"] == "COMPLETED"
    assert (tmp_path / "elsewhere" / "1" / "metrics.json").exists()
    assert run().returncode == 0  # no flag at all: ./runs
    assert load(tmp_path / "runs" / "1" / "run.json")["status"] == "COMPLETED"


@pytest.mark.slow
@pytest.mark.parametrize(
    "update, expected",
    [
        ("optimizer.lrr=0.1", "unknown config key 'optimizer.lrr'; did you mean 'lr'?"),
        ("model.hiden=[8]", "did you mean 'model.hidden'?"),
        ("model.name=resnet", "model.name: unknown model 'resnet'"),
        ("optimizer.name=rmsprop", "optimizer.name must be one of sgd, adam, adamw, got 'rmsprop'"),
        ("lr=-0.1", "lr must be a positive number, got -0.1"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
        ("data.path=missing.parquet", "data.path: file not found: missing.parquet"),
        ("data.target=digit", "data.target: column 'digit' is not in"),
        ("data.val_fraction=1.0", "data.val_fraction must be a number in (0, 1), got 1.0"),
        (
            "data.val_fraction=0.0001",
            "data.val_fraction 0.0001 leaves an empty train or validation",
        ),
        ("lr=1j", "lr cannot be stored in a run's record"),
        ("data=3", "data is a group of settings"),
        ("no_such_config", "unknown named config 'no_such_config' (named configs: cnn, debug"),
        ("missing.yaml", "config file not found: missing.yaml"),
        ("loss=bce_with_logits", "loss: bce_with_logits needs a binary target (labels 0 and 1)"),
        ("model.freeze=['head.*']", "model.freeze: pattern 'head.*' matches no parameter"),
        (
            "optimizer.param_groups=[{'pattern':'zz'}]",
            "pattern 'zz' matches no trainable parameter",
        ),
        ("optimizer.step_size=0", "optimizer.step_size must be a positive integer, got 0"),
        ("model.dropout=1.5", "model.dropout must be a number in [0, 1), got 1.5"),
        ("patience=0", "patience must be a positive integer or None, got 0"),
        ("lr=True", "lr must be a positive number, got True"),
        ("model.name=cnn", "the cnn needs image input"),
    ],
)
def test_bad_input_is_one_sentence_and_records_nothing(train, tmp_path, update, expected):
    result = train(tmp_path / "store", update, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_non_finite_loss_stops_the_run_as_failed(train, tmp_path):
    result = train(tmp_path, "optimizer.name=sgd", "lr=1e30", "epochs=3", check=False)
    assert result.returncode != 0
    assert "training loss became" in result.stderr and "Traceback" not in result.stderr
    run = load(tmp_path / "1" / "run.json")
    assert run["status"] == "FAILED" and "training loss became" in "".join(run["fail_trace"])
    assert "epoch 1:" not in result.stderr  # it failed in its first epoch,
    data_file = REPO_ROOT / "data" / "digits.parquet"  # yet the data's hash is in its record
    fingerprint = load(tmp_path / "1" / "info.json")["data"]["fingerprint"]
    assert fingerprint["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()


def test_print_config_comments_every_key():
    result = subprocess.run(
        [sys.executable, str(TRAIN), "print_config"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    lines = [line for line in result.stdout.splitlines() if " = " in line]
    assert len(lines) > 30
    assert all("#" in line for line in lines), [line for line in lines if "#" not in line]


def test_progress_bar_shows_on_a_terminal_but_not_in_the_record(tmp_path):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80x24, not 0x0
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "-F", str(tmp_path), "with", "epochs=2"],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO_ROOT,
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=300) == 0
    assert b"it/s" in screen or b"s/it" in screen
    cout = (tmp_path / "1" / "cout.txt").read_text()
    assert "it/s" not in cout and "\r" not in cout


def test_a_run_imports_neither_pandas_nor_matplotlib():
    # pandas would come from pyarrow (to_numpy, read_table) while the data is read: 0.3 s
    probe = (
        "import sys, experiments.train, observers.provenance; "
        "print(sorted({'pandas', 'matplotlib', 'pyarrow.parquet'} & set(sys.modules))); "
        "experiments.train.ex.run(named_configs=['debug'], options={'--unobserved': True}); "
        "print(sorted({'pandas', 'matplotlib', 'pyarrow.dataset'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert result.stdout.split() == ["[]", "[]"], result.stderr[-2000:]


@pytest.mark.slow
def test_bce_with_logits_on_a_two_class_target_trains_one_output(train, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "data" / "digits.parquet")
    high = pa.array((table.column("label").to_numpy() >= 5).astype(np.int64))
    pq.write_table(
        table.set_column(table.schema.get_field_index("label"), "label", high),
        tmp_path / "binary.parquet",
    )
    train(
        tmp_path / "store",
        f"data.path={tmp_path / 'binary.parquet'}",
        "loss=bce_with_logits",
        "epochs=3",
    )
    info = load(tmp_path / "store" / "1" / "info.json")
    assert info["task"] == {"kind": "binary", "loss": "bce_with_logits", "outputs": 1}
    assert info["model_summary"]["layers"][-1]["output_shape"] == [1]
    accuracy = load(tmp_path / "store" / "1" / "metrics.json")["val_accuracy"]["values"]
    assert accuracy[-1] > 0.85  # logit > 0 is class 1; half the digits are >= 5


def test_missing_values_are_refused_before_a_run_exists(train, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "data" / "digits.parquet")
    values = table.column("pixel_3").to_pylist()
    values[5] = None
    pq.write_table(table.set_column(3, "pixel_3", pa.array(values)), tmp_path / "holes.parquet")
    result = train(tmp_path / "store", f"data.path={tmp_path / 'holes.parquet'}", check=False)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: data: column 'pixel_3' has 1 missing values; fill or drop them first"
    )
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())
