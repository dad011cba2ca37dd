"""Fixed cost per trial: from a run being asked for to its first training step.

    python benchmarks/trial_start.py            # 5 interleaved rounds
    python benchmarks/trial_start.py --quick    # 1 round

Four ways to start the same recorded run (`with debug seed=R progress=False`, 1 thread, into a
file store), each timed from the moment it is asked for to the first optimizer step (a global
optimizer step pre-hook writes the time, CLOCK_MONOTONIC, shared by all processes):
  fresh   a new `python EXPERIMENT ...` process, as sweeps started every run before: the anchor
  warm    a run forked by a warm-worker server (experiments/warm.py) that loaded torch and the
          experiment once; the server's own start is paid once per sweep and shown apart
  search trial, warm
          a search's trial as the local engine starts it (sweeps/tuner.py's LocalSearch): asked
          from the study (`tuner.ask()`, a random sampler over lr), forked from the search's
          warm workers, the trial opening its study before its first step
  floor   `ex.run(...)` in this process, as an in-process Optuna objective would call it, after
          one such call (nothing left to import): the floor
Each round starts every way once, in a shuffled order; a ratio is the median of the rounds'
paired ratios. Target: warm at most 0.5 s.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from report import print_table

REPO_ROOT = Path(__file__).resolve().parents[1]
WARM_TARGET_S = 0.5
STAMP_VARIABLE = "TRIAL_START_STAMP"
WAIT_S = 600

# train.py's experiment, with a hook that writes the time of the first optimizer step.
EXPERIMENT = f"""
import os, time
from torch.optim.optimizer import register_optimizer_step_pre_hook
from experiments.train import ex


def stamp(optimizer, args, kwargs):
    path = os.environ.get("{STAMP_VARIABLE}")
    if path and not os.path.exists(path):
        with open(path, "w") as out:
            out.write(repr(time.monotonic()))


register_optimizer_step_pre_hook(stamp)

if __name__ == "__main__":
    ex.run_commandline()
"""


class Starts:
    """The three ways to start a run, each returning seconds from asked to first step."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.experiment = folder / "timed_train.py"
        self.experiment.write_text(EXPERIMENT)
        self.store = folder / "runs"
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "REPROLAB_NUM_THREADS": "1",
        }
        self.pool = None
        self.ex = None
        self.search = None

    def argv(self) -> list[str]:
        seed = self.count
        return [str(self.experiment), "-R", str(self.store), "with", "debug", f"seed={seed}"] + [
            "progress=False"
        ]

    def stamp(self) -> Path:
        self.count += 1
        return self.folder / f"stamp-{self.count}"

    @staticmethod
    def elapsed(stamp: Path, asked: float) -> float:
        return float(stamp.read_text()) - asked

    def fresh(self) -> float:
        stamp = self.stamp()
        env = {**self.env, STAMP_VARIABLE: str(stamp)}
        asked = time.monotonic()
        subprocess.run(
            [sys.executable, *self.argv()],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=WAIT_S,
        )
        return self.elapsed(stamp, asked)

    def open_pool(self) -> float:
        """Start the warm-worker server; seconds until it is ready (paid once per sweep)."""
        from experiments.warm import WarmPool

        started = time.monotonic()
        self.pool = WarmPool.open(self.experiment, self.env, self.folder / "warm.log")
        self.pool.wait_ready(timeout=WAIT_S)
        return time.monotonic() - started

    def open_search(self) -> float:
        """A search of the same experiment recorded in the store, and its local engine with its
        warm workers started (their start, as open_pool's, is paid once per search)."""
        from experiments.sweeps.record import SweepBook, SweepRecord
        from experiments.sweeps.space import Search
        from experiments.sweeps.tuner import LocalSearch, Tuner
        from observers.location import StoreLocation

        location = StoreLocation.parse(str(self.store))
        book = SweepBook(location)
        search = Search.from_block(
            {
                "trials": 1000,
                "space": {"lr": {"low": 1e-3, "high": 1e-1, "log": True}},
                "sampler": {"name": "random", "seed": 0},
            }
        ).check()
        record = SweepRecord(
            id=book.new_id(),
            experiment=str(self.experiment.relative_to(REPO_ROOT)),
            named_configs=["debug"],
            configs=[{"seed": 0, "progress": False}],
            extra={"search": search.record()},
        )
        book.save(record)
        self.search = LocalSearch(Tuner(record, location, None, new=True), book, 1, 1)
        started = time.monotonic()
        self.search.open_pool(self.search.tuner.job(0, {}), 0, lambda: False)
        if self.search.pool is None:
            raise SystemExit("the search's warm workers did not start (see its message above)")
        return time.monotonic() - started

    def search_trial(self) -> float:
        stamp = self.stamp()
        os.environ[STAMP_VARIABLE] = str(stamp)  # the trial's environment is this process's
        asked = time.monotonic()
        job = self.search.next_job()
        item = self.search.start(job, 0)
        if item.process.wait(WAIT_S) != 0:
            raise SystemExit(f"a search trial failed: see {item.log}")
        with redirect_stderr(io.StringIO()):  # its line: "trial N (run R): COMPLETED ..."
            self.search.finish(item)  # the study told, as the search does
        return self.elapsed(stamp, asked)

    def warm(self) -> float:
        stamp = self.stamp()
        env = {**self.env, STAMP_VARIABLE: str(stamp)}
        asked = time.monotonic()
        process = self.pool.start(self.argv(), env, self.folder / f"run-{self.count}.log", 1)
        if process.wait(WAIT_S) != 0:
            raise SystemExit(f"a warm run failed: see {self.folder / f'run-{self.count}.log'}")
        return self.elapsed(stamp, asked)

    def floor(self) -> float:
        if self.ex is None:  # the first call imports and builds what the later ones reuse
            import runpy

            import torch

            torch.set_num_threads(1)
            self.ex = runpy.run_path(str(self.experiment), run_name="timed")["ex"]
            self.in_process()
        return self.in_process()

    def in_process(self) -> float:
        stamp = self.stamp()
        os.environ[STAMP_VARIABLE] = str(stamp)
        updates = {"epochs": 1, "limit_batches": 5, "seed": self.count, "progress": False}
        asked = time.monotonic()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            self.ex.run(config_updates=updates, options={"--store": str(self.store)})
        return self.elapsed(stamp, asked)


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[baseline]))


