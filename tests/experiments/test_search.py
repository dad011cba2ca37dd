"""Searches run locally: trials pruned and shown as PRUNED everywhere, a pruned trial rerun bit
for bit, the same configs from one worker and a sampler seed, a search stopped by Ctrl-C then
resumed within its budget, and bad declarations refused in one sentence before anything starts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.cli import main
from experiments.sweeps.claiming import claim_jobs
from experiments.sweeps.record import SweepBook, SweepRecord
from experiments.sweeps.space import Search
from experiments.sweeps.tuner import SAME_AS, LocalSearch, Tuner
from ingredients.processes import this_process
from observers import load_runs
from observers.claims import SweepClaims
from observers.location import StoreLocation
from observers.records import RecordError
from observers.studies import journal_path, study_storage
from tests.helpers import stop_when_ready

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 600  # every wait on a process here is bounded
TINY = ("epochs=2", "limit_batches=2", "seed=0", "progress=False")
# A grid of three learning rates: whichever runs first, a later one that learns nothing is
# pruned after epoch 1 by the median of those before it (n_startup_trials=1).
PRUNING = (
    "with",
    "lr=[0.05, 1e-7, 2e-7]",
    "optimizer.name=adam",
    *TINY,
    "--sampler",
    "grid",
    "--sampler-seed",
    "1",
    "--pruner",
    "median",
    "--pruner-option",
    "n_startup_trials=1",
)


def reprolab(
    *args: str, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=WAIT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"reprolab {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def search_id(store: Path) -> str:
    (record,) = (store / ".reprolab" / "sweeps").glob("*.json")
    return record.stem


def trials(store: Path, sweep: str) -> list:
    import optuna

    storage = study_storage(StoreLocation.parse(str(store)), sweep)
    return optuna.load_study(study_name=sweep, storage=storage).get_trials()


@pytest.fixture(scope="module")
def pruned_search(tmp_path_factory):
    """A search of three trials, one worker, a median pruner: its store and id."""
    store = tmp_path_factory.mktemp("search") / "runs"
    reprolab("sweep", "experiments/train.py", "--store", str(store), "--threads", "1", *PRUNING)
    return store, search_id(store)


def test_pruned_trials_are_recorded_and_shown_as_pruned(pruned_search):
    store, sweep = pruned_search
    runs = load_runs(store, sweep=sweep).sort_values("trial")
    assert list(runs.trial) == [0, 1, 2] and list(runs.sweep_index) == [0, 1, 2]
    assert "PRUNED" in set(runs.status) and "COMPLETED" in set(runs.status)
    pruned = runs[runs.status == "PRUNED"]
    assert (pruned.pruned_epoch == 1).all() and runs[
        runs.status != "PRUNED"
    ].pruned_epoch.isna().all()
    assert sorted(runs["config.lr"]) == [1e-7, 2e-7, 0.05]
    states = {t.number: t.state.name for t in trials(store, sweep)}
    assert states == {
        int(t): ("PRUNED" if s == "PRUNED" else "COMPLETE") for t, s in zip(runs.trial, runs.status)
    }
    run_id = int(pruned.index[0])
    record = json.loads((store / str(run_id) / "run.json").read_text())
    assert record["status"] == "PRUNED"
    assert record["meta"]["sweep"] == {
        "id": sweep,
        "index": int(pruned.trial.iloc[0]),
        "trial": int(pruned.trial.iloc[0]),
    }
    assert "last.pt" in json.loads((store / str(run_id) / "info.json").read_text())["checkpoints"]

    listed = reprolab("ls", "--store", str(store)).stdout
    assert listed.count("PRUNED") == len(pruned)
    shown = reprolab("show", str(run_id), "--store", str(store)).stdout.splitlines()
    assert shown[0].split()[-1] == "PRUNED"
    ranked = reprolab("compare", "--sweep", sweep, "--store", str(store)).stdout.splitlines()
    assert ranked[1].split()[3] == "COMPLETED" and ranked[-2].split()[3] == "PRUNED"
    status = reprolab("sweep", "--status", sweep, "--store", str(store)).stdout
    assert status.count(" PRUNED ") == 2 * len(pruned)  # the study's state and the run's
    pruned_lines = [line for line in status.splitlines() if " PRUNED " in line]
    assert all("pruned at epoch 1 " in line for line in pruned_lines), status
    assert status.count("pruned at epoch") == len(pruned)  # completed trials carry no label


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    # PRUNING's median pruner stops the learning-nothing rates after epoch 1; with epochs=1 that
    # epoch is their last, where stopping saves nothing: they end COMPLETED, told their value
    store = tmp_path / "runs"
    one_epoch = [("epochs=1" if word == "epochs=2" else word) for word in PRUNING]
    reprolab("sweep", "experiments/train.py", "--store", str(store), "--threads", "1", *one_epoch)
    runs = load_runs(store, sweep=search_id(store))
    assert list(runs.status) == ["COMPLETED"] * 3 and runs.pruned_epoch.isna().all()
    studied = trials(store, search_id(store))
    assert [t.state.name for t in studied] == ["COMPLETE"] * 3
    assert all(t.intermediate_values == {1: t.value} for t in studied)  # reported all the same


def test_the_pruner_is_asked_after_every_epoch_but_a_runs_last():
    import optuna

    from experiments.trial import TrialHook

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=0.9))
    below = {"val_accuracy": 0.5}  # the threshold prunes it wherever it is asked
    early, last = (TrialHook(trial=study.ask(), metric="val_accuracy") for _ in range(2))
    assert early.epoch_end(1, below) and early.pruned == {
        "epoch": 1,
        "metric": "val_accuracy",
        "value": 0.5,
    }
    assert not last.epoch_end(3, below, last=True) and last.pruned is None
    assert study.trials[1].intermediate_values == {3: 0.5}


def test_a_pruned_trial_reruns_bit_for_bit(pruned_search):
    store, sweep = pruned_search
    runs = load_runs(store, sweep=sweep)
    run_id = int(runs[runs.status == "PRUNED"].index[0])
    result = reprolab("rerun", str(run_id), "--verify", "--store", str(store))
    assert f"exact match between run {run_id} and its rerun" in result.stdout


def test_one_worker_and_a_sampler_seed_ask_the_same_configs(pruned_search, tmp_path):
    store, sweep = pruned_search
    again = tmp_path / "runs"
    reprolab("sweep", "experiments/train.py", "--store", str(again), "--threads", "1", *PRUNING)
    first = [(t.params, t.state.name) for t in trials(store, sweep)]
    second = [(t.params, t.state.name) for t in trials(again, search_id(again))]
    assert first == second and len(first) == 3


def proposals(store: Path, sampler: dict, trials: int, stop_after: int | None = None) -> list:
    """The configs a search of `trials` asks with one worker, each told a score that favours
    lr near 1e-2; with `stop_after`, its Tuner is dropped after that many trials and a new one
    (as `sweep --resume` builds it) asks the rest."""
    search = Search(
        space={
            "lr": {"low": 1e-4, "high": 1.0, "log": True},
            "width": {"type": "int", "low": 8, "high": 256, "log": True},
            "optimizer.name": {"choices": ["sgd", "adam"]},
        },
        trials=trials,
        sampler=sampler,
    ).check()
    record = SweepRecord("s1", "experiments/train.py", [], [{}], extra={"search": search.record()})
    location = StoreLocation.parse(str(store))
    tuner, asked = Tuner(record, location, None, new=True), []
    while (job := tuner.ask()) is not None:
        params = tuner.trial(job.index).params
        asked.append(params)
        tuner.study.tell(job.index, -abs(math.log10(params["lr"]) + 2))
        if len(asked) == stop_after:
            tuner = Tuner(record, location, None)
    return asked


@pytest.mark.parametrize(
    "sampler", [{"name": "random", "seed": 3}, {"name": "tpe", "seed": 3, "n_startup_trials": 3}]
)
def test_a_resumed_search_asks_what_the_uninterrupted_one_asks(tmp_path, sampler):
    whole = proposals(tmp_path / "whole", sampler, 8)
    resumed = proposals(tmp_path / "resumed", sampler, 8, stop_after=4)
    assert resumed == whole and len(whole) == 8
    assert len({params["lr"] for params in whole}) == 8  # no draw repeated by a restarted RNG
    assert proposals(tmp_path / "again", sampler, 8) == whole
    other = proposals(tmp_path / "other", {**sampler, "seed": 4}, 8)
    assert [p["lr"] for p in other] != [p["lr"] for p in whole]


def hyperband_search(study_name: str) -> list:
    """A TPE search with Hyperband in a study of this name: each trial's lr and state, each
    epoch's value a made-up curve that favours lr near 1e-2."""
    import optuna

    search = Search(
        space={"lr": {"low": 1e-4, "high": 1.0, "log": True}},
        trials=20,
        sampler={"name": "tpe", "seed": 0, "n_startup_trials": 3},
        pruner={"name": "hyperband", "min_resource": 1, "max_resource": 9},
    ).check()
    study = optuna.create_study(
        study_name=study_name,
        direction="maximize",
        sampler=search.make_sampler(),
        pruner=search.make_pruner(),
    )
    for _ in range(search.trials or 0):
        trial = study.ask(search.distributions())
        score = -abs(math.log10(trial.params["lr"]) + 2)
        for epoch in range(1, 10):
            trial.report(score * (1 + 1 / epoch), epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, score)
    return [(t.params["lr"], t.state.name) for t in study.trials]


