"""The store fuzzer: real recorded runs, one record changed at random, then every command that
reads a store. Whatever the change: no code planted in the store runs (no marker file), no
traceback, an answer within a time bound, and the untouched run is still listed.

Run 1 is the one changed; run 2 is never touched. The fast tier tries a handful of changes, the
slow tier (`-m slow`) a few hundred; hypothesis prints the failing example and the blob that
replays it (`@reproduce_failure`)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import bson
import mongomock
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mongomock.gridfs import enable_gridfs_integration

import experiments.rerun as rerun_module
import experiments.sweeps.command as sweep_command
import observers.mongo as om
from experiments.cli import main as reprolab
from experiments.resume import load_resume_point
from observers.records import RecordError
from observers.store import SUMMARY_CACHE
from observers.sync import sync_store
from observers.tables import load_metrics, load_runs

enable_gridfs_integration()
TIME_BOUND_S = 30  # one command on a changed store answers within this
RECORDS = ("run.json", "config.json", "info.json", "metrics.json")
URL = "mongodb://fuzz.example:27017/sacred"


def payload(marker: Path) -> dict:
    """What Sacred's JSON codec would decode into `Path(marker).touch()`."""
    path = {"py/reduce": [{"py/type": "pathlib.PosixPath"}, {"py/tuple": [str(marker)]}]}
    return {"py/reduce": [{"py/function": "pathlib.Path.touch"}, {"py/tuple": [path]}]}


@pytest.fixture(scope="module")
def base(small_store_of, tmp_path_factory) -> Path:
    """Two real runs, a sweep record naming them, the summary cache, and planted code."""
    store = small_store_of(["debug", "sgd"])
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        argv = ["sweep", "experiments/train.py", "--store", str(store), "--print-commands"]
        assert reprolab([*argv, "with", "lr=[0.1, 0.01]", "debug"]) == 0
        (record,) = (store / ".reprolab" / "sweeps").glob("*.json")
        for run_id in (1, 2):
            path = store / str(run_id) / "run.json"
            run = json.loads(path.read_text())
            run.setdefault("meta", {})["sweep"] = {"id": record.stem, "index": run_id - 1}
            path.write_text(json.dumps(run))
        assert reprolab(["ls", "--store", str(store)]) == 0  # writes the summary cache
    assert (store / SUMMARY_CACHE).is_file()
    return store


# --------------------------------------------------------------------------- changes


def json_paths(value, prefix=()) -> list[tuple]:
    """Every path into a JSON value (keys and list indices), the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += json_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:20]):
            found += json_paths(inner, (*prefix, index))
    return found


def set_path(value, path: tuple, new):
    if not path:
        return new
    inner = value
    for step in path[:-1]:
        inner = inner[step]
    inner[path[-1]] = new
    return value


def odd_values(marker: Path, outside: Path) -> st.SearchStrategy:
    """Values of every JSON type, and the ones an attacker would choose."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30),
        st.sampled_from(
            [
                "../../../../etc/passwd",
                "/dev/zero",
                str(outside),
                "../2",
                "²",
                "١٢",
                "evil.py",
                "evil:make",
                "data/make_digits.py",
                "RUNNING",
                "2001-01-01T00:00:00",
            ]
        ),
    )
    return st.one_of(
        scalars,
        st.just(payload(marker)),
        st.lists(scalars, max_size=4),
        st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    )


@st.composite
def changes(draw, marker: Path, outside: Path):
    """One change to the store: (description, function applying it to a store folder)."""
    target = draw(st.sampled_from([*RECORDS, "sweep", "cache", "folder"]))
    kind = draw(
        st.sampled_from(["value", "value", "value", "device", "outside", "dangling", "bytes"])
    )
    if target == "folder":
        name = draw(st.sampled_from(["²", "١", "01", "1.json"]))
        return f"run 1 copied to {name!r}", lambda s: shutil.copytree(s / "1", s / name)
    if kind == "value":
        index = draw(st.integers(min_value=0, max_value=10**6))
        value = draw(odd_values(marker, outside))

        def change(store: Path) -> None:
            path = file_of(store, target)
            record = json.loads(path.read_text())
            paths = json_paths(record)
            chosen = paths[index % len(paths)]
            path.write_text(json.dumps(set_path(record, chosen, value)))

        return f"{target}: value at path #{index} set to {value!r}", change
    if kind == "bytes":
        content = draw(
            st.one_of(
                st.binary(max_size=64),
                st.just(b"\xff\xfe{not utf-8}"),
                st.just(b'{"a": ' + b"[" * 100_000),  # deep nesting
                st.just(b" " * (2 * 2**20) + b"{}"),  # large (bounded)
            )
        )
        return f"{target}: {len(content)} bytes {content[:20]!r}...", lambda s: file_of(
            s, target
        ).write_bytes(content)
    link_to = {"device": "/dev/zero", "outside": str(outside), "dangling": "/nonexistent/x"}[kind]

    def link(store: Path) -> None:
        path = file_of(store, target)
        path.unlink()
        path.symlink_to(link_to)

    return f"{target}: replaced by a link to {link_to}", link


