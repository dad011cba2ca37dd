"""Stopping a run safely and continuing it exactly.

Ctrl-C and SIGTERM end a run as INTERRUPTED at any moment, never in the middle of writing a
checkpoint or of starting the record; a write of the record that fails ends the run as FAILED.
Each checkpoint's hash is recorded before the file is renamed into place, beside the hash of the
file it replaces, so after any kill the checkpoint in the store verifies. `with resume=RUN`
continues RUN from that checkpoint with RUN's own config; only `epochs` (and presentation-only
keys) may differ, anything else that would change the training is refused.
"""

from __future__ import annotations

import _thread
import copy
import datetime
import hashlib
import os
import signal
import tempfile
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sacred.run import Run
from sacred.utils import get_by_dotted_path, set_by_dotted_path

from experiments.checkpoint import checkpoint_from_bytes, plain, save_checkpoint
from experiments.distributed import check_world_size, job
from ingredients.data import fingerprint_file, resolve_path
from ingredients.scratch import sweep_orphans, writer_tag
from observers.files import StoreWriteError
from observers.records import ObjectEncoding, check_plain, refusal
from observers.store import RecordError, resolve_run

# Config keys that do not change what is trained: the epoch to reach, the run resumed, and
# presentation. Everything else must equal the checkpoint's config.
MAY_CHANGE = frozenset({"epochs", "resume", "progress", "allow_world_size_change"})
LAST, BEST = "last.pt", "best.pt"
MISSING = object()
SCRATCH = "reprolab-checkpoint-{tag}-*"  # a checkpoint's scratch folder in $TMPDIR


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run ends as INTERRUPTED, like Ctrl-C. Like KeyboardInterrupt it is
    no Exception, so no `except Exception` on the way (logging, a client library) swallows it."""

    STATUS = "INTERRUPTED"  # what Sacred records for it


# --------------------------------------------------------------------------- interrupts


class Interrupts:
    """SIGINT/SIGTERM in the run's process: stop at once, except inside a deferred section."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.depth = 0
        self.pending: BaseException | None = None
        self.failure: StoreWriteError | None = None  # raised instead of the signal's stop
        self.closing = False  # the run's end is being recorded: a signal changes nothing now

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a forked loader worker: behave as if we were not here
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.closing:
            return
        stop = self.failure or (
            KeyboardInterrupt() if signum == signal.SIGINT else Terminated("terminated (SIGTERM)")
        )
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

    def stop_with(self, failure: StoreWriteError) -> None:
        """From another thread: stop the run's main thread with failure, as a signal would."""
        if self.pid == os.getpid() and not self.closing:
            self.failure = failure
            _thread.interrupt_main(signal.SIGTERM)  # runs handle() there; nothing if not ours

    @contextmanager
    def closed(self):
        """While the run's end is recorded, signals are ignored: the end is recorded as it is."""
        self.closing = True
        try:
            yield
        finally:
            self.closing = False


INTERRUPTS = Interrupts()


@contextmanager
def interrupts_handled():
    """While the block runs, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt (deferrable)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    INTERRUPTS.pid, INTERRUPTS.pending, INTERRUPTS.failure = os.getpid(), None, None
    INTERRUPTS.closing = False
    previous = {
        sig: signal.signal(sig, INTERRUPTS.handle) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class RecordedRun(Run):
    """Sacred's Run, where the record is never silently incomplete and a signal always ends the
    run as INTERRUPTED: the first write of the record that fails (Sacred would only warn) stops
    the run as FAILED; observers reach their servers before the start (a signal stops that),
    the start itself is not cut by a signal, and a signal during the end is ignored."""

    store_failure: StoreWriteError | None = None  # the first write that failed
    status_failure: StoreWriteError | None = None  # the final status could not be written
    _thread: threading.Thread | None = None
    # Sacred's heartbeat thread, its final beat and a checkpoint's beat would otherwise drain the
    # metrics queue at once and append their halves to the journal in either order.
    _beating = threading.RLock()

    def _emit_heartbeat(self):
        with self._beating:
            super()._emit_heartbeat()

    def _stop_heartbeat(self):
        super()._stop_heartbeat()  # waits 2 s for the thread's final beat, which may append the
        if self._heartbeat is not None:  # last metrics: the end must not seal the record before
            self._heartbeat.join()

    def _emit_started(self):
        self._thread, self.start_time = threading.current_thread(), datetime.datetime.utcnow()
        for observer in self.observers:  # may take seconds (a server away): a signal stops it
            getattr(observer, "connect", lambda: None)()
        with INTERRUPTS.deferred():
            try:
                super()._emit_started()
            except StoreWriteError as error:
                self.store_failure = error
                raise

    def _safe_call(self, obs, method, **kwargs):
        if obs in self._failed_observers:
            return
        try:
            getattr(obs, method)(**kwargs)
        except StoreWriteError as error:
            self._failed_observers.append(obs)
            self._stop(error)
        except Exception as error:  # as Sacred does: a warning, the observer is left out after
            self._failed_observers.append(obs)
            self.run_logger.warning("An error occurred in the '%s' observer: %s", obs, error)

    def _stop(self, error: StoreWriteError) -> None:
        """End the run with the first failed write: here at once, from another thread soon."""
        self.store_failure = self.store_failure or error
        if threading.current_thread() is (self._thread or threading.main_thread()):
            raise self.store_failure
        INTERRUPTS.stop_with(self.store_failure)

    def _final_call(self, observer, method, **kwargs):
        try:
            getattr(observer, method)(**kwargs)
        except StoreWriteError as error:
            self.status_failure = error
        except Exception:
            self.run_logger.error(traceback.format_exc())

    def _warn_about_failed_observers(self):
        if self.store_failure is None:  # else its one sentence says it all
            super()._warn_about_failed_observers()

    def _emit_completed(self, result):
        """COMPLETED only when every write, the last heartbeat's too, went through."""
        if self.store_failure is None:
            with INTERRUPTS.closed():
                super()._emit_completed(result)
            self.store_failure = self.status_failure
        if self.store_failure is not None:
            raise self.store_failure  # Sacred then records the run as FAILED

    def _emit_interrupted(self, status):
        self.status_failure = None
        with INTERRUPTS.closed():
            super()._emit_interrupted(status)

    def _emit_failed(self, exc_type, exc_value, trace):
        """Sacred's, without its "Failed after" line when a write failed (its sentence says it)."""
        self.status_failure = None
        with INTERRUPTS.closed():
            self.status = "FAILED"
            elapsed_time = self._stop_time()
            if self.store_failure is None:
                self.run_logger.error("Failed after %s!", elapsed_time)
            self.fail_trace = traceback.format_exception(exc_type, exc_value, trace)
            for observer in self.observers:
                self._final_call(
                    observer, "failed_event", fail_time=self.stop_time, fail_trace=self.fail_trace
                )


