"""Recording benchmark: what tracking a run costs, against baselines measured in the same run.

    python benchmarks/recording.py           # history up to 1,000,000 points; 5+5 training runs
    python benchmarks/recording.py --quick   # up to 100,000 points; 2+2 runs of `debug`

(d) one `_run.log_scalar` call inside a real Sacred run observed by the file store (heartbeat
    thread running), against appending the same tuple to a list;
(e) the time an observer spends per heartbeat (log_metrics + heartbeat_event, 1,000 new points
    over 4 metrics) as the run's history grows: the project's FileStore against Sacred's
    FileStorageObserver, measured up to --sacred-max points and extrapolated linearly beyond
    (labelled); then the FileStore's one-off seal of metrics.json when the run ends;
(f) end to end: `python experiments/train.py` recorded in a file store against `-u`
    (unobserved), the two alternating (which goes first swaps every round); the overhead is the
    median of the rounds' paired ratios: target <= 3%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from report import print_table
from sacred import Experiment
from sacred.observers import FileStorageObserver

from observers.filestore import JOURNAL, FileStore, read_journal

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "experiments" / "train.py"
METRICS = ("train_loss", "val_loss", "val_accuracy", "lr")
POINTS_PER_BEAT = 1000
START = dt.datetime(2026, 1, 1)


# --------------------------------------------------------------------------- (d) log_scalar


def log_scalar_cost(calls: int, repeats: int, store: Path) -> dict[str, float]:
    """Seconds per call of _run.log_scalar and of list.append, medians of interleaved rounds."""
    ex = Experiment("bench_log_scalar", save_git_info=False)
    ex.observers.append(FileStore(store))

    @ex.main
    def main(_run):
        sink: list = []
        rounds: dict[str, list[float]] = {"log_scalar": [], "append": []}
        for _ in range(repeats):
            for name, record in (("log_scalar", _run.log_scalar), ("append", None)):
                start = time.perf_counter()
                if record is None:
                    for step in range(calls):
                        sink.append(("train_loss", 0.5, step))
                else:
                    for step in range(calls):
                        record("train_loss", 0.5, step)
                rounds[name].append((time.perf_counter() - start) / calls)
            sink.clear()
        return {name: statistics.median(values) for name, values in rounds.items()}

    return ex.run(options={"--loglevel": "ERROR", "--capture": "no"}).result


def report_log_scalar(calls: int, repeats: int, store: Path) -> None:
    cost = log_scalar_cost(calls, repeats, store)
    rows = [
        [name, f"{seconds * 1e6:.2f} us", f"{seconds / cost['append']:.0f}x"]
        for name, seconds in (
            ("_run.log_scalar(name, value, step)", cost["log_scalar"]),
            ("list.append((name, value, step)) (baseline)", cost["append"]),
        )
    ]
    print_table(
        f"(d) cost of logging one scalar ({calls:,} calls, median of {repeats} rounds)",
        ["call", "per call", "vs append"],
        rows,
    )


# --------------------------------------------------------------------------- (e) heartbeats


def run_info() -> dict:
    """An info dict the size of a real run's (model summary, data, provenance's package list)."""
    return {
        "model_summary": {
            "layers": [
                {
                    "layer": f"layers.{i}",
                    "type": "Linear",
                    "params": 8256,
                    "output_shape": [128],
                    "trainable": 8256,
                }
                for i in range(40)
            ]
        },
        "provenance": {"packages": {f"package-{i}": f"{i}.{i % 7}.0" for i in range(250)}},
        "data": {"fingerprint": {"sha256": "0" * 64, "rows": 1797}, "standardization": None},
    }


def started(observer, root: Path):
    """The observer after Sacred's started_event, as a run drives it."""
    ex_info = {
        "name": "train",
        "base_dir": str(root),
        "sources": [],
        "dependencies": [],
        "repositories": [],
        "mainfile": "train.py",
    }
    observer.started_event(
        ex_info, "train", {"hostname": "bench"}, START, {"lr": 0.01}, {"command": "train"}, None
    )
    return observer


def new_points(first_step: int, count: int, stamps: list[dt.datetime]) -> dict:
    """count new points spread over the METRICS, as Sacred hands them to log_metrics."""
    per_metric = count // len(METRICS)
    steps = list(range(first_step, first_step + per_metric))
    return {
        name: {
            "steps": steps,
            "values": [0.5] * per_metric,
            "timestamps": stamps[first_step : first_step + per_metric],
        }
        for name in METRICS
    }


def heartbeat_time(observer, history: int, stamps: list, beats: int, info: dict) -> float:
    """Median seconds of log_metrics + heartbeat_event with POINTS_PER_BEAT new points each,
    once the run already holds `history` points."""
    step = history // len(METRICS)
    times = []
    for beat in range(beats):
        metrics = new_points(step, POINTS_PER_BEAT, stamps)
        start = time.perf_counter()
        observer.log_metrics(metrics, info)
        observer.heartbeat_event(info, f"epoch {beat}\n" * (beat + 1), START, None)
        times.append(time.perf_counter() - start)
        step += POINTS_PER_BEAT // len(METRICS)
    return statistics.median(times)


