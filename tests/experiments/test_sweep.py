"""Sweeps run locally: a 2x2 grid in parallel, a failing config among good ones, a bad
declaration refused before anything runs, and a sweep stopped by Ctrl-C then resumed bit-exactly."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.sweeps.local import last_error
from observers import load_runs
from observers.report import continued_chain, latest_runs
from tests.helpers import (
    REPO_ROOT,
    reprolab_command,
    run_reprolab,
    stop_when_ready,
    sweep_record_file,
)

TINY = ("epochs=2", "limit_batches=4")
WAIT_S = 600  # every wait on a process here is bounded


def sweep(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    threads = {"OMP_NUM_THREADS": "1", **(env or {})}
    return run_reprolab("sweep", *args, env=threads, timeout=WAIT_S, check=check)


def sweep_id(store: Path) -> str:
    return sweep_record_file(store).stem


@pytest.mark.slow
def test_grid_runs_in_parallel_each_recorded_with_its_sweep(tmp_path):
    store = tmp_path / "runs"
    result = sweep(
        "experiments/train.py",
        "--store",
        str(store),
        "--parallel",
        "2",
        "with",
        "lr=[0.1, 0.02]",
        "seed=range(2)",
        *TINY,
    )
    assert "4 done, 0 running, 0 failed, 0 left" in result.stderr
    runs = load_runs(store, sweep=sweep_id(store))
    assert len(runs) == 4 and set(runs.status) == {"COMPLETED"}
    assert sorted(runs.sweep_index) == [0, 1, 2, 3]
    assert {(r["config.lr"], r["config.seed"]) for _, r in runs.iterrows()} == {
        (0.1, 0),
        (0.1, 1),
        (0.02, 0),
        (0.02, 1),
    }
    record = json.loads((store / ".reprolab" / "sweeps" / f"{sweep_id(store)}.json").read_text())
    assert len(record["configs"]) == 4 and record["attempts"][0]["engine"] == "local"
    assert record["attempts"][0]["parallel"] == 2 and record["code"]["commit"]
    ranked = run_reprolab(
        "compare",
        "--store",
        str(store),
        "--sweep",
        sweep_id(store),
        "--metric",
        "val_accuracy",
        "--plot",
        str(tmp_path / "lr.png"),
        timeout=WAIT_S,
    )
    assert ranked.returncode == 0, ranked.stderr
    best = runs["val_accuracy.max"].idxmax()
    assert ranked.stdout.splitlines()[1].split()[:2] == ["1", str(best)]  # rank 1 is the best run
    assert "varied: lr, seed" in ranked.stdout
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"

    # a second sweep in the same store, run by hand from its printed commands, never mixes in
    printed = sweep("--store", str(store), "--print-commands", "with", "lr=[0.05, 0.2]", *TINY)
    first_command = shlex.split(printed.stdout.splitlines()[0])
    other = first_command[first_command.index("--sweep") + 1].split(":")[0]
    subprocess.run(
        [sys.executable, *first_command[1:]],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=WAIT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert len(load_runs(store, sweep=runs.sweep.iloc[0])) == 4
    (mine,) = load_runs(store, sweep=other).itertuples()
    assert mine.sweep_index == 0 and mine.status == "COMPLETED"
    listed = run_reprolab("ls", "--store", str(store), "--sweep", other, timeout=WAIT_S)
    assert len(listed.stdout.splitlines()) == 2  # the header and the one run


USER_MODELS = """
from torch import nn


def narrow(input_shape, num_outputs):
    \"\"\"A linear model for 32 inputs (the bundled data has 64).\"\"\"
    return nn.Sequential(nn.Flatten(), nn.Linear(32, num_outputs))
