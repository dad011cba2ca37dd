"""Ctrl-C and SIGTERM in a run's process: the run stops at once as INTERRUPTED, except inside a
deferred section (a checkpoint and its hash being written), and never while its end is recorded.
Under torchrun rank 0 decides when the job stops."""

from __future__ import annotations

import _thread
import os
import signal
import threading
from contextlib import contextmanager

from experiments.distributed import job
from experiments.loop import Terminated
from observers.files import StoreWriteError


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
        if self.closing or job().peer_failed:  # the end is recorded as it is
            return
        stop = self.failure or (
            KeyboardInterrupt() if signum == signal.SIGINT else Terminated("terminated (SIGTERM)")
        )
        if job().examining_peers:  # rank 0 is finding out whether a peer failed: let it
            job().held_stop = job().held_stop or stop
            return
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
