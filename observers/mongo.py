"""Recording a run in MongoDB in Sacred's MongoObserver schema, without losing it.

`mongo_observers(url)`: one observer writes what Omniboard reads (numeric `_id`, `info.metrics`
references to `metrics` documents, artifacts and sources in GridFS) and keeps a complete local
copy in a file store (./runs_fallback, or $REPROLAB_FALLBACK_DIR) until MongoDB holds the finished
run. Unreachable at start (a ping that gives up after 2 s) or gone during the run: one warning,
the run goes on, the full record stays local for `reprolab sync`. Documents stay under MongoDB's
16 MB limit (observers.mongo_bounds); an artifact added again under its name (a checkpoint saved
every epoch) replaces the earlier one. Reading back: observers.mongo_store.

The URL's password never reaches a record or a message: `redact` is applied to everything printed.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from copy import deepcopy
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sacred.observers.base import RunObserver
from sacred.observers.mongo import MongoObserver

from observers.credentials import describe_error, redact_url
from observers.filestore import FileStore
from observers.location import MONGO_URL_VARIABLE
from observers.mongo_bounds import (
    CHUNKS_COLLECTION,
    MetricsWriter,
    bounded_output,
    exact_times,
    fit_document,
    store_artifact,
    store_full_output,
    store_source,
)
from observers.records import RecordError

log = logging.getLogger("reprolab.mongo")

FALLBACK_VARIABLE = "REPROLAB_FALLBACK_DIR"
DEFAULT_FALLBACK_DIR = "runs_fallback"
DEFAULT_DATABASE = "sacred"  # Sacred's default when the URL names no database
CLIENT_OPTIONS = {  # fail within seconds, not pymongo's 30 s; a URL's own settings win
    "serverSelectionTimeoutMS": 2000,
    "connectTimeoutMS": 2000,
    "socketTimeoutMS": 30000,
}
ID_ATTEMPTS = 100  # run ids tried before a run's insert gives up (Sacred tries without end)


# ------------------------------------------------------------------------------ connecting


def database_name(url: str) -> str:
    """The database in the URL's path, else Sacred's default "sacred"."""
    return unquote(urlsplit(url).path.lstrip("/")) or DEFAULT_DATABASE


def check_url(url: str) -> None:
    """Refuse a malformed mongodb:// URL in one sentence (mongodb+srv:// needs DNS: later)."""
    from pymongo import uri_parser
    from pymongo.errors import ConfigurationError

    if url.startswith("mongodb+srv://"):
        return
    try:
        uri_parser.parse_uri(url)
    except (ConfigurationError, ValueError) as error:
        raise ValueError(
            f"not a valid MongoDB URL: {redact_url(url)} ({describe_error(error, url)})"
        ) from None


def make_client(url: str, **options):
    """A pymongo client (tests replace this function to hand out mongomock clients)."""
    import pymongo

    return pymongo.MongoClient(url, **options)


def connect(url: str):
    """The URL's database, after a ping that fails within seconds when the server is away."""
    check_url(url)
    given = {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}
    options = {k: v for k, v in CLIENT_OPTIONS.items() if k.lower() not in given}
    client = make_client(url, appname="reprolab", **options)
    client.admin.command("ping")
    return client[database_name(url)]


def reach(url: str):
    """connect(), with a server that does not answer told in one RecordError sentence (a
    malformed URL stays check_url's ValueError)."""
    try:
        return connect(url)
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - pymongo's, in one sentence
        raise RecordError(
            f"cannot reach MongoDB at {redact_url(url)}: {describe_error(error, url)}"
        ) from None


def ensure_indexes(db) -> None:
    """Indexes for the lookups every write does (by run and metric name, by run identity)."""
    db["metrics"].create_index([("run_id", 1), ("name", 1)])
    db[CHUNKS_COLLECTION].create_index([("run_id", 1), ("name", 1), ("chunk", 1)])
    db["runs"].create_index("reprolab.run_uuid")


def fallback_dir() -> Path:
    """Where runs are recorded when MongoDB is away: $REPROLAB_FALLBACK_DIR or ./runs_fallback."""
    return Path(os.environ.get(FALLBACK_VARIABLE) or DEFAULT_FALLBACK_DIR)


def omniboard_fields(meta: dict | None) -> dict:
    """What Omniboard's run list reads as a run's tags and notes (its `omniboard` field), from
    the run's meta: its tags, and its comment (Omniboard shows it only when notes are absent)."""
    meta = meta or {}
    fields: dict = {}
    if meta.get("tags"):
        fields["tags"] = [str(tag) for tag in meta["tags"]]
    if meta.get("comment"):
        fields["notes"] = str(meta["comment"])
    return {"omniboard": fields} if fields else {}


# ------------------------------------------------------------------------------ recording


