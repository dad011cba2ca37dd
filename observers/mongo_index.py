"""MongoDB's summary cache: finished runs' `load_runs` rows in a few documents, never the truth.

The file store's index (observers.index) kept in the database itself, in the `reprolab_rows`
collection: a head document (what the cache was checked against, the runs it has no row of) and
parts holding the rows as Arrow IPC bytes (the index's columns and checks). A row is cached only
for a run that has ended (a final status, a complete record, no note), with a signature of the
fields its end writes (status, heartbeat, stop time, reprolab's completeness flag).

Checked cheaply on every read: a probe of the runs (how many, the first by `_id` and by start
time in the server's order, each on an index) must equal the head's, and the runs that are not
cached (running, queued, damaged) plus any the server says are RUNNING or QUEUED are read live.
A probe that differs because runs were added (the count grew by as many as the newest by start
time hold unknown) reads those; any other difference lists every run's signature in one
projected aggregation and reads the runs whose signature is new. A result of at most VERIFIED_ROWS rows (an ls page, a sweep) is
also checked run by run against the documents. What the probe cannot see (a finished run's
document or metrics edited in place, a run deleted while another is inserted below the newest)
is said in docs/mongodb.md, with how to rebuild: drop the collection.

Writers swap the head with a compare-and-set on its generation; one that loses merges into the
winner's rows (a merged head never passes the probe, so the next reader lists every run).
A read-only user, or a damaged document, gets the same answers from the runs, just slower. No
part is unpickled: plain Arrow types, checked before use, config cells are JSON text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from ingredients.progress import progress
from observers.index import (
    FINAL,
    PROGRESS_AFTER,
    SIGNATURE,
    Damaged,
    check_keys_in,
    check_schema,
    encode,
    index_matches,
    row_matcher,
    table_of_rows,
)
from observers.mongo_store import BATCH, IN_QUERY_IDS, server_errors
from observers.records import RecordError, is_run_id
from observers.rows import complete_row, metric_summaries, record_row

CACHE_COLLECTION = "reprolab_rows"
HEAD = "head"
VERSION = 1
LIVE_STATUSES = ("RUNNING", "QUEUED")  # asked for one by one: an equality runs on the index
SIGNED = ("status", "heartbeat", "stop_time", "reprolab")  # top-level fields: a server may
# flatten a dotted projection in an aggregation (nx-27017 does)
VERIFIED_ROWS = 200  # a result this small is checked run by run against the documents
PART_BYTES = 8 << 20  # Arrow bytes per part document, well under MongoDB's 16 MB
ADDED_MAX = 1000  # runs added since the cache was written found without listing every run
ADDED_SLACK = 20  # newest runs looked at beyond the ones added and the ones not cached
MAX_PARTS = 32  # parts appended (runs that ended since) before the rows are written anew
UNAUTHORISED = (13, 8000)  # MongoDB's Unauthorized, and Atlas' "not allowed to do action"
MERGE_TRIES = 3  # head swaps a writer tries before it leaves the cache as another wrote it
ORPHAN_AGE = dt.timedelta(minutes=10)  # a part no head names is removed once this old: younger,
# it may be another writer's, inserted before its head swap (which follows at once)
_read_only: set[int] = set()  # clients that were refused a write: not asked again


def cached_runs(
    store,
    run_ids: Iterable[int] | None,
    statuses: set[str] | None,
    experiments: set[str] | None,
    sweep: str | None,
    wanted: dict,
    last: int | None = None,
) -> tuple[pd.DataFrame, int]:
    """load_runs' table of the matching runs (the last `last` of them) and how many match,
    finished runs from the cache when it still holds, everything else read live."""
    with server_errors(store):
        page = last is not None and run_ids is None and not (statuses or experiments or wanted)
        if page and store.db[CACHE_COLLECTION].find_one({"_id": HEAD}, {"_id": 1}) is None:
            return _page_alone(store, sweep, last)  # (a read-only user, or no cache yet)
        view = View.open(store)
        try:
            result = _select(store, view, run_ids, statuses, experiments, sweep, wanted, last)
        except Damaged:  # a planted cell: the answer comes from the runs, the cache is rewritten
            view = View.open(store, use_cache=False)
            result = _select(store, view, run_ids, statuses, experiments, sweep, wanted, last)
        view.save(store.db)
    return result


def _select(store, view, run_ids, statuses, experiments, sweep, wanted, last):
    """The rows that match, the cached ones of a small result checked against their runs."""
    ids = None if run_ids is None else _known(store, view, run_ids)
    matching = row_matcher(statuses, experiments, sweep, wanted)
    candidates = index_matches(view.index, view.position, statuses, experiments, sweep, wanted)
    checked: set[int] = set()
    while True:
        live = view.live
        if ids is None:
            chosen = sorted([*candidates, *(i for i, (row, _) in live.items() if matching(row))])
        else:
            chosen = [i for i in ids if i in candidates or (i in live and matching(live[i][0]))]
        shown = chosen[-last:] if last else chosen
        if len(shown) > VERIFIED_ROWS:
            break
        unchecked = [i for i in dict.fromkeys(shown) if i in candidates and i not in checked]
        now = signatures(store.db, unchecked)
        stale = [i for i in unchecked if now.get(i, (None,))[0] != candidates[i]]
        checked.update(unchecked)
        if not stale:
            break
        view.drop(stale)
        view.read(store, {i: now[i] for i in stale if i in now})
        for run_id in stale:
            candidates.pop(run_id)
    if wanted and not chosen:
        check_keys_in(store, view.index, view.position, view.live, wanted)
    return table_of_rows(view.index, view.position, view.live, shown), len(chosen)


def _page_alone(store, sweep: str | None, last: int) -> tuple[pd.DataFrame, int]:
    """The last runs (of a sweep) and how many there are, without a cache: the ids from the
    server (a sweep's on its index), only the page's runs read. Building the cache is left to a
    call that reads every run anyway."""
    db = store.db
    if sweep is None:
        ids = sorted(listing(db))
    else:
        found = db["runs"].find({"meta.sweep.id": str(sweep)}, {"_id": 1}).batch_size(BATCH)
        ids = sorted({i for d in found if (i := run_id_of(d.get("_id"))) is not None})
    shown = ids[-last:] if last else ids
    rows = read_rows(store, signatures(db, shown))
    return table_of_rows(None, {}, rows, [i for i in shown if i in rows]), len(ids)


def _known(store, view, run_ids: Iterable[int]) -> list[int]:
    """The ids asked for, in their order; the first one not in the store is an error."""
    ids = [int(run_id) for run_id in run_ids]
    missing = [i for i in ids if i not in view.position and i not in view.live]
    view.read(store, signatures(store.db, missing))  # asked for by id: looked up, not trusted
    for run_id in ids:
        if run_id not in view.position and run_id not in view.live:
            raise RecordError(f"no run {run_id} in {store.location}")
    return ids


# --------------------------------------------------------------------------- the runs


Signed = tuple[int, bool]  # a run's signature, and whether its record is complete


def signature(document: dict) -> Signed:
    """A number that changes when a run's end is written (or rewritten): its status, heartbeat,
    stop time and reprolab's completeness flag, as the server gives them back; and whether the
    record is complete (`reprolab sync` inserts a placeholder first, then replaces it)."""
    extra = document.get("reprolab")
    flag = extra.get("complete") if isinstance(extra, dict) else None
    key = repr([document.get(k) for k in SIGNED[:3]] + [flag]).encode()
    number = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)
    return number, flag is not False


def run_id_of(value) -> int | None:
    """A run's numeric id; also as the text of its digits, as a server may give `_id` back from
    an aggregation (nx-27017 does); anything else is no run."""
    if type(value) is int:
        return value
    if not isinstance(value, str) or not is_run_id(value.removeprefix("-")):
        return None
    number = int(value)  # a negative id too: a find gives it as a number, so must this
    return number if -(2**63) <= number < 2**63 and str(number) == value else None


def listing(db) -> dict[int, Signed]:
    """{run id: signature} of every run, in one aggregation that sends back only the signed
    fields (a find would make some servers read whole documents)."""
    found: dict[int, Signed] = {}
    projection = {"$project": dict.fromkeys(SIGNED, 1)}
    for document in db["runs"].aggregate([projection], batchSize=BATCH):
        run_id = run_id_of(document.get("_id"))
        if run_id is None:
            continue
        sig = signature(document)
        if run_id in found:  # 5 and "5" on a server that keeps both: either one's change shows
            sig = (hash((found[run_id][0], sig[0])), False)
        found[run_id] = sig
    return found


def signatures(db, run_ids: list[int]) -> dict[int, Signed]:
    """{run id: signature} of the runs asked for that are there."""
    if not run_ids:
        return {}
    found = db["runs"].find({"_id": {"$in": list(run_ids)}}, dict.fromkeys(SIGNED, 1))
    return {d["_id"]: signature(d) for d in found if type(d.get("_id")) is int}


def probe(db) -> tuple[int, str]:
    """What the cache is checked against: how many runs, and the first by `_id` and by start
    time in the server's own order (each an index's first entry). A run added, or one gone,
    changes the count; a new run is also the first by start time, and by id on a server that
    sorts ids as numbers; deleting one run while inserting another older one changes none.
    The count, and the probe as text."""
    runs = db["runs"]
    count = runs.estimated_document_count()
    first_id = [d.get("_id") for d in runs.find({}, {"_id": 1}).sort("_id", -1).limit(1)]
    newest = runs.find({}, {"start_time": 1}).sort("start_time", -1).limit(1)
    return count, repr([count, first_id, [list(d.items()) for d in newest]])


def added_ids(db, head: dict, count: int) -> list[int] | None:
    """The runs added since the head was written, when the count grew by exactly as many
    runs as the newest by start time hold that the cache does not know (a run gone meanwhile,
    or one added with an older start, makes them differ: None, every run is listed then)."""
    more = count - head["count"]
    if head["count"] < 0 or not 0 < more <= ADDED_MAX:  # < 0: a merged head, listed first
        return None
    known = set(head["pending"])
    window = more + len(known) + ADDED_SLACK
    newest = db["runs"].find({}, {"_id": 1}).sort("start_time", -1).limit(window)
    return [d["_id"] for d in newest if type(d.get("_id")) is int and d["_id"] not in known]


def running_ids(db) -> set[int]:
    """Ids of the runs the server says are RUNNING or QUEUED (one indexed equality each)."""
    found = set()
    for status in LIVE_STATUSES:
        for document in db["runs"].find({"status": status}, {"_id": 1}):
            if type(document.get("_id")) is int:
                found.add(document["_id"])
    return found


def read_rows(store, sigs: dict[int, Signed]) -> dict[int, tuple[dict, int]]:
    """{run id: (load_runs row, signature)} read from the runs' documents, a query's worth of
    runs at a time (one projected query and the metrics of all of them at once); a run gone
    meanwhile is left out."""
    rows: dict[int, dict] = {}
    for ids in _progress(sorted(sigs)):
        reader = store.for_rows(ids)
        found = [i for i in ids if i in reader.documents]
        summaries = metric_summaries(reader, found)
        for run_id in found:
            rows[run_id] = record_row(reader, run_id)
            complete_row(reader, rows[run_id], summaries[run_id])
    return {i: (row, sigs[i][0]) for i, row in rows.items()}


def _progress(run_ids: list[int]):
    """The ids in chunks of IN_QUERY_IDS, behind a progress bar when there are many (rebuilding
    the cache of 10,000 runs takes 20 s or more on a slow server)."""
    chunks = [run_ids[k : k + IN_QUERY_IDS] for k in range(0, len(run_ids), IN_QUERY_IDS)]
    many = len(run_ids) >= PROGRESS_AFTER
    return progress(chunks, many, "reading runs into the summary cache", f"{IN_QUERY_IDS:,} runs")


# --------------------------------------------------------------------------- the view


class Rows:
    """A cached table seen as observers.index's IndexFile: its columns, and rows by position."""

    def __init__(self, table: pa.Table):
        self.table, self.names = table, table.column_names
        self._numbers: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table[name]

    def numbers(self, name: str) -> np.ndarray:
        if name not in self._numbers:
            self._numbers[name] = self.table[name].to_numpy()
        return self._numbers[name]

    def rows(self, rows: list[int]) -> pa.Table:
        return self.table.take(pa.array(rows, pa.int64()))


