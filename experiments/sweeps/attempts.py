"""A sweep's runs read back from the store: which config each attempt ran and how it ended, and
what is left to do. The store is the only truth: nothing is kept elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.sweeps.record import Job, SweepRecord
from observers.liveness import DEAD, status_now
from observers.location import StoreLocation
from observers.store import RecordError, open_store

# How a run ended that --resume continues from its checkpoint (DEAD: killed, its record says
# RUNNING), for a sweep's configs and a search's trials alike.
CONTINUABLE = ("INTERRUPTED", "TIMEOUT", DEAD)


@dataclass
class Attempt:
    """One recorded run of a sweep's config."""

    run_id: int
    index: int
    status: str
    checkpoint: bool  # its last.pt is recorded, so it can be continued
    heartbeat: str | None = None  # run.json's last heartbeat (ISO text or a datetime)

    def beating(self) -> bool:
        """RUNNING and not known to be gone (observers/liveness.py: its process on this host, a
        recent heartbeat elsewhere): a DEAD run is never left alone as if it were running."""
        return self.status == "RUNNING"


def sweep_attempts(location: StoreLocation, sweep_id: str) -> dict[int, list[Attempt]]:
    """Every run of the sweep in the store, by config index, oldest first."""
    store = open_store(location)
    attempts: dict[int, list[Attempt]] = {}
    for run_id in store.run_ids():
        try:
            run = store.run(run_id)
        except RecordError:
            continue  # starting right now, or damaged: not a finished attempt either way
        meta = run.get("meta") if isinstance(run, dict) else None
        member = meta.get("sweep") if isinstance(meta, dict) else None
        if not isinstance(member, dict) or member.get("id") != sweep_id:
            continue
        index = member.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            continue  # damaged: not an attempt at any config
        try:
            info = store.info(run_id)
        except RecordError:
            info = {}
        records = info.get("checkpoints") if isinstance(info, dict) else None
        checkpoint = isinstance(records, dict) and "last.pt" in records
        status = status_now(run)  # RUNNING whose process is gone: DEAD
        attempts.setdefault(index, []).append(
            Attempt(
                run_id,
                index,
                status if isinstance(status, str) else "DAMAGED",
                checkpoint,
                run.get("heartbeat"),
            )
        )
    return attempts


def jobs_to_do(
    record: SweepRecord, attempts: dict[int, list[Attempt]], busy: set[int]
) -> tuple[list[Job], list[str]]:
    """Jobs for every config not yet completed, and a line per config left alone or continued."""
    jobs, notes = [], []
    for index in range(len(record.configs)):
        latest = (attempts.get(index) or [None])[-1]
        fresh = record.fresh_job(index)
        fresh.after = latest.run_id if latest else None
        if latest is None and index in busy:  # its Slurm task is still queued
            notes.append(f"config {index}: its task is still waiting in Slurm's queue; left alone")
        elif latest is None:
            jobs.append(fresh)
        elif latest.status == "COMPLETED":
            continue
        elif index in busy or latest.beating():
            notes.append(
                f"config {index}: run {latest.run_id} is still {latest.status}; left alone"
            )
        elif latest.status in CONTINUABLE and latest.checkpoint:
            notes.append(f"config {index}: continuing run {latest.run_id} from its checkpoint")
            jobs.append(
                Job(index, [f"resume={latest.run_id}"], resumes=latest.run_id, after=latest.run_id)
            )
        else:
            notes.append(
                f"config {index}: run {latest.run_id} was {latest.status}; running it again"
            )
            jobs.append(fresh)
    return jobs, notes