def test_two_hyperband_searches_of_one_declaration_prune_and_ask_alike():
    """Optuna draws Hyperband's brackets from the study's name (the search id, new each time)."""
    first, second = hyperband_search("20261205-aaaa"), hyperband_search("20261205-bbbb")
    assert first == second
    states = {state for _, state in first}
    assert states == {"COMPLETE", "PRUNED"}  # the pruner did prune, differently per bracket


def stop_a_search(tmp_path: Path, stopper: Path) -> tuple[Path, str]:
    """A search of three trials stopped by Ctrl-C during its first: its store and id."""
    store, fifo = tmp_path / "runs", tmp_path / "ready"
    os.mkfifo(fifo)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "STOP_FIFO": str(fifo),
        "REPO_ROOT": str(REPO_ROOT),
    }
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            "sweep",
            str(stopper),
            "--store",
            str(store),
            "--threads",
            "1",
            "with",
            "lr=loguniform(1e-3, 1e-1)",
            "epochs=2",
            "limit_batches=2",
            "seed=0",
            "--trials",
            "3",
            "--sampler",
            "random",
            "--sampler-seed",
            "0",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop_when_ready(fifo, first, WAIT_S)
    _, stderr = first.communicate(timeout=WAIT_S)
    assert first.returncode == 130, stderr
    sweep = search_id(store)
    assert f"reprolab sweep --resume {sweep}" in stderr
    assert "stopped: 1 run(s) interrupted, 2 not started" in stderr  # the budget's other two
    assert [t.state.name for t in trials(store, sweep)] == ["RUNNING"]
    assert list(load_runs(store, sweep=sweep).status) == ["INTERRUPTED"]
    return store, sweep


