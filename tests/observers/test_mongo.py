"""Recording into MongoDB: Omniboard's schema, reading back, the 16 MB bound, outages, credentials.

Most runs are recorded through the real path into mongomock (as Sacred's own tests do) by
replacing observers.mongo.make_client. One test uses a closed local port for a server that is
down. The `mongo` tests use a real wire-protocol server: nx-27017 (tests/observers/conftest.py),
which they also kill and restart, and the server at REPROLAB_TEST_MONGO_URL when it is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import bson
import gridfs
import mongomock
import pytest
from mongomock.gridfs import enable_gridfs_integration
from pymongo.errors import AutoReconnect
from sacred.serializer import flatten

import observers.mongo as om
from experiments.cli import main as reprolab
from observers.credentials import redact, url_secrets
from observers.evaluations import add_evaluation
from observers.mongo_bounds import CAPTURED_OUT_BYTES, CHUNKS_COLLECTION, VIEW_POINTS
from observers.mongo_store import MongoRunStore
from observers.store import FileRunStore, RecordError
from observers.sync import sync_store
from tests.helpers import REPO_ROOT, TRAIN

PASSWORD = "pw-" + secrets.token_hex(8)  # made at run time: recorded sources cannot contain it
URL = f"mongodb://reprolab:{PASSWORD}@127.0.0.1:27017/sacred?authSource=admin"
SHORT_RUN = {"epochs": 2, "limit_batches": 3, "progress": False}
MONGO_LIMIT = 16 * 1024 * 1024

enable_gridfs_integration()


def record(store: str, fallback: Path, **updates):
    """Train a short real run in this process into store; return the run and everything printed."""
    from experiments.train import ex

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setenv(om.FALLBACK_VARIABLE, str(fallback))
        run = ex.run(config_updates={**SHORT_RUN, **updates}, options={"--store": store})
    return run, out.getvalue() + err.getvalue()


def documents(client) -> list[dict]:
    """Every document of every collection (GridFS chunks included)."""
    db = client["sacred"]
    return [doc for name in db.list_collection_names() for doc in db[name].find()]


def assert_no_password(client=None, texts=(), directories=()) -> None:
    for document in documents(client) if client is not None else []:
        assert PASSWORD.encode() not in bson.encode(document), document.get("_id")
    for text in texts:
        assert PASSWORD not in text
    for directory in directories:
        for path in Path(directory).rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One short training run recorded into mongomock through mongo_observers."""
    client = mongomock.MongoClient()
    fallback = tmp_path_factory.mktemp("mongo") / "runs_fallback"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(om, "make_client", lambda url, **options: client)
        run, output = record(URL, fallback)
    return {"client": client, "run": run, "output": output, "fallback": fallback}


@pytest.fixture
def mongo_store(recorded, monkeypatch):
    monkeypatch.setattr(om, "make_client", lambda url, **options: recorded["client"])
    return MongoRunStore(URL)


# ------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "mongodb://user:pw@host:27017/sacred?authSource=admin",
            "mongodb://user:***@host:27017/sacred?authSource=admin",
        ),
        ("mongodb://u:p%40ss@h1:1,h2:2/db", "mongodb://u:***@h1:1,h2:2/db"),
        ("mongodb+srv://a:b@cluster.example.net/x", "mongodb+srv://a:***@cluster.example.net/x"),
        ("mongodb://user@host/db", "mongodb://user@host/db"),
        ("https://ghp_token123@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("https://user:tok@gitlab.com/o/r.git", "https://user:***@gitlab.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        (
            "failed: mongodb://u:s3cret@h/db?tls=true refused",
            "failed: mongodb://u:***@h/db?tls=true refused",
        ),
        ("/home/me/runs", "/home/me/runs"),
    ],
)
def test_redact_hides_passwords_and_tokens(text, expected):
    assert redact(text) == expected


def test_connect_gives_up_within_seconds_unless_the_url_says_otherwise(monkeypatch):
    seen = []

    def spy(url, **options):
        seen.append(options)
        return mongomock.MongoClient()

    monkeypatch.setattr(om, "make_client", spy)
    assert om.connect(URL).name == "sacred"
    assert seen[0]["serverSelectionTimeoutMS"] <= 3000 and seen[0]["connectTimeoutMS"] <= 3000
    om.connect("mongodb://h:27017/other?serverSelectionTimeoutMS=9000")
    assert "serverSelectionTimeoutMS" not in seen[1]


