"""Where runs live: a store folder or a MongoDB URL, parsed once.

Every reader, writer and hand-over to a child process takes a `StoreLocation`. Its text form
(`str()`, what messages and records show) hides a URL's password; only `secret` holds the URL
as given, for connecting and for a child's environment (never its argv, which `ps` shows).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from observers.credentials import has_credentials, redact_url

DEFAULT_STORE = "runs"
MONGO_URL_VARIABLE = "REPROLAB_MONGO_URL"
MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")


def is_mongo_url(text: str) -> bool:
    """Whether a store named by text is a MongoDB database rather than a folder."""
    return str(text).startswith(MONGO_SCHEMES)


def check_location(location: str) -> None:
    """Refuse a store location with credentials that is no mongodb:// URL (`MONGODB://`,
    `mongodb:/u:p@h`): taken for a folder, its password would become a folder name."""
    text = str(location)
    if has_credentials(text) and not is_mongo_url(text):
        raise ValueError(
            f"store {redact_url(text)} looks like a URL with a password but is not a "
            "mongodb:// URL (lower-case scheme, two slashes); it was not used as a folder"
        )


def default_store() -> str:
    """Where runs go and are read from when no store is named: $REPROLAB_MONGO_URL, else ./runs."""
    return os.environ.get(MONGO_URL_VARIABLE) or DEFAULT_STORE


@dataclass(frozen=True)
class StoreLocation:
    """A run store: a folder (kept as given; `path` resolves it) or a MongoDB URL."""

    secret: str  # as given: a URL with its password; never printed or recorded

    @classmethod
    def parse(cls, given: str | os.PathLike | StoreLocation | None = None) -> StoreLocation:
        """The store named by a command-line value, else the default store."""
        if isinstance(given, StoreLocation):
            return given
        text = str(given) if given else default_store()
        check_location(text)  # a URL with a password that is no mongodb:// URL is never a folder
        return cls(text)

    @property
    def is_mongo(self) -> bool:
        return is_mongo_url(self.secret)

    @property
    def path(self) -> Path:
        """A folder store's absolute path."""
        if self.is_mongo:
            raise ValueError(f"{self} is a MongoDB URL, not a folder")
        return Path(self.secret).resolve()

    @property
    def is_default(self) -> bool:
        return self.secret == default_store()

    def resolved(self) -> StoreLocation:
        """The same store, a folder named by its absolute path (a child may run elsewhere)."""
        return self if self.is_mongo else StoreLocation(str(self.path))

    def child_argv(self) -> list[str]:
        """How a child experiment is told the store on its command line: `-R FOLDER`; nothing
        for MongoDB, which travels in the environment (child_env) so `ps` never shows it."""
        return [] if self.is_mongo else ["-R", str(self.path)]

    def child_env(self) -> dict[str, str]:
        return {MONGO_URL_VARIABLE: self.secret} if self.is_mongo else {}

    def option_text(self) -> str:
        """' --store LOCATION' for a printed command: '' for the default store, a placeholder
        for MongoDB (the printable URL hides the password, so it would not connect)."""
        if self.is_default:
            return ""
        if self.is_mongo:
            return " --store <your MongoDB URL>"
        return f" --store {shlex.quote(self.secret)}"

    def __str__(self) -> str:
        return redact_url(self.secret) if self.is_mongo else self.secret

    def __repr__(self) -> str:
        return f"StoreLocation({str(self)!r})"
