"""load_runs, load_metrics and compare on a store of real training runs, whole and damaged."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from ingredients.processes import this_process
from observers import compare, load_metrics, load_runs
from observers.filestore import JOURNAL, write_json_atomic
from observers.store import FileRunStore, RecordError
from observers.tables import RECORD_COLUMNS, differing_config
from tests.helpers import RunByRun
from tests.helpers import read_json as read

LR = {0.01: "debug", 0.05: "sgd", 0.001: "slow"}  # the lr of each of conftest's SMALL_RUNS


@pytest.fixture(scope="module")
def store(small_store) -> Path:
    return small_store  # debug, sgd and slow, trained once per session


@pytest.fixture(scope="module")
def ids(store) -> dict[str, int]:
    """Run id of each run (parallel runs take their ids in any order)."""
    reader = FileRunStore(store)
    return {LR[reader.config(run_id)["lr"]]: run_id for run_id in reader.run_ids()}


# --------------------------------------------------------------------------- load_runs


def test_load_runs_has_one_typed_row_per_run(store, ids, repo_root):
    runs = load_runs(store)

    assert runs.index.name == "run_id" and runs.index.dtype == "int64"
    assert sorted(runs.index) == sorted(ids.values())
    assert list(runs.columns[: len(RECORD_COLUMNS)]) == list(RECORD_COLUMNS)
    assert (
        runs["start_time"].dtype == "datetime64[us, UTC]"
        and runs["stop_time"].dtype == "datetime64[us, UTC]"
    )
    written = read(store / str(ids["sgd"]) / "run.json")["start_time"]  # the record says UTC too
    assert written.endswith("+00:00") and runs.loc[ids["sgd"], "start_time"].isoformat() == written
    assert runs["duration"].dtype == "timedelta64[us]"
    assert (runs["duration"] == runs["stop_time"] - runs["start_time"]).all()
    assert (runs["duration"] > pd.Timedelta(0)).all()
    assert set(runs["status"]) == {"COMPLETED"} and set(runs["experiment"]) == {"train"}
    assert set(runs["host"]) == {socket.gethostname()}
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True
    )
    assert set(runs["git_commit"]) == {head.stdout.strip()}
    assert runs["note"].isna().all()


def test_load_runs_flattens_config_and_summarises_metrics(store, ids):
    runs = load_runs(store)
    sgd = runs.loc[ids["sgd"]]
    recorded = read(store / str(ids["sgd"]) / "metrics.json")["val_accuracy"]["values"]

    assert sgd["config.lr"] == 0.05 and sgd["config.optimizer.name"] == "sgd"
    assert sgd["config.model.hidden"] == (128, 64) and "config.__doc__" not in runs.columns
    assert runs.loc[ids["debug"], "config.epochs"] == 1
    assert sgd["val_accuracy.last"] == recorded[-1] and len(recorded) == 2
    assert sgd["val_accuracy.min"] == min(recorded) and sgd["val_accuracy.max"] == max(recorded)
    # the run's result is the best val_accuracy (monitor_mode max)
    assert (runs["result"] == runs["val_accuracy.max"]).all()
    for name in ("train_loss", "val_loss", "lr"):
        assert runs[[f"{name}.last", f"{name}.min", f"{name}.max"]].dtypes.eq("float64").all()


def test_load_runs_filters_by_status_experiment_and_config(store, ids):
    assert list(load_runs(store, lr=0.05).index) == [ids["sgd"]]
    assert list(load_runs(store, **{"optimizer.name": "sgd"}).index) == [ids["sgd"]]
    assert sorted(load_runs(store, optimizer__name="adam", epochs=2).index) == [ids["slow"]]
    assert len(load_runs(store, status="COMPLETED", experiment="train")) == 3
    assert len(load_runs(store, status=["FAILED", "COMPLETED"])) == 3
    none = load_runs(store, status="FAILED")
    assert none.empty and list(none.columns) == list(RECORD_COLUMNS)
    assert load_runs(store, experiment="other").empty


def test_load_runs_refuses_an_unknown_config_key(store):
    with pytest.raises(ValueError, match="unknown config key 'optimizer.nme'"):
        load_runs(store, **{"optimizer.nme": "sgd"})


def test_load_runs_of_a_missing_store_names_it(tmp_path):
    with pytest.raises(RecordError, match="no run store at .*nowhere"):
        load_runs(tmp_path / "nowhere")


# --------------------------------------------------------------------------- load_metrics


def test_load_metrics_is_long_form_with_every_point(store, ids):
    points = load_metrics(store)

    assert list(points.columns) == ["run_id", "metric", "step", "value", "timestamp"]
    assert points.dtypes.astype(str).tolist() == [
        "int64",
        "str",
        "int64",
        "float64",
        "datetime64[us, UTC]",
    ]
    assert len(points) == 4 * (1 + 2 + 2)  # 4 metrics per epoch
    curve = points[(points.run_id == ids["sgd"]) & (points.metric == "val_loss")]
    recorded = read(store / str(ids["sgd"]) / "metrics.json")["val_loss"]
    assert curve["step"].tolist() == recorded["steps"] == [1, 2]
    assert curve["value"].tolist() == recorded["values"]
    assert curve["timestamp"].tolist() == [pd.Timestamp(t) for t in recorded["timestamps"]]


def test_load_metrics_selects_runs_and_names(store, ids):
    points = load_metrics(store, run_ids=[ids["slow"]], names=["val_accuracy", "lr"])
    assert set(points["run_id"]) == {ids["slow"]}
    assert sorted(set(points["metric"])) == ["lr", "val_accuracy"] and len(points) == 4
    assert load_metrics(store, names="no_such_metric").empty
    with pytest.raises(RecordError, match="no run 99 in"):
        load_metrics(store, run_ids=[99])
    with pytest.raises(RecordError, match="no run 99 in"):
        load_runs(store, run_ids=[ids["slow"], 99])


# --------------------------------------------------------------------------- compare


def test_compare_keeps_only_config_that_differs(store, ids):
    order = [ids["slow"], ids["sgd"]]
    table = compare(store, order)

    assert list(table.index) == order
    config = [c for c in table.columns if c.startswith("config.")]
    assert set(config) == {"config.lr", "config.optimizer.name", "config.seed"}
    assert config[-1] == "config.seed"  # seeds differ in nearly every run: listed last
    assert table.loc[ids["sgd"], "config.optimizer.name"] == "sgd"
    assert table.loc[ids["slow"], "val_accuracy.max"] == load_runs(store).loc[ids["slow"], "result"]
    assert "config.epochs" in compare(store, ids.values()).columns  # debug ran 1 epoch
    assert list(compare(store, order, metrics="val_loss").columns[-5:]) == [
        "val_loss.last",
        "val_loss.min",
        "val_loss.max",
        "result",
        "note",
    ]


def test_compare_refuses_an_unknown_run(store):
    with pytest.raises(RecordError, match="no run 42 in"):
        compare(store, [1, 42])


# --------------------------------------------------------------------------- other stores


class ProtocolOnly:
    """A store with only the RunStore protocol and MongoDB's types (datetimes, artifact dicts)."""

    def __init__(self, root: Path):
        self._files = FileRunStore(root, cache=False)
        self.location = "protocol-only"

    def run_ids(self):
        return self._files.run_ids()

    def run(self, run_id):
        run = self._files.run(run_id)
        for key in ("start_time", "stop_time", "heartbeat"):
            run[key] = dt.datetime.fromisoformat(run[key]).replace(tzinfo=dt.UTC)
        run["artifacts"] = [{"name": name, "file_id": i} for i, name in enumerate(run["artifacts"])]
        return run

    def config(self, run_id):
        return self._files.config(run_id)

    def info(self, run_id):
        return self._files.info(run_id)

    def metrics(self, run_id):
        metrics = self._files.metrics(run_id)
        for series in metrics.values():
            series["timestamps"] = [dt.datetime.fromisoformat(t) for t in series["timestamps"]]
        return metrics


