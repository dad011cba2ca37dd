"""Resume: a run stopped by SIGTERM or Ctrl-C continues bit-exactly; bad resumes change nothing.

Every run here uses a step schedule (halving the lr each epoch), so the schedule state matters
but does not depend on the planned number of epochs: a 2-epoch run resumed to 3 epochs must
then equal a straight 3-epoch run too.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import REPO_ROOT, TRAIN

# One thread per run: faster on a busy 2-core machine, and the same count for every run here.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CONFIG = (
    "seed=5",
    "limit_batches=10",
    "optimizer.schedule=step",
    "optimizer.step_size=1",
    "optimizer.gamma=0.5",
)

# Runs train.py, but once the given epoch's checkpoint is written, says READY on stdout and
# blocks until the test sends a signal: the signal arrives at a known point, without sleeping.
STOPPER = """
import os, runpy, sys
import experiments.loop as loop

after, calls, evaluate = int(os.environ["STOP_AFTER_EPOCH"]), [], loop.evaluate

def evaluate_then_wait(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    calls.append(1)
    if len(calls) == after + 1:  # epoch `after` is complete and checkpointed
        os.write(1, b"READY\\n")
        os.read(0, 1)
    return result

loop.evaluate = evaluate_then_wait
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def interrupt(store: Path, tmp: Path, after: int, signum: int, *updates: str, env=None):
    """Start a run, stop it with a real signal once epoch `after` is done; the finished process."""
    stopper = tmp / "stopper.py"
    stopper.write_text(STOPPER)
    stderr = open(tmp / f"stderr-{signum}.txt", "w+")
    process = subprocess.Popen(
        [sys.executable, str(stopper), str(TRAIN), "-R", str(store), "with", *updates],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=REPO_ROOT,
        env={**os.environ, **ONE_THREAD, "STOP_AFTER_EPOCH": str(after), **(env or {})},
    )
    for line in process.stdout:
        if line.strip() == b"READY":
            break
    else:
        raise AssertionError(f"the run ended before epoch {after + 1}:\n{stderr.read()}")
    process.send_signal(signum)
    process.stdout.read()
    process.wait(timeout=120)
    stderr.seek(0)
    return process.returncode, stderr.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train):
    """1: straight 3 epochs; 2: SIGTERM after epoch 1; 3: 2 resumed; 4: a 2-epoch run stopped by
    Ctrl-C after epoch 1; 5: 4 resumed to 3 epochs; 6: SIGKILL after epoch 1 (its own TMPDIR);
    7: 6 resumed."""
    tmp = tmp_path_factory.mktemp("resume")
    store, tmpdir = tmp / "store", tmp / "tmpdir"
    tmpdir.mkdir()
    train(store, *CONFIG, "epochs=3", env=ONE_THREAD)
    term = interrupt(store, tmp, 1, signal.SIGTERM, *CONFIG, "epochs=3")
    train(store, "resume=2", env=ONE_THREAD)
    ctrl_c = interrupt(store, tmp, 1, signal.SIGINT, *CONFIG, "epochs=2")
    train(store, "resume=4", "epochs=3", env=ONE_THREAD)
    kill = interrupt(
        store, tmp, 1, signal.SIGKILL, *CONFIG, "epochs=3", env={"TMPDIR": str(tmpdir)}
    )
    left_in_tmpdir = sorted(p.name for p in tmpdir.glob("reprolab-*"))
    train(store, "resume=6", env=ONE_THREAD)
    return store, {"SIGTERM": term, "SIGINT": ctrl_c, "SIGKILL": (*kill, left_in_tmpdir)}


