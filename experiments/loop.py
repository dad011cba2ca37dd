"""The training loop: one epoch of training, one evaluation pass, losses and the non-finite guard."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager, nullcontext
from itertools import islice

import torch
from sacred.utils import SacredError
from torch import nn
from tqdm.auto import tqdm

LOSSES = ("cross_entropy", "bce_with_logits", "mse")
AMP_MODES = ("off", "bf16", "fp16")
# Training losses are checked for NaN/inf and summed every this many batches (and at the end of
# the epoch) in one go: reading a loss back from the device waits for all queued work on a GPU.
LOSS_WINDOW = 16


class OneSentenceError(SacredError):
    """An error that ends a started run as FAILED with its one sentence, without a traceback."""

    def __init__(self, message: str):
        super().__init__(message, print_traceback=False)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run ends as INTERRUPTED, like Ctrl-C. Like KeyboardInterrupt it is
    no Exception, so no `except Exception` on the way (logging, a client library) swallows it."""

    STATUS = "INTERRUPTED"  # what Sacred records for it


class NonFiniteLoss(OneSentenceError):
    """The loss became NaN or infinite: the run stops and is recorded as FAILED."""


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss by name; targets are cast to what the loss expects."""
    if name == "cross_entropy":
        return nn.CrossEntropyLoss()
    if name == "bce_with_logits":
        bce = nn.BCEWithLogitsLoss()
        return lambda out, y: bce(out.squeeze(-1), y.float())
    mse = nn.MSELoss()
    return lambda out, y: mse(out.squeeze(-1), y.float())


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for the forward pass ('off' runs in float32)."""
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def correct_predictions(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """How many predictions are right (classification losses only)."""
    if loss == "cross_entropy":
        return (out.argmax(dim=1) == y).sum()
    return ((out.squeeze(-1) > 0).long() == y.long()).sum()


class LossWindow:
    """The epoch's training loss, kept on the device: the last few batch losses are checked for
    NaN/inf and added to the total together, so the loop never waits for the device per batch."""

    def __init__(self, epoch: int, device: torch.device, size: int = LOSS_WINDOW):
        self.epoch, self.size = epoch, size
        self.total, self.count = torch.zeros((), device=device), 0
        self.losses: list[torch.Tensor] = []
        self.batch_sizes: list[int] = []
        self.steps: list[int] = []

    def add(self, loss: torch.Tensor, batch_size: int, step: int) -> None:
        """Remember a batch's loss (from optimizer step `step`); flush when the window is full."""
        self.losses.append(loss.detach())
        self.batch_sizes.append(batch_size)
        self.steps.append(step)
        if len(self.losses) >= self.size:
            self.flush()

    def flush(self) -> None:
        """Raise NonFiniteLoss naming the first non-finite loss, else add the window to the total."""
        if not self.losses:
            return
        losses = torch.stack(self.losses).float()
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            raise NonFiniteLoss(
                f"training loss became {self.losses[first].item()} at epoch {self.epoch}, "
                f"step {self.steps[first]}; lower lr or set optimizer.clip_grad_norm"
            )
        sizes = torch.tensor(self.batch_sizes, dtype=losses.dtype).to(losses.device)
        self.total += (losses * sizes).sum()
        self.count += sum(self.batch_sizes)
        self.losses, self.batch_sizes, self.steps = [], [], []

    def mean(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        """Mean training loss per sample over the epoch (after a last check); `reduce` sums
        total and count over the processes of a distributed job."""
        self.flush()
        if reduce is not None:
            total, count = reduce(
                torch.stack(
                    [self.total.double(), self.total.new_tensor(self.count, dtype=torch.float64)]
                )
            )
            return (total / count.clamp(min=1)).item()
        return (self.total / max(self.count, 1)).item()


def train_one_epoch(
    model: nn.Module,
    batches: Collection,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn,
    device: torch.device,
    *,
    epoch: int,
    step: int,
    amp: str = "off",
    scaler: torch.amp.GradScaler | None = None,
    accumulate: int = 1,
    clip: Callable[[nn.Module], object] = lambda model: None,
    limit_batches: int | None = None,
    progress: bool = True,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[dict, int]:
    """Train for one epoch; return the mean training loss and the global step after it.

    Under DistributedDataParallel, micro-batches between optimizer steps skip the gradient
    all-reduce (no_sync), a batch is weighted by its share of the global batch (`share` of the
    loader) and `reduce` sums the loss over the processes.

    A non-finite loss stops the epoch within LOSS_WINDOW batches, before it returns (so before
    any checkpoint of this epoch), with NonFiniteLoss naming the first bad step."""
    model.train()
    non_blocking = device.type == "cuda"
    window = LossWindow(epoch, device)
    mixed_precision = autocast(device, amp)  # one context, entered per batch
    n_batches = len(batches) if limit_batches is None else min(len(batches), limit_batches)
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    share = getattr(batches, "share", None) if reduce is not None else None
    for index, (x, y) in enumerate(islice(bar, n_batches)):
        x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        steps = (index + 1) % accumulate == 0 or index + 1 == n_batches
        with gradients_synced(model, steps), mixed_precision:
            out = model(x)
            # An empty batch (a rank's part of the last global batch) still joins the all-reduce.
            loss = loss_fn(out, y) if len(y) else out.sum() * 0.0
            window.add(loss, len(y), step + 1)
            scaled = loss / accumulate if accumulate > 1 else loss
            if share is not None and (weight := share(index)) != 1:
                scaled = scaled * weight
            (scaler.scale(scaled) if scaler else scaled).backward()
        if steps:
            step += 1
            optimizer_step(model, optimizer, scaler, clip)
            scheduler.step()
    bar.close()
    return {"train_loss": window.mean(reduce)}, step


def gradients_synced(model: nn.Module, sync: bool) -> AbstractContextManager:
    """DistributedDataParallel's no_sync on a micro-batch that does not step the optimizer."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()  # type: ignore[operator]  # DDP's, found above


def optimizer_step(model, optimizer, scaler, clip) -> None:
    """Unscale, clip, step and clear gradients."""
    if scaler:
        scaler.unscale_(optimizer)
        clip(model)
        scaler.step(optimizer)
        scaler.update()
    else:
        clip(model)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fn,
    device: torch.device,
    loss: str,
    amp: str = "off",
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Validation loss (and accuracy for classification) in eval mode without gradients;
    `reduce` sums them over the processes of a distributed job (each has its share)."""
    model.eval()
    non_blocking = device.type == "cuda"
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    count: int | torch.Tensor = 0
    for x, y in batches:
        if not len(y):  # a rank's empty share of the last batch
            continue
        x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        with autocast(device, amp):
            out = model(x)
        total_loss += loss_fn(out.float(), y) * len(y)
        if loss != "mse":
            correct += correct_predictions(out, y, loss)
        count += len(y)
    if reduce is not None:
        sums = reduce(
            torch.stack(
                [
                    total_loss.double(),
                    correct.double(),
                    total_loss.new_tensor(count, dtype=torch.float64),
                ]
            )
        )
        total_loss, correct, count = sums[0], sums[1], sums[2].clamp(min=1)
    metrics = {"val_loss": (total_loss / max(count, 1)).item()}
    if loss != "mse":
        metrics["val_accuracy"] = (correct / max(count, 1)).item()
    if not math.isfinite(metrics["val_loss"]):
        raise NonFiniteLoss(f"validation loss became {metrics['val_loss']}")
    return metrics
