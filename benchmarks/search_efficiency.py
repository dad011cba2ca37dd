"""Search efficiency: epochs spent to come within 0.5 points of a declared grid's best accuracy.

    python benchmarks/search_efficiency.py --workers 2               # Fashion-MNIST, 144 configs
    python benchmarks/search_efficiency.py --grid large --workers 2  # Fashion-MNIST, 648 configs
    python benchmarks/search_efficiency.py --quick                   # the bundled digits, 4 configs

The full run needs data/fashion-mnist/train.parquet (data/prepare_fashion_mnist.py); it decodes
the PNGs once into data/fashion-mnist/train-pixels.parquet (raw uint8 pixels: the same images,
no decoding per epoch) and trains on that. The curves it trains are kept in
data/fashion-mnist/search-curves.json (JSON), keyed by the sources train.py imports, torch's
version and the data file, so a second run replays them in seconds.

The small declared grid (the default, --grid small): an MLP with one hidden layer, SGD (momentum
0.9, batch 128, reprolab's default cosine schedule to 0 over the 15 epochs), 8 x 2 x 3 x 3 = 144
configs, 2160 epochs in full:
  lr            1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3: half-decade steps over 3.5
                decades, as one declares a step size whose scale is not known beforehand
  width         128, 512: a narrow and a wide hidden layer (1024 would double the cost)
  dropout       0, 0.25, 0.5: none, moderate, strong
  weight_decay  0, 1e-4, 1e-3: none and the two usual strengths
The large declared grid (--grid large): what a researcher declaring five keys gets, a space large
against its good region (on the small grid 9 of 144 configs come within 0.5 points of the best,
so a shuffled grid finds one in about 8 configs and leaves search no room). The same lr, dropout
and weight decay values, and 8 x 3 x 3 x 3 x 3 = 648 configs, 5832 epochs in full:
  width         128, 256, 512: narrow, middle, wide
  momentum      0, 0.5, 0.9: SGD's momentum, none, moderate and the usual; it scales the step
                as lr does, so it is declared beside it when the step size is not known
To train 648 configs in about half an hour with 2 workers on 2 shared cores, an epoch is 100
batches (12,800 rows; measured ~0.25 s at width 128 to ~1 s at width 512, one thread) and a
config trains 9 epochs (cosine to 0 over 9): Hyperband's max 9 at factor 3 gives rungs 1, 3, 9.
Each config is train.py's experiment run once (`ex.run`, unrecorded, 1 thread, training seed 0;
`--workers 2` trains two configs at once, each in its own process) on the 54,000 training rows,
an epoch being 200 batches on the small grid and 100 on the large (a training subset drawn anew
each epoch by the loader's shuffle), validated after each epoch on the 6,000 held-out rows; its
curve is that validation accuracy per epoch. The target is the best accuracy of any config at
any epoch minus 0.5 points.

Every method searches the declared grid's space (each key a categorical of its declared values)
with reprolab's own sampler and pruner (`Search.make_sampler`, `make_pruner`, as `reprolab
sweep` builds them, at their defaults), over as many trials as the grid has configs. Training
is deterministic, so a trial is replayed from its config's curve instead of trained again (a
pruned trial's first k epochs are the full run's first k): each epoch is reported to the trial
and counted, the pruner asked after each but the last (as a trial asks it), and the count stops
at the first epoch of any trial that reaches the target. The
figure is every epoch counted by then, pruned trials' included; ">budget" means no trial reached
it. A trial that proposes a completed trial's config is answered from it and trains nothing, as
a search does (`tuner.completed_with`, `answer_from`): the same config and seed are the same run.
  grid             reprolab's grid sampler with the seed (one shuffle of the configs), each
                   config trained in full before the next, as a grid sweep runs them
  random, TPE      reprolab's random and TPE samplers (TPE's defaults: 10 random start-up trials)
  TPE + Hyperband  TPE with reprolab's Hyperband pruner (min 1 epoch, max the grid's epochs: 15
                   or 9, reduction factor 3)
Each over sampler seeds 0, 1, 2 (the issue's), and over seeds 0-19 for the spread. Target: TPE
with pruning needs at most a third of the grid's epochs (medians over seeds 0, 1, 2, a miss
counted as the full grid's epochs + 1), on the grid run (each grid is its own verdict); the
output says so if seeds 0-19 disagree. Both grids' curves share the one cache file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple

import optuna
import torch
from report import print_table

import experiments.train as train_module
from experiments.sweeps.space import Search
from experiments.sweeps.tuner import answer_from, completed_with
from ingredients.fingerprints import file_fingerprint

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION = REPO_ROOT / "data" / "fashion-mnist" / "train.parquet"
PIXELS = FASHION.with_name("train-pixels.parquet")
CACHE = FASHION.with_name("search-curves.json")
DIGITS = REPO_ROOT / "data" / "digits.parquet"
PACKAGES = ("experiments", "ingredients", "observers")  # this repository's code (not .venv's)
WITHIN = 0.005  # of the grid's best validation accuracy
TARGET_SHARE = 1 / 3  # TPE with pruning against the grid
SEEDS = [0, 1, 2]  # the issue's
SPREAD_SEEDS = list(range(20))  # replay is cheap: the figure over more seeds


class Grid:
    """A declared grid: its values per key, the epochs each config trains, the settings fixed."""

    def __init__(self, name: str, values: dict[str, list], epochs: int, fixed: dict):
        self.name, self.values, self.epochs, self.fixed = name, values, epochs, fixed

    def configs(self) -> list[dict]:
        return [dict(zip(self.values, combo)) for combo in itertools.product(*self.values.values())]

    def key(self, config: dict) -> tuple:
        return tuple(config[name] for name in self.values)

    def updates(self, config: dict) -> dict:
        """train.py's whole config update for one config: all that decides its curve."""
        updates = copy.deepcopy(self.fixed)
        updates.update(lr=config["lr"], epochs=self.epochs)
        updates["model"].update(hidden=[config["width"]], dropout=config["dropout"])
        updates["optimizer"]["weight_decay"] = config["weight_decay"]
        if "momentum" in config:  # the large grid's fifth key; else the fixed 0.9
            updates["optimizer"]["momentum"] = config["momentum"]
        return updates

    def search(self, sampler: dict, pruner: dict) -> Search:
        """The declared search over the grid's space, as `reprolab sweep` checks it."""
        space = {name: {"choices": list(values)} for name, values in self.values.items()}
        trials = len(self.configs())
        return Search(space=space, trials=trials, sampler=sampler, pruner=pruner).check()