def test_a_stopped_search_resumes_within_its_budget(tmp_path, sweep_stopper, checkout_folder):
    store, sweep = stop_a_search(tmp_path, sweep_stopper(checkout_folder))
    status = reprolab("sweep", "--status", sweep, "--store", str(store)).stdout
    row = next(line for line in status.splitlines() if line.split()[:1] == ["0"])
    assert row.split()[1:4] == ["STOPPED", "1", "INTERRUPTED"], status  # not RUNNING
    assert f"search {sweep}: 1 stopped; no trial completed" in status
    resumed = reprolab(
        "sweep", "--resume", sweep, "--store", str(store), env={"REPO_ROOT": str(REPO_ROOT)}
    )
    assert "trial 0: continuing run 1" in resumed.stderr
    states = [t.state.name for t in trials(store, sweep)]
    assert states == ["COMPLETE"] * 3  # the budget: three trials in all, none run twice
    runs = load_runs(store, sweep=sweep).sort_index()
    assert list(runs.trial) == [0, 0, 1, 2]
    assert list(runs.status) == ["INTERRUPTED", "COMPLETED", "COMPLETED", "COMPLETED"]
    assert runs["config.resume"].fillna(0).tolist() == [0, 1, 0, 0]
    lrs = [t.params["lr"] for t in trials(store, sweep)]
    assert len(set(lrs)) == 3, lrs  # trial 1, the first asked after resuming, is not trial 0's lr
    nothing = reprolab("sweep", "--resume", sweep, "--store", str(store))
    assert "nothing to do" in nothing.stderr and len(trials(store, sweep)) == 3


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["lr=loguniform(0, 1)", "--trials", "2"], "space.lr: a log scale needs low > 0"),
        (
            ["lr=uniform(0.1, 0.01)", "--trials", "2"],
            "space.lr: low and high must be finite numbers with low < high",
        ),
        (
            ["lr=loguniform(1e-4, 1e-1)", "--trials", "0"],
            "search.trials must be an integer from 1 to 100000, not 0",
        ),
        (
            ["lr=loguniform(1e-4, 1e-1)", "--sampler", "grid"],
            "space.lr: the grid sampler needs a discrete space",
        ),
        (
            ["lr=[0.1, 0.01]", "--sampler", "grid", "--trials", "3"],
            "search.trials (3) is more than the grid's 2 configs",
        ),
        (
            ["lr=[0.1, 0.01]", "--trials", "2", "--pruner", "bogus"],
            "search.pruner.name must be one of none, median, halving, hyperband, not 'bogus'",
        ),
        (
            [
                "lr=[0.1, 0.01]",
                "--trials",
                "2",
                "--pruner",
                "hyperband",
                "--pruner-option",
                "reduction_factor=1",
            ],
            "search.pruner.reduction_factor must be an integer, 2 or more, not 1",
        ),
        (
            [
                "lr=[0.1, 0.01]",
                "--trials",
                "2",
                "--pruner",
                "median",
                "--pruner-option",
                "min_resource=1",
            ],
            "search.pruner.min_resource: median takes n_startup_trials",
        ),
        (["lr=int(1, 5, step=0)", "--trials", "2"], "space.lr.step must be a positive integer"),
        (
            ["lr=loguniform(1e-4, 1e-1)", "model.hidden=[[32]]", "--trials", "2"],
            "space.model.hidden: a categorical's values must be numbers, text, bools or null "
            "(a list that every trial takes goes under `fixed:` in a sweep file)",
        ),
        (
            ["lr=[0.1, 0.01]", "--trials", "2", "--metric", "val accuracy"],
            "search.metric must be a metric name",
        ),
        (
            ["lr=loguniform(1e-4, 1e-1)", "--trials", "2", "--print-commands"],
            "a search chooses each trial from the ones before it",
        ),
    ],
)
def test_bad_declarations_are_refused_in_one_sentence(tmp_path, capsys, words, message):
    store = tmp_path / "runs"
    code = main(["sweep", "experiments/train.py", "--store", str(store), "with", *words])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not store.exists()  # nothing recorded


