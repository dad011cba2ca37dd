"""Search efficiency: epochs spent to come within 0.5 points of a declared grid's best accuracy.

    python benchmarks/search_efficiency.py          # Fashion-MNIST, 6 x 2 x 3 grid, 15 epochs, 3 seeds
    python benchmarks/search_efficiency.py --quick  # the bundled digits, 2 x 2 x 1 grid, 3 epochs, 1 seed

The full run needs data/fashion-mnist/train.parquet (data/prepare_fashion_mnist.py); it decodes
the PNGs once into data/fashion-mnist/train-pixels.parquet (raw uint8 pixels: the same images,
no decoding per epoch) and trains on that.

What is measured. The declared grid is SGD (momentum 0.9, batch 128) lr {0.001, 0.003, 0.01,
0.03, 0.1, 0.3} x MLP width {64, 256} x dropout {0, 0.2, 0.4}: 36 configs, 15 epochs each, 540
epochs in full. Each config is train.py's experiment run once in this process (`ex.run`,
unrecorded, 1 thread, training seed 0) on the 54,000 training rows, an epoch being 200 batches
(25,600 rows, a training subset drawn anew each epoch by the loader's shuffle), validated after
each epoch on the 6,000 held-out rows; its curve is that validation accuracy per epoch. The
target is the best accuracy of any config at any epoch minus 0.5 points.

Every method searches the declared grid's space (each key a categorical of its declared values)
with reprolab's own sampler and pruner (`Search.make_sampler`, `make_pruner`, as `reprolab
sweep` builds them), over 36 trials at most. Training is deterministic, so a trial is replayed
from its config's curve instead of trained again (a pruned trial's first k epochs are the full
run's first k): each epoch is reported to the trial and counted, and the count stops at the
first epoch of any trial that reaches the target. The figure is every epoch counted by then,
pruned trials' and repeated configs' included; ">budget" means no trial reached it.
  grid             reprolab's grid sampler with the seed (one shuffle of the 36 configs), each
                   config trained in full before the next, as a grid sweep runs them
  random, TPE      reprolab's random and TPE samplers (TPE's defaults: 10 random start-up trials)
  TPE + Hyperband  TPE with reprolab's Hyperband pruner (min 1 epoch, max 15, reduction factor 3)
Each over sampler seeds 0, 1, 2. Target: TPE with pruning needs at most a third of the grid's
epochs (medians over seeds, a miss counted as the full grid's epochs + 1).
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import platform
import statistics
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
import torch
from report import print_table

import experiments.train as train_module
from experiments.sweeps.space import Search

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION = REPO_ROOT / "data" / "fashion-mnist" / "train.parquet"
PIXELS = FASHION.with_name("train-pixels.parquet")
WITHIN = 0.005  # of the grid's best validation accuracy
TARGET_SHARE = 1 / 3  # TPE with pruning against the grid
SEEDS = [0, 1, 2]


class Grid:
    """A declared grid: its values per key, the epochs each config trains, how each trains."""

    def __init__(self, values: dict[str, list], epochs: int, fixed: dict):
        self.values, self.epochs, self.fixed = values, epochs, fixed

    def configs(self) -> list[dict]:
        return [dict(zip(self.values, combo)) for combo in itertools.product(*self.values.values())]

    def key(self, config: dict) -> tuple:
        return tuple(config[name] for name in self.values)

    def search(self, sampler: dict, pruner: dict) -> Search:
        """The declared search over the grid's space, as `reprolab sweep` checks it."""
        space = {name: {"choices": list(values)} for name, values in self.values.items()}
        trials = len(self.configs())
        return Search(space=space, trials=trials, sampler=sampler, pruner=pruner).check()


def fashion_grid() -> Grid:
    values = {
        "lr": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3],
        "width": [64, 256],
        "dropout": [0.0, 0.2, 0.4],
    }
    fixed = {
        "data": {"path": str(PIXELS), "val_fraction": 0.1, "batch_size": 128},
        "limit_batches": 200,
    }
    return Grid(values, 15, fixed)


def digits_grid() -> Grid:
    return Grid({"lr": [0.01, 0.1], "width": [16, 64], "dropout": [0.1]}, 3, {})


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


