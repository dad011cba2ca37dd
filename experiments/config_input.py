"""Config given on the command line or in a config file, checked before Sacred reads any of it.

Sacred unpickles a `.pickle` config file, decodes object-encoding keys (`py/object`, `json://`)
of a command-line value or a JSON file into objects, loads YAML with aliases expanded without
bound, and fails with an IndexError when a section is replaced beside a named config. Here each
is one sentence naming the word or file, before Sacred sees it; and every count has a bound.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from observers.credentials import check_no_credentials, has_credentials, redact_url
from observers.records import ENCODING_PREFIXES

CONFIG_EXTENSIONS = (".json", ".yaml", ".yml")  # config files are data: never a pickle
MAX_FILE_BYTES = 1 << 20  # a config or sweep file; larger ones are refused unread
MAX_ITEMS = 10_000  # items in one config list (a grid axis, a range) or one mapping
MAX_NODES = 100_000  # values in one config value or file, all levels together
MAX_DEPTH = 64  # nesting of lists and mappings


class ConfigInputError(ValueError):
    """Config input that is refused before Sacred reads it."""


def with_words(argv: list[str]) -> list[str]:
    """The words after `with` on a Sacred command line."""
    return argv[argv.index("with") + 1 :] if "with" in argv else []


def check_command_line(argv: list[str]) -> None:
    """Refuse the command line's config words that Sacred would mishandle, naming the word."""
    for word in with_words(argv):
        if has_credentials(word):
            raise ConfigInputError(
                f"'{redact_url(word)}' holds a URL with a password; a config is recorded, so "
                "give credentials in the environment (REPROLAB_MONGO_URL) instead"
            )
        key, equals, text = word.partition("=")
        if not equals:
            check_config_file_name(word)
            continue
        if len(text) > MAX_FILE_BYTES:
            raise ConfigInputError(f"{key.strip()}: the value is over {MAX_FILE_BYTES} characters")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue  # text: Sacred keeps it as a string
        check_value(key.strip(), value)


def check_config_file_name(word: str) -> None:
    """A word naming a file must name a JSON or YAML file: anything else is refused unopened."""
    extension = os.path.splitext(word)[1].lower()
    if extension in CONFIG_EXTENSIONS:
        return
    if os.path.lexists(word) or extension in (".pickle", ".pkl", ".pck"):
        raise ConfigInputError(
            f"config file {word}: only JSON or YAML config files ({', '.join(CONFIG_EXTENSIONS)})"
            " are read; it was not opened"
        )


def check_value(
    key: str, value, depth: int = 0, count: list[int] | None = None, dotted: bool = False
) -> None:
    """Refuse object-encoding keys (Sacred would decode them into objects) and values beyond
    the bounds on list length, total size and depth, naming the key. `dotted`: keys may be
    dotted config paths (a sweep file's `grid: {optimizer.name: [...]}`)."""
    count = count if count is not None else [0]
    count[0] += 1
    if count[0] > MAX_NODES or depth > MAX_DEPTH:
        raise ConfigInputError(
            f"{key}: the value is too large (more than {MAX_NODES} values or {MAX_DEPTH} levels)"
        )
    if isinstance(value, (list, tuple, set, dict)) and len(value) > MAX_ITEMS:
        raise ConfigInputError(f"{key}: {len(value)} items; at most {MAX_ITEMS} are accepted")
    if isinstance(value, dict):
        for name, item in value.items():
            if isinstance(name, str) and name.startswith(ENCODING_PREFIXES):
                raise ConfigInputError(
                    f"{key}: the key '{name}' is an object encoding of Sacred's JSON codec, "
                    "which would turn it into an object; config values are plain data"
                )
            forbidden = {"="} if dotted else {".", "="}
            if not isinstance(name, str) or not name or name[0] == "$" or forbidden & set(name):
                allowed = "dotted text without '='" if dotted else "text without '.' or '='"
                raise ConfigInputError(
                    f"{key}: the key {name!r} cannot be a config key ({allowed}, "
                    "not empty, not starting with '$')"
                )
            check_value(f"{key}.{name}", item, depth + 1, count, dotted)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            check_value(key, item, depth + 1, count, dotted)
    else:
        check_no_credentials(key, value)


# --------------------------------------------------------------------------- files


def read_data_file(
    path: str | os.PathLike, what: str = "config file", dotted: bool = False
) -> object:
    """A JSON or YAML file's data, read safely: refused unopened when it is no JSON/YAML file
    or too large; duplicate keys, YAML aliases and tags refused; sizes bounded. `dotted`: its
    keys may be dotted config paths (a sweep file)."""
    path = Path(path)
    check_config_file_name(str(path))
    if path.suffix.lower() not in CONFIG_EXTENSIONS:
        raise ConfigInputError(f"{what} {path}: needs one of {', '.join(CONFIG_EXTENSIONS)}")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ConfigInputError(f"{what} {path}: cannot read it ({error.strerror})") from None
    if not path.is_file() or size > MAX_FILE_BYTES:
        raise ConfigInputError(
            f"{what} {path}: not a regular file of at most {MAX_FILE_BYTES} bytes; not read"
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_json(text) if path.suffix.lower() == ".json" else parse_yaml(text)
    except ConfigInputError as error:
        raise ConfigInputError(f"{what} {path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - json's, yaml's and decoding errors
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ConfigInputError(f"{what} {path}: cannot read it ({reason})") from None
    check_value(str(path), data, dotted=dotted)
    return data


def parse_json(text: str) -> object:
    """JSON with duplicate keys refused (json keeps the last silently)."""
    return json.loads(text, object_pairs_hook=_unique_pairs)


def _unique_pairs(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ConfigInputError(f"the key '{key}' appears twice")
        result[key] = value
    return result


def parse_yaml(text: str) -> object:
    """YAML's safe subset without aliases (an alias bomb of a few hundred bytes expands to
    billions of values) and without duplicate keys."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ConfigInputError("YAML aliases (*name) are not accepted; write the values")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=True) for key, _ in node.value]
            repeated = {str(k) for k in keys if keys.count(k) > 1 and _hashable(k)}
            if repeated:
                raise ConfigInputError(f"the key '{sorted(repeated)[0]}' appears twice")
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------- sections


def check_sections(config_updates: dict, sections: set[str]) -> None:
    """A whole section replaced by a value (`data=1`) is one sentence, also beside a named
    config (Sacred fails there with an IndexError)."""
    for key, value in (config_updates or {}).items():
        if key in sections and not isinstance(value, dict):
            raise ConfigInputError(
                f"{key} is a group of settings: set its keys, e.g. {key}.<key>=... "
                f"(see print_config), got {value!r:.80}"
            )
