"""Training under torchrun (CPU, gloo, 2 processes): one recorded run, every sample once, exact
repeats, reruns and resumes, equivalence with one process, a failing rank, two nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ingredients.batches import BatchIndexSampler, BatchLoader
from ingredients.columnar import ColumnarDataset
from tests.helpers import (
    REPO_ROOT,
    TORCHRUN_TIMEOUT,
    TRAIN,
    free_port,
    run_reprolab,
    run_torchrun,
    torchrun_command,
)

# Tiny but complete epochs (the last global batch is split between the ranks), a constant lr
# (so epochs=50 and epochs=4 train the same first epochs) and no dropout (so one process with
# the global batch draws nothing the two ranks do not).
CONFIG = (
    "seed=7",
    "epochs=4",
    "data.batch_size=32",
    "model.dropout=0.0",
    "model.hidden=[32]",
    "optimizer.schedule=none",
    "progress=False",
)


def runs(store: Path) -> list[int]:
    return sorted(int(p.name) for p in store.iterdir() if p.name.isdigit())


def record(store: Path, run_id: int, part: str):
    return json.loads((store / str(run_id) / f"{part}.json").read_text())


def values(store: Path, run_id: int) -> dict:
    return {name: series["values"] for name, series in record(store, run_id, "metrics").items()}


def weights(store: Path, run_id: int) -> dict:
    return torch.load(store / str(run_id) / "last.pt", weights_only=True)["model"]


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "n, world_size, drop_last", [(13, 2, False), (29, 3, False), (7, 4, False), (29, 3, True)]
)
def test_every_sample_once_per_epoch_across_ranks(n, world_size, drop_last):
    generator_seed, batch = 5, 4
    parts = []
    for rank in range(world_size):
        sampler = BatchIndexSampler(
            n,
            batch,
            True,
            drop_last,
            torch.Generator().manual_seed(generator_seed),
            rank,
            world_size,
        )
        parts.append([list(sampler) for _ in range(2)])  # two epochs
    assert len({len(p[0]) for p in parts}) == 1  # same number of batches: collectives line up
    for epoch in range(2):
        seen = np.concatenate([np.concatenate(p[epoch]) for p in parts])
        expected = (n // (batch * world_size)) * batch * world_size if drop_last else n
        assert len(seen) == len(set(seen)) == expected
    one = BatchIndexSampler(
        n, batch * world_size, True, drop_last, torch.Generator().manual_seed(generator_seed)
    )
    for step, global_batch in enumerate(one):  # the global batches of one process, in order
        assert sorted(global_batch) == sorted(np.concatenate([p[0][step] for p in parts]))


def test_a_rank_without_samples_in_the_last_batch_gets_an_empty_one():
    n, features = 5, torch.arange(10, dtype=torch.float32).reshape(5, 2)
    dataset = ColumnarDataset(features, torch.arange(5), np.arange(5), (2,), None, None)
    batches = [
        list(BatchLoader(dataset, BatchIndexSampler(n, 2, False, False, None, rank, 3), False, 4))
        for rank in range(3)
    ]
    assert [len(b) for b in batches] == [1, 1, 1]
    assert [len(b[0][1]) for b in batches] == [2, 2, 1]
    shares = [BatchIndexSampler(4, 2, False, False, None, rank, 3).share(0) for rank in range(3)]
    assert shares == [1.5, 0.75, 0.75] and sum(shares) == 3  # weights of the uneven last batch
    empty = list(BatchLoader(dataset, BatchIndexSampler(2, 2, False, False, None, 2, 3), False, 4))
    assert len(empty) == 1 and empty[0][0].shape == (0, 2)


# --------------------------------------------------------------------------- whole jobs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp-runs")


@pytest.fixture(scope="module")
def first(store) -> int:
    run_torchrun(store, *CONFIG)
    return runs(store)[-1]


@pytest.mark.slow
@pytest.mark.distributed
def test_one_run_recorded_repeatable_and_rerun_verifies(store, first):
    job = record(store, first, "info")["distributed"]
    assert job["world_size"] == 2 and job["nodes"] == 1 and job["backend"] == "gloo"
    assert [r["rank"] for r in job["ranks"]] == [0, 1]
    assert [r["seed"] for r in job["ranks"]] == [7, 8] and job["ranks"][1]["device"] == "cpu"
    assert "--nproc_per_node=2" in job["torchrun"]
    assert record(store, first, "run")["meta"]["distributed"]["world_size"] == 2
    assert runs(store) == [first]  # one job, one run: rank 1 wrote nothing into the store

    run_torchrun(store, *CONFIG)
    second = runs(store)[-1]
    assert values(store, second) == values(store, first)  # bit for bit (floats compare exactly)
    assert (
        record(store, second, "info")["final_model_sha256"]
        == record(store, first, "info")["final_model_sha256"]
    )

    rerun = run_reprolab(
        "rerun", str(first), "--verify", "--store", str(store), timeout=TORCHRUN_TIMEOUT
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
    assert f"exact match between run {first}" in rerun.stdout
    assert record(store, runs(store)[-1], "info")["distributed"]["world_size"] == 2
    listing = run_reprolab("ls", "--store", str(store), timeout=TORCHRUN_TIMEOUT)
    assert "procs" in listing.stdout.splitlines()[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_interrupted_job_resumes_exactly_and_other_world_sizes_are_refused(store, first):
    command = torchrun_command(
        "--standalone",
        "--nproc_per_node=2",
        str(TRAIN),
        "-R",
        str(store),
        "with",
        *[u for u in CONFIG if not u.startswith("epochs")],
        "epochs=50",
    )
    job = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # Stop the job once rank 0 has logged epoch 2: epoch 1's checkpoint is written by then
        # (an epoch's checkpoint follows its log line, so a stop at "epoch 1:" could precede it).
        for line in job.stdout:
            if "epoch 2:" in line:
                os.killpg(job.pid, signal.SIGTERM)
                break
        job.stdout.read()
        assert job.wait(timeout=TORCHRUN_TIMEOUT) != 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    stopped = runs(store)[-1]
    assert record(store, stopped, "run")["status"] == "INTERRUPTED"
    done = record(store, stopped, "info")["checkpoints"]["last.pt"]["epoch"]
    assert done >= 1
    target, reference = max(4, done + 1), first  # a loaded machine may finish more epochs first
    if target > 4:  # then an uninterrupted job of that length is the reference (constant lr)
        run_torchrun(store, *[u for u in CONFIG if not u.startswith("epochs")], f"epochs={target}")
        reference = runs(store)[-1]

    refused = subprocess.run(
        [
            sys.executable,
            str(TRAIN),
            "-R",
            str(store),
            "with",
            f"resume={stopped}",
            f"epochs={target}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=TORCHRUN_TIMEOUT,
    )
    assert refused.returncode != 0 and runs(store)[-1] in (stopped, reference)
    assert "world size 2 and this job has 1" in refused.stderr

    run_torchrun(store, f"resume={stopped}", f"epochs={target}")
    resumed = runs(store)[-1]
    assert all(
        values(store, resumed)[name] == series[done:]
        for name, series in values(store, reference).items()
    )
    assert (
        record(store, resumed, "info")["final_model_sha256"]
        == record(store, reference, "info")["final_model_sha256"]
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_match_one_process_with_the_global_batch(store, first, tmp_path):
    single = subprocess.run(
        [
            sys.executable,
            str(TRAIN),
            "-R",
            str(tmp_path),
            "with",
            *[u for u in CONFIG if "batch_size" not in u],
            "data.batch_size=64",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=TORCHRUN_TIMEOUT,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = weights(store, first), weights(tmp_path, runs(tmp_path)[-1])
    # Same samples per step, but the all-reduce averages the two ranks' mean gradients where one
    # process averages 64 per-sample terms in another order: float32 rounding (an ulp, ~1e-7
    # relative, per step) that Adam's 4 x 23 steps of lr 0.01 carry on. Measured: 1.5e-7 on
    # weights up to 0.6. 1e-5 leaves room for other CPUs' kernels and is far below what a
    # different sample order does (weights move by ~1e-2).
    largest = max((two[k] - one[k]).abs().max().item() for k in two)
    assert largest < 1e-5


FAILING_MODEL = """
import torch
import torch.distributed as dist
from torch import nn


