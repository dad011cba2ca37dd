"""Batches: samplers and the loader that hand out (features, targets) batches of a ColumnarDataset.

Batches are gathered several at a time (one gather, in this process or in a worker process, then
views); the batches and their order are the same whatever the group size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch

from ingredients.columnar import ColumnarDataset

GROUP_BYTES = 4 * 2**20  # about this much feature data per gather (then split into batches)


class BatchIndexSampler(torch.utils.data.Sampler):
    """Yields whole batches of positions; shuffling draws one torch.randperm per epoch.

    With several processes (`world_size` > 1) every process draws the same order and takes its
    `rank`'s part of each global batch of batch_size x world_size positions, so across the
    processes every sample comes exactly once per epoch and the global batches are those of one
    process with the global batch size. The last, incomplete global batch is dropped with
    drop_last, else split as evenly as possible (a process may get an empty last batch: every
    process has the same number of batches, as the collectives of training need)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator | None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.global_batch
        return math.ceil(self.n / self.global_batch)

    def part(self, index: int) -> tuple[int, int]:
        """Where this rank's part of global batch `index` starts and ends within that batch."""
        size = min(self.global_batch, self.n - index * self.global_batch)
        if size == self.global_batch:
            return self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def share(self, index: int) -> float:
        """This rank's part of global batch `index` times the world size over the global batch's
        size: 1 for every full batch. A loss weighted by it and averaged over the processes (as
        DistributedDataParallel averages gradients) is the mean over the global batch."""
        start, end = self.part(index)
        size = min(self.global_batch, self.n - index * self.global_batch)
        return (end - start) * self.world_size / size

    def __iter__(self) -> Iterator[np.ndarray]:
        order = (
            torch.randperm(self.n, generator=self.generator).numpy()
            if self.shuffle
            else np.arange(self.n)
        )
        for i in range(len(self)):
            start, end = self.part(i)
            yield order[i * self.global_batch + start : i * self.global_batch + end]


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
            indices = np.concatenate(group)
            if len(indices):  # a rank's empty last batch is made up by BatchLoader, not gathered
                yield indices


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
        groups: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
            self.workers
            if self.workers is not None
            else map(self._gather, GroupSampler(self.sampler, self.group))
        )
        count, x, y = 0, None, None
        for x, y in groups:
            for batch in zip(x.split(self.batch_size), y.split(self.batch_size)):
                count += 1
                yield batch
        if count < len(self):  # this rank's part of the last global batch is empty
            yield self._empty(x, y)

    def share(self, index: int) -> float:
        """How much batch `index` weighs in its global batch (see BatchIndexSampler.share)."""
        return self.sampler.share(index)

    def _empty(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        if x is not None:
            return x[:0], y[:0]
        return (torch.empty((0, *self.dataset.sample_shape)), self.dataset.targets[:0])


def group_size(dataset: ColumnarDataset, batch_size: int, n_batches: int, workers: int) -> int:
    """Batches per gather: about GROUP_BYTES of features, yet every worker gets work."""
    batch_bytes = batch_size * math.prod(dataset.sample_shape) * 4
    by_size = max(1, GROUP_BYTES // batch_bytes)
    return max(1, min(by_size, math.ceil(n_batches / (2 * workers)))) if workers else by_size
