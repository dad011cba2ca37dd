"""Train a model on a columnar dataset, recorded so the run can be reproduced exactly.

    python experiments/train.py with lr=0.01
    python experiments/train.py with cnn
    python experiments/train.py print_config
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from experiments.base import ReproExperiment
from experiments.checkpoint import save_checkpoint, state_hash
from experiments.loop import AMP_MODES, LOSSES, evaluate, make_loss, train_one_epoch
from ingredients import INSPECTION_COMMANDS
from ingredients.data import data, load_splits, make_loader
from ingredients.model import build_model, format_summary, model, summarize
from ingredients.optimizer import build_optimizer, build_scheduler, clip_gradients, optimizer
from ingredients.seeding import loader_generator, rng_state, seed_everything, seed_worker, seeding

ex = ReproExperiment("train", ingredients=[data, model, optimizer, seeding])


@ex.config
def config():
    lr = 0.01  # learning rate of the optimizer (parameter groups scale it)
    epochs = 15  # epochs to train
    device = "auto"  # auto | cpu | cuda | cuda:N
    amp = "off"  # mixed precision: off | bf16 | fp16 (fp16 uses a gradient scaler)
    accumulate = 1  # batches whose gradients are summed per optimizer step
    loss = "cross_entropy"  # cross_entropy | bce_with_logits | mse
    monitor = "val_accuracy"  # validation metric that picks the best checkpoint and early stopping
    monitor_mode = "max"  # max or min: which direction of monitor is better
    patience = None  # stop after this many epochs without improvement of monitor; None trains all
    limit_batches = None  # train at most this many batches per epoch (quick checks); None for all
    progress = True  # progress bars on a terminal (never in captured output)


@ex.named_config
def cnn():
    """The small CNN on 1x8x8 images."""
    model = {"name": "cnn"}  # noqa: F841
    data = {"shape": [1, 8, 8]}  # noqa: F841


@ex.named_config
def debug():
    """One short epoch, to check that everything runs."""
    epochs = 1  # noqa: F841
    limit_batches = 5  # noqa: F841


@ex.config_hook
def validate(config, command_name, logger):
    """Refuse bad top-level settings before the run starts."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    checks = {
        "lr": isinstance(config["lr"], (int, float)) and config["lr"] > 0,
        "epochs": isinstance(config["epochs"], int) and config["epochs"] > 0,
        "accumulate": isinstance(config["accumulate"], int) and config["accumulate"] > 0,
        "amp": config["amp"] in AMP_MODES,
        "loss": config["loss"] in LOSSES,
        "monitor_mode": config["monitor_mode"] in ("max", "min"),
        "monitor": config["monitor"] in ("train_loss", "val_loss")
        or (config["monitor"] == "val_accuracy" and config["loss"] != "mse"),
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{key}: invalid value {config[key]!r} (see print_config)")
    pick_device(config["device"])
    return {}


def pick_device(name: str) -> torch.device:
    """The torch device for 'auto', 'cpu', 'cuda' or 'cuda:N', refused if absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device '{name}' (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{name}' asked for, but CUDA is not available here")
    return device


class Best:
    """Tracks the best value of the monitored metric and epochs since it improved."""

    def __init__(self, mode: str):
        self.mode, self.value, self.epoch, self.stale = mode, None, 0, 0

    def update(self, value: float, epoch: int) -> bool:
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better:
            self.value, self.epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return better


@ex.main
def train(_run, _config, seed, lr, epochs, device, amp, accumulate, loss, monitor, monitor_mode,
          patience, limit_batches, progress):
    log = logging.getLogger("reprolab")
    _run.info["determinism"] = seed_everything(seed)
    device = pick_device(device)
    _run.info["device"] = str(device)

    splits = load_splits()
    _run.info["data"] = {"fingerprint": splits.fingerprint, "standardization": splits.standardization}
    generator = loader_generator(seed)
    cuda = device.type == "cuda"
    train_batches = make_loader(splits.train, True, generator=generator,
                                worker_init_fn=seed_worker, device_is_cuda=cuda)
    val_batches = make_loader(splits.val, False, device_is_cuda=cuda)

    net = build_model(splits.input_shape, splits.num_classes).to(device)
    summary = summarize(net, splits.input_shape)
    _run.info["model_summary"] = summary
    log.info("model:\n%s", format_summary(summary))
    opt = build_optimizer(net, lr)
    steps_per_epoch = -(-min(len(train_batches), limit_batches or len(train_batches)) // accumulate)
    scheduler = build_scheduler(opt, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    loss_fn = make_loss(loss)

    best, step = Best(monitor_mode), 0
    workdir = Path(tempfile.mkdtemp(prefix="reprolab-"))
    _run.info["checkpoints"] = {}

    def checkpoint(name: str, epoch: int) -> None:
        state = {
            "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "step": step, "rng": rng_state(generator),
            "best": {"value": best.value, "epoch": best.epoch, "stale": best.stale},
            "config": _config,
        }
        digest = save_checkpoint(workdir / name, state)
        _run.info["checkpoints"][name] = {"sha256": digest, "epoch": epoch, "step": step}

    epoch = 0
    try:
        for epoch in range(1, epochs + 1):
            lr_used = opt.param_groups[0]["lr"]
            train_metrics, step = train_one_epoch(
                net, train_batches, opt, scheduler, loss_fn, device, epoch=epoch, step=step,
                amp=amp, scaler=scaler, accumulate=accumulate, clip=clip_gradients,
                limit_batches=limit_batches, progress=progress)
            metrics = {**train_metrics, **evaluate(net, val_batches, loss_fn, device, loss, amp),
                       "lr": lr_used}
            for name, value in metrics.items():
                _run.log_scalar(name, value, epoch)
            log.info("epoch %d: %s", epoch, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            if best.update(metrics[monitor], epoch):
                checkpoint("best.pt", epoch)
            checkpoint("last.pt", epoch)
            if patience is not None and best.stale >= patience:
                log.info("early stop: %s did not improve for %d epochs", monitor, patience)
                break
    finally:
        for name in ("last.pt", "best.pt"):
            if (workdir / name).exists():
                _run.add_artifact(workdir / name, name=name)
    _run.info["final_model_sha256"] = state_hash(net)
    _run.info["best"] = {monitor: best.value, "epoch": best.epoch}
    return best.value


if __name__ == "__main__":
    ex.run_commandline()
