"""The search-efficiency benchmark's curve cache: reused only under the same key, never
half-written; and its quick run trains in worker processes, then replays from the cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the scripts import `report` as their sibling
import search_efficiency as bench  # noqa: E402

STAMP = {"code": "a" * 64, "torch": "2.x", "data": {"size": 10, "sha256": "b" * 64}}
UPDATES = {"lr": 0.1, "epochs": 3, "model": {"hidden": [16], "dropout": 0.1}}


def test_cache_reuses_a_curve_under_the_same_stamp_and_updates(tmp_path):
    path = tmp_path / "curves.json"
    bench.CurveCache(path, STAMP).put(UPDATES, [0.5, 0.6, 0.7])
    again = bench.CurveCache(path, json.loads(json.dumps(STAMP)))
    assert again.get({**UPDATES}) == [0.5, 0.6, 0.7]
    assert again.get({**UPDATES, "epochs": 4}) is None  # another config: trained anew
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "changed",
    [
        {**STAMP, "code": "c" * 64},
        {**STAMP, "torch": "2.y"},
        {**STAMP, "data": {"size": 10, "sha256": "d" * 64}},
    ],
)
def test_cache_with_another_stamp_is_not_read(tmp_path, changed):
    path = tmp_path / "curves.json"
    bench.CurveCache(path, STAMP).put(UPDATES, [0.5, 0.6, 0.7])
    other = bench.CurveCache(path, changed)
    assert other.get(UPDATES) is None
    assert "not used" in other.note
    other.put(UPDATES, [0.1, 0.2, 0.3])  # replaces the stale file whole
    assert json.loads(path.read_text())["stamp"] == changed
    assert bench.CurveCache(path, STAMP).get(UPDATES) is None


def test_unreadable_cache_is_named_and_not_used(tmp_path):
    path = tmp_path / "curves.json"
    path.write_text('{"stamp": ')
    cache = bench.CurveCache(path, STAMP)
    assert cache.get(UPDATES) is None
    assert str(path) in cache.note and "unreadable" in cache.note


def test_code_hash_changes_with_the_code_train_py_imports_and_only_that(tmp_path):
    tmp_path = tmp_path / "a folder"  # a space in the path lists the sources all the same
    sources = {
        "experiments/__init__.py": "",
        "experiments/train.py": "import ingredients.model\n",
        "experiments/sweeps/__init__.py": "",
        "experiments/sweeps/search.py": "x = 1\n",  # launching code: trains nothing
        "ingredients/__init__.py": "",
        "ingredients/model.py": "x = 1\n",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = bench.code_hash(tmp_path)
    assert bench.code_hash(tmp_path) == before
    (tmp_path / "experiments/sweeps/search.py").write_text("x = 2\n")
    assert bench.code_hash(tmp_path) == before  # the cached curves stay usable
    (tmp_path / "ingredients/model.py").write_text("x = 2\n")
    assert bench.code_hash(tmp_path) != before


@pytest.mark.parametrize(
    ("make", "configs", "epochs"),
    [(bench.fashion_grid, 144, 15), (bench.large_fashion_grid, 648, 9)],
)
def test_each_config_of_a_declared_grid_has_its_own_cache_key(make, configs, epochs):
    grid = make()
    keys = {bench.entry_key(grid.updates(config)) for config in grid.configs()}
    assert len(keys) == configs  # every declared value reaches train.py's config
    assert {grid.updates(config)["epochs"] for config in grid.configs()} == {epochs}
    assert grid.search({"name": "grid", "seed": 0}, {"name": "none"}).trials == configs


def test_the_large_grid_declares_momentum_and_the_small_keeps_0_9():
    large, small = bench.large_fashion_grid(), bench.fashion_grid()
    assert list(large.values) == ["lr", "width", "dropout", "weight_decay", "momentum"]
    momenta = {large.updates(c)["optimizer"]["momentum"] for c in large.configs()}
    assert momenta == {0.0, 0.5, 0.9}
    assert {small.updates(c)["optimizer"]["momentum"] for c in small.configs()} == {0.9}


@pytest.mark.slow
@pytest.mark.benchmark
def test_quick_run_trains_in_workers_then_replays_from_the_cache(tmp_path):
    def run() -> str:
        command = [sys.executable, str(REPO_ROOT / "benchmarks" / "search_efficiency.py")]
        options = ["--quick", "--workers", "2", "--cache", str(tmp_path / "c.json")]
        result = subprocess.run(
            [*command, *options], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def tables(out: str) -> str:
        return out[out.index("epochs to reach") : out.rindex("\n\n")]

    first, second = run(), run()
    assert re.search(r"training 4 configs, 0 from the cache", first), first
    assert "4 curves kept" in second and "training 0 configs, 4 from the cache" in second
    assert tables(first) == tables(second)  # the same curves, trained in workers or kept