class BoundedMongoObserver(MongoObserver):
    """Sacred's MongoObserver with every document under the 16 MB limit, all metric points kept,
    sources stored once per content, and errors raised at once (no retries, no pickles)."""

    @classmethod
    def on(cls, db, run_uuid: str | None) -> BoundedMongoObserver:
        """An observer writing into db's runs, metrics and GridFS collections."""
        import gridfs

        ensure_indexes(db)
        self = cls.create_from(db["runs"], gridfs.GridFS(db), metrics_collection=db["metrics"])
        self.db, self.run_uuid = db, run_uuid
        self.writer, self.metric_refs, self.full_output, self.cut = None, [], "", []
        return self

    def insert(self):
        """Insert the run under the next free numeric id: after the highest, or after the last
        one tried when another run took it; ID_ATTEMPTS tries, then one sentence."""
        from pymongo.errors import DuplicateKeyError

        self.run_entry["reprolab"] = {
            "run_uuid": self.run_uuid,
            "source": "live",
            "complete": False,
        }
        tried = 0
        for _ in range(ID_ATTEMPTS):
            tried = max(self.highest_id(), tried) + 1
            self.run_entry["_id"] = tried
            try:
                # the labels only at insert: later saves must not undo tags edited in Omniboard
                self.runs.insert_one(
                    {**self.run_entry, **omniboard_fields(self.run_entry.get("meta"))}
                )
                break
            except DuplicateKeyError:
                continue
        else:
            raise RuntimeError(
                f"no free run id found in {self.runs.full_name} after "
                f"{ID_ATTEMPTS} tries (up to {tried})"
            )
        self.writer = MetricsWriter(self.db, self.run_entry["_id"], self.metrics.name)

    def highest_id(self) -> int:
        """The highest numeric run id recorded (0 if none)."""
        latest = self.runs.find_one({"_id": {"$type": "number"}}, {"_id": 1}, sort=[("_id", -1)])
        return int(latest["_id"]) if latest else 0

    def save_sources(self, ex_info):
        return [
            [name, store_source(self.fs, os.path.join(ex_info["base_dir"], name), md5)]
            for name, md5 in ex_info["sources"]
        ]

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self.full_output = captured_out
        super().heartbeat_event(info, bounded_output(captured_out)[0], beat_time, result)

    def log_metrics(self, metrics_by_name, info):
        self.metric_refs += self.writer.add(metrics_by_name)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        """Store an artifact in GridFS; one added again under its name (a checkpoint saved every
        epoch) takes the earlier entry's place, and the earlier file is deleted only once the run
        document no longer points to it (a failed write leaves no dangling file id)."""
        earlier = [a["file_id"] for a in self.run_entry["artifacts"] if a["name"] == name]
        file_id = store_artifact(
            self.fs, self.runs.name, self.run_entry["_id"], name, filename, metadata, content_type
        )
        self.run_entry["artifacts"] = with_artifact(self.run_entry["artifacts"], name, file_id)
        self.save()
        for old_id in earlier:
            self.fs.delete(old_id)

    def save(self):
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.document()})

    def final_save(self, attempts):
        bookkeeping = self.run_entry["reprolab"]
        output_file = store_full_output(
            self.fs, self.runs.name, self.run_entry["_id"], self.full_output
        )
        if output_file is not None:
            bookkeeping["captured_out_file"] = output_file
        bookkeeping["complete"] = True
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.document()}, upsert=True)

    def document(self) -> dict:
        """The run entry as stored: info with its metric references, exact times, fitted."""
        entry = dict(self.run_entry)
        if self.metric_refs:
            entry["info"] = {**(entry.get("info") or {}), "metrics": self.metric_refs}
        entry["reprolab"] = {**entry["reprolab"], "times": exact_times(entry)}
        document, self.cut = fit_document(entry)
        return document


