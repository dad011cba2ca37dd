"""Which sweep a run belongs to: `--sweep ID:INDEX`, recorded in run.json's meta as `sweep`.

The sweep runner passes it to every run it starts (and to a run it resumes), so reading runs
back can group them by sweep from run.json alone. A plain run or a rerun carries none.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sacred.commandline_options import cli_option

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