def test_a_search_file_declares_the_same_as_the_command_line(tmp_path, capsys):
    file = tmp_path / "search.yaml"
    file.write_text(
        "experiment: experiments/train.py\n"
        "fixed: {epochs: 9}\n"
        "search:\n"
        "  trials: 20\n"
        "  metric: val_loss\n"
        "  sampler: {name: tpe, seed: 0}\n"
        "  pruner: {name: hyperband, min_resource: 1, reduction_factor: 3}\n"
        "  space:\n"
        "    lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "    optimizer: {name: [sgd, adam]}\n"
        "    model.dropout: {low: 0.0, high: 0.5, step: 0.1}\n"
    )
    assert main(["sweep", str(file), "--dry-run", "--store", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "  lr: float from 0.0001 to 0.1 (log)"
    assert out[1] == "  optimizer.name: one of ['sgd', 'adam']"
    assert out[2] == "  model.dropout: float from 0.0 to 0.5 step 0.1"
    assert out[3].startswith("20 trials of experiments/train.py, minimize val_loss")
    file.write_text("search: {trials: 2, space: {lr: {low: 1, high: 2, scale: log}}}\n")
    assert main(["sweep", str(file), "--dry-run"]) == 2
    assert "space.lr: unknown key 'scale' (low, high, log, step, type)" in capsys.readouterr().err


def test_the_study_journal_lives_in_the_store(pruned_search):
    store, sweep = pruned_search
    path = journal_path(StoreLocation.parse(str(store)), sweep)
    assert path == store.resolve() / ".reprolab" / "studies" / f"{sweep}.log"
    logs = [json.loads(line) for line in path.read_text().splitlines()]
    assert logs and all(isinstance(log, dict) and "op_code" in log for log in logs)


def test_two_resumes_at_once_continue_an_interrupted_trial_once(
    tmp_path, sweep_stopper, checkout_folder
):
    """A resume finds trial 0's run claimed by another resume still alive (here: a process
    holding the claim, as a launcher does before its run starts): it leaves the trial alone and
    spends the rest of the budget; once that launcher is gone, the next resume continues it."""
    store, sweep = stop_a_search(tmp_path, sweep_stopper(checkout_folder))
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        claims = SweepClaims(StoreLocation.parse(str(store)), sweep)
        assert claims.take(0, 1, this_process(other.pid)) is not None  # trial 0, after run 1
        env = {"REPO_ROOT": str(REPO_ROOT)}
        second = reprolab("sweep", "--resume", sweep, "--store", str(store), env=env)
    finally:
        other.stdin.close()
        other.wait()
    assert "trial 0: being started or run by another launcher; left alone" in second.stderr
    runs = load_runs(store, sweep=sweep).sort_index()
    assert list(runs.trial) == [0, 1, 2] and runs["config.resume"].isna().all()  # 0 not continued
    assert [t.state.name for t in trials(store, sweep)] == ["RUNNING", "COMPLETE", "COMPLETE"]
    third = reprolab("sweep", "--resume", sweep, "--store", str(store), env=env)
    assert "trial 0: continuing run 1" in third.stderr and "left alone" not in third.stderr
    runs = load_runs(store, sweep=sweep).sort_index()
    assert list(runs.trial) == [0, 1, 2, 0]  # continued once, and no trial past the budget
    assert runs["config.resume"].fillna(0).tolist() == [0, 0, 0, 1]
    assert [t.state.name for t in trials(store, sweep)] == ["COMPLETE"] * 3


def test_a_new_trial_is_claimed_as_it_is_asked(tmp_path):
    """A resume elsewhere that finds a just-asked trial RUNNING without a run leaves it alone
    while the worker that asked it holds its claim (its first claim: not read back as run)."""
    search = Search(space={"lr": {"low": 1e-4, "high": 1.0, "log": True}}, trials=2).check()
    record = SweepRecord("s1", "experiments/train.py", [], [{}], extra={"search": search.record()})
    location = StoreLocation.parse(str(tmp_path))
    worker = LocalSearch(Tuner(record, location, None, new=True), SweepBook(location), 1, 1)
    job = worker.next_job()
    assert job is not None and job.index == 0 and worker.names == {0: "0-after-0.g0"}
    claims = SweepClaims(location, "s1")
    assert claims.take(0, None, this_process()) is None  # held by this worker (alive)
    assert claims.take(1, None, this_process()) == "1-after-0.g0"  # as if a resume took trial 1
    assert worker.next_job() is None  # asked, held elsewhere: left alone; the budget is spent


@pytest.mark.parametrize(
    "sampler", [{"name": "random", "seed": 5}, {"name": "tpe", "seed": 5, "n_startup_trials": 2}]
)
def test_a_trial_proposing_a_completed_trials_parameters_is_answered_not_run(tmp_path, sampler):
    """Every trial shares one config and seed: the same parameters are the same run. Of 16
    trials over a space of 4 configs, each config that completed runs once, and each later
    trial with its parameters is told its value; a pruned config runs again when proposed (in
    another bracket, or against other trials, the same run could go on)."""
    import optuna

    search = Search(
        space={"lr": {"choices": [0.1, 0.01]}, "optimizer.name": {"choices": ["sgd", "adam"]}},
        trials=16,
        sampler=sampler,
    ).check()
    record = SweepRecord("s1", "experiments/train.py", [], [{}], extra={"search": search.record()})
    tuner, said, run = Tuner(record, StoreLocation.parse(str(tmp_path)), None, new=True), [], []
    while (job := tuner.ask(said.append)) is not None:
        params = tuner.trial(job.index).params
        run.append(tuple(sorted(params.items())))
        if params["optimizer.name"] == "adam":
            tuner.study.tell(job.index, params["lr"] + 1)
        else:
            tuner.study.tell(job.index, state=optuna.trial.TrialState.PRUNED)
    every = tuner.study.get_trials(deepcopy=False)
    completing = [config for config in run if ("optimizer.name", "adam") in config]
    assert len(every) == 16 and len(completing) == len(set(completing)) >= 1
    copies = [t for t in every if SAME_AS in t.user_attrs]
    assert len(copies) == 16 - len(run) > 0 and len(said) == len(copies)
    for copy, line in zip(copies, said):
        first = every[copy.user_attrs[SAME_AS]]
        assert first.number < copy.number and SAME_AS not in first.user_attrs
        assert (first.params, first.value) == (copy.params, copy.value)
        assert first.state == copy.state == optuna.trial.TrialState.COMPLETE
        assert line.startswith(f"trial {copy.number}: COMPLETED val_accuracy={copy.value:.4g}, ")
        assert f", as trial {first.number} (the same parameters" in line
    assert f"({len(copies)} answered by an earlier trial, not run)" in tuner.summary()


def test_a_search_runs_each_config_once_and_shows_the_others_answered(tmp_path):
    store = tmp_path / "runs"
    words = (
        "with",
        'optimizer.name=["sgd", "adam"]',
        *TINY,
        "--trials",
        "4",
        "--sampler",
        "random",
    )
    reprolab("sweep", "experiments/train.py", "--store", str(store), "--threads", "1", *words)
    sweep = search_id(store)
    runs = load_runs(store, sweep=sweep)
    every = trials(store, sweep)
    assert len(every) == 4 and len(runs) == len({t.params["optimizer.name"] for t in every}) <= 2
    status = reprolab("sweep", "--status", sweep, "--store", str(store)).stdout
    copies = [t for t in every if SAME_AS in t.user_attrs]
    for copy in copies:
        line = next(x for x in status.splitlines() if x.split()[:1] == [str(copy.number)])
        assert f" as {copy.user_attrs[SAME_AS]} " in line, status
    assert len(copies) == 4 - len(runs) >= 2


def test_a_resume_answers_a_trial_left_asked_with_a_completed_trials_parameters(tmp_path):
    """A search stopped after asking a repeat and before answering it: --resume claims it as any
    trial left over, then answers it from the completed trial instead of starting a run."""
    search = Search(space={"lr": {"choices": [0.1]}}, trials=2).check()
    record = SweepRecord("s1", "experiments/train.py", [], [{}], extra={"search": search.record()})
    location = StoreLocation.parse(str(tmp_path))
    tuner = Tuner(record, location, None, new=True)
    job = tuner.ask()
    assert job is not None
    tuner.study.tell(job.index, 0.75)
    left = tuner.study.ask(tuner.distributions)  # asked, then the process was stopped
    resumed = Tuner(record, location, None)
    jobs, _ = resumed.unfinished()
    first, names = claim_jobs(location, "s1", jobs, label="trial")
    assert [j.index for j in first] == [left.number] and first[0].resumes is None
    said: list[str] = []
    worker = LocalSearch(resumed, SweepBook(location), 1, 1, names)
    worker.say = said.append  # type: ignore[method-assign]
    worker.pending = list(first)
    assert worker.next_job() is None  # answered, and the budget is spent: nothing to run
    assert said == [
        f"trial {left.number}: COMPLETED val_accuracy=0.75, as trial 0 (the same parameters: "
        "not run again)"
    ]
    again = resumed.trial(left.number)
    assert (again.state.name, again.value, again.user_attrs[SAME_AS]) == ("COMPLETE", 0.75, 0)


def test_a_resume_never_answers_a_trial_a_live_worker_is_starting(tmp_path):
    """Trial 1 is asked with trial 0's parameters while trial 0 still runs, so its worker claims
    it to run it; trial 0 then completes. A resume at that moment leaves trial 1 to its worker."""
    search = Search(space={"lr": {"choices": [0.1]}}, trials=2).check()
    record = SweepRecord("s1", "experiments/train.py", [], [{}], extra={"search": search.record()})
    location = StoreLocation.parse(str(tmp_path))
    tuner = Tuner(record, location, None, new=True)
    worker = LocalSearch(tuner, SweepBook(location), 1, 1)
    running, starting = worker.next_job(), worker.next_job()
    assert running is not None and starting is not None and starting.index == 1
    tuner.study.tell(running.index, 0.75)
    resumed = Tuner(record, location, None)
    jobs, _ = resumed.unfinished()
    first, names = claim_jobs(location, "s1", jobs, label="trial")
    assert first == [] and names == {}  # held by the live worker: left alone
    assert resumed.trial(1).state.name == "RUNNING" and SAME_AS not in resumed.trial(1).user_attrs


def small_search(tmp_path: Path, trials: int = 2, **fixed) -> tuple[SweepRecord, StoreLocation]:
    search = Search(space={"lr": {"choices": [0.1, 0.01]}}, trials=trials).check()
    record = SweepRecord(
        "s1", "experiments/train.py", [], [fixed], extra={"search": search.record()}
    )
    return record, StoreLocation.parse(str(tmp_path / "runs"))


def test_a_killed_trials_run_is_continued_from_its_checkpoint(tmp_path):
    """A run killed by SIGKILL (out of memory, a lost node) leaves run.json RUNNING: read as
    DEAD, its trial is continued from its recorded checkpoint, as a sweep's config is, not
    started again."""
    record, location = small_search(tmp_path)
    tuner = Tuner(record, location, None, new=True)
    job = tuner.ask()
    assert job is not None
    folder = location.path / "7"
    folder.mkdir(parents=True)
    run = {  # no process recorded, a heartbeat long stale: its process is gone
        "status": "RUNNING",
        "start_time": "2020-01-01T00:00:00+00:00",
        "heartbeat": "2020-01-01T00:01:00+00:00",
        "meta": {"sweep": {"id": "s1", "index": job.index}},
    }
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "info.json").write_text(json.dumps({"checkpoints": {"last.pt": {"epoch": 1}}}))
    jobs, notes = Tuner(record, location, None).unfinished()
    assert [(j.index, j.resumes) for j in jobs] == [(job.index, 7)]
    assert notes == [f"trial {job.index}: continuing run 7"]


def test_a_trial_asked_past_the_budget_by_a_killed_worker_is_never_run(tmp_path):
    """A worker killed between asking trial N >= budget and marking it leaves it RUNNING with no
    mark: the resume marks it (FAIL, over budget) and runs only trials within the budget."""
    record, location = small_search(tmp_path, trials=1)
    tuner = Tuner(record, location, None, new=True)
    first = tuner.ask()
    assert first is not None and first.index == 0
    past = tuner.study.ask(tuner.distributions)  # then the worker was killed
    jobs, _ = Tuner(record, location, None).unfinished()
    assert [j.index for j in jobs] == [0]
    marked = tuner.trial(past.number)
    assert marked.state.name == "FAIL" and marked.user_attrs["over_budget"] is True


def test_a_trial_told_by_another_process_first_keeps_that_end(tmp_path, monkeypatch):
    """A resume and a worker both find a trial's run ended and tell it: the first tell stands,
    and the second says so instead of failing ('Cannot tell a COMPLETE trial')."""
    record, location = small_search(tmp_path)
    tuner = Tuner(record, location, None, new=True)
    job = tuner.ask()
    assert job is not None
    stale = tuner.trial(job.index)  # RUNNING, as tell's check reads it
    tuner.study.tell(job.index, 0.5)  # told elsewhere between that check and tell's own
    reads = iter([stale])
    real = tuner.trial
    monkeypatch.setattr(tuner, "trial", lambda number: next(reads, None) or real(number))
    assert tuner.tell(job.index, "PRUNED") == "COMPLETE"
    assert tuner.trial(job.index).value == 0.5


def test_a_search_record_or_study_that_chooses_a_run_is_refused(tmp_path):
    """A record is data: a fixed resume=, a searched resume or a trial parameter its space does
    not declare would make every trial extend a run of the store. Each is refused by name."""
    record, location = small_search(tmp_path, resume=3)
    with pytest.raises(RecordError, match=r"sweep s1's config 0 sets resume=3"):
        Tuner(record, location, None, new=True)
    with pytest.raises(ValueError, match=r"^space.resume: resume cannot be searched"):
        Search(space={"resume": {"choices": [1, 2]}}).check()
    record, location = small_search(tmp_path)
    tuner = Tuner(record, location, None, new=True)
    with pytest.raises(RecordError, match=r"trial 0 sets resume, which its space does not"):
        tuner.job(0, {"lr": 0.1, "resume": 3})


def test_a_missing_study_is_refused_and_a_read_writes_nothing(tmp_path):
    record, location = small_search(tmp_path)
    with pytest.raises(RecordError, match=r"^search s1's study journal .* is missing$"):
        Tuner(record, location, None)
    assert not journal_path(location, "s1").exists()


def test_a_new_search_never_joins_another_stores_study_of_the_same_id(
    tmp_path, monkeypatch, capsys
):
    """Two stores share one --study-storage database; a search id is unique only within its
    store. A new search whose id the database holds already is refused in one sentence, and
    nothing of it is recorded; the study there is left as it was."""
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="20260101-beef", storage=url).ask()  # another store's
    monkeypatch.setattr(SweepBook, "new_id", lambda self: "20260101-beef")
    store = tmp_path / "runs"
    words = ["--store", str(store), "--study-storage", url, "--trials", "2"]
    code = main(["sweep", "experiments/train.py", *words, "with", "lr=[0.1, 0.01]", *TINY])
    said = capsys.readouterr().err
    assert code != 0 and "Traceback" not in said
    assert "the study storage already holds a study named 20260101-beef, which is not" in said
    assert not list((store / ".reprolab" / "sweeps").glob("*.json"))
    assert len(optuna.load_study(study_name="20260101-beef", storage=url).trials) == 1


