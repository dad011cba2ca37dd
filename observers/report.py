"""Runs as text for people: the ls, show, compare and export commands, each fitting 80 columns."""

from __future__ import annotations

import datetime as dt
import numbers
import os
import sys
import textwrap
import warnings
from pathlib import Path

import pandas as pd

from observers.evaluations import evaluation_lines
from observers.exit_codes import ExitCode
from observers.files import replacing
from observers.location import StoreLocation
from observers.plots import abbreviate, format_value, plot_metric, short_key
from observers.records import is_run_id
from observers.rows import RECORD_COLUMNS, describe_error, flatten_config
from observers.store import RecordError, RunStore, open_store, resolve_run
from observers.tables import compare, differing_config, load_runs, runs_page

WIDTH = 80  # every line printed fits a standard terminal
CELL = 14  # widest config cell in ls before it is cut
PATH_CELL = 24  # widest path cell in ls: room for a file name after the cut
GAP = "  "
KNOWN_STATUSES = (
    "QUEUED",
    "RUNNING",
    "COMPLETED",
    "PRUNED",  # a search's trial stopped by its pruner (experiments/trial.py)
    "FAILED",
    "INTERRUPTED",
    "TIMEOUT",
    "DAMAGED",
    "DEAD",  # recorded RUNNING, its process gone (observers/liveness.py)
)
DEFAULT_METRIC = "val_accuracy"
DEFAULT_PAGE = 20  # runs ls shows without --last or --all


# --------------------------------------------------------------------------- text helpers


def fit(text: str, width: int = WIDTH) -> str:
    """text cut to width characters, marked with an ellipsis when cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def fit_end(text: str, width: int) -> str:
    """text cut to width characters from the left, so a path keeps its end (the file name)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def is_path(text: str) -> bool:
    return "/" in text or os.sep in text


def fit_value(text: str, width: int) -> str:
    """A value cut to width: a path keeps its end (the file name), other text its beginning."""
    return fit_end(text, width) if is_path(text) else fit(text, width)


def render(columns: list[tuple[str, str, list[str]]]) -> list[str]:
    """Lines of a table from (header, align '<' or '>', cells) columns."""
    widths = [max(len(header), *(len(c) for c in cells)) for header, _, cells in columns]
    rows = [[header for header, _, _ in columns]]
    rows += [list(cells) for cells in zip(*(cells for _, _, cells in columns))]
    return [
        GAP.join(
            f"{cell:{align}{width}}" for cell, (_, align, _), width in zip(row, columns, widths)
        ).rstrip()
        for row in rows
    ]


def table_width(columns: list[tuple[str, str, list[str]]]) -> int:
    return sum(max(len(h), *(len(c) for c in cells)) for h, _, cells in columns) + len(GAP) * (
        len(columns) - 1
    )


def when(timestamp) -> str:
    """A start time, in local time, the way `ls -l` shows dates (year only when not this one)."""
    if pd.isna(timestamp):
        return "-"
    local = timestamp.tz_convert(dt.datetime.now().astimezone().tzinfo)
    if local.year == dt.datetime.now().year:
        return local.strftime("%b %d %H:%M")
    return local.strftime("%b %d  %Y")


def took(duration) -> str:
    """A duration as H:MM:SS, or in tenths of a second below a minute (short runs are common)."""
    if pd.isna(duration) or duration.total_seconds() < 0:
        return "-"
    if duration.total_seconds() < 60:
        return f"{duration.total_seconds():.1f}s"
    seconds = int(duration.total_seconds())
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def utc(timestamp) -> str:
    return "-" if pd.isna(timestamp) else f"{timestamp:%Y-%m-%d %H:%M:%S} UTC"


