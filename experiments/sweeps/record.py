"""A sweep's record in typed form: what was declared, its configs, and each submission.

The record is stored by observers.sweep_records beside the runs (a file store's
.reprolab/sweeps/<id>.json or MongoDB's `sweeps`). Read back it is data someone else may have
written, so `SweepRecord.parse` is the check: a wrong shape is one sentence naming the field,
and nothing in it chooses code to run (its experiment is looked up in this checkout only).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from experiments.child import ChildRun, checkout_file
from experiments.sweeps.declare import config_words
from experiments.sweeps.space import RUN_CHOOSING_KEYS
from ingredients.checkout import CHECKOUT_ROOT
from ingredients.imports import FROM_RECORD_VARIABLE
from observers.files import utc_text
from observers.location import StoreLocation
from observers.provenance import git
from observers.records import RecordError
from observers.sweep_records import SWEEPS, attempt_key, sweep_records

# What each field of a submission must be when present ("engine" always is).
ATTEMPT_FIELDS = {
    "engine": str,
    "id": str,  # names it in the record (a submission recorded before ids has none)
    "indices": list,
    "task_ids": dict,
    "job_id": str,
    "options": dict,
    "folder": str,
    "parallel": int,
    "threads": int,
    "host": str,
}


@dataclass
class Job:
    """What to start for one config: fresh, or continuing an interrupted run."""

    index: int
    words: list[str]  # after `with`
    resumes: int | None = None
    after: int | None = None  # the config's latest run when the job was planned (its claim)


@dataclass
class SweepRecord:
    """A sweep as recorded; `extra` keeps the descriptive fields (created, declaration, code...)."""

    id: str
    experiment: str  # relative to the checkout
    named_configs: list[str]
    configs: list[dict]
    attempts: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    read_back: bool = False  # parsed from a store: its import paths were chosen by a record

    @classmethod
    def parse(cls, raw: object, sweep_id: str) -> SweepRecord:
        """The record read back from a store, or RecordError naming the first wrong field."""

        def wrong(name: str, what: str) -> RecordError:
            return RecordError(f"sweep {sweep_id}'s record is damaged: {name} must be {what}")

        if not isinstance(raw, dict):
            raise wrong("the record", "a table")
        for name, kind in (("id", str), ("experiment", str), ("named_configs", list)):
            if not isinstance(raw.get(name), kind):
                raise wrong(name, f"a {kind.__name__}")
        for name in ("configs", "attempts"):
            if not isinstance(raw.get(name), list):
                raise wrong(name, "a list")
        if not all(isinstance(name, str) for name in raw["named_configs"]):
            raise wrong("named_configs", "a list of names")
        if not raw["configs"] or not all(isinstance(c, dict) for c in raw["configs"]):
            raise wrong("configs", "a non-empty list of tables")
        for number, attempt in enumerate(raw["attempts"]):
            check_attempt(attempt, f"attempts[{number}]", wrong)
        fields = ("id", "experiment", "named_configs", "configs", "attempts")
        extra = {k: v for k, v in raw.items() if k not in fields}
        return cls(
            raw["id"],
            raw["experiment"],
            raw["named_configs"],
            raw["configs"],
            raw["attempts"],
            extra,
            read_back=True,
        )

    def to_dict(self) -> dict:
        """The record as the store keeps it (plain data)."""
        return {
            "id": self.id,
            "experiment": self.experiment,
            "named_configs": self.named_configs,
            "configs": self.configs,
            **self.extra,
            "attempts": self.attempts,
        }

    def experiment_file(self, store: StoreLocation) -> Path:
        """The sweep's experiment in this checkout: the record names it relative to the checkout
        and cannot choose a file elsewhere or in a run store (RecordError, one sentence)."""
        return checkout_file(
            self.experiment,
            f"sweep {self.id}'s experiment",
            None if store.is_mongo else store.path,
            "a sweep runs only an experiment file of this checkout",
        )

    def child(self, job: Job, store: StoreLocation, **options) -> ChildRun:
        """The run of one job, recording into store as config job.index of this sweep."""
        if self.read_back:  # installed code named by the record runs only if the user says so
            options["extra_env"] = {
                **options.get("extra_env", {}),
                FROM_RECORD_VARIABLE: "declare the sweep again yourself to run it",
            }
        return ChildRun(
            self.experiment_file(store),
            store.resolved(),
            tuple(job.words),
            sweep=(self.id, job.index),
            **options,
        )

    def fresh_job(self, index: int) -> Job:
        return Job(index, self.named_configs + config_words(self.configs[index]))

    def last_attempt(self, engine: str) -> dict:
        """The sweep's latest submission on this engine, or {}."""
        return next((a for a in reversed(self.attempts) if a["engine"] == engine), {})

    def engines(self) -> str:
        """Where the sweep was started and resumed, as a status line says it: 'local', 'local,
        resumed twice (slurm)', or 'not started'."""
        engines = [attempt["engine"] for attempt in self.attempts]
        if len(engines) < 2:
            return engines[0] if engines else "not started"
        times = {2: "once", 3: "twice"}.get(len(engines), f"{len(engines) - 1} times")
        return f"{engines[0]}, resumed {times} ({', '.join(dict.fromkeys(engines[1:]))})"


