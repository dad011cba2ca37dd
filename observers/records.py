"""Records read back as plain data: nothing a run store holds can make the reader run code.

Sacred's JSON codec (jsonpickle) turns keys such as `py/reduce`, `py/function` or `py/object`
into imports and calls when a record is decoded with `restore` (as Sacred does for a config file
given to `with`). Whoever can write a run store could plant them, so every record read back
(run, config, info, metrics, caches, MongoDB documents, a checkpoint's config) goes through this
module, which refuses such keys before anything uses the record.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import numbers
import os
import stat

# jsonpickle's tags all start with "py/"; keys starting with "json://" are decoded as JSON that
# may itself hold tags (Sacred decodes with keys=True).
ENCODING_PREFIXES = ("py/", "json://")
# Bounds on a store's JSON files, checked before a byte is read (a huge file would take the
# reader's time and memory, and could be planted). A run's files: metrics.json (and its journal)
# holds every point (about 60 bytes each in JSON: 256 MiB is some 4 million), info.json what a
# run adds to its info (cut for MongoDB above 16 MiB, kept whole by the file store); parsed in
# seconds within a few GB of memory.
RUN_FILE_BYTES = 256 << 20
TABLE_BYTES = RUN_FILE_BYTES  # a sweep record or the summary cache: an entry per config or run
RECORD_BYTES = 16 << 20  # any other (claims, evaluations), as MongoDB bounds a document
MAX_EVALUATIONS = 1000  # `reprolab evaluate` results one run keeps (file or MongoDB store)


class RecordError(LookupError):
    """A run or record file the user named does not exist or cannot be read."""


class ObjectEncoding(ValueError):
    """A record holds one of Sacred's object-encoding keys (raised with the key)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def refusal(where: str, key: str) -> RecordError:
    """The one sentence for a record that holds an object-encoding key."""
    return RecordError(
        f"{where} holds the object-encoding key {key!r}, which could run code "
        "when read back, so it was refused (records are read as plain data only)"
    )


def _plain_pairs(pairs: list[tuple[str, object]]) -> dict:
    for key, _ in pairs:
        if key.startswith(ENCODING_PREFIXES):
            raise ObjectEncoding(key)
    return dict(pairs)


