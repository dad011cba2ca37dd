"""Nothing run twice, nothing said before it is: a sweep config is claimed atomically before its
run starts; a run whose process is gone reads as DEAD; a full store or a missing Slurm is one
sentence with nothing recorded; --resume exits 0 only when every config is completed."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import observers.sweep_records as sweep_records
from experiments.cli import main as reprolab
from experiments.sweeps.claiming import claim_jobs
from experiments.sweeps.record import Job, SweepBook, SweepRecord, local_attempt
from experiments.sweeps.slurm import task_of
from ingredients.processes import process_alive, start_time, this_process
from ingredients.scratch import HOST
from observers.claims import SweepClaims
from observers.location import StoreLocation
from observers.records import RecordError
from observers.tables import load_runs

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN = str(REPO_ROOT / "experiments" / "train.py")


def ended_process() -> dict:
    """A process of this host that has ended (its pid and start time, as a record holds them)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = this_process(child.pid)
    child.wait()
    return record


def test_a_process_is_named_by_pid_start_time_and_host():
    me = this_process()
    assert me == {"pid": os.getpid(), "start": start_time(os.getpid()), "host": HOST}
    assert process_alive(me) is True
    assert process_alive({**me, "start": me["start"] + 1}) is False  # the pid was reused
    assert process_alive(ended_process()) is False
    assert process_alive({**me, "host": "elsewhere"}) is None  # cannot be told from here
    assert process_alive({"pid": "1", "host": HOST}) is None  # a damaged record


def test_a_config_is_claimed_once_and_a_dead_holders_claim_taken_over_once(tmp_path):
    claims = SweepClaims(StoreLocation.parse(str(tmp_path)), "s1")
    assert claims.take(0, None, this_process()) == "0-after-0.g0"
    assert claims.take(0, None, this_process()) is None  # its holder (us) is alive
    assert claims.take(0, 7, ended_process()) == "0-after-7.g0"  # another run: another claim
    first = claims.take(0, 7, this_process())  # the holder is gone: the next generation
    second = claims.take(0, 7, this_process())  # ... which only one launcher gets
    assert (first, second) == ("0-after-7.g1", None)
    names = sorted(
        p.name for p in (tmp_path / ".reprolab" / "sweeps" / "s1" / "claims").glob("*.json")
    )
    assert names == ["0-after-0.g0.json", "0-after-7.g0.json", "0-after-7.g1.json"]


def test_a_run_that_inherited_the_claims_lock_holds_it_after_its_launcher_died(tmp_path):
    """No moment between a launcher's death and its run's start leaves the config unclaimed."""
    claims = SweepClaims(StoreLocation.parse(str(tmp_path)), "s1")
    name = claims.take(3, None, ended_process())  # the launcher that took it has died
    lock = claims.lock_for_run(name)
    run = subprocess.Popen(  # stands for the run it started: alive until its stdin closes
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        pass_fds=(lock,),
    )
    os.close(lock)
    try:
        assert claims.take(3, None, this_process()) is None
    finally:
        run.stdin.close()
        run.wait()
    assert claims.take(3, None, this_process()) == "3-after-0.g1"


def test_a_planted_claim_lock_is_never_followed(tmp_path):
    """A claim's lock file planted as a link out of the store: no file is created through it,
    the run inherits no lock, and the claim still stands by its holder's process."""
    claims, outside = SweepClaims(StoreLocation.parse(str(tmp_path)), "s1"), tmp_path / "MARKER"
    claims.lock_path("3-after-0.g0").parent.mkdir(parents=True)
    claims.lock_path("3-after-0.g0").symlink_to(outside)
    name = claims.take(3, None, this_process())
    assert name == "3-after-0.g0" and claims.lock_for_run(name) is None
    assert claims.take(3, None, ended_process()) is None  # held: its holder (us) is alive
    assert not outside.exists()


@pytest.fixture
def running_copy(small_store_of) -> Path:
    return small_store_of(["debug", "sgd"])


def set_running(run_dir: Path, **fields) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    record.update(status="RUNNING", stop_time=None, **fields)
    (run_dir / "run.json").write_text(json.dumps(record))