class View:
    """The runs as one call sees them: cached rows still trusted (position), rows read live,
    the cache as read (head) and what a writer would put back."""

    def __init__(self, head: dict | None, table: pa.Table | None, probe: tuple[int, str]):
        self.head, (self.count, self.probe) = head, probe
        self.index = Rows(table) if table is not None else None
        ids = [] if table is None else table["run_id"].to_pylist()
        self.cached = dict(zip(ids, range(len(ids)), strict=True))  # every cached row
        self.position: dict[int, int] = {}
        self.live: dict[int, tuple[dict, int]] = {}
        self.present: set[int] = set()
        self.incomplete: set[int] = set()  # read live, never cached

    @classmethod
    def open(cls, store, use_cache: bool = True) -> View:
        """Probe first, then read: a change after the probe makes the next probe differ."""
        db = store.db
        now = probe(db)
        view = cls(*read_cache(db), now) if use_cache else cls(None, None, now)
        head, added = view.head, None
        if head is not None and head["probe"] != view.probe:
            added = added_ids(db, head, view.count)
            if added is not None:
                added = [i for i in added if i not in view.cached]
                added = added if len(added) == view.count - head["count"] else None
        if head is not None and (head["probe"] == view.probe or added is not None):
            running = running_ids(db)
            view.position = {i: k for i, k in view.cached.items() if i not in running}
            pending = sorted(set(head["pending"]) | running | set(added or ()))
            view.present = set(view.position)
            view.read(store, signatures(db, pending))
        else:
            sigs = listing(db)
            old = view.head_signatures()
            view.position = {i: view.cached[i] for i, s in old.items() if sigs.get(i) == (s, True)}
            view.present = set(view.position)
            view.read(store, {i: s for i, s in sigs.items() if i not in view.position})
        return view

    def head_signatures(self) -> dict[int, int]:
        if self.index is None:
            return {}
        ids, sigs = self.index.numbers("run_id").tolist(), self.index.numbers(SIGNATURE).tolist()
        return dict(zip(ids, sigs, strict=True))

    def read(self, store, sigs: dict[int, Signed]) -> None:
        rows = read_rows(store, sigs)
        self.live.update(rows)
        self.present |= set(rows)
        self.incomplete |= {i for i in rows if not sigs[i][1]}

    def drop(self, run_ids: list[int]) -> None:
        """Cached rows found stale: no longer used (read live instead, or gone)."""
        for run_id in run_ids:
            self.position.pop(run_id, None)
            self.present.discard(run_id)

    def save(self, db) -> None:
        """Write back what changed: finished runs read live, rows no longer trusted, a new
        probe; nothing when the cache already says it all (the common case)."""
        new = {
            i: (row, sig)
            for i, (row, sig) in self.live.items()
            if cacheable(row) and i not in self.incomplete
        }
        kept = sorted(i for i in self.position if i not in new)
        pending = sorted(self.present - set(kept) - set(new))
        unchanged = (
            self.head is not None
            and not new
            and len(kept) == len(self.cached)
            and self.head["probe"] == self.probe
            and pending == self.head["pending"]
        )
        if unchanged or id(db.client) in _read_only:
            return
        dropped = set(self.cached) - set(kept)
        if self._appends(kept, new):  # only runs that ended since: a part of their own
            ids = sorted(new)
            rows = encode([new[i][0] for i in ids], [new[i][1] for i in ids], {}) if ids else None
            carried = self.head["parts"] if self.head else []
            write_cache(db, self.head, carried, rows, pending, (self.count, self.probe), dropped)
        else:
            rows = self._table(kept, new)
            write_cache(db, self.head, [], rows, pending, (self.count, self.probe), dropped)

    def _appends(self, kept: list[int], new: dict) -> bool:
        """Whether the new rows can go in a part after the head's (every cached row kept, the
        new ids above them all, not too many parts yet)."""
        return (
            self.head is not None
            and len(kept) == len(self.cached)
            and len(self.head["parts"]) < MAX_PARTS
            and (not new or not self.cached or min(new) > max(self.cached))
        )

    def _table(self, kept: list[int], new: dict) -> pa.Table | None:
        parts = []
        if kept and self.index is not None:
            parts.append(self.index.rows([self.cached[i] for i in kept]))
        if new:
            ids = sorted(new)
            parts.append(encode([new[i][0] for i in ids], [new[i][1] for i in ids], {}))
        return _sorted(parts)


