"""A sweep's declaration and the configs it expands to.

On the command line: `with 'lr=[0.1, 0.01]' 'seed=range(3)' epochs=5 cnn`: a list or range() is
a grid axis, any other value is fixed, a word without '=' is a named config. A list meant as
one value is written inside another list: `'data.shape=[[1, 8, 8]]'`.

In a file (YAML or JSON):

    experiment: experiments/train.py   # optional
    named_configs: [cnn]               # optional
    fixed: {epochs: 5}                 # every config
    grid: {lr: [0.1, 0.01], seed: range(3)}
    random:                            # `samples` draws, each combined with every grid point
      samples: 8
      seed: 0                          # the draws' own seed (not a config's)
      values:
        optimizer.weight_decay: {low: 1.0e-5, high: 1.0e-2, scale: log}
        model.dropout: {low: 0.0, high: 0.5}
        optimizer.name: [sgd, adam]
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from experiments.config_input import MAX_ITEMS, read_data_file
from experiments.sweeps.space import parse_distribution
from observers.records import ENCODING_PREFIXES

DEFAULT_EXPERIMENT = "experiments/train.py"
FILE_KEYS = ("experiment", "named_configs", "fixed", "grid", "random", "search")
RANDOM_KEYS = ("samples", "seed", "values")
RANGE = re.compile(r"^\s*range\(([^()]*)\)\s*$")
SEED_LIMIT = 2**31
MAX_CONFIGS = 100_000  # configs one sweep may declare (its record holds them all)
CONFIG_KEY = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)  # Sacred's dotted keys


@dataclass
class Declaration:
    """What a user declared: grid axes, random draws, fixed values and named configs."""

    experiment: str = DEFAULT_EXPERIMENT
    named_configs: list[str] = field(default_factory=list)
    fixed: dict = field(default_factory=dict)
    grid: dict[str, list] = field(default_factory=dict)
    random: dict | None = None
    search: dict | None = None  # a search's block as written (experiments/sweeps/space.py)
    space: dict[str, dict] = field(default_factory=dict)  # searched keys given as words

    def record(self) -> dict:
        """The declaration as plain data, for the sweep's record."""
        return {
            "experiment": self.experiment,
            "named_configs": self.named_configs,
            "fixed": self.fixed,
            "grid": self.grid,
            "random": self.random,
        }


