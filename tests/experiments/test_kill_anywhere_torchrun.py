"""Kill-anywhere for a torchrun job (2 processes, gloo, CPU): rank 0, the one that records, kills
itself (SIGKILL) at one of its durable steps (observers/files.py's durable_step; the points are
read from an uninterrupted job's step log), torchrun ends the job, and `with resume=1` under
torchrun continues from the newest checkpoint on disk: nothing lost, no epoch run twice, the
result bit-identical to the uninterrupted job's, and the killed run not read as RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from observers.liveness import DEAD, status_now
from tests.helpers import REPO_ROOT, TRAIN, durable_steps, killing_at, logging_steps

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
TIMEOUT = 300  # seconds any one launch may take on a loaded machine

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def torchrun(store: Path, *updates: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, str(TRAIN), "-R", str(store), "with", *updates],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=TIMEOUT,
    )


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
    whole = torchrun(folder / "runs", *CONFIG, env=logging_steps(log))
    assert whole.returncode == 0, whole.stderr[-3000:]
    pids = {line.split(" ", 2)[1] for line in log.read_text().splitlines()}
    assert len(pids) == 1  # rank 0 alone writes the record
    return {
        "metrics": metrics(folder / "runs", 1),
        "model": read(folder / "runs", 1, "info")["final_model_sha256"],
        "steps": durable_steps(log),
    }


def kill_points(steps: list[str]) -> dict[str, int]:
    """The steps to kill at, by what they interrupt (numbered from 1, as durable_step counts)."""
    numbered = list(enumerate(steps, 1))
    in_run = [(i, path) for i, path in numbered if "/runs/1/" in path]
    renamed = [i for i, path in in_run if path.endswith("/1/last.pt")]
    sidecars = [i for i, path in in_run if path.endswith("/1/last.pt.sha256")]
    record_tmps = [i for i, path in in_run if "/1/.info.json." in path and i > renamed[1]]
    return {
        "right after the first checkpoint, before run.json lists it": renamed[0],
        "between the sidecar and the rename of the second checkpoint": max(
            i for i in sidecars if i < renamed[1]
        ),
        "during a record write after the second checkpoint": record_tmps[0],
    }


def test_a_torchrun_job_killed_at_its_durable_steps_resumes_exactly(tmp_path, uninterrupted):
    for what, point in kill_points(uninterrupted["steps"]).items():
        store = tmp_path / str(point) / "runs"
        killed = torchrun(store, *CONFIG, env=killing_at(point))
        assert killed.returncode != 0 and "SIGKILL" in killed.stderr, (what, killed.stderr[-3000:])
        assert status_now(read(store, 1, "run")) == DEAD, what  # not left RUNNING for good
        on_disk = torch.load(store / "1" / "last.pt", weights_only=True)["epoch"]
        assert 1 <= on_disk < EPOCHS, what  # each point lies after a first checkpoint
        resumed = torchrun(store, "resume=1")
        assert resumed.returncode == 0, (what, resumed.stderr[-3000:])
        info = read(store, 2, "info")
        assert info["resumed_from"]["epoch"] == on_disk, what  # the newest checkpoint
        then = uninterrupted["metrics"]
        for name, values in metrics(store, 2).items():  # nothing run twice, nothing lost
            assert sorted(values) == list(range(on_disk + 1, EPOCHS + 1)), (what, name)
            assert values == {step: then[name][step] for step in values}, (what, name)
        assert info["final_model_sha256"] == uninterrupted["model"], what
