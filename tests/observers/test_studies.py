"""A search's study in the run store: the MongoDB journal backend (mongomock, and the nx-27017
wire-protocol server with several writers at once), sync of a file store's journal into it,
and hostile search declarations refused in one sentence."""

from __future__ import annotations

import threading

import mongomock
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.storages.journal import JournalStorage

from experiments.sweeps.space import Search
from observers.location import StoreLocation
from observers.records import RecordError
from observers.studies import MongoJournalBackend, journal_path, study_storage, sync_journal

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1, 1)
    for step in range(3):
        trial.report(x * x + step, step)
    return x * x


def test_mongo_journal_backend_holds_a_study_as_optuna_writes_it():
    db = mongomock.MongoClient()["sacred"]
    study = optuna.create_study(
        study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s"))
    )
    study.optimize(objective, n_trials=6)
    again = optuna.load_study(study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s")))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.intermediate_values for t in again.trials] == [
        t.intermediate_values for t in study.trials
    ]
    backend = MongoJournalBackend(db, "s")
    logs = backend.read_logs(0)
    assert backend.read_logs(5) == logs[5:] and backend.read_logs(len(logs)) == []
    assert MongoJournalBackend(db, "other").read_logs(0) == []  # journals never mix


@pytest.mark.mongo
def test_mongo_journal_backend_with_writers_at_once_on_a_wire_protocol_server(nx_server):
    import pymongo

    client = pymongo.MongoClient(nx_server.url)
    db = client.get_default_database()
    optuna.create_study(study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s")))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            storage = JournalStorage(
                MongoJournalBackend(pymongo.MongoClient(nx_server.url).sacred, "s")
            )
            optuna.load_study(study_name="s", storage=storage).optimize(objective, n_trials=4)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    study = optuna.load_study(study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s")))
    assert sorted(t.number for t in study.trials) == list(range(12))  # none lost, none twice
    assert all(t.state.name == "COMPLETE" and len(t.intermediate_values) == 3 for t in study.trials)
    starts = [doc["start"] for doc in db["studies"].find({"journal": "s"}).sort("start", 1)]
    counts = [len(doc["logs"]) for doc in db["studies"].find({"journal": "s"}).sort("start", 1)]
    assert starts == [sum(counts[:i]) for i in range(len(counts))]  # tiled without a gap


def test_sync_appends_what_mongodb_lacks_of_a_file_journal(tmp_path):
    location = StoreLocation.parse(str(tmp_path / "runs"))
    study = optuna.create_study(study_name="s", storage=study_storage(location, "s"))
    study.optimize(objective, n_trials=3)
    db = mongomock.MongoClient()["sacred"]
    path = journal_path(location, "s")
    assert sync_journal(path, db, "s") > 0
    assert sync_journal(path, db, "s") == 0  # twice: nothing new
    study.optimize(objective, n_trials=2)
    assert sync_journal(path, db, "s") > 0
    there = optuna.load_study(study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s")))
    assert [t.params for t in there.trials] == [t.params for t in study.trials]


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(-2, 2), max_size=3),
    st.dictionaries(
        st.sampled_from(["low", "high", "log", "step", "name", "seed"]),
        st.integers(-2, 3),
        max_size=3,
    ),
)
blocks = st.dictionaries(
    st.sampled_from(
        ["trials", "metric", "direction", "sampler", "pruner", "space", "storage", "bogus"]
    ),
    st.one_of(
        values,
        st.dictionaries(
            st.sampled_from(["lr", "name", "seed", "min_resource"]), values, max_size=3
        ),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(blocks)
def test_hostile_search_blocks_are_refused_in_one_sentence_or_accepted_checked(block):
    try:
        search = Search.from_block(block).check()
    except ValueError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert 1 <= search.trials <= 100_000 and search.direction in ("maximize", "minimize")
    search.make_sampler(), search.make_pruner(), search.distributions()  # Optuna takes them


def test_sync_refuses_a_study_continued_apart_in_mongodb_and_in_the_file(tmp_path):
    """Synced, then resumed in MongoDB and in the file store each: the file's later logs are not
    MongoDB's, so appending them would splice two histories. Refused; MongoDB is left as it was."""
    location = StoreLocation.parse(str(tmp_path / "runs"))
    study = optuna.create_study(study_name="s", storage=study_storage(location, "s"))
    study.optimize(objective, n_trials=2)
    db = mongomock.MongoClient()["sacred"]
    path = journal_path(location, "s")
    sync_journal(path, db, "s")
    there = optuna.load_study(study_name="s", storage=JournalStorage(MongoJournalBackend(db, "s")))
    there.optimize(objective, n_trials=1)
    study.optimize(objective, n_trials=2)  # the file went on apart, further than MongoDB
    held = MongoJournalBackend(db, "s").read_logs(0)
    with pytest.raises(RecordError, match=r"^study s in MongoDB and in .* differ within"):
        sync_journal(path, db, "s")
    assert MongoJournalBackend(db, "s").read_logs(0) == held


def test_the_mongo_journal_is_read_by_an_index_a_writer_makes(monkeypatch):
    """A writer makes the index; a reader never asks for it (a read-only user may not), and a
    server that refuses it is read and written without it."""
    from pymongo.errors import OperationFailure

    db = mongomock.MongoClient()["sacred"]
    MongoJournalBackend(db, "s").read_logs(0)
    assert "journal_1_start_1" not in db["studies"].index_information()
    MongoJournalBackend(db, "s").append_logs([{"op_code": 0}])
    keys = [info["key"] for info in db["studies"].index_information().values()]
    assert [("journal", 1), ("start", 1)] in keys

    def refused(*args, **kwargs):
        raise OperationFailure("not authorized", 13)

    other = mongomock.MongoClient()["sacred"]
    monkeypatch.setattr(type(other["studies"]), "create_index", refused)
    backend = MongoJournalBackend(other, "s")
    backend.append_logs([{"op_code": 0}])
    assert backend.read_logs(0) == [{"op_code": 0}]


def test_sync_refuses_a_mongo_journal_with_a_gap(tmp_path):
    """Its logs stop at the gap while its end lies past it: appending there would splice."""
    location = StoreLocation.parse(str(tmp_path / "runs"))
    optuna.create_study(study_name="s", storage=study_storage(location, "s")).optimize(
        objective, n_trials=1
    )
    db = mongomock.MongoClient()["sacred"]
    db["studies"].insert_many(
        [
            {"_id": f"s:{start:012d}", "journal": "s", "start": start, "logs": [{"op_code": 0}]}
            for start in (0, 5)
        ]
    )
    with pytest.raises(RecordError, match=r"logs stop at 1 but its last document ends at 6"):
        sync_journal(journal_path(location, "s"), db, "s")
    assert db["studies"].count_documents({}) == 2


documents = st.fixed_dictionaries(
    {},
    optional={
        "_id": st.one_of(st.sampled_from(["s:000000000000", "s:000000000001", "s:x"]), values),
        "start": st.one_of(st.integers(-1, 3), values),
        "logs": st.one_of(st.lists(st.one_of(st.just({"op_code": 0}), values), max_size=2), values),
    },
).map(lambda doc: {**doc, "journal": "s"})


@settings(max_examples=200, deadline=None)
@given(st.lists(documents, min_size=1, max_size=3))
def test_a_damaged_mongo_journal_is_refused_never_looped_on(docs):
    """A studies document of any shape (planted or torn) gives logs, or RecordError naming the
    journal; an append after it ends, appended or refused, instead of retrying forever."""
    db = mongomock.MongoClient()["sacred"]
    for doc in docs:
        try:
            db["studies"].insert_one(doc)
        except Exception:  # noqa: BLE001 - a duplicate or unencodable _id: not planted
            pass
    backend = MongoJournalBackend(db, "s")
    for act in (lambda: backend.read_logs(0), backend.count, lambda: backend.append_logs([{}])):
        try:
            act()
        except RecordError as error:
            assert str(error).startswith("study s's journal in MongoDB is damaged")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"pruner": {"name": "hyperband", "min_resource": 5, "max_resource": 2}},
            "search.pruner.max_resource (2) must be min_resource (5) or more",
        ),
        (
            {"space": {"lr": {"low": 0.001, "high": 0.1, "step": 5}}},
            "space.lr: step 5 must divide high - low evenly",
        ),
        (
            {"space": {"width": {"low": 1, "high": 4, "step": 2}}},
            "space.width: step 2 must divide high - low evenly",
        ),
        (
            {"space": {"model": {"dropout": [0.1, 0.2]}, "model.dropout": [0.3]}},
            "space.model.dropout is given twice; give it once",
        ),
    ],
)
def test_a_search_optuna_would_quietly_change_is_refused(block, message):
    """Hyperband with no room between its resources, a step that does not divide its range
    (Optuna would search a shorter one), a key given nested and dotted (one would win): each
    refused naming the key."""
    block = {"trials": 4, "space": {"lr": {"low": 0.001, "high": 0.1}}, **block}
    with pytest.raises(ValueError) as refused:
        Search.from_block(block).check_declared()
    assert str(refused.value) == message
    if "twice" not in message:  # recorded by an earlier version, which let Optuna change it
        assert Search.parse(Search.from_block(block).check().record()).trials == 4
    Search.from_block(
        {"trials": 4, "space": {"lr": {"low": 0.001, "high": 0.1, "step": 0.001}}}
    ).check()


def test_a_sampler_named_on_the_command_line_keeps_the_declared_seed():
    declared = Search.from_block(
        {
            "trials": 4,
            "space": {"lr": {"low": 0.001, "high": 0.1}},
            "sampler": {"name": "tpe", "seed": 7, "n_startup_trials": 3},
            "pruner": {"name": "median", "n_startup_trials": 2},
        }
    )
    assert declared.with_options(sampler="tpe").check().sampler == {
        "name": "tpe",
        "seed": 7,
        "n_startup_trials": 3,
    }
    assert declared.with_options(sampler="random").check().sampler == {"name": "random", "seed": 7}
    assert declared.with_options(pruner="median").check().pruner == {
        "name": "median",
        "n_startup_trials": 2,
    }
    assert declared.with_options(pruner="hyperband").check().pruner == {"name": "hyperband"}
