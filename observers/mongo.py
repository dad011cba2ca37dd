"""MongoDB as a run store: record in Sacred's MongoObserver schema without losing a run, read back.

Recording (`mongo_observers(url)`): one observer writes what Omniboard reads (numeric `_id`,
`info.metrics` references to `metrics` documents, artifacts and sources in GridFS) and keeps a
complete local copy in a file store (./runs_fallback, or $REPROLAB_FALLBACK_DIR) until MongoDB
holds the finished run. Unreachable at start (a ping that gives up after 2 s) or gone during the
run: one warning, the run goes on, the full record stays local for `reprolab sync`.

Bounds, so that no document reaches MongoDB's 16 MB limit however long the run:
- captured output in the run document: its last CAPTURED_OUT_BYTES; the whole text goes to GridFS
  at the end of the run (`reprolab.captured_out_file`);
- each metric's Omniboard document (`metrics`): every point up to VIEW_POINTS, then an evenly
  thinned curve (every 2nd, 4th, ... point, `kept_every`); every point is kept in
  `metrics_chunks` documents of CHUNK_POINTS points each, which is what reprolab reads back;
- info values too large for the run document are replaced by a note (the local copy is then kept).

The URL's password never reaches a record or a message: `redact` is applied to everything printed.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sacred.observers.base import RunObserver
from sacred.observers.mongo import MongoObserver, mimetype_detector

from observers.filestore import FileStore
from observers.store import RecordError

log = logging.getLogger("reprolab.mongo")

FALLBACK_VARIABLE = "REPROLAB_FALLBACK_DIR"
DEFAULT_FALLBACK_DIR = "runs_fallback"
DEFAULT_DATABASE = "sacred"  # Sacred's default when the URL names no database
CLIENT_OPTIONS = {  # fail within seconds, not pymongo's 30 s; a URL's own settings win
    "serverSelectionTimeoutMS": 2000,
    "connectTimeoutMS": 2000,
    "socketTimeoutMS": 30000,
}
CAPTURED_OUT_BYTES = 1 << 20  # tail of the captured output kept in the run document (1 MiB)
VIEW_POINTS = 10_000  # most points per metric in the document Omniboard plots
CHUNK_POINTS = 50_000  # points per metrics_chunks document (about 3.5 MB at most)
DOCUMENT_BYTES = 15 << 20  # a run document is trimmed above this (MongoDB refuses 16 MiB)
CHUNKS_COLLECTION = "metrics_chunks"
HIDDEN_FIELDS = ("_id", "config", "info", "captured_out", "format", "reprolab")

# scheme://user:password@ (password greedy up to the last '@' before a '/' or a space)
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:]*)(?::(?P<password>[^\s/]*))?@"
)
_SECRET_PARAMETER = re.compile(r"(?i)\b([\w]*(?:password|secret|token)[\w]*=)[^&\s]+")


# ------------------------------------------------------------------------------ credentials


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every URL's password (and each given secret) replaced by ***.

    A git remote like https://TOKEN@host carries its token as the user name, so a user name
    alone is hidden too, except in mongodb:// URLs where it is no secret."""

    def hide(match: re.Match) -> str:
        scheme, user, password = match["scheme"], match["user"], match["password"]
        if password is not None:
            return f"{scheme}{user}:***@"
        return match[0] if scheme.lower().startswith("mongodb") else f"{scheme}***@"

    text = _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(hide, str(text)))
    for secret in secrets:
        if secret and len(secret) > 2:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> list[str]:
    """The password of a URL as written and percent-decoded, for scrubbing messages."""
    match = _USERINFO.search(url)
    password = match["password"] if match else None
    return [password, unquote(password)] if password else []


def describe_error(error: BaseException, url: str) -> str:
    """A pymongo error as one short line without credentials."""
    text = re.split(r", Timeout:| \(configured timeouts", str(error))[0].split("\n")[0].strip()
    text = text or type(error).__name__
    return redact(text[:240], url_secrets(url))


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
            f"not a valid MongoDB URL: {redact(url)} ({describe_error(error, url)})"
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


def ensure_indexes(db) -> None:
    """Indexes for the lookups every write does (by run and metric name, by run identity)."""
    db["metrics"].create_index([("run_id", 1), ("name", 1)])
    db[CHUNKS_COLLECTION].create_index([("run_id", 1), ("name", 1), ("chunk", 1)])
    db["runs"].create_index("reprolab.run_uuid")