def fixed_settings(data: dict, limit_batches: int | None) -> dict:
    return {
        "data": data,
        "limit_batches": limit_batches,
        "seed": 0,
        "progress": False,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "model": {"name": "mlp"},
    }


def fashion_grid() -> Grid:
    values: dict[str, list] = {
        "lr": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3],
        "width": [128, 512],
        "dropout": [0.0, 0.25, 0.5],
        "weight_decay": [0.0, 1e-4, 1e-3],
    }
    data = {"path": str(PIXELS), "val_fraction": 0.1, "batch_size": 128}
    return Grid("small", values, 15, fixed_settings(data, 200))


def large_fashion_grid() -> Grid:
    values: dict[str, list] = {
        "lr": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3],
        "width": [128, 256, 512],
        "dropout": [0.0, 0.25, 0.5],
        "weight_decay": [0.0, 1e-4, 1e-3],
        "momentum": [0.0, 0.5, 0.9],
    }
    data = {"path": str(PIXELS), "val_fraction": 0.1, "batch_size": 128}
    return Grid("large", values, 9, fixed_settings(data, 100))


def digits_grid() -> Grid:
    values: dict[str, list] = {
        "lr": [0.01, 0.1],
        "width": [16, 64],
        "dropout": [0.1],
        "weight_decay": [0.0],
    }
    return Grid("digits", values, 3, fixed_settings({"path": str(DIGITS)}, None))


