"""Loader benchmark: the data ingredient against pandas and plain torch, measured in one process.

    python benchmarks/loader.py            # 1,000,000 rows (about 2-3 minutes on 2 cores)
    python benchmarks/loader.py --quick    # 100,000 rows, 2 repeats: a smoke run

One shuffled epoch of batches of 256 over a ROWS x 64 float32 + int64 label table, written to a
temporary directory as Parquet and as Arrow IPC (removed afterwards). Baselines, same run:
  (a) pandas DataFrame + a per-row Dataset (df.iloc[i]) under torch's DataLoader, on a subset
  (b) TensorDataset + DataLoader, the default per-sample path, on a subset
  (c) torch.index_select of the same batches from tensors already in memory: the limit
Then files above data.in_memory_mb, read per batch with positional reads: row-major IPC (one
fixed-size-list column) in place, one column per feature IPC and Parquet from a row-major copy
in $TMPDIR; each, and a row-major file several times the budget, also in a child process whose
peak resident memory (VmHWM) is reported. Every figure is the median of --repeats runs,
interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import torch
from report import print_table

from ingredients.data import data, fingerprint_file, load_splits, make_loader, row_major_table

FEATURES = 64
BATCH = 256
CHUNK_ROWS = 65536  # rows per record batch / row group of the written files
DEFAULTS = dict(data.configurations[0]())
SPLIT_KEYS = (
    "path",
    "format",
    "target",
    "features",
    "shape",
    "standardize",
    "val_fraction",
    "split_seed",
    "in_memory_mb",
)


# --------------------------------------------------------------------------- files


def random_chunks(rows: int, seed: int = 0):
    """The table as record batches of CHUNK_ROWS rows: f0..f63 float32 and an int64 label."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        columns = {f"f{j}": x[:, j] for j in range(FEATURES)}
        yield pa.record_batch({**columns, "label": rng.integers(0, 10, n)})


