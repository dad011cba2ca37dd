"""A sweep record's read-modify-write is atomic: launchers changing one record at once (two
`sweep --resume` each adding its submission) each keep their change, in a file store (a lock
around the read and the write) and in MongoDB (a save only if nobody saved in between)."""

from __future__ import annotations

import os
import threading

import pytest

from observers.location import StoreLocation
from observers.records import RecordError
from observers.sweep_records import sweep_records

WRITERS, EACH = 4, 10


def record() -> dict:
    return {"id": "s1", "experiment": "experiments/train.py", "named_configs": [], "configs": [{}]}


def append(tag: str):
    return lambda raw: {**raw, "attempts": [*raw.get("attempts", []), {"engine": tag}]}


def append_at_once(records) -> None:
    """WRITERS threads, started together, each appending EACH attempts through change."""
    start, failures = threading.Barrier(WRITERS), []

    def writer(number: int) -> None:
        start.wait()
        try:
            for step in range(EACH):
                records.change("s1", append(f"w{number}-{step}"))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and not any(t.is_alive() for t in threads), failures


def check_every_attempt_kept(records) -> None:
    records.save({**record(), "attempts": []})
    append_at_once(records)
    tags = [a["engine"] for a in records.find("s1")["attempts"]]
    assert sorted(tags) == sorted(f"w{n}-{s}" for n in range(WRITERS) for s in range(EACH))
    for number in range(WRITERS):  # each writer's own attempts in the order it added them
        mine = [tag for tag in tags if tag.startswith(f"w{number}-")]
        assert mine == [f"w{number}-{s}" for s in range(EACH)]


def test_simultaneous_changes_of_a_file_stores_sweep_record_all_survive(tmp_path):
    check_every_attempt_kept(sweep_records(StoreLocation.parse(str(tmp_path))))


@pytest.mark.mongo
def test_simultaneous_changes_of_a_mongodb_sweep_record_all_survive(nx_server):
    check_every_attempt_kept(sweep_records(StoreLocation.parse(f"{nx_server.url}attempts")))


@pytest.mark.mongo
def test_a_mongodb_sweep_record_saved_without_a_revision_can_be_changed(nx_server):
    """A record an older reprolab (or a sync) saved without the revision token."""
    records = sweep_records(StoreLocation.parse(f"{nx_server.url}legacy"))
    records.collection.insert_one({"_id": "s1", **record(), "attempts": [{"engine": "old"}]})
    records.change("s1", append("new"))
    assert [a["engine"] for a in records.find("s1")["attempts"]] == ["old", "new"]


def check_a_save_keeps_what_a_change_added(records) -> None:
    """A resume adding its attempts (change) while a sync saves its copy of the record again and
    again (save, from a copy read before the resume's attempts): every attempt of both stays."""
    records.save({**record(), "created": "t0", "attempts": []})
    copy = {**record(), "created": "t0", "attempts": [{"engine": "synced"}]}
    records.change("s1", append("resumed"))  # since the sync read its copy
    records.save(copy)
    assert sorted(a["engine"] for a in records.find("s1")["attempts"]) == ["resumed", "synced"]
    start, failures = threading.Barrier(2), []

    def resume() -> None:
        start.wait()
        for step in range(EACH):
            records.change("s1", append(f"r{step}"))

    def sync() -> None:
        start.wait()
        for step in range(EACH):
            records.save({**copy, "attempts": [{"engine": f"s{step}"}]})

    threads = [threading.Thread(target=catching(w, failures)) for w in (resume, sync)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and not any(t.is_alive() for t in threads), failures
    tags = sorted(a["engine"] for a in records.find("s1")["attempts"])
    expected = [
        "resumed",
        "synced",
        *(f"r{n}" for n in range(EACH)),
        *(f"s{n}" for n in range(EACH)),
    ]
    assert tags == sorted(expected)
    with pytest.raises(RecordError, match="s1 in .* is another sweep .*not saved over it"):
        records.save({**copy, "created": "t1"})  # a sweep that drew the same id
    assert len(records.find("s1")["attempts"]) == len(expected)


def catching(work, failures: list):
    def run() -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - reported by the caller's assertion
            failures.append(error)

    return run


def test_a_save_of_a_file_stores_sweep_record_keeps_what_a_change_added(tmp_path):
    check_a_save_keeps_what_a_change_added(sweep_records(StoreLocation.parse(str(tmp_path))))


@pytest.mark.mongo
def test_a_save_of_a_mongodb_sweep_record_keeps_what_a_change_added(nx_server):
    location = StoreLocation.parse(f"{nx_server.url}saves")
    check_a_save_keeps_what_a_change_added(sweep_records(location))


def test_a_change_of_a_missing_sweep_says_so(tmp_path):
    with pytest.raises(RecordError, match="no sweep 's1' in"):
        sweep_records(StoreLocation.parse(str(tmp_path))).change("s1", append("w"))


def test_a_deleted_sweep_leaves_no_file_behind(tmp_path):
    """A refused submission is taken back whole: neither its record nor its lock stays."""
    records = sweep_records(StoreLocation.parse(str(tmp_path)))
    records.save(record())
    records.change("s1", append("slurm"))
    records.delete("s1")
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


@pytest.mark.parametrize("planted", ["link", "oversized"])
def test_a_sweep_record_linked_outside_or_oversized_is_refused_unread(tmp_path, planted):
    """A copied store's sweep record that is a link to a file outside it, or over the bound,
    is refused in one sentence naming the file, never read."""
    import json

    from observers.records import TABLE_BYTES
    from observers.sweep_records import SWEEPS

    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(record()))
    store = tmp_path / "runs"
    path = store / SWEEPS / "s1.json"
    path.parent.mkdir(parents=True)
    if planted == "link":
        path.symlink_to(outside)
    else:
        with open(path, "wb") as f:
            f.truncate(TABLE_BYTES + 1)  # sparse: no disk spent
    with pytest.raises(RecordError, match=f"^{path} (is a link|holds {TABLE_BYTES + 1:,} bytes)"):
        sweep_records(StoreLocation.parse(str(store))).find("s1")


@pytest.mark.parametrize("planted", ["dangling link", "fifo"])
def test_a_planted_lock_is_refused_and_nothing_outside_is_created(tmp_path, planted):
    """A copied store's lock file that is a link (to a file to be created outside the store) or a
    FIFO (whose open would wait for ever): the change is refused in one sentence, unmade."""
    store, outside = tmp_path / "store", tmp_path / "MARKER"
    records = sweep_records(StoreLocation.parse(str(store)))
    records.save(record())
    lock = store / ".reprolab" / "sweeps" / "s1.lock"
    lock.unlink()  # the save's own lock file, planted over
    lock.symlink_to(outside) if planted == "dangling link" else os.mkfifo(lock)
    with pytest.raises(RecordError) as refused:
        records.change("s1", append("w"))
    assert "s1" in str(refused.value) and "\n" not in str(refused.value)
    assert not outside.exists() and "attempts" not in records.find("s1")


@pytest.mark.parametrize("attempts", [5, "abc", [1], [None, "x"], {"a": 1}, [[{}]]])
def test_merging_with_a_stored_record_of_odd_attempts_keeps_the_objects(attempts):
    from observers.sweep_records import merged

    mine = {"id": "s", "attempts": [{"id": "a1", "engine": "local", "started": "2026"}]}
    result = merged({"id": "s", "attempts": attempts}, mine)
    assert result["attempts"] == mine["attempts"]
    assert merged(mine, {"id": "s", "attempts": attempts})["attempts"] == mine["attempts"]