def pixels_file() -> None:
    """Fashion-MNIST's PNGs decoded once into raw uint8 pixels (no decoding per epoch)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if not FASHION.is_file():
        sys.exit(f"{FASHION} not found: run `python data/prepare_fashion_mnist.py` first")
    if PIXELS.is_file() and PIXELS.stat().st_mtime >= FASHION.stat().st_mtime:
        return
    table = pq.read_table(FASHION)
    images = [np.asarray(Image.open(io.BytesIO(b))) for b in table.column("image").to_pylist()]
    flat = np.stack(images).reshape(len(images), -1)
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), flat.shape[1])
    partial = PIXELS.with_suffix(".partial")
    pq.write_table(pa.table({"image": column, "label": table.column("label")}), partial)
    partial.replace(PIXELS)  # never a half-written file under the final name


def code_hash(root: Path = REPO_ROOT) -> str:
    """SHA-256 over the sources of this repository's packages that train.py imports, listed by a
    fresh interpreter (this process has imported the search code too, which trains nothing): a
    change to the sweep or search code keeps the curves, a change to training drops them."""
    listing = (
        "import sys, experiments.train\n"
        "for m in list(sys.modules.values()): print(getattr(m, '__file__', None) or '')"
    )
    root = root.resolve()
    printed = subprocess.run(
        [sys.executable, "-c", listing], cwd=root, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = [root / name for name in PACKAGES]
    files = {Path(f).resolve() for f in printed if f}
    sources = sorted(f for f in files if any(f.is_relative_to(d) for d in folders))
    if root / "experiments" / "train.py" not in sources:  # another copy imported: no key at all
        raise RuntimeError(f"{root}: experiments.train was imported from elsewhere")
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stamp(grid: Grid) -> dict:
    """What every curve of a cache shares: the code, torch's version and the data file."""
    data = Path(grid.fixed["data"]["path"])
    return {"code": code_hash(), "torch": torch.__version__, "data": file_fingerprint(data)}


def entry_key(updates: dict) -> str:
    return json.dumps(updates, sort_keys=True)


class CurveCache:
    """Curves trained before, kept as JSON: a file whose stamp differs is not read, an entry is
    found by the config's whole update (grid values, fixed settings, epochs)."""

    def __init__(self, path: Path | None, stamp: dict):
        self.path, self.stamp = path, stamp
        self.curves: dict[str, list[float]] = {}
        self.note = self.load() if path is not None else "no cache"

    def load(self) -> str:
        assert self.path is not None
        if not self.path.is_file():
            return f"{self.path} absent: every curve trained"
        try:
            kept = json.loads(self.path.read_text())
            entries = kept["curves"] if kept["stamp"] == self.stamp else None
            found = {entry_key(e["updates"]): list(e["curve"]) for e in entries or []}
        except (ValueError, KeyError, TypeError) as error:
            return f"{self.path} unreadable ({type(error).__name__}: {error}): not used"
        if entries is None:
            return f"{self.path} made by other code, torch or data: not used"
        self.curves = found
        return f"{self.path}: {len(found)} curves kept"

    def get(self, updates: dict) -> list[float] | None:
        return self.curves.get(entry_key(updates))

    def put(self, updates: dict, curve: list[float]) -> None:
        """Adds a curve and rewrites the file whole (temp + replace: never half-written)."""
        self.curves[entry_key(updates)] = curve
        if self.path is None:
            return
        entries = [{"updates": json.loads(k), "curve": c} for k, c in self.curves.items()]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps({"stamp": self.stamp, "curves": entries}))
        partial.replace(self.path)


class Trainer:
    """Trains configs with train.py's experiment: its validation accuracy after each epoch."""

    def __init__(self) -> None:
        self.curve: list[float] = []
        self.real_evaluate = train_module.evaluate
        train_module.evaluate = self.evaluate  # train.py looks it up at each epoch

    def evaluate(self, *args, **kwargs) -> dict:
        metrics = self.real_evaluate(*args, **kwargs)
        self.curve.append(metrics["val_accuracy"])
        return metrics

    def train(self, updates: dict) -> list[float]:
        self.curve = []
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            train_module.ex.run(config_updates=updates, options={"--unobserved": True})
        return self.curve


def quiet() -> None:
    """One thread, no log lines: as the benchmark trains and replays, in each process."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("reprolab").setLevel(logging.ERROR)


WORKER: Trainer | None = None


def train_in_worker(updates: dict) -> list[float]:
    global WORKER
    if WORKER is None:
        quiet()
        WORKER = Trainer()
    return WORKER.train(updates)


def trained(todo: list[dict], workers: int, done: Callable[[dict, list[float]], None]) -> None:
    """Trains each update, in this process or in `workers` processes, calling done on each."""
    if workers == 1:
        trainer = Trainer()
        for updates in todo:
            done(updates, trainer.train(updates))
        return
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        futures = {pool.submit(train_in_worker, updates): updates for updates in todo}
        for future in as_completed(futures):
            done(futures[future], future.result())


def all_curves(grid: Grid, cache: CurveCache, workers: int) -> tuple[dict, int]:
    """Every config's curve, from the cache or trained; and how many were trained."""
    todo = [grid.updates(c) for c in grid.configs() if cache.get(grid.updates(c)) is None]
    trained(todo, workers, cache.put)
    curves = {grid.key(c): cache.get(grid.updates(c)) for c in grid.configs()}
    return curves, len(todo)