def test_a_store_with_only_the_protocol_gives_the_same_tables(store, ids):
    other = ProtocolOnly(store)
    pd.testing.assert_frame_equal(load_runs(other), load_runs(store))
    pd.testing.assert_frame_equal(load_metrics(other), load_metrics(store))
    pd.testing.assert_frame_equal(compare(other, [1, 2]), compare(store, [1, 2]))


@pytest.fixture
def mongo_url(monkeypatch) -> str:
    """A mongodb:// URL served by mongomock (as Sacred's own tests do)."""
    mongomock = pytest.importorskip("mongomock")
    pytest.importorskip("mongomock.gridfs").enable_gridfs_integration()

    mongo = pytest.importorskip("observers.mongo")
    client = mongomock.MongoClient()
    monkeypatch.setattr(mongo, "make_client", lambda url, **options: client)
    return "mongodb://localhost:27017/tables"


def test_mongodb_and_the_file_store_give_the_same_frames(store, mongo_url):
    sync = pytest.importorskip("observers.sync")
    sync.sync_store(store, mongo_url, echo=lambda line: None)

    from_files, from_mongo = load_runs(store), load_runs(mongo_url)
    pd.testing.assert_frame_equal(from_mongo, from_files)
    pd.testing.assert_frame_equal(load_metrics(mongo_url), load_metrics(store))
    pd.testing.assert_frame_equal(compare(mongo_url, [2, 3]), compare(store, [2, 3]))
    assert list(load_runs(mongo_url, lr=0.05).index) == list(load_runs(store, lr=0.05).index)