def fallback_dir() -> Path:
    """Where runs are recorded when MongoDB is away: $REPROLAB_FALLBACK_DIR or ./runs_fallback."""
    return Path(os.environ.get(FALLBACK_VARIABLE) or DEFAULT_FALLBACK_DIR)


# ------------------------------------------------------------------------------ documents


def bson_size(document: dict) -> int:
    """Bytes the document takes in MongoDB (0 if it cannot be encoded)."""
    import bson

    try:
        return len(bson.encode(document))
    except Exception:  # not encodable: the write itself will say so
        return 0


def bounded_output(text: str) -> tuple[str, bool]:
    """The captured output as kept in a run document: its tail, and whether anything was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= CAPTURED_OUT_BYTES:
        return text, False
    tail = data[-CAPTURED_OUT_BYTES:].decode("utf-8", "ignore")
    note = f"[reprolab: the first {len(text) - len(tail)} characters are not shown here]\n"
    return note + tail, True


def fit_document(document: dict) -> tuple[dict, list[str]]:
    """The document, with its largest info values replaced by a note until it fits in MongoDB."""
    if bson_size(document) <= DOCUMENT_BYTES:
        return document, []
    document, info, cut = dict(document), dict(document.get("info") or {}), []
    for key in sorted(info, key=lambda k: bson_size({k: info[k]}), reverse=True):
        if key == "metrics":
            continue
        size = bson_size({key: info[key]})
        info[key] = f"[not stored in MongoDB: {size} bytes would exceed its 16 MB document limit]"
        cut.append(f"info.{key}")
        document["info"] = info
        if bson_size(document) <= DOCUMENT_BYTES:
            break
    document["reprolab"] = {**document.get("reprolab", {}), "cut": cut}
    return document, cut


def exact_times(document: dict) -> dict:
    """Start, heartbeat and stop times to the microsecond (BSON dates keep milliseconds)."""
    return {key: document[key].isoformat() for key in ("start_time", "heartbeat", "stop_time")
            if isinstance(document.get(key), datetime)}


def store_source(fs, path: str, md5: str, data: bytes | None = None):
    """GridFS id of a source file, uploaded once per (path, md5) as Sacred's lookup expects."""
    found = fs.find_one({"filename": path, "md5": md5})
    if found is not None:
        return found._id
    if data is None:
        with open(path, "rb") as f:
            return fs.put(f, filename=path, md5=md5)
    return fs.put(data, filename=path, md5=md5)


def store_full_output(fs, collection: str, run_id: int, text: str):
    """GridFS id of the whole captured output when the run document keeps only its tail."""
    if not bounded_output(text)[1]:
        return None
    return fs.put(text.encode("utf-8", "replace"), filename=f"captured_out://{collection}/{run_id}")


class _Series:
    """What the writer knows about one metric of one run."""

    def __init__(self):
        self.total = 0  # points written so far
        self.chunk, self.chunk_fill = 0, 0
        self.every = 1  # the Omniboard document keeps every n-th point
        self.kept: list[tuple] = []  # (index, step, value, timestamp) in the Omniboard document


class MetricsWriter:
    """Writes a run's metrics: a bounded document per metric for Omniboard, all points in chunks.

    Each call costs in proportion to the new points (plus, rarely, one rewrite of a bounded
    document when it is thinned)."""

    def __init__(self, db, run_id: int, collection: str = "metrics"):
        self.view, self.chunks, self.run_id = db[collection], db[CHUNKS_COLLECTION], run_id
        self.series: dict[str, _Series] = {}

    def add(self, metrics_by_name: dict) -> list[dict]:
        """Append new points {name: {steps, values, timestamps}}; return new info.metrics refs."""
        refs = []
        for name, points in metrics_by_name.items():
            if not points["steps"]:
                continue
            series = self.series.setdefault(name, _Series())
            self._append_chunks(name, series, points)
            ref = self._append_view(name, series, points)
            series.total += len(points["steps"])
            if ref:
                refs.append(ref)
        return refs

    def _append_chunks(self, name: str, series: _Series, points: dict) -> None:
        start, count = 0, len(points["steps"])
        while start < count:
            if series.chunk_fill == CHUNK_POINTS:
                series.chunk, series.chunk_fill = series.chunk + 1, 0
            end = min(count, start + CHUNK_POINTS - series.chunk_fill)
            stamps = [t.isoformat() for t in points["timestamps"][start:end]]
            push = {"steps": points["steps"][start:end], "values": points["values"][start:end],
                    "timestamps": stamps}
            self.chunks.update_one(
                {"run_id": self.run_id, "name": name, "chunk": series.chunk},
                {"$push": {key: {"$each": value} for key, value in push.items()}}, upsert=True)
            series.chunk_fill += end - start
            start = end

    def _append_view(self, name: str, series: _Series, points: dict) -> dict | None:
        new = [(series.total + i, step, value, stamp) for i, (step, value, stamp)
               in enumerate(zip(points["steps"], points["values"], points["timestamps"]))
               if (series.total + i) % series.every == 0]
        series.kept += new
        query = {"run_id": self.run_id, "name": name}
        if len(series.kept) <= VIEW_POINTS:
            if not new:
                return None
            update = {"$push": {key: {"$each": values} for key, values in _columns(new).items()}}
        else:
            while len(series.kept) > VIEW_POINTS:
                series.every *= 2
                series.kept = [p for p in series.kept if p[0] % series.every == 0]
            update = {"$set": {**_columns(series.kept), "kept_every": series.every}}
        result = self.view.update_one(query, update, upsert=True)
        return {"name": name, "id": str(result.upserted_id)} if result.upserted_id else None