def loads_plain(text: str | bytes):
    """json.loads that raises ObjectEncoding on an object-encoding key at any depth."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        if "py/" not in text and "json://" not in text and "\\" not in text:
            return json.loads(text)  # no such key can hide in it (only an escape could spell one)
        return json.loads(text, object_pairs_hook=_plain_pairs)
    except RecursionError:
        raise RecordError("the record is nested too deeply to be read") from None


def read_regular(path: str | os.PathLike, limit: int | None = None, follow: bool = True) -> bytes:
    """The bytes of a regular file; RecordError for anything else a store could hold in its
    place (a FIFO would block the reader, a link to /dev/zero never end), before reading it.
    limit: the most bytes read (checked with fstat first); follow=False: a link is refused (a
    store's link would make it show a file from outside)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: opening a FIFO would wait for a writer
    except OSError as error:
        if error.errno == errno.ELOOP and not follow:
            raise RecordError(f"{path} is a link, so it was not read") from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise RecordError(f"{path} is not a regular file, so it was not read")
        if limit is not None and status.st_size > limit:
            raise RecordError(
                f"{path} holds {status.st_size:,} bytes, over the {limit:,} a record file may "
                "hold, so it was not read"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def load_plain(path: str | os.PathLike, limit: int = RECORD_BYTES, follow: bool = False):
    """The JSON file at path as plain data (ObjectEncoding on an object-encoding key); limit
    and follow as for read_regular: a store's JSON is bounded and never a link by default."""
    return loads_plain(read_regular(path, limit, follow))


def check_plain(value):
    """value itself, after checking that no dict in it has an object-encoding key (ObjectEncoding)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str) and key.startswith(ENCODING_PREFIXES):
                    raise ObjectEncoding(key)
                if isinstance(inner, (dict, list, tuple)):
                    stack.append(inner)
        elif isinstance(item, (list, tuple)):
            stack.extend(inner for inner in item if isinstance(inner, (dict, list, tuple)))
    return value


# The largest run id a store holds: ids go through float64 (pandas, Omniboard's JavaScript) and
# int64 arrays (the index), and 2**53 is the largest integer a double holds exactly.
MAX_RUN_ID = 2**53


def is_run_id(text: str) -> bool:
    """Whether text names a run the way Sacred numbers them (ASCII digits, no leading zero), at
    most MAX_RUN_ID."""
    # isascii: str.isdigit alone also accepts '³' and '٣'
    return (
        text.isascii()
        and text.isdigit()
        and (text[0] != "0" or text == "0")
        and len(text) <= len(str(MAX_RUN_ID))
        and int(text) <= MAX_RUN_ID
    )


def run_id_of(value) -> int:
    """A run id given to the Python API: an integer (not a bool) or digits is_run_id accepts;
    ValueError naming it for anything else, never a quiet reading ('007' as 7, True as 1)."""
    if isinstance(value, str) and is_run_id(value):
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if 0 <= int(value) <= MAX_RUN_ID:
            return int(value)
    raise ValueError(
        f"{value!r} is not a run id (a whole number from 0 to {MAX_RUN_ID}, or its ASCII digits)"
    )


def recorded_sources(run: dict, run_id: int) -> list[tuple[str, object]]:
    """run.json's [name, stored] source pairs, checked to be pairs of text."""
    experiment = run.get("experiment") if isinstance(run, dict) else None
    sources = experiment.get("sources", []) if isinstance(experiment, dict) else None
    if not isinstance(sources, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) for pair in sources
    ):
        raise RecordError(
            f"run {run_id}'s run.json does not list its sources as [name, file] pairs"
        )
    return [tuple(pair) for pair in sources]


def expect_object(value, where: str) -> dict:
    """value when it is a JSON object; RecordError naming where it was read otherwise."""
    if not isinstance(value, dict):
        raise RecordError(f"{where} holds a {type(value).__name__}, not an object")
    return value


def check_metrics(metrics, where: str, source: str) -> dict:
    """Metrics in Sacred's shape ({name: {steps, values, timestamps}}, each a list of the kind a
    reader needs: integer steps, text times); RecordError naming the run (`where`), the record
    (`source`) and the first metric that is not."""

    def wrong(why: str) -> RecordError:
        return RecordError(f"{where}: metrics not in Sacred's shape ({source}{why})")

    if not isinstance(metrics, dict):
        raise wrong(f" holds a {type(metrics).__name__}, not an object")
    for name, series in metrics.items():
        if not isinstance(series, dict) or not all(
            isinstance(series.get(key), list) for key in ("steps", "values", "timestamps")
        ):
            raise wrong(f": metric {name!r} is not {{steps, values, timestamps}} lists")
        steps, times = series["steps"], series["timestamps"]
        if not all(type(step) is int for step in steps) or not all(
            isinstance(t, str | datetime.datetime) for t in times
        ):
            raise wrong(f": metric {name!r} has a step or time of the wrong type")
    return metrics


def dig(record, *keys):
    """record[k1][k2]...; None when a level is missing or not an object (records are untrusted)."""
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def summarize_metrics(metrics: dict) -> dict[str, dict]:
    """{name: {last, min, max, count, last_step}} of Sacred-shaped metrics; NaN points are
    skipped for min/max, and a value that is not a number counts as NaN."""
    summaries = {}
    for name, series in metrics.items():
        values = [as_float(v) for v in series.get("values", [])]
        steps = series.get("steps", [])
        numbers = [v for v in values if not math.isnan(v)]
        summaries[name] = {
            "last": values[-1] if values else math.nan,
            "min": min(numbers, default=math.nan),
            "max": max(numbers, default=math.nan),
            "count": len(values),
            "last_step": steps[-1] if steps else None,
        }
    return summaries


def as_float(value) -> float:
    """value as a float; NaN for one that is no number or too large for a float (10**400)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