"""


@pytest.mark.slow
def test_failing_config_is_reported_and_the_others_complete(tmp_path):
    store = tmp_path / "runs"
    # a user's model built for 32 inputs is built fine, then fails on its first batch of 64
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = sweep(
        "--store",
        str(store),
        "with",
        "model.name=['mlp', 'user_models:narrow']",
        *TINY,
        check=False,
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 1, result.stderr
    assert "config 1 (run" in result.stderr and "cannot be multiplied" in result.stderr
    runs = load_runs(store, sweep=sweep_id(store)).sort_values("sweep_index")
    assert list(runs.status) == ["COMPLETED", "FAILED"]


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    """reprolab sweep run in this process (checking configs loads train.py once, not per test)."""
    from experiments.cli import main

    code = main(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "words, message",
    [
        (["lr=[0.1, -1]"], "config 1 (lr=-1): lr must be a positive number"),
        (["lr=[0.1]", "optimizer.nam=sgd"], "unknown config key 'optimizer.nam'"),
        (["lr=0.1"], "declares nothing to vary"),
        (["seed=range(0)"], "'range(0)' is empty"),
    ],
)
def test_bad_declaration_is_refused_before_anything_runs(tmp_path, capsys, words, message):
    store = tmp_path / "runs"
    code, _, err = in_process(capsys, "--store", str(store), "with", *words)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not store.exists()  # no run and no sweep record


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--gpus", "1", "--parallel", "2", "with", "lr=[0.1, 0.01]"],
            "--gpus is a Slurm option: a local sweep's runs share the GPUs this machine shows",
        ),
        (
            [
                "--on",
                "slurm",
                "--gpus",
                "1",
                "--sbatch",
                "gres=gpu:a100:1",
                "with",
                "lr=[0.1, 0.01]",
            ],
            "--gpus and --sbatch gres=... both ask for GPUs; give one",
        ),
        # checked for the nodes, not this CPU-only machine: cuda is accepted, but needs its GPU
        (
            ["--on", "slurm", "--gpus", "1", "with", "lr=[0.1, 0.01]", "device=cuda:1"],
            "config 0 (device=cuda:1) needs 2 GPU(s) per task: add --gpus 2",
        ),
    ],
)
def test_gpu_options_that_cannot_work_are_refused(tmp_path, capsys, args, message):
    store = tmp_path / "runs"
    code, _, err = in_process(capsys, "--store", str(store), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


def test_sweep_file_grid_random_and_fixed(tmp_path, capsys):
    file = tmp_path / "sweep.yaml"
    file.write_text(
        "fixed: {epochs: 2}\ngrid: {lr: [0.1, 0.01], seed: [1, 1]}\n"
        "random: {samples: 2, seed: 4, values: "
        "{optimizer.weight_decay: {low: 1.0e-5, high: 1.0e-2, scale: log}}}\n"
    )
    code, listed, _ = in_process(capsys, str(file), "--dry-run")
    assert code == 0
    assert listed.splitlines()[-1].startswith(
        "4 configs of experiments/train.py (4 duplicates dropped)"
    )
    decays = {float(line.split("optimizer.weight_decay=")[1]) for line in listed.splitlines()[:4]}
    assert len(decays) == 2 and all(1e-5 <= d <= 1e-2 for d in decays)
    assert in_process(capsys, str(file), "--dry-run")[1] == listed  # the same draws again
    file.write_text("grid: {lr: 0.1}\n")
    code, _, err = in_process(capsys, str(file), "--dry-run")
    assert code == 2 and f"sweep file {file}: grid key 'lr' must list its values" in err


@pytest.mark.slow
def test_stopped_sweep_resumes_without_running_any_config_twice(
    tmp_path, train, sweep_stopper, checkout_folder
):
    store, fifo = tmp_path / "runs", tmp_path / "ready"
    os.mkfifo(fifo)
    stopper = sweep_stopper(checkout_folder)
    config = ("seed=3", "limit_batches=5", "epochs=2")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "STOP_FIFO": str(fifo),
        "REPO_ROOT": str(REPO_ROOT),
    }
    first = subprocess.Popen(
        reprolab_command(
            "sweep",
            str(stopper),
            "--store",
            str(store),
            "--threads",
            "1",
            "with",
            "lr=[0.1, 0.05]",
            *config,
        ),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop_when_ready(fifo, first, WAIT_S)
    _, stderr = first.communicate(timeout=WAIT_S)
    assert first.returncode == 130, stderr
    sweep_name = sweep_id(store)
    assert f"reprolab sweep --resume {sweep_name}" in stderr
    stopped = load_runs(store, sweep=sweep_name)
    assert list(stopped.status) == ["INTERRUPTED"] and list(stopped.sweep_index) == [0]

    resumed = sweep(
        "--resume",
        sweep_name,
        "--store",
        str(store),  # --threads 1 as last time
        env={"REPO_ROOT": str(REPO_ROOT)},
    )
    assert "config 0: continuing run 1 from its checkpoint" in resumed.stderr
    runs = load_runs(store, sweep=sweep_name)
    assert list(runs.status) == ["INTERRUPTED", "COMPLETED", "COMPLETED"]
    assert list(runs.sweep_index) == [0, 0, 1]
    assert runs["config.resume"].fillna(0).tolist()[1:] == [
        1,
        0,
    ]  # only config 0 continued; none twice
    info = json.loads((store / "2" / "info.json").read_text())
    assert info["resumed_from"]["run_id"] == 1 and info["resumed_from"]["epoch"] == 1
    status = sweep("--status", sweep_name, "--store", str(store))
    assert status.stdout.splitlines()[0].endswith(", 2 configs, local, resumed once (local)")
    assert continued_chain(runs, 2) == [2, 1] and continued_chain(runs, 3) == [3]
    best = latest_runs(runs)["val_accuracy.max"]  # compare --sweep's: run 1's epoch counts too
    assert (
        best[2] == runs.loc[[1, 2], "val_accuracy.max"].max()
        and best[3] == runs.at[3, "val_accuracy.max"]
    )

    straight = tmp_path / "straight"
    train(straight, "lr=0.1", *config, env={"OMP_NUM_THREADS": "1"})
    expected = json.loads((straight / "1" / "info.json").read_text())["final_model_sha256"]
    assert info["final_model_sha256"] == expected  # continued bit-exactly
    again = sweep("--resume", sweep_name, "--store", str(store))
    assert "nothing to do (2 configs completed)" in again.stderr


def test_sweep_record_in_mongodb(monkeypatch, capsys):
    """--print-commands records the sweep (here into mongomock) and prints one command per config."""
    import mongomock

    import observers.mongo as om

    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    url = "mongodb://user:secret@db.example:27017/sacred"
    code, out, err = in_process(
        capsys, "--store", url, "--print-commands", "with", "lr=[0.1, 0.01]"
    )
    assert code == 0 and "secret" not in out + err
    (record,) = client["sacred"]["sweeps"].find()
    assert [c["lr"] for c in record["configs"]] == [0.1, 0.01]
    assert record["attempts"][0]["engine"] == "commands" and record["store"].startswith(
        "mongodb://user:***@"
    )
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert commands[1].endswith(
        f"--sweep {record['id']}:1 with lr=0.01 seed={record['default_seed']}"
    )
    assert "-R" not in commands[0]  # the URL travels in REPROLAB_MONGO_URL


def test_slurm_sweep_record_in_mongodb(monkeypatch, capsys):
    """A Slurm submission's task ids are recorded in MongoDB (BSON keys must be text)."""
    import mongomock

    import experiments.sweeps.command as slurm
    import observers.mongo as om

    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    monkeypatch.setattr(
        slurm, "submit", lambda record, jobs, *rest: {j.index: f"7_{j.index}" for j in jobs}
    )
    url = "mongodb://user:secret@db.example:27017/sacred"
    code, _, err = in_process(capsys, "--store", url, "--on", "slurm", "with", "lr=[0.1, 0.01]")
    assert code == 0, err
    (record,) = client["sacred"]["sweeps"].find()
    (attempt,) = record["attempts"]
    assert attempt["task_ids"] == {"0": "7_0", "1": "7_1"} and attempt["job_id"] == "7"
    assert f"reprolab sweep --status {record['id']} --store <your MongoDB URL>" in err


