"""The config rule language: what each key of an ingredient's config accepts (key -> Rule),
checked by `check_section` before a run starts, so a wrong value is one sentence naming the key."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

# Sacred commands that only show the config: they must work even when the config cannot run.
INSPECTION_COMMANDS = frozenset(
    {"print_config", "print_named_configs", "print_dependencies", "save_config"}
)
# Integers a record can hold in every store (MongoDB's BSON stops at 64 bits).
INT64 = 2**63


def is_int(value) -> bool:
    """An integer (numpy's too), but not a bool (True would pass as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (numpy's too), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def shown(value, limit: int = 80) -> str:
    """A value's repr for an error message: one line, long ones cut in the middle."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4 :]}"


class Rule(NamedTuple):
    """What one config key accepts: a test and the words that describe it to a user."""

    accepts: Callable[[Any], bool]
    expected: str


def nullable(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), rule.expected + " or None")


def integer(low: int | None = None, high: int = INT64, words: str | None = None) -> Rule:
    """An integer in [low, high); every integer a record can hold by default."""
    if words is None:
        words = "an integer" + (
            f" in [{low}, {high})" if high != INT64 else f" >= {low}" if low is not None else ""
        )
    return Rule(lambda v: is_int(v) and (low is None or v >= low) and v < high, words)


def number(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    words: str | None = None,
) -> Rule:
    """A finite number between low and high, each bound closed unless told open."""

    def inside(v) -> bool:
        return (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high)
        )

    if words is None and low is not None and high is not None:
        words = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif words is None:
        words = "a number" + (f" {'>' if low_open else '>='} {low}" if low is not None else "")
    return Rule(lambda v: is_number(v) and inside(v), words)


POSITIVE_INT = integer(1, words="a positive integer")
NON_NEGATIVE_INT = integer(0, words="a non-negative integer")
POSITIVE_NUMBER = number(0, low_open=True, words="a positive number")
NON_NEGATIVE_NUMBER = number(0, words="a non-negative number")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and bool(v) and "\0" not in v, "a non-empty string")


def choice(*options: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in options, "one of " + ", ".join(options))


def list_of(item: Rule, min_len: int = 0, length: int | None = None) -> Rule:
    size = f"of {length} " if length is not None else ""
    words = f"a {'non-empty ' if min_len else ''}list {size}whose items are each {item.expected}"

    def accepts(v) -> bool:
        return (
            isinstance(v, (list, tuple))
            and len(v) >= min_len
            and (length is None or len(v) == length)
            and all(item.accepts(x) for x in v)
        )

    return Rule(accepts, words)


def mapping(keys: dict[str, Rule] | None = None, required: tuple[str, ...] = ()) -> Rule:
    """A dict with string keys; with `keys`, only those keys, each checked by its rule."""
    if keys is None:
        return Rule(
            lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
            "a dict with string keys",
        )

    def accepts(v) -> bool:
        return (
            isinstance(v, dict)
            and set(required) <= set(v)
            and set(v) <= set(keys)
            and all(keys[k].accepts(x) for k, x in v.items())
        )

    fields = ", ".join(f"'{k}' ({rule.expected})" for k, rule in keys.items())
    return Rule(accepts, f"a dict with {fields}; {', '.join(required)} required")


def unstorable(value, key: str) -> tuple[str, Any] | None:
    """The key and value of the first thing inside `value` that a record cannot hold as plain
    JSON (complex, bytes, sets, objects, integers beyond 64 bits, dicts keyed by anything but
    a non-empty string), or None when all can."""
    if value is None or isinstance(value, (bool, str, float)):
        return None
    if isinstance(value, numbers.Integral):
        return None if -INT64 <= int(value) < INT64 else (key, value)
    if isinstance(value, (list, tuple)):
        found = (unstorable(x, f"{key}[{i}]") for i, x in enumerate(value))
        return next((bad for bad in found if bad), None)
    if isinstance(value, dict):
        if not all(isinstance(name, str) and name for name in value):  # Sacred needs names
            return key, value
        found = (unstorable(x, f"{key}.{name}") for name, x in value.items())
        return next((bad for bad in found if bad), None)
    return key, value


def check_storable(key: str, value) -> None:
    """Refuse, naming the key, a value that cannot be recorded as plain JSON."""
    bad = unstorable(value, key)
    if bad is not None:
        where = bad[0] if bad[0].isprintable() else bad[0].encode("unicode_escape").decode()
        # (a key may hold a newline: the sentence stays one line)
        raise ValueError(
            f"{where} cannot be stored in a run's record (use numbers, strings, "
            f"true/false, None, lists and dicts), got {shown(bad[1])}"
        )


def check_section(name: str | None, config: dict, schema: dict[str, Rule]) -> dict:
    """Check every key of one config section (an ingredient's, or the experiment's top level
    with `name` None) against its schema; the first mistake is one ValueError naming the key.
    Returns the section."""
    section = config if name is None else config.get(name)
    if not isinstance(section, dict):
        raise ValueError(
            f"{name} is a group of settings (set {name}.<key>=..., see print_config), "
            f"got {shown(section)}"
        )
    if name is not None:  # the experiment's top level holds the ingredients' sections too
        for key, value in section.items():
            check_storable(f"{name}.{key}", value)
    check_values(name, {key: section.get(key) for key in schema}, schema)
    return section


def check_values(prefix: str | None, values: dict, schema: dict[str, Rule]) -> None:
    """Check the given values of a section against its schema (keys it lacks are not checked)."""
    for key, value in values.items():
        name = key if prefix is None else f"{prefix}.{key}"
        check_storable(name, value)
        rule = schema.get(key)
        if rule is not None and not rule.accepts(value):
            raise ValueError(f"{name} must be {rule.expected}, got {shown(value)}")