def assert_continues_bit_exactly(load, straight: Path, resumed: Path, after: int) -> None:
    metrics, again = load(straight / "metrics.json"), load(resumed / "metrics.json")
    assert again.keys() == metrics.keys() == {"train_loss", "val_loss", "val_accuracy", "lr"}
    for name, series in metrics.items():
        assert again[name]["steps"] == series["steps"][after:] == list(range(after + 1, 4))
        assert again[name]["values"] == series["values"][after:], name
    assert (
        load(resumed / "info.json")["final_model_sha256"]
        == load(straight / "info.json")["final_model_sha256"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("signame, run, code", [("SIGTERM", 2, 143), ("SIGINT", 4, 130)])
def test_a_signal_ends_the_run_as_interrupted_with_a_checkpoint(runs, signame, run, code, load):
    store, stopped = runs
    returncode, stderr = stopped[signame]
    assert returncode == code
    assert f"run {run} interrupted after epoch 1; continue it with:" in stderr
    assert f"-R {store} with resume={run}" in stderr and "Traceback" not in stderr
    record = store / str(run)
    assert load(record / "run.json")["status"] == "INTERRUPTED"
    assert load(record / "metrics.json")["val_loss"]["steps"] == [1]
    last = load(record / "info.json")["checkpoints"]["last.pt"]
    assert (
        last["epoch"] == 1
        and last["sha256"] == hashlib.sha256((record / "last.pt").read_bytes()).hexdigest()
    )


@pytest.mark.slow
def test_resumed_run_equals_the_straight_run_hash_for_hash(runs, load):
    store, _ = runs
    assert_continues_bit_exactly(load, store / "1", store / "3", after=1)
    resumed = load(store / "3" / "info.json")["resumed_from"]
    assert resumed["run_id"] == 2 and resumed["epoch"] == 1 and resumed["checkpoint"] == "last.pt"
    assert resumed["sha256"] == load(store / "2" / "info.json")["checkpoints"]["last.pt"]["sha256"]
    config = load(store / "3" / "config.json")
    assert config == {**load(store / "1" / "config.json"), "resume": 2}


@pytest.mark.slow
def test_a_run_resumed_for_more_epochs_equals_the_longer_straight_run(runs, load):
    store, _ = runs
    assert load(store / "4" / "config.json")["epochs"] == 2
    assert load(store / "5" / "config.json")["epochs"] == 3
    assert_continues_bit_exactly(load, store / "1", store / "5", after=1)


@pytest.mark.slow
def test_the_checkpoint_holds_every_state_and_its_config(runs, load):
    store, _ = runs
    state = torch.load(store / "3" / "last.pt", weights_only=True, map_location="cpu")
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "rng",
        "best",
        "config",
    } <= state.keys()
    assert {"python", "numpy", "torch", "loader"} <= state["rng"].keys()
    assert state["epoch"] == 3 and state["step"] == 30
    assert state["config"] == load(store / "3" / "config.json")


@pytest.mark.slow
def test_a_sigkilled_run_keeps_its_last_checkpoint_in_the_store_and_resumes(runs, load):
    store, stopped = runs
    returncode, _, left_in_tmpdir = stopped["SIGKILL"]
    assert returncode == -signal.SIGKILL and left_in_tmpdir == []
    killed = store / "6"
    assert load(killed / "run.json")["status"] == "RUNNING"  # nothing ran after the kill
    last = load(killed / "info.json")["checkpoints"]["last.pt"]
    assert (
        last["epoch"] == 1
        and last["sha256"] == hashlib.sha256((killed / "last.pt").read_bytes()).hexdigest()
    )
    assert load(store / "7" / "info.json")["resumed_from"]["sha256"] == last["sha256"]
    assert_continues_bit_exactly(load, store / "1", store / "7", after=1)


@pytest.mark.slow
def test_a_checkpoint_saved_every_epoch_is_listed_once(runs, load):
    store, _ = runs
    for run in (1, 3, 7):
        artifacts = load(store / str(run) / "run.json")["artifacts"]
        assert artifacts.count("last.pt") == artifacts.count("best.pt") == 1, artifacts
        assert not [p for p in (store / str(run)).iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- refused resumes


@pytest.fixture(scope="module")
def experiment(tree_hash):
    from experiments.base import ConfigurationError
    from experiments.train import ex

    return ex, ConfigurationError, tree_hash


@pytest.fixture
def scratch(runs, tmp_path) -> Path:
    """A copy of run 2 (interrupted, resumable) as run 1 of a store of its own."""
    store, _ = runs
    copy = tmp_path / "store"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(store / "2"), str(copy / "1")], check=True)
    subprocess.run(["cp", "-r", str(store / "_sources"), str(copy / "_sources")], check=True)
    return copy


