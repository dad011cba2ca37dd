"""Reading runs back from MongoDB (Sacred's MongoObserver schema) in the file store's shapes."""

from __future__ import annotations

import contextlib
import functools
import json
from datetime import datetime

from observers.credentials import describe_error, redact_url
from observers.mongo import reach
from observers.mongo_bounds import CHUNKS_COLLECTION
from observers.records import (
    ENCODING_PREFIXES,
    MAX_EVALUATIONS,
    ObjectEncoding,
    RecordError,
    check_metrics,
    expect_object,
    loads_plain,
    recorded_sources,
    refusal,
    summarize_metrics,
)

# `reprolab evaluate` results: one document per evaluation, keyed by run id, inserted whole (the
# run's own document is never written). The result is kept as JSON text: its keys (shard paths)
# may hold the dots and dollars MongoDB field names cannot.
EVALUATIONS_COLLECTION = "evaluations"
HIDDEN_FIELDS = ("_id", "config", "info", "captured_out", "format", "reprolab")
ROW_FIELDS = (  # what observers.rows reads of a run document for its load_runs row: top-level
    "status",  # fields only (a server may give a dotted projection back flat: nx-27017 does)
    "experiment",
    "host",
    "start_time",
    "stop_time",
    "heartbeat",
    "result",
    "meta",
    "config",
    "reprolab",
)
POINTS = ("steps", "values", "timestamps")
IN_QUERY_IDS = 1000  # up to this many runs a query names them; beyond, it reads all and keeps them
BATCH = 100_000  # documents per reply asked for (a server's default, 101, means round trips)


def _plain(value):
    """BSON values as JSON-like Python: dates as ISO strings, ObjectIds and any other value JSON
    has no type for (binary, Decimal128, a regex...) as their text.

    Raises ObjectEncoding on a key of Sacred's object-encoding (records are plain data)."""
    if isinstance(value, dict):
        for key in value:
            if isinstance(key, str) and key.startswith(ENCODING_PREFIXES):
                raise ObjectEncoding(key)
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


@contextlib.contextmanager
def server_errors(store: MongoRunStore):
    """A MongoDB error while reading `store`, as one RecordError sentence."""
    from pymongo.errors import PyMongoError

    try:
        yield
    except PyMongoError as error:
        raise RecordError(
            f"cannot read from MongoDB at {store.location}: {describe_error(error, store._url)}"
        ) from None


