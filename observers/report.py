"""Runs as tables for people: the ls command."""

from __future__ import annotations

from observers.store import RecordError, open_store


def ls_command(args) -> int:
    store = open_store(args.store)
    rows = []
    for run_id in store.run_ids():
        try:
            run = store.run(run_id)
        except RecordError:
            rows.append((run_id, "DAMAGED", "", ""))
            continue
        if args.status and run.get("status") != args.status:
            continue
        result = run.get("result")
        rows.append((run_id, run.get("status", "?"), run.get("start_time", "")[:19], result))
    if args.last:
        rows = rows[-args.last:]
    print(f"{'id':>4}  {'status':<11} {'started':<19}  result")
    for run_id, status, started, result in rows:
        print(f"{run_id:>4}  {status:<11} {started:<19}  {'' if result is None else result}")
    return 0