def file_of(store: Path, target: str) -> Path:
    if target == "sweep":
        return next((store / ".reprolab" / "sweeps").glob("*.json"))
    if target == "cache":
        return store / SUMMARY_CACHE
    return store / "1" / target


# --------------------------------------------------------------------------- reading


class TooSlow(Exception):
    """A command did not answer within TIME_BOUND_S."""


@contextlib.contextmanager
def bounded():
    def alarm(*_):
        raise TooSlow(f"no answer within {TIME_BOUND_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, TIME_BOUND_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def command(*argv: str) -> tuple[int, str]:
    """`reprolab ARGV` in-process within the time bound: exit code and all output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), bounded():
        code = reprolab(list(argv))
    text = out.getvalue()
    assert "Traceback" not in text, text[-2000:]
    return code, text


def one_sentence_or_done(call) -> None:
    """A library call that reads the store: a result, or RecordError/ValueError (one sentence)."""
    with bounded():
        try:
            call()
        except (RecordError, ValueError) as error:
            assert "\n" not in str(error), str(error)


def read_everything(store: Path, sweep_id: str, workdir: Path) -> None:
    """Every command and function that reads a store, on `store`."""
    s = str(store)
    code, out = command("ls", "--store", s)
    assert code == 0 and any(line.split()[:1] == ["2"] for line in out.splitlines()), out
    for argv in (
        ("show", "1"),
        ("show", "2"),
        ("compare", "1", "2"),
        ("compare", "1", "2", "--plot", str(workdir / "cmp.png")),
        ("export", "--to", str(workdir / "runs.csv")),
        ("ls", "--sweep", sweep_id),
        ("rerun", "1"),
        ("rerun", "1", "--verify"),
        ("sweep", "--status", sweep_id),
        ("sweep", "--resume", sweep_id),
    ):
        command(*argv, "--store", s)
    with bounded():
        assert 2 in load_runs(store).index
    one_sentence_or_done(lambda: load_metrics(store, run_ids=[1, 2]))
    one_sentence_or_done(lambda: load_resume_point("1", s))
    with contextlib.redirect_stdout(io.StringIO()), bounded():
        report = sync_store(store, URL, echo=lambda *_: None)
    assert 2 in [local for local, _ in report.uploaded + report.present + report.completed]


@pytest.fixture
def sandbox(monkeypatch):
    """No run starts (rerun and sweep --resume stop where they would launch), MongoDB is a fresh
    mongomock per example, and the working directory is a scratch folder."""
    started: list[str] = []
    monkeypatch.setattr(
        rerun_module, "run_again", lambda *a, **k: (started.append("rerun"), (0, None))[1]
    )
    monkeypatch.setattr(sweep_command, "launch", lambda *a, **k: started.append("sweep") or 0)
    clients: list = []

    def client(url, **options):
        clients.append(clients[0] if clients else mongomock.MongoClient())
        return clients[-1]

    monkeypatch.setattr(om, "make_client", client)
    return clients


def fuzz(base: Path, sandbox: list, change) -> None:
    description, apply = change
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        tmp_path = Path(tmp)
        store, work = tmp_path / "store", tmp_path / "work"
        shutil.copytree(base, store, symlinks=True)
        work.mkdir()
        (store / "evil.py").write_text(
            f"import pathlib\npathlib.Path({str(tmp_path / 'MARKER')!r}).touch()\n"
            "def make(**kwargs):\n    pathlib.Path('MARKER2').touch()\n"
        )
        sweep_id = next((store / ".reprolab" / "sweeps").glob("*.json")).stem
        print(f"change: {description}")
        apply(store)
        sandbox.clear()
        read_everything(store, sweep_id, work)
        assert not (tmp_path / "MARKER").exists() and not (tmp_path / "MARKER2").exists()
        assert not Path("/tmp/fuzz-marker").exists()


MARKER = Path("/tmp/fuzz-marker")
OUTSIDE = Path(__file__).resolve()  # a readable file outside the store


@settings(
    max_examples=10,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=changes(MARKER, OUTSIDE))
def test_a_changed_store_is_read_safely_fast(base, sandbox, change):
    fuzz(base, sandbox, change)


@pytest.mark.slow
@settings(
    max_examples=300,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=changes(MARKER, OUTSIDE))
def test_a_changed_store_is_read_safely(base, sandbox, change):
    fuzz(base, sandbox, change)


def mongo_can_hold(value) -> bool:
    """Whether BSON can encode the value: one it cannot (an int past 64 bits) is in no document."""
    try:
        bson.encode({"value": value})
    except (OverflowError, bson.errors.InvalidDocument):
        return False
    return True


@st.composite
def mongo_changes(draw):
    """A value of any type at any path of run 1's MongoDB document, or of its metrics."""
    collection = draw(st.sampled_from(["runs", "metrics"]))
    index = draw(st.integers(min_value=0, max_value=10**6))
    return collection, index, draw(odd_values(MARKER, OUTSIDE))


@settings(
    max_examples=10,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(change=mongo_changes())
def test_a_changed_mongodb_document_is_read_safely(base, sandbox, change):
    collection, index, value = change
    assume(mongo_can_hold(value))
    sandbox.clear()
    with contextlib.redirect_stdout(io.StringIO()):
        sync_store(base, URL, echo=lambda *_: None)
    db = sandbox[0]["sacred"]
    query = {"_id": 1} if collection == "runs" else {"run_id": 1}
    doc = db[collection].find_one(query)
    doc.pop("_id")
    paths = [p for p in json_paths(doc) if p]
    chosen = paths[index % len(paths)]
    db[collection].update_one(query, {"$set": {".".join(map(str, chosen)): value}})
    code, out = command("ls", "--store", URL)
    assert code == 0 and any(line.split()[:1] == ["2"] for line in out.splitlines()), out
    for argv in (("show", "1"), ("compare", "1", "2")):
        command(*argv, "--store", URL)
    with bounded():
        assert 2 in load_runs(URL).index
    one_sentence_or_done(lambda: load_metrics(URL, run_ids=[1, 2]))
    assert not MARKER.exists()


def test_the_fuzzers_changes_reach_every_record(base):
    """The strategy's targets cover every record a reader opens (a guard for the fuzzer)."""
    assert all((base / "1" / name).is_file() for name in RECORDS)
    assert os.path.isfile(file_of(base, "sweep")) and os.path.isfile(file_of(base, "cache"))


def recorded_data_path(value):
    """A change of run 1's recorded data.path to `value` (what the fuzzer once found: False)."""

    def apply(store: Path) -> None:
        config_file = store / "1" / "config.json"
        config = json.loads(config_file.read_text())
        config["data"]["path"] = value
        config_file.write_text(json.dumps(config))

    return f"config.json: data.path set to {value!r}"[:200], apply


@pytest.mark.slow
@pytest.mark.parametrize("value", [False, 0, None, ["a"], {"a": 1}, "a\0b", "x" * 5000])
def test_a_recorded_data_path_of_any_type_is_read_safely(base, sandbox, value):
    fuzz(base, sandbox, recorded_data_path(value))


def recorded_data_hash(value):
    """A change of run 1's recorded data file SHA-256 to `value` (what the fuzzer found: True)."""

    def apply(store: Path) -> None:
        info_file = store / "1" / "info.json"
        info = json.loads(info_file.read_text())
        info["data"]["fingerprint"]["sha256"] = value
        info_file.write_text(json.dumps(info))

    return f"info.json: data.fingerprint.sha256 set to {value!r}"[:200], apply


@pytest.mark.slow
@pytest.mark.parametrize("value", [True, 0, 1.5, None, ["a"], {"a": 1}, "", "a\0b", "x" * 5000])
def test_a_recorded_data_hash_of_any_type_is_read_safely(base, sandbox, value):
    fuzz(base, sandbox, recorded_data_hash(value))


def sweep_value_changed(key: str, value):
    """A change of the sweep record's top-level `key` to `value` (what the fuzzer found: configs
    set to True broke `reprolab sync`)."""

    def apply(store: Path) -> None:
        sweep_file = file_of(store, "sweep")
        record = json.loads(sweep_file.read_text())
        record[key] = value
        sweep_file.write_text(json.dumps(record))

    return f"sweep: {key} set to {value!r}", apply


@pytest.mark.slow
@pytest.mark.parametrize("value", [True, 5, "x", None, {"a": 1}, [None]])
def test_a_sweep_record_with_any_top_level_value_is_read_and_synced_safely(base, sandbox, value):
    keys = [k for k in json.loads(file_of(base, "sweep").read_text()) if k != "id"]
    assert "configs" in keys and "attempts" in keys
    for key in keys:
        fuzz(base, sandbox, sweep_value_changed(key, value))