def _reading(method):
    """Turn a MongoDB error while reading, or a document of another shape, into one sentence."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            with server_errors(self):
                return method(self, *args, **kwargs)
        except (AttributeError, KeyError, TypeError) as error:  # a document of another shape
            run = f"run {args[0]}: " if args else ""
            raise RecordError(
                f"{run}a document in {self.location} is not in Sacred's shape ({error})"
            ) from None

    return wrapper


INDEXED = ("status", "start_time", "heartbeat", "meta.sweep.id")  # what listings look up
_indexed: set[int] = set()  # databases this process has already asked for them


def ensure_indexes(db) -> None:
    """Create the runs' indexes where this user may (once per process) and the database holds
    runs (a reader never creates a database: a misspelt name stays absent); a read-only user,
    or a server that refuses, reads without them."""
    from pymongo.errors import PyMongoError

    if id(db.client) in _indexed:
        return
    try:
        if not db.list_collection_names(filter={"name": "runs"}):
            return  # no runs yet: the observer that writes the first makes its own indexes
        _indexed.add(id(db.client))
        for key in INDEXED:
            db["runs"].create_index(key)
        db[CHUNKS_COLLECTION].create_index([("run_id", 1), ("name", 1), ("chunk", 1)])
        db[EVALUATIONS_COLLECTION].create_index([("run_id", 1), ("time", 1)])
    except PyMongoError:  # not authorised (a read-only user), or not supported
        pass


class MongoRunStore:
    """Runs in MongoDB (Sacred's MongoObserver schema), read back in the file store's shapes."""

    def __init__(self, url: str):
        self._url, self.location = url, redact_url(url)
        self.db = reach(url)
        import gridfs

        self.fs = gridfs.GridFS(self.db)
        ensure_indexes(self.db)

    @_reading
    def run_ids(self) -> list[int]:
        """Numeric run ids, in order."""
        ids = (doc["_id"] for doc in self.db["runs"].find({}, {"_id": 1}))
        return sorted(i for i in ids if type(i) is int)  # not True, which would read as run 1

    @_reading
    def has_runs(self) -> bool:
        """Whether the store holds a run document (one id asked for, not all)."""
        return self.db["runs"].find_one({}, {"_id": 1}) is not None

    def _document(self, run_id: int) -> dict:
        document = self.db["runs"].find_one({"_id": run_id})
        if document is None:
            raise RecordError(f"no run {run_id} in {self.location}")
        return document

    def _plain_part(self, run_id: int, part: str, value):
        """One part of a run's document as plain data, or the one-sentence refusal."""
        try:
            return _plain(value)
        except ObjectEncoding as error:
            raise refusal(f"run {run_id}: the {part} in {self.location}", error.key) from None

    @_reading
    def run(self, run_id: int) -> dict:
        """The run document in run.json's shape: artifacts by name, exact times, ids as strings."""
        return self._run_of(run_id, self._document(run_id))

    def _run_of(self, run_id: int, document: dict) -> dict:
        run = {k: v for k, v in document.items() if k not in HIDDEN_FIELDS}
        names = (artifact["name"] for artifact in document.get("artifacts", []))
        run["artifacts"] = list(dict.fromkeys(names))  # a record from before replacing: once each
        run = self._plain_part(run_id, "run document", run)
        extra = document.get("reprolab")
        times = extra.get("times") if isinstance(extra, dict) else None
        run.update(
            self._plain_part(run_id, "run document", times) if isinstance(times, dict) else {}
        )
        return run

    @_reading
    def config(self, run_id: int) -> dict:
        """The run's config as recorded."""
        return self._config_of(run_id, self._document(run_id))

    def _config_of(self, run_id: int, document: dict) -> dict:
        config = self._plain_part(run_id, "config", document.get("config", {}))
        return expect_object(config, f"run {run_id}: the config")

    @_reading
    def for_rows(self, run_ids: list[int] | None) -> RowReader:
        """The runs' documents (None: every run's), only the fields a load_runs row is made of,
        in one query; an id without a document is left out."""
        few = run_ids is not None and len(run_ids) <= IN_QUERY_IDS
        wanted = None if run_ids is None else set(run_ids)
        documents = {
            doc["_id"]: doc
            for doc in self.db["runs"]
            .find({"_id": {"$in": run_ids}} if few else {}, dict.fromkeys(ROW_FIELDS, 1))
            .batch_size(BATCH)
            if type(doc["_id"]) is int and (wanted is None or doc["_id"] in wanted)
        }
        return RowReader(self, documents)

    @_reading
    def metric_summaries(self, run_ids: list[int]) -> dict[int, dict | RecordError]:
        """summarize_metrics of each run (or why its metrics cannot be read), every run's points
        read in two queries: the chunks, then Sacred's own metric documents of runs without."""
        series = self._series(run_ids)
        return {
            run_id: found if isinstance(found, RecordError) else summarize_metrics(found)
            for run_id, found in ((run_id, series.get(run_id, {})) for run_id in run_ids)
        }

    def _series(self, run_ids: list[int]) -> dict[int, dict | RecordError]:
        """{run id: its metrics in Sacred's shape, or the RecordError saying why not}: from the
        chunks, or Sacred's own documents for a run without chunks; a run with neither is absent."""
        series = self._points(CHUNKS_COLLECTION, run_ids, ("chunk",))
        rest = [run_id for run_id in run_ids if run_id not in series]
        series.update(self._points("metrics", rest, ()))
        return series

    def _points(
        self, collection: str, run_ids: list[int], order: tuple
    ) -> dict[int, dict | RecordError]:
        """The runs' metrics from one query of a metrics collection; a run whose documents are of
        another shape gets its RecordError, and the other runs are read all the same."""
        if not run_ids:
            return {}
        query = {"run_id": {"$in": run_ids}} if len(run_ids) <= IN_QUERY_IDS else {}
        fields = dict.fromkeys(("run_id", "name", *order, *POINTS), 1)
        wanted = set(run_ids)
        by_run: dict[int, list[dict]] = {}
        for document in self.db[collection].find(query, fields).batch_size(BATCH):
            run_id = document.get("run_id")
            if type(run_id) is int and run_id in wanted:
                by_run.setdefault(run_id, []).append(document)
        series: dict[int, dict | RecordError] = {}
        for run_id, documents in by_run.items():
            try:
                series[run_id] = self._checked(run_id, _joined(documents, order))
            except RecordError as error:
                series[run_id] = error
            except (AttributeError, KeyError, TypeError) as error:
                series[run_id] = RecordError(
                    f"run {run_id}: a document in {self.location} is not in Sacred's shape ({error})"
                )
        return series

    def _checked(self, run_id: int, metrics: dict) -> dict:
        """The joined metrics with their dates as text (as the file store gives them), checked."""
        for points in metrics.values():
            points["timestamps"] = self._plain_part(run_id, "metrics", points["timestamps"])
        return check_metrics(metrics, f"run {run_id}", "the metrics")

    @_reading
    def info(self, run_id: int) -> dict:
        """The run's info without Sacred's metric references (MongoDB bookkeeping)."""
        info = self._plain_part(run_id, "info", self._document(run_id).get("info") or {})
        expect_object(info, f"run {run_id}: the info").pop("metrics", None)
        return info

    @_reading
    def metrics(self, run_id: int) -> dict:
        """Every point of every metric: from the chunks, or Sacred's own documents without them."""
        self._document(run_id)
        metrics = self._series([run_id]).get(run_id, {})
        if isinstance(metrics, RecordError):
            raise metrics
        return metrics

    @_reading
    def artifact(self, run_id: int, name: str) -> bytes:
        """The bytes of one artifact, read from GridFS (the latest one added under its name)."""
        for artifact in reversed(self._document(run_id).get("artifacts", [])):
            if artifact["name"] == name:
                return self.fs.get(artifact["file_id"]).read()
        raise RecordError(f"run {run_id} has no artifact '{name}'")

    @_reading
    def sources(self, run_id: int) -> dict[str, bytes]:
        """Recorded source files by their path relative to the experiment's base directory."""
        sources = recorded_sources(self._document(run_id), run_id)
        return {name: self.fs.get(file_id).read() for name, file_id in sources}

    @_reading
    def evaluations(self, run_id: int) -> list[dict]:
        """The run's `reprolab evaluate` results, oldest first (at most MAX_EVALUATIONS)."""
        found = self.db[EVALUATIONS_COLLECTION].find({"run_id": run_id}, {"record": 1})
        entries = []
        for document in found.sort([("time", 1), ("_id", 1)]).limit(MAX_EVALUATIONS):
            try:
                entries.append(expect_object(loads_plain(document["record"]), "an evaluation"))
            except ObjectEncoding as error:
                raise refusal(
                    f"run {run_id}: an evaluation in {self.location}", error.key
                ) from None
        return entries

    def add_evaluation(self, run_id: int, entry: dict) -> None:
        """Insert one evaluation as a document of its own (atomic: all of it or nothing; the
        bound on how many is observers.evaluations')."""
        from pymongo.errors import PyMongoError

        try:
            self.db[EVALUATIONS_COLLECTION].insert_one(
                {"run_id": run_id, "time": entry["time"], "record": json.dumps(entry)}
            )
        except PyMongoError as error:
            raise RecordError(
                f"cannot record the evaluation of run {run_id} in MongoDB at {self.location}: "
                f"{describe_error(error, self._url)}"
            ) from None


class RowReader:
    """The RunStore reads a load_runs row makes, answered from documents fetched at once (only
    their row fields); the info of the few runs that need it comes from the store."""

    def __init__(self, store: MongoRunStore, documents: dict[int, dict]):
        self.store, self.documents, self.location = store, documents, store.location
        self._url = store._url

    def _document(self, run_id: int) -> dict:
        document = self.documents.get(run_id)
        if document is None:
            raise RecordError(f"no run {run_id} in {self.location}")
        return document

    @_reading
    def run(self, run_id: int) -> dict:
        return self.store._run_of(run_id, self._document(run_id))

    @_reading
    def config(self, run_id: int) -> dict:
        return self.store._config_of(run_id, self._document(run_id))

    def info(self, run_id: int) -> dict:
        return self.store.info(run_id)

    def metric_summaries(self, run_ids: list[int]) -> dict[int, dict | RecordError]:
        return self.store.metric_summaries(run_ids)


def _joined(documents: list[dict], order: tuple) -> dict:
    """{name: {steps, values, timestamps}} of one run's metric documents, joined in name and
    `order` (chunk number) order."""
    documents.sort(key=lambda d: (str(d.get("name")), *(d.get(k, 0) for k in order)))
    metrics: dict = {}
    for document in documents:
        metric = metrics.setdefault(document.get("name"), {key: [] for key in POINTS})
        for key in POINTS:
            part = document.get(key, [])
            metric[key] = metric[key] + part if isinstance(part, list) else part
    return metrics
