"""Configs claimed before their run starts (observers/claims.py), so no two launchers ever start
one config twice: a local sweep, whose runs inherit their claim's lock, and a Slurm task, which
claims its config on the node when it starts (sweeps/slurm.py). A search's resume claims the
trials it continues the same way (a trial's index is its number; sweeps/tuner.py)."""

from __future__ import annotations

import os
import sys
from typing import Self

from experiments.sweeps.attempts import sweep_attempts
from experiments.sweeps.local import LocalSweep, Running
from experiments.sweeps.record import Job
from ingredients.processes import this_process
from observers.claims import SweepClaims
from observers.location import StoreLocation


def claim_jobs(
    location: StoreLocation, sweep_id: str, jobs: list[Job], label: str = "config"
) -> tuple[list[Job], dict]:
    """The jobs this launcher claimed, and {config index: claim name}; a config (a search's
    trial: `label`) another live launcher holds, or one run since its job was planned, is left
    out with a note."""
    if not jobs:
        return [], {}  # (a new search's workers: nothing to reach MongoDB for)
    claims, me = SweepClaims(location, sweep_id), this_process()
    taken, names = [], {}
    for job in jobs:
        name = claims.take(job.index, job.after, me)
        if name is None:
            print(
                f"{label} {job.index}: being started or run by another launcher; left alone",
                file=sys.stderr,
            )
            continue
        taken.append(job)
        names[job.index] = name
    moved = moved_on(location, sweep_id, taken) if taken else set()
    for index in sorted(moved):
        print(
            f"{label} {index}: run since this launch was planned (by another launcher); left alone",
            file=sys.stderr,
        )
    return [job for job in taken if job.index not in moved], {
        index: name for index, name in names.items() if index not in moved
    }


def moved_on(location: StoreLocation, sweep_id: str, jobs: list[Job]) -> set[int]:
    """Configs whose latest run is no longer the one their job was planned after: a launcher
    whose claim has ended ran them in between (a Slurm task may wait hours in the queue, and a
    claim whose holders are gone is taken over), so starting them would run them twice."""
    attempts = sweep_attempts(location, sweep_id)
    latest = {index: runs[-1].run_id for index, runs in attempts.items() if runs}
    return {job.index for job in jobs if latest.get(job.index) != job.after}


class ClaimingSweep(LocalSweep):
    """LocalSweep whose claimed jobs' runs inherit the lock of their claim and are named in it
    (a search's new trials are claimed as they are asked: `claim`)."""

    names: dict[int, str] = {}
    claims: SweepClaims | None = None  # only when there are claims (MongoDB: a connection)

    def hold(self, names: dict[int, str]) -> Self:
        self.names = dict(names)
        self.claims = SweepClaims(self.location, self.record.id) if names else None
        self.locks: dict[int, int] = {}
        return self

    def claim(self, job: Job) -> bool:
        """Claim a job that has no run yet (a trial just asked from the study), so a resume
        elsewhere that finds it RUNNING without a run leaves it alone while it is held here, and
        checks whether it ran (moved_on) once it is taken over; False when another holds it."""
        if self.claims is None:
            self.claims = SweepClaims(self.location, self.record.id)
        name = self.claims.take(job.index, None, this_process())
        if name is not None:
            self.names[job.index] = name
        return name is not None

    def claim_of(self, job: Job) -> tuple[SweepClaims, str] | None:
        """The claims and the name of the claim a job holds, or None (a new trial)."""
        name = self.names.get(job.index)
        return None if name is None or self.claims is None else (self.claims, name)

    def inherited(self, job: Job) -> tuple[int, ...]:
        held = self.claim_of(job)
        lock = None if held is None else held[0].lock_for_run(held[1])
        if lock is None:
            return ()
        self.locks[job.index] = lock
        return (lock,)

    def start(self, job: Job, attempt: int) -> Running:
        try:
            running = super().start(job, attempt)
        finally:  # a fresh process holds the lock now (or nobody, if it failed to start); a
            # warm run inherits none: it is named in the claim below, by pid and start time
            lock = self.locks.pop(job.index, None)
            if lock is not None:
                os.close(lock)
        held = self.claim_of(job)
        if held is not None:
            held[0].add(held[1], [this_process(), this_process(running.process.pid)])
        return running