class MongoWithFallback(RunObserver):
    """Records a run in MongoDB and keeps a complete local copy until MongoDB holds it all.

    Every MongoDB error is caught and reported once; from then on only the local copy is
    written. The local copy is deleted when MongoDB has the finished, untrimmed record."""

    priority = 30

    def __init__(self, url: str, local_dir: str | os.PathLike):
        self.url, self.location, self.local_dir = url, redact_url(url), Path(local_dir)
        self.local: FileStore | None = None
        self.db = None  # reached by connect()
        self.mongo: BoundedMongoObserver | None = None
        self.mongo_id: int | None = None
        self.problem: str | None = None
        self.finished = False  # a heartbeat that lost the race with the end is ignored
        self._lock = threading.Lock()

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        with self._lock:
            self._start_mongo(deepcopy(ex_info), command, host_info, start_time, config, meta_info)
            self.local = FileStore(self.local_dir)
            local_id = self.local.started_event(
                deepcopy(ex_info), command, host_info, start_time, config, meta_info, None
            )
            if self.mongo is None:
                away = "is unreachable" if self.db is None else "cannot record this run"
                log.warning(
                    "MongoDB at %s %s (%s); recording this run in %s instead "
                    "(upload it later with: %s)",
                    self.location,
                    away,
                    self.problem,
                    self.local.dir,
                    self._sync_hint(),
                )
            return self.mongo_id if self.mongo is not None else local_id

    def connect(self) -> None:
        """Reach MongoDB, before the run starts: it may take seconds, and Ctrl-C or SIGTERM
        stop it: they raise no Exception, so they are not taken for a server that is away."""
        log.info("reaching MongoDB at %s", self.location)
        try:
            self.db = connect(self.url)
        except Exception as error:
            self.problem = describe_error(error, self.url)

    def _start_mongo(self, ex_info, command, host_info, start_time, config, meta_info) -> None:
        if self.db is None and self.problem is None:
            self.connect()
        if self.db is None:
            return
        try:
            mongo = BoundedMongoObserver.on(self.db, meta_info.get("run_uuid"))
            self.mongo_id = mongo.started_event(
                ex_info, command, host_info, start_time, config, meta_info, None
            )
            self.mongo = mongo
        except Exception as error:  # whatever MongoDB does, the run must start
            self.problem = describe_error(error, self.url)

    def _mongo(self, method: str, **kwargs) -> None:
        if self.mongo is None:
            return
        try:
            getattr(self.mongo, method)(**kwargs)
        except Exception as error:  # reported once; the local copy carries on
            self.mongo, self.problem = None, describe_error(error, self.url)
            log.warning(
                "MongoDB stopped recording run %s (%s); the run goes on and its full "
                "record is kept in %s",
                self.mongo_id,
                self.problem,
                self.local.dir,
            )

    def _both(self, method: str, final: bool = False, **kwargs) -> None:
        with self._lock:
            if self.finished or self.local is None:  # ended (or stopped before it started)
                return
            getattr(self.local, method)(**kwargs)
            self._mongo(method, **kwargs)
            if final:
                self.finished = True
                self._finish()

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._both(
            "heartbeat_event",
            info=info,
            captured_out=captured_out,
            beat_time=beat_time,
            result=result,
        )

    def log_metrics(self, metrics_by_name, info):
        self._both("log_metrics", metrics_by_name=metrics_by_name, info=info)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._both(
            "artifact_event",
            name=name,
            filename=filename,
            metadata=metadata,
            content_type=content_type,
        )

    def resource_event(self, filename):
        self._both("resource_event", filename=filename)

    def completed_event(self, stop_time, result):
        self._both("completed_event", final=True, stop_time=stop_time, result=result)

    def interrupted_event(self, interrupt_time, status):
        self._both("interrupted_event", final=True, interrupt_time=interrupt_time, status=status)

    def failed_event(self, fail_time, fail_trace):
        self._both("failed_event", final=True, fail_time=fail_time, fail_trace=fail_trace)

    def _finish(self) -> None:
        """Drop the local copy if MongoDB has it all, else say where it is (and how to upload)."""
        if self.mongo is not None and not self.mongo.cut:
            shutil.rmtree(self.local.dir, ignore_errors=True)
        elif self.mongo is not None:
            log.warning(
                "MongoDB's record of run %s lacks %s (too large for a MongoDB document); "
                "the complete record stays in %s",
                self.mongo_id,
                ", ".join(self.mongo.cut),
                self.local.dir,
            )
        elif self.mongo_id is not None:
            log.warning(
                "MongoDB's record of run %s is incomplete (%s); the complete record is "
                "in %s (upload it with: %s)",
                self.mongo_id,
                self.problem,
                self.local.dir,
                self._sync_hint(),
            )

    def _sync_hint(self) -> str:
        same_url = os.environ.get(MONGO_URL_VARIABLE) == self.url
        return f"reprolab sync {self.local_dir}" + ("" if same_url else " --to <this MongoDB URL>")


def with_artifact(artifacts: list[dict], name: str, file_id) -> list[dict]:
    """Sacred's artifact list with one entry for name, pointing to file_id (in its old place)."""
    entry, names = {"name": name, "file_id": file_id}, [a["name"] for a in artifacts]
    if name not in names:
        return [*artifacts, entry]
    first = names.index(name)
    return [
        entry if i == first else a
        for i, a in enumerate(artifacts)
        if i == first or a["name"] != name
    ]


def mongo_observers(url: str) -> list[RunObserver]:
    """The observers that record a run in MongoDB at url, with a local fallback store."""
    check_url(url)
    return [MongoWithFallback(url, fallback_dir())]