def parse_value(text: str):
    """A command-line value as Sacred reads it (a Python literal, else text); range() as a list."""
    match = RANGE.match(text)
    if match:
        return range_values(match.group(1), text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def range_values(arguments: str, text: str) -> list[int]:
    try:
        numbers = [int(part) for part in arguments.split(",") if part.strip()]
        span = range(*numbers)
    except (ValueError, TypeError):
        raise ValueError(
            f"'{text}' is not a range of integers, e.g. range(3) or range(0, 10, 2)"
        ) from None
    if not span:
        raise ValueError(f"'{text}' is empty")
    if len(span) > MAX_ITEMS:  # measured before a single value is made
        raise ValueError(f"'{text}' has {len(span)} values; a grid axis holds at most {MAX_ITEMS}")
    return list(span)


def from_words(words: list[str], declaration: Declaration | None = None) -> Declaration:
    """Add `key=value` words (grid axes for lists and ranges, else fixed) and named configs."""
    declaration = declaration or Declaration()
    for word in words:
        key, equals, text = word.partition("=")
        key = key.strip()
        if not equals:
            declaration.named_configs.append(word)
            continue
        if not key:
            raise ValueError(f"'{word}' has no config key before '='")
        spec = parse_distribution(key, text)  # a searched key: 'lr=loguniform(1e-4, 1e-1)'
        if spec is not None:
            declaration.space[key] = spec
            declaration.fixed.pop(key, None)
            declaration.grid.pop(key, None)
            continue
        value = parse_value(text)
        declaration.space.pop(key, None)
        if isinstance(value, (list, tuple)):
            declaration.grid[key] = axis(key, list(value))
            declaration.fixed.pop(key, None)
        else:
            declaration.fixed[key] = value
            declaration.grid.pop(key, None)
    return declaration


def axis(key: str, values: list) -> list:
    if not values:
        raise ValueError(f"grid key '{key}' has no values")
    if len(values) > MAX_ITEMS:
        raise ValueError(f"grid key '{key}' has {len(values)} values; at most {MAX_ITEMS}")
    return values


def check_count(declaration: Declaration) -> None:
    """Refuse a declaration of more than MAX_CONFIGS configs before any is made or checked."""
    count = math.prod(len(values) for values in declaration.grid.values())
    count *= (declaration.random or {}).get("samples", 1)
    if count > MAX_CONFIGS:  # before any is built: a product of axes grows past memory
        raise ValueError(
            f"the sweep declares {count:,} configs, more than the {MAX_CONFIGS:,} one sweep may "
            "hold (grid points times random samples); split it into several sweeps"
        )


def from_file(path: str | Path) -> Declaration:
    """Read a sweep file (.yaml, .yml or .json); a wrong shape is one error naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} not found")
    data = read_data_file(path, "sweep file", dotted=True)  # bounded, no aliases or duplicates
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {path} must hold a mapping with {', '.join(FILE_KEYS)}")
    for key in data:
        if key not in FILE_KEYS:
            raise ValueError(
                f"sweep file {path}: unknown key '{key}' (one of {', '.join(FILE_KEYS)})"
            )
    try:
        return Declaration(
            experiment=str(data.get("experiment") or DEFAULT_EXPERIMENT),
            named_configs=[str(name) for name in data.get("named_configs") or []],
            fixed=flatten(data.get("fixed") or {}, "fixed"),
            grid={
                key: grid_values(key, values)
                for key, values in flatten(data.get("grid") or {}, "grid").items()
            },
            random=random_block(data.get("random")),
            search=search_block(data.get("search")),
        )
    except ValueError as error:
        raise ValueError(f"sweep file {path}: {error}") from None


def flatten(block, name: str, prefix: str = "", leaf=lambda value: False) -> dict:
    """{dotted.key: value} of a nested mapping; `leaf` says which mappings are values."""
    if not isinstance(block, dict):
        raise ValueError(f"'{name}' must be a mapping of config keys")
    flat = {}
    for key, value in block.items():
        if isinstance(value, dict) and value and not leaf(value):
            flat.update(flatten(value, name, f"{prefix}{key}.", leaf))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def grid_values(key: str, values) -> list:
    if isinstance(values, str) and RANGE.match(values):
        return parse_value(values)
    if not isinstance(values, list):
        raise ValueError(
            f"grid key '{key}' must list its values (or be range(...)), not {values!r}"
        )
    return axis(key, values)


def search_block(block) -> dict | None:
    """The search block as written; checked with the command line's options (space.py)."""
    if block is not None and not isinstance(block, dict):
        raise ValueError("'search' must be a mapping with trials, metric, space, ...")
    return block


def is_range_spec(value) -> bool:
    return isinstance(value, dict) and "low" in value


def random_block(block) -> dict | None:
    """The random block checked: samples >= 1, an integer seed, each value a list or a range."""
    if block is None:
        return None
    if not isinstance(block, dict):
        raise ValueError("'random' must be a mapping with samples, seed and values")
    for key in block:
        if key not in RANDOM_KEYS:
            raise ValueError(f"random: unknown key '{key}' (one of {', '.join(RANDOM_KEYS)})")
    samples, seed = block.get("samples"), block.get("seed", 0)
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_CONFIGS:
        raise ValueError(
            f"random.samples must be an integer in [1, {MAX_CONFIGS}], not {samples!r}"
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"random.seed must be an integer, not {seed!r}")
    values = flatten(block.get("values") or {}, "random.values", leaf=is_range_spec)
    if not values:
        raise ValueError("random.values names no config key to draw")
    for key, spec in values.items():
        check_spec(key, spec)
    return {"samples": samples, "seed": seed, "values": values}


def check_spec(key: str, spec) -> None:
    if isinstance(spec, list):
        axis(f"random.values.{key}", spec)
        return
    if not is_range_spec(spec):
        raise ValueError(
            f"random.values.{key} must be a list or {{low, high, scale}}, not {spec!r}"
        )
    unknown = set(spec) - {"low", "high", "scale"}
    if unknown:
        raise ValueError(
            f"random.values.{key}: unknown key '{sorted(unknown)[0]}' (low, high, scale)"
        )
    low, high, scale = spec.get("low"), spec.get("high"), spec.get("scale", "linear")
    if (
        not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        or low >= high
    ):
        raise ValueError(f"random.values.{key}: low and high must be numbers with low < high")
    if scale not in ("linear", "log"):
        raise ValueError(f"random.values.{key}.scale must be linear or log, not {scale!r}")
    if scale == "log" and low <= 0:
        raise ValueError(f"random.values.{key}: a log scale needs low > 0")


def draw(block: dict | None) -> list[dict]:
    """`samples` configs drawn with the block's own seed: the same declaration draws the same."""
    if block is None:
        return [{}]
    rng = random.Random(block["seed"])
    return [
        {key: draw_one(rng, spec) for key, spec in block["values"].items()}
        for _ in range(block["samples"])
    ]


def draw_one(rng: random.Random, spec):
    if isinstance(spec, list):
        return rng.choice(spec)
    low, high = spec["low"], spec["high"]
    if spec.get("scale", "linear") == "log":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if isinstance(low, int) and isinstance(high, int):  # integer bounds draw integers
        return min(max(round(value), low), high)
    return value


def expand(declaration: Declaration, seed: int) -> tuple[list[dict], int]:
    """Every config (flat {dotted.key: value}) of the grid times the random draws, fixed values
    under them, duplicates dropped (first kept); and how many were dropped. A config that sets
    no seed gets `seed`: the same for all, so configs differ only in what was declared."""
    if "resume" in declaration.fixed or "resume" in declaration.grid:
        raise ValueError(
            "resume cannot be swept; continue a sweep with reprolab sweep --resume SWEEP"
        )
    check_count(declaration)
    keys = list(declaration.grid)
    samples = draw(declaration.random)
    configs, seen, dropped = [], set(), 0
    for combo in itertools.product(*declaration.grid.values()):
        for sample in samples:
            config = {**declaration.fixed, **dict(zip(keys, combo)), **sample}
            config.setdefault("seed", seed)
            identity = json.dumps(config, sort_keys=True, default=repr)
            if identity in seen:
                dropped += 1
                continue
            seen.add(identity)
            configs.append(config)
    return configs, dropped


def varied_keys(configs: list[dict]) -> list[str]:
    """Keys whose value is not the same in every config, in declaration order."""
    keys = list(dict.fromkeys(key for config in configs for key in config))
    return [
        key
        for key in keys
        if len({json.dumps(c.get(key), sort_keys=True, default=repr) for c in configs}) > 1
    ]


def config_words(config: dict) -> list[str]:
    """`key=value` words that Sacred parses back to exactly these values. Sacred decodes a value's
    object-encoding keys into objects (jsonpickle's restore), so only dotted-name keys and plain
    values (JSON's types, no such keys) are passed on: ValueError names the key otherwise."""
    for key, value in config.items():
        if not isinstance(key, str) or not CONFIG_KEY.fullmatch(key):
            raise ValueError(f"config key {key!r} is not a dotted name like optimizer.lr")
        if not is_plain(value):
            raise ValueError(
                f"config key {key}'s value is not plain data (numbers, text, lists "
                "and tables without object-encoding keys), so it is not passed on"
            )
    return [f"{key}={value!r}" for key, value in config.items()]


def is_plain(value) -> bool:
    """Whether value is JSON's kind of data with no object-encoding key at any depth."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and not key.startswith(ENCODING_PREFIXES) and is_plain(item)
            for key, item in value.items()
        )
    return False


def inline_config_files(declaration: Declaration) -> Declaration:
    """A config file among the named configs (the user's own, on their command line) becomes its
    values, under the declared fixed values: a sweep records only data, never a file for a later
    --resume to load. Its values must be plain data."""
    names, values = [], {}
    for name in declaration.named_configs:
        if not Path(name).is_file():
            names.append(name)
            continue
        loaded = read_data_file(name)  # JSON or YAML only: a pickle is refused unopened
        if not isinstance(loaded, dict) or not is_plain(loaded):
            raise ValueError(
                f"config file {name} holds values that are not plain data, so a "
                "sweep cannot record them"
            )
        values.update(flatten(loaded, name))
    declaration.named_configs = names
    declaration.fixed = {**values, **declaration.fixed}
    return declaration


def describe(config: dict, keys: list[str] | None = None) -> str:
    """'lr=0.1 seed=0': the config's values of keys (default all), for messages and listings."""
    return " ".join(
        f"{key}={config[key]!r}" for key in (keys if keys is not None else config) if key in config
    )
