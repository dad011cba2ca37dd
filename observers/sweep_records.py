"""Where a sweep's record lives: beside its runs, in the same store.

A file store keeps it as <store>/.reprolab/sweeps/<id>.json, MongoDB in its `sweeps` collection
(one document per sweep, `_id` = the sweep id). What a sweep is and how it runs lives in
experiments/sweeps/; only the record's place is here, so that reading and syncing a store
carry sweeps as they carry runs.

Every write of a record is one read-modify-write: under the record's lock in a file store, a
compare-and-swap on a revision token in MongoDB. A save (a new sweep, or `reprolab sync`'s copy)
keeps every submission the stored record has, so a sync during a resume drops no attempt.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from observers.files import check_name, exclusive_lock, replacing
from observers.location import StoreLocation
from observers.records import (
    TABLE_BYTES,
    ObjectEncoding,
    RecordError,
    check_plain,
    load_plain,
    refusal,
)

SWEEPS = Path(".reprolab") / "sweeps"  # inside a file store, beside the numbered run folders
SWEEPS_COLLECTION = "sweeps"
LOCK_WAIT = 30.0  # seconds a file-store change waits for another launcher's
REVISION = "_revision"  # MongoDB only: a fresh token at each save, for compare-and-swap
CHANGE_TRIES = 100  # of a MongoDB change that other writers keep getting in before


class FileSweepRecords:
    """Sweep records of a file store: one JSON file each."""

    def __init__(self, store: str | os.PathLike):
        self.folder = Path(store) / SWEEPS
        self.location = str(store)

    def ids(self) -> list[str]:
        return (
            sorted(path.stem for path in self.folder.glob("*.json")) if self.folder.is_dir() else []
        )

    def find(self, sweep_id: str) -> dict | None:
        check_name(sweep_id, "sweep id")
        path = self.folder / f"{sweep_id}.json"
        if not os.path.lexists(path):
            return None
        try:  # a link (to a device, outside the store, dangling) is refused, never read
            record = load_plain(path, TABLE_BYTES)
        except ObjectEncoding as error:
            raise refusal(f"sweep {sweep_id}'s record {path}", error.key) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"sweep {sweep_id}: {path} is damaged ({error})") from None
        except OSError as error:
            raise RecordError(
                f"sweep {sweep_id}: {path} cannot be read ({error.strerror})"
            ) from None
        if not isinstance(record, dict) or record.get("id") != sweep_id:
            raise RecordError(f"sweep {sweep_id}: {path} is not a sweep record")
        return record

    def save(self, record: dict) -> dict:
        """Save a record, keeping the submissions the stored one has (saved_over); the record
        as stored."""
        plain_text(record)  # refused before the lock is taken
        return self.update(record["id"], lambda there: saved_over(there, record, self.location))

    def change(self, sweep_id: str, change: Callable[[dict], dict]) -> dict:
        """Read, change and save one existing record (RecordError naming it if there is none)."""
        return self.update(sweep_id, lambda raw: change(found(raw, sweep_id, self.location)))

    def update(self, sweep_id: str, change: Callable[[dict | None], dict]) -> dict:
        """Read (None: no record yet), change and write one record holding its lock (<id>.lock
        beside it), so two writers at once (two `sweep --resume`, a resume and a sync) each keep
        the other's change."""
        check_name(sweep_id, "sweep id")
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.folder / f"{sweep_id}.lock", LOCK_WAIT) as locked:
            if not locked:
                raise RecordError(
                    f"sweep {sweep_id} in {self.location}: its lock file cannot be taken "
                    f"(held for over {LOCK_WAIT:.0f} s, or not a regular file); it was not changed"
                )
            changed = change(self.find(sweep_id))
            text = plain_text(changed)
            with replacing(self.folder / f"{sweep_id}.json") as f:
                f.write(text)
            return changed

    def delete(self, sweep_id: str) -> None:
        """Take back a sweep no run belongs to (a refused submission): its record and its lock."""
        (self.folder / f"{sweep_id}.json").unlink(missing_ok=True)
        (self.folder / f"{sweep_id}.lock").unlink(missing_ok=True)


