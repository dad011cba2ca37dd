"""Which sweep a run belongs to: `--sweep ID:INDEX`, recorded in run.json's meta as `sweep`.

The sweep runner passes it to every run it starts (and to a run it resumes), so reading runs
back can group them by sweep from run.json alone. A plain run or a rerun carries none.

`label_run` turns that membership (and a study's trial, and torchrun's process count) into the
run's notes and tags: meta.comment ("sweep 20261204-ab12 config 3: lr=0.01 seed=1") and
meta.tags (["sweep:20261204-ab12"]), which Omniboard shows in its run list with no set-up (the
MongoDB observer copies the tags to the `omniboard` field it reads). A user's `--comment` wins.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sacred.commandline_options import cli_option
from sacred.utils import iterate_flattened

# True while `reprolab sweep` checks configs that will run on other machines (Slurm nodes, printed
# commands): this machine's devices say nothing about theirs, so device availability is not checked.
_checking_elsewhere = contextvars.ContextVar("checking_elsewhere", default=False)
MEMBER = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<index>\d+)$")


def parse_membership(text: str) -> dict:
    """{"id", "index"} of 'ID:INDEX', or a ValueError naming the option."""
    match = MEMBER.match(text.strip())
    if not match:
        raise ValueError(f"--sweep takes SWEEP_ID:INDEX, not '{text}'")
    return {"id": match["id"], "index": int(match["index"])}


@cli_option("-W", "--sweep")
def sweep_option(args: str, run) -> None:
    """Record this run as config INDEX of sweep SWEEP_ID (given as SWEEP_ID:INDEX; set by `reprolab sweep`)."""
    run.meta_info["sweep"] = parse_membership(args)


def check_membership(run) -> None:
    """A run is config INDEX of a sweep only if its store records that sweep, the index is one
    of its configs, and the run has that config's values and named configs (an edited printed
    command would be reported as the recorded config): ValueError naming what differs. Called
    on the run as built (a continued run's values are its checkpoint's). A search's trial is
    checked against its study instead (experiments/trial.py)."""
    from experiments.sweeps.record import SweepBook
    from observers.location import StoreLocation

    member = run.meta_info.get("sweep")
    options = run.meta_info.get("options") or {}
    if member is None or options.get("--unobserved"):
        return  # nothing is recorded, so nothing claims membership
    record = SweepBook(StoreLocation.parse(options.get("--store"))).load(member["id"])
    if "search" in record.extra:
        return
    named = f"--sweep {member['id']}:{member['index']}"
    if member["index"] >= len(record.configs):
        raise ValueError(f"{named}: the sweep has {len(record.configs)} configs")
    config = record.configs[member["index"]]
    if run.config.get("resume") is None:  # a continued run takes its words from its checkpoint
        check_words(named, options.get("UPDATE") or [], record.named_configs, config)
    for key, value in iterate_flattened(config):
        found = dotted(run.config, key)
        if found != value:
            raise ValueError(f"{named}: the sweep's config has {key}={value!r}, this run {found!r}")


def check_words(named: str, words: list[str], named_configs: list[str], config: dict) -> None:
    """The run's command line names the sweep's named configs and no key its config lacks."""
    given = [word for word in words if "=" not in word]
    if given != named_configs:
        raise ValueError(f"{named}: the sweep's named configs are {named_configs}, not {given}")
    for word in words:  # the sweep passes each key as it was declared
        key = word.partition("=")[0].strip()
        if "=" in word and key not in config:
            raise ValueError(f"{named}: {key} is not one of the sweep's config values")


def dotted(config: dict, key: str) -> object:
    """The value at a dotted key of a config (None where it has none)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


COMMENT_LIMIT = 200  # characters of the run's words in its generated comment


def label_run(meta: dict) -> None:
    """Set meta's comment (unless the user gave one) and tags from its sweep or search membership
    and its torchrun process count; a run that is none of these is left as it is."""
    parts, tags = [], []
    words = " ".join(run_words(meta))
    if len(words) > COMMENT_LIMIT:
        words = words[: COMMENT_LIMIT - 3] + "..."
    member = meta.get("sweep")
    if isinstance(member, dict) and member.get("id") is not None:
        # a search's trial carries its trial number beside the index (experiments/trial.py)
        kind, position = ("search", "trial") if "trial" in member else ("sweep", "config")
        number = member.get("trial", member.get("index"))
        parts.append(f"{kind} {member['id']} {position} {number}" + (f": {words}" if words else ""))
        tags.append(f"{kind}:{member['id']}")
    world = (meta.get("distributed") or {}).get("world_size")
    if isinstance(world, int):
        nodes = (meta.get("distributed") or {}).get("nodes") or 1
        parts.append(
            f"torchrun, {world} process{'es' if world != 1 else ''}"
            + (f" on {nodes} nodes" if nodes > 1 else "")
        )
        tags.append(f"torchrun:{world}")
    if parts and not meta.get("comment"):
        meta["comment"] = "; ".join(parts)
    if tags:
        meta["tags"] = list(dict.fromkeys([*(meta.get("tags") or []), *tags]))


def run_words(meta: dict) -> list[str]:
    """The run's `with` words as given on its command line; for a run started in Python, its
    config updates as key=value."""
    given = (meta.get("options") or {}).get("UPDATE")
    if given:
        return [str(word) for word in given]

    return [
        f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
        for key, value in iterate_flattened(meta.get("config_updates") or {})
    ]


def checking_for_elsewhere() -> bool:
    """Whether a config is being checked here for a run on another machine."""
    return _checking_elsewhere.get()


@contextmanager
def checked_for_elsewhere(elsewhere: bool) -> Iterator[None]:
    """While the block checks configs, say whether their runs start on other machines."""
    token = _checking_elsewhere.set(elsewhere)
    try:
        yield
    finally:
        _checking_elsewhere.reset(token)