damaged_lines = st.one_of(
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.text(max_size=4)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(
                st.sampled_from(
                    [
                        "op_code",
                        "worker_id",
                        "study_id",
                        "trial_id",
                        "study_name",
                        "directions",
                        "datetime_start",
                        "state",
                        "values",
                        "param_name",
                        "param_value_internal",
                        "distribution",
                        "step",
                        "intermediate_value",
                        "user_attr",
                        "system_attr",
                    ]
                ),
                inner,
                max_size=5,
            ),
        ),
        max_leaves=8,
    ).map(json.dumps),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(damaged_lines, min_size=1, max_size=3))
def test_a_damaged_study_journal_is_refused_in_one_sentence(tmp_path, lines):
    """A journal is data: lines appended to it, of any shape, give a study Optuna reads or one
    sentence naming the search, never a traceback."""
    import shutil

    record, location = small_search(tmp_path)
    shutil.rmtree(location.path, ignore_errors=True)
    tuner = Tuner(record, location, None, new=True)
    assert tuner.ask() is not None
    with journal_path(location, "s1").open("a") as journal:
        journal.write("".join(line.replace("\n", " ") + "\n" for line in lines))
    try:
        Tuner(record, location, None).summary()
    except RecordError as error:
        assert str(error).startswith("search s1's study is") and "\n" not in str(error)


