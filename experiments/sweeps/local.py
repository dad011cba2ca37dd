"""A sweep run here: N runs at a time, each its own process and session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.sweeps.record import Job, SweepBook, SweepRecord
from observers.exit_codes import STOPPED_BY_SIGNAL, ExitCode
from observers.location import StoreLocation

STOP_WAIT_S = 120  # how long a stopped run may take to record its interruption before it is killed


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    log: Path
    id_file: Path


class LocalSweep:
    """Runs jobs N at a time, each its own process and session (Ctrl-C reaches only us; we
    pass it on once), with its own torch thread count."""

    def __init__(
        self,
        record: SweepRecord,
        book: SweepBook,
        location: StoreLocation,
        parallel: int,
        threads: int,
    ):
        self.record, self.book, self.location = record, book, location
        self.parallel, self.threads = parallel, threads
        self.logs = book.work_dir(record.id) / "logs"
        self.done = self.failed = self.interrupted = 0
        self.failures: list[str] = []

    def start(self, job: Job, attempt: int) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"config-{job.index}-{attempt}.log"
        id_file = self.logs / f"config-{job.index}-{attempt}.run_id"
        child = self.record.child(job, self.location, threads=self.threads, run_id_file=id_file)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                child.argv(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child.env(),
                start_new_session=True,
                pass_fds=self.inherited(job),
            )
        return Running(job, process, log, id_file)

    def inherited(self, job: Job) -> tuple[int, ...]:
        """Open files the run inherits (a claim's lock: sweeps/claiming.py); none here."""
        return ()

    def run(self, jobs: list[Job], attempt: int) -> int:
        """Run every job; 0 when all completed, 1 when some failed, 130 when stopped. Ctrl-C and
        SIGTERM only set a flag (no exception can land between starting a run and holding it)."""
        pending, running = list(jobs), []
        stopping = threading.Event()
        previous = {
            signum: signal.signal(signum, lambda *_: stopping.set())
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.progress(pending, running)
            while (pending or running) and not stopping.is_set():
                while pending and len(running) < self.parallel and not stopping.is_set():
                    running.append(self.start(pending.pop(0), attempt))
                    self.progress(pending, running)
                finished = [r for r in running if r.process.poll() is not None]
                for item in finished:
                    running.remove(item)
                    self.finish(item)
                if finished:
                    self.progress(pending, running)
                elif not stopping.is_set():
                    time.sleep(
                        0.2
                    )  # (never stopping.wait: the handler's set() would need its lock)
            if stopping.is_set():
                self.stop(running)
                print(
                    f"sweep {self.record.id} stopped: {self.interrupted} run(s) interrupted, "
                    f"{len(pending)} not started; continue it with: "
                    f"reprolab sweep --resume {self.record.id}{self.location.option_text()}",
                    file=sys.stderr,
                )
                return ExitCode.INTERRUPTED
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for line in self.failures:
            print(line, file=sys.stderr)
        return ExitCode.FAILED if self.failed or self.interrupted else ExitCode.OK

    def finish(self, item: Running) -> None:
        code = item.process.returncode
        run_id = item.id_file.read_text().strip() if item.id_file.is_file() else "?"
        if code == ExitCode.OK:
            self.done += 1
        elif code in STOPPED_BY_SIGNAL:
            self.interrupted += 1
        else:
            self.failed += 1
            self.failures.append(
                f"config {item.job.index} (run {run_id}) failed: "
                f"{last_error(item.log)} (log: {item.log})"
            )

    def stop(self, running: list[Running]) -> None:
        """Ask every running run to stop (it records INTERRUPTED and its checkpoint), then wait;
        one that outlasts STOP_WAIT_S is killed with its whole session. Each is counted by how it
        ended: one that completed or failed just before the stop is not called interrupted."""
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        for item in running:
            try:
                item.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_session(item.process)
            self.finish(item)

    def progress(self, pending: list, running: list) -> None:
        print(
            f"sweep {self.record.id}: {self.done} done, {len(running)} running, "
            f"{self.failed} failed, {len(pending)} left",
            file=sys.stderr,
            flush=True,
        )


def kill_session(process: subprocess.Popen) -> None:
    """Kill a run and every process of its session (it was started as a session's leader)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def last_error(log: Path) -> str:
    """The last line of a run's output that says what went wrong (its exception, usually)."""
    try:
        lines = [
            line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "no output"
    errors = [
        line
        for line in lines
        if line.startswith(("error:", "ERROR"))
        or (":" in line and line.split(":", 1)[0].endswith(("Error", "Exception")))
    ]
    return (errors or lines or ["no output"])[-1]