def test_malformed_url_is_refused_before_the_run_in_one_sentence(tmp_path):
    from experiments.base import ConfigurationError

    with pytest.raises(ConfigurationError) as error:
        record(f"mongodb://u:{PASSWORD}@host:notaport/sacred", tmp_path / "fallback")
    assert "not a valid MongoDB URL: mongodb://u:***@host:notaport/sacred" in str(error.value)
    assert PASSWORD not in str(error.value) and not (tmp_path / "fallback").exists()


def test_password_appears_nowhere(recorded):
    run = recorded["client"]["sacred"]["runs"].find_one()
    assert run["meta"]["options"]["--store"] == URL.replace(PASSWORD, "***")
    assert "REPROLAB_MONGO_URL" not in run["host"].get("ENV", {})
    assert_no_password(recorded["client"], [recorded["output"]], [recorded["fallback"]])


# ------------------------------------------------------------------------------ recording


def test_run_is_recorded_in_the_schema_omniboard_reads(recorded):
    db, run = recorded["client"]["sacred"], recorded["run"]
    document = db["runs"].find_one()
    assert document["_id"] == run._id == 1 and isinstance(document["_id"], int)
    assert document["status"] == "COMPLETED" and document["reprolab"]["complete"] is True
    assert isinstance(document["start_time"], dt.datetime)
    refs = document["info"]["metrics"]
    assert sorted(ref["name"] for ref in refs) == ["lr", "train_loss", "val_accuracy", "val_loss"]
    for ref in refs:
        metric = db["metrics"].find_one({"_id": bson.ObjectId(ref["id"])})
        assert metric["run_id"] == 1 and metric["name"] == ref["name"] and metric["steps"] == [1, 2]
    fs = gridfs.GridFS(db)
    assert {"last.pt", "best.pt"} <= {a["name"] for a in document["artifacts"]}
    for artifact in document["artifacts"]:
        assert fs.get(artifact["file_id"]).filename == f"artifact://runs/1/{artifact['name']}"
    assert all(fs.exists(file_id) for _, file_id in document["experiment"]["sources"])
    assert "epoch 2:" in document["captured_out"]


def test_record_reads_back_as_the_run_was(mongo_store, recorded):
    run = recorded["run"]
    assert mongo_store.run_ids() == [1]
    assert mongo_store.config(1) == json.loads(json.dumps(flatten(run.config)))
    assert mongo_store.info(1) == json.loads(json.dumps(flatten(run.info)))
    record = mongo_store.run(1)
    start = run.start_time.replace(tzinfo=dt.UTC).isoformat()  # Sacred's time is naive UTC
    assert record["status"] == "COMPLETED" and record["start_time"] == start
    assert {"best.pt", "last.pt"} <= set(record["artifacts"])
    for name in ("last.pt", "best.pt"):
        digest = hashlib.sha256(mongo_store.artifact(1, name)).hexdigest()
        assert digest == run.info["checkpoints"][name]["sha256"]
    train_py = (REPO_ROOT / "experiments/train.py").read_bytes()
    assert mongo_store.sources(1)["experiments/train.py"] == train_py
    accuracy = mongo_store.metrics(1)["val_accuracy"]
    assert accuracy["steps"] == [1, 2] and max(accuracy["values"]) == run.result
    with pytest.raises(RecordError, match="no artifact 'nope.pt'"):
        mongo_store.artifact(1, "nope.pt")


def test_tables_from_mongodb_have_timezone_aware_utc_times(mongo_store, recorded):
    from observers import load_metrics, load_runs

    runs, points = load_runs(mongo_store), load_metrics(mongo_store)
    start = recorded["run"].start_time.replace(tzinfo=dt.UTC)
    assert (
        str(runs["start_time"].dtype) == "datetime64[us, UTC]"
        and runs.loc[1, "start_time"] == start
    )
    assert str(points["timestamp"].dtype) == "datetime64[us, UTC]"
    assert (points["timestamp"] >= start).all() and (
        points["timestamp"] <= runs.loc[1, "stop_time"]
    ).all()


