"""Kill-anywhere for `reprolab sync`: SIGKILL at the Nth durable step into MongoDB (nx-27017,
a wire-protocol server; observers/files.py's durable_step), then sync again: every run once,
complete, equal to an uninterrupted sync's (status, config, metric values), and the sweep record
there. The points are the steps an uninterrupted sync logged, so a new write is covered unasked."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.helpers import durable_steps, killing_at, logging_steps, run_reprolab


def mongo_view(url: str) -> dict:
    """What MongoDB holds, by each run's identity: status, config, metric values; sweeps."""
    import pymongo

    db = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000).get_default_database()
    runs = {}
    for doc in db["runs"].find():
        identity = doc["reprolab"]["run_uuid"]
        assert identity not in runs, f"run {identity} uploaded twice"
        metrics = {m["name"]: m["values"] for m in db["metrics"].find({"run_id": doc["_id"]})}
        runs[identity] = (doc["status"], doc["reprolab"]["complete"], doc["config"], metrics)
    return {"runs": runs, "sweeps": sorted(d["_id"] for d in db["sweeps"].find())}


@pytest.fixture
def whole_sync(small_store_of, nx_server, tmp_path) -> tuple:
    """A store, an uninterrupted sync of it into database `whole`, and that sync's steps."""
    store = small_store_of(["debug", "sgd"])
    log = tmp_path / "steps.txt"
    whole = reprolab_sync(store, f"{nx_server.url}whole", logging_steps(log))
    assert whole.returncode == 0, whole.stderr[-2000:]
    steps = durable_steps(log)
    assert any(step.endswith(" metrics") for step in steps), steps
    return store, f"{nx_server.url}whole", steps


def reprolab_sync(store, url: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_reprolab("sync", str(store), "--to", url, env=env)


def kill_and_sync_again(store, url: str, whole: str, kill_at: int) -> None:
    killed = reprolab_sync(store, url, killing_at(kill_at))
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
    again = reprolab_sync(store, url)
    assert again.returncode == 0, (kill_at, again.stderr[-2000:])
    assert mongo_view(url) == mongo_view(whole), kill_at


@pytest.mark.mongo
def test_a_sync_killed_after_uploading_metrics_completes_on_the_next(whole_sync, nx_server):
    store, whole, steps = whole_sync
    first_metrics = next(i for i, step in enumerate(steps, 1) if step.endswith(" metrics"))
    kill_and_sync_again(store, f"{nx_server.url}cut", whole, first_metrics)


@pytest.mark.slow
@pytest.mark.mongo
def test_a_sync_killed_at_any_step_completes_on_the_next(whole_sync, nx_server):
    store, whole, steps = whole_sync
    for kill_at in range(1, len(steps) + 1):
        kill_and_sync_again(store, f"{nx_server.url}cut{kill_at}", whole, kill_at)