def refused(experiment, store: Path, **updates) -> str:
    """The ConfigurationError a resume in-process is refused with; the store must not change."""
    ex, ConfigurationError, tree_hash = experiment
    before = tree_hash(store)
    with pytest.raises(ConfigurationError) as error:
        ex.run(config_updates=updates, options={"--store": str(store)})
    assert tree_hash(store) == before
    return str(error.value)


@pytest.mark.slow
def test_a_config_that_changes_the_training_is_refused_naming_the_keys(experiment, scratch):
    message = refused(experiment, scratch, resume=1, lr=0.5, optimizer={"name": "sgd"}, epochs=4)
    assert message == (
        "resume: the config differs from run 1's checkpoint in lr, optimizer.name; "
        "only epochs may change when resuming"
    )
    assert "data.shape, model.name" in refused(
        experiment, scratch, resume=1, model={"name": "cnn"}, data={"shape": [1, 8, 8]}
    )


@pytest.mark.slow
def test_epochs_already_reached_are_refused(experiment, scratch):
    assert refused(experiment, scratch, resume=1, epochs=1) == (
        "epochs: run 1's checkpoint is already at epoch 1; set epochs above 1 to train further"
    )


@pytest.mark.slow
def test_unknown_run_and_non_run_directory_are_refused(experiment, scratch, tmp_path):
    assert refused(experiment, scratch, resume=7) == f"resume: no run 7 in {scratch}"
    assert refused(experiment, scratch, resume=str(scratch)) == (
        f"resume: {scratch} is not a run directory (no run.json in a numbered folder)"
    )


@pytest.mark.slow
def test_tampered_truncated_or_unrecorded_checkpoints_are_refused(experiment, scratch, load):
    last = scratch / "1" / "last.pt"
    last.write_bytes(last.read_bytes()[:-10] + b"0123456789")
    assert refused(experiment, scratch, resume=1) == (
        "resume: run 1's checkpoint last.pt does not match the SHA-256 recorded when it was "
        "saved; it was changed or damaged, so it was not loaded"
    )

    info_path = scratch / "1" / "info.json"
    info = load(info_path)
    last.write_bytes(last.read_bytes()[:2000])  # truncated, and the record made to agree
    info["checkpoints"]["last.pt"]["sha256"] = hashlib.sha256(last.read_bytes()).hexdigest()
    info["checkpoints"]["last.pt"]["size"] = 2000
    info_path.write_text(json.dumps(info))
    assert refused(experiment, scratch, resume=1) == (
        "resume: run 1's checkpoint last.pt is damaged or not a torch checkpoint"
    )

    info_path.write_text("{ not json")
    assert refused(experiment, scratch, resume=1).startswith(
        f"resume: run 1: {info_path} is damaged"
    )
    info_path.unlink()  # the checkpoint's own sidecar still vouches for the original file
    assert refused(experiment, scratch, resume=1).endswith("; it was not read")
    (scratch / "1" / "last.pt.sha256").unlink()
    assert refused(experiment, scratch, resume=1) == (
        "resume: run 1 recorded no checkpoint last.pt (it stopped before finishing an epoch, "
        "or its info.json is missing)"
    )


@pytest.mark.slow
def test_changed_data_is_refused_naming_the_file(experiment, scratch, load):
    info_path = scratch / "1" / "info.json"
    info = load(info_path)
    info["data"]["fingerprint"]["sha256"] = "0" * 64  # as if the file had changed since
    info_path.write_text(json.dumps(info))
    data_file = REPO_ROOT / "data" / "digits.parquet"
    now = hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert refused(experiment, scratch, resume=1) == (
        f"resume: data file {data_file} has changed (sha256 000000000000 then, {now[:12]} now) "
        "since run 1 was trained on it, so resuming would continue on other data"
    )