# --------------------------------------------------------------------------- saving


class CheckpointRecorder:
    """Saves each checkpoint straight into the run's store and records its SHA-256 in the info.

    Each save is two-phase, so that a kill at any moment leaves a checkpoint that verifies: the
    info first vouches for the new hash beside the hash of the file in place ("replaces"), then
    the file is renamed into place (the store replaces the same name), then the info keeps the new
    hash only. The scratch copy lives in a temporary folder ($TMPDIR) only while it is added;
    those of killed runs are swept."""

    def __init__(self, run, carried: dict[str, tuple[bytes, dict]] | None = None):
        self.run = run
        sweep_orphans(tempfile.gettempdir(), SCRATCH)
        run.info["checkpoints"] = {}
        self.enabled = not getattr(run, "unobserved", False)  # under torchrun rank 0 alone writes
        for name, (data, record) in (carried or {}).items():
            with self._scratch(name) as path:
                path.write_bytes(data)
                self._attach(name, path, {k: v for k, v in record.items() if k != "replaces"})

    def save(self, name: str, state: dict) -> None:
        """Write one checkpoint; an interrupt waits until the file and its hash are both recorded."""
        if not self.enabled:
            return
        with INTERRUPTS.deferred(), self._scratch(name) as path:
            digest = save_checkpoint(path, state)
            self._attach(
                name, path, {"sha256": digest, "epoch": state["epoch"], "step": state["step"]}
            )

    @staticmethod
    @contextmanager
    def _scratch(name: str):
        with tempfile.TemporaryDirectory(prefix=SCRATCH.split("{")[0] + writer_tag() + "-") as tmp:
            yield Path(tmp) / name

    def _attach(self, name: str, path: Path, record: dict) -> None:
        """Vouch for the new hash (and the old), copy the file in, then keep the new hash only."""
        if not self.enabled:
            return
        self._record(name, {**record, "replaces": self.run.info["checkpoints"].get(name)})
        self.run.add_artifact(str(path), name=name)
        self._record(name, record)

    def _record(self, name: str, record: dict) -> None:
        """Set the record and write the info out now (a heartbeat; otherwise every 10 s). The
        checkpoints dict is replaced whole: Sacred's heartbeat thread may be reading the old one."""
        self.run.info["checkpoints"] = {**self.run.info["checkpoints"], name: record}
        self.run._emit_heartbeat()


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
    """A checkpoint artifact's bytes and the record that vouches for them: the one recorded at
    saving, or, when the run was killed while replacing the file, the one it replaced."""
    record = records.get(name)
    if not isinstance(record, dict) or not record.get("sha256"):
        raise RecordError(
            f"run {run_id} recorded no checkpoint {name} (it stopped before "
            "finishing an epoch, or its info.json is missing)"
        )
    replaced = record.get("replaces")
    try:
        data = reader.artifact(run_id, name)
    except RecordError:
        if isinstance(replaced, dict) or "replaces" not in record:
            raise
        raise NeverWritten(
            f"run {run_id} was stopped while writing its first checkpoint "
            f"{name}, so there is none to resume from"
        ) from None
    if isinstance(replaced, dict) and hashlib.sha256(data).hexdigest() == replaced.get("sha256"):
        return data, replaced  # killed before the new file was renamed into place
    return data, {key: value for key, value in record.items() if key != "replaces"}


def load_resume_point(ref: str, store: str | None) -> ResumePoint:
    """Find run `ref` (an id in `store` or a run directory), verify and load its last checkpoint."""
    reader, run_id = resolve_run(str(ref), store)
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
    world_size = (info.get("distributed") or {}).get("world_size", 1)
    return ResumePoint(run_id, reader.location, state, record["sha256"], carried, world_size)


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
    then = ((info.get("data") or {}).get("fingerprint") or {}).get("sha256")
    path = (config.get("data") or {}).get("path")
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