def test_checkpoints_saved_every_epoch_are_stored_once(recorded, mongo_store):
    """The 2-epoch run added last.pt after each epoch: one entry and one GridFS file remain."""
    db = recorded["client"]["sacred"]
    names = [a["name"] for a in db["runs"].find_one({"_id": 1})["artifacts"]]
    assert len(names) == len(set(names)) and {"best.pt", "last.pt"} <= set(names)
    files = [f["filename"] for f in db["fs.files"].find({"filename": {"$regex": "^artifact://"}})]
    assert sorted(files) == sorted(f"artifact://runs/1/{name}" for name in names)
    assert mongo_store.run(1)["artifacts"] == names


def test_artifact_added_again_replaces_the_earlier_one(monkeypatch, tmp_path):
    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    observer = om.MongoWithFallback(URL, tmp_path / "fallback")
    ex_info = {
        "name": "ckpt",
        "base_dir": str(REPO_ROOT),
        "sources": [],
        "dependencies": [],
        "repositories": [],
        "mainfile": None,
    }
    run_id = observer.started_event(
        ex_info, "main", {"hostname": "h"}, dt.datetime(2024, 1, 1), {}, {}, None
    )
    for name, data in [
        ("last.pt", b"epoch 1"),
        ("best.pt", b"best 1"),
        ("last.pt", b"epoch 2"),
        ("last.pt", b"epoch 3"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        observer.artifact_event(name, str(path))

    db, fs = client["sacred"], gridfs.GridFS(client["sacred"])
    artifacts = db["runs"].find_one({"_id": run_id})["artifacts"]
    assert [a["name"] for a in artifacts] == ["last.pt", "best.pt"]  # replaced in its place
    last = list(db["fs.files"].find({"filename": f"artifact://runs/{run_id}/last.pt"}))
    assert [f["_id"] for f in last] == [artifacts[0]["file_id"]]
    assert fs.get(artifacts[0]["file_id"]).read() == b"epoch 3"
    assert db["fs.files"].count_documents({}) == 2
    assert MongoRunStore(URL).artifact(run_id, "last.pt") == b"epoch 3"
    local = FileRunStore(tmp_path / "fallback")  # the local copy, kept while the run goes on
    assert local.run(1)["artifacts"] == ["last.pt", "best.pt"]
    assert local.artifact(1, "last.pt") == b"epoch 3"


def test_record_with_repeated_artifacts_reads_the_latest(mongo_store, recorded):
    """A run recorded before artifacts were replaced lists a name once and reads its last file."""
    db = recorded["client"]["sacred"]
    old = db["runs"].find_one({"_id": 1})
    file_id = gridfs.GridFS(db).put(b"older", filename="artifact://runs/1/last.pt")
    repeated = [{"name": "last.pt", "file_id": file_id}, *old["artifacts"]]
    db["runs"].update_one({"_id": 1}, {"$set": {"artifacts": repeated}})
    try:
        listed = mongo_store.run(1)["artifacts"]
        assert sorted(listed) == sorted(a["name"] for a in old["artifacts"])
        latest = next(a["file_id"] for a in old["artifacts"] if a["name"] == "last.pt")
        assert (
            mongo_store.artifact(1, "last.pt") == gridfs.GridFS(db).get(latest).read() != b"older"
        )
    finally:
        db["runs"].update_one({"_id": 1}, {"$set": {"artifacts": old["artifacts"]}})
        gridfs.GridFS(db).delete(file_id)


def test_complete_run_leaves_no_local_copy(recorded):
    assert FileRunStore(recorded["fallback"]).run_ids() == []
    assert "unreachable" not in recorded["output"] and "incomplete" not in recorded["output"]


def test_reprolab_commands_take_a_mongodb_url(recorded, monkeypatch, capsys):
    monkeypatch.setattr(om, "make_client", lambda url, **options: recorded["client"])
    assert reprolab(["ls", "--store", URL]) == 0
    by_option = capsys.readouterr().out
    monkeypatch.setenv("REPROLAB_MONGO_URL", URL)
    assert reprolab(["ls"]) == 0
    assert capsys.readouterr().out == by_option
    assert "COMPLETED" in by_option and PASSWORD not in by_option


# ------------------------------------------------------------------------------ outages


@pytest.fixture
def failing_mongo(monkeypatch):
    """mongomock that goes away after a given number of writes to the runs collection."""
    client, state = mongomock.MongoClient(), {"down": False, "runs_writes_left": None}
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    for method in ("insert_one", "update_one", "replace_one", "find_one", "find", "delete_many"):
        original = getattr(mongomock.collection.Collection, method)

        def guarded(self, *args, _original=original, _method=method, **kwargs):
            if self.name == "runs" and _method in ("insert_one", "update_one"):
                left = state["runs_writes_left"]
                if left is not None:
                    state["down"] = state["down"] or left == 0
                    state["runs_writes_left"] = left - 1
            if state["down"]:
                raise AutoReconnect("connection closed")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(mongomock.collection.Collection, method, guarded)
    return client, state


def test_outage_mid_run_keeps_full_record_and_sync_completes_it(failing_mongo, tmp_path):
    client, state = failing_mongo
    state["runs_writes_left"] = 1  # the run document is inserted, then the server goes away
    run, output = record(URL, tmp_path / "fallback")
    assert run.status == "COMPLETED"
    assert output.count("MongoDB stopped recording run 1 (connection closed)") == 1
    assert output.count("MongoDB's record of run 1 is incomplete") == 1
    local = FileRunStore(tmp_path / "fallback")
    assert local.run_ids() == [1] and local.run(1)["status"] == "COMPLETED"
    assert {"last.pt", "best.pt"} <= set(local.run(1)["artifacts"])
    assert all(len(series["steps"]) == 2 for series in local.metrics(1).values())

    state.update(down=False, runs_writes_left=None)  # the server is back
    db = client["sacred"]
    assert db["runs"].find_one({"_id": 1})["status"] == "RUNNING"
    report = sync_store(tmp_path / "fallback", URL, echo=lambda line: None)
    assert report.completed == [(1, 1)] and report.uploaded == []
    mongo = MongoRunStore(URL)
    assert mongo.run(1)["status"] == "COMPLETED" and mongo.metrics(1) == local.metrics(1)
    assert mongo.artifact(1, "last.pt") == local.artifact(1, "last.pt")
    artifacts = db["fs.files"].count_documents({"filename": {"$regex": "^artifact://"}})
    assert artifacts == len(local.run(1)["artifacts"])  # what the outage half-uploaded is gone
    counts = {name: db[name].count_documents({}) for name in db.list_collection_names()}
    assert sync_store(tmp_path / "fallback", URL, echo=lambda line: None).present == [(1, 1)]
    assert {name: db[name].count_documents({}) for name in db.list_collection_names()} == counts
    assert_no_password(client, [output], [tmp_path / "fallback"])


def test_unreachable_server_records_locally_and_says_where(tmp_path, capsys):
    """A closed local port: the connection is refused, the run goes to the fallback store."""
    url = f"mongodb://reprolab:{PASSWORD}@127.0.0.1:1/sacred"
    result = subprocess.run(
        [sys.executable, str(TRAIN), "with", "debug", "progress=False"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "REPROLAB_MONGO_URL": url, om.FALLBACK_VARIABLE: ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if "is unreachable" in line]
    assert len(warnings) == 1
    assert "mongodb://reprolab:***@127.0.0.1:1/sacred" in warnings[0]
    assert "recording this run in runs_fallback/1 instead" in warnings[0]
    assert_no_password(None, [result.stdout, result.stderr], [tmp_path])
    assert reprolab(["ls", "--store", str(tmp_path / "runs_fallback")]) == 0
    assert "COMPLETED" in capsys.readouterr().out


def test_reading_an_unreachable_server_is_one_sentence(capsys):
    url = f"mongodb://reprolab:{PASSWORD}@127.0.0.1:1/sacred"
    assert reprolab(["ls", "--store", url]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "reprolab: error: cannot reach MongoDB at mongodb://reprolab:***@127.0.0.1:1/sacred"
    )
    assert len(error.splitlines()) == 1 and PASSWORD not in error


# ------------------------------------------------------------------------------ 16 MB bound


@pytest.mark.slow
def test_long_run_keeps_every_document_under_16_mb(monkeypatch):
    """2M points of one metric and 20 MB of output: bounded documents, every point kept."""
    db = mongomock.MongoClient()["sacred"]
    observer = om.BoundedMongoObserver.on(db, "long-run")
    start = dt.datetime(2024, 1, 1)
    ex_info = {
        "name": "long",
        "base_dir": str(REPO_ROOT),
        "sources": [],
        "dependencies": [],
        "repositories": [],
        "mainfile": None,
    }
    run_id = observer.started_event(ex_info, "main", {"hostname": "h"}, start, {}, {}, None)
    batch = 200_000
    stamps = [start + dt.timedelta(milliseconds=i) for i in range(batch)]
    output = "".join(f"step {i}: loss fine\n" for i in range(1_000_000))  # about 20 MB
    for first in range(0, 2_000_000, batch):
        steps = list(range(first, first + batch))
        observer.log_metrics(
            {"loss": {"steps": steps, "values": [s / 7 for s in steps], "timestamps": stamps}}, {}
        )
        so_far = output[: (first // batch + 1) * 2_000_000]
        observer.heartbeat_event({"lr": 0.1}, so_far, start, None)
    observer.heartbeat_event({"lr": 0.1}, output, start, None)
    observer.completed_event(start, 1.0)

    assert max(len(bson.encode(document)) for document in documents(db.client)) < MONGO_LIMIT
    view = db["metrics"].find_one({"run_id": run_id, "name": "loss"})
    every = view["kept_every"]
    assert len(view["steps"]) <= VIEW_POINTS and view["steps"][:2] == [0, every]
    assert view["steps"][-1] > 2_000_000 - 2 * every  # the whole curve, evenly thinned
    document = db["runs"].find_one({"_id": run_id})
    assert len(document["captured_out"].encode()) <= CAPTURED_OUT_BYTES + 100
    assert document["captured_out"].endswith(output[-1000:])
    whole = gridfs.GridFS(db).get(document["reprolab"]["captured_out_file"]).read().decode()
    assert whole == output
    monkeypatch.setattr(om, "make_client", lambda url, **options: db.client)
    loss = MongoRunStore(URL).metrics(run_id)["loss"]
    assert loss["steps"] == list(range(2_000_000)) and loss["values"][-1] == 1_999_999 / 7


def test_oversized_info_is_trimmed_and_the_local_copy_kept(monkeypatch, tmp_path):
    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    observer = om.MongoWithFallback(URL, tmp_path / "fallback")
    start = dt.datetime(2024, 1, 1)
    ex_info = {
        "name": "big",
        "base_dir": str(REPO_ROOT),
        "sources": [],
        "dependencies": [],
        "repositories": [],
        "mainfile": None,
    }
    run_id = observer.started_event(ex_info, "main", {"hostname": "h"}, start, {}, {}, None)
    info = {"diff": "x" * (20 << 20), "seed": 7}
    observer.heartbeat_event(info, "", start, None)
    observer.completed_event(start, None)
    document = client["sacred"]["runs"].find_one({"_id": run_id})
    assert len(bson.encode(document)) < MONGO_LIMIT and document["info"]["seed"] == 7
    assert document["info"]["diff"].startswith("[not stored in MongoDB")
    assert document["reprolab"]["cut"] == ["info.diff"]
    local = FileRunStore(tmp_path / "fallback")
    assert local.run_ids() == [1] and local.info(1)["diff"] == info["diff"]


# ------------------------------------------------------------------------------ real server


@pytest.fixture(params=["REPROLAB_TEST_MONGO_URL", "nx-27017"])
def server_url(request):
    """A server's URL: the one the environment names, or an nx-27017 started for the test."""
    if request.param == "nx-27017":
        return request.getfixturevalue("nx_server").url
    url = os.environ.get("REPROLAB_TEST_MONGO_URL")
    if not url:
        pytest.skip("set REPROLAB_TEST_MONGO_URL=mongodb://user:pw@host:27017/db to run")
    return url


@pytest.mark.slow
@pytest.mark.mongo
def test_whole_path_against_a_real_server(tmp_path, server_url, capsys):
    url = server_url
    result = subprocess.run(
        [sys.executable, str(TRAIN), "with", "debug", "progress=False"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "REPROLAB_MONGO_URL": url, om.FALLBACK_VARIABLE: ""},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stderr.splitlines() if "Started run with ID" in line)
    run_id = int(line.rsplit('"', 2)[-2])
    store = MongoRunStore(url)
    try:
        assert store.run(run_id)["status"] == "COMPLETED"
        assert set(store.metrics(run_id)) == {"lr", "train_loss", "val_accuracy", "val_loss"}
        assert store.artifact(run_id, "last.pt")
        assert not FileRunStore(tmp_path / "runs_fallback").run_ids()
        from observers import load_runs

        assert load_runs(store).loc[run_id, "status"] == "COMPLETED"
        assert reprolab(["ls", "--store", url]) == 0
        listing = capsys.readouterr().out
        assert any(
            line.split()[:1] == [str(run_id)] and "COMPLETED" in line
            for line in listing.splitlines()
        ), listing
        for secret in url_secrets(url):
            assert secret not in result.stderr + result.stdout
            assert secret not in json.dumps(store.run(run_id))
    finally:
        document = store.db["runs"].find_one({"_id": run_id})
        for file_id in [a["file_id"] for a in document.get("artifacts", [])]:
            store.fs.delete(file_id)
        store.db["metrics"].delete_many({"run_id": run_id})
        store.db[CHUNKS_COLLECTION].delete_many({"run_id": run_id})
        store.db["runs"].delete_one({"_id": run_id})


def write_pngs(path: Path, n: int, seed: int) -> None:
    """n 8x8 grey PNGs of 2 classes (a bright top or bottom half) with string labels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(n):
        pixels = rng.integers(0, 60, (8, 8), dtype=np.uint8)
        pixels[(i % 2) * 4 : (i % 2) * 4 + 4] += 150
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    pq.write_table(pa.table({"image": blobs, "label": ["top", "bottom"] * (n // 2)}), path)


@pytest.mark.slow
@pytest.mark.mongo
def test_evaluate_records_apart_in_mongodb_and_show_lists_it(tmp_path, nx_server, capsys):
    url = nx_server.url
    train_file, test_file = tmp_path / "train.parquet", tmp_path / "test.parquet"
    write_pngs(train_file, 64, seed=0)
    write_pngs(test_file, 20, seed=1)
    result = subprocess.run(
        [sys.executable, str(TRAIN), "with", f"data.path={train_file}",
         f"data.test_path={test_file}", "model.name=cnn", "model.channels=[4]", "epochs=1",
         "data.batch_size=16", "progress=False"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "REPROLAB_MONGO_URL": url, om.FALLBACK_VARIABLE: ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    store = MongoRunStore(url)
    (run_id,) = store.run_ids()
    before = store.db["runs"].find_one({"_id": run_id})
    expected = f"accuracy {store.info(run_id)['test']['test_accuracy']:.4f}"  # same weights, rows
    for _ in range(2):
        assert reprolab(["evaluate", str(run_id), "--data", str(test_file), "--store", url]) == 0
        assert expected in capsys.readouterr().out
    assert store.db["runs"].find_one({"_id": run_id}) == before  # the run's record untouched
    saved = store.evaluations(run_id)
    assert len(saved) == 2 and saved[0]["time"] <= saved[1]["time"]
    assert sum(map(sum, saved[0]["confusion"])) == 20 and saved[0]["rows"] == 20
    assert saved[0]["fingerprint"][
        "sha256"
    ]  # keys of any text (a shard's path) read back as written
    assert reprolab(["show", str(run_id), "--store", url]) == 0
    shown = capsys.readouterr().out
    assert "evaluations:" in shown and shown.count(expected) == 2


@pytest.mark.mongo
def test_evaluations_in_mongodb_keep_odd_keys_and_are_bounded(nx_server, monkeypatch):
    store = MongoRunStore(nx_server.url)
    result = {"shards": {"a.b/$c.parquet": 1}, "loss": 0.5}
    add_evaluation(store, 7, result)
    saved = store.evaluations(7)
    assert [{k: v for k, v in e.items() if k != "time"} for e in saved] == [result]
    assert store.evaluations(8) == []
    assert store.db["runs"].count_documents({}) == 0  # no run document written
    monkeypatch.setattr("observers.evaluations.MAX_EVALUATIONS", 1)
    with pytest.raises(RecordError, match="run 7 already keeps 1 evaluations .* the 1 a run may"):
        add_evaluation(store, 7, result)
    assert len(store.evaluations(8) + store.evaluations(7)) == 1


# ------------------------------------------------------------------------------ start-up


def test_a_taken_run_id_is_skipped_and_the_search_is_bounded(monkeypatch):
    """Where the highest id is not found by sorting (here: never), ids are tried one after the
    other, at most ID_ATTEMPTS times, then one sentence (Sacred would loop for ever)."""
    db = mongomock.MongoClient()["sacred"]
    observer = om.BoundedMongoObserver.on(db, "uuid")
    monkeypatch.setattr(om.BoundedMongoObserver, "highest_id", lambda self: 0)
    db["runs"].insert_many([{"_id": i} for i in range(1, 6)])
    observer.run_entry = {"_id": None, "artifacts": []}
    observer.insert()
    assert observer.run_entry["_id"] == 6
    db["runs"].insert_many([{"_id": i} for i in range(7, 7 + om.ID_ATTEMPTS)])
    observer = om.BoundedMongoObserver.on(db, "uuid")
    observer.run_entry = {"_id": None, "artifacts": []}
    with pytest.raises(
        RuntimeError, match=f"no free run id found in sacred.runs after {om.ID_ATTEMPTS} tries"
    ):
        observer.insert()


@pytest.mark.parametrize("password", [f"{PASSWORD}/x", f"{PASSWORD}@x", f"{PASSWORD}?x"])
def test_a_url_that_cannot_be_parsed_is_refused_without_its_password(password):
    url = f"mongodb://reprolab:{password}@127.0.0.1:27017/sacred"
    with pytest.raises(ValueError) as error:
        om.check_url(url)
    assert "not a valid MongoDB URL: mongodb://reprolab:***@" in str(error.value)
    assert PASSWORD not in str(error.value)


@pytest.mark.mongo
def test_server_killed_mid_run_then_restarted_sync_completes_the_record(
    nx_server, tmp_path, monkeypatch, capsys
):
    """nx-27017 is SIGKILLed as the first checkpoint goes up: the run finishes in the local copy;
    once the server is back (same data), `reprolab sync` completes MongoDB's run 1, once."""
    first_artifact = om.MongoWithFallback.artifact_event

    def kill_server_first(self, *args, **kwargs):
        if nx_server.process.poll() is None:
            nx_server.kill()
        return first_artifact(self, *args, **kwargs)

    monkeypatch.setattr(om.MongoWithFallback, "artifact_event", kill_server_first)
    run, output = record(nx_server.url, tmp_path / "fallback")
    assert run.status == "COMPLETED" and run._id == 1
    stopped = [line for line in output.splitlines() if "MongoDB stopped recording run 1" in line]
    assert len(stopped) == 1 and "the run goes on" in stopped[0], output[-3000:]
    assert output.count("MongoDB's record of run 1 is incomplete") == 1
    local = FileRunStore(tmp_path / "fallback")
    assert local.run_ids() == [1] and local.run(1)["status"] == "COMPLETED"
    assert {"last.pt", "best.pt"} <= set(local.run(1)["artifacts"])

    nx_server.start()  # the same data directory: the RUNNING document is still there
    mongo = MongoRunStore(nx_server.url)
    assert mongo.run_ids() == [1] and mongo.run(1)["status"] == "RUNNING"
    capsys.readouterr()
    assert reprolab(["sync", str(tmp_path / "fallback"), "--to", nx_server.url]) == 0
    assert "run 1: completed the record of MongoDB run 1" in capsys.readouterr().out
    assert mongo.run_ids() == [1] and mongo.run(1)["status"] == "COMPLETED"
    assert mongo.metrics(1) == local.metrics(1)
    for name in ("last.pt", "best.pt"):
        assert mongo.artifact(1, name) == local.artifact(1, name)
    # nx-27017 0.8.1 finds nothing in fs.files with an anchored $regex ("^artifact://"), which
    # sync's clean-up of half-uploaded files uses: here none was half-uploaded (the server died
    # before the first checkpoint), so an unanchored search counts the same files
    artifacts = mongo.db["fs.files"].find({"filename": {"$regex": "artifact://runs/1/"}})
    assert len(list(artifacts)) == len(local.run(1)["artifacts"])
    counts = server_counts(mongo.db)
    assert reprolab(["sync", str(tmp_path / "fallback"), "--to", nx_server.url]) == 0
    assert "run 1: already in MongoDB as run 1" in capsys.readouterr().out
    assert server_counts(mongo.db) == counts


def server_counts(db) -> dict[str, int]:
    """Documents per collection, counted with find(): nx-27017 0.8.1 refuses count_documents on
    GridFS collections, and lists them as fs_files/fs_chunks, a name a find() never returns from."""
    names = ["runs", "metrics", CHUNKS_COLLECTION, "fs.files"]
    return {name: len(list(db[name].find({}, {"_id": 1}))) for name in names}


@pytest.mark.mongo
def test_run_ids_past_9_on_a_server_that_sorts_ids_as_text(nx_server, tmp_path):
    """nx-27017 sorts an unfiltered `_id` as text (9 above 10); the next id is still 11."""
    import pymongo

    with pymongo.MongoClient(nx_server.url) as client:
        client["sacred"]["runs"].insert_many(
            [{"_id": i, "status": "COMPLETED"} for i in range(1, 11)]
        )
        newest = client["sacred"]["runs"].find_one({}, {"_id": 1}, sort=[("_id", -1)])
    assert newest["_id"] == 9  # what Sacred's own lookup of the highest id would see
    run, output = record(nx_server.url, tmp_path / "fallback")
    assert run._id == 11 and run.status == "COMPLETED", output[-3000:]
    mongo = MongoRunStore(nx_server.url)
    assert mongo.run_ids() == list(range(1, 12)) and mongo.run(11)["status"] == "COMPLETED"


def test_reading_a_misspelt_database_creates_nothing_in_it(nx_server, capsys):
    """`ls` of a database name with a typo made its collections and indexes: readers never
    create a database."""
    import pymongo

    from experiments.cli import main

    typo = nx_server.url.rsplit("/", 1)[0] + "/sacrde"
    assert main(["ls", "--store", typo]) == 0
    assert capsys.readouterr().out.startswith("no runs in ")
    with pymongo.MongoClient(nx_server.url) as client:
        assert client["sacrde"].list_collection_names() == []


def test_sweep_run_carries_the_notes_and_tags_omniboard_shows(monkeypatch, tmp_path):
    """run.json's meta and the MongoDB document (live, and uploaded by sync) name the sweep and
    config in the comment and the tags; the `omniboard` field holds what Omniboard reads."""
    from experiments.sweeps.record import SweepBook, SweepRecord
    from experiments.train import ex
    from observers.location import StoreLocation

    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    monkeypatch.setenv(om.FALLBACK_VARIABLE, str(tmp_path / "fallback"))
    comment = "sweep 20261204-ab12 config 3: epochs=1 limit_batches=3 lr=0.05 progress=False"
    tags = ["sweep:20261204-ab12"]
    updates = {**SHORT_RUN, "epochs": 1, "lr": 0.05}
    member = {"--sweep": "20261204-ab12:3"}
    for store in (str(tmp_path / "runs"), URL):  # a run is config 3 of a sweep its store holds
        record = SweepRecord("20261204-ab12", "experiments/train.py", [], [{}] * 3 + [updates])
        SweepBook(StoreLocation.parse(store)).save(record)
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        ex.run(config_updates=updates, options={"--store": str(tmp_path / "runs"), **member})
        ex.run(config_updates=updates, options={"--store": URL, **member})
        ex.run(config_updates=updates, options={"--store": URL, "--comment": "mine", **member})
    meta = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())["meta"]
    assert meta["comment"] == comment and meta["tags"] == tags
    live, own = client["sacred"]["runs"].find().sort("_id")
    assert live["meta"]["comment"] == comment and live["meta"]["tags"] == tags
    assert live["omniboard"] == {"tags": tags, "notes": comment}
    assert own["omniboard"] == {"tags": tags, "notes": "mine"}  # the user's own comment wins

    sync_store(tmp_path / "runs", URL, echo=lambda line: None)
    synced = client["sacred"]["runs"].find_one({"_id": 3})
    assert synced["omniboard"]["tags"] == tags and synced["meta"]["comment"] == meta["comment"]
