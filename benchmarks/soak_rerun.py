"""Soak test: train, then `reprolab rerun --verify`, many times over, while other processes load
every core; prints how many reruns matched their original bit for bit (every one must).

    python benchmarks/soak_rerun.py --pairs 16
    python benchmarks/soak_rerun.py --pairs 64 --epochs 3 --no-load

Runs cycle through data in memory / on disk (data.in_memory_mb=0: read per batch), 0 / 2 loader
workers and the MLP / the CNN, each with its own seed. Not part of the test suite: it takes
minutes (about 20 s a pair on two busy cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "experiments" / "train.py"

# The load: pure-Python spinning (scheduler pressure) and numpy matrix products (cache and
# memory bandwidth, BLAS threads of their own), half and half.
SPIN = "while True:\n    pass"
MATMUL = "import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n    a @ a"

DATA = {"memory": [], "disk": ["data.in_memory_mb=0"]}
MODELS = {"mlp": [], "cnn": ["cnn"]}
WORKERS = (0, 2)


def start_load(processes: int) -> list[subprocess.Popen]:
    """Processes that keep every core busy until stopped."""
    programs = itertools.cycle([SPIN, MATMUL])
    return [
        subprocess.Popen(
            [sys.executable, "-c", next(programs)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]


def stop_load(load: list[subprocess.Popen]) -> None:
    for process in load:
        process.kill()
    for process in load:
        process.wait()


def train(store: Path, seed: int, epochs: int, data: str, workers: int, model: str) -> int:
    """Train one run; return its id in the store."""
    updates = [
        *DATA[data],
        f"data.num_workers={workers}",
        f"seed={seed}",
        f"epochs={epochs}",
        "progress=False",
    ]
    command = [sys.executable, str(TRAIN), "-R", str(store), "with", *MODELS[model], *updates]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(updates)}):\n{result.stderr[-2000:]}")
    return max(int(p.name) for p in store.iterdir() if p.name.isdigit())


def rerun_verdict(store: Path, run_id: int) -> str:
    """'match', 'MISMATCH' or 'error' for `reprolab rerun RUN --verify`."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            "rerun",
            str(run_id),
            "--store",
            str(store),
            "--verify",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if "verify: exact match" in result.stdout and result.returncode == 0:
        return "match"
    if "verify: MISMATCH" in result.stdout:
        print(
            "\n".join(
                line
                for line in result.stdout.splitlines()
                if re.match(r"\s*(verify|then vs now|  )", line)
            ),
            file=sys.stderr,
        )
        return "MISMATCH"
    print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
    return "error"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16, help="train + rerun pairs (default 16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument(
        "--load",
        type=int,
        default=os.cpu_count() or 1,
        help="busy processes alongside (default: one per core)",
    )
    parser.add_argument(
        "--no-load", dest="load", action="store_const", const=0, help="no busy processes"
    )
    args = parser.parse_args()
    combos = list(itertools.product(DATA, WORKERS, MODELS))
    verdicts: Counter = Counter()
    by_combo: dict[tuple, Counter] = {combo: Counter() for combo in combos}
    load = start_load(args.load)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="reprolab-soak-") as tmp:
            store = Path(tmp) / "runs"
            for pair in range(args.pairs):
                data, workers, model = combos[pair % len(combos)]
                run_id = train(store, 3 + pair, args.epochs, data, workers, model)
                verdict = rerun_verdict(store, run_id)
                verdicts[verdict] += 1
                by_combo[(data, workers, model)][verdict] += 1
                print(
                    f"pair {pair + 1:3d}/{args.pairs}: {data:6s} workers={workers} {model}: "
                    f"{verdict}",
                    flush=True,
                )
    finally:
        stop_load(load)
    print(f"\n{'data':6s}  {'workers':7s}  {'model':5s}  matched")
    for (data, workers, model), counts in by_combo.items():
        if counts:
            print(
                f"{data:6s}  {workers:7d}  {model:5s}  {counts['match']} of {sum(counts.values())}"
            )
    print(
        f"\nmatched {verdicts['match']} of {args.pairs} reruns bit for bit "
        f"({verdicts['MISMATCH']} mismatched, {verdicts['error']} failed) with {args.load} busy "
        f"processes on {os.cpu_count()} cores, in {time.perf_counter() - started:.0f} s"
    )
    sys.exit(0 if verdicts["match"] == args.pairs else 1)


if __name__ == "__main__":
    main()
