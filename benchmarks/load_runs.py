"""How fast recorded runs load into pandas, against plain json.load of the same files.

    python benchmarks/load_runs.py                  # 1,000 runs; 1,000 runs x 1,000 points
    python benchmarks/load_runs.py --runs 200 --repeats 3

Builds two synthetic file stores in a temporary directory, written the way observers.filestore
writes them (atomic, sorted, indented JSON; Sacred's run.json/config.json/info.json/metrics.json):
  short: --runs runs of --epochs epochs (4 metrics per epoch, like experiments/train.py)
  long:  --runs runs of --points points each (4 metrics x points/4 steps)
and prints the median of --repeats timings of each reader and of the baseline, measured in the
same process, the readers taking turns in every round (shuffled), ratios as medians of the
rounds' paired ratios. Targets: load_runs < 1 s on the short store, load_metrics < 3 s on the long one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from experiments.cli import main as reprolab
from observers.filestore import JOURNAL, FileStore, write_json_atomic
from observers.store import SUMMARY_CACHE, FileRunStore
from observers.tables import load_metrics, load_runs

METRICS = ("lr", "train_loss", "val_accuracy", "val_loss")
SOURCES = [
    "experiments/__init__.py",
    "experiments/base.py",
    "experiments/checkpoint.py",
    "experiments/loop.py",
    "experiments/train.py",
    "ingredients/__init__.py",
    "ingredients/data.py",
    "ingredients/model.py",
    "ingredients/optimizer.py",
    "ingredients/seeding.py",
    "observers/__init__.py",
    "observers/attach.py",
    "observers/filestore.py",
    "observers/store.py",
]
START = dt.datetime(2026, 1, 1)


def run_record(rng: random.Random, run_id: int, epochs: int, running: bool) -> dict:
    """A run.json like the ones experiments/train.py leaves (sources, git, host, meta)."""
    start = START + dt.timedelta(minutes=10 * run_id)
    stop = start + dt.timedelta(seconds=epochs * rng.uniform(0.5, 2))
    commit = f"{rng.getrandbits(160):040x}"
    return {
        "artifacts": [] if running else ["last.pt", "best.pt"],
        "command": "train",
        "experiment": {
            "base_dir": "/work/main",
            "dependencies": [f"package{i}=={i}.0" for i in range(40)],
            "mainfile": "experiments/train.py",
            "name": "train",
            "repositories": [{"commit": commit, "dirty": False, "url": "git://work/main"}]
            * len(SOURCES),
            "sources": [
                [s, f"_sources/{Path(s).stem}_{rng.getrandbits(128):032x}.py"] for s in SOURCES
            ],
        },
        "format": "FileStorageObserver-1.0.0",
        "heartbeat": stop.isoformat(),
        "host": {
            "ENV": {},
            "cpu": "AMD EPYC",
            "hostname": f"node{run_id % 8}",
            "os": ["Linux", "Linux-6.1-x86_64-with-glibc2.36"],
            "python_version": "3.11.7",
        },
        "meta": {
            "command": "train",
            "config_updates": {"lr": 0.01},
            "named_configs": [],
            "options": {f"--option{i}": None for i in range(25)},
        },
        "resources": [],
        "result": None if running else rng.random(),
        "start_time": start.isoformat(),
        "status": "RUNNING"
        if running
        else rng.choice(["COMPLETED"] * 8 + ["FAILED", "INTERRUPTED"]),
        "stop_time": None if running else stop.isoformat(),
    }


def config_record(rng: random.Random) -> dict:
    """A config.json with experiments/train.py's keys and a few values that vary."""
    return {
        "accumulate": 1,
        "amp": "off",
        "device": "auto",
        "epochs": 15,
        "limit_batches": None,
        "loss": "cross_entropy",
        "lr": rng.choice([0.1, 0.03, 0.01, 0.003]),
        "monitor": "val_accuracy",
        "monitor_mode": "max",
        "patience": None,
        "progress": True,
        "seed": rng.getrandbits(31),
        "data": {
            "batch_size": rng.choice([32, 64, 128]),
            "drop_last": False,
            "features": None,
            "format": "auto",
            "in_memory_mb": 1024,
            "num_workers": 0,
            "path": "data/digits.parquet",
            "pin_memory": True,
            "shape": None,
            "shuffle": True,
            "split_seed": 0,
            "standardize": True,
            "target": "label",
            "val_fraction": 0.2,
        },
        "model": {
            "batchnorm": False,
            "channels": [16, 32],
            "dropout": 0.1,
            "freeze": [],
            "freeze_batchnorm": False,
            "hidden": [128, 64],
            "kwargs": {},
            "name": rng.choice(["mlp", "cnn"]),
        },
        "optimizer": {
            "betas": [0.9, 0.999],
            "clip_grad_norm": None,
            "gamma": 0.1,
            "momentum": 0.9,
            "name": rng.choice(["sgd", "adam", "adamw"]),
            "nesterov": False,
            "param_groups": [],
            "schedule": "cosine",
            "step_size": 10,
            "warmup_epochs": 0,
            "weight_decay": 0.0,
        },
        "seeding": {"deterministic": True, "loader_seed_offset": 1},
    }


def metric_series(rng: random.Random, start: dt.datetime, steps: int) -> dict:
    """Sacred's metrics.json shape: per metric, steps, values and ISO timestamps."""
    metrics = {}
    for name in METRICS:
        times = [
            start + dt.timedelta(seconds=s, microseconds=rng.randrange(1, 10**6))
            for s in range(steps)
        ]
        metrics[name] = {
            "steps": list(range(1, steps + 1)),
            "timestamps": [t.isoformat() for t in times],
            "values": [rng.random() for _ in range(steps)],
        }
    return metrics


