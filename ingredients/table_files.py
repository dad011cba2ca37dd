"""Opening table files with pyarrow: its Parquet and CSV modules loaded only when such a file is
read, and Arrow's and the system's reading errors told as the one sentence a user sees."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as pa_ipc


def parquet():
    """pyarrow.parquet, imported when a Parquet file is read (print_config reads none)."""
    import pyarrow.parquet

    return pyarrow.parquet


def csv():
    """pyarrow.csv, imported when a CSV file is read."""
    import pyarrow.csv

    return pyarrow.csv


@contextmanager
def reading(path: Path, fmt: str) -> Iterator[None]:
    """Turn Arrow's and the system's reading errors into the one sentence a user sees."""
    try:
        yield
    except (pa.ArrowException, OSError) as error:
        raise ValueError(
            f"data.path: cannot read {path} as {fmt} ({type(error).__name__}: {error})"
        ) from None


def read_schema(path: Path, fmt: str) -> pa.Schema:
    """The file's schema, reading as little of it as the format allows."""
    with reading(path, fmt):
        if fmt == "parquet":
            return parquet().read_schema(path)
        if fmt == "csv":
            return csv().open_csv(path).schema
        source = pa.memory_map(str(path), "r")
        try:
            return pa_ipc.open_file(source).schema
        except pa.ArrowInvalid:
            source.seek(0)
            return pa_ipc.open_stream(source).schema


def column_list(names: Sequence[str], limit: int = 8) -> str:
    """Column names for an error message, shortened to the first and last few."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join([*names[:4], "...", *names[-2:]]) + f"; {len(names)} in all"
