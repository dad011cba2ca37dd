"""`reprolab sync PATH --to URL`: upload the runs of a file store (or fallback store) into MongoDB.

Each run is written in Sacred's MongoObserver schema (so Omniboard shows it) with a fresh numeric
`_id`, and carries its identity (`reprolab.run_uuid`: meta.run_uuid, or a hash of what makes the
run unique for runs recorded without one). A run MongoDB already holds completely is skipped, so
syncing twice creates no duplicates; an incomplete MongoDB record (a run that lost its server
mid-way, or an upload that was cut short) is replaced in place, keeping its `_id`.
Sweep records (<store>/.reprolab/sweeps/) go into MongoDB's `sweeps` collection after the runs,
so `reprolab sweep --status`, `ls --sweep` and `compare --sweep` read the same from both stores.
A search's study journal (<store>/.reprolab/studies/<id>.log) goes into MongoDB's `studies`
journal: the logs MongoDB lacks are appended, so a search continues there where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

from sacred.observers.mongo import MongoObserver

from observers.credentials import describe_error, redact_url
from observers.exit_codes import ExitCode
from observers.files import durable_step
from observers.location import MONGO_URL_VARIABLE, is_mongo_url
from observers.mongo import ensure_indexes, omniboard_fields, reach
from observers.mongo_bounds import (
    CHUNKS_COLLECTION,
    TIMES,
    MetricsWriter,
    bounded_output,
    fit_document,
    store_artifact,
    store_full_output,
    store_source,
)
from observers.store import FileRunStore, RecordError
from observers.sweep_records import (
    FileSweepRecords,
    MongoSweepRecords,
    merged,
    plain_text,
    same_sweep,
)


@dataclass
class SyncReport:
    """What a sync did, run by run (local id, MongoDB id)."""

    uploaded: list[tuple[int, int]] = field(default_factory=list)  # new in MongoDB
    completed: list[tuple[int, int]] = field(default_factory=list)  # incomplete record replaced
    present: list[tuple[int, int]] = field(default_factory=list)  # already complete there
    running: list[tuple[int, int]] = field(default_factory=list)  # still recorded live
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # damaged local record
    sweeps: dict[str, str] = field(default_factory=dict)  # sweep id: copied, updated, already there

    def summary(self) -> str:
        """Counts of what happened, in one line."""
        line = (
            f"{len(self.uploaded)} uploaded, {len(self.completed)} completed, "
            f"{len(self.present)} already there, {len(self.running)} still running, "
            f"{len(self.unreadable)} unreadable"
        )
        if self.sweeps:
            outcomes = list(self.sweeps.values())
            line += "; sweeps: " + ", ".join(f"{outcomes.count(o)} {o}" for o in SWEEP_OUTCOMES)
        return line


SWEEP_OUTCOMES = ("copied", "updated", "already there", "unreadable")


@dataclass
class LocalRun:
    """Everything of one local run, read before anything is written."""

    run: dict
    config: dict
    info: dict
    metrics: dict
    sources: dict[str, bytes]
    artifacts: dict[str, Path]
    output: str

    @cached_property
    def identity(self) -> str:
        return run_identity(self.run, self.config)


def run_identity(run: dict, config: dict) -> str:
    """A run's identity across stores: meta.run_uuid, else a hash of what makes the run unique."""
    uuid = (run.get("meta") or {}).get("run_uuid")
    if uuid:
        return uuid
    unique = [
        run.get("experiment", {}).get("name"),
        run.get("command"),
        run.get("start_time"),
        run.get("host", {}).get("hostname"),
        config,
    ]
    return hashlib.sha256(json.dumps(unique, sort_keys=True, default=str).encode()).hexdigest()


