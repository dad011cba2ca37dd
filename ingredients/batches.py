"""Batches: samplers and the loader that hand out (features, targets) batches of a ColumnarDataset.

Batches are gathered several at a time (one gather, in this process or in a worker process, then
views); the batches and their order are the same whatever the group size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch

from ingredients.columnar import ColumnarDataset

GROUP_BYTES = 4 * 2**20  # about this much feature data per gather (then split into batches)


class BatchIndexSampler(torch.utils.data.Sampler):
    """Yields whole batches of positions; shuffling draws one torch.randperm per epoch."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = (
            torch.randperm(self.n, generator=self.generator).numpy()
            if self.shuffle
            else np.arange(self.n)
        )
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class GroupSampler(torch.utils.data.Sampler):
    """Consecutive batches of a BatchIndexSampler joined into one index array: one gather (and,
    from a worker, one hand-over, which costs far more than a gather) serves several batches."""

    def __init__(self, sampler: BatchIndexSampler, group: int) -> None:
        self.sampler, self.group = sampler, group

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.group)

    def __iter__(self) -> Iterator[np.ndarray]:
        batches = iter(self.sampler)
        while group := list(islice(batches, self.group)):
            yield np.concatenate(group)


def keep(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for ready-made batches (module level so spawned workers can pickle it)."""
    return batch


class BatchLoader:
    """Iterable of (features, targets) batches; len() is the number of batches per epoch.

    Batches are gathered `group` at a time (one gather, in this process or in a worker) and
    split into views: the batches and their order are the same whatever the group size."""

    def __init__(
        self,
        dataset: ColumnarDataset,
        sampler: BatchIndexSampler,
        pin_memory: bool,
        group: int,
        workers: torch.utils.data.DataLoader | None = None,
    ) -> None:
        self.dataset, self.sampler, self.group = dataset, sampler, group
        self.pin_memory, self.workers = pin_memory, workers
        self.batch_size = sampler.batch_size

    def __len__(self) -> int:
        return len(self.sampler)

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[indices]
        return (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        groups = self.workers
        if groups is None:
            groups = map(self._gather, GroupSampler(self.sampler, self.group))
        for x, y in groups:
            yield from zip(x.split(self.batch_size), y.split(self.batch_size))


def group_size(dataset: ColumnarDataset, batch_size: int, n_batches: int, workers: int) -> int:
    """Batches per gather: about GROUP_BYTES of features, yet every worker gets work."""
    batch_bytes = batch_size * math.prod(dataset.sample_shape) * 4
    by_size = max(1, GROUP_BYTES // batch_bytes)
    return max(1, min(by_size, math.ceil(n_batches / (2 * workers)))) if workers else by_size