def cacheable(row: dict) -> bool:
    """A run that no longer changes by itself, read without a note."""
    return row.get("status") in FINAL and not row.get("note")


def _sorted(parts: list[pa.Table]) -> pa.Table | None:
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
    ids = table["run_id"].to_numpy()
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        table = table.take(pa.array(np.argsort(ids, kind="stable")))
    return table


# --------------------------------------------------------------------------- the documents


def read_cache(db, head: dict | None = None) -> tuple[dict | None, pa.Table | None]:
    """The head (or the rows of the one given) and the rows, or (None, None) when there is no
    cache or any of it is not what a writer leaves (then it is written anew)."""
    from pymongo.errors import PyMongoError

    try:
        head = head or db[CACHE_COLLECTION].find_one({"_id": HEAD})
        if head is None:
            return None, None
        check_head(head)
        ids = [part["id"] for part in head["parts"]]
        found = {d["_id"]: d.get("data") for d in db[CACHE_COLLECTION].find({"_id": {"$in": ids}})}
        return head, rows_of(head, found)
    except (PyMongoError, Damaged, pa.ArrowException, OSError, KeyError, TypeError, ValueError):
        return None, None


def check_head(head) -> None:
    """Damaged unless the head has the shape a writer gives it."""
    if not isinstance(head, dict):
        raise Damaged("the cache's head is not a document")
    parts, pending = head.get("parts"), head.get("pending")
    if (
        head.get("version") != VERSION
        or not isinstance(head.get("generation"), str)
        or not isinstance(head.get("probe"), str)
        or type(head.get("count")) is not int
        or not isinstance(pending, list)
        or not all(type(i) is int and -(2**63) <= i < 2**63 for i in pending)
        or not isinstance(parts, list)
        or not all(
            isinstance(p, dict)
            and isinstance(p.get("id"), str)
            and isinstance(p.get("sha256"), str)
            and type(p.get("rows")) is int
            for p in parts
        )
    ):
        raise Damaged("the cache's head is not one reprolab wrote")