def read_local_run(store: FileRunStore, run_id: int) -> LocalRun:
    """Read a run completely (RecordError if any part is missing or damaged)."""
    run = store.run(run_id)
    output = store.run_dir(run_id) / "cout.txt"
    names = run.get("artifacts", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise RecordError(f"run {run_id}: run.json's artifacts are not a list of names")
    if not isinstance(run.get("experiment"), dict):
        raise RecordError(f"run {run_id}: run.json names no experiment")
    local = LocalRun(
        run=run,
        config=store.config(run_id),
        info=store.info(run_id),
        metrics=store.metrics(run_id),
        sources=store.sources(run_id),
        artifacts={name: store.artifact_path(run_id, name) for name in names},
        output=output.read_text(errors="replace") if output.is_file() else "",
    )
    key = unstorable([run, local.config, local.info, [m["values"] for m in local.metrics.values()]])
    if key is not None:
        raise RecordError(
            f"run {run_id}: its record holds the key {key}, which MongoDB cannot store"
        )
    try:  # every value a MongoDB document is built from, checked before anything is written
        _metric_points(local.metrics)
        [_when(run.get(key)) for key in TIMES if key in run]
        local.identity  # noqa: B018 - computed from the record, may fail on its shape
    except (TypeError, ValueError, AttributeError) as error:
        raise RecordError(
            f"run {run_id}: a time or metric is not in Sacred's shape ({error})"
        ) from None
    return local


def unstorable(value) -> str | None:
    """What MongoDB refuses to store anywhere in value: a key with a NUL character or a leading
    '$', or an integer beyond 8 bytes; described for a one-sentence refusal."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str) or "\0" in key or key.startswith("$"):
                    return f"the key {key!r}"
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is int and not -(2**63) <= item < 2**63:
            return f"the integer {item}"
    return None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _metric_points(metrics: dict) -> dict:
    return {
        name: {
            "steps": series["steps"],
            "values": series["values"],
            "timestamps": [datetime.fromisoformat(t) for t in series["timestamps"]],
        }
        for name, series in metrics.items()
    }


class Uploader:
    """Writes local runs into one MongoDB database."""

    def __init__(self, db):
        import gridfs

        self.db, self.runs, self.fs = db, db["runs"], gridfs.GridFS(db)
        ensure_indexes(db)

    def twin(self, identity: str) -> dict | None:
        """The MongoDB document of the run with this identity, if any."""
        return self.runs.find_one({"reprolab.run_uuid": identity})

    def upload(self, local: LocalRun, twin: dict | None) -> int:
        """Write the run (replacing an incomplete twin in place) and return its MongoDB id."""
        if twin is None:
            run_id = self._reserve_id(local)
        else:
            run_id = twin["_id"]
            self._forget(run_id, twin)
        durable_step(f"runs/{run_id} placeholder")  # a kill from here on leaves an incomplete
        # twin, replaced next time
        document, _ = fit_document(self._document(local, run_id, twin))
        self.runs.replace_one({"_id": run_id}, document, upsert=True)
        durable_step(f"runs/{run_id}")
        return run_id

    def _reserve_id(self, local: LocalRun) -> int:
        """Insert a placeholder under the next free numeric id (Sacred's numbering)."""
        from pymongo.errors import DuplicateKeyError

        run = local.run
        placeholder = {
            "experiment": {"name": run.get("experiment", {}).get("name")},
            "status": run.get("status"),
            "start_time": _when(run.get("start_time")),
            "reprolab": {"run_uuid": local.identity, "source": "sync", "complete": False},
        }
        while True:
            ids = [doc["_id"] for doc in self.runs.find({"_id": {"$type": "number"}}, {"_id": 1})]
            run_id = int(max(ids, default=0)) + 1
            try:
                self.runs.insert_one({"_id": run_id, **placeholder})
                return run_id
            except DuplicateKeyError:
                continue  # another writer took this id first

    def _forget(self, run_id: int, twin: dict) -> None:
        """Remove what an incomplete record left: metric documents and its own GridFS files."""
        self.db["metrics"].delete_many({"run_id": run_id})
        self.db[CHUNKS_COLLECTION].delete_many({"run_id": run_id})
        own_files = {artifact["file_id"] for artifact in twin.get("artifacts", [])}
        for prefix in (f"^artifact://runs/{run_id}/", f"^captured_out://runs/{run_id}$"):
            found = self.db["fs.files"].find({"filename": {"$regex": prefix}}, {"_id": 1})
            own_files |= {f["_id"] for f in found}
        for file_id in own_files:
            self.fs.delete(file_id)

    def _document(self, local: LocalRun, run_id: int, twin: dict | None) -> dict:
        run = local.run
        refs = MetricsWriter(self.db, run_id).add(_metric_points(local.metrics))
        durable_step(f"runs/{run_id} metrics")
        bookkeeping = {
            "run_uuid": local.identity,
            "source": "sync",
            "complete": run.get("status") != "RUNNING",
            "times": {key: run[key] for key in TIMES if run.get(key)},
        }
        output_file = store_full_output(self.fs, "runs", run_id, local.output)
        durable_step(f"runs/{run_id} output")
        if output_file is not None:
            bookkeeping["captured_out_file"] = output_file
        document = {
            **run,
            "_id": run_id,
            "format": MongoObserver.VERSION,
            "experiment": {**run["experiment"], "sources": self._sources(local)},
            "config": local.config,
            "info": {**local.info, "metrics": refs} if refs else local.info,
            "artifacts": self._artifacts(local, run_id),
            "captured_out": bounded_output(local.output)[0],
            "reprolab": bookkeeping,
            **{key: _when(run.get(key)) for key in TIMES if key in run},
        }
        if twin and "omniboard" in twin:
            document["omniboard"] = twin["omniboard"]  # tags and notes added in Omniboard
        else:
            document.update(omniboard_fields(run.get("meta")))  # a sweep's, a torchrun's
        return document

    def _sources(self, local: LocalRun) -> list[list]:
        base_dir = local.run["experiment"].get("base_dir")
        base_dir = base_dir if isinstance(base_dir, str) else ""  # a record's field: any shape
        return [
            [
                name,
                store_source(
                    self.fs, os.path.join(base_dir, name), hashlib.md5(data).hexdigest(), data
                ),
            ]
            for name, data in local.sources.items()
        ]

    def _artifacts(self, local: LocalRun, run_id: int) -> list[dict]:
        stored = []
        for name, path in local.artifacts.items():
            file_id = store_artifact(self.fs, self.runs.name, run_id, name, path)
            durable_step(f"runs/{run_id} artifact {name}")
            stored.append({"name": name, "file_id": file_id})
        return stored


def sync_store(
    path: str | os.PathLike, url: str, echo: Callable[[str], object] = print
) -> SyncReport:
    """Upload every run of the file store at path into MongoDB at url; say what happened to each."""
    from pymongo.errors import PyMongoError

    store = FileRunStore(path)
    uploader = Uploader(reach(url))
    report = SyncReport()
    sweeps = _local_sweeps(path, report, echo)
    targets = MongoSweepRecords(uploader.db, redact_url(url))
    _refuse_other_sweeps(sweeps, targets, store.location)
    for run_id in store.run_ids():
        try:
            _sync_run(store, run_id, uploader, report, echo)
        except PyMongoError as error:
            raise RecordError(
                f"MongoDB failed while uploading run {run_id} from {store.location} "
                f"({describe_error(error, url)}); nothing is lost, run the sync again"
            ) from None
    try:
        _sync_sweeps(sweeps, targets, report, echo)
        _sync_studies(path, uploader.db, echo)
    except PyMongoError as error:
        raise RecordError(
            f"MongoDB failed while copying the sweep records of {store.location} "
            f"({describe_error(error, url)}); run the sync again"
        ) from None
    for note in store.skipped:  # entries that are not runs of this store: never uploaded
        echo(f"note: {note}")
    return report


def _local_sweeps(path, report: SyncReport, echo: Callable[[str], object]) -> list[dict]:
    """The store's readable sweep records; a damaged one is reported and left out."""
    local, found = FileSweepRecords(path), []
    for sweep_id in local.ids():
        try:
            record = local.find(sweep_id)
            if record is not None:
                plain_text(record)  # what MongoDB would be given: plain JSON only (no NaN)
                if (key := unstorable(record)) is not None:
                    raise RecordError(f"it holds {key}, which MongoDB cannot store")
                found.append(record)
        except (RecordError, ValueError) as error:
            report.sweeps[sweep_id] = "unreadable"
            echo(f"sweep {sweep_id}: not copied, its record cannot be read ({error})")
    return found


def _refuse_other_sweeps(sweeps: list[dict], targets: MongoSweepRecords, location: str) -> None:
    """Before anything is written: a sweep id that MongoDB holds for another sweep would mix
    two sweeps' runs there, so the sync is refused."""
    for record in sweeps:
        there = targets.find(record["id"])
        if there is not None and not same_sweep(record, there):
            raise RecordError(
                f"sweep {record['id']} of {location} (created {record.get('created')}) is not the "
                f"sweep {record['id']} already in {targets.location} (created {there.get('created')}); "
                "nothing was synced"
            )


def _sync_sweeps(
    sweeps: list[dict],
    targets: MongoSweepRecords,
    report: SyncReport,
    echo: Callable[[str], object],
) -> None:
    """Each sweep record into MongoDB, the submissions of both sides kept (the save merges
    with the record MongoDB holds when it writes: a resume's submission made since is kept)."""
    for record in sweeps:
        there = targets.find(record["id"])
        wanted = {**record, "store": targets.location}
        if merged(there, wanted) == there:
            report.sweeps[record["id"]] = "already there"
            continue
        targets.save(wanted)
        durable_step(f"sweeps/{record['id']}")
        report.sweeps[record["id"]] = "updated" if there else "copied"
        configs = record.get("configs")  # a record is data: its configs may be anything
        count = f"{len(configs)} configs" if isinstance(configs, list) else "configs unreadable"
        echo(f"sweep {record['id']}: {report.sweeps[record['id']]} ({count})")


def _sync_studies(path, db, echo: Callable[[str], object]) -> None:
    """Each search's study journal into MongoDB's `studies`: the logs it lacks, appended."""
    folder = Path(path) / ".reprolab" / "studies"
    if not folder.is_dir():
        return
    from observers.studies import sync_journal  # optuna only when there is a study

    for journal in sorted(folder.glob("*.log")):
        added = sync_journal(journal, db, journal.stem)
        echo(
            f"study {journal.stem}: {added} journal entries copied"
            if added
            else f"study {journal.stem}: already there"
        )


def _sync_run(
    store: FileRunStore,
    run_id: int,
    uploader: Uploader,
    report: SyncReport,
    echo: Callable[[str], object],
) -> None:
    try:
        local = read_local_run(store, run_id)
    except RecordError as error:
        report.unreadable.append((run_id, str(error)))
        echo(f"run {run_id}: not uploaded, its record cannot be read ({error})")
        return
    twin, running = uploader.twin(local.identity), local.run.get("status") == "RUNNING"
    if twin is not None and twin["reprolab"].get("complete"):
        report.present.append((run_id, twin["_id"]))
        echo(f"run {run_id}: already in MongoDB as run {twin['_id']}")
    elif twin is not None and twin["reprolab"].get("source") == "live" and running:
        report.running.append((run_id, twin["_id"]))
        echo(f"run {run_id}: skipped, still being recorded as MongoDB run {twin['_id']}")
    else:
        mongo_id = uploader.upload(local, twin)
        (report.completed if twin else report.uploaded).append((run_id, mongo_id))
        what = "completed the record of" if twin else "uploaded as"
        echo(
            f"run {run_id}: {what} MongoDB run {mongo_id} ({local.run.get('status')}, "
            f"{len(local.metrics)} metrics, {len(local.artifacts)} artifacts, "
            f"{len(local.sources)} sources)"
        )


def sync_command(args) -> int:
    """The `reprolab sync PATH [--to URL]` command: upload a store's runs into MongoDB."""
    url = args.to or os.environ.get(MONGO_URL_VARIABLE)
    if not url:
        raise ValueError(
            f"no MongoDB to sync to: pass --to mongodb://... or set {MONGO_URL_VARIABLE}"
        )
    if not is_mongo_url(url):
        raise ValueError(f"--to must be a mongodb:// URL, got '{redact_url(url)}'")
    report = sync_store(args.path, url)
    print(f"synced {args.path} into {redact_url(url)}: {report.summary()}")
    failed = report.unreadable or "unreadable" in report.sweeps.values()
    return ExitCode.FAILED if failed else ExitCode.OK