class Curves:
    """Trains each config of a grid once: its validation accuracy after each epoch."""

    def __init__(self, grid: Grid):
        self.grid, self.curve = grid, []
        self.real_evaluate = train_module.evaluate
        train_module.evaluate = self.evaluate  # train.py looks it up at each epoch

    def evaluate(self, *args, **kwargs) -> dict:
        metrics = self.real_evaluate(*args, **kwargs)
        self.curve.append(metrics["val_accuracy"])
        return metrics

    def train(self, config: dict) -> list[float]:
        self.curve = []
        updates = {
            **self.grid.fixed,
            "lr": config["lr"],
            "epochs": self.grid.epochs,
            "seed": 0,
            "progress": False,
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "model": {"hidden": [config["width"]], "dropout": config["dropout"]},
        }
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            train_module.ex.run(config_updates=updates, options={"--unobserved": True})
        return self.curve

    def all(self) -> dict[tuple, list[float]]:
        return {self.grid.key(c): self.train(c) for c in self.grid.configs()}


def replay(grid: Grid, curves: dict, search: Search, target: float) -> int | None:
    """Epochs the search spends until a trial's epoch reaches the target (None: never)."""
    study = optuna.create_study(  # seeded searches: the name decides nothing (see space.py)
        study_name="search",
        direction="maximize",
        sampler=search.make_sampler(),
        pruner=search.make_pruner(),
    )
    spent, distributions = 0, search.distributions()
    for _ in range(search.trials or 0):
        trial = study.ask(distributions)
        curve = curves[grid.key(trial.params)]
        for epoch, accuracy in enumerate(curve, start=1):
            spent += 1
            if accuracy >= target:
                return spent
            trial.report(accuracy, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
    return None


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


def shown(values: list[int | None]) -> str:
    return " / ".join(">budget" if v is None else str(v) for v in values)


def median(values: list[int | None], full: int) -> float:
    """The median, a miss counted as one more than the full grid's epochs."""
    return statistics.median(full + 1 if v is None else v for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, 2 x 2 grid, 3 epochs, 1 seed")
    args = parser.parse_args()
    grid, seeds = (digits_grid(), [0]) if args.quick else (fashion_grid(), SEEDS)
    if not args.quick:
        pixels_file()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("reprolab").setLevel(logging.ERROR)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible; load average "
        f"{os.getloadavg()[0]:.2f} at start; data: "
        f"{'data/digits.parquet' if args.quick else 'Fashion-MNIST'}"
    )
    started = time.monotonic()
    curves = Curves(grid).all()
    trained = time.monotonic() - started
    best = max(max(curve) for curve in curves.values())
    target = best - WITHIN
    full = sum(len(curve) for curve in curves.values())
    near = sum(max(curve) >= target for curve in curves.values())
    results = {
        name: [replay(grid, curves, grid.search({**s, "seed": seed}, p), target) for seed in seeds]
        for name, (s, p) in methods(grid).items()
    }
    grid_median = median(results["grid"], full)
    rows = [
        [
            name,
            shown(values),
            f"{median(values, full):g}",
            f"{median(values, full) / grid_median:.2f}x",
        ]
        for name, values in results.items()
    ]
    print_table(
        f"epochs to reach {target:.4f} (grid's best {best:.4f} - {WITHIN * 100:g} points; "
        f"{near} of {len(curves)} configs reach it); grid of {len(curves)} configs x "
        f"{grid.epochs} epochs = {full} epochs in full",
        ["method", f"per sampler seed {seeds}", "median", "of grid"],
        rows,
    )
    pruned = median(results["TPE + Hyperband"], full)
    print_table(
        "target",
        ["measure", "measured", "target", "met"],
        [
            [
                "TPE + Hyperband / grid (medians)",
                f"{pruned / grid_median:.2f}x",
                f"<= {TARGET_SHARE:.2f}x",
                "yes" if pruned <= TARGET_SHARE * grid_median else "NO",
            ],
            ["TPE + Hyperband / full grid", f"{pruned / full:.2f}x", "-", "-"],
        ],
    )
    print_table(
        "best validation accuracy per config (any epoch), best first",
        [*grid.values, "best", "epoch"],
        [
            [*key, f"{max(curve):.4f}", str(curve.index(max(curve)) + 1)]
            for key, curve in sorted(curves.items(), key=lambda item: -max(item[1]))
        ],
    )
    print(
        f"{time.monotonic() - started:.0f} s in all ({trained:.0f} s training the grid); "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
