"""Kill-anywhere for the sweep controller: SIGKILL at its Nth durable step (the test-only
REPROLAB_TEST_KILL_AT_STEP, read by observers/files.py), then `sweep --resume`: nothing lost,
nothing run twice (each config completed exactly once, counted from the store), and the results
bit-identical to an uninterrupted sweep's (sync: tests/observers/test_kill_anywhere_sync.py).
The points are the steps an uninterrupted controller logged, so a new write is covered unasked."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import durable_steps, killing_at, logging_steps, run_reprolab

SWEEP = ["sweep", "experiments/train.py", "--parallel", "1", "with", "seed=[1, 2]", "debug"]


def reprolab(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`reprolab ARGV`, with the test-only step variables of env (tests/helpers.py)."""
    return run_reprolab(*argv, env={"OMP_NUM_THREADS": "1", **(env or {})})


def wait_for_orphans(store: Path) -> None:
    """Wait (pidfd, no sleep) for runs a killed controller left running: they are named in the
    claims, and inherited its lock."""
    for claim in store.glob(".reprolab/sweeps/*/claims/*.json"):
        for process in json.loads(claim.read_text()).get("processes", []):
            try:
                fd = os.pidfd_open(process["pid"])
            except ProcessLookupError:
                continue
            try:
                select.select([fd], [], [], 300)
            finally:
                os.close(fd)


def results(store: Path) -> dict[int, list]:
    """{config index: [metrics of each COMPLETED run of it]}, and every run's config index."""
    done: dict[int, list] = {}
    for run in sorted(p for p in store.iterdir() if p.name.isdigit()):
        record = json.loads((run / "run.json").read_text())
        index = record["meta"]["sweep"]["index"]
        if record["status"] == "COMPLETED":
            done.setdefault(index, []).append(json.loads((run / "metrics.json").read_text()))
    return done


def values(metrics: dict) -> dict:
    return {name: series["values"] for name, series in metrics.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The results of an uninterrupted sweep, and the controller's durable steps (what each wrote)."""
    store = tmp_path_factory.mktemp("sweep_whole")
    log = store.parent / f"{store.name}-steps.txt"
    finished = reprolab(*SWEEP[:2], "--store", str(store), *SWEEP[2:], env=logging_steps(log))
    assert finished.returncode == 0, finished.stderr[-3000:]
    steps = durable_steps(log)
    assert any(step.endswith(".json") and "/claims/" in step for step in steps), steps
    results_ = {index: values(runs[0]) for index, runs in results(store).items()}
    return {"results": results_, "steps": steps}


def kill_and_resume(store: Path, kill_at: int, uninterrupted: dict) -> None:
    killed = reprolab(*SWEEP[:2], "--store", str(store), *SWEEP[2:], env=killing_at(kill_at))
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
    wait_for_orphans(store)
    sweeps = list(store.glob(".reprolab/sweeps/*.json"))
    if not sweeps:  # killed before its record was written: nothing to resume, nothing ran
        assert not [p for p in store.iterdir() if p.name.isdigit()]
        return
    resumed = reprolab("sweep", "--resume", sweeps[0].stem, "--store", str(store))
    assert resumed.returncode == 0, (kill_at, resumed.stderr[-3000:])
    done = results(store)
    assert sorted(done) == [0, 1] and all(len(runs) == 1 for runs in done.values()), kill_at
    assert {index: values(runs[0]) for index, runs in done.items()} == uninterrupted["results"]
    runs = [p for p in store.iterdir() if p.name.isdigit()]
    assert len(runs) == 2, kill_at  # nothing started twice: one run per config


def test_a_sweep_controller_killed_after_claiming_resumes_without_doubling(tmp_path, uninterrupted):
    """Killed right after its first claim: a config claimed and not started."""
    steps = uninterrupted["steps"]
    first_claim = next(i for i, step in enumerate(steps, 1) if "/claims/" in step)
    kill_and_resume(tmp_path / "runs", first_claim, uninterrupted)


@pytest.mark.slow
def test_a_sweep_controller_killed_at_any_step_resumes_bit_identical(tmp_path, uninterrupted):
    for kill_at in range(1, len(uninterrupted["steps"]) + 1):
        kill_and_resume(tmp_path / str(kill_at) / "runs", kill_at, uninterrupted)
