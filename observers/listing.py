"""`reprolab ls` on a store that holds no runs, answered without pandas or torch (importing them
would take longer than the answer); any other listing is observers.report's."""

from __future__ import annotations

from observers.exit_codes import ExitCode
from observers.store import open_store


def ls_command(args) -> int:
    """'no runs in <store>' when the store is empty and no filter needs checking, else the table."""
    filtered = any(
        getattr(args, option, None) is not None for option in ("status", "last", "sweep")
    )
    store = open_store(args.store)
    if filtered or store.has_runs():
        from observers.report import ls_command as list_runs

        return list_runs(args)
    print(f"no runs in {store.location}")
    return ExitCode.OK