# --------------------------------------------------------------------------- damaged records


def copy_run(store: Path, source: int, target: int) -> Path:
    shutil.copytree(store / str(source), store / str(target))
    return store / str(target)


def edit_run(run_dir: Path, **changes) -> None:
    run = read(run_dir / "run.json")
    run.update(changes)
    write_json_atomic(run_dir / "run.json", run)


def to_journal(run_dir: Path, epochs: int) -> None:
    """Turn a sealed run back into one in progress: its first epochs in the journal, a torn line."""
    metrics = read(run_dir / "metrics.json")
    (run_dir / "metrics.json").unlink()
    lines = [
        json.dumps({"name": name, **{k: v[:epochs] for k, v in series.items()}})
        for name, series in metrics.items()
    ]
    (run_dir / JOURNAL).write_text("\n".join(lines) + '\n{"name": "val_loss", "st')


@pytest.fixture(scope="module")
def damaged(store, ids, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The module's runs plus copies of the sgd run, each broken or unfinished in one way."""
    root = tmp_path_factory.mktemp("damaged") / "runs"
    shutil.copytree(store, root)
    sgd, now = ids["sgd"], dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cases = {
        name: 10 + i
        for i, name in enumerate(
            [
                "bad_metrics",
                "no_run_json",
                "running",
                "dead",
                "failed",
                "bad_config",
                "empty",
                "interrupted",
            ]
        )
    }
    (copy_run(root, sgd, cases["bad_metrics"]) / "metrics.json").write_text(
        '{"val_loss": {"steps": [1,'
    )
    (copy_run(root, sgd, cases["no_run_json"]) / "run.json").unlink()
    running, start = copy_run(root, sgd, cases["running"]), now - dt.timedelta(seconds=30)
    edit_run(
        running,
        status="RUNNING",
        stop_time=None,
        result=None,
        start_time=start.isoformat(),
        heartbeat=(start + dt.timedelta(seconds=20)).isoformat(),
        meta={"process": this_process()},  # alive: this test's own process
    )
    to_journal(running, epochs=1)
    dead, start = copy_run(root, sgd, cases["dead"]), now - dt.timedelta(hours=3)
    edit_run(
        dead,
        status="RUNNING",
        stop_time=None,
        result=None,
        start_time=start.isoformat(),
        heartbeat=(start + dt.timedelta(seconds=5)).isoformat(),
        meta={**read(dead / "run.json")["meta"], "process": {"host": "elsewhere", "pid": 1}},
    )
    to_journal(dead, epochs=2)
    failed = copy_run(root, sgd, cases["failed"])
    edit_run(
        failed,
        status="FAILED",
        result=None,
        fail_trace=["Traceback", "RuntimeError: out of memory\n"],
    )
    (failed / "info.json").unlink()
    (copy_run(root, sgd, cases["bad_config"]) / "config.json").write_text('{\n  "lr": 0.0')
    (root / str(cases["empty"])).mkdir()
    edit_run(copy_run(root, sgd, cases["interrupted"]), status="INTERRUPTED")
    return root, cases


def test_every_damaged_or_unfinished_run_is_listed_with_what_is_known(damaged, ids):
    root, case = damaged
    runs = load_runs(root)
    status, note = runs["status"], runs["note"].fillna("")

    assert len(runs) == 3 + len(case)
    assert runs.loc[list(ids.values()), "note"].isna().all()  # the good runs are untouched
    bad = runs.loc[case["bad_metrics"]]
    assert bad["status"] == "COMPLETED" and note[case["bad_metrics"]].startswith(
        "metrics.json is damaged"
    )
    assert bad["config.lr"] == 0.05 and pd.isna(bad["val_accuracy.max"]) and bad["result"] > 0
    assert (
        status[case["no_run_json"]] == "DAMAGED"
        and note[case["no_run_json"]] == "run.json is missing"
    )
    assert status[case["empty"]] == "DAMAGED" and pd.isna(runs.loc[case["empty"], "start_time"])
    running = runs.loc[case["running"]]
    assert running["status"] == "RUNNING" and note[case["running"]] == ""
    assert running["duration"] == pd.Timedelta(seconds=20) and pd.isna(running["stop_time"])
    assert status[case["dead"]] == "DEAD" and "probably dead" in note[case["dead"]]
    assert runs.loc[case["dead"], "val_accuracy.max"] == runs.loc[ids["sgd"], "val_accuracy.max"]
    assert status[case["failed"]] == "FAILED" and note[case["failed"]] == ""
    assert pd.isna(runs.loc[case["failed"], "result"]) and runs.loc[
        case["failed"], "duration"
    ] > pd.Timedelta(0)
    assert note[case["bad_config"]].startswith("config.json is damaged")
    assert (
        pd.isna(runs.loc[case["bad_config"], "config.lr"])
        and runs.loc[case["bad_config"], "val_loss.max"] > 0
    )
    assert status[case["interrupted"]] == "INTERRUPTED"
    listed = load_runs(root, experiment="train", status=["RUNNING", "DEAD", "DAMAGED"])
    assert sorted(listed.index) == [
        case["running"],
        case["dead"],
    ]  # a DAMAGED run has no experiment
    assert list(load_runs(root, status="DAMAGED").index) == [case["no_run_json"], case["empty"]]


def test_the_journal_of_a_run_in_progress_gives_its_points_so_far(damaged, ids):
    root, case = damaged
    sealed = read(root / str(ids["sgd"]) / "metrics.json")["val_accuracy"]["values"]
    runs = load_runs(root)
    assert runs.loc[case["running"], "val_accuracy.last"] == sealed[0]  # one epoch in the journal
    assert runs.loc[case["dead"], "val_accuracy.last"] == sealed[-1]  # the torn line is skipped


def test_load_metrics_skips_an_unreadable_run_with_a_warning(damaged, ids):
    root, case = damaged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        points = load_metrics(root)
    left_out = sorted(str(warning.message) for warning in caught)
    assert left_out[0].startswith(f"run {case['bad_metrics']} left out: metrics.json is damaged (")
    assert left_out[1:] == [
        f"run {case['no_run_json']} left out: run.json is missing",
        f"run {case['empty']} left out: run.json is missing",
    ]
    assert case["bad_metrics"] not in set(points["run_id"])
    assert set(points[points.run_id == case["running"]]["step"]) == {1}
    assert len(points[points.run_id == ids["sgd"]]) == 8


def test_compare_ignores_config_of_runs_it_cannot_read(damaged, ids):
    root, case = damaged
    runs = load_runs(root, run_ids=[ids["sgd"], case["bad_config"], case["interrupted"]])
    assert runs.loc[case["bad_config"]].filter(like="config.").isna().all()
    assert differing_config(runs) == []  # the unreadable config is no difference


def test_a_run_is_read_while_it_is_being_written(tmp_path, repo_root):
    """Read the store after every log line of a real run (heartbeats every 50 ms); never an error."""
    root = tmp_path / "live"
    command = [
        sys.executable,
        str(repo_root / "experiments" / "train.py"),
        "-b",
        "0.05",
        "-R",
        str(root),
        "with",
        "epochs=6",
        "limit_batches=5",
        "seed=1",
        "progress=False",
    ]
    process = subprocess.Popen(
        command, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen, log = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for line in process.stderr:  # the run's own progress paces the reads
            log.append(line)
            if root.is_dir():
                runs = load_runs(root)
                load_metrics(root)
                seen += [(status, note) for status, note in zip(runs["status"], runs["note"])]
    assert process.wait() == 0, "".join(log)[-2000:]
    assert {str(w.message) for w in caught} <= {"run 1 left out: run.json is missing"}
    final = load_runs(root)
    assert final["status"].tolist() == ["COMPLETED"] and final["note"].isna().all()
    assert final.loc[1, "val_accuracy.max"] == final.loc[1, "result"]
    assert "RUNNING" in {status for status, _ in seen}
    assert {status for status, _ in seen} <= {"RUNNING", "COMPLETED", "DAMAGED"}
    assert all(note == "run.json is missing" for status, note in seen if status == "DAMAGED")


def test_a_running_run_whose_process_is_gone_is_read_as_dead(tmp_path):
    """Issue 19, rule 2: pid and start time on this host tell a dead run; no record is changed."""
    ended = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, ingredients.processes as p; print(json.dumps(p.this_process()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    me = this_process()
    reused = {**me, "start": me["start"] - 1}  # our pid, another process's start
    for run_id, recorded in enumerate([json.loads(ended.stdout), reused, me], start=1):
        (tmp_path / str(run_id)).mkdir()
        run = {"status": "RUNNING", "meta": {"process": recorded}, "experiment": {"name": "x"}}
        (tmp_path / str(run_id) / "run.json").write_text(json.dumps(run))
        (tmp_path / str(run_id) / "config.json").write_text("{}")
    records = sorted(p.read_bytes() for p in tmp_path.glob("[0-9]*/*"))
    runs = load_runs(tmp_path)
    assert list(runs["status"]) == ["DEAD", "DEAD", "RUNNING"]
    assert "has ended" in runs.loc[1, "note"] and "has ended" in runs.loc[2, "note"]
    assert sorted(p.read_bytes() for p in tmp_path.glob("[0-9]*/*")) == records


@pytest.mark.parametrize("chunks", [True, False], ids=["chunks", "sacred-metric-documents"])
def test_mongodb_rows_come_from_one_projected_query(store, mongo_url, monkeypatch, chunks):
    """load_runs reads no run document by itself and no run's metrics by themselves, and gives
    what reading run by run gives (metrics from the chunks, or Sacred's own documents)."""
    sync = pytest.importorskip("observers.sync")
    from observers.mongo_store import MongoRunStore

    sync.sync_store(store, mongo_url, echo=lambda line: None)
    mongo = MongoRunStore(mongo_url)
    if not chunks:
        mongo.db["metrics_chunks"].drop()
    run_by_run = load_runs(RunByRun(mongo))
    assert len(run_by_run) == len(ids_of(store)) and run_by_run["val_accuracy.max"].notna().all()

    def refused(*args):
        raise AssertionError("read run by run")

    some = load_runs(RunByRun(mongo), run_ids=[3, 1])
    monkeypatch.setattr(MongoRunStore, "_document", refused)
    monkeypatch.setattr(MongoRunStore, "metrics", refused)
    monkeypatch.setattr(MongoRunStore, "run_ids", refused)  # nor lists every id first
    pd.testing.assert_frame_equal(load_runs(mongo), run_by_run, check_exact=True)
    pd.testing.assert_frame_equal(
        load_runs(mongo, status="COMPLETED"), run_by_run, check_exact=True
    )
    pd.testing.assert_frame_equal(load_runs(mongo, run_ids=[3, 1]), some, check_exact=True)
    with pytest.raises(RecordError, match="no run 42 in"):
        load_runs(mongo, run_ids=[1, 42])


def test_mongodb_filters_select_by_status_and_a_damaged_run_stays_alone(store, mongo_url):
    """The server narrows by status (a FAILED run is found, and left out of COMPLETED, in
    load_runs and an ls page); a DEAD run, recorded RUNNING, is found by reading; one run's
    metric chunks of another shape leave that run's summaries empty, not the listing."""
    sync = pytest.importorskip("observers.sync")
    from observers.mongo_store import MongoRunStore
    from observers.tables import runs_page

    sync.sync_store(store, mongo_url, echo=lambda line: None)
    mongo, every = MongoRunStore(mongo_url), ids_of(store)
    failed, dead, damaged = every[1], every[2], every[0]
    mongo.db["runs"].update_one({"_id": failed}, {"$set": {"status": "FAILED"}})
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    mongo.db["runs"].update_one(
        {"_id": dead},
        {
            "$set": {"status": "RUNNING", "reprolab.times.heartbeat": old.isoformat()},
            "$unset": {"meta": 1},  # no process to look for: the heartbeat decides
        },
    )
    for chunk, values in ((98, "not a list"), (99, [1.0])):  # joined, they raise a TypeError
        mongo.db["metrics_chunks"].insert_one(
            {
                "run_id": damaged,
                "name": "val_accuracy",
                "chunk": chunk,
                "steps": [9],
                "values": values,
                "timestamps": ["2020-01-01T00:00:00"],
            }
        )
    assert list(load_runs(mongo, status="FAILED").index) == [failed]
    assert list(load_runs(mongo, status="DEAD").index) == [dead]
    assert list(load_runs(mongo, status="COMPLETED").index) == [damaged]
    page, total = runs_page(mongo, 1, status=["FAILED", "COMPLETED"])
    assert total == 2 and list(page.index) == [max(failed, damaged)]
    every_run = load_runs(mongo)
    assert pd.isna(every_run.loc[damaged, "val_accuracy.max"])
    assert "not in Sacred's shape" in every_run.loc[damaged, "note"]
    assert every_run.drop(index=damaged)["val_accuracy.max"].notna().all()


def ids_of(root: Path) -> list[int]:
    return FileRunStore(root).run_ids()


def test_a_step_past_64_bits_is_missing_and_the_other_points_stay(store, ids, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    metrics_file = copy / str(ids["sgd"]) / "metrics.json"
    metrics = read(metrics_file)
    steps = metrics["val_accuracy"]["steps"]
    steps[0] = 2**63  # one Sacred's int64 steps never hold: planted or damaged
    write_json_atomic(metrics_file, metrics)
    points = load_metrics(copy, run_ids=[ids["sgd"]], names=["val_accuracy"])
    assert len(points) == len(steps)
    assert pd.isna(points["step"].iloc[0])
    assert list(points["step"].iloc[1:]) == steps[1:]
