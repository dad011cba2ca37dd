"""Recorded runs as pandas tables: one row per run, metrics in long form, side-by-side comparisons.

Everything here goes through the RunStore protocol (observers.store), so a file store and
MongoDB give the same columns and dtypes. A run whose record is partly missing or damaged still
gets its row, with what could be read and a `note` saying what could not.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from observers.records import as_float, run_id_of
from observers.rows import (
    RECORD_COLUMNS,
    UTC_SUFFIX,
    check_config_keys,
    complete_row,
    describe_error,
    matches,
    metric_summaries,
    record_row,
    runs_frame,
    status_names,
)
from observers.store import FileRunStore, RecordError, RunStore, open_store


def as_store(store: str | os.PathLike | RunStore | None) -> RunStore:
    """A RunStore as is, or the store a path or mongodb:// URL names (default: open_store's)."""
    if hasattr(store, "run_ids") and hasattr(store, "run"):
        return store
    return open_store(store)


# --------------------------------------------------------------------------- load_runs


def load_runs(
    store: str | os.PathLike | RunStore | None = None,
    *,
    run_ids: Iterable[int] | None = None,
    status: str | Iterable[str] | None = None,
    experiment: str | Iterable[str] | None = None,
    sweep: str | None = None,
    **config,
) -> pd.DataFrame:
    """One row per run, indexed by run id: record, `config.<dotted.key>`, metric summaries.

    Filters: status, experiment (a name or several), sweep (its id), and config values by dotted key, e.g.
    `load_runs("runs", lr=0.01, **{"optimizer.name": "sgd"})` (`optimizer__name=` works too)."""
    store = as_store(store)
    wanted = {key.replace("__", "."): value for key, value in config.items()}
    statuses, experiments = status_names(status), status_names(experiment)
    if run_ids is not None:
        run_ids = [run_id_of(run_id) for run_id in run_ids]
    if isinstance(store, FileRunStore) and store.cache:  # finished runs from the index
        from observers.index import indexed_runs

        return indexed_runs(store, run_ids, statuses, experiments, sweep, wanted)[0]
    if hasattr(store, "for_rows"):  # MongoDB: finished runs from its summary cache
        from observers.mongo_index import cached_runs

        return cached_runs(store, run_ids, statuses, experiments, sweep, wanted)[0]
    ids = store.run_ids() if run_ids is None else _known_ids(store, run_ids)
    all_rows = [record_row(store, run_id) for run_id in ids]
    rows = [
        row
        for row in all_rows
        if matches(row, statuses, experiments, wanted)
        and (sweep is None or row.get("sweep") == str(sweep))
    ]
    if wanted and not rows:
        check_config_keys(store, all_rows, wanted)
    summaries = metric_summaries(store, [row["run_id"] for row in rows])
    for row in rows:
        complete_row(store, row, summaries[row["run_id"]])
    return runs_frame(rows)


def runs_page(
    store: str | os.PathLike | RunStore | None,
    last: int | None,
    *,
    status: str | Iterable[str] | None = None,
    sweep: str | None = None,
) -> tuple[pd.DataFrame, int]:
    """The last `last` matching runs (all when None) and how many match; a file store's index
    answers the filters before any run is read, so the cost follows the page (ls)."""
    store = as_store(store)
    if isinstance(store, FileRunStore) and store.cache:
        from observers.index import indexed_runs

        return indexed_runs(store, None, status_names(status), None, sweep, {}, last)
    if hasattr(store, "for_rows"):  # MongoDB: finished runs from its summary cache
        from observers.mongo_index import cached_runs

        return cached_runs(store, None, status_names(status), None, sweep, {}, last)
    if status is None and sweep is None:  # only the page's runs are read
        ids = store.run_ids()
        page = load_runs(store, run_ids=ids[-last:] if last else ids)
        return page, len(ids)
    runs = load_runs(store, status=status, sweep=sweep)
    return (runs.tail(last) if last else runs), len(runs)


