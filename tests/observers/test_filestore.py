"""The FileStore observer: per-heartbeat cost independent of history, Sacred's layout at the end."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sacred import Experiment
from sacred.observers import FileStorageObserver

from ingredients.scratch import HOST, writer_tag
from observers.files import StoreWriteError
from observers.filestore import JOURNAL, FileStore, read_journal, write_json_atomic
from observers.records import MAX_RUN_ID
from observers.store import FileRunStore
from tests.helpers import START, metric_points, start_observer

INFO = {"model_summary": {"params": 1234}, "data": {"rows": 1797}}


def beat_points(beat: int, per_metric: int = 50) -> dict:
    """One heartbeat's new points of two metrics, as Sacred hands them to log_metrics."""
    steps = range(beat * per_metric, (beat + 1) * per_metric)
    return {**metric_points("loss", steps, 0.5), **metric_points("lr", steps, 0.001)}


def started(observer, root: Path):
    """The observer after Sacred's started_event."""
    return start_observer(observer, root, {"lr": 0.1})


def heartbeat(observer, beat: int, info: dict = INFO) -> None:
    """What Sacred's heartbeat does to an observer: new metrics, then the heartbeat event."""
    observer.log_metrics(beat_points(beat), info)
    observer.heartbeat_event(info, f"epoch {beat}\n" * (beat + 1), START, None)


def test_heartbeats_append_only_their_new_points(tmp_path):
    store = started(FileStore(tmp_path), tmp_path)
    run_dir = Path(store.dir)
    for beat in range(6):
        heartbeat(store, beat)
    lines = [json.loads(line) for line in (run_dir / JOURNAL).read_text().splitlines()]
    assert [entry["name"] for entry in lines] == ["loss", "lr"] * 6  # one line per metric and beat
    assert [entry["steps"][0] for entry in lines[::2]] == [0, 50, 100, 150, 200, 250]
    assert all(len(entry["steps"]) == len(entry["timestamps"]) == 50 for entry in lines)
    assert not (run_dir / "metrics.json").exists()  # nothing is rewritten while the run goes on


def test_sealed_metrics_equal_what_sacreds_observer_writes(tmp_path):
    ours = started(FileStore(tmp_path / "ours"), tmp_path)
    sacred = started(FileStorageObserver(str(tmp_path / "sacred")), tmp_path)
    for beat in range(4):
        for observer in (ours, sacred):
            heartbeat(observer, beat)
    for observer in (ours, sacred):
        observer.completed_event(START + dt.timedelta(hours=1), 0.9)
    ours_dir, sacred_dir = Path(ours.dir), Path(sacred.dir)
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    ours_metrics, sacred_metrics = (
        load(ours_dir / "metrics.json"),
        load(sacred_dir / "metrics.json"),
    )
    for name, series in sacred_metrics.items():  # the same, but ours says its times are UTC
        assert ours_metrics[name]["timestamps"] == [t + "+00:00" for t in series["timestamps"]]
        assert {**ours_metrics[name], "timestamps": None} == {**series, "timestamps": None}
    assert ours_metrics.keys() == sacred_metrics.keys()
    assert ours_metrics["loss"]["steps"] == list(range(200))
    assert not (ours_dir / JOURNAL).exists()
    ours_run, sacred_run = load(ours_dir / "run.json"), load(sacred_dir / "run.json")
    times = ("start_time", "heartbeat", "stop_time")
    assert [ours_run[key] for key in times] == [sacred_run[key] + "+00:00" for key in times]
    assert {**ours_run, **dict.fromkeys(times)} == {**sacred_run, **dict.fromkeys(times)}
    for name in ("info.json", "config.json", "cout.txt"):
        assert (ours_dir / name).read_bytes() == (sacred_dir / name).read_bytes(), name


@pytest.mark.parametrize("ending", ["failed", "interrupted"])
def test_runs_that_end_early_are_sealed_too(tmp_path, ending):
    store = started(FileStore(tmp_path), tmp_path)
    heartbeat(store, 0)
    if ending == "failed":
        store.failed_event(START, ["Traceback ...", "ValueError: boom"])
    else:
        store.interrupted_event(START, "INTERRUPTED")
    metrics = FileRunStore(tmp_path).metrics(1)
    assert (
        metrics["loss"]["values"][:3] == [0.0, 0.5, 1.0]
        and (tmp_path / "1" / "metrics.json").exists()
    )


def test_info_json_is_rewritten_only_when_the_info_changes(tmp_path):
    store = started(FileStore(tmp_path), tmp_path)
    info_file = tmp_path / "1" / "info.json"
    heartbeat(store, 0)
    first = info_file.stat().st_ino  # each atomic write is a new file
    heartbeat(store, 1)
    assert info_file.stat().st_ino == first
    changed = {**INFO, "best": {"val_accuracy": 0.97}}
    heartbeat(store, 2, changed)
    assert info_file.stat().st_ino != first and json.loads(info_file.read_text()) == changed