IGNORES_STOP = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # same session, stdout
print("ready", flush=True)
signal.pause()
"""


def test_stopping_a_local_sweep_counts_each_run_by_how_it_ended_and_kills_whole_sessions(
    tmp_path, monkeypatch
):
    """A run that completed just before the stop is not called interrupted; one that ignores the
    stop is killed with every process of its session (its child, too, closes the pipe)."""
    import select

    import experiments.sweeps.local as sweep_module
    from experiments.sweeps.record import SweepBook, SweepRecord
    from observers.location import StoreLocation

    monkeypatch.setattr(sweep_module, "STOP_WAIT_S", 0)
    store = StoreLocation(str(tmp_path))
    record = SweepRecord("s1", "experiments/train.py", [], [{}])
    runner = sweep_module.LocalSweep(record, SweepBook(store), store, parallel=2, threads=1)

    def started(index: int, code: str, **options) -> sweep_module.Running:
        process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, **options)
        return sweep_module.Running(
            sweep_module.Job(index, []), process, tmp_path / "log", tmp_path / f"{index}.run_id"
        )

    completed = started(0, "pass")
    completed.process.wait(timeout=WAIT_S)
    stubborn = started(1, IGNORES_STOP, stdout=subprocess.PIPE)
    assert stubborn.process.stdout.readline() == b"ready\n"
    runner.stop([completed, stubborn])
    assert (runner.done, runner.interrupted, runner.failed) == (1, 1, 0)
    readable, _, _ = select.select([stubborn.process.stdout], [], [], 30)
    assert readable and stubborn.process.stdout.read() == b""  # EOF: the child is gone too


def test_a_run_killed_from_elsewhere_is_named_with_how_to_continue(tmp_path, capsys):
    """A run SIGKILLed by someone else (the OOM killer, a user) is counted stopped, named at the
    end with the signal, and the resume command said; the sweep exits FAILED."""
    import experiments.sweeps.local as sweep_module
    from experiments.sweeps.record import SweepBook, SweepRecord
    from observers.location import StoreLocation

    store = StoreLocation(str(tmp_path))
    record = SweepRecord("s1", "experiments/train.py", [], [{}, {}])
    runner = sweep_module.LocalSweep(record, SweepBook(store), store, parallel=2, threads=1)
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    process = subprocess.Popen([sys.executable, "-c", kill])
    process.wait(timeout=WAIT_S)
    (tmp_path / "1.run_id").write_text("7")
    runner.finish(
        sweep_module.Running(
            sweep_module.Job(1, []), process, tmp_path / "log", tmp_path / "1.run_id"
        )
    )
    runner.progress()
    assert runner.ended() == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "sweep s1: 0 done, 0 running, 0 failed, 1 stopped, 0 left",
        "config 1 (run 7) was stopped by SIGKILL",
        f"continue the stopped run(s) with: reprolab sweep --resume s1 --store {tmp_path}",
    ]


def test_a_declaration_beyond_the_bound_is_refused_before_any_config_is_built():
    from experiments.sweeps.declare import MAX_CONFIGS, Declaration, expand

    grid = {"seed": list(range(1000)), "lr": [0.1] * 101}
    with pytest.raises(ValueError, match=f"101,000 configs, more than the {MAX_CONFIGS:,}"):
        expand(Declaration(grid=grid), 0)


def test_configs_differing_only_in_seed_are_built_once(monkeypatch, repo_root):
    """Each distinct config is built; its other seeds only checked to be seeds."""
    import experiments.base as base
    from experiments.sweeps.command import validate

    built = []
    original = base.ReproExperiment._create_run
    monkeypatch.setattr(
        base.ReproExperiment,
        "_create_run",
        lambda self, **kw: built.append(kw["config_updates"]) or original(self, **kw),
    )
    configs = [{"seed": s, "lr": lr} for lr in (0.1, 0.01) for s in range(50)]
    train = str(repo_root / "experiments" / "train.py")
    validate(train, [], configs)
    assert [c["lr"] for c in built] == [0.1, 0.01]
    with pytest.raises(ValueError, match="config 2"):
        validate(train, [], [*configs[:2], {"seed": "x", "lr": 0.1}])


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--threads", lambda: 257, "--threads 257 is more than the 256 one run takes"),
        ("--parallel", lambda: 4 * os.cpu_count() + 1, "runs this machine's"),
    ],
)
def test_counts_of_threads_and_processes_have_a_bound(tmp_path, capsys, option, value, message):
    """--threads 99999 failed every run inside Arrow; --parallel without a bound could start a
    process per config (up to 100,000) on one machine."""
    store = tmp_path / "runs"
    code, _, err = in_process(
        capsys, "experiments/train.py", "--store", str(store), option, str(value()),
        "with", "lr=[0.1, 0.01]",
    )  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not store.exists()


@pytest.mark.parametrize(
    "log, said",
    [
        (  # a traceback's last line names the cause, after Sacred's closing line
            "INFO - reprolab.train - epoch 1: train_loss=1.2  val_accuracy=0.1\n"
            "ERROR - reprolab.train - Failed after 0:00:00!\n"
            "experiments.loop.NonFiniteLoss: training loss became nan at epoch 1, step 4\n",
            "experiments.loop.NonFiniteLoss: training loss became nan at epoch 1, step 4",
        ),
        (
            "Traceback (most recent call last):\n  File 'x.py', line 1\nValueError: bad lr\n"
            "ERROR - reprolab.train - Failed after 0:00:01!\n",
            "ValueError: bad lr",
        ),
        (
            "error: could not write runs/4/last.pt: No space left on device; run 4 stopped\n",
            "error: could not write runs/4/last.pt: No space left on device; run 4 stopped",
        ),
        (
            "INFO - reprolab.train - Result: 0.5\nERROR - reprolab.train - Failed after 0:00:02!\n",
            "ERROR - reprolab.train - Failed after 0:00:02!",
        ),
        (  # a print that reads like `Name: text` is no exception
            "Device: cuda\nERROR - reprolab.train - Failed after 0:00:02!\nStopIteration\n",
            "ERROR - reprolab.train - Failed after 0:00:02!",
        ),
        ("INFO - reprolab.train - started\n", "INFO - reprolab.train - started"),
        ("", "no output"),
    ],
)
def test_a_failed_run_is_told_by_the_line_that_says_why(tmp_path, log, said):
    path = tmp_path / "run.log"
    path.write_text(log)
    assert last_error(path) == said