def size(n: float) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    units = ["B", "KiB", "MiB", "GiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


# --------------------------------------------------------------------------- ls


def ls_command(args) -> int:
    """Recent runs as a table: id, status, start, duration, varying config, main metric."""
    store = open_store(args.store)
    status = args.status.upper() if args.status else None
    if args.last is not None and args.last < 1:
        raise ValueError(f"--last must be 1 or more, not {args.last}")
    page = args.last or (None if getattr(args, "all", False) else DEFAULT_PAGE)
    sweep = getattr(args, "sweep", None)
    runs, total = runs_page(store, page, status=status, sweep=sweep)  # filters before reading
    print_skipped(store)
    if runs.empty:
        if status and status not in KNOWN_STATUSES:
            raise ValueError(f"unknown status '{args.status}' (one of {', '.join(KNOWN_STATUSES)})")
        of_sweep = f" of sweep {args.sweep}" if getattr(args, "sweep", None) else ""
        print(f"no {status + ' ' if status else ''}runs{of_sweep} in {store.location}")
        return ExitCode.OK
    print("\n".join(ls_lines(runs)))
    if not args.last and total > len(runs):  # a page of a big store, as `git log` pages
        print(f"... {total - len(runs):,} earlier runs; --all lists every run")
    return ExitCode.OK


SKIPPED_NOTES = 10  # entries named one by one; a store of thousands of odd names gets a count


def print_skipped(store: RunStore) -> None:
    """Notes on the store's entries that are not runs it lists (odd names, outside links)."""
    notes = sorted(getattr(store, "skipped", []))
    for note in notes[:SKIPPED_NOTES]:
        print(f"reprolab: note: {note}", file=sys.stderr)
    if len(notes) > SKIPPED_NOTES:
        print(
            f"reprolab: note: {len(notes) - SKIPPED_NOTES:,} more entries skipped, as those above",
            file=sys.stderr,
        )


def ls_lines(runs: pd.DataFrame) -> list[str]:
    """The ls table and its footnotes: notes of damaged runs, varying keys left out."""
    metric = "val_accuracy.max" if "val_accuracy.max" in runs.columns else "result"
    header = "val_acc.max" if metric == "val_accuracy.max" else metric
    marked = runs["note"].notna()
    fixed = [
        ("id", ">", [str(i) for i in runs.index]),
        ("status", "<", [s + ("*" if m else "") for s, m in zip(runs["status"], marked)]),
        ("started", "<", [when(t) for t in runs["start_time"]]),
        ("took", ">", [took(d) for d in runs["duration"]]),
    ]
    if "processes" in runs.columns and (runs["processes"].fillna(1) > 1).any():  # distributed runs
        fixed.append(
            ("procs", ">", [str(p) if p and p > 1 else "1" for p in runs["processes"].fillna(1)])
        )
    main = [(header, ">", [format_value(v) for v in runs[metric]])]
    config, left_out = fit_config_columns(runs, WIDTH - table_width(fixed + main) - len(GAP))
    lines = render(fixed + config + main)
    lines += [fit(f"* run {i}: {note}") for i, note in runs["note"][marked].items()]
    if left_out:
        lines += textwrap.wrap(
            f"also varying: {', '.join(left_out)}", WIDTH, subsequent_indent="  "
        )
    return lines


def fit_config_columns(runs: pd.DataFrame, room: int) -> tuple[list, list[str]]:
    """Columns of the config keys that vary, most telling first, as many as fit in room (each
    headed by its key, or its abbreviation when that is too wide); and the keys left out."""
    columns, left_out = [], []
    for column in differing_config(runs):
        key = short_key(column)
        texts = [format_value(v) for v in runs[column]]
        cells = [fit_value(t, PATH_CELL if is_path(t) else CELL) for t in texts]
        widest = max(map(len, cells))
        header = key if len(key) <= max(widest, 8) else abbreviate(key)
        width = max(len(header), widest) + len(GAP)
        if width <= room:
            columns.append((header, ">" if is_number_column(runs[column]) else "<", cells))
            room -= width
        else:
            left_out.append(key)
    return columns, left_out


def is_number_column(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


# --------------------------------------------------------------------------- show


def show_command(args) -> int:
    """One run: record summary, flattened config, metric summaries, artifacts, notes."""
    store, run_id = resolve_run(args.run, args.store)
    runs = load_runs(store, run_ids=[run_id])
    row = runs.loc[run_id]
    run, _ = read_part(store, "run", run_id)
    info, info_note = read_part(store, "info", run_id)
    config, _ = read_part(store, "config", run_id)
    run, info = as_dict(run), as_dict(info)
    config = config if isinstance(config, dict) else None
    print("\n".join(record_lines(run_id, row, run, info, config or {})))
    print("\n".join(config_lines(config)))
    print("\n".join(metric_lines(row)))
    print(
        "\n".join(
            readable(lambda: artifact_lines(store, run_id, run, info), ["artifacts: unreadable"])
        )
    )
    for line in readable(lambda: evaluation_lines(store, run_id), ["evaluations: unreadable"]):
        print(line)  # `reprolab evaluate` results (observers/evaluations.py)
    notes = [n for n in (row["note"], info_note) if isinstance(n, str)]
    for note in dict.fromkeys(notes):
        print(fit(f"note: {note}"))
    return ExitCode.OK


def read_part(store: RunStore, part: str, run_id: int):
    """One part of a record (run, config, info), or None and why it could not be read."""
    try:
        return getattr(store, part)(run_id), None
    except Exception as error:  # noqa: BLE001 - show what can be shown of a damaged run
        return None, describe_error(error, store, run_id)


def as_dict(value) -> dict:
    """A record part that is an object, or {} for one that is missing or of another type."""
    return value if isinstance(value, dict) else {}


def readable(text, unreadable="unreadable"):
    """text() of a record field, or a word saying it is unreadable when the record holds values
    of unexpected types there (a damaged or foreign record is shown with what can be read)."""
    try:
        return text()
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return unreadable


def record_lines(run_id: int, row: pd.Series, run: dict, info: dict, config: dict) -> list[str]:
    fields = [
        (name, readable(text))
        for name, text in [
            ("started", lambda: utc(row["start_time"])),
            ("stopped", lambda: utc(row["stop_time"])),
            ("heartbeat", lambda: utc(row["heartbeat"])),
            ("took", lambda: took(row["duration"])),
            ("host", lambda: host_text(run.get("host") or {})),
            ("git", lambda: git_text(row)),
            ("command", lambda: command_text(run)),
            ("rerun of", lambda: rerun_text(info.get("rerun_of"))),
            (
                "seed",
                lambda: format_value(
                    config.get("seed", (info.get("determinism") or {}).get("seed"))
                ),
            ),
            ("device", lambda: format_value(info.get("device"))),
            (
                "data",
                lambda: data_text((info.get("data") or {}).get("fingerprint") or {}, WIDTH - 14),
            ),
            ("result", lambda: format_value(row["result"])),
            ("best", lambda: best_text(info.get("best") or {})),
            ("final model", lambda: format_value(info.get("final_model_sha256"))[:16]),
            ("failure", lambda: failure_text(run.get("fail_trace"))),
        ]
    ]
    after_device = [name for name, _ in fields].index("device") + 1
    fields[after_device:after_device] = readable(
        lambda: distributed_fields(info.get("distributed")), [("distributed", "unreadable")]
    )
    title = "  ".join(
        filter(
            None,
            [
                f"run {run_id}",
                row["experiment"] if isinstance(row["experiment"], str) else None,
                row["status"],
            ],
        )
    )
    return [title] + [fit(f"  {name:<12}{text}") for name, text in fields if text not in ("-", "")]


def distributed_fields(job: dict | None) -> list[tuple[str, str]]:
    """A torchrun run: world size, nodes, backend, each rank's device and seed, the torchrun
    command, the lr scaling and a failing rank."""
    if not isinstance(job, dict):
        return []
    nodes = job.get("nodes", 1)
    fields = [
        (
            "distributed",
            f"{job.get('world_size')} processes on {nodes} "
            f"node{'s' if nodes != 1 else ''} ({job.get('backend')})",
        )
    ]
    fields += [
        (f"  rank {r.get('rank')}", f"{r.get('host')} {r.get('device')} seed {r.get('seed')}")
        for r in job.get("ranks") or []
    ]
    lr = job.get("lr") or {}
    if lr.get("scaling") == "linear":
        fields.append(
            ("  lr", f"{lr.get('configured')} x {job.get('world_size')} = {lr.get('effective')}")
        )
    if job.get("torchrun"):  # the interpreter, then torchrun's script and its arguments
        command = job["torchrun"][1:] or job["torchrun"]
        fields.append(("  torchrun", " ".join([os.path.basename(command[0]), *command[1:]])))
    if job.get("failure"):
        fields.append(
            ("  failed", f"rank {job['failure'].get('rank')}: {job['failure'].get('message')}")
        )
    return fields


def host_text(host: dict) -> str:
    details = ", ".join(
        filter(
            None,
            [host.get("cpu"), host.get("python_version") and f"python {host['python_version']}"],
        )
    )
    return f"{host.get('hostname', '-')}  ({details})" if details else host.get("hostname", "-")


def git_text(row: pd.Series) -> str:
    if pd.isna(row["git_commit"]):
        return "-"
    state = "-" if pd.isna(row["git_dirty"]) else ("dirty" if row["git_dirty"] else "clean")
    return f"{row['git_commit'][:12]}  {state}"


def command_text(run: dict) -> str:
    meta = run.get("meta") or {}
    updates = [f"{k}={v}" for k, v in flatten_config(meta.get("config_updates") or {}).items()]
    words = [*meta.get("named_configs", []), *updates]
    command = meta.get("command") or run.get("command") or "-"
    return f"{command} with {' '.join(words)}" if words else command


def rerun_text(original: dict | None) -> str:
    """Which run a rerun repeated (its command names a temporary config file, since removed)."""
    if not original:
        return "-"
    code = ", from its recorded sources" if original.get("from_recorded_sources") else ""
    return f"run {int(original['run_id'])}{code}"


def data_text(fingerprint: dict, width: int = WIDTH) -> str:
    """Rows, hash and path in width characters; a long path loses its beginning, never its file name."""
    if not fingerprint:
        return "-"
    rows = f"{fingerprint['rows']:,} rows" if "rows" in fingerprint else ""
    digest = ""
    if "sha256" in fingerprint:  # None while a running run still hashes the file
        digest = f"sha256 {(fingerprint['sha256'] or 'not recorded')[:12]}"
    # the path last: a long one is what gets cut to fit the terminal, never the hash
    known = "  ".join(filter(None, [rows, digest]))
    path = str(fingerprint.get("path") or "")
    if not path:
        return known
    room = width - len(known) - 2 if known else width
    return "  ".join(filter(None, [known, fit_end(path, max(room, 12))]))


def best_text(best: dict) -> str:
    named = {k: v for k, v in best.items() if k != "epoch"}
    if not named:
        return "-"
    name, value = next(iter(named.items()))
    return f"{name} {format_value(value)} at epoch {best.get('epoch', '?')}"


def failure_text(trace) -> str:
    lines = [line.strip() for line in (trace or []) if line.strip()]
    return lines[-1].splitlines()[-1] if lines else ""


def config_lines(config: dict | None) -> list[str]:
    if config is None:
        return ["config: unreadable"]
    flat = flatten_config(config)
    width = min(max((len(k) for k in flat), default=0), 36)
    lines = ["config"]
    for key, value in sorted(flat.items()):
        label = f"  {key:<{width}}  "
        lines.append(fit(label + fit_value(format_value(value), max(WIDTH - len(label), 12))))
    return lines


def metric_lines(row: pd.Series) -> list[str]:
    names = sorted(
        {
            c.rsplit(".", 1)[0]
            for c in row.index[len(RECORD_COLUMNS) :]
            if not c.startswith("config.") and not pd.isna(row[c])
        }
    )
    if not names:
        return ["metrics: none recorded yet"]
    columns = [("metrics", "<", names)]
    columns += [
        (stat, ">", [format_value(row[f"{n}.{stat}"]) for n in names])
        for stat in ("last", "min", "max")
    ]
    return render(columns)


def artifact_lines(store: RunStore, run_id: int, run: dict, info: dict) -> list[str]:
    names = [a["name"] if isinstance(a, dict) else a for a in run.get("artifacts", [])]
    if not names:
        return ["artifacts: none"]
    checkpoints = info.get("checkpoints") or {}
    lines = ["artifacts"]
    for name in names:
        parts = [artifact_size(store, run_id, name)]
        if name in checkpoints:
            check = checkpoints[name]
            parts.append(f"epoch {check.get('epoch')}  sha256 {str(check.get('sha256'))[:12]}")
        lines.append(fit(f"  {name:<16}  " + "  ".join(filter(None, parts))))
    return lines


def artifact_size(store: RunStore, run_id: int, name: str) -> str:
    """The artifact's size when the store can tell it without reading the file."""
    path_of = getattr(store, "artifact_path", None)
    if path_of is None:
        return ""
    try:
        return size(path_of(run_id, name).stat().st_size)
    except (RecordError, OSError):
        return "missing"


# --------------------------------------------------------------------------- compare


def compare_command(args) -> int:
    """Runs side by side: the config that differs and the chosen metric's summaries."""
    if args.plot and not args.plot.lower().endswith(".png"):
        raise ValueError(f"plot file '{args.plot}' must end in .png")
    if getattr(args, "sweep", None):
        return compare_sweep(args)
    ids = run_id_arguments(args.runs)
    store = open_store(args.store)
    metric = args.metric or DEFAULT_METRIC
    table = compare(store, ids)
    recorded = sorted(
        {
            c.rsplit(".", 1)[0]
            for c in table.columns
            if c.endswith(".max") and not c.startswith("config.")
        }
    )
    notes = table["note"].dropna()
    if metric not in recorded and (args.metric or args.plot):  # else: the configs, compared
        known = ", ".join(recorded) or "none"
        damaged = f"; run {notes.index[0]}: {notes.iloc[0]}" if len(notes) else ""
        raise ValueError(
            f"no run of {', '.join(map(str, ids))} recorded the metric '{metric}' "
            f"(recorded: {known}{damaged})"
        )
    keep = [
        c
        for c in table.columns
        if c.startswith("config.") or c.rsplit(".", 1)[0] in ("status", metric)
    ]
    table = table[[*keep, "result"]].T
    table.index = [short_key(c) for c in table.index]
    print("\n".join(compare_lines(table)))
    for run_id, note in notes.items():
        print(fit(f"* run {run_id}: {note}"))
    if args.plot:
        with warnings.catch_warnings(record=True) as left_out:  # notes, not Python's warnings
            warnings.simplefilter("always")
            figure = plot_metric(store, ids, metric, args.plot)
        for warning in left_out:
            print(f"reprolab: note: {warning.message}", file=sys.stderr)
        print(f"wrote {args.plot} ({figure.axes[0].get_title()})")
    return ExitCode.OK


def compare_sweep(args) -> int:
    """A sweep's runs ranked by the metric's best value, with the config keys that varied."""
    if args.runs:
        raise ValueError("give run ids or --sweep, not both")
    store = open_store(args.store)
    searched = search_of(args.sweep, args.store)
    declared = (searched or {}).get("metric")  # a search ranks by its own metric and direction
    metric = args.metric or (declared if isinstance(declared, str) else DEFAULT_METRIC)
    direction = (searched or {}).get("direction") if metric == declared else None
    runs = load_runs(store, sweep=args.sweep)
    if runs.empty:
        raise ValueError(f"no runs of sweep '{args.sweep}' in {store.location}")
    runs = latest_runs(runs).drop(columns="config.resume", errors="ignore")
    best = best_column(runs, metric, direction)
    if best is None:
        raise ValueError(f"no run of sweep '{args.sweep}' recorded the metric '{metric}'")
    runs = runs.sort_values(best, ascending=best.endswith(".min"), na_position="last")
    print("\n".join(sweep_rank_lines(runs, best)))
    if args.plot and searched is not None:
        plot_searched(runs, best, args, searched)
    elif args.plot:
        from observers.plots import plot_sweep

        x_key = plot_sweep(runs, best, args.plot)
        print(f"wrote {args.plot} ({best} against {short_key(x_key)}, sweep {args.sweep})")
    return ExitCode.OK


def latest_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Each config's latest run, whose metrics' min and max also count the runs it continued
    (`resume=` an earlier run of the config): a continued run records only the epochs it
    trained, and a search's trial value counts them all."""
    latest = runs.sort_index().groupby("sweep_index", dropna=False).tail(1).copy()
    if "config.resume" not in runs.columns:
        return latest
    summaries = [
        c for c in runs.columns if c.endswith((".min", ".max")) and not c.startswith("config.")
    ]
    for run_id in latest.index:
        chain = continued_chain(runs, run_id)
        if len(chain) > 1:
            for column in summaries:
                values = runs.loc[chain, column]
                latest.at[run_id, column] = (
                    values.min() if column.endswith(".min") else values.max()
                )
    return latest


def continued_chain(runs: pd.DataFrame, run_id: int) -> list[int]:
    """run_id and the runs of its config it continues, one `resume=` after another; a record is
    data, so a link to another config's run, a run not listed or a loop ends the chain."""
    chain, config = [run_id], runs.at[run_id, "sweep_index"]
    earlier = whole_number(runs.at[run_id, "config.resume"])
    while (
        earlier is not None
        and earlier in runs.index
        and earlier not in chain
        and same_config(runs.at[earlier, "sweep_index"], config)
    ):
        chain.append(earlier)
        earlier = whole_number(runs.at[earlier, "config.resume"])
    return chain


def same_config(one, other) -> bool:
    """Whether two sweep indices name one config (a missing one names none)."""
    return not pd.isna(one) and not pd.isna(other) and one == other


def whole_number(value) -> int | None:
    """A config cell as a run id: a whole number (float64 in a column with gaps), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)  # exactly, however large (JSON keeps 10**400)
    if isinstance(value, float) and value.is_integer():  # never inf or nan
        return int(value)
    return None


DIRECTIONS = ("maximize", "minimize")


def search_of(sweep_id: str, store: str | None) -> dict | None:
    """The search block of a sweep's record, when the sweep is a search."""
    from observers.sweep_records import sweep_records

    record = sweep_records(StoreLocation.parse(store)).find(sweep_id) or {}
    search = record.get("search")
    return search if isinstance(search, dict) else None


def plot_searched(runs: pd.DataFrame, best: str, args, search: dict) -> None:
    """The search's plot: value against trial, and each searched key's importance."""
    from observers.plots import plot_search
    from observers.studies import param_importances

    url = search.get("storage")
    if isinstance(url, str) and "***" in url:
        importances: dict = {}  # its password is not recorded: no importances without it
    else:
        location = StoreLocation.parse(args.store)
        importances = param_importances(location, args.sweep, url if isinstance(url, str) else None)
    plot_search(runs, best, importances, args.plot)
    print(f"wrote {args.plot} ({best} by trial, and the searched keys' importance)")


def best_column(runs: pd.DataFrame, metric: str, direction: str | None = None) -> str | None:
    """The metric's best summary: its min when minimized (by default, for a loss or error), else
    its max."""
    guessed = any(word in metric for word in ("loss", "error", "mse"))
    lower_is_better = direction == "minimize" if direction in DIRECTIONS else guessed
    column = f"{metric}.{'min' if lower_is_better else 'max'}"
    return column if column in runs.columns and runs[column].notna().any() else None


def sweep_rank_lines(runs: pd.DataFrame, best: str) -> list[str]:
    """rank, run, config index, status, the varied keys, the metric; then which keys varied."""
    fixed = [
        ("rank", ">", [str(i + 1) for i in range(len(runs))]),
        ("run", ">", [str(i) for i in runs.index]),
        ("cfg", ">", [format_value(v) for v in runs["sweep_index"].astype(object)]),
        ("status", "<", list(runs["status"])),
    ]
    main = [(best, ">", [format_value(v) for v in runs[best]])]
    config, left_out = fit_config_columns(runs, WIDTH - table_width(fixed + main) - len(GAP))
    lines = render(fixed + config + main)
    varied = [short_key(c) for c in differing_config(runs)]
    lines += textwrap.wrap(
        f"varied: {', '.join(varied) or 'nothing'}", WIDTH, subsequent_indent="  "
    )
    if left_out:
        lines += textwrap.wrap(f"not shown: {', '.join(left_out)}", WIDTH, subsequent_indent="  ")
    return lines


def run_id_arguments(refs: list[str]) -> list[int]:
    for ref in refs:
        if not is_run_id(ref):
            raise ValueError(f"'{ref}' is not a run id (compare takes run ids, e.g. 3 4 7)")
    ids = list(dict.fromkeys(int(ref) for ref in refs))
    if len(ids) < 2:
        raise ValueError(f"compare needs two or more runs (for one run: reprolab show {ids[0]})")
    return ids


def compare_lines(table: pd.DataFrame) -> list[str]:
    """Rows are keys and metrics, columns are runs; runs that do not fit go in another block."""
    labels = [fit(str(key), 26) for key in table.index]
    label_width = max(len(label) for label in labels)
    cells = {run_id: [fit(format_value(v), 16) for v in table[run_id]] for run_id in table.columns}
    blocks, block, used = [], [], label_width
    for run_id, column in cells.items():
        width = len(GAP) + max(len(str(run_id)), *map(len, column))
        if block and used + width > WIDTH:
            blocks.append(block)
            block, used = [], label_width
        block.append(run_id)
        used += width
    blocks.append(block)
    lines = []
    for block in blocks:
        columns = [("run", "<", labels)] + [(str(r), ">", cells[r]) for r in block]
        lines += ([""] if lines else []) + render(columns)
    return lines


# --------------------------------------------------------------------------- export


def export_command(args) -> int:
    """The runs table written to a .parquet or .csv file, replaced whole or not at all."""
    target = Path(args.to)
    kind = target.suffix.lower()
    if kind not in (".parquet", ".csv"):
        raise ValueError(f"--to: '{target}' must end in .parquet or .csv")
    if not target.parent.is_dir():
        raise ValueError(f"--to: directory {target.parent} does not exist")
    store = open_store(args.store)
    runs = load_runs(store)
    print_skipped(store)
    with replacing(target, "wb") as f:
        write_table(runs, f, kind)
    print(f"wrote {len(runs)} runs x {len(runs.columns)} columns to {target}")
    return ExitCode.OK


def write_table(runs: pd.DataFrame, path, kind: str) -> None:
    if kind == ".csv":
        runs.to_csv(path, index_label="run_id")
        return
    try:
        runs.to_parquet(path)
    except (TypeError, ValueError, ArithmeticError):  # mixed-type config columns: keep them as text
        mixed = runs.select_dtypes("object").columns
        runs.astype({c: "str" for c in mixed}).to_parquet(path)