def rows_of(head: dict, found: dict) -> pa.Table | None:
    """The parts' rows joined, each part's bytes checked against the head's digest first, and
    its rows counted as the head counts them."""
    tables = []
    for part in head["parts"]:
        data = found.get(part["id"])
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise Damaged(f"part {part['id']} is missing or not the one the head names")
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
        check_schema(table.schema)
        table.validate(full=True)
        if len(table) != part["rows"]:
            raise Damaged(f"part {part['id']} holds {len(table)} rows, not {part['rows']}")
        tables.append(table)
    if not tables:
        return None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    check_rows(table)
    return table


def check_rows(table: pa.Table) -> None:
    """Damaged unless run ids are present and increasing, every row signed, every status final."""
    for name in ("run_id", SIGNATURE, "status"):
        if table[name].null_count:
            raise Damaged(f"a {name} is missing")
    ids = table["run_id"].to_numpy()
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise Damaged("run ids out of order or repeated")
    if not set(table["status"].unique().to_pylist()) <= FINAL:
        raise Damaged("a row of a run that has not ended")


def write_cache(db, head, carried, rows, pending, probe_now, dropped) -> None:
    """Swap in a head naming the carried parts and new ones of the rows (compare-and-set on the
    generation read); a writer that lost the race merges its rows into the winner's, with a
    probe that never matches."""
    from pymongo.errors import OperationFailure, PyMongoError

    try:
        for _ in range(MERGE_TRIES):
            if _swap(db, head, carried, rows, pending, probe_now):
                return
            if carried:  # the rows carried were read with the head that lost: joined again
                rows = _sorted([t for t in (read_cache(db, head)[1], rows) if t is not None])
                carried = []
            head, theirs = read_cache(db)
            rows = _merged(theirs, rows, dropped)
            pending = sorted(set(pending) | set(head["pending"] if head else []))
            probe_now = (-1, "")  # two views joined: the next reader lists every run
    except OperationFailure as error:
        if error.code in UNAUTHORISED:  # a read-only user: not asked again in this process
            _read_only.add(id(db.client))
    except PyMongoError:  # the server went away, or refused: the cache stays as it is
        pass


