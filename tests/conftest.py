"""Shared fixtures: the repository root and a helper that trains a small real run into a store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "experiments" / "train.py"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def run_train(
    store: Path,
    *updates: str,
    flags: tuple[str, ...] = (),
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run experiments/train.py as a user would, recording into store."""
    command = [sys.executable, str(TRAIN), *flags, "-R", str(store)]
    if updates:
        command += ["with", *updates]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """One run of the default config (seed 7), shared by tests that only read its record."""
    store = tmp_path_factory.mktemp("default_store")
    run_train(store, "seed=7", "data.num_workers=2")
    return store / "1"


@pytest.fixture(scope="session")
def train():
    """The run_train helper, as a fixture (test modules cannot import conftest)."""
    return run_train


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """make(name, runs): a new store holding one run per config-updates tuple in runs, trained
    in parallel (so the runs take their ids in any order)."""

    def make(name: str, runs: Iterable[tuple[str, ...]]) -> Path:
        root = tmp_path_factory.mktemp(name)
        runs = list(runs)
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(lambda updates: run_train(root, *updates), runs))
        return root

    return make


SMALL_RUNS = {  # name: config updates; trained once per session for the tables and report tests
    "debug": ("debug",),  # 1 epoch of 5 batches, lr 0.01, adam
    "sgd": ("epochs=2", "limit_batches=5", "lr=0.05", "optimizer.name=sgd"),
    "slow": ("epochs=2", "limit_batches=5", "lr=0.001"),
}
SMALL_RUN_LR = {0.01: "debug", 0.05: "sgd", 0.001: "slow"}


@pytest.fixture(scope="session")
def small_store(trained_store) -> Path:
    """The SMALL_RUNS, trained once (in parallel, so in any id order) into one store."""
    return trained_store("small_store", SMALL_RUNS.values())


@pytest.fixture(scope="session")
def small_store_of(small_store, tmp_path_factory):
    """make(names): a new store holding copies of the named SMALL_RUNS as runs 1, 2, ... in that
    order, so a test module that needs some of them does not train them again."""
    ids = {
        SMALL_RUN_LR[read_json(run / "config.json")["lr"]]: run
        for run in small_store.iterdir()
        if run.name.isdigit()
    }

    def make(names: list[str]) -> Path:
        root = tmp_path_factory.mktemp("small_store_copy")
        shutil.copytree(small_store / "_sources", root / "_sources")
        for run_id, name in enumerate(names, 1):
            shutil.copytree(ids[name], root / str(run_id))
        return root

    return make


def hash_tree(root: Path) -> str:
    """One hash over every file's path and bytes under root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def load():
    """read_json, as a fixture: the parsed JSON file at a path."""
    return read_json


@pytest.fixture(scope="session")
def tree_hash():
    """hash_tree, as a fixture: one hash over every file under a directory, to show nothing changed."""
    return hash_tree


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tier (`@pytest.mark.slow`) runs with REPROLAB_SLOW_TESTS=1 or `-m slow`, as the
    slower distributed variants do; the default run stays fast."""
    if os.environ.get("REPROLAB_SLOW_TESTS") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow tier: set REPROLAB_SLOW_TESTS=1 or run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