def build_store(root: Path, runs: int, steps: int) -> Path:
    """runs run directories, 1 in 50 still RUNNING (metrics in the journal, not sealed)."""
    rng = random.Random(runs * 1000 + steps)
    root.mkdir(parents=True)
    for run_id in range(1, runs + 1):
        run_dir = root / str(run_id)
        run_dir.mkdir()
        running = run_id % 50 == 0
        run = run_record(rng, run_id, steps, running)
        write_json_atomic(run_dir / "run.json", run)
        write_json_atomic(run_dir / "config.json", config_record(rng))
        write_json_atomic(
            run_dir / "info.json",
            {"model_summary": {"layers": [{"layer": str(i)} for i in range(50)]}},
        )
        metrics = metric_series(rng, dt.datetime.fromisoformat(run["start_time"]), steps)
        lines = [json.dumps({"name": n, **s}) for n, s in metrics.items()]
        (run_dir / JOURNAL).write_text("\n".join(lines) + "\n")
        if not running:  # sealed into metrics.json by the store's own code, as at a run's end
            FileStore._seal_metrics(SimpleNamespace(dir=str(run_dir)))
    return root


def json_load_all(root: Path, names: tuple[str, ...]) -> int:
    """The baseline: json.load of each named file of every run, nothing else."""
    loaded = 0
    for run_dir in root.iterdir():
        for name in names:
            path = run_dir / name
            if path.exists():
                with open(path) as f:
                    if name == JOURNAL:
                        [json.loads(line) for line in f]
                    else:
                        json.load(f)
                loaded += 1
    return loaded


def timed(function, before=None) -> float:
    if before:
        before()
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def ls_quietly(root: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        reprolab(["ls", "--store", str(root)])


def ls_process(root: Path) -> None:
    """`reprolab ls` as a user runs it: a new Python process, imports included."""
    subprocess.run(
        [sys.executable, "-m", "experiments.cli", "ls", "--store", str(root)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def measure(root: Path, repeats: int, label: str) -> dict[str, list[float]]:
    """Each reader's time in every round; the readers take turns within a round, in a shuffled
    order, so a busy moment of the machine falls on all of them alike."""
    drop_cache = lambda: shutil.rmtree(root / SUMMARY_CACHE.parent, ignore_errors=True)  # noqa: E731
    readers = {
        "json.load run+config+metrics": (
            lambda: json_load_all(root, ("run.json", "config.json", "metrics.json", JOURNAL)),
            None,
        ),
        "json.load metrics": (lambda: json_load_all(root, ("metrics.json",)), None),
        "load_runs, no cache": (lambda: load_runs(FileRunStore(root, cache=False)), None),
        "load_runs, cache cold": (lambda: load_runs(root), drop_cache),
        "load_runs, cache warm": (lambda: load_runs(root), None),
        "reprolab ls (in process)": (lambda: ls_quietly(root), None),
        "reprolab ls (new process)": (lambda: ls_process(root), None),
        "load_metrics": (lambda: load_metrics(root), None),
    }
    load_runs(root)  # the cache exists before the first warm reading
    times: dict[str, list[float]] = {name: [] for name in readers}
    order = random.Random(0)
    for _ in range(repeats):
        names = list(readers)
        order.shuffle(names)
        for name in names:
            function, before = readers[name]
            times[name].append(timed(function, before))
            if before is not None:
                load_runs(root)  # a cold reading leaves the cache written, as a user's does
    print(f"\n{label}")
    for name, seconds in times.items():
        print(f"  {name:<30} {statistics.median(seconds):7.3f} s")
    return times


def ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of name's time over the baseline's time in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=15, help="points per metric, short store")
    parser.add_argument("--points", type=int, default=1000, help="points per run, long store")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reprolab-bench-") as tmp:
        short = build_store(Path(tmp) / "short", args.runs, args.epochs)
        long = build_store(Path(tmp) / "long", args.runs, args.points // len(METRICS))
        print(
            f"medians of {args.repeats} repeats; runs: {args.runs}; "
            f"rows in the long store: {len(load_metrics(long)):,}"
        )
        s = measure(
            short, args.repeats, f"short store: {args.runs} runs x {args.epochs} epochs x 4 metrics"
        )
        g = measure(long, args.repeats, f"long store: {args.runs} runs x {args.points} points")
    base, base_metrics = "json.load run+config+metrics", "json.load metrics"
    med = lambda times, name: statistics.median(times[name])  # noqa: E731
    print("\nratios (medians of paired ratios, lower is better) and targets")
    print(
        f"  load_runs, short / json.load baseline    {ratio(s, 'load_runs, cache warm', base):5.2f}x"
        f"   {med(s, 'load_runs, cache warm'):.3f} s (target < 1 s)"
    )
    print(
        f"  load_runs, short, cold cache / baseline  {ratio(s, 'load_runs, cache cold', base):5.2f}x"
    )
    print(
        f"  load_runs, long, warm / cold cache       "
        f"{ratio(g, 'load_runs, cache warm', 'load_runs, cache cold'):5.2f}x"
        f"   {med(g, 'load_runs, cache warm'):.3f} s vs {med(g, 'load_runs, cache cold'):.3f} s"
    )
    print(
        f"  load_metrics, long / json.load metrics   {ratio(g, 'load_metrics', base_metrics):5.2f}x"
        f"   {med(g, 'load_metrics'):.3f} s (target < 3 s)"
    )


if __name__ == "__main__":
    main()