class MongoSweepRecords:
    """Sweep records of a MongoDB database: its `sweeps` collection."""

    def __init__(self, db, location: str):
        self.collection, self.location = db[SWEEPS_COLLECTION], location

    def ids(self) -> list[str]:
        return sorted(str(doc["_id"]) for doc in self.collection.find({}, {"_id": 1}))

    def find(self, sweep_id: str) -> dict | None:
        return self.read(sweep_id)[0]

    def read(self, sweep_id: str) -> tuple[dict | None, str | None]:
        """The record (None if there is none) and its revision token."""
        record = self.collection.find_one({"_id": sweep_id})
        if record is None:
            return None, None
        record.pop("_id", None)
        revision = record.pop(REVISION, None)
        try:
            return check_plain(record), revision
        except ObjectEncoding as error:
            raise refusal(f"sweep {sweep_id}'s record in {self.location}", error.key) from None

    def save(self, record: dict) -> dict:
        """Save a record, keeping the submissions the stored one has (saved_over); the record
        as stored."""
        plain_text(record)
        return self.update(record["id"], lambda there: saved_over(there, record, self.location))

    def change(self, sweep_id: str, change: Callable[[dict], dict]) -> dict:
        """Read, change and save one existing record (RecordError naming it if there is none)."""
        return self.update(sweep_id, lambda raw: change(found(raw, sweep_id, self.location)))

    def update(self, sweep_id: str, change: Callable[[dict | None], dict]) -> dict:
        """Read (None: no record yet), change and write one record, the write only if nobody
        wrote it in between (its revision token unchanged, or still no record: the unique
        `_id`), else again from the new record: no change is lost."""
        from pymongo.errors import DuplicateKeyError

        for _ in range(CHANGE_TRIES):
            record, revision = self.read(sweep_id)
            changed = change(record)
            plain_text(changed)
            if record is None:
                try:
                    self.collection.insert_one(self.document(changed))
                except DuplicateKeyError:
                    continue  # another writer created it first: change theirs
                return changed
            written = self.collection.replace_one(
                {"_id": sweep_id, REVISION: revision}, self.document(changed)
            )
            if written.matched_count:
                return changed
        raise RecordError(
            f"sweep {sweep_id} in {self.location} was changed by others {CHANGE_TRIES} times "
            "while this change was made; it was not saved"
        )

    @staticmethod
    def document(record: dict) -> dict:
        return {"_id": record["id"], **record, REVISION: secrets.token_hex(8)}

    def delete(self, sweep_id: str) -> None:
        self.collection.delete_one({"_id": sweep_id})


def found(record: dict | None, sweep_id: str, location: str) -> dict:
    """The record read for a change, or RecordError naming the sweep when there is none."""
    if record is None:
        raise RecordError(f"no sweep '{sweep_id}' in {location}")
    return record


def plain_text(record: dict) -> str:
    """The record as JSON; a value JSON cannot hold is refused (ValueError), never turned into
    text, since what a sweep records is what its runs are given."""
    try:
        return json.dumps(record, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"sweep {record.get('id')}'s record holds a value that is not plain "
            f"data ({error}), so it was not saved"
        ) from None


def sweep_records(location: StoreLocation) -> FileSweepRecords | MongoSweepRecords:
    """The sweep records of a store folder or MongoDB (one sentence if unreachable)."""
    if not location.is_mongo:
        return FileSweepRecords(location.secret)
    from observers.mongo import reach  # pymongo only when asked for

    return MongoSweepRecords(reach(location.secret), str(location))


def saved_over(there: dict | None, record: dict, location: str) -> dict:
    """What a save of `record` leaves in a store holding `there`: the record with the
    submissions of both; another sweep that drew the same id is refused, never overwritten."""
    if there is not None and not same_sweep(there, record):
        raise RecordError(
            f"sweep {record['id']} in {location} is another sweep (created {there.get('created')}),"
            " so this one was not saved over it"
        )
    return merged(there, record)


def merged(into: dict | None, record: dict) -> dict:
    """A sweep record as a store should hold it after a sync: the source's record, with the
    submissions (`attempts`) of both; a sweep resumed on either side keeps all of them."""
    if into is None:
        return record
    attempts = {  # one submission changed on the source side since (its job ids): the source's
        attempt_key(a): a for a in [*_submissions(into), *_submissions(record)]
    }
    ordered = sorted(attempts.values(), key=lambda a: str(a.get("started", "")))
    return {**record, "attempts": ordered}


def _submissions(record: dict) -> list[dict]:
    """A record's submissions that are objects (a stored record is untrusted data)."""
    attempts = record.get("attempts")
    return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def attempt_key(attempt: dict) -> str:
    """What names a submission in its record: its `id`; one recorded before submissions had
    ids, its whole content."""
    named = attempt.get("id")
    if isinstance(named, str):
        return f"id {named}"
    return json.dumps(attempt, sort_keys=True, default=str)


def same_sweep(one: dict, other: dict) -> bool:
    """Whether two records with one id are the same sweep (not two that drew the same id)."""
    return all(one.get(key) == other.get(key) for key in ("created", "experiment", "configs"))