def grow(observer, history: int, target: int, stamps: list) -> None:
    """Fast-forward the observer's history from `history` to `target` points (not timed)."""
    if target > history:
        observer.log_metrics(new_points(history // len(METRICS), target - history, stamps), {})


def heartbeat_curve(observer, levels: list[int], beats: int, stamps: list, info: dict) -> dict:
    """Heartbeat time at each history level (each level's beats add to the history)."""
    curve, history = {}, 0
    for level in levels:
        grow(observer, history, level, stamps)
        curve[level] = heartbeat_time(observer, level, stamps, beats, info)
        history = level + beats * POINTS_PER_BEAT
    return curve


def report_heartbeats(levels: list[int], sacred_max: int, beats: int, root: Path) -> None:
    """Per-heartbeat observer time as history grows, ours against Sacred's, and the seal."""
    stamps = [START + dt.timedelta(seconds=i) for i in range(levels[-1] + 10 * POINTS_PER_BEAT)]
    info = run_info()
    ours = started(FileStore(root / "ours"), root / "ours")
    sacred = started(FileStorageObserver(str(root / "sacred")), root / "sacred")
    our_curve = heartbeat_curve(ours, levels, beats, stamps, info)
    sacred_curve = heartbeat_curve(
        sacred, [n for n in levels if n <= sacred_max], beats, stamps, info
    )
    (low, t_low), (high, t_high) = list(sacred_curve.items())[-2:]
    slope = (t_high - t_low) / (high - low)
    rows = []
    for level in levels:
        if level in sacred_curve:
            theirs = f"{sacred_curve[level] * 1e3:,.1f} ms"
        else:
            theirs = f"~{(t_high + slope * (level - high)) * 1e3:,.0f} ms (extrapolated)"
        rows.append([f"{level:,}", f"{our_curve[level] * 1e3:.2f} ms", theirs])
    print_table(
        f"(e) observer time per heartbeat ({POINTS_PER_BEAT:,} new points; median of "
        f"{beats} beats) as the run's history grows",
        ["history (points)", "FileStore (ours)", "Sacred FileStorageObserver"],
        rows,
    )
    report_seal(ours, root / "ours")


def report_seal(observer: FileStore, root: Path) -> None:
    """The FileStore's one-off cost at the end: metrics.json written from the journal."""
    run_dir = Path(observer.dir)
    journal_points = sum(len(s["steps"]) for s in read_journal(run_dir / JOURNAL).values())
    sizes = {name: (run_dir / name).stat().st_size for name in ("run.json", "info.json")}
    start = time.perf_counter()
    observer.completed_event(START, None)
    seal = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(len(s["values"]) for s in metrics.values()) == journal_points
    print(
        f"  FileStore at the end: metrics.json of {journal_points:,} points sealed once in "
        f"{seal:.2f} s ({(run_dir / 'metrics.json').stat().st_size / 2**20:.0f} MB, Sacred's "
        f"layout); rewritten per beat: run.json {sizes['run.json'] / 1024:.1f} KB, info.json "
        f"{sizes['info.json'] / 1024:.1f} KB only when the info changed; cout.txt appended"
    )


# --------------------------------------------------------------------------- (f) end to end


def train_seconds(arguments: list[str]) -> float:
    """Wall seconds of one `python experiments/train.py ...` run (checked to succeed)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(TRAIN), *arguments], check=True, cwd=REPO_ROOT, capture_output=True
    )
    return time.perf_counter() - start


def report_end_to_end(runs: int, updates: list[str], root: Path) -> None:
    """Observed (file store) against unobserved default training runs, alternating."""
    store = root / "runs"
    modes: dict[str, Callable[[], float]] = {
        "unobserved (-u)": lambda: train_seconds(["-u", "with", *updates]),
        "file store (-R DIR)": lambda: train_seconds(["-R", str(store), "with", *updates]),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    for round_ in range(runs):
        names = list(modes) if round_ % 2 == 0 else list(modes)[::-1]  # neither always goes first
        for name in names:
            times[name].append(modes[name]())
    base = times["unobserved (-u)"]
    rows = []
    for name, t in times.items():  # overhead: median of the rounds' paired ratios, not of medians
        paired = statistics.median(a / b for a, b in zip(t, base))
        rows.append(
            [
                name,
                f"{statistics.median(t):.2f} s",
                f"{min(t):.2f}-{max(t):.2f} s",
                f"{(paired - 1) * 100:+.1f}%",
            ]
        )
    print_table(
        f"(f) end to end: python experiments/train.py with {' '.join(updates)} "
        f"({runs} runs each, alternating; overhead = median of paired ratios; target <= 3%)",
        ["recorded by", "median wall", "range", "overhead"],
        rows,
    )
    run_dir = max((p for p in store.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    sizes = ", ".join(
        f"{p.name} {p.stat().st_size / 1024:.1f} KB" for p in sorted(run_dir.glob("*.json"))
    )
    print(f"  a recorded run's JSON files: {sizes}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller history, 2+2 debug runs")
    parser.add_argument("--runs", type=int, help="training runs per mode for (f) (default 5)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quick = args.quick
    levels = [0, 10_000, 100_000] if quick else [0, 10_000, 100_000, 200_000, 1_000_000]
    sacred_max = 20_000 if quick else 200_000
    if quick:
        levels = sorted({*levels, sacred_max})
    with tempfile.TemporaryDirectory(prefix="reprolab-recording-") as tmp:
        root = Path(tmp)
        print(
            f"Recording benchmark (Sacred's heartbeat every 10 s; python {sys.version.split()[0]})"
        )
        report_log_scalar(20_000 if quick else 200_000, 3 if quick else 5, root / "log_scalar")
        report_heartbeats(levels, sacred_max, 3 if quick else 5, root)
        updates = ["seed=1", "progress=False", *(["debug"] if quick else [])]
        report_end_to_end(args.runs or (2 if quick else 5), updates, root)


if __name__ == "__main__":
    main()
