"""One rule for the progress bars of long reads and checks: shown on a terminal only (never in a
log file or a pipe), and only for many items."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def progress(items: Sequence[T], many: bool, desc: str, unit: str) -> Sequence[T]:
    """`items`, behind a tqdm bar (after half a second) when there are `many` and stderr is a
    terminal; else `items` themselves."""
    if not many or not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, delay=0.5)  # type: ignore[return-value]
