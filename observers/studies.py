"""Where a search's Optuna study lives: in the run store, beside the sweep's record, no server.

A file store keeps each study as an Optuna journal file, `<store>/.reprolab/studies/<id>.log`,
locked by creating a lock file (JournalFileOpenLock: safe for several processes, on one machine
or on a shared file system). MongoDB keeps it as a journal in the `studies` collection of the
same database (MongoJournalBackend below). Any other Optuna storage is named by URL
(sqlite:///..., postgresql://...). A journal is JSON data: replaying it runs no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.storages.journal import BaseJournalBackend

from observers.location import StoreLocation
from observers.records import RecordError

STUDIES = Path(".reprolab") / "studies"  # inside a file store, beside .reprolab/sweeps
STUDIES_COLLECTION = "studies"
STORAGE_VARIABLE = "REPROLAB_STUDY_STORAGE"  # a study storage URL handed to a trial's process
URL_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")


def journal_path(location: StoreLocation, study_id: str) -> Path:
    """A file store's journal file of one study."""
    return location.path / STUDIES / f"{study_id}.log"


def study_storage(location: StoreLocation, study_id: str, url: str | None = None) -> BaseStorage:
    """The Optuna storage of a study: `url` when given, else the run store's own journal."""
    import optuna

    if url:
        check_storage_url(url)
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalStorage

    if location.is_mongo:
        from observers.mongo import reach

        return JournalStorage(MongoJournalBackend(reach(location.secret), study_id))
    return JournalStorage(file_backend(journal_path(location, study_id)))


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
    `_id` and tries again after it, so every reader sees the logs in one order."""

    def __init__(self, db, journal: str, collection: str = STUDIES_COLLECTION):
        self.collection, self.journal = db[collection], journal

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """Every log numbered log_number_from or later, in order."""
        holding = self.collection.find_one(
            {"journal": self.journal, "start": {"$lte": log_number_from}}, sort=[("start", -1)]
        )
        first = holding["start"] if holding else log_number_from
        logs: list[dict[str, Any]] = []
        for doc in self.collection.find(
            {"journal": self.journal, "start": {"$gte": first}}, sort=[("start", 1)]
        ):
            if doc["start"] != first + len(logs):
                break  # never past a gap: none is written, but a torn copy stops here
            logs.extend(doc["logs"])
        return logs[log_number_from - first :]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Add logs after the last ones, as one document (a racing writer retries after it)."""
        from pymongo.errors import DuplicateKeyError

        while True:
            last = self.collection.find_one({"journal": self.journal}, sort=[("start", -1)])
            start = last["start"] + len(last["logs"]) if last else 0
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
                continue  # another writer took this number first: append after it

    def count(self) -> int:
        """How many logs the journal holds."""
        last = self.collection.find_one({"journal": self.journal}, sort=[("start", -1)])
        return last["start"] + len(last["logs"]) if last else 0


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every log of a file journal, in order (for sync)."""
    return list(file_backend(path).read_logs(0))


def sync_journal(path: Path, db, study_id: str) -> int:
    """Append the logs of a file store's study journal that MongoDB lacks; how many were added.
    A journal only grows, so MongoDB holding n logs means it holds the file's first n."""
    logs = read_journal(path)
    backend = MongoJournalBackend(db, study_id)
    held = backend.count()
    if held > len(logs):
        raise RecordError(
            f"study {study_id} holds {held} logs in MongoDB but only {len(logs)} in {path}: "
            "it was continued there, so it is not overwritten"
        )
    if held < len(logs):
        backend.append_logs(logs[held:])
    return len(logs) - held


def study_ids(location: StoreLocation) -> list[str]:
    """The studies of a file store (their journal files)."""
    folder = location.path / STUDIES
    return sorted(p.stem for p in folder.glob("*.log")) if folder.is_dir() else []


def param_importances(location: StoreLocation, study_id: str, url: str | None = None) -> dict:
    """Each searched key's importance for the study's value (Optuna's PED-ANOVA evaluator: it
    needs no scikit-learn, unlike fANOVA); {} while too few trials have finished for it."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_id, storage=study_storage(location, study_id, url))
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()
        )
    except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials
        return {}
