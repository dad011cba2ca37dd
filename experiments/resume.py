"""Continuing a recorded run exactly: `with resume=RUN` loads RUN's last checkpoint, verified
against its recorded hash, and continues with RUN's own config; only `epochs` (and
presentation-only keys) may differ, anything else that would change the training is refused.
(How checkpoints are saved so that any kill leaves one that verifies: experiments/checkpoint.py.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from sacred.utils import get_by_dotted_path, set_by_dotted_path

from experiments.checkpoint import BEST, LAST, checkpoint_from_bytes, plain
from experiments.checkpoint_sidecar import (
    SizeMismatch,
    checkpoint_bytes,
    matching,
    read_sidecar,
    vouching,
)
from experiments.distributed import check_world_size
from ingredients.checkout import resolve_path
from ingredients.data import fingerprint_file
from observers.liveness import process_gone
from observers.records import ObjectEncoding, check_plain, dig, refusal
from observers.store import RecordError, resolve_run

# Config keys that do not change what is trained: the epoch to reach, the run resumed, and
# presentation. Everything else must equal the checkpoint's config.
MAY_CHANGE = frozenset({"epochs", "resume", "progress", "allow_world_size_change"})
MISSING = object()


# --------------------------------------------------------------------------- resuming


@dataclass
class ResumePoint:
    """A verified, loaded checkpoint of a recorded run, and what the resumed run carries over."""

    run_id: int
    store: str  # printable, without any password
    state: dict
    sha256: str
    carried: dict[str, tuple[bytes, dict]] = field(default_factory=dict)
    world_size: int = 1  # processes that trained it (torchrun)

    def record(self) -> dict:
        """What the resumed run records about where it started."""
        return {
            "run_id": self.run_id,
            "store": self.store,
            "checkpoint": LAST,
            "sha256": self.sha256,
            "epoch": self.state["epoch"],
            "step": self.state["step"],
        }


class NeverWritten(RecordError):
    """A run was killed while its first checkpoint of a name was being written."""


def verified_checkpoint(reader, run_id: int, name: str, records: dict) -> tuple[bytes, dict]:
    """A checkpoint artifact's bytes and the record that vouches for them: info.json's record
    or the one it replaced (killed while replacing the file), or the checkpoint's own sidecar
    record (info.json or run.json stale or missing after a kill); see checkpoint_sidecar."""
    record, sidecar = records.get(name), read_sidecar(reader, run_id, name)
    candidates = vouching([record, sidecar])
    if not candidates:
        raise RecordError(
            f"run {run_id} recorded no checkpoint {name} (it stopped before "
            "finishing an epoch, or its info.json is missing)"
        )
    try:
        data = checkpoint_bytes(reader, run_id, name, candidates)
    except SizeMismatch:
        raise
    except RecordError:
        if not any(isinstance(r, dict) and r.get("replaces", 0) is None for r in (record, sidecar)):
            raise
        raise NeverWritten(
            f"run {run_id} was stopped while writing its first checkpoint "
            f"{name}, so there is none to resume from"
        ) from None
    return data, matching(data, candidates) or candidates[0]  # else refused by its hash


def load_resume_point(ref: str, store: str | None) -> ResumePoint:
    """Find run `ref` (an id in `store` or a run directory), verify and load its last checkpoint."""
    reader, run_id = resolve_run(str(ref), store)
    refuse_live(reader, run_id)
    info = reader.info(run_id)
    records = info.get("checkpoints") if isinstance(info, dict) else None
    if not isinstance(records, dict):
        records = {}  # no checkpoints recorded (or a record of another shape): refused below
    data, record = verified_checkpoint(reader, run_id, LAST, records)
    state = checkpoint_from_bytes(data, record["sha256"], f"run {run_id}'s checkpoint {LAST}")
    plain_config(run_id, LAST, state)
    check_same_data(run_id, info, state["config"])
    carried = {}
    if BEST in records:
        try:
            best, best_record = verified_checkpoint(reader, run_id, BEST, records)
        except NeverWritten:  # killed while writing it, after last.pt: the next best writes one
            best = None
        if best is not None:
            plain_config(
                run_id,
                BEST,
                checkpoint_from_bytes(
                    best, best_record["sha256"], f"run {run_id}'s checkpoint {BEST}"
                ),
            )
            carried[BEST] = (best, best_record)
    world_size = dig(info, "distributed", "world_size")
    if world_size is None:
        world_size = 1
    if type(world_size) is not int or world_size < 1:
        raise RecordError(f"run {run_id}'s info distributed.world_size is not a count")
    return ResumePoint(run_id, reader.location, state, record["sha256"], carried, world_size)


def refuse_live(reader, run_id: int) -> None:
    """Refuse to resume a run whose process still runs: both would train and write."""
    try:
        run = reader.run(run_id)
    except RecordError:  # run.json damaged or missing after a kill: the checkpoint decides
        return
    if isinstance(run, dict) and run.get("status") == "RUNNING" and not process_gone(run):
        raise RecordError(
            f"run {run_id} is still running (its record says RUNNING and its process is alive "
            "or its heartbeat recent), so it was not resumed; stop it first (Ctrl-C or kill "
            "leaves a checkpoint to resume from)"
        )


def plain_config(run_id: int, name: str, state: dict) -> None:
    """Refuse a checkpoint whose config is not plain data (the resumed run would record it, and
    Sacred's JSON codec would turn its object-encoding keys into calls when read back)."""
    if not isinstance(state.get("config"), dict):
        raise RecordError(f"run {run_id}'s checkpoint {name} holds no config")
    try:
        check_plain(state["config"])
    except ObjectEncoding as error:
        raise refusal(f"run {run_id}'s checkpoint {name}: its config", error.key) from None


def check_same_data(run_id: int, info: dict, config: dict) -> None:
    """Refuse when the data file the resumed run would read is not the one run_id trained on."""
    then, path = dig(info, "data", "fingerprint", "sha256"), dig(config, "data", "path")
    if not isinstance(then, str) or not isinstance(path, str):
        then = None
    if not then or not path:
        return  # recorded before data fingerprints existed: nothing to compare against
    file = resolve_path(path)
    now = fingerprint_file(file)["sha256"] if file.exists() else None  # a folder of shards too
    if now != then:
        change = (
            "is missing"
            if now is None
            else f"has changed (sha256 {then[:12]} then, {now[:12]} now)"
        )
        raise RecordError(
            f"data file {file} {change} since run {run_id} was trained on it, so "
            "resuming would continue on other data"
        )


def resumed_config(point: ResumePoint, requested: dict, touched: set[str]) -> dict:
    """The checkpoint's config with `epochs` (and presentation) and `resume` as requested.

    `requested` is the config the user asked for and `touched` the keys they set (on the command
    line or through named configs); any of those that differs from the checkpoint is refused."""
    saved, requested = point.state["config"], plain(requested)
    differing = sorted(
        key
        for key in touched - MAY_CHANGE
        if get_by_dotted_path(requested, key, MISSING) != get_by_dotted_path(saved, key, MISSING)
    )
    if differing:
        raise ValueError(
            f"resume: the config differs from run {point.run_id}'s checkpoint in "
            f"{', '.join(differing)}; only epochs may change when resuming"
        )
    check_world_size(
        point.world_size,
        f"resume: run {point.run_id}",
        bool(requested.get("allow_world_size_change")),
    )
    config = copy.deepcopy(saved)
    for key in MAY_CHANGE & touched:
        set_by_dotted_path(config, key, get_by_dotted_path(requested, key))
    config["resume"] = requested["resume"]
    if config["epochs"] <= point.state["epoch"]:
        raise ValueError(
            f"epochs: run {point.run_id}'s checkpoint is already at epoch {point.state['epoch']}; "
            f"set epochs above {point.state['epoch']} to train further"
        )
    return config