def _merged(theirs: pa.Table | None, mine: pa.Table | None, dropped: set[int]) -> pa.Table | None:
    parts = []
    if theirs is not None:
        ids = theirs["run_id"].to_numpy()
        mine_ids = [] if mine is None else mine["run_id"].to_pylist()
        keep = ~np.isin(ids, [*dropped, *mine_ids])
        parts.append(theirs.filter(pa.array(keep)))
    if mine is not None:
        parts.append(mine)
    return _sorted(parts)


def _swap(db, head, carried, rows, pending, probe_now) -> bool:
    """Insert the parts, then the head that names them and the carried ones if the head is
    still the one read; old parts neither head names are removed (a reader of the head replaced
    still finds its parts). False, the new parts removed, when another writer came first."""
    from pymongo.errors import PyMongoError

    collection = db[CACHE_COLLECTION]
    generation, now = uuid.uuid4().hex, server_time(db)
    try:
        parts = [*carried, *_insert_parts(collection, generation, rows, now)]
        new = {
            "_id": HEAD,
            "version": VERSION,
            "generation": generation,
            "probe": probe_now[1],
            "count": probe_now[0],
            "pending": pending,
            "parts": parts,
        }
        swapped = _put_head(collection, head, new)
    except PyMongoError:
        collection.delete_many({"generation": generation})
        raise
    if not swapped:
        collection.delete_many({"generation": generation})
        return False
    named = [part["id"] for part in parts + (head["parts"] if head is not None else [])]
    _remove_orphans(collection, named, now)
    return True