def new_attempt(engine: str, **fields) -> dict:
    """A submission as the record keeps it, named by a random id (change_attempt finds it by
    that id, whatever else a launcher or a sync changed in it since)."""
    return {"engine": engine, "id": secrets.token_hex(6), "started": now(), **fields}


def local_attempt(parallel: int | None, threads: int, indices: list[int]) -> dict:
    """A local launch from here: its host and process (a resume asks whether it still runs),
    its parallel runs and threads (a resume takes them again), its configs."""
    return new_attempt(
        "local",
        host=socket.gethostname(),
        pid=os.getpid(),
        parallel=parallel,
        threads=threads,
        indices=indices,
    )


def check_attempt(attempt: object, name: str, wrong) -> None:
    """One submission's shape: each known field of its kind (engine required)."""
    if not isinstance(attempt, dict):
        raise wrong(name, "a table")
    for key, kind in ATTEMPT_FIELDS.items():
        value = attempt.get(key)
        if (key == "engine" or value is not None) and (
            not isinstance(value, kind) or isinstance(value, bool)
        ):
            raise wrong(f"{name}.{key}", f"a {kind.__name__}")
    tasks = attempt.get("task_ids") or {}
    if not all(key.isdigit() and isinstance(task, str) for key, task in tasks.items()):
        raise wrong(f"{name}.task_ids", "a table of config index to task id")


class SweepBook:
    """A store's sweep records, and where a sweep keeps its run logs and Slurm's files."""

    def __init__(self, location: StoreLocation | str):
        self.location = StoreLocation.parse(location)
        self.records = sweep_records(self.location)

    def save(self, record: SweepRecord) -> None:
        self.records.save(record.to_dict())

    def change_attempt(self, record: SweepRecord, old: dict | None, new: dict | None) -> None:
        """Add a submission (old None), replace one (old by new) or take one back (new None) in
        the stored record in one atomic read-modify-write (observers/sweep_records.py), so two
        launchers at once (two `sweep --resume`) each keep theirs; record.attempts becomes the
        stored list, the other launchers' submissions included. `old` is found by its id
        (attempt_key); one the record no longer holds is refused (RecordError), not added."""

        def changed(raw: dict) -> dict:
            attempts = list(raw.get("attempts") or [])
            if old is None:
                return {**raw, "attempts": [*attempts, new]}
            keys = [attempt_key(a) if isinstance(a, dict) else None for a in attempts]
            if attempt_key(old) not in keys:
                raise RecordError(
                    f"sweep {record.id}'s record no longer holds the submission started "
                    f"{old.get('started')} ({old.get('engine')}), so it was not changed"
                )
            place = keys.index(attempt_key(old))
            attempts[place : place + 1] = [new] if new is not None else []
            return {**raw, "attempts": attempts}

        stored = self.records.change(record.id, changed)
        record.attempts = SweepRecord.parse(stored, record.id).attempts

    def load(self, sweep_id: str) -> SweepRecord:
        raw = self.records.find(sweep_id)
        if raw is None:
            raise RecordError(f"no sweep '{sweep_id}' in {self.location}")
        return SweepRecord.parse(raw, sweep_id)

    def exists(self, sweep_id: str) -> bool:
        return self.records.find(sweep_id) is not None

    def delete(self, sweep_id: str) -> None:
        self.records.delete(sweep_id)

    def work_dir(self, sweep_id: str) -> Path:
        """Where a sweep keeps run logs and Slurm's files: beside the runs, or ./.reprolab."""
        base = SWEEPS if self.location.is_mongo else self.location.path / SWEEPS
        return (base / sweep_id).resolve()

    def slurm_folder(self, sweep_id: str) -> Path:
        """A new folder for one Slurm submission's files: named by the time and a random token,
        so two launchers submitting at once never share (or take back) one."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        return self.work_dir(sweep_id) / f"slurm-{stamp}-{secrets.token_hex(3)}"

    def new_id(self) -> str:
        """A short id no sweep in this store has yet: the date and four random hex digits."""
        while True:
            sweep_id = f"{dt.datetime.now():%Y%m%d}-{secrets.token_hex(2)}"
            if not self.exists(sweep_id):
                return sweep_id


def code_version() -> dict:
    """The checkout's commit and whether its tracked files differ from it."""
    commit = git(CHECKOUT_ROOT, "rev-parse", "HEAD")
    status = git(CHECKOUT_ROOT, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def now() -> str:
    return utc_text(dt.datetime.now(dt.UTC))


def refuse_chosen_run(record: SweepRecord, index: int, config: dict) -> None:
    """A sweep record's config may not choose a run (RecordError, one sentence)."""
    for key in RUN_CHOOSING_KEYS:
        if config.get(key) is not None:
            raise RecordError(
                f"sweep {record.id}'s config {index} sets {key}={config[key]!r}, which chooses a "
                "run to continue; a sweep's configs describe new runs, so nothing was run"
            )