class Failing(nn.Module):
    how = "raise"

    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.net, self.calls = nn.Linear(64, num_outputs), 0
        self.flat = nn.Flatten()

    def forward(self, x):
        out = self.net(self.flat(x))
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            self.calls += 1
            if self.calls == 3 and self.how == "raise":
                raise RuntimeError("rank one broke")
            if self.calls >= 3 and self.how == "nan":
                return out * float("nan")
        return out


class Diverging(Failing):
    how = "nan"
"""


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "model, message",
    [
        ("Failing", "RuntimeError: rank one broke"),
        ("Diverging", "training loss became nan"),  # NaN on rank 1 only
    ],
)
def test_a_failing_rank_ends_the_job_recorded_failed(tmp_path, model, message):
    (tmp_path / "failing_model.py").write_text(textwrap.dedent(FAILING_MODEL))
    store = tmp_path / "runs"
    result = run_torchrun(
        store,
        *CONFIG,
        f"model.name=failing_model:{model}",
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])},
        check=False,
    )
    assert result.returncode != 0
    [run_id] = runs(store)
    run = record(store, run_id, "run")
    assert run["status"] == "FAILED"
    assert "rank 1 of 2 failed" in "".join(run["fail_trace"]) and message in "".join(
        run["fail_trace"]
    )
    failure = record(store, run_id, "info")["distributed"]["failure"]
    assert failure["rank"] == 1 and message in failure["message"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_through_rendezvous_record_one_run(tmp_path):
    store = tmp_path / "runs"
    rendezvous = (
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=reprolab-test",
    )
    command = torchrun_command(
        *rendezvous, str(TRAIN), "-R", str(store), "with", *CONFIG, "epochs=1", "lr_scaling=linear"
    )
    nodes = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        errors = [node.communicate(timeout=TORCHRUN_TIMEOUT)[1] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    [run_id] = runs(store)
    job = record(store, run_id, "info")["distributed"]
    assert job["nodes"] == 2 and job["world_size"] == 2
    assert record(store, run_id, "run")["status"] == "COMPLETED"
    assert values(store, run_id)["lr"] == [0.02]  # lr 0.01 x world size 2, as the metric shows


def test_a_rerun_relaunches_through_torchrun_with_the_recorded_world_size(capsys):
    from types import SimpleNamespace

    from experiments.rerun import launcher

    original = SimpleNamespace(run_id=4, info={"distributed": {"world_size": 2}})
    assert launcher(original, None)[-2:] == ["--standalone", "--nproc_per_node=2"]
    assert capsys.readouterr().out == ""
    assert launcher(original, 3)[-1] == "--nproc_per_node=3"  # asked for explicitly
    assert "not expected to match" in capsys.readouterr().out
    assert launcher(SimpleNamespace(run_id=5, info={}), None) == [sys.executable]


@pytest.mark.parametrize("recorded, asked", [(100_000, None), (2, 100_000)])
def test_a_rerun_starts_no_more_processes_than_the_machine_holds(recorded, asked):
    """--world-size 100000, or a record's world size, started that many ranks, which outlived the
    launcher and held the machine for half an hour."""
    from types import SimpleNamespace

    from experiments.child import process_bound
    from experiments.rerun import launcher

    original = SimpleNamespace(run_id=4, info={"distributed": {"world_size": recorded}})
    with pytest.raises(
        ValueError,
        match=f"^run 4 would start 100000 processes here, more than the {process_bound()} ",
    ):
        launcher(original, asked)


def test_the_recorded_torchrun_command_hides_a_store_password():
    """The worker records its parent's command line, which may carry `-R mongodb://user:pw@...`."""
    child = (
        "import json; from experiments.distributed import torchrun_command; "
        "print(json.dumps(torchrun_command()))"
    )
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    )
    url = "mongodb://alice:s3cret%2Fpw@127.0.0.1:27017/sacred"
    result = subprocess.run(
        [sys.executable, "-c", parent, "-R", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    command = json.loads(result.stdout)
    assert command[-2:] == ["-R", "mongodb://alice:***@127.0.0.1:27017/sacred"], result.stderr
    assert "s3cret" not in result.stdout


# --------------------------------------------------------------------------- issue 19, rule 3

SEEDLESS = tuple(update for update in CONFIG if not update.startswith("seed="))


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_reprolab(*args, timeout=TORCHRUN_TIMEOUT)


def test_a_job_without_a_seed_draws_one_on_rank_0_and_reruns_exactly(tmp_path):
    store = tmp_path / "runs"
    run_torchrun(store, *SEEDLESS[:1], "epochs=2", *SEEDLESS[2:])
    [run_id] = runs(store)
    job = record(store, run_id, "info")["distributed"]
    seed = record(store, run_id, "config")["seed"]
    assert job["seed_source"] == "drawn by rank 0"
    assert [r["seed"] for r in job["ranks"]] == [seed, seed + 1]  # one stream per rank
    rerun = cli("rerun", str(run_id), "--verify", "--store", str(store))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
    assert f"exact match between run {run_id}" in rerun.stdout


KILLING_MODEL = """
import os, signal
import torch
import torch.distributed as dist


class Killed(torch.nn.Module):
    def __init__(self, input_shape, num_outputs):
        super().__init__()
        self.net = torch.nn.Linear(64, num_outputs)
        self.flat = torch.nn.Flatten()
        self.calls = 0

    def forward(self, x):
        if self.training and dist.is_initialized():
            self.calls += 1
            if self.calls == 3 and dist.get_rank() == int(os.environ["KILL_RANK"]):
                os.kill(os.getpid(), signal.SIGKILL)
        return self.net(self.flat(x))
"""


@pytest.mark.parametrize("peer_found", [True, False])
def test_torchruns_sigterm_while_rank_0_looks_for_a_failed_peer_waits_for_the_look(
    monkeypatch, peer_found
):
    """A killed rank's sockets close before its process has ended: rank 0's collective breaks
    and it looks for the failed peer, and torchrun's SIGTERM (sent once it reaped the peer) may
    come meanwhile. The look goes on: a peer found makes the run FAILED; none, the signal's stop."""
    from experiments import distributed
    from experiments.loop import Terminated
    from experiments.signals import interrupts_handled

    current = distributed.Job()
    current.world_size, current.info = 2, {}
    monkeypatch.setattr(distributed, "JOB", current)
    monkeypatch.setattr(distributed, "PEER_GRACE_S", 0.5)
    monkeypatch.setattr(current, "_peer_message", lambda key: None)
    looks = []

    def dead_peer():
        looks.append(len(looks))
        if len(looks) == 1:  # the peer's process has not ended yet; torchrun's SIGTERM arrives
            os.kill(os.getpid(), signal.SIGTERM)
            return None
        return (1, "its process (pid 1) was killed by SIGKILL") if peer_found else None

    monkeypatch.setattr(current, "_dead_peer", dead_peer)
    expected = distributed.RankFailed if peer_found else Terminated
    with interrupts_handled(), pytest.raises(expected) as raised:
        current._raise_peer_failure(own_interrupt=False)
    assert len(looks) >= 2 and not current.examining_peers
    if peer_found:
        assert current.info["failure"]["rank"] == 1
        assert "rank 1 of 2 failed" in str(raised.value)


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_rank_leaves_a_failed_run_naming_it(tmp_path, rank):
    (tmp_path / "killing_model.py").write_text(KILLING_MODEL)
    store = tmp_path / "runs"
    result = run_torchrun(
        store,
        *CONFIG,
        "model.name=killing_model:Killed",
        env={
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
            "KILL_RANK": str(rank),
        },
        check=False,
    )
    assert result.returncode != 0
    [run_id] = runs(store)
    if rank == 1:  # rank 0 records it: FAILED, naming the rank and the signal
        run = record(store, run_id, "run")
        assert run["status"] == "FAILED", run["status"]
        failure = record(store, run_id, "info")["distributed"]["failure"]
        assert failure["rank"] == 1 and "SIGKILL" in failure["message"], failure
        assert "rank 1 of 2 failed" in "".join(run["fail_trace"])
    listing = cli("ls", "--store", str(store))  # rank 0 gone: its record is read as DEAD
    row = next(line for line in listing.stdout.splitlines() if line.split()[:1] == [str(run_id)])
    assert ("FAILED" in row or "DEAD" in row) and "RUNNING" not in row, listing.stdout


def test_a_config_error_under_torchrun_is_said_once(tmp_path):
    result = run_torchrun(tmp_path / "runs", *CONFIG, "data.shuffle=yes", check=False)
    assert result.returncode != 0
    assert result.stderr.count("error: data.shuffle must be true or false") == 1, result.stderr
    assert not (tmp_path / "runs").exists()
