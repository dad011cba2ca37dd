"""Keeping secrets out of records and messages: URL passwords, git tokens, secret parameters.

Everything reprolab prints or records about a store location goes through `redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

# scheme://user:password@ (password greedy up to the last '@' before a space: it may hold '/')
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@:]*)(?::(?P<password>\S*))?@"
)
_SECRET_PARAMETER = re.compile(r"(?i)\b([\w]*(?:password|secret|token)[\w]*=)[^&\s]+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every URL's password (and each given secret) replaced by ***.

    A git remote like https://TOKEN@host carries its token as the user name, so a user name
    alone is hidden too, except in mongodb:// URLs where it is no secret."""

    def hide(match: re.Match) -> str:
        scheme, user, password = match["scheme"], match["user"], match["password"]
        if password is not None:
            return f"{scheme}{user}:***@"
        return match[0] if scheme.lower().startswith("mongodb") else f"{scheme}***@"

    text = _SECRET_PARAMETER.sub(r"\1***", _USERINFO.sub(hide, str(text)))
    for secret in secrets:
        if secret and len(secret) > 2:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> list[str]:
    """The password of a URL as written and percent-decoded, for scrubbing messages: whatever
    lies between the first ':' after the scheme and the last '@', even a space or a '/'."""
    scheme, found, rest = str(url).partition("://")
    userinfo = rest.rpartition("@")[0] if found else ""
    password = userinfo.partition(":")[2]
    return [password, unquote(password)] if password else []


def redact_url(url: str) -> str:
    """A URL as it may be shown: its password hidden however it is written."""
    return redact(url, url_secrets(url))


def describe_error(error: BaseException, url: str) -> str:
    """A pymongo error as one short line without credentials."""
    text = re.split(r", Timeout:| \(configured timeouts", str(error))[0].split("\n")[0].strip()
    text = text or type(error).__name__
    return redact(text[:240], url_secrets(url))
