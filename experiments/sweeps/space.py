"""A search's declaration: the space, the budget, the metric, the sampler and the pruner.

In a sweep file:

    search:
      trials: 20
      metric: val_accuracy           # what the experiment logs each epoch
      direction: maximize            # default: minimize for a name with "loss", else maximize
      sampler: {name: tpe, seed: 0}  # tpe | random | grid (a discrete space only)
      pruner: {name: hyperband, min_resource: 1, reduction_factor: 3}  # none | median | halving
      space:
        lr: {low: 1.0e-4, high: 1.0e-1, log: true}   # float (int bounds: an int; step: a grid)
        optimizer.name: [sgd, adam]                    # categorical

On the command line: `'lr=loguniform(1e-4, 1e-1)'`, `'dropout=uniform(0, 0.5)'`,
`'hidden=int(16, 128, step=16)'`, `'batch=logint(8, 256)'`; a list is categorical; with
`--trials N --metric NAME --direction D --sampler S --sampler-seed N --pruner P
--pruner-option KEY=VALUE`. Every value is checked here, before anything starts: ValueError,
one sentence naming the key. A recorded declaration goes through the same checks (`parse`).
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

DISTRIBUTION = re.compile(r"^\s*(uniform|loguniform|int|logint)\((.*)\)\s*$", re.S)
SEARCH_KEYS = ("trials", "metric", "direction", "sampler", "pruner", "space", "storage")
DIRECTIONS = ("maximize", "minimize")
MAX_TRIALS = 100_000
# Config keys that choose a run to continue rather than describe one: a sweep record that sets
# one could make --resume continue (and append to) a run that belongs to no sweep.
RUN_CHOOSING_KEYS = ("resume",)
SAMPLERS = {  # name -> {setting: (rule, words)}
    "tpe": {"seed": "seed", "n_startup_trials": "count"},
    "random": {"seed": "seed"},
    "grid": {"seed": "seed"},
}
PRUNERS = {
    "none": {},
    "median": {
        "n_startup_trials": "count",
        "n_warmup_steps": "count",
        "interval_steps": "positive",
        "n_min_trials": "positive",
    },
    "halving": {
        "min_resource": "positive_or_auto",
        "reduction_factor": "factor",
        "min_early_stopping_rate": "count",
        "bootstrap_count": "count",
    },
    "hyperband": {
        "min_resource": "positive",
        "max_resource": "positive_or_auto",
        "reduction_factor": "factor",
        "bootstrap_count": "count",
    },
}
RULES = {  # rule -> (check, words)
    "seed": (lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "count": (lambda v: is_int(v) and v >= 0, "an integer, 0 or more"),
    "positive": (lambda v: is_int(v) and v >= 1, "an integer, 1 or more"),
    "factor": (lambda v: is_int(v) and v >= 2, "an integer, 2 or more"),
    "positive_or_auto": (lambda v: v == "auto" or (is_int(v) and v >= 1), "auto or 1 or more"),
}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float (an int too large for a float is not one)."""
    try:
        return (is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:
        return False


# --------------------------------------------------------------------------- one parameter


def check_param(key: str, spec: object) -> dict:
    """One parameter of the space in its recorded form: {"choices": [...]} or {"type": "int" |
    "float", "low", "high", "log", "step"}; ValueError naming the key."""
    name = f"space.{key}"
    if isinstance(spec, dict) and set(spec) == {"choices"}:  # the recorded form of a list
        spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{name} lists no values")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise ValueError(
                f"{name}: a categorical's values must be numbers, text, bools or null (a list "
                "that every trial takes goes under `fixed:` in a sweep file)"
            )
        if len({repr(v) for v in spec}) != len(spec):
            raise ValueError(f"{name} lists a value twice")
        return {"choices": list(spec)}
    if not isinstance(spec, dict) or "low" not in spec:
        raise ValueError(f"{name} must be a list of values or {{low, high, log, step}}")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "type"})
    if unknown:
        raise ValueError(f"{name}: unknown key '{unknown[0]}' (low, high, log, step, type)")
    low, high, log, step = (
        spec.get("low"),
        spec.get("high"),
        spec.get("log", False),
        spec.get("step"),
    )
    if not is_number(low) or not is_number(high) or not low < high:  # type: ignore[operator]
        raise ValueError(f"{name}: low and high must be finite numbers with low < high")
    kind = spec.get("type") or ("int" if is_int(low) and is_int(high) else "float")
    if kind not in ("int", "float"):
        raise ValueError(f"{name}.type must be int or float, not {kind!r}")
    if kind == "int" and not (is_int(low) and is_int(high)):
        raise ValueError(f"{name}: an int parameter needs integer low and high")
    if not isinstance(log, bool):
        raise ValueError(f"{name}.log must be true or false, not {log!r}")
    if log and low <= 0:  # type: ignore[operator]
        raise ValueError(f"{name}: a log scale needs low > 0")
    if step is not None:
        if log:
            raise ValueError(f"{name}: step and log cannot be combined")
        if not is_number(step) or step <= 0 or (kind == "int" and not is_int(step)):
            raise ValueError(
                f"{name}.step must be a positive {'integer' if kind == 'int' else 'number'}"
            )
    out = {"type": kind, "low": low, "high": high, "log": log}
    return out if step is None else {**out, "step": step}


