"""Training under torchrun: the process group, one recorded run for the whole job, the rank's
share of the data, metric reduction, and a failing rank ending the job.

torch.distributed is the engine; this module only connects it to the experiment. Without
torchrun, `job()` is a job of one process and every helper here is a no-op, so train.py reads
the same either way. Rank 0 records the run; the other ranks run unobserved and write nothing
into the store.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import socket
import time
import traceback
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from experiments.loop import OneSentenceError, Terminated
from ingredients.processes import exit_signal, start_time
from observers.credentials import redact_argv

LR_SCALINGS = ("none", "linear")
FAILED_KEY, STOPPED_KEY = "reprolab/failed/", "reprolab/stopped/"
# Rank 0 failing itself waits this long for a peer's failure: a NaN on rank 1 reaches rank 0's
# weights through the all-reduce, and both ranks notice it at the same loss check.
PEER_GRACE_S = 2.0


class RankFailed(OneSentenceError):
    """Another rank of the job raised: the run is recorded FAILED with that rank's message."""


def launched_by_torchrun() -> bool:
    """Whether this process is one of a torchrun job's workers (torchrun sets these variables)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE", "LOCAL_RANK"} <= set(
        os.environ
    )


def torchrun_command() -> list[str] | None:
    """The torchrun command line of this node (its agent is this worker's parent process), with
    the password of any URL on it (`-R mongodb://user:password@...`) hidden."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:  # not Linux: the command line is not recorded
        return None
    return redact_argv(part.decode(errors="replace") for part in raw.split(b"\0") if part)


class Job:
    """This process's place in the job: rank, world size, device; set up by `start`."""

    def __init__(self) -> None:
        self.distributed = launched_by_torchrun()
        env = os.environ
        self.rank = int(env.get("RANK", 0)) if self.distributed else 0
        self.world_size = int(env.get("WORLD_SIZE", 1)) if self.distributed else 1
        self.local_rank = int(env.get("LOCAL_RANK", 0)) if self.distributed else 0
        self.nodes = int(env.get("GROUP_WORLD_SIZE", 1)) if self.distributed else 1
        self.restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = None
        self.info: dict | None = None
        self.stop_requested: BaseException | None = None  # a signal this rank 1.. got
        self.wrapped: list[weakref.ref] = []  # the DistributedDataParallel models made by `wrap`
        self.seed_source = "given"  # or "drawn by rank 0" (share_seed)
        self.drawn_seed: int | None = None
        self.peer_failed = False  # rank 0 is ending the run with a peer's failure (signals.py)
        self.examining_peers = False  # rank 0 is finding out whether a peer failed (signals.py)
        self.held_stop: BaseException | None = None  # a signal that came meanwhile

    @property
    def is_main(self) -> bool:
        """Rank 0 records the run, writes checkpoints and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> dict:
        """make_loader's arguments for this rank's share of every batch."""
        return {"rank": self.rank, "world_size": self.world_size}

    def seed(self, seed: int) -> int:
        """This rank's seed (dropout differs between ranks as between samples); the loader's
        generator is seeded from the config's seed alone, so every rank draws the same order."""
        return seed + self.rank

    # ------------------------------------------------------------------ setting up

    def start(self, run, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA with the LOCAL_RANK device, else gloo) and record
        the job in the run's info; returns this rank's device."""
        if not self.distributed:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        self.store = dist.distributed_c10d._get_default_store()
        me = {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(device),
            "seed": run.config["seed"] + self.rank,
            "start_ticks": start_time(os.getpid()),
        }
        ranks = [None] * self.world_size
        dist.all_gather_object(ranks, me)
        self.info = {
            "world_size": self.world_size,
            "nodes": self.nodes,
            "backend": backend,
            "torchrun": torchrun_command(),
            "ranks": ranks,
            "seed_source": self.seed_source,
        }
        run.info["distributed"] = self.info
        return device

    def wrap(self, model: torch.nn.Module, sync_batchnorm: bool) -> torch.nn.Module:
        """The model as trained: DistributedDataParallel under torchrun, else the model itself.
        Its parameters are the model's own, so optimizer, checkpoints and summary use `model`."""
        if not self.distributed:
            return model
        if sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device = next(model.parameters()).device
        ids = [device] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.wrapped.append(weakref.ref(wrapped))
        return wrapped

    def scaled_lr(self, lr: float, scaling: str) -> float:
        """The learning rate used: times the world size with 'linear' (the global batch is the
        per-process batch times the world size)."""
        effective = lr * self.world_size if scaling == "linear" else lr
        if self.info is not None:
            self.info["lr"] = {"configured": lr, "scaling": scaling, "effective": effective}
        return effective

    # ------------------------------------------------------------------ during training

    def reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """Sums over every rank (metrics are logged for the whole job)."""
        if self.distributed:
            dist.all_reduce(sums)
        return sums

    @property
    def reducer(self):
        """`reduce` for the loop with several processes; None (the loop's own path, so a world
        size of 1 records the values of a plain run) in one process."""
        return self.reduce if self.world_size > 1 else None

    def synced(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model with rank 0's buffers (BatchNorm statistics) on every rank, for evaluation."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        return model

    def checkpoint_state(self, state: dict) -> dict:
        """The training state with every rank's RNG states (a collective: called on every rank)."""
        if not self.distributed or self.world_size == 1:
            return state
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(state["rng"], gathered, dst=0)
        return {**state, "rng_ranks": gathered} if self.is_main else state

    def own_state(self, state: dict) -> dict:
        """A checkpoint's state with this rank's own RNG states (rank 0's when it has none)."""
        ranks = state.get("rng_ranks") or []
        return {**state, "rng": ranks[self.rank]} if self.rank < len(ranks) else state

    # ------------------------------------------------------------------ ending

    @contextmanager
    def failures_shared(self):
        """Around the run's main function: a rank that raises leaves its message in torchrun's
        store and exits (torchrun then stops the others); rank 0, whose collective or whose
        SIGTERM ends with it, records the failing rank's message as the run's failure."""
        failure = None
        try:
            yield
            if self.store is not None:
                dist.barrier()  # a rank failing after the last collective still fails the job
        except BaseException as error:
            failure = error
            if self.store is None:
                raise
            interrupted = isinstance(error, KeyboardInterrupt) or getattr(error, "STATUS", None)
            if self.stop_requested is not None and not interrupted:
                # rank 0 has stopped the job after its checkpoint; this rank's collective broke
                self._tell(STOPPED_KEY, "stopped with the job")  # not a rank gone without a word
                raise self.stop_requested from None
            key, message = (
                STOPPED_KEY if interrupted else FAILED_KEY,
                f"{type(error).__name__}: {error}",
            )
            self._tell(key, message)
            if self.is_main:
                self._raise_peer_failure(own_interrupt=bool(interrupted))
                if not interrupted:  # rank 0's own failure
                    self.info["failure"] = {"rank": 0, "message": message}
            raise
        finally:
            self.leave(failure)

    def leave(self, error: BaseException | None = None) -> None:
        """Destroy the process group, after the DistributedDataParallel models are gone.

        A DDP model freed after the group is destroyed (it sits in a reference cycle the garbage
        collector frees whenever, or in a failed run's traceback) has its Reducer drop the
        group's last reference: ~ProcessGroupGloo then joins gloo's threads with the GIL held
        while one of them waits for the GIL to free its last collective, so the rank never exits
        and torchrun waits for ever. Hence the models go first, while the group is registered;
        the traceback's finished frames are cleared of their locals (Sacred formats it without)."""
        if not dist.is_initialized():
            return
        if error is not None:
            traceback.clear_frames(error.__traceback__)
        if any(ref() is not None for ref in self.wrapped):
            gc.collect()
        if any(ref() is not None for ref in self.wrapped):  # still referenced by the caller
            logging.getLogger(__name__).warning(
                "rank %d: the DistributedDataParallel model is still referenced, so the process "
                "group is left for the interpreter's exit (destroying it first can hang)",
                self.rank,
            )
            return
        self.wrapped.clear()
        dist.destroy_process_group()

    def _tell(self, key: str, message: str) -> None:
        try:
            self.store.set(f"{key}{self.restart}/{self.rank}", message)
        except Exception:  # noqa: BLE001 - the store is gone: torchrun is ending the job anyway
            pass

    def _said(self, rank: int) -> bool:
        """Whether a rank left a message (it failed or stopped with the job: not gone mutely)."""
        names = [f"{key}{self.restart}/{rank}" for key in (FAILED_KEY, STOPPED_KEY)]
        try:
            return any(self.store.check([name]) for name in names)
        except Exception:  # noqa: BLE001 - the store is gone: torchrun is ending the job
            return False

    def _peer_message(self, key: str) -> tuple[int, str] | None:
        for rank in range(1, self.world_size):
            name = f"{key}{self.restart}/{rank}"
            try:
                if self.store.check([name]):
                    return rank, self.store.get(name).decode(errors="replace")
            except Exception:  # noqa: BLE001
                return None
        return None

    def _dead_peer(self) -> tuple[int, str] | None:
        """A rank on this host whose process is gone without a word: killed by a signal it
        cannot handle (SIGKILL: by hand or the out-of-memory killer) or crashed. Its pid and
        start time tell it from a process that took the pid since."""
        here = socket.gethostname()
        for peer in (self.info or {}).get("ranks") or []:
            if peer["rank"] == self.rank or peer["host"] != here or self._said(peer["rank"]):
                continue
            signum = exit_signal(peer["pid"])
            if signum == 0 or (signum is None and start_time(peer["pid"]) == peer["start_ticks"]):
                continue  # still there, or it exited by itself
            name = signal_name(signum) if signum else "a signal it cannot handle (SIGKILL)"
            return peer["rank"], f"its process (pid {peer['pid']}) was killed by {name}"
        return None

    def _raise_peer_failure(self, own_interrupt: bool) -> None:
        """On rank 0: a peer's failure becomes this run's; a peer's interrupt an interrupt.
        A peer that failed first has left its message already (before its exit broke rank 0's
        collective); one failing at the same moment is given PEER_GRACE_S (peers blocked on
        rank 0 cannot fail meanwhile: rank 0 is still there)."""
        # A peer gone without a word is known at once, once its process has ended. Its sockets
        # close before that, breaking rank 0's collective, and torchrun's SIGTERM (sent once it
        # has reaped the peer) may come while rank 0 looks: held until the look is done.
        self.examining_peers = True
        try:
            failed = self._peer_message(FAILED_KEY) or self._dead_peer()
            deadline = time.monotonic() + (0 if own_interrupt else PEER_GRACE_S)
            while failed is None and time.monotonic() < deadline:
                time.sleep(0.05)
                failed = self._peer_message(FAILED_KEY) or self._dead_peer()
        finally:
            self.examining_peers = False
        if failed is not None:
            rank, message = failed
            self.info["failure"] = {"rank": rank, "message": message}
            self.peer_failed = True  # torchrun's SIGTERM, coming now, must not hide the failure
            raise RankFailed(f"rank {rank} of {self.world_size} failed: {message}") from None
        if self.held_stop is not None:  # no peer failed: the signal stops the run as it asked
            raise self.held_stop from None
        if not own_interrupt and self._peer_message(STOPPED_KEY) is not None:
            raise Terminated("another rank was interrupted") from None


SEED_KEY = "reprolab/seed/"
SEED_WAIT_S = 300  # how long a rank waits for rank 0's seed (rank 0 may still be importing)


def agent_store():
    """A client of torchrun's own store (the rendezvous store its agent hosts), reached before
    the process group exists; None where the launcher hosts none."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in env:
        return None
    import datetime

    return dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=SEED_WAIT_S),
    )


def share_seed() -> int:
    """The job's seed: drawn by rank 0 and read by every other rank through torchrun's store,
    before anything is seeded or recorded (each rank drawing its own would shuffle differently)."""
    current = job()
    if current.drawn_seed is not None:  # a process creates its run more than once (resume)
        return current.drawn_seed
    store = agent_store()
    if store is None:
        raise ValueError(
            "seed: this launcher hosts no store to share a drawn seed through; give one (seed=N)"
        )
    key = f"{SEED_KEY}{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{current.restart}"
    if current.is_main:
        store.set(key, str(secrets.randbelow(2**31)))
    current.drawn_seed = int(store.get(key).decode())  # waits until rank 0 has set it
    current.seed_source = "drawn by rank 0"
    return current.drawn_seed


JOB: Job | None = None


def job() -> Job:
    """This process's job, read from torchrun's environment once."""
    global JOB
    if JOB is None:
        JOB = Job()
    return JOB


def signal_name(signum: int) -> str:
    """SIGKILL for 9; the number where Python knows no name."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def prepare_run(run) -> None:
    """Before a run starts: only rank 0 records it (the other ranks run unobserved), its
    run.json says how many processes ran it, and a failing rank fails the recorded run."""
    current = job()
    if not current.distributed:
        return
    if not current.is_main:
        run.unobserved = True
        run.observers = []
        run.run_logger.setLevel("WARNING")  # one log of the job, from rank 0
    run.meta_info["distributed"] = {"world_size": current.world_size, "nodes": current.nodes}
    run.main_function = MainReportingFailures(run.main_function, current)


class MainReportingFailures:
    """The run's main function inside Job.failures_shared (Sacred reads its other attributes)."""

    def __init__(self, main, current: Job):
        self.main, self.job = main, current

    def __call__(self, *args, **kwargs):
        with self.job.failures_shared():
            return self.main(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.main, name)


def check_sync_batchnorm(sync: bool) -> None:
    """SyncBatchNorm under torchrun needs CUDA: refused in one sentence naming the key."""
    if sync and job().distributed and not torch.cuda.is_available():
        raise ValueError(
            "model.sync_batchnorm needs CUDA devices: torch's SyncBatchNorm does not run on CPU"
        )


def check_world_size(recorded: int, what: str, allowed: bool) -> None:
    """Refuse to continue or repeat a run with another world size unless asked explicitly."""
    now = job().world_size
    if recorded != now and not allowed:
        raise ValueError(
            f"{what} ran with world size {recorded} and this job has {now}; the sample order "
            f"and reductions would differ, so set allow_world_size_change=True to do it anyway"
        )


def relaunch_prefix(script: str) -> str:
    """How to start `script` again the way this job was started (for the resume hint)."""
    current = job()
    if not current.distributed:
        return f"python {script}"
    return f"torchrun --nproc_per_node={current.world_size // current.nodes} " + (
        f"--nnodes={current.nodes} <rendezvous flags> {script}" if current.nodes > 1 else script
    )


__all__ = [
    "Job",
    "RankFailed",
    "check_sync_batchnorm",
    "check_world_size",
    "job",
    "prepare_run",
    "relaunch_prefix",
]
