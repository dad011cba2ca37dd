"""MongoDB's summary cache (observers/mongo_index.py) is only a cache: dropped, damaged, stale
after runs are added, finish, are deleted or edited, written by two writers at once, or not
writable at all, every answer equals a live read of the runs. Each test runs on mongomock and
on nx-27017 (the wire-protocol server of tests/observers/conftest.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sys

import mongomock
import pandas as pd
import pyarrow as pa
import pymongo
import pytest
from bson import Binary
from mongomock.gridfs import enable_gridfs_integration
from pymongo.errors import OperationFailure

import observers.mongo as om
import observers.mongo_index as mi
from observers.index import encode
from observers.mongo_store import MongoRunStore
from observers.store import RecordError
from observers.tables import load_runs, runs_page
from tests.helpers import RunByRun

START = dt.datetime(2026, 1, 1)

enable_gridfs_integration()  # mongomock's databases accepted by gridfs, as in test_mongo


@pytest.fixture(params=["mongomock", "nx-27017"])
def url(request, monkeypatch) -> str:
    """A database with ten finished runs (two sweeps) and one running."""
    if request.param == "nx-27017":
        server = request.getfixturevalue("nx_server")
        address = server.url
    else:
        client = mongomock.MongoClient()
        monkeypatch.setattr(om, "make_client", lambda url, **options: client)
        address = "mongodb://127.0.0.1:27017/sacred"
    db = MongoRunStore(address).db
    for run_id in range(1, 11):
        add_run(db, run_id)
    add_run(db, 11, status="RUNNING")
    return address


def add_run(db, run_id: int, status: str = "COMPLETED", minutes: int | None = None) -> None:
    start = START + dt.timedelta(minutes=run_id if minutes is None else minutes)
    end = start + dt.timedelta(seconds=30)
    document = {
        "_id": run_id,
        "experiment": {"name": "train"},
        "status": status,
        "start_time": start,
        "heartbeat": end,
        "host": {"hostname": "box"},
        "result": run_id / 10,
        "meta": {"sweep": {"id": f"s{run_id % 2}", "index": run_id}},
        "config": {"lr": 0.1 * (run_id % 3), "seed": run_id, "model": {"name": "mlp"}},
        "artifacts": [],
        "info": {},
    }
    if status == "RUNNING":  # a heartbeat just now: not taken for dead
        document.update(heartbeat=dt.datetime.now(dt.UTC).replace(tzinfo=None))
    else:
        document.update(stop_time=end)
    db["runs"].insert_one(document)
    db["metrics"].insert_one(
        {
            "run_id": run_id,
            "name": "loss",
            "steps": [0, 1],
            "values": [1.0, 1.0 / run_id],
            "timestamps": [start, end],
        }
    )


def assert_live(url: str, **filters) -> pd.DataFrame:
    """load_runs through the cache equals a live read, with the same filters."""
    cached = load_runs(url, **filters)
    live = load_runs(RunByRun(MongoRunStore(url)), **filters)
    pd.testing.assert_frame_equal(cached, live, check_exact=True)
    return cached


def assert_all_live(url: str) -> None:
    assert_live(url)
    assert_live(url, sweep="s1")
    assert_live(url, status="COMPLETED", lr=0.1)
    page, count = runs_page(url, 3)
    live = load_runs(RunByRun(MongoRunStore(url)))
    pd.testing.assert_frame_equal(page, live.tail(3), check_exact=True)
    assert count == len(live)


def cached_ids(url: str) -> list[int]:
    head, table = mi.read_cache(MongoRunStore(url).db)
    assert head is not None, "no cache written"
    return [] if table is None else table["run_id"].to_pylist()


# --------------------------------------------------------------------------- a cache


def test_finished_runs_come_from_the_cache_and_running_ones_are_read(url, monkeypatch):
    assert_all_live(url)
    assert cached_ids(url) == list(range(1, 11))  # the running run is read every time
    read = []
    for_rows = MongoRunStore.for_rows
    monkeypatch.setattr(
        MongoRunStore, "for_rows", lambda self, ids: read.append(ids) or for_rows(self, ids)
    )
    runs = load_runs(url)
    assert read == [[11]] and list(runs.index) == list(range(1, 12))
    assert runs.loc[11, "status"] == "RUNNING" and runs.loc[3, "loss.last"] == pytest.approx(1 / 3)


def test_dropping_the_cache_changes_no_answer_and_it_is_rebuilt(url):
    before = assert_live(url)
    MongoRunStore(url).db[mi.CACHE_COLLECTION].drop()
    pd.testing.assert_frame_equal(assert_live(url), before, check_exact=True)
    assert cached_ids(url) == list(range(1, 11))


@pytest.mark.parametrize("verified", [mi.VERIFIED_ROWS, -1])  # -1: the probe alone decides
def test_new_finished_and_deleted_runs_are_seen(url, verified, monkeypatch):
    monkeypatch.setattr(mi, "VERIFIED_ROWS", verified)
    assert_all_live(url)
    db = MongoRunStore(url).db
    add_run(db, 12)  # added finished (as `reprolab sync` adds a run)
    assert_all_live(url)
    db["runs"].update_one(  # the running run ends
        {"_id": 11}, {"$set": {"status": "FAILED", "stop_time": START, "heartbeat": START}}
    )
    assert_all_live(url)
    assert 11 in cached_ids(url)
    db["runs"].delete_one({"_id": 4})
    assert_all_live(url)
    db["runs"].delete_one({"_id": 5})  # one gone, one added: the count stays
    add_run(db, 13)
    assert_all_live(url)
    add_run(db, 7 * 1000, minutes=0)  # added with the oldest start: not among the newest
    assert_all_live(url)
    db["runs"].delete_one({"_id": 6})
    assert_all_live(url)
    db["runs"].delete_one({"_id": 7})  # one gone, two added: one more run, two new ones
    add_run(db, 14)
    add_run(db, 15)
    assert_all_live(url)
    assert cached_ids(url) == [1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 7000]


def test_a_finished_run_edited_in_place_is_read_again_where_it_is_shown(url):
    """A result of at most VERIFIED_ROWS rows is checked run by run, so an edit that the probe
    cannot see (same count, same newest run) still shows in a page, a sweep, an id."""
    assert_all_live(url)
    db = MongoRunStore(url).db
    db["runs"].update_one({"_id": 9}, {"$set": {"status": "FAILED", "stop_time": START}})
    assert assert_live(url, run_ids=[9, 3]).loc[9, "status"] == "FAILED"
    assert_all_live(url)
    db["runs"].update_one({"_id": 10}, {"$set": {"status": "RUNNING"}, "$unset": {"stop_time": 1}})
    assert_all_live(url)  # read live again while the server says it runs
    assert 10 not in cached_ids(url)
    with pytest.raises(RecordError, match="no run 42 in"):
        load_runs(url, run_ids=[1, 42])


def test_an_incomplete_record_is_never_cached(url):
    """`reprolab sync` inserts a placeholder (complete: False) before the whole record."""
    db = MongoRunStore(url).db
    db["runs"].update_one({"_id": 2}, {"$set": {"reprolab": {"complete": False}}})
    assert_all_live(url)
    assert 2 not in cached_ids(url)
    db["runs"].update_one({"_id": 2}, {"$set": {"reprolab.complete": True, "config.lr": 9.0}})
    assert assert_live(url).loc[2, "config.lr"] == 9.0


# --------------------------------------------------------------------------- damage


def replace_part(db, data: bytes) -> None:
    """Put other bytes in the cache's first part, the head's digest made to match."""
    head = db[mi.CACHE_COLLECTION].find_one({"_id": mi.HEAD})
    part = head["parts"][0]
    db[mi.CACHE_COLLECTION].delete_one({"_id": part["id"]})
    db[mi.CACHE_COLLECTION].insert_one({"_id": part["id"], "data": Binary(data)})
    part["sha256"] = hashlib.sha256(data).hexdigest()
    db[mi.CACHE_COLLECTION].replace_one({"_id": mi.HEAD}, head)


def planted(rows: list[dict]) -> bytes:
    return mi._serialised(encode(rows, [0] * len(rows), {}))[0][1]


DAMAGE = {
    "head-of-another-shape": lambda db: db[mi.CACHE_COLLECTION].replace_one(
        {"_id": mi.HEAD}, {"version": 1, "parts": "all", "pending": [True]}
    ),
    "part-gone": lambda db: db[mi.CACHE_COLLECTION].delete_many({"_id": {"$ne": mi.HEAD}}),
    "part-bytes-unlike-the-digest": lambda db: db[mi.CACHE_COLLECTION].update_one(
        {"_id": mi.HEAD}, {"$set": {"parts.0.sha256": "0" * 64}}
    ),
    "garbage-bytes": lambda db: replace_part(db, os.urandom(4096)),
    "arrow-of-another-schema": lambda db: replace_part(
        db, mi._stream(pa.table({"run_id": [1], "pickle": [b"\x80\x04"]}))
    ),
    "a-config-cell-holding-an-object": lambda db: replace_part(
        db, planted([{"run_id": 1, "status": "COMPLETED", "config.lr": {"$a": 1}}])
    ),
    "a-row-of-a-running-run": lambda db: replace_part(
        db, planted([{"run_id": 1, "status": "RUNNING"}])
    ),
    "ids-repeated": lambda db: replace_part(
        db, planted([{"run_id": 1, "status": "COMPLETED"}, {"run_id": 1, "status": "FAILED"}])
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_ignored_and_rebuilt(url, damage):
    before = assert_live(url)
    db = MongoRunStore(url).db
    DAMAGE[damage](db)
    pd.testing.assert_frame_equal(assert_live(url), before, check_exact=True)
    assert cached_ids(url) == list(range(1, 11))
    assert_all_live(url)


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("first", ["earlier", "later"])
@pytest.mark.parametrize("verified", [mi.VERIFIED_ROWS, -1])  # -1: the probe alone decides
def test_two_writers_at_once_lose_nothing(url, first, verified, monkeypatch):
    """Both read the same head; whichever swaps second merges its rows into the first's."""
    monkeypatch.setattr(mi, "VERIFIED_ROWS", verified)
    assert_live(url)
    db = MongoRunStore(url).db
    add_run(db, 12)
    earlier = mi.View.open(MongoRunStore(url))  # sees run 12 ended
    add_run(db, 13)
    later = mi.View.open(MongoRunStore(url))  # sees 12 and 13
    writers = [earlier, later] if first == "earlier" else [later, earlier]
    for view in writers:
        view.save(db)
    assert cached_ids(url) == list(range(1, 11)) + [12, 13]
    assert_all_live(url)


