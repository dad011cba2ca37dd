"""Start-up benchmark: the fixed cost of a command, against its baseline measured in the same run.

    python benchmarks/startup.py            # 9 interleaved rounds, then 3 default training runs
    python benchmarks/startup.py --quick    # 2 rounds, no training run

(g) `python experiments/train.py print_config` against `python -c "import torch"`: the command
    cannot start faster than torch imports. Target: within 1.3x.
(h) `reprolab ls` on an empty store against `python -c "pass"` (the interpreter alone).
    Target: under 0.5 s.
Each round runs every command once, in a shuffled order, so a busy moment of the machine
falls on both sides of a ratio; a ratio is the median of the rounds' paired ratios.
(i) the README's default run, `python experiments/train.py -u` (15 epochs, nothing recorded),
    wall time from the shell.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import print_table

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "experiments" / "train.py"
PRINT_CONFIG_TARGET = 1.3  # times `import torch`
LS_TARGET = 0.5  # seconds


def wall(command: list[str]) -> float:
    """Seconds a command takes from start to exit, run from the repository root."""
    start = time.perf_counter()
    subprocess.run(
        command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def rounds(commands: dict[str, list[str]], count: int, seed: int = 0) -> dict[str, list[float]]:
    """Wall times of each command, one per round, the commands shuffled within every round."""
    order, times = random.Random(seed), {name: [] for name in commands}
    wall(commands[next(iter(commands))])  # warm the file cache once before anything counts
    for _ in range(count):
        names = list(commands)
        order.shuffle(names)
        for name in names:
            times[name].append(wall(commands[name]))
    return times


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of name's time divided by the baseline's time in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline]))


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s"


def report_startup(count: int, empty_store: Path) -> None:
    script = Path(sys.executable).with_name("reprolab")  # the console script a user runs
    reprolab = [str(script)] if script.is_file() else [sys.executable, "-m", "experiments.cli"]
    reprolab += ["ls", "--store", str(empty_store)]
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "train.py print_config": [sys.executable, str(TRAIN), "print_config"],
        "python (nothing)": [sys.executable, "-c", "pass"],
        "reprolab ls (empty store)": reprolab,
    }
    times = rounds(commands, count)
    config_ratio = paired_ratio(times, "train.py print_config", "import torch")
    ls_median = statistics.median(times["reprolab ls (empty store)"])
    rows = [[name, f"{statistics.median(t):.2f} s", spread(t)] for name, t in times.items()]
    print_table(
        f"(g, h) start-up, median of {count} interleaved rounds",
        ["command", "median wall", "range"],
        rows,
    )
    print_table(
        "targets",
        ["measure", "measured", "target", "met"],
        [
            [
                "print_config / import torch (paired)",
                f"{config_ratio:.2f}x",
                f"<= {PRINT_CONFIG_TARGET}x",
                "yes" if config_ratio <= PRINT_CONFIG_TARGET else "NO",
            ],
            [
                "reprolab ls, empty store",
                f"{ls_median:.2f} s",
                f"< {LS_TARGET} s",
                "yes" if ls_median < LS_TARGET else "NO",
            ],
            [
                "reprolab ls / python (paired)",
                f"{paired_ratio(times, 'reprolab ls (empty store)', 'python (nothing)'):.2f}x",
                "-",
                "-",
            ],
        ],
    )


def report_default_run(count: int) -> None:
    times = [wall([sys.executable, str(TRAIN), "-u"]) for _ in range(count)]
    print_table(
        f"(i) the default run (15 epochs, -u), {count} runs",
        ["command", "median wall", "range"],
        [["python experiments/train.py -u", f"{statistics.median(times):.2f} s", spread(times)]],
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds and no training run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 2)")
    parser.add_argument("--runs", type=int, help="default training runs (default 3, quick 0)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    count = args.rounds or (2 if args.quick else 9)
    runs = args.runs if args.runs is not None else (0 if args.quick else 3)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="reprolab-startup-") as empty:
        report_startup(count, Path(empty))
    if runs:
        report_default_run(runs)
    print(
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )  # the figures hold for this load only


if __name__ == "__main__":
    main()
