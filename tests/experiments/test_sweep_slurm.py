"""Sweeps on a real one-node Slurm 22.05 cluster (scripts/slurm-local.sh): a 2x2 grid as one job
array, and a task cancelled by Slurm that --resume continues bit-exactly."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from observers import load_runs
from tests.helpers import REPO_ROOT, read_json, run_reprolab, sweep_record_file

SCRIPT = REPO_ROOT / "scripts" / "slurm-local.sh"
WAIT_S = 600  # every wait here is bounded
TINY = ("epochs=2", "limit_batches=4")


@pytest.fixture(scope="module")
def slurm():
    """The local cluster: used when up, else brought up here (and down after) where it can be."""
    if (
        subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, timeout=60).returncode
        == 0
    ):
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not running and starting it needs root")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("Slurm is not running and there is no apt-get to install it")
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=1200)
    assert up.returncode == 0, up.stderr
    yield
    subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=120)


def reprolab(
    *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    return run_reprolab(*args, env=env, timeout=WAIT_S, check=check)


def sweep_record(store: Path) -> dict:
    return read_json(sweep_record_file(store))


@pytest.mark.slow
@pytest.mark.slurm
def test_grid_runs_as_one_job_array(slurm, tmp_path):
    store = tmp_path / "runs"
    reprolab(
        "sweep",
        "--store",
        str(store),
        "--on",
        "slurm",
        "--cpus",
        "1",
        "--time",
        "10",
        "--sbatch",
        "comment=reprolab-test",
        "--wait",
        "with",
        "lr=[0.1, 0.02]",
        "seed=range(2)",
        *TINY,
    )
    record = sweep_record(store)
    (attempt,) = record["attempts"]
    assert attempt["engine"] == "slurm" and attempt["options"]["extra"] == {
        "comment": "reprolab-test"
    }
    tasks = attempt["task_ids"]
    assert sorted(tasks.values()) == [f"{attempt['job_id']}_{i}" for i in range(4)]  # one array
    runs = load_runs(store, sweep=record["id"])
    assert len(runs) == 4 and set(runs.status) == {"COMPLETED"} and len(set(runs.index)) == 4
    assert sorted(runs.sweep_index) == [0, 1, 2, 3]
    status = reprolab("sweep", "--status", record["id"], "--store", str(store)).stdout
    assert status.count("COMPLETED    COMPLETED") == 4 and status.rstrip().endswith("4 completed")


@pytest.mark.slow
@pytest.mark.slurm
def test_a_failed_run_fails_its_slurm_task(slurm, tmp_path):
    """Slurm, sacct and --wait's count say FAILED for a config whose run failed (lr 1e30 makes
    the loss non-finite), not COMPLETED beside the store's FAILED."""
    store = tmp_path / "runs"
    waited = reprolab(
        "sweep", "--store", str(store), "--on", "slurm", "--time", "10", "--wait",
        "with", "lr=[1e30, 0.1]", "seed=1", *TINY, check=False,
    )  # fmt: skip
    assert waited.returncode == 1, waited.stderr
    assert "1 done, 0 running, 1 failed, 0 left" in waited.stderr, waited.stderr
    assert "config 0: run" in waited.stderr and "FAILED (Slurm: FAILED;" in waited.stderr


