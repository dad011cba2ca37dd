"""Where a search's Optuna study lives: in the run store, beside the sweep's record, no server.

A file store keeps each study as an Optuna journal file, `<store>/.reprolab/studies/<id>.log`,
locked by creating a lock file (JournalFileOpenLock: safe for several processes, on one machine
or on a shared file system). MongoDB keeps it as a journal in the `studies` collection of the
same database (MongoJournalBackend below). Any other Optuna storage is named by URL
(sqlite:///..., postgresql://...). A journal is JSON data: replaying it runs no code.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.storages.journal import BaseJournalBackend

from observers.location import StoreLocation
from observers.records import RecordError

STUDIES = Path(".reprolab") / "studies"  # inside a file store, beside .reprolab/sweeps
STUDIES_COLLECTION = "studies"
STORAGE_VARIABLE = "REPROLAB_STUDY_STORAGE"  # a study storage URL handed to a trial's process
# What Optuna raises replaying a damaged journal (or loading a study not there): a generator of
# damaged journals in tests/experiments/test_search.py found each.
REPLAY_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, AssertionError)
URL_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")


def journal_path(location: StoreLocation, study_id: str) -> Path:
    """A file store's journal file of one study."""
    return location.path / STUDIES / f"{study_id}.log"


def study_storage(location: StoreLocation, study_id: str, url: str | None = None) -> BaseStorage:
    """The Optuna storage of a study: `url` when given, else the run store's own journal."""
    import optuna

    if url:
        from sqlalchemy.exc import SQLAlchemyError

        from observers.credentials import describe_error, redact_url

        check_storage_url(url)
        try:
            return optuna.storages.RDBStorage(url)
        except (ImportError, SQLAlchemyError, ValueError) as error:  # no driver, server, file
            raise ValueError(
                f"--study-storage {redact_url(url)} cannot be opened: {describe_error(error, url)}"
            ) from None
    from optuna.storages.journal import JournalStorage

    if location.is_mongo:
        from observers.mongo import reach

        backend = MongoJournalBackend(reach(location.secret), study_id)
    else:
        backend = file_backend(journal_path(location, study_id))
    try:
        return JournalStorage(backend)  # replays the journal: its logs are data
    except REPLAY_ERRORS as error:
        raise unreadable(study_id, error) from None


def open_study(
    location: StoreLocation, study_id: str, url: str | None = None, new: bool = False, **settings
):
    """The Optuna study: created when `new` (RecordError if its storage holds a study of that
    name: another store's search with the same id), else loaded (RecordError if it is missing
    or damaged: a journal is data). A read never writes: no journal file is created for it."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line per trial drowns ours
    if not (new or url or location.is_mongo):
        journal = journal_path(location, study_id)
        if not journal.is_file():
            raise RecordError(f"search {study_id}'s study journal {journal} is missing")
    storage = study_storage(location, study_id, url)  # a URL it cannot open: ValueError
    try:
        if new:
            return optuna.create_study(study_name=study_id, storage=storage, **settings)
        return optuna.load_study(study_name=study_id, storage=storage, **settings)
    except DuplicatedStudyError:
        raise RecordError(
            f"the study storage already holds a study named {study_id}, which is not this "
            "search's (another store's search with the same id): nothing was run"
        ) from None
    except REPLAY_ERRORS as error:
        raise unreadable(study_id, error) from None


def unreadable(study_id: str, error: Exception) -> RecordError:
    """A study not in its storage, or a damaged journal, in one sentence naming the search."""
    return RecordError(
        f"search {study_id}'s study is missing from its storage or damaged "
        f"({type(error).__name__}: {str(error)[:200]})"
    )


def file_backend(path: Path):
    """Optuna's journal file backend on path, with the lock that works on shared file systems."""
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))


def check_storage_url(url: str) -> None:
    """A study storage URL Optuna can open by itself: ValueError naming the option otherwise."""
    if not url.startswith(URL_SCHEMES):
        raise ValueError(
            f"--study-storage must be an Optuna database URL (sqlite:///FILE, "
            f"postgresql://..., mysql://...), not {url.split('://')[0]!r}; leave it out to keep "
            "the study in the run store"
        )