def divides(step, low, high) -> bool:
    """Whether step divides high - low into one or more whole steps: exactly for integers, and
    for floats by their decimal text, as Optuna checks it (False past Decimal's 28 digits)."""
    if is_int(step) and is_int(low) and is_int(high):
        return high - low >= step and (high - low) % step == 0
    span, each = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
    try:
        return span >= each and not span % each
    except InvalidOperation:  # more steps than 28 digits count
        return False


def parse_distribution(key: str, text: str) -> dict | None:
    """`uniform(a, b)`, `loguniform(a, b)`, `int(a, b[, step=s])`, `logint(a, b)` as a
    parameter's spec; None when text is no such call."""
    match = DISTRIBUTION.match(text)
    if not match:
        return None
    name, inside = match.groups()
    try:
        call = ast.parse(f"f({inside})", mode="eval").body
        assert isinstance(call, ast.Call)
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError, AssertionError, MemoryError, RecursionError):
        raise ValueError(f"{key}: '{text}' is not {name}(LOW, HIGH) with numbers") from None
    if len(args) != 2 or set(kwargs) - ({"step"} if name in ("int", "uniform") else set()):
        raise ValueError(
            f"{key}: {name}() takes LOW, HIGH"
            + (" and step=" if name in ("int", "uniform") else "")
        )
    spec: dict[str, Any] = {"low": args[0], "high": args[1], "log": name.startswith("log")}
    spec["type"] = "int" if name.endswith("int") else "float"
    if "step" in kwargs:
        spec["step"] = kwargs["step"]
    return check_param(key, spec)


# --------------------------------------------------------------------------- the search