def test_a_metric_the_experiment_does_not_log_is_refused_before_any_trial(tmp_path, capsys):
    """train.py says what it logs each epoch: a search for another metric would fail every
    trial after its first epoch and spend the budget on nothing."""
    store = tmp_path / "runs"
    for metric in ("nosuch", "val_accuracy.max"):
        words = ["--store", str(store), "--trials", "4", "--metric", metric]
        code = main(["sweep", "experiments/train.py", *words, "with", "lr=[0.1, 0.01]", *TINY])
        said = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(said) == 1, said
        assert said[0].startswith(f"reprolab: error: search.metric '{metric}' is not one that")
        assert "(train_loss, val_loss, val_accuracy)" in said[0]
    assert not store.exists()  # nothing recorded, nothing run
    mse = ["--metric", "val_accuracy", "--trials", "2", "--dry-run", "with", "lr=[0.1, 0.01]"]
    mse += ["loss=mse", "monitor=val_loss", *TINY]
    assert main(["sweep", "experiments/train.py", "--store", str(store), *mse]) == 2
    assert "(train_loss, val_loss)" in capsys.readouterr().err  # per config: no accuracy


def test_a_study_storage_that_cannot_be_opened_is_one_sentence_and_records_nothing(
    tmp_path, capsys
):
    store = tmp_path / "runs"
    for url in (f"sqlite:///{tmp_path}/no/such/folder/x.db", "postgresql://bob:pw@127.0.0.1:1/db"):
        words = ["--store", str(store), "--study-storage", url, "--trials", "1"]
        code = main(["sweep", "experiments/train.py", *words, "with", "lr=[0.1, 0.01]", *TINY])
        said = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(said) == 1 and "cannot be opened: " in said[0], said
        assert ":pw@" not in said[0] and "Traceback" not in said[0]
    assert not [path for path in store.rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    "extra",
    [
        ["--dry-run"],
        ["--trials", "9"],
        ["--pruner", "median"],
        ["--pruner-option", "n_startup_trials=1"],
        ["experiments/train.py", "with", "lr=0.5"],
    ],
)
def test_resume_and_status_refuse_options_that_would_change_the_declaration(
    pruned_search, capsys, extra
):
    """--resume and --status take the search as recorded: an option that would declare or
    change it is refused by name, not silently ignored (and --dry-run never runs a trial)."""
    store, sweep = pruned_search
    before = load_runs(store, sweep=sweep)
    journal = journal_path(StoreLocation.parse(str(store)), sweep).read_bytes()
    for flag in ("--resume", "--status"):
        code = main(["sweep", flag, sweep, "--store", str(store), *extra])
        said = capsys.readouterr().err.strip()
        assert code == 2 and said.startswith(f"reprolab: error: {flag} takes the sweep as it was")
        named = extra[0] if extra[0].startswith("--") else "an experiment, a sweep file"
        assert f"so {named}" in said
    assert len(load_runs(store, sweep=sweep)) == len(before)
    assert journal_path(StoreLocation.parse(str(store)), sweep).read_bytes() == journal


