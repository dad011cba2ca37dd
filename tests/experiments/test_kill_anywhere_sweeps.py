"""Kill-anywhere for the sweep controller: SIGKILL at the Nth durable write (the test-only
REPROLAB_TEST_KILL_AT_WRITE, read by observers/files.py), then `sweep --resume`: nothing lost,
nothing run twice (each config completed exactly once, counted from the store), and the results
bit-identical to an uninterrupted sweep's (sync: tests/observers/test_kill_anywhere_sync.py)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from observers.files import KILL_AT_VARIABLE
from tests.helpers import run_reprolab

SWEEP = ["sweep", "experiments/train.py", "--parallel", "1", "with", "seed=[1, 2]", "debug"]
CONTROLLER_WRITES = 6  # record, 2 claims, the attempt, 2 claims naming their runs


def reprolab(*argv: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """`reprolab ARGV`, SIGKILLed by itself after its kill_at-th durable write (observers/files.py)."""
    kill = {KILL_AT_VARIABLE: str(kill_at)} if kill_at is not None else {}
    return run_reprolab(*argv, env={"OMP_NUM_THREADS": "1", **kill})


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
def uninterrupted(tmp_path_factory) -> dict[int, dict]:
    store = tmp_path_factory.mktemp("sweep_whole")
    finished = reprolab(*SWEEP[:2], "--store", str(store), *SWEEP[2:])
    assert finished.returncode == 0, finished.stderr[-3000:]
    return {index: values(runs[0]) for index, runs in results(store).items()}


def kill_and_resume(store: Path, kill_at: int, uninterrupted: dict) -> None:
    killed = reprolab(*SWEEP[:2], "--store", str(store), *SWEEP[2:], kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    wait_for_orphans(store)
    sweeps = list(store.glob(".reprolab/sweeps/*.json"))
    if not sweeps:  # killed before its record was written: nothing to resume, nothing ran
        assert not [p for p in store.iterdir() if p.name.isdigit()]
        return
    resumed = reprolab("sweep", "--resume", sweeps[0].stem, "--store", str(store))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = results(store)
    assert sorted(done) == [0, 1] and all(len(runs) == 1 for runs in done.values()), done.keys()
    assert {index: values(runs[0]) for index, runs in done.items()} == uninterrupted
    runs = [p for p in store.iterdir() if p.name.isdigit()]
    assert len(runs) == 2  # nothing started twice: one run per config


def test_a_sweep_controller_killed_after_claiming_resumes_without_doubling(tmp_path, uninterrupted):
    kill_and_resume(tmp_path / "runs", 3, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", range(1, CONTROLLER_WRITES + 1))
def test_a_sweep_controller_killed_at_any_write_resumes_bit_identical(
    tmp_path, uninterrupted, kill_at
):
    kill_and_resume(tmp_path / "runs", kill_at, uninterrupted)
