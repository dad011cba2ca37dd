"""Image benchmark: encoded images through the data ingredient against what users write by hand.

    python benchmarks/images.py            # 50,000 64x64 images per format (several minutes)
    python benchmarks/images.py --quick    # 2,000 images: a smoke run

For PNG and JPEG, one shuffled epoch of batches of 128 with 0, 1 and 2 loader workers:
  ours   the data ingredient: a Parquet file of encoded bytes, decoded a batch at a time in workers
  hand   a per-sample Dataset opening each image file with Pillow, converting it to a tensor,
         under DataLoader's default collate (the pipeline users write by hand)
  limit  Pillow decoding the same bytes in a tight loop in as many processes (1 for 0 workers)
Then peak resident memory (VmHWM, in a child process) of one epoch over data 1x, 4x and 16x the
in_memory_mb budget (it should stay flat), and batched augmentation (one kornia warp per batch)
against per-image augmentation as a worker would do it, on the CPU. Ratios are measured in the
same process run.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from report import print_table

from ingredients.augment import Augmenter
from ingredients.data import Splits, make_loader
from ingredients.images import image_source, load_image_splits

BATCH = 128
SIZE = 64
AUGMENT = [{"name": "crop", "padding": 4}, {"name": "flip"}, {"name": "color_jitter"}]


def make_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth 64x64 RGB images with noise (compress like photos more than like pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = []
    for _ in range(n):
        fx, fy, phase = rng.uniform(0.02, 0.2, 3)
        base = 127 + 100 * np.sin(fx * xx + fy * yy + phase * 6)
        rgb = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (SIZE, SIZE, 3))
        images.append(rgb.clip(0, 255).astype(np.uint8))
    return images


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write(folder: Path, blobs: list[bytes], fmt: str) -> tuple[Path, Path]:
    """The Parquet file (ours) and a folder of image files (the hand-written pipeline)."""
    files = folder / f"files-{fmt}"
    files.mkdir()
    suffix = ".png" if fmt == "PNG" else ".jpg"
    for i, blob in enumerate(blobs):
        (files / f"{i}{suffix}").write_bytes(blob)
    table = pa.table({"image": pa.array(blobs, pa.binary()), "label": np.arange(len(blobs)) % 10})
    path = folder / f"{fmt}.parquet"
    pq.write_table(table, path, compression="none", row_group_size=1024)  # read 1,024 at a time
    return path, files


def config(path: Path, **overrides) -> dict:
    return {
        "path": str(path), "format": "auto", "target": "label", "features": None, "shape": None,
        "standardize": False, "val_fraction": 0.01, "split_seed": 0, "in_memory_mb": 1024,
        "image_column": None, "channels": None, "image_size": None, "split_column": None,
        "val_path": None, "test_path": None, "augment": [], "mean": None, "std": None,
        **overrides,
    }  # fmt: skip


def load(path: Path, **overrides) -> Splits:
    cfg = config(path, **overrides)
    return load_image_splits(cfg, image_source(cfg), Splits)


def epoch_rate(batches) -> float:
    start, count = time.perf_counter(), 0
    for _, y in batches:
        count += len(y)
    return count / (time.perf_counter() - start)


def ours(splits: Splits, workers: int) -> float:
    loader = make_loader(
        splits.train, True, batch_size=BATCH, shuffle=True, drop_last=False,
        num_workers=workers, pin_memory=False, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    if loader.workers is not None:  # start the persistent workers before timing, as for hand
        iter(loader.workers)
    return epoch_rate(loader)


class PerSample(torch.utils.data.Dataset):
    """What users write by hand: open the file, convert, to a float tensor, one at a time."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as image:
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255), i % 10


def hand(files: list[Path], workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        PerSample(files), batch_size=BATCH, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0,
    )  # fmt: skip
    iter(loader)
    return epoch_rate(loader)


def _decode_share(blobs: list[bytes]) -> float:
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            np.asarray(image.convert("RGB"))
    return time.perf_counter() - start


def limit(blobs: list[bytes], processes: int) -> float:
    """Images/s of Pillow decoding the bytes in a tight loop in `processes` processes."""
    shares = [blobs[k::processes] for k in range(processes)]
    if processes == 1:
        return len(blobs) / _decode_share(blobs)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        times = pool.map(_decode_share, shares)
    return len(blobs) / max(times)