class Replay(NamedTuple):
    epochs: int | None  # spent until a trial's epoch reached the target (None: never)
    trials: int  # asked by then
    answered: int  # of them, answered from a completed trial with their config: none trained


def replay(grid: Grid, curves: dict, search: Search, target: float) -> Replay:
    """The search replayed until a trial's epoch reaches the target, or its budget is spent."""
    study = optuna.create_study(  # seeded searches: the name decides nothing (see space.py)
        study_name="search",
        direction="maximize",
        sampler=search.make_sampler(),
        pruner=search.make_pruner(),
    )
    spent, answered, distributions = 0, 0, search.distributions()
    for number in range(search.trials or 0):
        trial = study.ask(distributions)
        earlier = completed_with(study, trial.params)
        if earlier is not None:  # as a search does: answered from it, never trained again
            answer_from(study, trial, earlier)
            answered += 1
            continue
        curve = curves[grid.key(trial.params)]
        for epoch, accuracy in enumerate(curve, start=1):
            spent += 1
            if accuracy >= target:
                return Replay(spent, number + 1, answered)
            trial.report(accuracy, epoch)
            if epoch < len(curve) and trial.should_prune():  # never after the last, as a trial
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return Replay(None, search.trials or 0, answered)


def methods(grid: Grid) -> dict[str, tuple[dict, dict]]:
    """Each method's sampler and pruner, as a search declares them (the seed added per run)."""
    hyperband = {
        "name": "hyperband",
        "min_resource": 1,
        "max_resource": grid.epochs,
        "reduction_factor": 3,
    }
    return {
        "grid": ({"name": "grid"}, {"name": "none"}),
        "random": ({"name": "random"}, {"name": "none"}),
        "TPE": ({"name": "tpe"}, {"name": "none"}),
        "TPE + Hyperband": ({"name": "tpe"}, hyperband),
    }


def shown(values: Sequence[int | None]) -> str:
    return " / ".join(">budget" if v is None else str(v) for v in values)


def median(values: list[int | None], full: int) -> float:
    """The median, a miss counted as one more than the full grid's epochs."""
    return statistics.median(full + 1 if v is None else v for v in values)


def span(values: list[int]) -> str:
    return f"{values[0]}" if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def spread(values: list[int | None], full: int) -> str:
    """Quartiles and extremes, a miss counted as in the median."""
    counted = sorted(full + 1 if v is None else v for v in values)
    low, _, high = statistics.quantiles(counted, n=4, method="inclusive")
    return f"{counted[0]} | {low:g} - {high:g} | {counted[-1]}"


def replays(grid: Grid, curves: dict, target: float, seeds: list[int]) -> dict[str, dict]:
    """Each method's replay per sampler seed."""
    return {
        name: {
            seed: replay(grid, curves, grid.search({**s, "seed": seed}, p), target)
            for seed in seeds
        }
        for name, (s, p) in methods(grid).items()
    }


def verdict(pruned: float, grid: float) -> str:
    return "yes" if pruned <= TARGET_SHARE * grid else "NO"


