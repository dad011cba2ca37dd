"""A local sweep that claims each config before its run starts (observers/claims.py), so two
launchers never start one config twice, and whose runs inherit their claim's lock."""

from __future__ import annotations

import os
import sys

from experiments.sweeps.local import LocalSweep, Running
from experiments.sweeps.record import Job
from ingredients.processes import this_process
from observers.claims import SweepClaims
from observers.location import StoreLocation


def claim_jobs(location: StoreLocation, sweep_id: str, jobs: list[Job]) -> tuple[list[Job], dict]:
    """The jobs this launcher claimed, and {config index: claim name}; a config another live
    launcher holds is left out with a note."""
    claims, me = SweepClaims(location, sweep_id), this_process()
    taken, names = [], {}
    for job in jobs:
        name = claims.take(job.index, job.after, me)
        if name is None:
            print(
                f"config {job.index}: being started or run by another launcher; left alone",
                file=sys.stderr,
            )
            continue
        taken.append(job)
        names[job.index] = name
    return taken, names


class ClaimingSweep(LocalSweep):
    """LocalSweep whose runs inherit the lock of their config's claim and are named in it."""

    names: dict[int, str] = {}

    def hold(self, names: dict[int, str]) -> ClaimingSweep:
        self.names, self.claims = names, SweepClaims(self.location, self.record.id)
        self.locks: dict[int, int] = {}
        return self

    def inherited(self, job: Job) -> tuple[int, ...]:
        self.locks[job.index] = self.claims.lock_for_run(self.names[job.index])
        return (self.locks[job.index],)

    def start(self, job: Job, attempt: int) -> Running:
        try:
            running = super().start(job, attempt)
        finally:  # a fresh process holds the lock now (or nobody, if it failed to start); a
            # warm run inherits none: it is named in the claim below, by pid and start time
            lock = self.locks.pop(job.index, None)
            if lock is not None:
                os.close(lock)
        self.claims.add(self.names[job.index], [this_process(), this_process(running.process.pid)])
        return running
