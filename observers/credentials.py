"""Keeping secrets out of records and messages: URL passwords, git tokens, secret parameters.

Everything reprolab prints or records about a store location goes through `redact`. Anything
that looks like a URL with credentials is a secret whatever its case (`MONGODB://`), its slashes
(`mongodb:/u:p@h`, `mongodb:u:p@h`) or the characters of its password (a space, '@', '/',
%-escapes, unicode): the password runs from the ':' after the user name to the last '@' of the
line, so a password is never cut short (a line with a later '@' is hidden a little too much).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

# A scheme (any case) and its ':' and slashes (none, one, two or more), not inside a longer word.
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*):(?P<slashes>/*)")
_USER = re.compile(r"[^\s/@:]*")
_SECRET_PARAMETER = re.compile(r"(?i)\b([\w]*(?:password|secret|token)[\w]*=)[^&\s]+")


def _credentials(line: str, start: int = 0) -> list[tuple[int, int, int, bool]]:
    """(userinfo start, password start or -1, end at the '@', is mongodb) of each URL in line."""
    found, position = [], start
    while (match := _SCHEME.search(line, position)) is not None:
        user = _USER.match(line, match.end())
        at = line.rfind("@", user.end())
        mongo = match["scheme"].lower().startswith("mongodb")
        if user.end() < len(line) and line[user.end()] == ":" and at > user.end():
            found.append((match.end(), user.end() + 1, at, mongo))
            position = at + 1
        elif user.end() < len(line) and line[user.end()] == "@" and match["slashes"]:
            found.append((match.end(), -1, user.end(), mongo))  # https://TOKEN@host
            position = user.end() + 1
        else:
            position = match.end()
    return found


def _redact_line(line: str) -> str:
    parts, last = [], 0
    for begin, password, at, mongo in _credentials(line):
        if password >= 0:
            parts.append(line[last:password] + "***")
        else:  # a user name alone: a git token, but no secret in a MongoDB URL
            parts.append(line[last:at] if mongo else line[last:begin] + "***")
        last = at
    return "".join(parts) + line[last:]


def has_credentials(text: str) -> bool:
    """Whether the text holds a URL with a password (in any case, with any slashes)."""
    return any(p >= 0 for line in str(text).splitlines() for _, p, _, _ in _credentials(line))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every URL's password (and each given secret) replaced by ***.

    A git remote like https://TOKEN@host carries its token as the user name, so a user name
    alone is hidden too, except in mongodb:// URLs where it is no secret."""
    text = "".join(_redact_line(line) for line in str(text).splitlines(keepends=True))
    text = _SECRET_PARAMETER.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) > 2:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> list[str]:
    """The passwords of a URL as written, percent-decoded, percent-encoded and escaped (as
    Python's repr or ascii() writes them), for scrubbing messages that quote them."""
    secrets = []
    for line in str(url).splitlines():
        for _, password, at, _ in _credentials(line):
            if password >= 0 and at > password:
                raw = line[password:at]
                for form in (raw, unquote(raw), quote(raw, safe=""), quote(unquote(raw), safe="")):
                    secrets += [form, ascii(form)[1:-1], repr(form)[1:-1]]
    return sorted({s for s in secrets if s}, key=len, reverse=True)  # longest first


def redact_url(url: str) -> str:
    """A URL as it may be shown: its password hidden however it is written."""
    return redact(url, url_secrets(url))


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line as it may be shown or recorded: every argument's passwords hidden."""
    return [redact_url(str(part)) for part in argv]


def check_no_credentials(key: str, value) -> None:
    """Refuse a config value that holds a URL with a password: the config is recorded."""
    if isinstance(value, dict):
        for name, item in value.items():
            check_no_credentials(f"{key}.{name}", item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_no_credentials(key, item)
    elif isinstance(value, str) and has_credentials(value):
        raise ValueError(
            f"{key} holds a URL with a password ({redact_url(value)}); a config is recorded, so "
            "give credentials in the environment (REPROLAB_MONGO_URL) instead"
        )


def describe_error(error: BaseException, url: str) -> str:
    """A pymongo error as one short line without credentials."""
    text = re.split(r", Timeout:| \(configured timeouts", str(error))[0].split("\n")[0].strip()
    text = text or type(error).__name__
    return redact(redact(text, url_secrets(url))[:240])