class Evil:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_malicious_checkpoint_runs_no_code_and_exits_with_one_sentence(
    train, scratch, tmp_path, load, tree_hash
):
    marker = tmp_path / "owned"
    evil = pickle.dumps({"format": "reprolab-checkpoint/1", "model": Evil(marker)})
    (scratch / "1" / "last.pt").write_bytes(evil)
    info = load(scratch / "1" / "info.json")
    info["checkpoints"]["last.pt"]["sha256"] = hashlib.sha256(evil).hexdigest()  # record agrees
    info["checkpoints"]["last.pt"]["size"] = len(evil)  # (else refused unread by its size)
    (scratch / "1" / "info.json").write_text(json.dumps(info))
    before = tree_hash(scratch)

    result = train(scratch, "resume=1", check=False, env=ONE_THREAD)

    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.strip() == (
        "error: resume: run 1's checkpoint last.pt holds objects other than tensors and plain "
        "values, so it was not loaded (a checkpoint must load with weights_only=True)"
    )
    assert tree_hash(scratch) == before


# --------------------------------------------------------------------------- experiments/base.py


def test_the_interrupt_hint_asks_for_the_mongodb_url_instead_of_printing_it(monkeypatch):
    from experiments.base import ReproExperiment

    monkeypatch.delenv("REPROLAB_MONGO_URL", raising=False)
    run = SimpleNamespace(
        status="INTERRUPTED",
        _id=3,
        info={"checkpoints": {"last.pt": {"epoch": 2}}},
        meta_info={"options": {"--store": "mongodb://user:***@db:27017/sacred"}},
    )
    message = ReproExperiment._interrupted_message(SimpleNamespace(current_run=run))
    assert message == (
        f"run 3 interrupted after epoch 2; continue it with: python {sys.argv[0]} "
        "-R <your MongoDB URL> with resume=3"
    )


@pytest.mark.parametrize(
    "relative, own",
    [
        ("experiments/train.py", True),
        ("venv/lib/python3.12/site-packages/torch/nn/modules/module.py", False),
        ("env/lib/python3/dist-packages/numpy/core.py", False),
        (".venv/lib/helper.py", False),
    ],
)
def test_only_the_repositorys_own_code_counts_as_sources(relative, own):
    from experiments.sources import is_own_code
    from ingredients.checkout import CHECKOUT_ROOT as ROOT

    assert is_own_code(str(ROOT / relative)) is own
    assert is_own_code("/usr/lib/python3/os.py") is False


# --------------------------------------------------------------------------- rerun of a resumed run


def recorded(store: Path, run_id: int, config: dict) -> Path:
    """A finished run's bare record (nothing trained): enough for rerun's read_original."""
    folder = store / str(run_id)
    folder.mkdir(parents=True)
    run = {"status": "COMPLETED", "experiment": {"mainfile": "experiments/train.py"}}
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "info.json").write_text("{}")
    return folder


def test_a_rerun_pins_a_recorded_resume_to_a_run_of_the_store_being_rerun(tmp_path, monkeypatch):
    from experiments.rerun import read_original
    from ingredients.schema import shown
    from observers.store import FileRunStore, RecordError

    store, elsewhere = tmp_path / "store", tmp_path / "other" / "1"
    recorded(store, 1, {"seed": 1})
    monkeypatch.chdir(tmp_path)
    for resume, pinned in [(1, 1), ("1", "1"), (str(store / "1"), 1), ("store/1", 1)]:
        recorded(store, 2, {"seed": 1, "resume": resume})
        assert read_original(FileRunStore(store), 2, False).config["resume"] == pinned
        shutil.rmtree(store / "2")
    recorded(tmp_path / "other", 1, {"seed": 1})
    for resume in [str(elsewhere), "other/1", str(store / "1" / ".." / ".." / "other" / "1"), [1]]:
        recorded(store, 2, {"seed": 1, "resume": resume})
        with pytest.raises(RecordError) as error:
            read_original(FileRunStore(store), 2, False)
        assert str(error.value) == (
            f"run 2's config.json sets resume to {shown(resume)}, which is not a run of the store "
            f"{store} being rerun, so it was not followed"
        )
        shutil.rmtree(store / "2")