def test_a_run_whose_process_is_gone_reads_as_dead_and_the_record_is_untouched(running_copy):
    set_running(running_copy / "1", meta={"process": ended_process()})
    set_running(running_copy / "2", meta={"process": this_process()})
    before = (running_copy / "1" / "run.json").read_bytes()
    runs = load_runs(running_copy)
    assert (
        runs.loc[1, "status"] == "DEAD" and "process on this host has ended" in runs.loc[1, "note"]
    )
    assert runs.loc[2, "status"] == "RUNNING"
    assert (running_copy / "1" / "run.json").read_bytes() == before  # shown repaired, not rewritten
    elsewhere = {"pid": 1, "start": 1, "host": "another-host"}
    set_running(running_copy / "2", meta={"process": elsewhere}, heartbeat="2001-01-01T00:00:00")
    assert load_runs(running_copy).loc[2, "status"] == "DEAD"  # elsewhere: by its heartbeat
    assert list(load_runs(running_copy, status="DEAD").index) == [1, 2]


def sweep_into(store: Path, capsys, *extra: str) -> tuple[int, str]:
    code = reprolab(
        ["sweep", TRAIN, "--store", str(store), *extra, "with", "lr=[0.1, 0.01]", "debug"]
    )
    return code, capsys.readouterr().err


def test_a_sweep_into_a_full_store_says_so_once_and_never_recorded(tmp_path, capsys, monkeypatch):
    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "x.json"))

    monkeypatch.setattr(sweep_records.FileSweepRecords, "save", full)
    code, err = sweep_into(tmp_path / "runs", capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("reprolab: error: No space left on device (")
    assert "recorded" not in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["sweep", "search"])
