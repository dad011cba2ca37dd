"""Stores at scale: listing, loading and filtering 10,000 and 100,000 finished runs.

    python benchmarks/store_scale.py                 # 10,000 and 100,000 runs (disk: ~1.5 GB)
    python benchmarks/store_scale.py --quick         # a smoke run: 300 and 1,000 runs

Builds file stores by writing record files directly (run.json, config.json, info.json,
metrics.json modelled on experiments/train.py's, every run of a 100-run sweep), and a MongoDB
one on nx-27017 (the wire-protocol server the tests use), then prints the issue's table: medians
of --repeats warm readings; a first call after 100 new runs; a rebuild of the index from nothing;
`reprolab sweep --dry-run` over --configs seeds. MLflow's search_runs over the same runs is
measured when mlflow is installed, and said to be skipped otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from load_runs import config_record, metric_series, run_record  # noqa: E402

from experiments.cli import main as reprolab  # noqa: E402
from observers.index import INDEX  # noqa: E402
from observers.mongo_index import CACHE_COLLECTION  # noqa: E402
from observers.tables import load_runs  # noqa: E402

SWEEP_SIZE = 100  # runs per sweep id in the built stores
TARGETS = {  # the targets: 10k, 100k
    "ls": ("< 0.3 s", "< 0.5 s"),
    "load_runs": ("< 0.5 s", "< 3 s"),
    "sweep": ("< 0.2 s", "< 0.3 s"),
    "after": ("< 1 s", "< 1 s"),
    "rebuild": ("report", "report"),
}


def sweep_of(run_id: int) -> str:
    return f"sw{run_id // SWEEP_SIZE:05d}"


def in_sweep(sweep: str, runs: int) -> int:
    """How many of runs 1..runs belong to the sweep."""
    return sum(sweep_of(i) == sweep for i in range(1, runs + 1))


def records(rng: random.Random, run_id: int) -> dict[str, dict]:
    """The record files of one finished run of a sweep, as a run of train.py leaves them."""
    run = run_record(rng, run_id, 15, running=False)
    run["meta"]["sweep"] = {"id": sweep_of(run_id), "index": run_id % SWEEP_SIZE}
    metrics = metric_series(rng, dt.datetime.fromisoformat(run["start_time"]), 15)
    info = {"model_summary": {"layers": [{"layer": str(i)} for i in range(10)]}}
    return {"run": run, "config": config_record(rng), "info": info, "metrics": metrics}


def write_runs(root: Path, first: int, count: int) -> None:
    """count finished runs from id first on, their files written directly (fast)."""
    rng = random.Random(first)
    root.mkdir(parents=True, exist_ok=True)
    for run_id in range(first, first + count):
        folder = root / str(run_id)
        folder.mkdir()
        for part, record in records(rng, run_id).items():
            text = json.dumps(record, sort_keys=True, indent=None if part == "metrics" else 2)
            (folder / f"{part}.json").write_text(text)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median(function, repeats: int) -> float:
    return statistics.median(timed(function) for _ in range(repeats))


def ls_in_process(location: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert reprolab(["ls", "--store", location]) == 0


def ls_process(location: str) -> None:
    """`reprolab ls` as a user runs it: a new Python process, imports included."""
    subprocess.run(
        [sys.executable, "-m", "experiments.cli", "ls", "--store", location],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )


def file_store(root: Path, runs: int, repeats: int) -> dict[str, str]:
    """The file store's row of figures for a store of `runs` runs."""
    start = time.perf_counter()
    write_runs(root, 1, runs)
    print(f"  built {runs:,} runs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    location, middle = str(root), sweep_of(runs // 2)
    figures = {"rebuild": f"{timed(lambda: load_runs(location)):.2f} s"}
    figures["ls"] = f"{median(lambda: ls_in_process(location), repeats):.3f} s"
    figures["ls, new process"] = f"{median(lambda: ls_process(location), repeats):.2f} s"
    figures["load_runs"] = f"{median(lambda: load_runs(location), repeats):.2f} s"
    assert len(load_runs(location, sweep=middle)) == in_sweep(middle, runs)
    figures["sweep"] = f"{median(lambda: load_runs(location, sweep=middle), repeats):.3f} s"
    write_runs(root, runs + 1, 100)  # each first call after its own 100 new runs: ls indexes
    ls_after = timed(lambda: ls_in_process(location))  # them all, so load_runs gets 100 more
    write_runs(root, runs + 101, 100)
    load_after = timed(lambda: load_runs(location))
    figures["after"] = f"ls {ls_after:.2f} s, load_runs {load_after:.2f} s"
    (root / INDEX).unlink()
    figures["rebuild"] += (
        f" (again, {runs + 200:,} runs: {timed(lambda: load_runs(location)):.2f} s)"
    )
    return figures


def mongo_documents(first: int, count: int) -> tuple[list[dict], list[dict]]:
    """The same runs as write_runs(first, count) as MongoObserver documents: runs and metrics."""
    rng = random.Random(first)
    documents, metrics = [], []
    for run_id in range(first, first + count):
        parts = records(rng, run_id)
        run = parts["run"]
        for key in ("start_time", "stop_time", "heartbeat"):
            run[key] = dt.datetime.fromisoformat(run[key])
        run["artifacts"] = [{"name": name, "file_id": None} for name in run["artifacts"]]
        documents.append({"_id": run_id, **run, "config": parts["config"], "info": parts["info"]})
        metrics += [{"run_id": run_id, "name": n, **s} for n, s in parts["metrics"].items()]
    return documents, metrics


def mongo_store(runs: int, repeats: int) -> dict[str, str]:
    """The same figures from MongoDB on nx-27017."""
    try:
        import pymongo
    except ImportError:
        return {"ls": "skipped: pymongo not installed"}
    sys.path.insert(0, str(REPO / "tests" / "observers"))
    from conftest import NxServer

    with tempfile.TemporaryDirectory(prefix="reprolab-nx-") as tmp:
        server = NxServer(Path(tmp))
        try:
            server.start()
        except (RuntimeError, OSError) as error:
            return {"ls": f"skipped: nx-27017 did not start ({error})"}
        try:
            return mongo_figures(pymongo.MongoClient(server.url), server.url, runs, repeats)
        finally:
            server.stop()


def mongo_figures(client, location: str, runs: int, repeats: int) -> dict[str, str]:
    """The file store's figures from MongoDB: its summary cache (observers/mongo_index.py) is
    built by the first call and rebuilt after being dropped."""
    start = time.perf_counter()
    for first in range(1, runs + 1, 1000):
        add_mongo_runs(client, first, min(1000, runs + 1 - first))
    print(f"  inserted {runs:,} runs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    middle = sweep_of(runs // 2)
    figures = {"rebuild": f"{timed(lambda: load_runs(location)):.2f} s"}
    assert len(load_runs(location, sweep=middle)) == in_sweep(middle, runs)
    figures["ls"] = f"{median(lambda: ls_in_process(location), repeats):.3f} s"
    figures["ls, new process"] = f"{median(lambda: ls_process(location), repeats):.2f} s"
    figures["load_runs"] = f"{median(lambda: load_runs(location), repeats):.2f} s"
    figures["sweep"] = f"{median(lambda: load_runs(location, sweep=middle), repeats):.3f} s"
    add_mongo_runs(client, runs + 1, 100)  # as for the file store: each first call after its
    ls_after = timed(lambda: ls_in_process(location))  # own 100 new runs
    add_mongo_runs(client, runs + 101, 100)
    load_after = timed(lambda: load_runs(location))
    figures["after"] = f"ls {ls_after:.2f} s, load_runs {load_after:.2f} s"
    client.sacred[CACHE_COLLECTION].drop()
    figures["ls, no cache"] = f"{timed(lambda: ls_in_process(location)):.2f} s"
    figures["rebuild"] += (
        f" (again, {runs + 200:,} runs: {timed(lambda: load_runs(location)):.2f} s)"
    )
    return figures


def add_mongo_runs(client, first: int, count: int) -> None:
    documents, metrics = mongo_documents(first, count)
    client.sacred.runs.insert_many(documents)
    client.sacred.metrics.insert_many(metrics)


def dry_run(configs: int) -> str:
    """`reprolab sweep experiments/train.py with seed=range(N) --dry-run`, a new process."""
    with tempfile.TemporaryDirectory(prefix="reprolab-sweep-") as tmp:
        command = [
            sys.executable,
            "-m",
            "experiments.cli",
            "sweep",
            str(REPO / "experiments/train.py"),
        ]
        command += ["with", f"seed=range({configs})", "--dry-run"]
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=tmp, env=env)
        return f"{time.perf_counter() - start:.1f} s"


def mlflow_search(runs: int, repeats: int) -> dict[str, str]:
    """MLflow's search_runs over the same runs (every config key a param, every metric's last
    value) in its default local store (SQLite, mlflow.db), built through its client."""
    try:
        import mlflow
        from mlflow.entities import Metric, Param
    except ImportError:
        return {"ls": "skipped: mlflow is not installed (pip install mlflow-skinny)"}
    from observers.rows import flatten_config

    with tempfile.TemporaryDirectory(prefix="reprolab-mlflow-") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")  # MLflow 3's default local store
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("scale")
        rng = random.Random(1)
        start = time.perf_counter()
        for run_id in range(1, runs + 1):
            parts = records(rng, run_id)
            run = client.create_run(experiment, tags={"sweep": sweep_of(run_id)})
            params = [Param(k, str(v)) for k, v in flatten_config(parts["config"]).items()]
            metrics = [
                Metric(name, series["values"][-1], 0, series["steps"][-1])
                for name, series in parts["metrics"].items()
            ]
            client.log_batch(run.info.run_id, params=params, metrics=metrics)
            client.set_terminated(run.info.run_id)
        print(
            f"  logged {runs:,} MLflow runs in {time.perf_counter() - start:.0f} s", file=sys.stderr
        )
        middle = sweep_of(runs // 2)

        def search(**options):
            return lambda: mlflow.search_runs([experiment], **options)

        one_sweep = search(filter_string=f"tags.sweep = '{middle}'")
        assert len(one_sweep()) == in_sweep(middle, runs)
        page = search(max_results=20, order_by=["attributes.start_time DESC"])
        return {
            "ls": f"{median(page, repeats):.3f} s (20 runs)",
            "load_runs": f"{median(search(), repeats):.2f} s",
            "sweep": f"{median(one_sweep, repeats):.3f} s",
        }


ROWS = [
    ("ls", "`reprolab ls` (last 20), warm index, in process"),
    ("ls, new process", "`reprolab ls`, a new process (imports included)"),
    ("load_runs", "`load_runs(store)` all rows, warm index"),
    ("sweep", f"`load_runs(store, sweep=ID)` of {SWEEP_SIZE} runs"),
    ("after", "first call after 100 new runs finished"),
    ("rebuild", "rebuilding the index (MongoDB: the cache) from nothing (load_runs)"),
    ("ls, no cache", "`reprolab ls` with no cache (a read-only MongoDB user), in process"),
]
PARTS = ("file", "mongo", "mlflow", "sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small stores, for a smoke run")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", type=int, default=None, help="sweep --dry-run configs")
    parser.add_argument("--mongo-runs", type=int, default=None)
    parser.add_argument("--mlflow-runs", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="parts to run")
    args = parser.parse_args()
    sizes = args.sizes or ([300, 1000] if args.quick else [10_000, 100_000])
    configs = args.configs or (200 if args.quick else 10_000)
    mongo_runs = args.mongo_runs or (200 if args.quick else 10_000)
    mlflow_runs = args.mlflow_runs or (100 if args.quick else 10_000)
    loads = [os.getloadavg()[0]]
    columns: dict[str, dict[str, str]] = {}
    if "file" in args.only:
        with tempfile.TemporaryDirectory(prefix="reprolab-scale-") as tmp:
            for size in sizes:
                figures = file_store(Path(tmp) / str(size), size, args.repeats)
                columns[f"file store, {size:,} runs"] = figures
                shutil.rmtree(Path(tmp) / str(size))
                loads.append(os.getloadavg()[0])
    if "mongo" in args.only:
        columns[f"MongoDB on nx-27017, {mongo_runs:,} runs"] = mongo_store(mongo_runs, args.repeats)
        loads.append(os.getloadavg()[0])
    if "mlflow" in args.only:
        columns[f"MLflow search_runs, {mlflow_runs:,} runs"] = mlflow_search(
            mlflow_runs, args.repeats
        )
        loads.append(os.getloadavg()[0])
    print_table(columns, args.repeats, loads)
    if "sweep" in args.only:
        print(
            f"\n`reprolab sweep ... --dry-run` of {configs:,} configs: {dry_run(configs)} (< 10 s)"
        )


def print_table(columns: dict[str, dict[str, str]], repeats: int, loads: list[float]) -> None:
    """The issue's table, one column per store (and MLflow beside them), the targets last."""
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    print(f"\nstore scale: file store, MongoDB, MLflow; medians of {repeats} (load {load})")
    print("| | " + " | ".join(columns) + " | target 10k / 100k |")
    print("|---" * (len(columns) + 2) + "|")
    for key, label in ROWS:
        target = " / ".join(TARGETS[key]) if key in TARGETS else ""
        cells = " | ".join(figures.get(key, "–") for figures in columns.values())
        print(f"| {label} | {cells} | {target} |")


if __name__ == "__main__":
    main()
