"""The training loop: one epoch of training, one evaluation pass, losses and the non-finite guard."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from sacred.utils import SacredError
from torch import nn
from tqdm.auto import tqdm

LOSSES = ("cross_entropy", "bce_with_logits", "mse")
AMP_MODES = ("off", "bf16", "fp16")


class NonFiniteLoss(SacredError):
    """The loss became NaN or infinite: the run stops and is recorded as FAILED."""

    def __init__(self, message: str):
        super().__init__(message, print_traceback=False)


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


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
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
) -> tuple[dict, int]:
    """Train for one epoch; return the mean training loss and the global step after it."""
    model.train()
    non_blocking = device.type == "cuda"
    total, count = torch.zeros((), device=device), 0
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=None if progress else True)
    for index, (x, y) in enumerate(bar):
        if limit_batches is not None and index >= limit_batches:
            break
        x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        with autocast(device, amp):
            loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"training loss became {loss.item()} at epoch {epoch}, step {step + 1}; "
                "lower lr or set optimizer.clip_grad_norm"
            )
        scaled = loss / accumulate
        (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.detach() * len(y)
        count += len(y)
        last_batch = index + 1 == len(batches) or index + 1 == limit_batches
        if (index + 1) % accumulate == 0 or last_batch:
            step += 1
            optimizer_step(model, optimizer, scaler, clip)
            scheduler.step()
    bar.close()
    return {"train_loss": (total / max(count, 1)).item()}, step


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
    model: nn.Module, batches: Iterable, loss_fn, device: torch.device, loss: str, amp: str = "off"
) -> dict:
    """Validation loss (and accuracy for classification) in eval mode without gradients."""
    model.eval()
    non_blocking = device.type == "cuda"
    total_loss, correct, count = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=non_blocking), y.to(device, non_blocking=non_blocking)
        with autocast(device, amp):
            out = model(x)
        total_loss += loss_fn(out.float(), y) * len(y)
        if loss != "mse":
            correct += correct_predictions(out, y, loss)
        count += len(y)
    metrics = {"val_loss": (total_loss / max(count, 1)).item()}
    if loss != "mse":
        metrics["val_accuracy"] = (correct / max(count, 1)).item()
    if not math.isfinite(metrics["val_loss"]):
        raise NonFiniteLoss(f"validation loss became {metrics['val_loss']}")
    return metrics