@dataclass
class Search:
    """A search as declared and recorded (all checked by `check`)."""

    space: dict[str, dict] = field(default_factory=dict)
    trials: int | None = None
    metric: str = "val_accuracy"
    direction: str | None = None
    sampler: dict = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict = field(default_factory=lambda: {"name": "none"})
    storage: str | None = None  # an Optuna database URL (redacted in the record)

    @classmethod
    def from_block(cls, block: object) -> Search:
        """The `search:` block of a sweep file (space keys may nest), checked."""
        if not isinstance(block, dict):
            raise ValueError("'search' must be a mapping with trials, metric, space, ...")
        unknown = sorted(set(block) - set(SEARCH_KEYS))
        if unknown:
            raise ValueError(
                f"search: unknown key '{unknown[0]}' (one of {', '.join(SEARCH_KEYS)})"
            )
        space = block.get("space") or {}
        if not isinstance(space, dict):
            raise ValueError("search.space must be a mapping of config keys")
        search = cls(
            space=flat_space(space),
            trials=block.get("trials"),
            metric=block.get("metric", "val_accuracy"),
            direction=block.get("direction"),
            sampler=named_block(block.get("sampler", "tpe"), "sampler"),
            pruner=named_block(block.get("pruner", "none"), "pruner"),
            storage=block.get("storage"),
        )
        return search

    @classmethod
    def parse(cls, raw: object) -> Search:
        """A recorded search, checked as a declared one (ValueError naming the field)."""
        if not isinstance(raw, dict):
            raise ValueError("search must be a table")
        return cls.from_block(raw).check()

    def with_options(self, **given) -> Search:
        """These settings with the command line's options (None: not given) over them."""
        chosen = replace(self, sampler=dict(self.sampler), pruner=dict(self.pruner))
        for name in ("trials", "metric", "direction", "storage"):
            if given.get(name) is not None:
                setattr(chosen, name, given[name])
        if (
            given.get("sampler") is not None
        ):  # the declared seed stays, so does all of a same name's
            chosen.sampler = {
                **kept(self.sampler, given["sampler"], "seed"),
                "name": given["sampler"],
            }
        if given.get("sampler_seed") is not None:
            chosen.sampler["seed"] = given["sampler_seed"]
        if given.get("pruner") is not None:
            chosen.pruner = {**kept(self.pruner, given["pruner"]), "name": given["pruner"]}
        for item in given.get("pruner_options") or ():
            key, equals, text = item.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"--pruner-option '{item}': give KEY=VALUE, e.g. min_resource=1")
            chosen.pruner[key.strip()] = literal(text)
        return chosen

    def check(self) -> Search:
        """Every value checked: ValueError, one sentence naming the key. Returns self."""
        if not self.space:
            raise ValueError(
                "the search declares no space: give e.g. 'lr=loguniform(1e-4, 1e-1)' or "
                "search.space in the sweep file"
            )
        self.space = {key: check_param(key, spec) for key, spec in self.space.items()}
        chosen = sorted(set(self.space) & set(RUN_CHOOSING_KEYS))
        if chosen:  # a trial describes a new run: a searched `resume` would pick runs to extend
            raise ValueError(
                f"space.{chosen[0]}: {chosen[0]} cannot be searched; continue a search with "
                "reprolab sweep --resume ID"
            )
        if self.trials is None and self.sampler.get("name") == "grid":
            self.trials = grid_size(self.space)
        if not is_int(self.trials) or not 1 <= self.trials <= MAX_TRIALS:  # type: ignore[operator]
            raise ValueError(
                f"search.trials must be an integer from 1 to {MAX_TRIALS}, not {self.trials!r}"
            )
        if not isinstance(self.metric, str) or not re.fullmatch(r"[\w./-]+", self.metric):
            raise ValueError(f"search.metric must be a metric name, not {self.metric!r}")
        self.direction = self.direction or ("minimize" if "loss" in self.metric else "maximize")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"search.direction must be maximize or minimize, not {self.direction!r}"
            )
        check_settings("sampler", self.sampler, SAMPLERS)
        check_settings("pruner", self.pruner, PRUNERS)
        if self.sampler["name"] == "grid":
            size = grid_size(self.space)
            if self.trials > size:  # type: ignore[operator]
                raise ValueError(
                    f"search.trials ({self.trials}) is more than the grid's {size} configs"
                )
        if self.storage is not None and not isinstance(self.storage, str):
            raise ValueError("search.storage must be a database URL")
        return self

    def check_declared(self) -> Search:
        """`check`, and for a new declaration what Optuna would quietly change: a step that does
        not divide its range (it searches a shorter one), Hyperband's max_resource below its
        min_resource. Not asked of a recorded search: an older one ran as Optuna changed it."""
        self.check()
        for key, spec in self.space.items():
            if "step" in spec and not divides(spec["step"], spec["low"], spec["high"]):
                raise ValueError(
                    f"space.{key}: step {spec['step']!r} must divide high - low evenly"
                )
        low, high = self.pruner.get("min_resource", 1), self.pruner.get("max_resource", "auto")
        if self.pruner["name"] == "hyperband" and high != "auto" and high < low:
            raise ValueError(
                f"search.pruner.max_resource ({high}) must be min_resource ({low}) or more"
            )
        return self

    def record(self) -> dict:
        """The search as plain data, for the sweep's record (a storage URL without password)."""
        from observers.credentials import redact_url

        return {
            "trials": self.trials,
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "space": self.space,
            "storage": redact_url(self.storage) if self.storage else None,
        }

    def make_sampler(self):
        """The Optuna sampler declared, seeded so that each trial's proposal depends on the seed,
        the trial's number and the study's history only: a search resumed after k trials asks
        what it would have asked uninterrupted (a sampler rebuilt with its seed would restart
        its random numbers and repeat trial 0's draws)."""
        name, seed = self.sampler["name"], self.sampler.get("seed")
        if name == "grid":  # its order is one shuffle by the seed; trial N takes grid point N
            return grid_sampler(grid_values(self.space), seed)
        return per_trial_sampler(self.sampler_with, seed)

    def sampler_with(self, seed: int | None):
        """The declared random or TPE sampler with this seed."""
        import optuna

        if self.sampler["name"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = self.sampler.get("n_startup_trials", 10)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)

    def make_pruner(self):
        """The Optuna pruner declared, with its settings."""
        import optuna

        settings = {k: v for k, v in self.pruner.items() if k != "name"}
        if self.pruner["name"] == "hyperband" and self.sampler.get("seed") is not None:
            return seeded_hyperband(self.sampler["seed"], settings)
        kind = {
            "none": optuna.pruners.NopPruner,
            "median": optuna.pruners.MedianPruner,
            "halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner,
        }[self.pruner["name"]]
        return kind(**settings)

    def distributions(self) -> dict:
        """Optuna's distribution of every parameter, for study.ask."""
        from optuna.distributions import (
            BaseDistribution,
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        out: dict[str, BaseDistribution] = {}
        for key, spec in self.space.items():
            if "choices" in spec:
                out[key] = CategoricalDistribution(spec["choices"])
            elif spec["type"] == "int":
                out[key] = IntDistribution(
                    spec["low"], spec["high"], log=spec["log"], step=spec.get("step", 1)
                )
            else:
                out[key] = FloatDistribution(
                    spec["low"], spec["high"], log=spec["log"], step=spec.get("step")
                )
        return out


def grid_sampler(values: dict[str, list], seed: int | None):
    """Optuna's grid sampler, minus its study.stop() once the grid is done: that works inside
    study.optimize only, and a search ends by its budget (at most the grid's size) anyway."""
    import optuna

    class GridSearchSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            pass

    return GridSearchSampler(values, seed=seed)


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number`'s proposal: the declared seed and the number mixed by NumPy's
    SeedSequence, so neighbouring trials' streams are unrelated."""
    import numpy

    return int(numpy.random.SeedSequence([seed, number]).generate_state(1)[0])


def per_trial_sampler(build, seed: int | None):
    """An Optuna sampler that builds `build(seed)` afresh for each trial, seeded by the declared
    seed and the trial's number (no seed: unseeded). The samplers built (random, TPE) keep no
    state between trials but their random numbers; their history is the study's."""
    import optuna

    class PerTrialSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.current = build(seed)  # before_trial builds each trial's before it is asked

        def before_trial(self, study, trial) -> None:
            self.current = build(None if seed is None else trial_seed(seed, trial.number))
            self.current.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.current.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.current.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.current.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.current.after_trial(study, trial, state, values)

    return PerTrialSampler()


def seeded_hyperband(seed: int, settings: dict):
    """Optuna's Hyperband pruner with each trial's bracket drawn from the sampler seed and the
    trial's number. Optuna hashes the study's name instead, which is the search id: two searches
    of one declaration would put trials in other brackets, prune others, and (TPE learning from
    which trials were pruned) propose other configs. Overrides Optuna's one method that
    chooses the bracket (`_get_bracket_id`, private; the search tests would fail if it changed)."""
    from types import SimpleNamespace

    import optuna

    named = SimpleNamespace(study_name=f"reprolab-hyperband-seed-{seed}")

    class SeededHyperband(optuna.pruners.HyperbandPruner):
        def _get_bracket_id(self, study, trial) -> int:
            return super()._get_bracket_id(named, trial)  # type: ignore[arg-type]

    return SeededHyperband(**settings)


def flat_space(space: dict, prefix: str = "") -> dict:
    """{dotted.key: spec} of a nested space (a mapping with low is a spec, not a level)."""
    flat: dict = {}
    for key, value in space.items():
        if isinstance(value, dict) and value and not {"low", "choices"} & set(value):
            inner = flat_space(value, f"{prefix}{key}.")
        else:
            inner = {f"{prefix}{key}": value}
        twice = sorted(set(inner) & set(flat))
        if twice:  # nested and dotted: one would silently win
            raise ValueError(f"space.{twice[0]} is given twice; give it once")
        flat.update(inner)
    return flat


def named_block(value: object, what: str) -> dict:
    """`tpe` or `{name: tpe, seed: 0}` as a dict with a name."""
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ValueError(f"search.{what} must be a name or a mapping with name and settings")
    return dict(value)


def kept(block: dict, name: str, *always: str) -> dict:
    """A sampler's or pruner's settings that stay when the command line names `name`: all of
    them for the same name, else only `always` (a sampler's seed)."""
    if block.get("name") == name:
        return dict(block)
    return {key: value for key, value in block.items() if key in always}


def check_settings(what: str, block: dict, known: dict) -> None:
    """A sampler's or pruner's name and settings: ValueError naming the setting."""
    name = block.get("name")
    if name not in known:
        raise ValueError(f"search.{what}.name must be one of {', '.join(known)}, not {name!r}")
    for key, value in block.items():
        if key == "name":
            continue
        if key not in known[name]:
            allowed = ", ".join(known[name]) or "no settings"
            raise ValueError(f"search.{what}.{key}: {name} takes {allowed}")
        accepts, words = RULES[known[name][key]]
        if not accepts(value):
            raise ValueError(f"search.{what}.{key} must be {words}, not {value!r}")


def grid_values(space: dict) -> dict[str, list]:
    """Every value of a discrete space, per key: ValueError naming a float range."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = spec["choices"]
        elif spec["type"] == "int" and not spec["log"]:
            values[key] = list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
        else:
            raise ValueError(
                f"space.{key}: the grid sampler needs a discrete space (lists, or int ranges "
                "without log); use tpe or random"
            )
    return values


def grid_size(space: dict) -> int:
    return math.prod(len(v) for v in grid_values(space).values())


def literal(text: str):
    """A command-line value as a Python literal, else the text."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text.strip()
