"""Fashion-MNIST from its original IDX files into Parquet: PNG-encoded images and int labels.

    python data/prepare_fashion_mnist.py                      # reads /usr/share/datasets/fashion-mnist
    python data/prepare_fashion_mnist.py --idx DIR --out data/fashion-mnist --limit 1000

Writes OUT/train.parquet (60,000 rows) and OUT/test.parquet (10,000 rows), columns `image`
(PNG bytes, lossless, 28x28 grey) and `label` (0-9), with the class names in the file's metadata.
PNG rather than raw pixels: the files then take the same path as any encoded image set (decoded
in loader workers), and take about 60% of the bytes of raw uint8. The IDX files come from Debian's
`dataset-fashion-mnist` package or the dataset's own release (github.com/zalandoresearch/fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
PARTS = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise SystemExit(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(idx: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (idx / name).is_file():
            return idx / name
    raise SystemExit(
        f"{idx / stem}.gz not found; install Debian's dataset-fashion-mnist or pass --idx"
    )


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_part(idx: Path, out: Path, part: str, limit: int | None) -> int:
    """One split as Parquet; returns its rows."""
    images = read_idx(find(idx, f"{PARTS[part]}-images-idx3-ubyte"))[:limit]
    labels = read_idx(find(idx, f"{PARTS[part]}-labels-idx1-ubyte"))[:limit]
    table = pa.table(
        {"image": pa.array([png(x) for x in images], pa.binary()), "label": labels.astype(np.int64)}
    ).replace_schema_metadata({"classes": ",".join(CLASSES)})
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{part}.parquet"
    partial = target.with_suffix(".parquet.partial")
    pq.write_table(table, partial, row_group_size=10000)
    partial.replace(target)  # never a half-written file under the final name
    return len(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx", type=Path, default=DEBIAN, help="folder of the IDX files")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each split")
    args = parser.parse_args(argv)
    for part in PARTS:
        rows = write_part(args.idx, args.out, part, args.limit)
        print(f"{args.out / part}.parquet: {rows} images")


if __name__ == "__main__":
    main()
