"""A sweep's runs read back from the store: which config each attempt ran and how it ended, and
what is left to do. The store is the only truth: nothing is kept elsewhere."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from experiments.sweeps.record import Job, SweepRecord
from observers.files import STALE_HEARTBEAT, record_time
from observers.location import StoreLocation
from observers.store import RecordError, open_store


@dataclass
class Attempt:
    """One recorded run of a sweep's config."""

    run_id: int
    index: int
    status: str
    checkpoint: bool  # its last.pt is recorded, so it can be continued
    heartbeat: str | None = None  # run.json's last heartbeat (ISO text or a datetime)

    def beating(self) -> bool:
        """RUNNING with a heartbeat in the last two minutes: its process is probably alive."""
        if self.status != "RUNNING":
            return False
        try:
            beat = record_time(self.heartbeat)
        except (TypeError, ValueError):
            return False
        return beat is not None and dt.datetime.now(dt.UTC) - beat < STALE_HEARTBEAT


def sweep_attempts(location: StoreLocation, sweep_id: str) -> dict[int, list[Attempt]]:
    """Every run of the sweep in the store, by config index, oldest first."""
    store = open_store(location)
    attempts: dict[int, list[Attempt]] = {}
    for run_id in store.run_ids():
        try:
            run = store.run(run_id)
        except RecordError:
            continue  # starting right now, or damaged: not a finished attempt either way
        member = (run.get("meta") or {}).get("sweep")
        if not isinstance(member, dict) or member.get("id") != sweep_id:
            continue
        index = member.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            continue  # damaged: not an attempt at any config
        try:
            checkpoint = "last.pt" in (store.info(run_id).get("checkpoints") or {})
        except RecordError:
            checkpoint = False
        status = run.get("status")
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
        if latest is None:
            jobs.append(fresh)
        elif latest.status == "COMPLETED":
            continue
        elif index in busy or latest.beating():
            notes.append(
                f"config {index}: run {latest.run_id} is still {latest.status}; left alone"
            )
        elif latest.status in ("INTERRUPTED", "RUNNING", "TIMEOUT") and latest.checkpoint:
            notes.append(f"config {index}: continuing run {latest.run_id} from its checkpoint")
            jobs.append(Job(index, [f"resume={latest.run_id}"], resumes=latest.run_id))
        else:
            notes.append(
                f"config {index}: run {latest.run_id} was {latest.status}; running it again"
            )
            jobs.append(fresh)
    return jobs, notes
