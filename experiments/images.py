"""Image runs: batches moved to the device and augmented there, and the one test evaluation.

train.py calls `image_loaders` after building its loaders and `test_once` after its last epoch;
both do nothing for table data.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from experiments.checkpoint import checkpoint_from_bytes
from experiments.loop import OneSentenceError, evaluate
from ingredients.augment import Augmenter
from ingredients.image_decoding import BadImage


class BadImageError(OneSentenceError):
    """An image of the data cannot be decoded: the run ends FAILED with the one sentence."""


class DeviceBatches:
    """A BatchLoader whose uint8 batches are moved to `device` and augmented there.

    Each training epoch's augmentation generator is seeded with a number drawn from the loader's
    own generator (saved in every checkpoint) before the epoch's order is drawn: a resumed or
    repeated run draws the same augmentations, whatever the device or worker count."""

    def __init__(self, loader, augmenter: Augmenter, device: torch.device, generator=None):
        self.loader, self.augmenter, self.device = loader, augmenter, device
        self.generator = generator  # the loader's; None: deterministic transforms only
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def share(self, index: int) -> float:
        return self.loader.share(index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = None
        if self.generator is not None and self.augmenter.random:
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            g = torch.Generator().manual_seed(seed)
        non_blocking = self.device.type == "cuda"
        try:
            for x, y in self.loader:
                x = x.to(self.device, non_blocking=non_blocking)
                yield self.augmenter(x, g), y.to(self.device, non_blocking=non_blocking)
        except BadImage as error:
            raise BadImageError(str(error)) from None


def image_loaders(run, splits, train_batches, val_batches, device, generator):
    """The loaders as the model sees them: for image data, augmented on the device (recorded),
    else unchanged."""
    info = splits.images
    if info is None:
        return train_batches, val_batches
    run.info["images"] = info.record()
    c, h, w = info.shape
    run.run_logger.info(
        "images: column %r (%s), %d channel%s, %dx%d, %d classes%s",
        info.column,
        info.kind,
        c,
        "" if c == 1 else "s",
        h,
        w,
        splits.num_classes,
        f" {info.classes[:10]}" if info.classes else "",
    )
    augmenter = Augmenter(info.augment, info.normalization, c)
    return (
        DeviceBatches(train_batches, augmenter, device, generator),
        DeviceBatches(val_batches, augmenter, device),
    )


def best_weights(checkpoints_info: dict, carried: dict | None, kept: dict | None) -> dict | None:
    """The best checkpoint's model state: kept in memory this run, else the resumed run's."""
    if kept is not None:
        return kept
    if carried and "best.pt" in carried:
        data, record = carried["best.pt"]
        return checkpoint_from_bytes(data, record.get("sha256"), "best.pt")["model"]
    return None


def test_once(run, splits, net, weights, epoch, loss_fn, device, loss, amp, make_loader) -> None:
    """Evaluate the test split once with the best-on-validation weights; recorded apart (info
    `test`, metrics test_loss / test_accuracy), never used to pick anything."""
    if splits.test is None or weights is None:
        return
    net.load_state_dict(weights)
    augmenter = Augmenter([], splits.images.normalization, splits.images.shape[0])
    batches = DeviceBatches(make_loader(splits.test, False), augmenter, device)
    metrics = evaluate(net, batches, loss_fn, device, loss, amp)
    result = {k.replace("val_", "test_"): v for k, v in metrics.items()}
    run.info["test"] = {**result, "rows": len(splits.test), "checkpoint": "best.pt"}
    for name, value in result.items():
        run.log_scalar(name, value, epoch)  # the best epoch's weights
    run.run_logger.info("test: %s", "  ".join(f"{k}={v:.4f}" for k, v in result.items()))
