"""Search efficiency: epochs spent to come within 0.5 points of a declared grid's best accuracy.

    python benchmarks/search_efficiency.py            # 6 x 3 grid, 9 epochs, 3 sampler seeds
    python benchmarks/search_efficiency.py --quick    # 2 x 2 grid, 3 epochs, 1 seed

What is measured. The data is the bundled digits (data/fashion_mnist when that Parquet folder
exists). Every trial is train.py's experiment run in this process through Optuna (`ex.run`,
unrecorded, 1 thread, training seed 0, SGD), with the MLP's width and the lr searched; its
score after each epoch is that epoch's validation accuracy, reported to Optuna. The declared
grid (lr x width) is trained in full once: its best accuracy (any config, any epoch) minus
0.5 points is the target. For each method and sampler seed, trials run until one reaches the
target; the figure is the epochs trained by then, every trial's, pruned ones included, up to the
epoch that reached it (the grid's own order is Optuna's GridSampler with that seed, taken from
the full grid's curves: training is deterministic). A method gets as many trials as the grid
has configs; one that never reaches the target shows ">budget". Methods: grid, random, TPE, and
TPE with Hyperband pruning (min 1 epoch, reduction factor 3). Target: TPE with pruning needs at
most a third of the grid's epochs (medians over seeds).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import statistics
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
import torch
from report import print_table

import experiments.train as train_module

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION = REPO_ROOT / "data" / "fashion_mnist"
WITHIN = 0.005  # of the grid's best validation accuracy
TARGET_SHARE = 1 / 3  # TPE with pruning against the grid


class Reached(Exception):
    """A trial reached the target: the study stops there."""


class Pruned(Exception):
    """Optuna asked to stop this trial after its last reported epoch."""


class Bench:
    """Trains configs in this process and counts the epochs every study spends."""

    def __init__(self, epochs: int, lrs: list[float], widths: list[int]):
        self.epochs, self.lrs, self.widths = epochs, lrs, widths
        self.data = {"path": str(FASHION)} if FASHION.exists() else {}
        self.spent = 0
        self.trial: optuna.Trial | None = None
        self.target: float | None = None
        self.real_evaluate = train_module.evaluate
        train_module.evaluate = self.evaluate  # train.py looks it up at each epoch

    def evaluate(self, *args, **kwargs) -> dict:
        """train.py's evaluation, then the epoch counted, reported, and maybe the study ended."""
        metrics = self.real_evaluate(*args, **kwargs)
        self.spent += 1
        self.epoch += 1
        accuracy = metrics["val_accuracy"]
        self.curve.append(accuracy)
        if self.target is not None and accuracy >= self.target:
            raise Reached
        if self.trial is not None:
            self.trial.report(accuracy, self.epoch)
            if self.trial.should_prune():
                raise Pruned
        return metrics

    def train(self, lr: float, width: int) -> list[float]:
        """One run of the experiment; its validation accuracy after each epoch it trained."""
        self.epoch, self.curve = 0, []
        updates = {
            "lr": lr,
            "epochs": self.epochs,
            "seed": 0,
            "progress": False,
            "optimizer": {"name": "sgd"},
            "model": {"hidden": [width]},
        }
        if self.data:
            updates["data"] = self.data
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                train_module.ex.run(config_updates=updates, options={"--unobserved": True})
        except Pruned:
            raise optuna.TrialPruned() from None
        return self.curve

    def grid(self) -> dict[tuple[float, int], list[float]]:
        """Every declared config trained in full: its accuracy after each epoch."""
        return {(lr, width): self.train(lr, width) for lr in self.lrs for width in self.widths}

    def grid_order(self, seed: int) -> list[tuple[float, int]]:
        """The order in which Optuna's GridSampler with this seed visits the grid."""
        space = {"lr": self.lrs, "width": self.widths}
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=seed))
        order: list[tuple[float, int]] = []

        def visit(trial: optuna.Trial) -> float:
            lr = trial.suggest_categorical("lr", self.lrs)
            order.append((lr, trial.suggest_categorical("width", self.widths)))
            return 0.0

        study.optimize(visit, n_trials=len(self.lrs) * len(self.widths))
        return order

    def search(self, sampler, pruner, budget: int) -> int | None:
        """Epochs spent until a trial reached the target (None: not within budget trials)."""
        self.spent = 0
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)

        def objective(trial: optuna.Trial) -> float:
            self.trial = trial
            lr = trial.suggest_float("lr", min(self.lrs), max(self.lrs), log=True)
            width = trial.suggest_categorical("width", self.widths)
            return max(self.train(lr, width))

        try:
            study.optimize(objective, n_trials=budget, catch=())
        except Reached:
            return self.spent
        finally:
            self.trial = None
        return None