def server_time(db) -> dt.datetime:
    """The server's clock (`hello`'s localTime), which dates every part and every cleanup, so
    the writers' clocks never disagree; this machine's where the server does not say."""
    from pymongo.errors import PyMongoError

    try:
        return db.command("hello")["localTime"]
    except (PyMongoError, NotImplementedError, KeyError):  # mongomock: not implemented
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _remove_orphans(collection, named: list[str], now: dt.datetime) -> None:
    """Remove the parts neither head names that are ORPHAN_AGE old by the server's clock (or
    undated, written before parts were): a crashed writer's, or a head's from two swaps ago;
    not another writer's new parts that its head is about to name."""
    unnamed = {"$nin": [HEAD, *named]}
    before = now - ORPHAN_AGE
    for old in ({"$lt": before}, {"$exists": False}):  # not one $or: nx-27017 then drops the _id
        collection.delete_many({"_id": unnamed, "written": old})


def _insert_parts(
    collection, generation: str, rows: pa.Table | None, now: dt.datetime
) -> list[dict]:
    from bson import Binary

    parts = []
    for k, (count, data) in enumerate(_serialised(rows)):
        part_id = f"{generation}/{k}"
        collection.insert_one(
            {"_id": part_id, "generation": generation, "data": Binary(data), "written": now}
        )
        parts.append({"id": part_id, "sha256": hashlib.sha256(data).hexdigest(), "rows": count})
    return parts


def _put_head(collection, head: dict | None, new: dict) -> bool:
    """Compare-and-set: the new head replaces the one read (its generation), or is the first;
    a head that could not be read is replaced whatever it holds (no writer left it so)."""
    from pymongo.errors import DuplicateKeyError

    if head is not None:
        found = collection.replace_one({"_id": HEAD, "generation": head["generation"]}, new)
        return found.matched_count == 1
    if collection.find_one({"_id": HEAD}, {"_id": 1}) is None:
        try:
            collection.insert_one(new)
            return True
        except DuplicateKeyError:
            return False
    return collection.replace_one({"_id": HEAD}, new).matched_count == 1


def _serialised(rows: pa.Table | None) -> list[tuple[int, bytes]]:
    """The rows as Arrow IPC streams (zstd buffers), split so each fits one part document;
    each with its number of rows."""
    if rows is None or not len(rows):
        return []
    whole = _stream(rows)
    count = -(-len(whole) // PART_BYTES)
    if count == 1:
        return [(len(rows), whole)]
    step = -(-len(rows) // count)
    slices = [rows.slice(start, step) for start in range(0, len(rows), step)]
    return [(len(piece), _stream(piece)) for piece in slices]


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
