"""Metric curves of chosen runs, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from observers.files import replacing
from observers.store import RunStore
from observers.tables import as_store, differing_config, load_metrics, load_runs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABEL_WIDTH = 70  # legend labels wrap at this width, so the legend never outgrows the figure


def plot_metric(
    store: str | os.PathLike | RunStore | None,
    run_ids: Iterable[int],
    metric: str = "val_accuracy",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Draw `metric` against step for each run, labelled by run id and the config values that
    differ between the runs; with `path`, also write the figure there as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only when a plot is drawn
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    store = as_store(store)
    ids = list(dict.fromkeys(int(run_id) for run_id in run_ids))
    points = load_metrics(store, ids, [metric])
    if points.empty:
        raise ValueError(f"no run of {', '.join(map(str, ids))} recorded the metric '{metric}'")
    labels = run_labels(load_runs(store, run_ids=ids))
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for run_id, curve in points.groupby("run_id", sort=False):
        axes.plot(
            curve["step"],
            curve["value"],
            marker="o" if len(curve) <= 50 else None,
            markersize=4,
            label=labels[run_id],
        )
    plotted = list(points["run_id"].unique())  # a run whose metrics are damaged is left out
    axes.set(
        xlabel=step_label(store, ids),
        ylabel=metric,
        title=f"{metric} of runs {', '.join(map(str, plotted))}",
    )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are epochs or batches
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", fontsize="small", frameon=False)
    if path is not None:
        save_png(figure, Path(path))
    return figure


def step_label(store: RunStore, run_ids: list[int]) -> str:
    """What the metric's step counts ('epoch'), as the runs recorded it; 'step' when they do not
    say or do not agree."""
    units = set()
    for run_id in run_ids:
        try:
            units.add((store.info(run_id) or {}).get("metric_step"))
        except Exception:  # noqa: BLE001 - an unreadable info only loses the label
            units.add(None)
    unit = units.pop() if len(units) == 1 else None
    return unit if isinstance(unit, str) and unit else "step"


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    """'run 3: lr=0.01, opt.name=sgd' for each run: its id and the config values that differ,
    most telling first, wrapped onto lines of at most LABEL_WIDTH characters."""
    keys = differing_config(runs)
    labels = {}
    for run_id, row in runs.iterrows():
        parts = [f"{abbreviate(short_key(key))}={format_value(row[key])}" for key in keys]
        labels[run_id] = "\n".join(
            textwrap.wrap(
                f"run {run_id}: " + ", ".join(parts), LABEL_WIDTH, max_lines=3, placeholder=" …"
            )
        )
    return labels


def short_key(column: str) -> str:
    """A config column's key without the 'config.' prefix."""
    return column.removeprefix("config.")


def abbreviate(key: str) -> str:
    """'optimizer.name' -> 'opt.name': long parents cut to three letters, the leaf kept whole."""
    *parents, leaf = key.split(".")
    return ".".join([p if len(p) <= 4 else p[:3] for p in parents] + [leaf])


def format_value(value) -> str:
    """A table cell as short text: 4 significant digits, '-' for missing, lists without spaces."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def save_png(figure: Figure, path: Path) -> None:
    """Write the figure as a PNG beside its final name, then rename, so no half file is left."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot file '{path}' must end in .png")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write plot '{path}': directory {path.parent} does not exist")
    with replacing(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)


def plot_sweep(runs: pd.DataFrame, column: str, path: str | os.PathLike) -> str:
    """A sweep's `column` (e.g. val_accuracy.max) against its first varied key that is not a
    seed: one line per value of the other varied keys, the mean across seeds with a band from
    the lowest to the highest. Written as a PNG; returns the x key's column."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    varied = differing_config(runs)
    keys = [key for key in varied if "seed" not in key.rsplit(".", 1)[-1]]
    if not keys:
        raise ValueError("the sweep varied no key but seeds, so there is nothing to plot against")
    x_key, others = keys[0], keys[1:]
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    groups = (
        runs.groupby([runs[k].map(format_value) for k in others], sort=True)
        if others
        else [((), runs)]
    )
    for name, group in groups:
        stats = group.groupby(x_key)[column].agg(["mean", "min", "max"]).sort_index()
        label = (
            ", ".join(
                f"{abbreviate(short_key(k))}={v}"
                for k, v in zip(others, name if isinstance(name, tuple) else (name,))
            )
            or None
        )
        (line,) = axes.plot(stats.index, stats["mean"], marker="o", label=label)
        axes.fill_between(
            stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2
        )
    values = pd.to_numeric(runs[x_key], errors="coerce")
    if values.notna().all() and (values > 0).all() and values.max() / values.min() >= 10:
        axes.set_xscale("log")  # learning rates and the like span decades
    axes.set(
        xlabel=short_key(x_key),
        ylabel=column,
        title=f"{column} against {short_key(x_key)} (mean and range across seeds)",
    )
    axes.grid(alpha=0.3)
    if others:
        figure.legend(loc="outside lower center", fontsize="small", frameon=False)
    save_png(figure, Path(path))
    return x_key


def best_so_far(runs: pd.DataFrame, column: str, maximize: bool) -> tuple[list, list]:
    """The best completed value after each completed trial, held to the last trial asked."""
    runs = runs[runs["trial"].notna()]  # a record without its trial number is not placed
    done = runs[runs["status"] == "COMPLETED"].sort_values("trial")
    best = done[column].cummax() if maximize else done[column].cummin()
    steps, values = done["trial"].tolist(), best.tolist()
    if steps and runs["trial"].max() > steps[-1]:
        steps.append(runs["trial"].max())
        values.append(values[-1])
    return steps, values


def plot_search(
    runs: pd.DataFrame, column: str, importances: dict[str, float], path: str | os.PathLike
) -> None:
    """A search as a PNG: each trial's `column` (pruned ones marked) with the best so far
    against the trial number, and beside it each searched key's importance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = runs.sort_values("trial")
    maximize = column.endswith(".max")
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    trials, ranked = figure.subplots(1, 2, width_ratios=[3, 2])
    for status, marker in (("COMPLETED", "o"), ("PRUNED", "x")):
        shown = runs[runs["status"] == status]
        trials.scatter(shown["trial"], shown[column], marker=marker, label=status.lower())
    steps, best = best_so_far(runs, column, maximize)
    trials.step(steps, best, where="post", color="black", label="best so far")
    trials.set(xlabel="trial", ylabel=column, title=f"{column} by trial")
    trials.grid(alpha=0.3)
    trials.legend(fontsize="small")
    if importances:
        keys = list(importances)[::-1]  # the most important on top
        ranked.barh([short_key(f"config.{k}") for k in keys], [importances[k] for k in keys])
        ranked.set(xlabel="importance (PED-ANOVA)", title="searched keys")
    else:
        ranked.text(0.5, 0.5, "too few finished trials\nfor importances", ha="center")
        ranked.set_axis_off()
    save_png(figure, Path(path))