def report(grid: Grid, curves: dict, seeds: list[int], spread_seeds: list[int]) -> None:
    """The tables: epochs per method and seed, the target's verdict, the best configs."""
    best = max(max(curve) for curve in curves.values())
    target = best - WITHIN
    full = sum(len(curve) for curve in curves.values())
    reaching = [c for c in curves.values() if max(c) >= target]
    first = sorted(next(i for i, a in enumerate(c, 1) if a >= target) for c in reaching)
    results = replays(grid, curves, target, sorted(set(seeds) | set(spread_seeds)))
    few = {name: [r[s].epochs for s in seeds] for name, r in results.items()}
    many = {name: [r[s].epochs for s in spread_seeds] for name, r in results.items()}
    grid_few, grid_many = median(few["grid"], full), median(many["grid"], full)
    print_table(
        f"epochs to reach {target:.4f} (grid's best {best:.4f} - {WITHIN * 100:g} points; "
        f"{len(reaching)} of {len(curves)} configs reach it, first at epoch {span(first)}); "
        f"{grid.name} grid of {len(curves)} configs x {grid.epochs} epochs = {full} in full",
        [
            "method",
            f"sampler seeds {shown(seeds)}",
            "median",
            "of grid",
            f"{len(spread_seeds)} seeds: median",
            "of grid",
            "min | quartiles | max",
        ],
        [
            [
                name,
                shown(few[name]),
                f"{median(few[name], full):g}",
                f"{median(few[name], full) / grid_few:.2f}x",
                f"{median(many[name], full):g}",
                f"{median(many[name], full) / grid_many:.2f}x",
                spread(many[name], full),
            ]
            for name in results
        ],
    )
    pruned_few = median(few["TPE + Hyperband"], full)
    pruned_many = median(many["TPE + Hyperband"], full)
    print_table(
        f"target on the {grid.name} grid ({len(curves)} configs; the verdict: seeds "
        + shown(seeds)
        + ")",
        ["measure", "measured", "target", "met"],
        [
            [
                f"TPE + Hyperband / grid (medians, seeds {shown(seeds)})",
                f"{pruned_few / grid_few:.2f}x",
                f"<= {TARGET_SHARE:.2f}x",
                verdict(pruned_few, grid_few),
            ],
            [
                f"TPE + Hyperband / grid (medians, {len(spread_seeds)} seeds)",
                f"{pruned_many / grid_many:.2f}x",
                f"<= {TARGET_SHARE:.2f}x",
                verdict(pruned_many, grid_many),
            ],
            [
                "TPE + Hyperband / full grid (seeds " + shown(seeds) + ")",
                f"{pruned_few / full:.2f}x",
                "-",
                "-",
            ],
        ],
    )
    if verdict(pruned_few, grid_few) != verdict(pruned_many, grid_many):
        print(
            f"note: the {len(spread_seeds)}-seed figure disagrees with the verdict of seeds "
            f"{shown(seeds)}"
        )
    print_table(
        "trials asked until the target (or the budget), and how many of them were answered from "
        "a completed trial with their config, trained not at all",
        ["method", f"sampler seeds {shown(seeds)}: asked", "answered"],
        [
            [
                name,
                " / ".join(str(r[s].trials) for s in seeds),
                " / ".join(str(r[s].answered) for s in seeds),
            ]
            for name, r in results.items()
        ],
    )
    top = sorted(curves.items(), key=lambda item: -max(item[1]))
    print_table(
        f"best validation accuracy per config (any epoch), best first: the first "
        f"{min(20, len(top))} of {len(top)}",
        [*grid.values, "best", "epoch"],
        [
            [*map(str, key), f"{max(curve):.4f}", str(curve.index(max(curve)) + 1)]
            for key, curve in top[:20]
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, 4 configs, 3 epochs")
    parser.add_argument(
        "--grid",
        choices=["small", "large"],
        default="small",
        help="Fashion-MNIST's declared grid: small (144 configs x 15 epochs) or large (648 x 9)",
    )
    parser.add_argument("--workers", type=int, default=1, help="configs trained at once")
    parser.add_argument(
        "--cache",
        type=Path,
        help=f"curves kept as JSON (default: {CACHE.relative_to(REPO_ROOT)}; none with --quick)",
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.quick:
        grid, seeds, spread_seeds, cache_path = digits_grid(), [0], [0, 1, 2], args.cache
    else:
        pixels_file()
        grid, seeds, spread_seeds, cache_path = (
            fashion_grid() if args.grid == "small" else large_fashion_grid(),
            SEEDS,
            SPREAD_SEEDS,
            args.cache or CACHE,
        )
    quiet()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible; load average "
        f"{os.getloadavg()[0]:.2f} at start; data: "
        f"{'data/digits.parquet' if args.quick else 'Fashion-MNIST'}; {args.workers} worker(s)"
    )
    started = time.monotonic()
    cache = CurveCache(cache_path, stamp(grid))
    print(f"cache: {cache.note}")
    curves, count = all_curves(grid, cache, args.workers)
    training = time.monotonic() - started
    report(grid, curves, seeds, spread_seeds)
    print(
        f"\n{time.monotonic() - started:.0f} s in all ({training:.0f} s training {count} "
        f"configs, {len(curves) - count} from the cache); load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