class MongoJournalBackend(BaseJournalBackend):
    """An Optuna journal in a MongoDB collection: one document per append, `_id` the journal and
    the number of its first log. Numbers tile without gaps: a writer appends at the end of the
    last document it sees, and a second writer that saw the same end is refused by the unique
    `_id` and tries again after it, so every reader sees the logs in one order. The documents
    are data: one that breaks the tiling is reported (RecordError), never looped on."""

    def __init__(self, db, journal: str, collection: str = STUDIES_COLLECTION):
        self.collection, self.journal = db[collection], journal
        self.indexed = False

    def ensure_index(self) -> None:
        """The index every read seeks by, made by a writer (once per backend: per search or
        trial process); a server that refuses it is read without it."""
        from pymongo.errors import PyMongoError

        if self.indexed:
            return
        self.indexed = True
        try:
            self.collection.create_index([("journal", 1), ("start", 1)])
        except PyMongoError:
            pass

    def checked(self, doc: dict) -> tuple[int, list]:
        """A document's (start, logs), or RecordError naming it where it breaks the tiling."""
        start, logs = doc.get("start"), doc.get("logs")
        if (
            not isinstance(start, int)
            or isinstance(start, bool)
            or start < 0
            or doc.get("_id") != f"{self.journal}:{start:012d}"
            or not isinstance(logs, list)
            or not logs
            or not all(isinstance(log, dict) for log in logs)
        ):
            raise RecordError(
                f"study {self.journal}'s journal in MongoDB is damaged at document "
                f"{str(doc.get('_id'))[:80]!r}: not a numbered, non-empty list of logs"
            )
        return start, logs

    def count(self) -> int:
        """How many logs the journal holds: the number after its last one."""
        last = self.collection.find_one({"journal": self.journal}, sort=[("start", -1)])
        if last is None:
            return 0
        start, logs = self.checked(last)
        return start + len(logs)

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """Every log numbered log_number_from or later, in order."""
        holding = self.collection.find_one(
            {"journal": self.journal, "start": {"$lte": log_number_from}}, sort=[("start", -1)]
        )
        first = self.checked(holding)[0] if holding else log_number_from
        logs: list[dict[str, Any]] = []
        for doc in self.collection.find(
            {"journal": self.journal, "start": {"$gte": first}}, sort=[("start", 1)]
        ):
            start, more = self.checked(doc)
            if start != first + len(logs):
                break  # never past a gap: none is written, but a torn copy stops here
            logs.extend(more)
        return logs[log_number_from - first :]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Add logs after the last ones, as one document (a racing writer retries after it: a
        refusal with no new last document means a damaged journal, reported, not looped on)."""
        from pymongo.errors import DuplicateKeyError

        self.ensure_index()
        start = self.count()
        while True:
            try:
                self.collection.insert_one(
                    {
                        "_id": f"{self.journal}:{start:012d}",
                        "journal": self.journal,
                        "start": start,
                        "logs": logs,
                    }
                )
                return
            except DuplicateKeyError:
                after = self.count()  # another writer took this number first: append after it
                if after <= start:
                    raise RecordError(
                        f"study {self.journal}'s journal in MongoDB is damaged: log {start} is "
                        "taken by a document its last one does not reach"
                    ) from None
                start = after


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every log of a file journal, in order (for sync); RecordError naming it if damaged."""
    try:
        logs = list(file_backend(path).read_logs(0))
    except ValueError as error:  # a line that is not JSON
        raise RecordError(f"study journal {path} is damaged: {error}") from None
    if not all(isinstance(log, dict) for log in logs):
        raise RecordError(f"study journal {path} is damaged: a line is not a log")
    return logs


def sync_journal(path: Path, db, study_id: str) -> int:
    """Append the logs of a file store's study journal that MongoDB lacks; how many were added.
    A journal only grows: MongoDB's logs must be the file's first ones, else both copies were
    continued apart and neither is overwritten (RecordError)."""
    logs = read_journal(path)
    backend = MongoJournalBackend(db, study_id)
    held, end = backend.read_logs(0), backend.count()
    if len(held) != end:  # a gap: appending after its end would splice
        raise RecordError(
            f"study {study_id}'s journal in MongoDB is damaged: its logs stop at {len(held)} "
            f"but its last document ends at {end}"
        )
    if len(held) > len(logs):
        raise RecordError(
            f"study {study_id} holds {len(held)} logs in MongoDB but only {len(logs)} in "
            f"{path}: it was continued there, so it is not overwritten"
        )
    if as_text(held) != as_text(logs[: len(held)]):
        raise RecordError(
            f"study {study_id} in MongoDB and in {path} differ within their first {len(held)} "
            "logs: each was continued apart, so neither is overwritten"
        )
    if len(held) < len(logs):
        backend.append_logs(logs[len(held) :])
    return len(logs) - len(held)


def as_text(logs: list[dict[str, Any]]) -> str:
    """Logs as canonical JSON: equal logs give equal text (NaN included, key order aside)."""
    return json.dumps(logs, sort_keys=True)


def study_ids(location: StoreLocation) -> list[str]:
    """The studies of a file store (their journal files)."""
    folder = location.path / STUDIES
    return sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []


def param_importances(location: StoreLocation, study_id: str, url: str | None = None) -> dict:
    """Each searched key's importance for the study's value (Optuna's PED-ANOVA evaluator: it
    needs no scikit-learn, unlike fANOVA); {} while too few trials have finished for it."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    study = open_study(location, study_id, url)
    try:
        with warnings.catch_warnings():  # its warnings on few trials: {} says it for the plot
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator()
            )
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials
        return {}