def epochs_to_target(curves, order, target: float) -> int | None:
    """Epochs the grid spends in this order until a config's accuracy reaches the target."""
    spent = 0
    for config in order:
        for accuracy in curves[config]:
            spent += 1
            if accuracy >= target:
                return spent
    return None


def shown(values: list[int | None]) -> str:
    return " / ".join(">budget" if v is None else str(v) for v in values)


def median(values: list[int | None], budget: int) -> float:
    """The median, a miss counted as one more than the budget's epochs."""
    return statistics.median(budget + 1 if v is None else v for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 x 2 grid, 3 epochs, 1 seed")
    args = parser.parse_args()
    if args.quick:
        bench = Bench(3, [0.01, 0.1], [16, 64])
        seeds = [0]
    else:
        bench = Bench(9, [0.001, 0.003, 0.01, 0.03, 0.1, 0.3], [16, 64, 256])
        seeds = [0, 1, 2]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(
        optuna.logging.ERROR
    )  # a trial that reached the target ends "failed"
    logging.getLogger("reprolab").setLevel(logging.ERROR)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible; load average "
        f"{os.getloadavg()[0]:.2f} at start; data: "
        f"{'data/fashion_mnist' if bench.data else 'data/digits.parquet'}"
    )
    started = time.monotonic()
    curves = bench.grid()
    best = max(max(curve) for curve in curves.values())
    bench.target = best - WITHIN
    size, full = len(curves), sum(len(curve) for curve in curves.values())
    budget = size * bench.epochs
    results: dict[str, list[int | None]] = {}
    results["grid"] = [epochs_to_target(curves, bench.grid_order(s), bench.target) for s in seeds]
    samplers = optuna.samplers
    results["random"] = [bench.search(samplers.RandomSampler(seed=s), None, size) for s in seeds]
    results["TPE"] = [bench.search(samplers.TPESampler(seed=s), None, size) for s in seeds]
    hyperband = lambda: optuna.pruners.HyperbandPruner(1, bench.epochs, 3)  # noqa: E731
    results["TPE + Hyperband"] = [
        bench.search(samplers.TPESampler(seed=s), hyperband(), size) for s in seeds
    ]
    grid_median = median(results["grid"], budget)
    rows = [
        [
            name,
            shown(values),
            f"{median(values, budget):g}",
            f"{median(values, budget) / grid_median:.2f}x",
        ]
        for name, values in results.items()
    ]
    print_table(
        f"epochs to reach {bench.target:.4f} (grid's best {best:.4f} - {WITHIN * 100:g} points); "
        f"grid of {size} configs x {bench.epochs} epochs = {full} epochs in full",
        ["method", f"per sampler seed {seeds}", "median", "of grid"],
        rows,
    )
    pruned = median(results["TPE + Hyperband"], budget)
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
            [
                "TPE + Hyperband / full grid",
                f"{pruned / full:.2f}x",
                "-",
                "-",
            ],
        ],
    )
    print(
        f"{time.monotonic() - started:.0f} s in all; load average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
