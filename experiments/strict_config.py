"""Strict config: a key no ingredient declares, a value no record can hold, a named config or
config file that does not exist are each refused in one sentence before a run starts."""

from __future__ import annotations

import difflib
import os

from sacred.config.config_files import HANDLER_BY_EXT
from sacred.config.utils import undogmatize
from sacred.initialize import create_run
from sacred.utils import get_by_dotted_path, iterate_flattened

from experiments.config_input import ConfigInputError, read_data_file
from experiments.sacred_private import convert_value
from ingredients.schema import shown


def closest_key(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant, judged on the whole key and on its last part."""

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        leaf = difflib.SequenceMatcher(None, key.split(".")[-1], candidate.split(".")[-1]).ratio()
        return max(whole, leaf - 0.05)

    best = max(known, key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


def drop_docstrings(config: dict) -> None:
    """Remove the `__doc__` keys Sacred leaves in a config from named configs' docstrings."""
    config.pop("__doc__", None)
    for value in config.values():
        if isinstance(value, dict):
            drop_docstrings(value)


class ConfigurationError(ValueError):
    """A user's config cannot run; raised before anything is recorded."""


def check_updates(argv: list[str]) -> None:
    """Refuse, naming the key, a `with key=value` whose value Sacred cannot turn into a config
    value (complex numbers, bytes and sets are not JSON): Sacred fails there with a traceback."""
    if "with" not in argv:
        return
    for update in argv[argv.index("with") + 1 :]:
        key, sep, value = update.partition("=")
        if not sep:
            continue
        try:
            convert_value(value.strip())
        except Exception:  # Sacred's own conversion: TypeError, ValueError, RecursionError
            raise ConfigurationError(
                f"{key.strip()} cannot be stored in a run's record (use numbers, strings, "
                f"true/false, None, lists and dicts), got {shown(value.strip())}"
            ) from None


def inside_free_form(run, key: str) -> bool:
    """Whether a new key lies inside a config dict that is empty by default (model.kwargs): its
    keys are the user's to choose, and its ingredient's schema checks them. Sacred merges
    updates into the defaults, so a dict whose every key is new was empty by default. (Not
    by building a default run: that would rebind the captured functions to its config.)"""
    added = run.config_modifications.added
    parts = key.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if prefix in added:
            return False
        value = get_by_dotted_path(run.config, prefix)
        if isinstance(value, dict) and all(new_key(added, f"{prefix}.{k}") for k in value):
            return True
    return False


def new_key(added, key: str) -> bool:
    """Whether key was added by an update: Sacred lists a new dict's leaves, not the dict."""
    return key in added or any(other.startswith(key + ".") for other in added)


def check_named_configs(ex, names) -> None:
    """A named config that does not exist, or a config file that is absent or cannot be
    read, is one sentence (Sacred gives a traceback)."""
    available = None
    for name in names:
        if os.path.lexists(name):  # JSON or YAML only, read safely: a pickle is not opened
            try:
                read_data_file(name)
            except ConfigInputError as error:
                raise ConfigurationError(str(error)) from None
            continue
        if os.path.splitext(name)[1] in HANDLER_BY_EXT or os.sep in name:
            raise ConfigurationError(f"config file not found: {name}")
        available = available or [n for n, _ in ex.gather_named_configs()]
        if name not in available:
            raise ConfigurationError(
                f"unknown named config '{name}' (named configs: {', '.join(available)}; a config "
                f"file needs one of the extensions {', '.join(sorted(HANDLER_BY_EXT))})"
            )


def keys_set_by(ex, named_configs, command_name: str) -> set[str]:
    """Config keys that named configs (or config files given to `with`) set."""
    keys: set[str] = set()
    default = None
    for name in named_configs:
        if os.path.isfile(name):
            keys |= {key for key, _ in iterate_flattened(read_data_file(name))}
            continue
        default = default or dict(iterate_flattened(undogmatize(default_config(ex))))
        named = dict(iterate_flattened(create_run(ex, command_name, {}, [name]).config))
        keys |= {key for key, value in named.items() if default.get(key) != value}
    return {key for key in keys if key != "seed" and not key.endswith("__doc__")}


def unknown_key_message(ex, key: str) -> str:
    if key in {ingredient.path for ingredient, _ in ex.traverse_ingredients()}:
        return (
            f"{key} is a group of settings: set its keys, e.g. {key}.<key>=... (see print_config)"
        )
    known = [k for k, _ in iterate_flattened(undogmatize(default_config(ex)))]
    close = closest_key(key, known)
    hint = f"; did you mean '{close}'?" if close else ""
    return f"unknown config key '{key}'{hint} (see print_config for every key)"


def default_config(ex) -> dict:
    """The experiment's config with nothing changed."""
    return create_run(ex, ex.default_command, {}).config
