"""Kill-anywhere for `reprolab sync`: SIGKILL at the Nth durable write into MongoDB (nx-27017,
a wire-protocol server), then sync again: every run once, complete, equal to an uninterrupted
sync's (status, config, metric values), and the sweep record there."""

from __future__ import annotations

import signal
import subprocess

import pytest

from observers.files import KILL_AT_VARIABLE
from tests.helpers import run_reprolab


def reprolab(*argv: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """`reprolab ARGV`, SIGKILLed by itself after its kill_at-th durable write (observers/files.py)."""
    kill = {KILL_AT_VARIABLE: str(kill_at)} if kill_at is not None else {}
    return run_reprolab(*argv, env={**kill})


SYNC_WRITES = 12  # per run: placeholder, metrics, output, document; and the sweep record


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


@pytest.mark.mongo
@pytest.mark.parametrize(
    "kill_at",
    [pytest.param(n, marks=[] if n == 2 else [pytest.mark.slow]) for n in range(1, SYNC_WRITES)],
)
def test_a_sync_killed_at_any_write_completes_on_the_next(small_store_of, nx_server, kill_at):
    store = small_store_of(["debug", "sgd"])
    whole, cut = f"{nx_server.url}whole", f"{nx_server.url}cut"
    assert reprolab("sync", str(store), "--to", whole).returncode == 0
    killed = reprolab("sync", str(store), "--to", cut, kill_at=kill_at)
    assert killed.returncode in (0, -signal.SIGKILL), killed.stderr[-2000:]
    again = reprolab("sync", str(store), "--to", cut)
    assert again.returncode == 0, again.stderr[-2000:]
    assert mongo_view(cut) == mongo_view(whole)