def test_a_slurm_sweep_without_slurm_records_no_submission(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    search = ["--trials", "2"] if kind == "search" else []
    code, err = sweep_into(tmp_path / "runs", capsys, "--on", "slurm", *search)
    assert code == 2 and err.strip() == (
        "reprolab: error: --on slurm: there is no sbatch on PATH (Slurm is not installed "
        "here), so nothing was submitted or recorded"
    )
    assert not (tmp_path / "runs" / ".reprolab").exists()


def test_resume_exits_zero_only_when_every_config_is_completed(small_store_of, capsys, tmp_path):
    """A config whose run is still alive is left alone, and then --resume is not "done"."""
    store = small_store_of(["debug", "debug"])
    code, _ = sweep_into(store, capsys, "--print-commands")
    (record_file,) = (store / ".reprolab" / "sweeps").glob("*.json")
    sweep_id = record_file.stem
    for run_id in (1, 2):
        edit = json.loads((store / str(run_id) / "run.json").read_text())
        edit["meta"] = {"sweep": {"id": sweep_id, "index": run_id - 1}}
        (store / str(run_id) / "run.json").write_text(json.dumps(edit))
    assert reprolab(["sweep", "--resume", sweep_id, "--store", str(store)]) == 0
    assert "nothing to do (2 configs completed)" in capsys.readouterr().err
    set_running(
        store / "2", meta={"sweep": {"id": sweep_id, "index": 1}, "process": this_process()}
    )
    assert reprolab(["sweep", "--resume", sweep_id, "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert "config 1: run 2 is still RUNNING; left alone" in err
    assert "nothing started, but 1 of 2 configs are not completed" in err


def test_two_resumes_adding_their_attempts_at_once_keep_every_attempt(tmp_path):
    """What launch_local does on each `sweep --resume` (load the record, add its attempt), from
    two launchers at once: the read-modify-write is atomic, so neither attempt is lost."""
    book = SweepBook(str(tmp_path))
    book.save(SweepRecord("s1", "experiments/train.py", [], [{"seed": 1}, {"seed": 2}]))
    start, rounds = threading.Barrier(2), 10

    def resume(index: int) -> None:
        start.wait()
        for _ in range(rounds):
            mine = SweepBook(str(tmp_path))
            mine.change_attempt(mine.load("s1"), None, local_attempt(1, 1, [index]))

    threads = [threading.Thread(target=resume, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    attempts = book.load("s1").attempts
    assert sorted(a["indices"][0] for a in attempts) == [0] * rounds + [1] * rounds


def test_a_submission_is_changed_by_its_id_and_a_missing_one_is_refused(tmp_path):
    """A submission is found by its id, not its whole content: one whose stored copy differs
    (a sync wrote its job ids, say) is replaced, not added again; one taken back is refused in
    one sentence, never added; a record from before ids can still be changed."""
    book = SweepBook(str(tmp_path))
    legacy = {"engine": "local", "started": "2026-01-01T00:00:00+00:00", "indices": [0]}
    book.save(SweepRecord("s1", "experiments/train.py", [], [{"seed": 1}], [legacy]))
    record, mine = book.load("s1"), local_attempt(1, 1, [0])
    book.change_attempt(record, None, mine)
    assert record.attempts == [legacy, mine] and isinstance(mine["id"], str)
    book.records.change("s1", lambda raw: {**raw, "attempts": [legacy, {**mine, "job_id": "7"}]})
    book.change_attempt(record, mine, {**mine, "threads": 2})  # its stored copy differs
    assert book.load("s1").attempts == [legacy, {**mine, "threads": 2}]
    twin = {**mine, "id": "another"}  # the same content, another submission
    with pytest.raises(RecordError) as refused:
        book.change_attempt(record, twin, None)
    assert str(refused.value) == (
        f"sweep s1's record no longer holds the submission started {mine['started']} (local), "
        "so it was not changed"
    )
    assert book.load("s1").attempts == [legacy, {**mine, "threads": 2}]
    book.change_attempt(record, legacy, None)  # one recorded before ids: by its content
    assert book.load("s1").attempts == [{**mine, "threads": 2}]


# --------------------------------------------------------------------------- Slurm tasks

NODE = (  # what submitit runs on a node, here in a plain process: run_task of one Task
    "import json, sys; from experiments.sweeps.slurm import Task, run_task; "
    "sys.exit(run_task(Task(**json.loads(sys.argv[1]))))"
)


def node(task) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", NODE, json.dumps(dataclasses.asdict(task))],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def sweep_runs(store: Path) -> list[int]:
    return sorted(int(p.name) for p in store.iterdir() if p.name.isdigit())


def test_a_job_planned_before_its_config_was_run_is_not_claimed(small_store_of):
    """A claim taken after the config's latest run changed (a Slurm task queued for hours while
    another task ran it) is left alone: the config is not run twice."""
    store = small_store_of(["debug"])
    run = json.loads((store / "1" / "run.json").read_text())
    run["meta"] = {**run.get("meta", {}), "sweep": {"id": "s1", "index": 0}}
    (store / "1" / "run.json").write_text(json.dumps(run))
    location = StoreLocation.parse(str(store))
    planned_before, planned_after = Job(0, [], after=None), Job(1, [], after=None)
    taken, names = claim_jobs(location, "s1", [planned_before, planned_after])
    assert [job.index for job in taken] == [1] and list(names) == [1]
    again, _ = claim_jobs(location, "s1", [Job(0, [], after=1)])  # planned after run 1: claimed
    assert [job.index for job in again] == [0]


@pytest.mark.slow
def test_slurm_tasks_of_one_config_run_it_once(tmp_path):
    """Two tasks of one config started at once (a resume submitted it again while the first was
    queued), then a third that waited in the queue until both ended: one run, and every task
    exits 0 (a task left alone is not a failure)."""
    store = tmp_path / "runs"
    location = StoreLocation.parse(str(store))
    record = SweepRecord("s1", "experiments/train.py", ["debug"], [{"seed": 1}])
    SweepBook(location).save(record)  # a run is config 0 of a sweep its store records
    task = task_of(record, record.fresh_job(0), location, cpus=1)
    together = [node(task), node(task)]
    said = [process.communicate(timeout=300)[1] for process in together]
    assert [process.returncode for process in together] == [0, 0], said
    assert len(sweep_runs(store)) == 1, said
    assert sum("left alone" in text for text in said) == 1, said
    late = node(task)
    _, late_said = late.communicate(timeout=300)
    assert late.returncode == 0 and "run since this launch was planned" in late_said, late_said
    assert len(sweep_runs(store)) == 1
    assert json.loads((store / "1" / "run.json").read_text())["status"] == "COMPLETED"


def test_a_resume_leaves_alone_a_config_whose_task_is_still_queued():
    """A config with no run yet but a Slurm task still pending is not submitted again (the claim
    would stop the second task, but it would hold a place in the queue)."""
    from experiments.sweeps.attempts import jobs_to_do

    record = SweepRecord("s1", "experiments/train.py", [], [{"seed": 1}, {"seed": 2}, {"seed": 3}])
    jobs, notes = jobs_to_do(record, {}, busy={1, 2})
    assert [job.index for job in jobs] == [0]
    assert notes == [
        f"config {i}: its task is still waiting in Slurm's queue; left alone" for i in (1, 2)
    ]
