"""The seeded validation split of a table's rows, the same for every run with the same seed."""

from __future__ import annotations

import numpy as np


def validation_rows(n: int, val_fraction: float) -> int:
    """Rows held out of n for validation, refused when either split would be empty."""
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise ValueError(
            f"data.val_fraction {val_fraction} leaves an empty train or validation split "
            f"of {n} rows"
        )
    return n_val


def split_rows(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation row numbers from a seeded permutation of the n rows."""
    n_val = validation_rows(n, val_fraction)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(split_seed).permutation(n)[:n_val]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)  # sorted, without a sort