def measure(count: int, folder: Path) -> None:
    starts = Starts(folder)
    server_s = starts.open_pool()
    search_server_s = starts.open_search()
    ways = {
        "fresh": starts.fresh,
        "warm": starts.warm,
        "search trial, warm": starts.search_trial,
        "floor": starts.floor,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    order = random.Random(0)
    try:
        for _ in range(count):
            names = list(ways)
            order.shuffle(names)
            for name in names:
                times[name].append(ways[name]())
    finally:
        starts.pool.close()
        starts.search.pool.close()
    rows = [
        [name, f"{statistics.median(t):.3f} s", f"{min(t):.3f}-{max(t):.3f} s"]
        for name, t in times.items()
    ]
    rows.append(["(warm-worker server start, once)", f"{server_s:.3f} s", "-"])
    rows.append(["(search's server start, once)", f"{search_server_s:.3f} s", "-"])
    print_table(
        f"run asked for -> first training step, median of {count} interleaved rounds",
        ["start", "median", "range"],
        rows,
    )
    warm = statistics.median(times["warm"])
    trial = statistics.median(times["search trial, warm"])
    print_table(
        "ratios (median of paired ratios) and target",
        ["measure", "measured", "target", "met"],
        [
            ["warm / fresh", f"{paired_ratio(times, 'warm', 'fresh'):.3f}x", "-", "-"],
            ["warm / floor", f"{paired_ratio(times, 'warm', 'floor'):.2f}x", "-", "-"],
            ["fresh / floor", f"{paired_ratio(times, 'fresh', 'floor'):.2f}x", "-", "-"],
            [
                "warm, median",
                f"{warm:.3f} s",
                f"<= {WARM_TARGET_S} s",
                "yes" if warm <= WARM_TARGET_S else "NO",
            ],
            [
                "search trial, warm, median",
                f"{trial:.3f} s",
                f"<= {WARM_TARGET_S} s",
                "yes" if trial <= WARM_TARGET_S else "NO",
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 1)")
    args = parser.parse_args()
    count = args.rounds or (1 if args.quick else 5)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f} at start"
    )
    # inside the checkout (ignored by git): a search's experiment must be a file of it
    with tempfile.TemporaryDirectory(dir=REPO_ROOT, prefix=".test-trial-start-") as folder:
        measure(count, Path(folder))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
