"""One run's row of load_runs, read from its record: the record columns, the flattened config,
the metric summaries, a note for anything that could not be read; and the typed frame of rows.
Shared by the live read (observers/tables.py) and the file store's index (observers/index.py)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

import pandas as pd

from ingredients.schema import is_number
from observers.files import STALE_HEARTBEAT, record_time
from observers.liveness import DEAD, process_gone
from observers.store import RecordError, RunStore, summarize_metrics

DAMAGED = "DAMAGED"  # status of a run whose run.json cannot be read
RECORD_COLUMNS = {  # the columns every runs table starts with, and their dtypes
    "experiment": "str",
    "status": "str",
    "start_time": "datetime64[us, UTC]",
    "stop_time": "datetime64[us, UTC]",
    "heartbeat": "datetime64[us, UTC]",
    "duration": "timedelta64[us]",
    "host": "str",
    "processes": "Int64",  # world size of a run trained under torchrun; 1 for one process
    "git_commit": "str",
    "git_dirty": "boolean",
    "result": "float64",
    "note": "str",
    "sweep": "str",  # the sweep a run belongs to (run.json's meta.sweep), and its config's index
    "sweep_index": "Int64",
    "trial": "Int64",  # a search's trial number (meta.sweep.trial), and the epoch it was pruned at
    "pruned_epoch": "Int64",
}
SUMMARY_STATS = ("last", "min", "max")
UTC_SUFFIX = "+00:00"  # the offset every record writes its times with


def complete_row(store: RunStore, row: dict, summary) -> None:
    """Add what a record row lacks to be load_runs' row: metric summaries, the pruned epoch."""
    add_summaries(row, summary, store)
    row["pruned_epoch"] = _pruned_epoch(store, row)


