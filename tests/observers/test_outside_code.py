"""A user's model module outside the checkout, trained by import path, is part of the record:
found again only where the user's Python finds it now (never in a folder the record names),
then-vs-now lists it once edited or when it is not found, --strict refuses,
--from-recorded-sources runs its recorded copy to an exact match."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.outside_code import outside_differences
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
    elsewhere = tmp_path  # not the module's folder: the record does not say where to look

    plain = rerun(store, "--verify", cwd=own)  # where the user's Python finds it now
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

    lost = rerun(store, cwd=elsewhere)  # the recorded folder is never searched
    assert lost.returncode == 1, lost.stdout + lost.stderr[-3000:]
    assert f"source {module}: sha256" in lost.stdout and "then, missing (no module 'mymodels'" in (
        lost.stdout
    )
    assert "model.name: cannot import 'mymodels:make': no module 'mymodels'" in lost.stderr
    assert not (store / "4" / "metrics.json").exists()  # it never trained


def test_recorded_roots_are_only_a_layout_and_must_be_absolute_paths():
    """Replaces the test that a recorded folder inside a run store is refused: no recorded folder
    is searched any more, so roots only lay out --from-recorded-sources' temporary folder."""
    original = Original(None, 4, {}, {}, {"outside_code": {"roots": ["lib"]}}, {}, None)
    with pytest.raises(RecordError, match=r"^run 4's info outside_code.roots is not a list"):
        outside_roots(original)


def test_then_vs_now_compares_the_module_python_finds_now_not_the_recorded_file(tmp_path):
    """A record naming a file outside the checkout (a device, a planted copy) is never read: the
    module of the recorded name is looked up where Python would look, and hashed."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "fuzzmod_then.py").write_text("X = 1\n")
    now = tmp_path / "cwd"
    now.mkdir()
    (now / "fuzzmod_then.py").write_text("X = 2\n")
    sources = {
        str(planted / "fuzzmod_then.py"): b"X = 1\n",
        "/dev/zero": b"never read",  # no module name recorded for it: not looked up at all
    }
    info = {"outside_code": {"modules": {"fuzzmod_then": str(planted / "fuzzmod_then.py")}}}
    found = [str(d) for d in outside_differences(sources, info, now)]
    assert len(found) == 2
    assert found[0].startswith("source /dev/zero: sha256 ")
    assert found[0].endswith(" then, missing (no module name recorded for it) now")
    moved = f"source {planted / 'fuzzmod_then.py'} (found now as {now / 'fuzzmod_then.py'}): "
    assert found[1].startswith(moved + "sha256 ") and found[1].endswith(" now")
    (now / "fuzzmod_then.py").write_text("X = 1\n")  # the same bytes found elsewhere: no difference
    assert outside_differences(sources, info, now)[1:] == []
