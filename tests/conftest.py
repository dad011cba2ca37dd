"""Shared fixtures: the repository root and a helper that trains a small real run into a store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import REPO_ROOT, hash_tree, read_json, run_train

# The property tests hunt with a new random draw on every run; CI's profile (HYPOTHESIS_PROFILE=ci,
# set by .ci/run) draws the same examples every time, so whether a change lands never depends on
# what a hunt happens to find that day. A case a hunt finds becomes a test of its own.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """One run of the default config (seed 7), shared by tests that only read its record."""
    store = tmp_path_factory.mktemp("default_store")
    run_train(store, "seed=7", "data.num_workers=2")
    return store / "1"


@pytest.fixture(scope="session")
def train():
    """run_train of tests.helpers, as a fixture."""
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


@pytest.fixture(scope="session")
def load():
    """read_json, as a fixture: the parsed JSON file at a path."""
    return read_json


@pytest.fixture(scope="session")
def tree_hash():
    """hash_tree, as a fixture: one hash over every file under a directory, to show nothing changed."""
    return hash_tree
