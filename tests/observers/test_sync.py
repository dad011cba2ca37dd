"""`reprolab sync`: file-store runs uploaded into MongoDB (mongomock) once, and read back equal."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import bson
import mongomock
import pytest
from mongomock.gridfs import enable_gridfs_integration

import observers.mongo as om
from experiments.cli import main as reprolab
from observers.mongo_bounds import CHUNKS_COLLECTION
from observers.mongo_store import MongoRunStore
from observers.store import FileRunStore, RecordError
from observers.sweep_records import FileSweepRecords
from observers.sync import sync_store

PASSWORD = "pw-" + secrets.token_hex(8)  # made at run time: recorded sources cannot contain it
URL = f"mongodb://reprolab:{PASSWORD}@127.0.0.1:27017/sacred?authSource=admin"
QUIET = {"echo": lambda line: None}

enable_gridfs_integration()


@pytest.fixture(scope="module")
def file_store(tmp_path_factory) -> Path:
    """Two short real runs in a file store (seeds 1 and 2)."""
    from experiments.train import ex

    store = tmp_path_factory.mktemp("sync") / "runs"
    for seed in (1, 2):
        updates = {"seed": seed, "epochs": 2, "limit_batches": 3, "progress": False}
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            ex.run(config_updates=updates, options={"--store": str(store)})
    return store


@pytest.fixture
def client(monkeypatch):
    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    return client


def counts(client) -> dict[str, int]:
    db = client["sacred"]
    return {name: db[name].count_documents({}) for name in db.list_collection_names()}


def without_storage_paths(run: dict) -> dict:
    """run.json minus what names storage locations (GridFS ids vs. _sources paths)."""
    run = json.loads(json.dumps(run))
    run["experiment"].pop("sources")
    run.pop("resources", None)
    return run


def test_sync_uploads_every_run_once(file_store, client):
    report = sync_store(file_store, URL, **QUIET)
    assert report.uploaded == [(1, 1), (2, 2)] and not (report.present or report.unreadable)
    before = counts(client)
    again = sync_store(file_store, URL, **QUIET)
    assert again.present == [(1, 1), (2, 2)] and again.uploaded == again.completed == []
    assert counts(client) == before


def test_synced_runs_read_back_equal_to_the_originals(file_store, client):
    sync_store(file_store, URL, **QUIET)
    local, mongo = FileRunStore(file_store), MongoRunStore(URL)
    assert mongo.run_ids() == local.run_ids() == [1, 2]
    for run_id in local.run_ids():
        assert without_storage_paths(mongo.run(run_id)) == without_storage_paths(local.run(run_id))
        assert mongo.config(run_id) == local.config(run_id)
        assert mongo.info(run_id) == local.info(run_id)
        assert mongo.metrics(run_id) == local.metrics(run_id)
        assert mongo.sources(run_id) == local.sources(run_id)
        for name in local.run(run_id)["artifacts"]:
            assert mongo.artifact(run_id, name) == local.artifact(run_id, name)


def test_synced_runs_follow_the_schema_omniboard_reads(file_store, client):
    sync_store(file_store, URL, **QUIET)
    db = client["sacred"]
    for document in db["runs"].find():
        assert isinstance(document["_id"], int) and document["reprolab"]["complete"] is True
        for ref in document["info"]["metrics"]:
            metric = db["metrics"].find_one({"_id": bson.ObjectId(ref["id"])})
            assert (metric["run_id"], metric["name"]) == (document["_id"], ref["name"])
        for artifact in document["artifacts"]:
            assert (
                db["fs.files"]
                .find_one({"_id": artifact["file_id"]})["filename"]
                .startswith(f"artifact://runs/{document['_id']}/")
            )
    local = FileRunStore(file_store)
    distinct = {
        (name, hashlib.md5(data).hexdigest())
        for run_id in local.run_ids()
        for name, data in local.sources(run_id).items()
    }
    assert db["fs.files"].count_documents({"md5": {"$exists": True}}) == len(distinct)


def test_listing_and_tables_are_the_same_from_both_stores(file_store, client, capsys):
    sync_store(file_store, URL, **QUIET)
    assert reprolab(["ls", "--store", str(file_store)]) == 0
    from_files = capsys.readouterr().out
    assert reprolab(["ls", "--store", URL]) == 0
    assert capsys.readouterr().out == from_files
    tables = pytest.importorskip("observers.tables")
    runs_from_files, runs_from_mongo = tables.load_runs(file_store), tables.load_runs(URL)
    assert list(runs_from_mongo.columns) == list(runs_from_files.columns)
    assert runs_from_mongo.dtypes.to_dict() == runs_from_files.dtypes.to_dict()
    import pandas as pd

    pd.testing.assert_frame_equal(runs_from_mongo, runs_from_files)
    pd.testing.assert_frame_equal(tables.load_metrics(URL), tables.load_metrics(file_store))


def test_sync_uploads_each_artifact_once(file_store, client, tmp_path):
    """A run.json listing last.pt twice (an older file store) still gives one entry, one file."""
    store = tmp_path / "runs"
    shutil.copytree(file_store, store)
    shutil.rmtree(store / "2")
    run_json = store / "1" / "run.json"
    run = json.loads(run_json.read_text())
    run["artifacts"] = ["last.pt", *run["artifacts"]]
    run_json.write_text(json.dumps(run))
    assert sync_store(store, URL, **QUIET).uploaded == [(1, 1)]
    db = client["sacred"]
    names = [a["name"] for a in db["runs"].find_one({"_id": 1})["artifacts"]]
    assert sorted(names) == sorted(set(run["artifacts"])) and "last.pt" in names
    assert db["fs.files"].count_documents({"filename": "artifact://runs/1/last.pt"}) == 1
    assert MongoRunStore(URL).artifact(1, "last.pt") == (store / "1" / "last.pt").read_bytes()


def test_a_base_dir_of_another_shape_still_uploads_its_sources(file_store, client, tmp_path):
    """run.json is data: a base_dir that is not text (found by the store fuzzer: null) names
    the sources by their own names instead of failing the whole sync."""
    store = tmp_path / "runs"
    shutil.copytree(file_store, store)
    run_json = store / "1" / "run.json"
    run = json.loads(run_json.read_text())
    run["experiment"]["base_dir"] = None
    run_json.write_text(json.dumps(run))
    assert sync_store(store, URL, **QUIET).uploaded == [(1, 1), (2, 2)]
    assert MongoRunStore(URL).sources(1) == FileRunStore(store).sources(1)


def test_cut_short_upload_is_completed_in_place(file_store, client):
    sync_store(file_store, URL, **QUIET)
    before, db = counts(client), client["sacred"]
    db["runs"].update_one({"_id": 2}, {"$set": {"reprolab.complete": False, "status": "RUNNING"}})
    db[CHUNKS_COLLECTION].delete_many({"run_id": 2})
    report = sync_store(file_store, URL, **QUIET)
    assert report.completed == [(2, 2)] and report.present == [(1, 1)]
    assert counts(client) == before
    assert MongoRunStore(URL).metrics(2) == FileRunStore(file_store).metrics(2)


def test_sync_command_prints_counts_and_refuses_bad_input(
    file_store, client, tmp_path, capsys, monkeypatch
):
    assert reprolab(["sync", str(file_store), "--to", URL]) == 0
    out = capsys.readouterr().out
    assert "run 1: uploaded as MongoDB run 1 (COMPLETED" in out
    assert out.strip().endswith(
        "2 uploaded, 0 completed, 0 already there, 0 still running, 0 unreadable"
    )
    assert PASSWORD not in out and "mongodb://reprolab:***@127.0.0.1:27017/sacred" in out

    monkeypatch.delenv("REPROLAB_MONGO_URL", raising=False)
    assert reprolab(["sync", str(file_store)]) == 2
    assert "no MongoDB to sync to" in capsys.readouterr().err
    assert reprolab(["sync", str(tmp_path / "missing"), "--to", URL]) == 2
    assert "missing" in capsys.readouterr().err

    damaged = tmp_path / "damaged"
    shutil.copytree(file_store, damaged)
    shutil.copytree(damaged / "1", damaged / "3")
    (damaged / "3" / "config.json").write_text("{not json")
    before = counts(client)
    assert reprolab(["sync", str(damaged), "--to", URL]) == 1
    out = capsys.readouterr().out
    assert "run 3: not uploaded, its record cannot be read" in out and "1 unreadable" in out
    assert counts(client) == before  # nothing half-written


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> tuple[Path, str]:
    """A file store holding a sweep of two configs: its record and one short run of each."""
    from experiments.train import ex

    store = tmp_path_factory.mktemp("sweep") / "runs"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert (
            reprolab(
                [
                    "sweep",
                    "--store",
                    str(store),
                    "--print-commands",
                    "with",
                    "lr=[0.1, 0.02]",
                    "epochs=2",
                    "limit_batches=3",
                    "progress=False",
                ]
            )
            == 0
        )
    (sweep_id,) = FileSweepRecords(store).ids()
    for index, config in enumerate(FileSweepRecords(store).find(sweep_id)["configs"]):
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            ex.run(
                config_updates=config,
                options={"--store": str(store), "--sweep": f"{sweep_id}:{index}"},
            )
    return store, sweep_id


def test_a_synced_sweep_reads_the_same_from_mongodb(sweep_store, client, capsys):
    store, sweep_id = sweep_store
    shown = {}
    for where in (str(store), URL):
        if where == URL:
            assert reprolab(["sync", str(store), "--to", URL]) == 0
            assert f"sweep {sweep_id}: copied (2 configs)" in capsys.readouterr().out
        shown[where] = []
        for command in (
            ["sweep", "--status", sweep_id],
            ["ls", "--sweep", sweep_id],
            ["compare", "--sweep", sweep_id, "--metric", "val_accuracy"],
        ):
            assert reprolab([*command, "--store", where]) == 0
            shown[where].append(capsys.readouterr().out)
    assert shown[URL] == shown[str(store)]
    status, listing, ranking = shown[URL]
    assert status.strip().endswith("2 completed") and "varied: lr" in ranking
    assert len(listing.splitlines()) == 3  # the header and the sweep's two runs
    record = client["sacred"]["sweeps"].find_one({"_id": sweep_id})
    assert record["store"] == URL.replace(PASSWORD, "***") and PASSWORD not in str(record)
    again = sync_store(store, URL, **QUIET)
    assert (
        again.sweeps == {sweep_id: "already there"}
        and "sweeps: 0 copied, 0 updated, 1 already" in again.summary()
    )


def test_sync_keeps_both_sides_submissions_and_refuses_another_sweep_of_the_same_id(
    sweep_store, client, tmp_path
):
    store, sweep_id = sweep_store
    sync_store(store, URL, **QUIET)
    sweeps = client["sacred"]["sweeps"]
    later = {"engine": "local", "started": "2999-01-01T00:00:00+00:00", "indices": [1]}
    sweeps.update_one({"_id": sweep_id}, {"$push": {"attempts": later}})  # resumed against MongoDB
    assert sync_store(store, URL, **QUIET).sweeps == {sweep_id: "already there"}
    assert sweeps.find_one({"_id": sweep_id})["attempts"][-1] == later

    sweeps.update_one({"_id": sweep_id}, {"$set": {"created": "1999-01-01T00:00:00+00:00"}})
    before = counts(client)
    copy = tmp_path / "runs"
    shutil.copytree(store, copy)
    with pytest.raises(
        RecordError,
        match=f"sweep {sweep_id} of .* is not the sweep {sweep_id} already in .*nothing was synced",
    ):
        sync_store(copy, URL, **QUIET)
    assert counts(client) == before