def test_json_writes_are_atomic_and_follow_the_umask(tmp_path):
    target = tmp_path / "run.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"b": 2}, indent=None)
    assert json.loads(target.read_text()) == {"b": 2} and target.read_text() == '{"b": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_torn_last_journal_line_is_skipped(tmp_path):
    journal = tmp_path / JOURNAL
    journal.write_text(
        json.dumps({"name": "loss", "steps": [1], "values": [0.5], "timestamps": ["t"]})
        + '\n{"name": "loss", "steps": [2], "val'
    )
    assert read_journal(journal) == {"loss": {"steps": [1], "values": [0.5], "timestamps": ["t"]}}


def test_a_real_sacred_run_is_read_back(tmp_path):
    ex = Experiment("filestore_test", save_git_info=False)
    ex.observers.append(FileStore(tmp_path))

    @ex.main
    def main(_run):
        for step in range(1, 301):
            _run.log_scalar("loss", 1 / step, step)
        _run.info["note"] = "done"
        return 7

    ex.run(options={"--loglevel": "ERROR", "--capture": "no"})
    reader = FileRunStore(tmp_path)
    metrics = reader.metrics(1)
    assert metrics["loss"]["steps"] == list(range(1, 301)) and metrics["loss"]["values"][1] == 0.5
    assert reader.run(1)["status"] == "COMPLETED" and reader.info(1) == {"note": "done"}
    assert not (tmp_path / "1" / JOURNAL).exists()


def test_a_stored_source_cut_short_is_written_again_not_reused(tmp_path):
    """A full disk once left a truncated copy in _sources/; later runs must not reference it."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('the whole experiment')\n" * 50)
    ex_info = {
        "name": "train",
        "base_dir": str(code),
        "sources": [["train.py", "md5"]],
        "dependencies": [],
        "repositories": [],
        "mainfile": "train.py",
    }
    store = tmp_path / "runs"
    for run in (1, 2):
        FileStore(store).started_event(dict(ex_info), "train", {}, START, {}, {}, None)
        (stored,) = (store / "_sources").iterdir()
        assert stored.read_bytes() == (code / "train.py").read_bytes()  # whole again in run 2
        stored.write_bytes(stored.read_bytes()[:100])  # as a full disk would have left it
        recorded = FileRunStore(store).run(run)["experiment"]["sources"]
        assert recorded == [["train.py", f"_sources/{stored.name}"]]
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


def test_a_failed_write_names_the_file_and_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    from observers import filestore
    from observers.files import StoreWriteError

    observer = started(FileStore(tmp_path), tmp_path)
    heartbeat(observer, 0)
    journal = Path(observer.dir) / JOURNAL
    before = journal.read_bytes()
    real_write, writes = os.write, []

    def write_then_fail(fd, data):  # the first write lands half, the next finds the disk full
        if writes:
            raise OSError(28, "No space left on device")
        writes.append(1)
        return real_write(fd, bytes(data)[: len(data) // 2])

    monkeypatch.setattr(filestore.os, "write", write_then_fail)
    with pytest.raises(
        StoreWriteError, match=f"could not write {journal}: No space left on device"
    ):
        observer.log_metrics(beat_points(1), INFO)
    assert journal.read_bytes() == before


def test_names_past_the_run_id_bound_are_skipped_by_readers_and_the_writer(tmp_path):
    for name in ("9223372036854775807", "99999999999999999999999", "²"):
        (tmp_path / name).mkdir()
    observer = start_observer(FileStore(tmp_path), tmp_path, {"lr": 0.1})
    assert Path(observer.dir).name == "1"  # Sacred's own count gave 2**63 (or failed on '²')
    reader = FileRunStore(tmp_path)
    assert reader.run_ids() == [1]
    from observers.tables import load_runs

    assert list(load_runs(tmp_path).index) == [1]
    assert f"skipped {tmp_path / '9223372036854775807'}: a run id over" in " ".join(reader.skipped)


def test_a_run_past_the_largest_id_is_refused_in_one_sentence(tmp_path):
    (tmp_path / str(MAX_RUN_ID)).mkdir()
    with pytest.raises(StoreWriteError) as refused:
        start_observer(FileStore(tmp_path), tmp_path, {"lr": 0.1})
    assert str(refused.value) == (
        f"could not write {tmp_path / str(MAX_RUN_ID + 1)}: run id {MAX_RUN_ID + 1} would pass "
        f"{MAX_RUN_ID:,}, the largest a store numbers runs to"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(MAX_RUN_ID)]


def test_a_run_start_sweeps_only_the_folder_of_the_run_it_resumes(tmp_path, monkeypatch):
    start_observer(FileStore(tmp_path), tmp_path, {"lr": 0.1})
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    orphan = tmp_path / "1" / f".last.pt.ab12.{dead.pid}@{HOST}.tmp"
    live = tmp_path / "1" / f".best.pt.cd34.{writer_tag()}.tmp"
    for path in (orphan, live):
        path.write_bytes(b"partial")
    with monkeypatch.context() as no_globbing:  # a glob over every run folder cost 2 s at 100k
        no_globbing.setattr(Path, "glob", lambda *a: pytest.fail("globbed the store"))
        start_observer(FileStore(tmp_path), tmp_path, {"lr": 0.1})
    assert orphan.exists()  # a plain start looks into no other run's folder
    start_observer(FileStore(tmp_path), tmp_path, {"lr": 0.1, "resume": 1})
    assert not orphan.exists() and live.exists()  # the resumed run's leftovers go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3"]