def write_ipc(path: Path, batches, row_major: bool = False) -> Path:
    """An uncompressed Arrow IPC file of the batches (features packed per row if row_major)."""
    writer = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = row_major_table(table, "label") if row_major else table
        writer = writer or pa_ipc.new_file(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def write_files(directory: Path, rows: int, big_rows: int) -> dict[str, Path]:
    """Parquet, column-per-feature IPC and row-major IPC of `rows` rows, and a big row-major IPC."""
    table = pa.Table.from_batches(list(random_chunks(rows)))
    pq.write_table(table, directory / "table.parquet", row_group_size=CHUNK_ROWS)
    return {
        "parquet": directory / "table.parquet",
        "ipc": write_ipc(directory / "table.arrow", table.to_batches()),
        "row_major": write_ipc(directory / "rows.arrow", table.to_batches(), row_major=True),
        "big": write_ipc(directory / "big.arrow", random_chunks(big_rows, seed=1), row_major=True),
    }


# --------------------------------------------------------------------------- measuring


def load(path: Path, hashed: bool = True, **overrides):
    """load_splits with the config defaults, every argument explicit (no Sacred run needed);
    unless told otherwise, waits for the data file's hash, which would else run on a thread
    alongside what is measured next."""
    values = {**DEFAULTS, "path": str(path), **overrides}
    splits = load_splits(**{k: values[k] for k in SPLIT_KEYS})
    if hashed:
        splits.digest(None)
    return splits


def batches(dataset, num_workers: int = 0):
    """The training loader of the data ingredient, batch 256, shuffled by a seeded generator."""
    return make_loader(
        dataset,
        True,
        batch_size=BATCH,
        shuffle=True,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=False,
        generator=torch.Generator().manual_seed(0),
    )


def epoch_rate(iterable) -> float:
    """Samples per second over one pass of an iterable of (x, y) batches."""
    start, count = time.perf_counter(), 0
    for _, y in iterable:
        count += len(y)
    return count / (time.perf_counter() - start)


def interleaved(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of each candidate's result over `repeats` rounds, the candidates taking turns in a
    rotating order, after a warm-up round (fresh memory is slow at first on virtual machines)."""
    results: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_ in range(repeats + 1):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate
            value = candidates[name]()
            if round_:
                results[name].append(value)
    return {name: statistics.median(values) for name, values in results.items()}


def timed(action: Callable[[], object]) -> Callable[[], float]:
    """A measure: seconds that action takes."""

    def measure() -> float:
        start = time.perf_counter()
        action()
        return time.perf_counter() - start

    return measure


def first_batch(path: Path, **overrides) -> tuple[float, float]:
    """Seconds from the file to the first training batch in hand, as a run does it, and until
    the file's SHA-256 (hashed on a thread from then on, alongside training) is also done."""
    start = time.perf_counter()
    splits = load(path, hashed=False, **overrides)
    next(iter(batches(splits.train)))
    first = time.perf_counter() - start
    splits.digest()
    return first, time.perf_counter() - start


def index_select_rate(x: torch.Tensor, y: torch.Tensor) -> float:
    """Baseline (c): the same shuffled batches taken with index_select from memory."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return epoch_rate((x.index_select(0, i), y.index_select(0, i)) for i in order.split(BATCH))


def tensor_dataset_rate(x: torch.Tensor, y: torch.Tensor) -> float:
    """Baseline (b): TensorDataset under DataLoader, one sample at a time, then collate."""
    dataset = torch.utils.data.TensorDataset(x, y)
    return epoch_rate(torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True))


class PandasRows(torch.utils.data.Dataset):
    """Baseline (a): the usual per-row Dataset over a pandas DataFrame."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int):
        row = self.frame.iloc[i]
        return torch.tensor(row.iloc[:FEATURES].to_numpy(dtype=np.float32)), int(row["label"])


def pandas_rate(frame: pd.DataFrame) -> float:
    loader = torch.utils.data.DataLoader(PandasRows(frame), batch_size=BATCH, shuffle=True)
    return epoch_rate(loader)


# --------------------------------------------------------------------------- memory (child)


def memory_status() -> dict[str, float]:
    """This process's resident memory figures from /proc/self/status, in MB."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    figures = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in wanted:
                figures[key] = int(value.split()[0]) / 1024
    return figures


def memory_child(path: Path, budget_mb: float) -> None:
    """Child process: load with the budget, iterate one epoch, print rates and memory as JSON."""
    before = memory_status()["VmRSS"]
    start = time.perf_counter()
    splits = load(path, hashed=False, in_memory_mb=budget_mb)
    iterator = iter(batches(splits.train))
    count = len(next(iterator)[1])
    first = time.perf_counter() - start
    splits.digest(None)  # as a run does alongside its first epoch; not while the rate is timed
    rate = epoch_rate(iterator)
    after = memory_status()
    print(
        json.dumps(
            {
                "source": type(splits.train.features).__name__,
                "first_batch_s": first,
                "rate": rate,
                "rss_before_mb": before,
                "peak_rss_mb": after["VmHWM"],
                "rss_anon_end_mb": after["RssAnon"],
                "samples": count,
            }
        )
    )


def measure_memory(path: Path, budget_mb: float) -> dict:
    """Run memory_child in a fresh process (its VmHWM is its own) and return what it printed."""
    command = [sys.executable, __file__, "--memory-child", str(path), "--budget", str(budget_mb)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def mb(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:,.0f} MB"


def main() -> None:
    args = parse_args()
    if args.memory_child:
        return memory_child(Path(args.memory_child), args.budget)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (2 if args.quick else 3)
    budget = max(1, rows * FEATURES * 4 // 2**20 // 4)  # a quarter of the table
    with tempfile.TemporaryDirectory(prefix="reprolab-loader-") as tmp:
        files = write_files(Path(tmp), rows, big_rows=4 * rows)
        print(
            f"Loader benchmark: {rows:,} x {FEATURES} float32 + int64 label, batch {BATCH}, "
            f"one shuffled epoch of the {rows - round(rows * 0.2):,}-row training split; "
            f"medians of {repeats} repeats; torch {torch.__version__}, "
            f"pyarrow {pa.__version__}, {os.cpu_count()} CPUs"
        )
        report_first_batch(files, repeats)
        report_throughput(files, repeats, quick=args.quick)
        report_file_backed(files, repeats, budget, children=["ipc", "big"] if args.quick else None)


def report_first_batch(files: dict[str, Path], repeats: int) -> None:
    """Time from file to first batch against pyarrow reading the file into memory."""
    reads = {
        "parquet": lambda: pq.read_table(files["parquet"]),
        "ipc": lambda: pa_ipc.open_file(pa.OSFile(str(files["ipc"]))).read_all(),
    }
    table = []
    for name, label in (("parquet", "Parquet"), ("ipc", "Arrow IPC")):
        hashed: list[float] = []

        def ours(n: str = name, hashed: list[float] = hashed) -> float:
            first, done = first_batch(files[n])
            hashed.append(done)
            return first

        got = interleaved(
            {
                "ours": ours,
                "read": timed(reads[name]),
                "sha256": timed(lambda n=name: fingerprint_file(files[n])),
            },
            repeats,
        )
        table.append(
            [
                f"{label} ({mb(files[name])})",
                f"{got['ours']:.2f} s",
                f"{got['read']:.2f} s",
                f"{got['ours'] / got['read']:.2f}x",
                f"{statistics.median(hashed[1:]):.2f} s",  # without the warm-up round
                f"{got['sha256']:.2f} s",
            ]
        )
    print_table(
        "file -> first batch: read, split, row-major copy, training statistics, "
        "standardise (target <= 1.5x of the read); the SHA-256 the run records is hashed "
        "on a thread from then on, alongside training",
        [
            "file",
            "first batch",
            "pyarrow read alone",
            "ratio",
            "first batch + SHA-256",
            "SHA-256 alone",
        ],
        table,
    )


def report_throughput(files: dict[str, Path], repeats: int, quick: bool) -> None:
    """Samples per second of our loaders against the three baselines."""
    splits = {name: load(files[name]) for name in ("parquet", "ipc")}
    x, y = splits["parquet"].train.features, splits["parquet"].train.targets
    subset_b, subset_a = (20_000, 2_000) if quick else (100_000, 5_000)
    frame = pd.read_parquet(files["parquet"])
    # num_workers=2 takes the same path: in-memory batches are gathered in the main process
    loaders = {
        f"ours, {label}, num_workers={w}": batches(splits[name].train, w)
        for name, label in (("parquet", "Parquet"), ("ipc", "IPC"))
        for w in (0, 2)
    }
    candidates = {name: (lambda b=b: epoch_rate(b)) for name, b in loaders.items()}
    candidates["(c) index_select from memory"] = lambda: index_select_rate(x, y)
    candidates[f"(b) TensorDataset + DataLoader ({subset_b:,} samples)"] = lambda: (
        tensor_dataset_rate(x[:subset_b], y[:subset_b])
    )
    candidates[f"(a) pandas df.iloc per row ({subset_a:,} samples)"] = lambda: pandas_rate(
        frame.iloc[:subset_a]
    )
    rates = interleaved(candidates, repeats)
    a, b, c = (rates[next(k for k in rates if k.startswith(p))] for p in ("(a)", "(b)", "(c)"))
    table = [
        [name, f"{rate:,.0f}", f"{rate / c:.2f}x", f"{rate / b:,.1f}x", f"{rate / a:,.0f}x"]
        for name, rate in rates.items()
    ]
    print_table(
        "samples per second, in memory; the headline is against (c), the limit of gathering "
        "from memory (targets: >= 0.5x (c), >= 20x (b), >= 100x (a))",
        ["loader", "samples/s", "of (c) limit", "vs (b)", "vs (a)"],
        table,
    )


def report_file_backed(
    files: dict[str, Path], repeats: int, budget: float, children: list[str] | None = None
) -> None:
    """Files above the budget: throughput here; memory and first batch in child processes
    (for every file, or only for those named in `children`)."""
    layouts = {
        "ipc": "IPC, one column per feature (row-major copy)",
        "parquet": "Parquet (row-major copy)",
        "row_major": "IPC, row-major fixed-size list (in place)",
    }
    splits = {name: load(files[name], in_memory_mb=budget) for name in layouts}
    candidates = {
        (name, w): (lambda s=splits[name], w=w: epoch_rate(batches(s.train, w)))
        for name in layouts
        for w in (0, 2)
    }
    rates = interleaved(candidates, repeats)
    table = []
    for name, label in [*layouts.items(), ("big", layouts["row_major"])]:
        skip = children is not None and name not in children
        memory = {} if skip else measure_memory(files[name], budget)
        w0 = rates.get((name, 0), memory.get("rate"))
        w2 = f"{rates[(name, 2)]:,.0f}" if (name, 2) in rates else "-"
        figures = (
            ["-"] * 3
            if skip
            else [
                f"{memory['first_batch_s']:.2f} s",
                f"{memory['peak_rss_mb']:,.0f} MB",
                f"{memory['rss_before_mb']:,.0f} MB",
            ]
        )
        table.append([f"{label}, {mb(files[name])}", f"{w0:,.0f}", w2, *figures])
    print_table(
        f"files above data.in_memory_mb={budget:g}, read per batch (peak RSS: VmHWM of a "
        "child process that loads and iterates one epoch; 'before': after imports; "
        f"{os.cpu_count()} CPUs: workers help only with cores to spare)",
        ["layout, file size", "samples/s w=0", "w=2", "first batch", "peak RSS", "RSS before"],
        table,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 2 repeats")
    parser.add_argument("--rows", type=int, help="rows of the table (default 1,000,000)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 3)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=64, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
