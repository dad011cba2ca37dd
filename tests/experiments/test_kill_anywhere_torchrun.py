"""Kill-anywhere for a torchrun job (2 processes, gloo, CPU): rank 0, the one that records, kills
itself (SIGKILL) at one of its durable steps (observers/files.py's durable_step; the points are
read from an uninterrupted job's step log), torchrun ends the job, and `with resume=1` under
torchrun continues from the newest checkpoint on disk: nothing lost, no epoch run twice, the
result bit-identical to the uninterrupted job's, and the killed run not read as RUNNING."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from observers.liveness import DEAD, status_now
from tests.helpers import durable_steps, killing_at, logging_steps, run_torchrun

EPOCHS = 3
CONFIG = (
    "seed=7",
    f"epochs={EPOCHS}",
    "limit_batches=4",
    "data.batch_size=32",
    "model.dropout=0.0",
    "model.hidden=[32]",
    "optimizer.schedule=none",
    "progress=False",
)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def read(store: Path, run_id: int, part: str) -> dict:
    return json.loads((store / str(run_id) / f"{part}.json").read_text())


def metrics(store: Path, run_id: int) -> dict:
    """{name: {step: value}} of a completed run."""
    sealed = read(store, run_id, "metrics")
    return {name: dict(zip(s["steps"], s["values"])) for name, s in sealed.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """An uninterrupted job: its metrics, final model hash, and rank 0's durable steps."""
    folder = tmp_path_factory.mktemp("torchrun_whole")
    log = folder / "steps.txt"
    whole = run_torchrun(
        folder / "runs", *CONFIG, env={**ONE_THREAD, **logging_steps(log)}, check=False
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    pids = {line.split(" ", 2)[1] for line in log.read_text().splitlines()}
    assert len(pids) == 1  # rank 0 alone writes the record
    return {
        "metrics": metrics(folder / "runs", 1),
        "model": read(folder / "runs", 1, "info")["final_model_sha256"],
        "steps": durable_steps(log),
    }


CHECKPOINT = r"/runs/1/last\.pt$"  # last.pt renamed into the run's folder
SIDECAR = r"/runs/1/last\.pt\.sha256$"  # its sidecar renamed, before and after each checkpoint
INFO_TMP = r"/runs/1/\.info\.json\."  # info.json's temporary file, written and not yet renamed


def kill_points(steps: list[str]) -> dict[str, tuple[int, str]]:
    """Where to kill, by what it interrupts: (n, pattern), the nth step matching the pattern, so
    a heartbeat's timed writes do not move a point (observers/files.py)."""

    def nth(pattern: str, step: int) -> int:  # how many steps up to step match pattern
        return sum(bool(re.search(pattern, what)) for what in steps[:step])

    second = next(i for i, what in enumerate(steps, 1) if nth(CHECKPOINT, i) == 2)
    info_after = next(
        i for i, what in enumerate(steps, 1) if i > second and re.search(INFO_TMP, what)
    )
    return {
        "right after the first checkpoint, before run.json lists it": (1, CHECKPOINT),
        "between the sidecar and the rename of the second checkpoint": (3, SIDECAR),
        "during a record write after the second checkpoint": (nth(INFO_TMP, info_after), INFO_TMP),
    }


def test_a_torchrun_job_killed_at_its_durable_steps_resumes_exactly(tmp_path, uninterrupted):
    for number, (what, point) in enumerate(kill_points(uninterrupted["steps"]).items()):
        store = tmp_path / str(number) / "runs"
        killed = run_torchrun(store, *CONFIG, env={**ONE_THREAD, **killing_at(*point)}, check=False)
        assert killed.returncode != 0 and "SIGKILL" in killed.stderr, (what, killed.stderr[-3000:])
        assert status_now(read(store, 1, "run")) == DEAD, what  # not left RUNNING for good
        on_disk = torch.load(store / "1" / "last.pt", weights_only=True)["epoch"]
        assert 1 <= on_disk < EPOCHS, what  # each point lies after a first checkpoint
        resumed = run_torchrun(store, "resume=1", env=ONE_THREAD, check=False)
        assert resumed.returncode == 0, (what, resumed.stderr[-3000:])
        info = read(store, 2, "info")
        assert info["resumed_from"]["epoch"] == on_disk, what  # the newest checkpoint
        then = uninterrupted["metrics"]
        for name, values in metrics(store, 2).items():  # nothing run twice, nothing lost
            assert sorted(values) == list(range(on_disk + 1, EPOCHS + 1)), (what, name)
            assert values == {step: then[name][step] for step in values}, (what, name)
        assert info["final_model_sha256"] == uninterrupted["model"], what