def test_gpus_ask_each_task_for_its_own_gres_in_the_job_script(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from experiments.sweeps.slurm import SlurmOptions, executor_parameters

    given = argparse.Namespace(
        partition="gpu",
        time="2:00:00",
        cpus=4,
        gpus=2,
        mem="16G",
        max_parallel=3,
        sbatch=["account=proj"],
    )
    parameters = executor_parameters("20261201-abcd", SlurmOptions.from_args(given))
    script = _make_sbatch_string(
        command="python -m run", folder=tmp_path, map_count=8, **parameters
    )
    lines = set(script.splitlines())  # what sbatch reads, as submitit writes it
    assert {
        "#SBATCH --gres=gpu:2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --mem=16G",
        "#SBATCH --array=0-7%3",
        "#SBATCH --account=proj",
        "#SBATCH --job-name=sweep-20261201-abcd",
    } <= lines
    assert not [line for line in lines if "--gpus" in line or "CUDA_VISIBLE_DEVICES" in line]


@pytest.mark.parametrize("kind", ["sweep", "search"])
def test_slurm_submissions_of_sweeps_and_searches_are_recorded_and_taken_back_alike(
    tmp_path, capsys, monkeypatch, kind
):
    """One launcher submits a sweep's configs and a search's workers (no Slurm: submitit's
    submission stood in for): recorded with the array's ids; resumed without the --sbatch
    options, said so; refused by sbatch, the resume's submission taken back, the first kept."""
    from types import SimpleNamespace

    import experiments.sweeps.command as command
    import experiments.sweeps.slurm as slurm_module
    import experiments.sweeps.tuner as tuner
    from experiments.cli import main

    def accepted(sweep_id, location, options, folder, function, tasks):
        return [SimpleNamespace(job_id=f"77_{n}") for n in range(len(tasks))]

    def refused(*args):
        raise ValueError("Slurm refused the job array: sbatch: error: no")

    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    monkeypatch.setattr(command, "task_states", lambda attempt: {})  # every task ended
    for module in (slurm_module, tuner):
        monkeypatch.setattr(module, "submit_array", accepted)
    store = tmp_path / "runs"
    search = ["--trials", "2", "--parallel", "2"] if kind == "search" else []
    declared = ["lr=[0.1, 0.02]", *TINY, *search]
    common = ["--store", str(store), "--on", "slurm", "--sbatch", "comment=x"]
    assert main(["sweep", "experiments/train.py", *common, "with", *declared]) == 0
    said = capsys.readouterr().err
    assert f"{kind} " in said and ": submitted job array 77 (2 " in said
    (first,) = sweep_record(store)["attempts"]
    assert first["task_ids"] == {"0": "77_0", "1": "77_1"} and first["job_id"] == "77"
    assert first["options"]["extra"] == {"comment": "x"} and isinstance(first["id"], str)
    for module in (slurm_module, tuner):
        monkeypatch.setattr(module, "submit_array", refused)
    sweep_id = sweep_record(store)["id"]
    assert main(["sweep", "--resume", sweep_id, "--store", str(store)]) == 2
    said = capsys.readouterr().err
    assert "--sbatch options are not taken from the record" in said
    ending = "(nothing submitted or recorded)" if kind == "sweep" else "(nothing submitted)"
    assert f"Slurm refused the job array: sbatch: error: no {ending}" in said
    assert sweep_record(store)["attempts"] == [first]
    assert len(list((store / ".reprolab" / "sweeps" / sweep_id).glob("slurm-*"))) <= 1


@pytest.mark.slow
@pytest.mark.slurm
def test_gpus_reach_sbatch_and_a_refused_array_leaves_no_record(slurm, tmp_path):
    """This cluster has no GPUs: sbatch refuses gres gpu:1, and the new sweep is taken back."""
    store = tmp_path / "runs"
    refused = reprolab(
        "sweep",
        "--store",
        str(store),
        "--on",
        "slurm",
        "--gpus",
        "1",
        "--time",
        "5",
        "with",
        "lr=[0.1, 0.02]",
        "device=cuda",
        *TINY,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "Slurm refused the job array: sbatch: error: Invalid generic resource" in refused.stderr
    said = refused.stderr.splitlines()[0]  # what was said before sbatch answered
    assert said.endswith(f"recorded in {store} once Slurm takes its job array"), said
    assert not [path for path in store.rglob("*") if path.is_file()]  # no record, no submitit files


@pytest.mark.slow
@pytest.mark.slurm
def test_task_cancelled_by_slurm_is_interrupted_and_resumed(
    slurm, tmp_path, train, sweep_stopper, checkout_folder
):
    store, fifo = tmp_path / "runs", tmp_path / "ready"
    os.mkfifo(fifo)
    stopper = sweep_stopper(checkout_folder)
    config = ("seed=4", "limit_batches=5", "epochs=2")
    env = {"STOP_FIFO": str(fifo), "REPO_ROOT": str(REPO_ROOT)}
    reprolab(
        "sweep",
        str(stopper),
        "--store",
        str(store),
        "--on",
        "slurm",
        "--cpus",
        "1",
        "with",
        "lr=[0.1]",
        *config,
        env=env,
    )
    said = []
    reader = threading.Thread(target=lambda: said.append(fifo.read_text()), daemon=True)
    reader.start()
    reader.join(WAIT_S)
    record = sweep_record(store)
    job = record["attempts"][0]["job_id"]
    assert said, "the task never finished epoch 1"
    subprocess.run(["scancel", job], check=True, timeout=60)  # SIGTERM, as at a time limit
    # --resume leaves alone a task that Slurm still runs: let Slurm say when the job has ended
    subprocess.run(
        ["sbatch", "--wait", f"--dependency=afterany:{job}", "--output=/dev/null", "--wrap=true"],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )
    (stopped,) = load_runs(store, sweep=record["id"]).itertuples()
    assert stopped.status == "INTERRUPTED"

    # on Slurm again, with the same options: where and how the sweep ran last
    reprolab(
        "sweep",
        "--resume",
        record["id"],
        "--store",
        str(store),
        "--wait",
        env={"REPO_ROOT": str(REPO_ROOT)},
    )
    assert [a["engine"] for a in sweep_record(store)["attempts"]] == ["slurm", "slurm"]
    runs = load_runs(store, sweep=record["id"])
    assert list(runs.status) == ["INTERRUPTED", "COMPLETED"] and list(runs.sweep_index) == [0, 0]
    info = json.loads((store / str(runs.index[1]) / "info.json").read_text())
    assert info["resumed_from"]["run_id"] == runs.index[0] and info["resumed_from"]["epoch"] == 1
    straight = tmp_path / "straight"
    train(straight, "lr=0.1", *config, env={"OMP_NUM_THREADS": "1"})
    expected = json.loads((straight / "1" / "info.json").read_text())["final_model_sha256"]
    assert info["final_model_sha256"] == expected


def test_sbatch_options_the_sweep_sets_itself_are_refused_by_name(tmp_path):
    """Every option submitit writes for a sweep (but its wckey label), and a task count that would
    run a config twice, cannot be replaced through --sbatch."""
    from submitit.slurm.slurm import _make_sbatch_string

    from experiments.sweeps.slurm import SlurmOptions, executor_parameters

    def given(*sbatch: str) -> argparse.Namespace:
        names = ("partition", "time", "cpus", "gpus", "mem", "max_parallel")
        return argparse.Namespace(**dict.fromkeys(names), sbatch=list(sbatch))

    parameters = executor_parameters("20261201-abcd", SlurmOptions.from_args(given()))
    script = _make_sbatch_string(command="python -m run", folder=tmp_path, **parameters)
    lines = [line for line in script.splitlines() if line.startswith("#SBATCH --")]
    keys = [line.removeprefix("#SBATCH --").split("=")[0] for line in lines]
    keys.remove("wckey")
    assert "signal" in keys and "array" not in keys  # a one-task script: array added below
    for key in [*keys, "array", "ntasks", "ntasks_per_node"]:
        with pytest.raises(ValueError, match=f"^--sbatch {key}=...: "):
            SlurmOptions.from_args(given(f"{key}=x"))
    assert SlurmOptions.from_args(given("account=proj", "qos=low")).extra == {
        "account": "proj",
        "qos": "low",
    }