def _pruned_epoch(store: RunStore, row: dict) -> int | None:
    """The epoch a PRUNED run stopped after (its info's `pruned`, experiments/trial.py)."""
    if row.get("status") != "PRUNED":
        return None  # only pruned runs have it: no info read for the others
    try:
        pruned = store.info(row["run_id"]).get("pruned")
    except Exception:  # noqa: BLE001 - one bad record never stops the listing
        return None
    epoch = pruned.get("epoch") if isinstance(pruned, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def status_names(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def matches(row: dict, statuses, experiments, config: dict) -> bool:
    if statuses is not None and row["status"] not in statuses:
        return False
    if experiments is not None and row.get("experiment") not in experiments:
        return False
    return all(
        same_value(row.get(f"config.{key}", _MISSING), value) for key, value in config.items()
    )


_MISSING = object()


def same_value(recorded, wanted) -> bool:
    if isinstance(wanted, list):
        wanted = _hashable(wanted)
    return recorded is not _MISSING and recorded == wanted


def check_config_keys(store: RunStore, rows: list[dict], wanted: dict) -> None:
    """Tell a filter's unknown config key apart from a value no run has (runs whose config
    could not be read add no keys: they only make the hint less complete)."""
    known = {
        key.removeprefix("config.") for row in rows for key in row if key.startswith("config.")
    }
    for key in wanted:
        if known and key not in known:
            raise ValueError(
                f"unknown config key '{key}' in the filter (no run in {store.location} has it)"
            )


def record_row(store: RunStore, run_id: int) -> dict:
    """What run.json and config hold about one run; a part that cannot be read becomes a note."""
    row: dict = {"run_id": run_id}
    notes = []
    try:
        run = store.run(run_id)
        row.update(_record_fields(run))
        if "odd" in row:
            notes.append(row.pop("odd"))
    except Exception as error:  # noqa: BLE001 - one bad record never stops the listing
        row["status"] = DAMAGED
        notes.append(describe_error(error, store, run_id))
    try:
        config = store.config(run_id)
        if not isinstance(config, dict):
            raise RecordError(f"config.json holds a {type(config).__name__}, not an object")
        row.update({f"config.{k}": v for k, v in flatten_config(config).items()})
    except Exception as error:  # noqa: BLE001
        notes.append(describe_error(error, store, run_id))
    if row.get("status") == DEAD:
        notes.append(_dead_note(row))
    row["note"] = "; ".join(dict.fromkeys(notes)) or None
    return row


def describe_error(error: Exception, store: RunStore, run_id: int) -> str:
    """Why part of a run could not be read, without the run id and store path around it."""
    if not isinstance(error, RecordError):
        return f"{type(error).__name__}: {error}"
    return str(error).removeprefix(f"run {run_id}: ").replace(f"{store.location}/{run_id}/", "")


def _record_fields(run: dict) -> dict:
    """The record columns from run.json; a field of an unexpected type is read as missing and
    named in a note, so one odd record never hides the rest of it."""
    if not isinstance(run, dict):
        raise RecordError(f"run.json holds a {type(run).__name__}, not an object")
    odd: list[str] = []
    experiment, host = _field(run, "experiment", dict, odd), _field(run, "host", dict, odd)
    repositories = _field(experiment or {}, "repositories", list, odd) or [{}]
    repository = repositories[0] if isinstance(repositories[0], dict) else {}
    start, stop, beat = (
        _timestamp_field(run, key, odd) for key in ("start_time", "stop_time", "heartbeat")
    )
    end = stop or beat
    member = _field(_field(run, "meta", dict, odd) or {}, "sweep", dict, odd) or {}
    fields = {
        "experiment": _field(experiment or {}, "name", str, odd),
        "status": DEAD if process_gone(run) else _field(run, "status", str, odd) or DAMAGED,
        "start_time": start,
        "stop_time": stop,
        "heartbeat": beat,
        "duration": end - start if start and end else None,
        "host": _field(host or {}, "hostname", str, odd),
        "processes": _processes(run),
        "git_commit": _field(repository, "commit", str, odd),
        "git_dirty": _field(repository, "dirty", bool, odd),
        "result": _result(run.get("result")),
        "sweep": _field(member, "id", str, odd),  # which sweep and config (experiments/sweeps/)
        "sweep_index": _field(member, "index", int, odd),
        "trial": _field(member, "trial", int, odd),
    }
    if odd:
        fields["odd"] = f"run.json: {', '.join(odd)} of an unexpected type, read as missing"
    return fields


def _processes(run: dict) -> int:
    """The world size of a run trained under torchrun (run.json's meta), else 1."""
    meta = run.get("meta")
    job = meta.get("distributed") if isinstance(meta, dict) else None
    size = job.get("world_size") if isinstance(job, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1


def _field(record: dict, key: str, kind: type, odd: list[str]):
    """record[key] when it has the expected type; None (noted in odd) when it has another."""
    value = record.get(key)
    if value is None or isinstance(value, kind):
        return value
    odd.append(key)
    return None


def _timestamp_field(run: dict, key: str, odd: list[str]) -> dt.datetime | None:
    try:
        return record_time(run.get(key))
    except (TypeError, ValueError, AttributeError):
        odd.append(key)
        return None


def _result(value) -> float | None:
    """The run's return value as a number, when it is one (Sacred allows anything)."""
    return float(value) if is_number(value) else None


def _dead_note(row: dict) -> str:
    """Why a run recorded as RUNNING is shown DEAD (observers/liveness.py)."""
    beat = row.get("heartbeat")
    now = dt.datetime.now(dt.UTC)
    if beat is not None and now - beat > STALE_HEARTBEAT:
        return f"recorded RUNNING, no heartbeat since {beat:%Y-%m-%d %H:%M} UTC, probably dead"
    return "recorded RUNNING, but its process on this host has ended"


def flatten_config(config: dict, prefix: str = "") -> dict:
    """{dotted.key: value} of a nested config; lists become tuples so columns stay hashable."""
    flat = {}
    for key, value in config.items():
        if key == "__doc__":
            continue
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _hashable(value)
    return flat


def _hashable(value):
    """Lists as tuples; a dict that cannot be flattened (empty, or inside a list) as JSON text."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def metric_summaries(store: RunStore, run_ids: list[int]) -> dict[int, dict | Exception]:
    """Per run, summarize_metrics of its metrics, from the store's fast path when it has one."""
    fast = getattr(store, "metric_summaries", None)
    if fast is not None:
        return fast(run_ids)
    summaries: dict[int, dict | Exception] = {}
    for run_id in run_ids:
        try:
            summaries[run_id] = summarize_metrics(store.metrics(run_id))
        except Exception as error:  # noqa: BLE001 - one bad record never stops the listing
            summaries[run_id] = error
    return summaries


def add_summaries(row: dict, summary: dict | Exception, store: RunStore) -> None:
    if isinstance(summary, Exception):
        notes = [row["note"], describe_error(summary, store, row["run_id"])]
        row["note"] = "; ".join(dict.fromkeys(filter(None, notes)))
        return
    for name, stats in summary.items():
        for stat in SUMMARY_STATS:
            row[f"{name}.{stat}"] = stats[stat]


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """The runs table with fixed leading columns and dtypes, then config, then metrics."""
    frame = pd.DataFrame.from_records(rows, columns=_column_order(rows))
    frame = frame.set_index("run_id")
    frame.index = frame.index.astype("int64")
    for column, dtype in RECORD_COLUMNS.items():
        frame[column] = typed_column(frame[column], dtype)
    for column in frame.columns:
        if column.rsplit(".", 1)[-1] in SUMMARY_STATS and not column.startswith("config."):
            frame[column] = frame[column].astype("float64")
    return frame


def _column_order(rows: list[dict]) -> list[str]:
    keys = {key for row in rows for key in row}
    config = sorted(k for k in keys if k.startswith("config."))
    names = sorted(
        {
            k.rsplit(".", 1)[0]
            for k in keys
            if k not in RECORD_COLUMNS and k != "run_id" and not k.startswith("config.")
        }
    )
    metrics = [f"{name}.{stat}" for name in names for stat in SUMMARY_STATS]
    return ["run_id", *RECORD_COLUMNS, *config, *metrics]


def typed_column(column: pd.Series, dtype: str) -> pd.Series:
    if dtype.startswith(("datetime64", "timedelta64")):
        converted = (
            pd.to_timedelta(column)
            if dtype.startswith("timedelta")
            else pd.to_datetime(column, utc=True)
        )
        return converted.astype(dtype)
    if dtype == "str":
        return column.astype(object).where(column.notna(), None).astype("str")
    return column.astype(dtype)


# --------------------------------------------------------------------------- load_metrics