def test_a_read_only_user_gets_the_same_answers_without_a_cache(url, monkeypatch):
    """Every write to the cache refused (MongoDB's Unauthorized): live answers, asked once."""
    refused, original = [], {}
    for kind in (pymongo.collection.Collection, mongomock.collection.Collection):
        for name in ("insert_one", "replace_one", "delete_many"):
            original[kind, name] = getattr(kind, name)

    def refusing(kind, name):
        def write(self, *args, **kwargs):
            if self.name == mi.CACHE_COLLECTION:
                refused.append(name)
                raise OperationFailure("not authorized on sacred to execute command", 13)
            return original[kind, name](self, *args, **kwargs)

        return write

    for kind, name in original:
        monkeypatch.setattr(kind, name, refusing(kind, name))
    mi._read_only.clear()
    store = MongoRunStore(url)
    live = load_runs(RunByRun(store))
    pd.testing.assert_frame_equal(load_runs(store), live, check_exact=True)
    assert refused[0] == "insert_one"
    asked = len(refused)
    pd.testing.assert_frame_equal(load_runs(store), live, check_exact=True)
    assert len(refused) == asked  # not asked again by this process
    assert store.db[mi.CACHE_COLLECTION].find_one({"_id": mi.HEAD}) is None


class Terminal:
    """A stderr that says it is a terminal, keeping what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def test_a_rebuild_reads_a_query_of_runs_at_a_time_behind_a_progress_bar(url, monkeypatch):
    import tqdm

    before = assert_live(url)
    monkeypatch.setattr(mi, "IN_QUERY_IDS", 3)
    monkeypatch.setattr(mi, "PROGRESS_AFTER", 5)
    bars = []
    monkeypatch.setattr(tqdm, "tqdm", lambda chunks, **kw: bars.append((chunks, kw)) or chunks)
    monkeypatch.setattr(sys, "stderr", Terminal())
    MongoRunStore(url).db[mi.CACHE_COLLECTION].drop()
    pd.testing.assert_frame_equal(assert_live(url), before, check_exact=True)
    chunks, options = bars[0]  # the rebuild: every run, three at a time
    assert chunks == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    assert "summary cache" in options["desc"]
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    assert mi._progress(list(range(12))) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert len(bars) == 1


def test_config_values_json_has_no_type_for_are_read_as_text(url, request):
    from bson import Decimal128, Regex

    if request.node.callspec.params["url"] == "nx-27017":
        pytest.skip("nx-27017 keeps documents as JSON: it refuses binary values")
    db = MongoRunStore(url).db
    odd = {"config.blob": Binary(b"\x00\x01"), "config.price": Decimal128("1.5")}
    odd["config.pattern"] = Regex("a.*")
    db["runs"].update_one({"_id": 3}, {"$set": odd})
    runs = assert_live(url)
    assert runs.loc[3, "config.price"] == "1.5" and isinstance(runs.loc[3, "config.blob"], str)
    assert_live(url, sweep="s1")
    assert_live(url, status="COMPLETED", lr=0.1)


def test_a_run_with_a_negative_id_leaves_the_cache_usable(url, monkeypatch):
    add_run(MongoRunStore(url).db, -3, status="RUNNING")
    assert_all_live(url)
    head, _ = mi.read_cache(MongoRunStore(url).db)
    assert head is not None and -3 in head["pending"]


def test_without_a_cache_a_page_reads_only_its_runs(url, monkeypatch):
    """A read-only user (or a database no call has cached yet): `ls` reads the page, not all."""
    cached_page, cached_count = runs_page(url, 3)
    sweep_page, sweep_count = runs_page(url, 2, sweep="s1")
    MongoRunStore(url).db[mi.CACHE_COLLECTION].drop()
    read = []
    for_rows = MongoRunStore.for_rows
    monkeypatch.setattr(
        MongoRunStore, "for_rows", lambda self, ids: read.append(ids) or for_rows(self, ids)
    )
    page, count = runs_page(url, 3)
    pd.testing.assert_frame_equal(page, cached_page, check_exact=True)
    assert count == cached_count == 11 and read == [[9, 10, 11]]
    page, count = runs_page(url, 2, sweep="s1")
    pd.testing.assert_frame_equal(page, sweep_page, check_exact=True)
    assert count == sweep_count == 6 and read[1:] == [[9, 11]]
    assert MongoRunStore(url).db[mi.CACHE_COLLECTION].find_one({"_id": mi.HEAD}) is None


def test_a_writers_cleanup_leaves_another_writers_new_parts(url):
    """Parts another writer inserted before its head swap survive this writer's swap; parts no
    head names from long ago (a crashed writer's, or undated ones) are removed by it."""
    assert_live(url)  # the cache written
    db = MongoRunStore(url).db
    collection = db[mi.CACHE_COLLECTION]
    now = mi.server_time(db)
    theirs = mi._insert_parts(collection, "theirs", mi.read_cache(db)[1], now)  # head next
    long_ago = now - mi.ORPHAN_AGE - dt.timedelta(minutes=1)
    crashed = {"_id": "crashed/0", "generation": "crashed", "data": Binary(b"x")}
    collection.insert_one({**crashed, "written": long_ago})
    collection.insert_one({"_id": "undated/0", "generation": "undated", "data": Binary(b"x")})
    add_run(db, 12)
    mi.View.open(MongoRunStore(url)).save(db)  # this writer swaps its head and cleans up
    kept = {document["_id"] for document in collection.find({}, {"_id": 1})}
    assert theirs and {part["id"] for part in theirs} <= kept
    assert not {"crashed/0", "undated/0"} & kept
    assert_all_live(url)