@pytest.mark.slow
def test_a_rerun_of_a_copied_store_never_reads_the_original_stores_checkpoint(
    train, tmp_path, load, tree_hash
):
    from tests.helpers import run_reprolab

    store, copy = tmp_path / "store", tmp_path / "copy"
    train(store, "debug", "seed=3", env=ONE_THREAD)
    train(store, f"resume={store / '1'}", "epochs=2", env=ONE_THREAD)
    shutil.copytree(store, copy)
    before = tree_hash(copy)
    refused = run_reprolab("rerun", "2", "--store", str(copy), env=ONE_THREAD)
    assert refused.returncode == 2 and tree_hash(copy) == before
    assert refused.stderr.strip() == (
        f"reprolab: error: run 2's config.json sets resume to '{store / '1'}', which is not a "
        f"run of the store {copy} being rerun, so it was not followed"
    )
    config = load(copy / "2" / "config.json")
    (copy / "2" / "config.json").write_text(json.dumps({**config, "resume": str(copy / "1")}))
    run_reprolab("rerun", "2", "--store", str(copy), env=ONE_THREAD, check=True)
    assert load(copy / "3" / "info.json")["resumed_from"]["store"] == str(copy)
    again, then = load(copy / "3" / "metrics.json"), load(copy / "2" / "metrics.json")
    assert {k: v["values"] for k, v in again.items()} == {k: v["values"] for k, v in then.items()}


def rewrite_checkpoint(run: Path, state: dict) -> None:
    """Save `state` as the run's last.pt with records that vouch for it (its hash verifies)."""
    torch.save(state, run / "last.pt")
    data = (run / "last.pt").read_bytes()
    vouched = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for name, record in [("last.pt.sha256", None), ("info.json", "checkpoints")]:
        content = json.loads((run / name).read_text())
        (content[record]["last.pt"] if record else content).update(vouched)
        (content[record]["last.pt"] if record else content).pop("replaces", None)
        (run / name).write_text(json.dumps(content))


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, value, said",
    [
        ("epoch", -3, "is not usable: its epoch is -3, not an integer >= 1"),
        ("model", {}, "is not usable: its model does not fit what its config builds"),
    ],
)
def test_a_checkpoint_whose_hash_verifies_but_fields_do_not_fit_records_nothing(
    train, tmp_path, tree_hash, field, value, said
):
    store = tmp_path / "store"
    train(store, "debug", "seed=3", env=ONE_THREAD)
    state = torch.load(store / "1" / "last.pt", weights_only=True)
    rewrite_checkpoint(store / "1", {**state, field: value})
    before = tree_hash(store)
    result = train(store, "resume=1", "epochs=3", check=False, env=ONE_THREAD)
    assert result.returncode == 2 and tree_hash(store) == before
    assert result.stderr.strip().startswith(f"error: resume: run 1's checkpoint last.pt {said}")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_run_whose_process_still_runs_is_not_resumed(train, tmp_path, tree_hash, load):
    from ingredients.processes import this_process

    store = tmp_path / "store"
    train(store, "debug", "seed=3", env=ONE_THREAD)
    run_file = store / "1" / "run.json"
    run = load(run_file)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    # this test's own process stands in for the run's: alive, with a fresh heartbeat
    run.update(status="RUNNING", heartbeat=now, stop_time=None)
    run["meta"]["process"] = this_process()
    run_file.write_text(json.dumps(run))
    before = tree_hash(store)
    result = train(store, "resume=1", "epochs=2", check=False, env=ONE_THREAD)
    assert result.returncode == 2 and tree_hash(store) == before
    assert result.stderr.strip() == (
        "error: resume: run 1 is still running (its record says RUNNING and its process is "
        "alive or its heartbeat recent), so it was not resumed; stop it first (Ctrl-C or kill "
        "leaves a checkpoint to resume from)"
    )
    run["meta"]["process"] = {**this_process(), "pid": 2**22 + 1}  # a pid no process holds
    run_file.write_text(json.dumps(run))
    train(store, "resume=1", "epochs=2", env=ONE_THREAD)  # gone: resumed
    assert load(store / "2" / "info.json")["resumed_from"]["run_id"] == 1


def test_a_rerun_of_a_record_without_a_seed_is_refused_before_running(tmp_path, capsys, tree_hash):
    from experiments.cli import main as reprolab

    store = tmp_path / "store"
    recorded(store, 1, {"lr": 0.01})
    before = tree_hash(store)
    assert reprolab(["rerun", "1", "--store", str(store)]) == 2
    assert capsys.readouterr().err == (
        "reprolab: error: run 1's config.json records no seed, so a rerun would draw a new "
        "one and could not repeat the run; nothing was run\n"
    )
    assert tree_hash(store) == before
