"""Claims on a sweep's configs: a config is claimed in one atomic act before its run starts, so
no two launchers (two `sweep --resume` at once, or a resume while a run is still starting) ever
start it twice.

A claim is named by the config and the latest run of it the launcher saw (`<index>-after-<run>`,
0 for none), and by a generation: `<index>-after-<run>.g<N>`. Creating it is atomic: a file made
with O_CREAT|O_EXCL under the store's .reprolab/sweeps/<id>/claims/, or a MongoDB insert whose
`_id` is unique. It holds the processes that act on it (the launcher, then the run it started),
each as {pid, start, host}, and the run inherits a lock on it (flock, taken by the launcher
before the run's process is forked), so there is no moment between the launcher's death and the
run's start when nobody holds it. A claim nobody holds (on this host: no process alive and the
lock free; elsewhere: older than STALE_CLAIM) is taken over by creating the next generation,
which is atomic again: of two launchers that both find a claim stale, one wins.
Once the run has recorded itself, the latest run of the config is another, and so is the claim.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from ingredients.processes import process_alive
from ingredients.scratch import HOST
from observers.files import durable_step, open_lock_file, replacing, utc_text
from observers.location import StoreLocation
from observers.records import RecordError, load_plain
from observers.sweep_records import SWEEPS

STALE_CLAIM = dt.timedelta(minutes=2)  # a claim of another host's processes, untouched this long
CLAIMS_COLLECTION = "sweep_claims"
GENERATION = re.compile(r"^(?P<key>\d+-after-\d+)\.g(?P<n>\d+)$")


def claim_key(index: int, after: int | None) -> str:
    """The name of config `index`'s claim when its latest run is `after` (None: no run yet)."""
    return f"{index}-after-{after or 0}"


def locked(path: Path) -> bool:
    """Whether another open file holds the lock on path (a run that inherited it)."""
    try:
        fd = open_lock_file(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if it was taken here
    return False


def held(claim: object, lock: Path, now: dt.datetime | None = None) -> bool:
    """Whether a claim's holder may still act on it: on this host, one of its processes runs or
    its lock is held; of another host, the claim was written less than STALE_CLAIM ago."""
    if not isinstance(claim, dict) or not isinstance(claim.get("processes"), list):
        return False  # damaged: nobody can be shown to hold it
    verdicts = [process_alive(p) for p in claim["processes"]]
    if any(v is True for v in verdicts):
        return True
    if claim.get("host") == HOST:
        return locked(lock)
    try:
        written = dt.datetime.fromisoformat(str(claim.get("time")))
    except ValueError:
        return False
    if written.tzinfo is None:
        return False
    return (now or dt.datetime.now(dt.UTC)) - written < STALE_CLAIM


class FileClaims:
    """Claims of one sweep in a file store: one JSON file each, created with O_EXCL."""

    def __init__(self, store: Path, sweep_id: str):
        self.folder = store / SWEEPS / sweep_id / "claims"

    def generations(self, key: str) -> dict[int, object]:
        """{generation: claim (None if unreadable)} of one key."""
        found: dict[int, object] = {}
        for path in self.folder.glob(f"{key}.g*.json") if self.folder.is_dir() else []:
            match = GENERATION.match(path.name.removesuffix(".json"))
            if match is None or match["key"] != key:
                continue
            try:
                found[int(match["n"])] = load_plain(path)
            except (OSError, ValueError, RecordError):
                found[int(match["n"])] = None
        return found

    def create(self, name: str, claim: dict) -> bool:
        """Create a claim in one atomic act; False when it exists already."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(claim, f)
            f.flush()
            os.fsync(f.fileno())
        durable_step(path)
        return True

    def update(self, name: str, claim: dict) -> None:
        with replacing(self.folder / f"{name}.json") as f:
            json.dump(claim, f)


class MongoClaims:
    """Claims of one sweep in MongoDB: documents whose unique `_id` is sweep/claim."""

    def __init__(self, db, sweep_id: str):
        self.collection, self.sweep_id = db[CLAIMS_COLLECTION], sweep_id

    def generations(self, key: str) -> dict[int, object]:
        prefix = f"{self.sweep_id}/{key}.g"
        found: dict[int, object] = {}
        for doc in self.collection.find({"_id": {"$regex": f"^{re.escape(prefix)}"}}):
            number = str(doc.get("_id", "")).removeprefix(prefix)
            if number.isdecimal() and number.isascii():
                found[int(number)] = doc
        return found

    def create(self, name: str, claim: dict) -> bool:
        from pymongo.errors import DuplicateKeyError

        try:
            self.collection.insert_one({"_id": f"{self.sweep_id}/{name}", **claim})
        except DuplicateKeyError:
            return False
        durable_step(f"{CLAIMS_COLLECTION}/{self.sweep_id}/{name}")
        return True

    def update(self, name: str, claim: dict) -> None:
        self.collection.replace_one({"_id": f"{self.sweep_id}/{name}"}, claim)


class SweepClaims:
    """A sweep's claims in its store (a folder or MongoDB), and their locks on this host."""

    def __init__(self, location: StoreLocation, sweep_id: str):
        if location.is_mongo:
            from observers.mongo import reach  # pymongo only when asked for

            self.book: FileClaims | MongoClaims = MongoClaims(reach(location.secret), sweep_id)
        else:
            self.book = FileClaims(location.path, sweep_id)
        self.place = f"{location}/{sweep_id}"

    def lock_path(self, name: str) -> Path:
        """The lock file of a claim: beside it in a file store, else in this host's temp dir."""
        if isinstance(self.book, FileClaims):
            return self.book.folder / f"{name}.lock"
        digest = hashlib.sha256(f"{self.place}/{name}".encode()).hexdigest()[:32]
        folder = Path(tempfile.gettempdir()) / f"reprolab-claims-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder / f"{digest}.lock"

    def lock_for_run(self, name: str) -> int | None:
        """An open file holding the claim's lock, for the run to inherit (pass_fds); the
        launcher closes its copy once the run is started. None when the lock file is not one
        (planted: a link, a FIFO) or is held: the claim still names the run's processes."""
        try:
            fd = open_lock_file(self.lock_path(name))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        os.set_inheritable(fd, True)
        return fd

    def take(self, index: int, after: int | None, process: dict) -> str | None:
        """Claim config `index` (its latest run `after`) for `process`: the claim's name, or None
        when a live holder has it. A stale claim is taken over by its next generation."""
        key = claim_key(index, after)
        generations = self.book.generations(key)
        if generations:
            last = max(generations)
            if held(generations[last], self.lock_path(f"{key}.g{last}")):
                return None
            name = f"{key}.g{last + 1}"
        else:
            name = f"{key}.g0"
        return name if self.book.create(name, self.claim([process])) else None

    def add(self, name: str, processes: list[dict]) -> None:
        """Record the processes now acting on a claim (the run just started), atomically."""
        self.book.update(name, self.claim(processes))

    @staticmethod
    def claim(processes: list[dict]) -> dict:
        return {"processes": processes, "host": HOST, "time": utc_text(dt.datetime.now(dt.UTC))}