def _columns(points: list[tuple]) -> dict:
    return {"steps": [p[1] for p in points], "values": [p[2] for p in points],
            "timestamps": [p[3] for p in points]}


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
        self.run_entry["reprolab"] = {"run_uuid": self.run_uuid, "source": "live",
                                      "complete": False}
        super().insert()
        self.writer = MetricsWriter(self.db, self.run_entry["_id"], self.metrics.name)

    def save_sources(self, ex_info):
        return [[name, store_source(self.fs, os.path.join(ex_info["base_dir"], name), md5)]
                for name, md5 in ex_info["sources"]]

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self.full_output = captured_out
        super().heartbeat_event(info, bounded_output(captured_out)[0], beat_time, result)

    def log_metrics(self, metrics_by_name, info):
        self.metric_refs += self.writer.add(metrics_by_name)

    def save(self):
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.document()})

    def final_save(self, attempts):
        bookkeeping = self.run_entry["reprolab"]
        output_file = store_full_output(self.fs, self.runs.name, self.run_entry["_id"],
                                        self.full_output)
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

    @staticmethod
    def _try_to_detect_content_type(filename):
        return mimetype_detector.guess_type(filename)[0]  # Sacred prints this into the output


class MongoWithFallback(RunObserver):
    """Records a run in MongoDB and keeps a complete local copy until MongoDB holds it all.

    Every MongoDB error is caught and reported once; from then on only the local copy is
    written. The local copy is deleted when MongoDB has the finished, untrimmed record."""

    priority = 30

    def __init__(self, url: str, local_dir: str | os.PathLike):
        self.url, self.location, self.local_dir = url, redact(url), Path(local_dir)
        self.local: FileStore | None = None
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
                deepcopy(ex_info), command, host_info, start_time, config, meta_info, None)
            if self.mongo is None:
                log.warning("MongoDB at %s is unreachable (%s); recording this run in %s instead "
                            "(upload it later with: %s)", self.location, self.problem,
                            self.local.dir, self._sync_hint())
            return self.mongo_id if self.mongo is not None else local_id

    def _start_mongo(self, ex_info, command, host_info, start_time, config, meta_info) -> None:
        try:
            mongo = BoundedMongoObserver.on(connect(self.url), meta_info.get("run_uuid"))
            self.mongo_id = mongo.started_event(
                ex_info, command, host_info, start_time, config, meta_info, None)
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
            log.warning("MongoDB stopped recording run %s (%s); the run goes on and its full "
                        "record is kept in %s", self.mongo_id, self.problem, self.local.dir)

    def _both(self, method: str, final: bool = False, **kwargs) -> None:
        with self._lock:
            if self.finished:
                return
            getattr(self.local, method)(**kwargs)
            self._mongo(method, **kwargs)
            if final:
                self.finished = True
                self._finish()

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._both("heartbeat_event", info=info, captured_out=captured_out, beat_time=beat_time,
                   result=result)

    def log_metrics(self, metrics_by_name, info):
        self._both("log_metrics", metrics_by_name=metrics_by_name, info=info)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._both("artifact_event", name=name, filename=filename, metadata=metadata,
                   content_type=content_type)

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
            log.warning("MongoDB's record of run %s lacks %s (too large for a MongoDB document); "
                        "the complete record stays in %s", self.mongo_id,
                        ", ".join(self.mongo.cut), self.local.dir)
        elif self.mongo_id is not None:
            log.warning("MongoDB's record of run %s is incomplete (%s); the complete record is "
                        "in %s (upload it with: %s)", self.mongo_id, self.problem,
                        self.local.dir, self._sync_hint())

    def _sync_hint(self) -> str:
        from observers.attach import MONGO_URL_VARIABLE

        same_url = os.environ.get(MONGO_URL_VARIABLE) == self.url
        return f"reprolab sync {self.local_dir}" + ("" if same_url else " --to <this MongoDB URL>")