@pytest.mark.parametrize(
    "extra",
    [
        ["--parallel", "3"],
        ["--threads", "2"],
        ["--on", "local"],
        ["--wait"],
        ["--max-parallel", "2"],
        ["--print-commands"],
        ["--resume", "x"],
    ],
)
def test_status_refuses_options_that_would_start_or_place_runs(pruned_search, capsys, extra):
    """--status only reads: --parallel or --resume beside it were silently ignored."""
    store, sweep = pruned_search
    code = main(["sweep", "--status", sweep, "--store", str(store), *extra])
    said = capsys.readouterr().err.strip()
    assert code == 2, said
    assert (
        said
        == f"reprolab: error: --status only reads the sweep, so {extra[0]} cannot be given with it"
    )


def test_status_reads_the_study_without_writing_to_it(pruned_search, capsys):
    """Optuna's create_study(load_if_exists) logs a create before it finds the study: --status
    did that on each call, and sync then took the journal for one continued elsewhere."""
    store, sweep = pruned_search
    journal = journal_path(StoreLocation.parse(str(store)), sweep)
    before = journal.read_bytes()
    for _ in range(2):
        assert main(["sweep", "--status", sweep, "--store", str(store)]) == 0
    assert "3 trials" in capsys.readouterr().out
    assert journal.read_bytes() == before


