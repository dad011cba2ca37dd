"""Stopping a run safely and continuing it exactly.

Ctrl-C and SIGTERM end a run as INTERRUPTED, never in the middle of writing a checkpoint, so the
checkpoint of the last completed epoch and its recorded hash always match. `with resume=RUN`
continues RUN from that checkpoint with RUN's own config; only `epochs` (and presentation-only
keys) may differ, anything else that would change the training is refused.
"""

from __future__ import annotations

import copy
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sacred.utils import SacredInterrupt, get_by_dotted_path, set_by_dotted_path

from experiments.checkpoint import checkpoint_from_bytes, plain, save_checkpoint
from experiments.distributed import check_world_size, job
from ingredients.data import fingerprint_file, resolve_path
from observers.store import RecordError, resolve_run

# Config keys that do not change what is trained: the epoch to reach, the run resumed, and
# presentation. Everything else must equal the checkpoint's config.
MAY_CHANGE = frozenset({"epochs", "resume", "progress", "allow_world_size_change"})
LAST, BEST = "last.pt", "best.pt"
MISSING = object()


class Terminated(SacredInterrupt):
    """SIGTERM arrived: the run ends as INTERRUPTED, like Ctrl-C."""

    STATUS = "INTERRUPTED"


# --------------------------------------------------------------------------- interrupts


class Interrupts:
    """SIGINT/SIGTERM in the run's process: stop at once, except inside a deferred section."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.depth = 0
        self.pending: BaseException | None = None

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a forked loader worker: behave as if we were not here
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop = KeyboardInterrupt() if signum == signal.SIGINT else Terminated("terminated (SIGTERM)")
        if job().distributed and not job().is_main:
            # Rank 0 decides when a torchrun job stops (torchrun signals every rank): this rank
            # keeps serving the collectives of rank 0's last checkpoint, then stops with the job.
            job().stop_requested = job().stop_requested or stop
            return
        if self.depth:
            self.pending = self.pending or stop
            return
        raise stop

    @contextmanager
    def deferred(self):
        """Hold a stop request until the block is done (a checkpoint and its hash are written)."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                stop, self.pending = self.pending, None
                raise stop


INTERRUPTS = Interrupts()


@contextmanager
def interrupts_handled():
    """While the block runs, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt (deferrable)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    INTERRUPTS.pid, INTERRUPTS.pending = os.getpid(), None
    previous = {sig: signal.signal(sig, INTERRUPTS.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- saving


class CheckpointRecorder:
    """Saves each checkpoint straight into the run's store and records its SHA-256 in the info.

    Every save is attached as an artifact at once (the store replaces the same name in place) and
    the info is written right after, so even a SIGKILLed run keeps its last checkpoint and the
    hash that verifies it. The scratch copy lives in a temporary directory only while it is added."""

    def __init__(self, run, carried: dict[str, tuple[bytes, dict]] | None = None):
        self.run = run
        run.info["checkpoints"] = {}
        self.enabled = not getattr(run, "unobserved", False)  # under torchrun rank 0 alone writes
        for name, (data, record) in (carried or {}).items():
            with self._scratch(name) as path:
                path.write_bytes(data)
                self._attach(name, path, record)

    def save(self, name: str, state: dict) -> None:
        """Write one checkpoint; an interrupt waits until the file and its hash are both recorded."""
        if not self.enabled:
            return
        with INTERRUPTS.deferred(), self._scratch(name) as path:
            digest = save_checkpoint(path, state)
            self._attach(name, path, {"sha256": digest, "epoch": state["epoch"], "step": state["step"]})

    @staticmethod
    @contextmanager
    def _scratch(name: str):
        with tempfile.TemporaryDirectory(prefix="reprolab-") as tmp:
            yield Path(tmp) / name

    def _attach(self, name: str, path: Path, record: dict) -> None:
        """Copy the file into the store, then record its hash and write the info out (a heartbeat)."""
        if not self.enabled:
            return
        self.run.add_artifact(str(path), name=name)
        self.run.info["checkpoints"][name] = record
        self.run._emit_heartbeat()  # info.json is otherwise only written every 10 s


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
        return {"run_id": self.run_id, "store": self.store, "checkpoint": LAST,
                "sha256": self.sha256, "epoch": self.state["epoch"], "step": self.state["step"]}


def verified_checkpoint(reader, run_id: int, name: str, records: dict) -> tuple[bytes, dict]:
    """A checkpoint artifact's bytes after checking them against the hash recorded at saving."""
    record = records.get(name)
    if not isinstance(record, dict) or not record.get("sha256"):
        raise RecordError(f"run {run_id} recorded no checkpoint {name} (it stopped before "
                          "finishing an epoch, or its info.json is missing)")
    return reader.artifact(run_id, name), record


def load_resume_point(ref: str, store: str | None) -> ResumePoint:
    """Find run `ref` (an id in `store` or a run directory), verify and load its last checkpoint."""
    reader, run_id = resolve_run(str(ref), store)
    info = reader.info(run_id)
    records = info.get("checkpoints") or {}
    data, record = verified_checkpoint(reader, run_id, LAST, records)
    state = checkpoint_from_bytes(data, record["sha256"], f"run {run_id}'s checkpoint {LAST}")
    check_same_data(run_id, info, state["config"])
    carried = {}
    if BEST in records:
        best, best_record = verified_checkpoint(reader, run_id, BEST, records)
        checkpoint_from_bytes(best, best_record["sha256"], f"run {run_id}'s checkpoint {BEST}")
        carried[BEST] = (best, best_record)
    world_size = (info.get("distributed") or {}).get("world_size", 1)
    return ResumePoint(run_id, reader.location, state, record["sha256"], carried, world_size)


def check_same_data(run_id: int, info: dict, config: dict) -> None:
    """Refuse when the data file the resumed run would read is not the one run_id trained on."""
    then = ((info.get("data") or {}).get("fingerprint") or {}).get("sha256")
    path = (config.get("data") or {}).get("path")
    if not then or not path:
        return  # recorded before data fingerprints existed: nothing to compare against
    file = resolve_path(path)
    now = fingerprint_file(file)["sha256"] if file.is_file() else None
    if now != then:
        change = "is missing" if now is None else f"has changed (sha256 {then[:12]} then, {now[:12]} now)"
        raise RecordError(f"data file {file} {change} since run {run_id} was trained on it, so "
                          "resuming would continue on other data")


def resumed_config(point: ResumePoint, requested: dict, touched: set[str]) -> dict:
    """The checkpoint's config with `epochs` (and presentation) and `resume` as requested.

    `requested` is the config the user asked for and `touched` the keys they set (on the command
    line or through named configs); any of those that differs from the checkpoint is refused."""
    saved, requested = point.state["config"], plain(requested)
    differing = sorted(
        key for key in touched - MAY_CHANGE
        if get_by_dotted_path(requested, key, MISSING) != get_by_dotted_path(saved, key, MISSING)
    )
    if differing:
        raise ValueError(
            f"resume: the config differs from run {point.run_id}'s checkpoint in "
            f"{', '.join(differing)}; only epochs may change when resuming"
        )
    check_world_size(point.world_size, f"resume: run {point.run_id}",
                     bool(requested.get("allow_world_size_change")))
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