def mongo_observers(url: str) -> list[RunObserver]:
    """The observers that record a run in MongoDB at url, with a local fallback store."""
    check_url(url)
    return [MongoWithFallback(url, fallback_dir())]


# ------------------------------------------------------------------------------ reading


def _plain(value):
    """BSON values as JSON-like Python: ObjectIds as strings, dates as ISO strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if type(value).__name__ == "ObjectId":
        return str(value)
    return value


def _reading(method):
    """Turn a MongoDB error while reading into one RecordError sentence."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        from pymongo.errors import PyMongoError

        try:
            return method(self, *args, **kwargs)
        except PyMongoError as error:
            raise RecordError(
                f"cannot read from MongoDB at {self.location}: {describe_error(error, self._url)}"
            ) from None

    return wrapper


class MongoRunStore:
    """Runs in MongoDB (Sacred's MongoObserver schema), read back in the file store's shapes."""

    def __init__(self, url: str):
        self._url, self.location = url, redact(url)
        try:
            self.db = connect(url)
        except ValueError:
            raise
        except Exception as error:
            raise RecordError(
                f"cannot reach MongoDB at {self.location}: {describe_error(error, url)}"
            ) from None
        import gridfs

        self.fs = gridfs.GridFS(self.db)

    @_reading
    def run_ids(self) -> list[int]:
        """Numeric run ids, in order."""
        ids = (doc["_id"] for doc in self.db["runs"].find({}, {"_id": 1}))
        return sorted(i for i in ids if isinstance(i, int))

    def _document(self, run_id: int) -> dict:
        document = self.db["runs"].find_one({"_id": run_id})
        if document is None:
            raise RecordError(f"no run {run_id} in {self.location}")
        return document

    @_reading
    def run(self, run_id: int) -> dict:
        """The run document in run.json's shape: artifacts by name, exact times, ids as strings."""
        document = self._document(run_id)
        run = {k: v for k, v in document.items() if k not in HIDDEN_FIELDS}
        run["artifacts"] = [artifact["name"] for artifact in document.get("artifacts", [])]
        run = _plain(run)
        run.update((document.get("reprolab") or {}).get("times") or {})
        return run

    @_reading
    def config(self, run_id: int) -> dict:
        """The run's config as recorded."""
        return _plain(self._document(run_id).get("config", {}))

    @_reading
    def info(self, run_id: int) -> dict:
        """The run's info without Sacred's metric references (MongoDB bookkeeping)."""
        info = _plain(self._document(run_id).get("info") or {})
        info.pop("metrics", None)
        return info

    @_reading
    def metrics(self, run_id: int) -> dict:
        """Every point of every metric: from the chunks, or Sacred's own documents without them."""
        self._document(run_id)
        metrics: dict[str, dict] = {}
        chunks = self.db[CHUNKS_COLLECTION].find({"run_id": run_id})
        for chunk in chunks.sort([("name", 1), ("chunk", 1)]):
            empty = {"steps": [], "values": [], "timestamps": []}
            series = metrics.setdefault(chunk["name"], empty)
            for key in series:
                series[key] += chunk[key]
        if metrics:
            return metrics
        for document in self.db["metrics"].find({"run_id": run_id}).sort("name", 1):
            metrics[document["name"]] = {
                "steps": document.get("steps", []), "values": document.get("values", []),
                "timestamps": _plain(document.get("timestamps", []))}
        return metrics

    @_reading
    def artifact(self, run_id: int, name: str) -> bytes:
        """The bytes of one artifact, read from GridFS."""
        for artifact in self._document(run_id).get("artifacts", []):
            if artifact["name"] == name:
                return self.fs.get(artifact["file_id"]).read()
        raise RecordError(f"run {run_id} has no artifact '{name}'")

    @_reading
    def sources(self, run_id: int) -> dict[str, bytes]:
        """Recorded source files by their path relative to the experiment's base directory."""
        sources = self._document(run_id)["experiment"].get("sources", [])
        return {name: self.fs.get(file_id).read() for name, file_id in sources}
