"""A user's model module outside the checkout, trained by import path, is part of the record:
then-vs-now lists it once edited, --strict refuses, --from-recorded-sources runs its recorded
copy to an exact match."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.rerun import Original, outside_roots
from observers.store import RecordError
from tests.helpers import REPO_ROOT, run_reprolab

MODEL = """\
from torch import nn


def make(input_shape, num_outputs, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_outputs))
"""


def child_env() -> dict:
    """The checkout importable, the user's folder not on PYTHONPATH; one thread (faster here)."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def rerun(store: Path, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_reprolab("rerun", "1", "--store", str(store), *flags, cwd=cwd, env=child_env())


@pytest.mark.slow
def test_a_model_module_outside_the_checkout_is_recorded_and_rerun_in_each_mode(tmp_path, load):
    own = (tmp_path / "own").resolve()
    own.mkdir()
    (own / "mymodels.py").write_text(MODEL)
    store = tmp_path / "runs"
    trained = subprocess.run(  # from the folder that holds mymodels.py, as a user would
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "train.py"),
            "-R",
            str(store),
            "with",
            "model.name=mymodels:make",
            'model.kwargs={"width": 8}',
            "epochs=1",
            "limit_batches=4",
            "progress=False",
        ],
        cwd=own,
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert load(store / "1" / "config.json")["model"]["kwargs"] == {"width": 8}
    assert re.search(r"Linear\s+8\s", trained.stderr), trained.stderr[
        -3000:
    ]  # kwargs reached make()
    module = str(own / "mymodels.py")
    assert module in dict(load(store / "1" / "run.json")["experiment"]["sources"])
    info = load(store / "1" / "info.json")
    assert info["outside_code"] == {"roots": [str(own)], "modules": {"mymodels": module}}
    assert info["import_paths"]["model.name"]["file"] == module

    (own / "mymodels.py").write_text(MODEL.replace("nn.ReLU()", "nn.Tanh()"))
    elsewhere = tmp_path  # not the module's folder: the record says where to find it

    plain = rerun(store, "--verify", cwd=elsewhere)
    assert plain.returncode == 1, plain.stdout + plain.stderr[-3000:]
    assert re.search(rf"source {re.escape(module)}: sha256 \w+ then, sha256 \w+ now", plain.stdout)
    assert "verify: MISMATCH between run 1 and its rerun, run 2" in plain.stdout

    strict = rerun(store, "--strict", cwd=elsewhere)
    assert strict.returncode != 0
    assert "--strict: not rerunning run 1" in strict.stderr and module in strict.stderr
    assert not (store / "3").exists()

    recorded = rerun(store, "--from-recorded-sources", "--verify", cwd=elsewhere)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr[-3000:]
    assert f"code outside the checkout: recorded copies of {module}" in recorded.stdout
    assert "verify: exact match between run 1 and its rerun, run 3" in recorded.stdout


def test_a_recorded_folder_inside_a_run_store_is_refused(tmp_path):
    store = tmp_path / "runs"
    (store / "_sources").mkdir(parents=True)
    (store / "planted").mkdir()
    info = {"outside_code": {"roots": [str(store / "planted")], "modules": {}}}
    original = Original(None, 4, {}, {}, info, {}, None)
    with pytest.raises(
        RecordError,
        match=r"^run 4 imported code from .*planted, inside the run "
        r"store .*runs; code kept in a run store is never run",
    ):
        outside_roots(original)
