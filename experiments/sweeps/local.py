"""The local engine: N runs at a time, each its own process and session, forked from a warm
worker that has imported torch and the experiment already (experiments/warm.py) where it can.

One loop serves a sweep and a search. A plain sweep runs the list of jobs it is given and counts
each run by its exit code. A search (sweeps/tuner.py's `LocalSearch`, also what a Slurm search
worker runs on its node) changes where jobs come from (`next_job`: its left-over trials, then
the study's new ones until the budget is spent), what a job's run is (`child`: a trial), and what
a run's end means (`finish`: the study is told how it ended). Everything else is shared: the warm
pool and its fallback, the logs and run-id files, Ctrl-C and SIGTERM, stopping and killing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments.child import ChildRun
from experiments.sweeps.record import Job, SweepBook, SweepRecord
from experiments.warm import WarmPool, WarmPoolGone, WarmProcess, unavailable
from observers.exit_codes import STOPPED_BY_SIGNAL, ExitCode
from observers.location import StoreLocation

STOP_WAIT_S = 120  # how long a stopped run may take to record its interruption before it is killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # signals that stop the runs (as INTERRUPTED)


@dataclass
class Running:
    job: Job
    process: subprocess.Popen | WarmProcess
    log: Path
    id_file: Path


class LocalSweep:
    """Runs jobs N at a time, each its own process and session (Ctrl-C reaches only us; we
    pass it on once), with its own torch thread count. A search overrides `next_job`, `child`,
    `started`, `finish` and `progress` (sweeps/tuner.py)."""

    noun = "sweep"  # the lines it prints start "sweep ID"
    label = "config"  # a job is "config N": logs/config-N-ATTEMPT.log and .run_id
    trials = False  # its runs are a search's trials (the warm workers also import optuna)

    def __init__(
        self,
        record: SweepRecord,
        book: SweepBook,
        location: StoreLocation,
        parallel: int,
        threads: int | None,
        signals: tuple[int, ...] = STOP_SIGNALS,
    ):
        self.record, self.book, self.location = record, book, location
        self.parallel, self.threads, self.signals = parallel, threads, signals
        self.logs = book.work_dir(record.id) / "logs"
        self.done = self.failed = self.interrupted = 0
        self.failures: list[str] = []
        self.stopped: list[str] = []  # runs ended by a signal from elsewhere: --resume continues
        self.pending: list[Job] = []
        self.running: list[Running] = []
        self.pool: WarmPool | None = None

    # ---------------------------------------------------------------- what a search changes

    def next_job(self) -> Job | None:
        """The next job to start, or None when there is none left (a sweep: its list's next)."""
        return self.pending.pop(0) if self.pending else None

    def child(self, job: Job, id_file: Path | None) -> ChildRun:
        """The run of a job, as the sweep machinery starts it."""
        return self.record.child(job, self.location, threads=self.threads, run_id_file=id_file)

    def started(self, item: Running) -> None:
        self.progress()

    def progress(self) -> None:
        stopped = f", {self.interrupted} stopped" if self.interrupted else ""
        self.say(
            f"{self.done} done, {len(self.running)} running, "
            f"{self.failed} failed{stopped}, {len(self.pending)} left"
        )

    def say(self, line: str) -> None:
        print(f"{self.noun} {self.record.id}: {line}", file=sys.stderr, flush=True)

    def not_started(self) -> int:
        """Jobs this sweep has not started (said when it is stopped)."""
        return len(self.pending)

    # ---------------------------------------------------------------- the loop

    def open_pool(self, job: Job, attempt: int, stop: Callable[[], bool]) -> None:
        """Start the warm workers and wait until they are ready; or say why runs start fresh."""
        experiment = self.record.experiment_file(self.location)
        name, why = unavailable(experiment)
        if name is not None:
            shared = self.child(job, None).env()
            log = self.logs / f"warm-{attempt}.log"
            try:
                self.pool = WarmPool.open(experiment, shared, log, self.trials)
                self.pool.wait_ready(stop)
            except (OSError, WarmPoolGone) as error:
                self.pool, why = None, str(error)
        self.say(
            f"runs start in warm workers ({experiment.name} and torch loaded once)"
            if self.pool
            else f"each run starts a fresh process ({why})"
        )

    def start(self, job: Job, attempt: int) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{self.label}-{job.index}-{attempt}.log"
        id_file = self.logs / f"{self.label}-{job.index}-{attempt}.run_id"
        id_file.unlink(missing_ok=True)  # a run of an earlier submission with the same name
        child = self.child(job, id_file)
        if self.pool is not None:
            try:
                warm = self.pool.start(child.script_argv(), child.env(), log, self.threads)
                return Running(job, warm, log, id_file)
            except WarmPoolGone as error:
                self.say(f"warm workers gone ({error}); the next runs start fresh processes")
                self.pool = None
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
        """Run `jobs`, then whatever `next_job` gives; 0 when all completed, 1 when some failed,
        130 when stopped. The stop signals only set a flag (no exception can land between
        starting a run and holding it)."""
        self.pending, running, spent = list(jobs), self.running, False
        stopping = threading.Event()
        previous = {
            signum: signal.signal(signum, lambda *_: stopping.set()) for signum in self.signals
        }
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.progress()
            opened = False
            while not stopping.is_set():
                while len(running) < self.parallel and not spent and not stopping.is_set():
                    job = self.next_job()
                    if job is None:
                        spent = True
                        break
                    if not opened:  # once there is a run to start
                        self.open_pool(job, attempt, stopping.is_set)
                        opened = True
                        if stopping.is_set():
                            self.pending.insert(0, job)
                            break
                    running.append(self.start(job, attempt))
                    self.started(running[-1])
                if not running and (spent or stopping.is_set()):
                    break
                finished = [r for r in running if r.process.poll() is not None]
                for item in finished:
                    running.remove(item)
                    self.finish(item)
                if finished:
                    self.progress()
                elif not stopping.is_set():
                    # (never stopping.wait: the handler's set() would need its lock)
                    time.sleep(0.2)
            if stopping.is_set():
                self.stop(running)
                print(
                    f"{self.noun} {self.record.id} stopped: {self.interrupted} run(s) "
                    f"interrupted, {self.not_started()} not started; continue it with: "
                    f"reprolab sweep --resume {self.record.id}{self.location.option_text()}",
                    file=sys.stderr,
                )
                return ExitCode.INTERRUPTED
        finally:
            if self.pool is not None:
                self.pool.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.ended()

    def ended(self) -> int:
        """Name each run that failed or was stopped from elsewhere (a kill, the OOM killer), and
        how to continue; 0 when all completed."""
        for line in self.failures + self.stopped:
            print(line, file=sys.stderr)
        if self.stopped:
            print(
                f"continue the stopped run(s) with: reprolab sweep --resume "
                f"{self.record.id}{self.location.option_text()}",
                file=sys.stderr,
            )
        return ExitCode.FAILED if self.failed or self.interrupted else ExitCode.OK

    def finish(self, item: Running) -> None:
        """Count an ended run by its exit code."""
        code = item.process.returncode
        run_id = item.id_file.read_text().strip() if item.id_file.is_file() else "?"
        if code == ExitCode.OK:
            self.done += 1
        elif code in STOPPED_BY_SIGNAL:
            self.interrupted += 1
            how = f"by {signal.Signals(-code).name}" if code < 0 else f"with exit code {code}"
            self.stopped.append(f"{self.label} {item.job.index} (run {run_id}) was stopped {how}")
        else:
            self.failed += 1
            self.failures.append(
                f"{self.label} {item.job.index} (run {run_id}) failed: "
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


def kill_session(process: subprocess.Popen | WarmProcess) -> None:
    """Kill a run and every process of its session (it was started as a session's leader)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def last_error(log: Path) -> str:
    """The last line of a run's output that says what went wrong: its exception, usually
    (`experiments.loop.NonFiniteLoss: ...`), rather than Sacred's `Failed after` line."""
    try:
        lines = [
            line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "no output"
    errors = [line for line in lines if says_what_failed(line)]
    ends = [line for line in lines if SACRED_FAILED.match(line)]
    return (errors or ends or lines or ["no output"])[-1]


# A traceback's last line, `package.module.Name: message`, and Sacred's own closing line.
EXCEPTION_LINE = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Z]\w*: \S")
SACRED_FAILED = re.compile(r"ERROR - \S+ - Failed after ")


def says_what_failed(line: str) -> bool:
    if SACRED_FAILED.match(line):
        return False
    name = line.split(":", 1)[0]
    return (
        line.startswith(("error:", "ERROR"))
        or name.endswith(("Error", "Exception"))
        or EXCEPTION_LINE.match(line) is not None
    )
