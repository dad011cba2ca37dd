"""Choose where a run is recorded when it starts: ./runs by default, a directory, or MongoDB."""

from __future__ import annotations

import uuid

from sacred.commandline_options import cli_option

from observers.credentials import redact, redact_url
from observers.filestore import FileStore
from observers.location import StoreLocation, default_store

# Sacred's own observer flags: when one is given, it alone decides where the run goes.
OBSERVER_FLAGS = ("--unobserved", "--mongo_db", "--sql", "--tiny_db", "--s3", "--gcs")


@cli_option("-R", "--store")
def store_option(args: str, run) -> None:
    """Record the run in STORE: a directory, or a mongodb:// URL (default ./runs or $REPROLAB_MONGO_URL)."""
    hide_credentials(run)
    run.meta_info.setdefault("run_uuid", uuid.uuid4().hex)  # one identity in every store (sync)
    run.observers.extend(observers_for(args))


def hide_credentials(run) -> None:
    """Keep passwords out of the record: the store URL in meta.options, tokens in git remotes."""
    options = run.meta_info.get("options")
    if isinstance(options, dict) and options.get("--store"):
        options["--store"] = redact_url(options["--store"])
    if isinstance(options, dict) and isinstance(options.get("UPDATE"), list):
        options["UPDATE"] = [redact_url(str(update)) for update in options["UPDATE"]]
    for repository in run.experiment_info.get("repositories") or []:
        if repository.get("url"):
            repository["url"] = redact(repository["url"])


def observers_for(location: str) -> list:
    """The observers that record a run in the given store."""
    store = StoreLocation.parse(location)
    if store.is_mongo:
        from observers.mongo import mongo_observers  # pymongo only when asked for

        return mongo_observers(store.secret)
    return [FileStore(store.secret)]


def choose_store(options: dict) -> None:
    """Option hook: route -F to the project's file store and fall back to the default store."""
    if options.get("--file_storage"):
        options["--store"] = options["--file_storage"]
        options["--file_storage"] = None  # so Sacred does not add its own FileStorageObserver
    if options.get("--store") or any(options.get(flag) for flag in OBSERVER_FLAGS):
        return
    options["--store"] = default_store()
