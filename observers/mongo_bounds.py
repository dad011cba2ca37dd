"""Documents that fit in MongoDB: every run, metric and output document stays under its 16 MB limit.

- captured output in the run document: its last CAPTURED_OUT_BYTES; the whole text goes to GridFS
  at the end of the run (`reprolab.captured_out_file`);
- each metric's Omniboard document (`metrics`): every point up to VIEW_POINTS, then an evenly
  thinned curve (every 2nd, 4th, ... point, `kept_every`); every point is kept in
  `metrics_chunks` documents of CHUNK_POINTS points each, which is what reprolab reads back;
- info values too large for the run document are replaced by a note (the local copy is then kept).
"""

from __future__ import annotations

import os
from datetime import datetime

from observers.files import utc_text

CAPTURED_OUT_BYTES = 1 << 20  # tail of the captured output kept in the run document (1 MiB)
VIEW_POINTS = 10_000  # most points per metric in the document Omniboard plots
CHUNK_POINTS = 50_000  # points per metrics_chunks document (about 3.5 MB at most)
DOCUMENT_BYTES = 15 << 20  # a run document is trimmed above this (MongoDB refuses 16 MiB)
CHUNKS_COLLECTION = "metrics_chunks"
TIMES = ("start_time", "heartbeat", "stop_time")  # a run's dates, kept exactly in reprolab.times


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
    return {
        key: utc_text(document[key]) for key in TIMES if isinstance(document.get(key), datetime)
    }


def store_source(fs, path: str, md5: str, data: bytes | None = None):
    """GridFS id of a source file, uploaded once per (path, md5) as Sacred's lookup expects."""
    found = fs.find_one({"filename": path, "md5": md5})
    if found is not None:
        return found._id
    if data is None:
        with open(path, "rb") as f:
            return fs.put(f, filename=path, md5=md5)
    return fs.put(data, filename=path, md5=md5)


def store_artifact(
    fs,
    collection: str,
    run_id: int,
    name: str,
    path: str | os.PathLike,
    metadata=None,
    content_type: str | None = None,
):
    """GridFS id of an artifact file, named as Sacred's MongoObserver names it."""
    from sacred.observers.mongo import mimetype_detector

    with open(path, "rb") as f:
        return fs.put(
            f,
            filename=f"artifact://{collection}/{run_id}/{name}",
            metadata=metadata,
            content_type=content_type or mimetype_detector.guess_type(str(path))[0],
        )


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
            stamps = [utc_text(t) for t in points["timestamps"][start:end]]
            push = {
                "steps": points["steps"][start:end],
                "values": points["values"][start:end],
                "timestamps": stamps,
            }
            self.chunks.update_one(
                {"run_id": self.run_id, "name": name, "chunk": series.chunk},
                {"$push": {key: {"$each": value} for key, value in push.items()}},
                upsert=True,
            )
            series.chunk_fill += end - start
            start = end

    def _append_view(self, name: str, series: _Series, points: dict) -> dict | None:
        new = [
            (series.total + i, step, value, stamp)
            for i, (step, value, stamp) in enumerate(
                zip(points["steps"], points["values"], points["timestamps"])
            )
            if (series.total + i) % series.every == 0
        ]
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
    return {
        "steps": [p[1] for p in points],
        "values": [p[2] for p in points],
        "timestamps": [p[3] for p in points],
    }