def memory_child(path: Path, budget_mb: float) -> None:
    """Child process: one epoch with 2 workers under the budget; peak RSS as JSON."""
    splits = load(path, in_memory_mb=budget_mb)
    rate = ours(splits, 2)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    peak = int(status["VmHWM"].split()[0]) / 1024
    print(
        json.dumps(
            {"rate": rate, "peak_rss_mb": peak, "on_disk": splits.train.images.path is not None}
        )
    )


def measure_memory(path: Path, budget_mb: float) -> dict:
    command = [sys.executable, __file__, "--memory-child", str(path), "--budget", str(budget_mb)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory(folder: Path, path: Path, total_mb: float, n: int) -> list[list[str]]:
    """Peak RSS rows of one epoch over 1/16, 1/4 and all of the images with a budget of 1/16
    of them: data 1x, 4x and 16x data.in_memory_mb."""
    budget, rows = total_mb / 16, []
    for share in (16, 4, 1):
        source, count = path, max(n // share, min(n, 128))  # a smoke run's 1/16 has no val row
        if share > 1:
            source = folder / f"part-{share}.parquet"
            part = pq.read_table(path).slice(0, count)
            pq.write_table(part, source, compression="none", row_group_size=1024)
        found = measure_memory(source, budget)
        size = total_mb * count / n
        rows.append([f"1/{share} of the images" if share > 1 else "all images", f"{size:.1f} MB",
                     f"{size / budget:.0f}x", f"{found['peak_rss_mb']:,.0f} MB",
                     "scratch file" if found["on_disk"] else "memory", f"{found['rate']:,.0f}"])  # fmt: skip
    return rows


def augmentation(n: int) -> tuple[float, float]:
    """Images/s of batched augmentation (batches of 128) and of per-image augmentation."""
    x = torch.from_numpy(np.stack(make_images(n, seed=1))).permute(0, 3, 1, 2).contiguous()
    augment = Augmenter(AUGMENT, {"mean": [0.5] * 3, "std": [0.25] * 3}, 3)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for k in range(0, n, BATCH):
        augment(x[k : k + BATCH], g)
    batched = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for k in range(n):
        augment(x[k : k + 1], g)
    return batched, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 images: a smoke run")
    parser.add_argument("--images", type=int, help="images per format")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.budget)
    n = args.images or (2_000 if args.quick else 50_000)
    torch.set_num_threads(1)
    pixels = make_images(n)
    with tempfile.TemporaryDirectory(prefix="reprolab-bench-images-") as tmp:
        folder, rows, memory_rows = Path(tmp), [], []
        for fmt in ("PNG", "JPEG"):
            blobs = [encode(p, fmt) for p in pixels]
            path, files = write(folder, blobs, fmt)
            splits = load(path)
            listing = sorted(files.iterdir(), key=lambda p: int(p.stem))
            for workers in (0, 1, 2):
                a, b, c = (
                    ours(splits, workers),
                    hand(listing, workers),
                    limit(blobs, max(1, workers)),
                )
                rows.append([f"{fmt} {workers} workers", f"{a:,.0f}", f"{b:,.0f}", f"{c:,.0f}",
                             f"{a / b:.2f}x", f"{a / c:.2f}x"])  # fmt: skip
            if fmt == "JPEG":
                memory_rows = memory(folder, path, sum(map(len, blobs)) / 2**20, n)
        print_table(
            f"encoded {SIZE}x{SIZE} images, batch {BATCH}: images/s of one epoch ({n:,} images)",
            ["format, workers", "ours", "hand", "limit", "ours/hand", "ours/limit"],
            rows,
        )
        print_table(
            "memory: peak RSS of one epoch (2 workers) over data above data.in_memory_mb",
            ["data", "encoded", "x budget", "peak RSS", "images held in", "images/s"],
            memory_rows,
        )
    batched, single = augmentation(min(n, 2048))
    print_table(
        "augmentation on the CPU (crop, flip, colour jitter): images/s",
        ["batched (device)", "per image (worker)", "ratio"],
        [[f"{batched:,.0f}", f"{single:,.0f}", f"{batched / single:.1f}x"]],
    )


if __name__ == "__main__":
    main()