def load_metrics(
    store: str | os.PathLike | RunStore | None = None,
    run_ids: Iterable[int] | None = None,
    names: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """Metrics in long form: run_id, metric, step, value, timestamp (one row per point).

    A run whose metrics cannot be read is left out with a warning naming it."""
    store = as_store(store)
    ids = store.run_ids() if run_ids is None else _known_ids(store, run_ids)
    wanted = status_names(names)
    columns: dict[str, list] = {
        "run_id": [],
        "metric": [],
        "counts": [],
        "step": [],
        "value": [],
        "timestamp": [],
    }
    for run_id in ids:
        try:
            metrics = store.metrics(run_id)
        except Exception as error:  # noqa: BLE001 - one bad record never stops the others
            warnings.warn(
                f"run {run_id} left out: {describe_error(error, store, run_id)}", stacklevel=2
            )
            continue
        for name in sorted(metrics):
            if wanted is None or name in wanted:
                _append_series(columns, run_id, name, metrics[name])
    return _metrics_frame(columns)


def _known_ids(store: RunStore, run_ids: Iterable[int]) -> list[int]:
    ids = [run_id_of(run_id) for run_id in run_ids]
    present = set(store.run_ids())
    for run_id in ids:
        if run_id not in present:
            raise RecordError(f"no run {run_id} in {store.location}")
    return ids


def _append_series(columns: dict[str, list], run_id: int, name: str, series: dict) -> None:
    steps, values, times = series["steps"], series["values"], series["timestamps"]
    count = min(len(steps), len(values), len(times))  # a torn record keeps its whole points
    columns["run_id"].append(run_id)
    columns["metric"].append(name)
    columns["counts"].append(count)
    columns["step"] += steps[:count]
    columns["value"] += values[:count]
    columns["timestamp"] += times[:count]


def _metrics_frame(columns: dict[str, list]) -> pd.DataFrame:
    counts = np.asarray(columns["counts"], dtype=np.int64)
    return pd.DataFrame(
        {
            "run_id": np.repeat(np.asarray(columns["run_id"], dtype=np.int64), counts),
            "metric": pd.Series(
                np.repeat(np.asarray(columns["metric"], dtype=object), counts), dtype="str"
            ),
            "step": _steps(columns["step"]),
            "value": _floats(columns["value"]),
            "timestamp": _datetimes(columns["timestamp"]),
        }
    )


def _steps(steps: list) -> np.ndarray | pd.Series:
    """Steps as int64; a record with a step that is no 64-bit integer (planted or damaged) gets
    pandas' nullable Int64 with that step missing, rather than failing the whole table."""
    try:
        return np.asarray(steps, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        fits = [s if isinstance(s, int) and -(2**63) <= s < 2**63 else None for s in steps]
        return pd.array(fits, dtype="Int64")


def _floats(values: list) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # no number, or too large: NaN
        return np.array([as_float(v) for v in values], np.float64)


def _datetimes(values: list) -> pd.DatetimeIndex:
    """UTC datetimes of ISO text or datetimes (naive ones are UTC); numpy's parser is fast, so
    text written in UTC ('+00:00') goes to it without its offset; pandas handles the rest."""
    if values and all(isinstance(v, str) and v.endswith(UTC_SUFFIX) for v in values):
        values = [v[: -len(UTC_SUFFIX)] for v in values]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return pd.DatetimeIndex(np.asarray(values, dtype="datetime64[us]")).tz_localize("UTC")
        except (TypeError, ValueError, DeprecationWarning, UserWarning):
            pass
    parsed = pd.to_datetime(
        pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce"
    )
    return pd.DatetimeIndex(parsed).as_unit("us")


# --------------------------------------------------------------------------- compare


def compare(
    store: str | os.PathLike | RunStore | None,
    run_ids: Iterable[int],
    metrics: str | Iterable[str] | None = None,
) -> pd.DataFrame:
    """One row per run: status, the config keys whose values differ between the runs, the
    metric summaries (all, or only the named metrics) and result."""
    store = as_store(store)
    ids = list(dict.fromkeys(_known_ids(store, run_ids)))
    runs = load_runs(store, run_ids=ids)
    wanted = status_names(metrics)
    config = differing_config(runs)
    metric_columns = [
        c
        for c in runs.columns[len(RECORD_COLUMNS) :]
        if not c.startswith("config.") and (wanted is None or c.rsplit(".", 1)[0] in wanted)
    ]
    return runs.loc[ids, ["status", *config, *metric_columns, "result", "note"]]


def differing_config(runs: pd.DataFrame) -> list[str]:
    """The config.* columns whose values are not the same in every row (missing counts as a
    value), most telling first: top-level keys, then by how many values they take; seeds last."""
    config = [c for c in runs.columns if c.startswith("config.")]
    readable = runs[
        runs[config].notna().any(axis=1)
    ]  # a run whose config is unreadable tells nothing
    distinct = {c: readable[c].map(_comparable).nunique() for c in config}

    def priority(column: str) -> tuple:
        key = column.removeprefix("config.")
        return ("seed" in key.rsplit(".", 1)[-1], key.count("."), -distinct[column], key)

    return sorted((c for c, n in distinct.items() if n > 1), key=priority)


def _comparable(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<missing>"
    return repr(value)