def test_compare_ranks_a_search_by_its_own_metric_and_direction(tmp_path, capsys):
    store = tmp_path / "runs"
    minimizing = ["--metric", "val_accuracy", "--direction", "minimize", "--sampler", "grid"]
    words = ["with", "lr=[0.05, 1e-7]", "optimizer.name=adam", *TINY, *minimizing]
    reprolab("sweep", "experiments/train.py", "--store", str(store), "--threads", "1", *words)
    sweep = search_id(store)
    runs = load_runs(store, sweep=sweep)
    assert main(["compare", "--sweep", sweep, "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "val_accuracy.min" in out and "val_accuracy.max" not in out
    worst = int(runs["val_accuracy.min"].idxmin())
    ranked = [line.split() for line in out.splitlines() if line.split()[:1] == ["1"]]
    assert ranked and ranked[0][1] == str(worst), out


def test_a_searched_seed_is_not_also_shown_fixed(tmp_path, capsys):
    words = ["--store", str(tmp_path / "runs"), "--dry-run", "--trials", "3"]
    assert main(["sweep", "experiments/train.py", *words, "with", "seed=[0, 1, 2]", *TINY[:2]]) == 0
    out = capsys.readouterr().out
    assert "seed: one of [0, 1, 2]" in out and "seed=" not in out.split("the same in all:")[1]


def test_threads_zero_is_refused_not_taken_as_the_default(tmp_path, capsys):
    words = ["--store", str(tmp_path / "runs"), "--threads", "0", "--dry-run", "with", *TINY]
    assert main(["sweep", "experiments/train.py", *words, "lr=[0.1, 0.01]"]) == 2
    assert capsys.readouterr().err.strip() == "reprolab: error: --threads must be 1 or more, not 0"
