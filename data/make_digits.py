"""Write data/digits.parquet, the small real dataset the default run trains on.

The data is the UCI "Optical Recognition of Handwritten Digits" test set (1,797 8x8 images of
the digits 0-9, pixel counts 0..16), as bundled with scikit-learn (`sklearn.datasets.load_digits`,
which reads a file shipped inside scikit-learn, so no download). This is a development-only
script: the generated Parquet file is committed, and the project does not need scikit-learn
to run. Output is deterministic: the same pyarrow version writes the same bytes.

Usage: python data/make_digits.py [output path]
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

OUTPUT = Path(__file__).resolve().parent / "digits.parquet"


def digits_table() -> pa.Table:
    """Build the table: pixel_0 ... pixel_63 as float32 (0..16) and label as int64."""
    images, labels = load_digits(return_X_y=True)
    columns = {f"pixel_{i}": pa.array(images[:, i].astype(np.float32)) for i in range(64)}
    columns["label"] = pa.array(labels.astype(np.int64))
    return pa.table(columns)


def main(output: Path = OUTPUT) -> None:
    """Write the table as a single-row-group, zstd-compressed Parquet file."""
    table = digits_table()
    pq.write_table(table, output, compression="zstd", row_group_size=len(table))
    print(f"wrote {output} ({table.num_rows} rows, {output.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT)
