"""Train a model on a columnar dataset, recorded so the run can be reproduced exactly.

python experiments/train.py with lr=0.01
python experiments/train.py with cnn
python experiments/train.py print_config
python experiments/train.py with resume=3   # continue run 3 exactly where it stopped
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before Sacred and torch load (a second or more)
    import os
    import signal
    import sys

    def stopped_while_starting(signum, frame):
        """Ctrl-C or SIGTERM before the run exists: one line, no traceback, nothing recorded
        (the run installs its own handlers when it starts: experiments/resume.py)."""
        sys.stderr.write("interrupted while starting; nothing was recorded\n")
        os._exit(128 + signum)  # no teardown: half-imported modules must print nothing

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopped_while_starting)

import re
from contextlib import contextmanager

import torch

from experiments import distributed
from experiments.base import ReproExperiment
from experiments.checkpoint import (
    LAST,
    CheckpointRecorder,
    check_fit,
    restore_training_state,
    state_hash,
    training_state,
)
from experiments.images import best_weights, image_loaders, test_once
from experiments.loop import AMP_MODES, LOSSES, evaluate, make_loss, train_one_epoch
from experiments.membership import checking_for_elsewhere
from experiments.signals import INTERRUPTS
from experiments.trial import TrialHook
from ingredients.data import Contents, data, describe, load_splits, make_loader
from ingredients.model import build_model, format_summary, model, summarize
from ingredients.optimizer import build_optimizer, build_scheduler, gradient_clipper, optimizer
from ingredients.schema import (
    BOOLEAN,
    INSPECTION_COMMANDS,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TEXT,
    Rule,
    check_section,
    choice,
    integer,
    nullable,
    shown,
)
from ingredients.seeding import loader_generator, seed_everything, seed_worker, seeding
from observers.provenance import record_provenance

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
    resume = None  # continue this run (id in the store, or run directory) from its last checkpoint; only epochs may change
    lr_scaling = "none"  # none | linear: under torchrun, lr times the world size (the global batch is data.batch_size times it)
    allow_world_size_change = False  # resume or rerun at another world size (then not exact)


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


@ex.named_config
def fashion():
    """Fashion-MNIST (data/prepare_fashion_mnist.py): a small CNN, flips, the test split once."""
    data = {  # noqa: F841
        "path": "data/fashion-mnist/train.parquet",
        "test_path": "data/fashion-mnist/test.parquet",
        "val_fraction": 0.1,
        "batch_size": 128,
        "num_workers": 1,
        "augment": [{"name": "flip"}],
    }
    model = {"name": "convnet", "kwargs": {"channels": [16, 32], "hidden": 128}}  # noqa: F841
    optimizer = {"name": "adamw", "weight_decay": 0.0001}  # noqa: F841
    lr = 0.002  # noqa: F841
    epochs = 8  # noqa: F841


# What each top-level key accepts, checked before a run starts (see ingredients/__init__.py).
SCHEMA = {
    "seed": integer(0, 2**32, words="an integer in [0, 2**32)"),
    "lr": POSITIVE_NUMBER,
    "epochs": POSITIVE_INT,
    # pick_device knows only these (torch.device also takes 'meta', 'mps'..., which train fails on)
    "device": Rule(
        lambda v: isinstance(v, str) and re.fullmatch("auto|cpu|cuda(:[0-9]+)?", v) is not None,
        "auto, cpu, cuda or cuda:N",
    ),
    "amp": choice(*AMP_MODES),
    "accumulate": POSITIVE_INT,
    "loss": choice(*LOSSES),
    "monitor": Rule(TEXT.accepts, "a metric name"),
    "monitor_mode": choice("max", "min"),
    "patience": nullable(POSITIVE_INT),
    "limit_batches": nullable(POSITIVE_INT),
    "progress": BOOLEAN,
    "resume": Rule(
        lambda v: v is None or POSITIVE_INT.accepts(v) or TEXT.accepts(v),
        "None, a run id or a run directory",
    ),
    "lr_scaling": choice(*distributed.LR_SCALINGS),
    "allow_world_size_change": BOOLEAN,
}


def epoch_metrics(config: dict) -> tuple[str, ...]:
    """What a run with this config logs each epoch that can be monitored or searched."""
    return ("train_loss", "val_loss") + (("val_accuracy",) if config["loss"] != "mse" else ())


ex.epoch_metrics = epoch_metrics


@ex.config_hook
def validate(config, command_name, logger):
    """Refuse bad top-level settings before the run starts."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    # Sacred draws the seed after the config hooks: an absent one is checked as valid.
    check_section(None, {"seed": 0, **config}, SCHEMA)
    metrics = epoch_metrics(config)
    if config["monitor"] not in metrics:
        raise ValueError(
            f"monitor must be one of {', '.join(metrics)}, got {shown(config['monitor'])}"
        )
    pick_device(config["device"], here=not checking_for_elsewhere())
    distributed.check_sync_batchnorm(config["model"]["sync_batchnorm"])
    preflight(config)
    return {}


def preflight(config: dict) -> None:
    """Check the data file against the loss, then build the model and optimizer once from the
    config, so that one which cannot be built (a freeze or group pattern matching nothing, a
    value torch rejects) is refused before anything is recorded."""
    contents = describe(config["data"])  # checked by the data ingredient already; cached
    outputs = model_outputs(config["loss"], contents)
    with naming_errors("model"):
        net = build_model(
            contents.sample_shape, outputs, **{key: config["model"][key] for key in MODEL_KEYS}
        )
    with naming_errors("optimizer"):
        opt = build_optimizer(net, 0.1, **{key: config["optimizer"][key] for key in OPTIMIZER_KEYS})
    check_resume_fit(config, net, opt)


def check_resume_fit(config: dict, net, opt) -> None:
    """When resuming, the checkpoint's states restored into what its config builds and stepped
    once, so one that would fail in training is refused before a run exists."""
    point = getattr(ex, "resume_point", None)  # set when the resumed config is checked
    if point is None:
        return
    schedule = build_scheduler(
        opt, config["epochs"], 1, **{key: config["optimizer"][key] for key in SCHEDULER_KEYS}
    )
    same = point.state["config"].get("epochs") == config["epochs"]
    source = f"resume: run {point.run_id}'s checkpoint {LAST}"
    check_fit(point.state, net, opt, schedule, same, source)


def model_outputs(loss: str, contents: Contents) -> int:
    """The model's output count for the loss and the target: a class per logit for
    cross_entropy, one logit for bce_with_logits (binary: targets 0 and 1), one value for mse."""
    if loss == "cross_entropy":
        if not contents.integer_target:
            raise ValueError(
                "loss: cross_entropy needs an integer target column (classes 0, 1, "
                "2, ...); use mse or bce_with_logits for a float target"
            )
        return contents.num_classes
    low, high = contents.target_range
    if loss == "bce_with_logits" and contents.integer_target and contents.num_classes > 2:
        raise ValueError(
            f"loss: bce_with_logits needs a binary target (labels 0 and 1), the "
            f"target column has {contents.num_classes} classes; use cross_entropy"
        )
    if loss == "bce_with_logits" and low is not None and not 0 <= low <= high <= 1:
        raise ValueError(
            f"loss: bce_with_logits needs targets in [0, 1], the target column "
            f"holds values from {low} to {high}"
        )
    return 1


def describe_task(loss: str, contents: Contents) -> dict:
    """What the run's record says about the task: its kind and the model's output count."""
    outputs = model_outputs(loss, contents)
    kind = {"cross_entropy": "multiclass", "bce_with_logits": "binary", "mse": "regression"}[loss]
    return {"kind": kind, "loss": loss, "outputs": outputs}


# The builders' own options (a mistyped key is refused later, with a suggestion).
MODEL_KEYS = (
    "name",
    "hidden",
    "dropout",
    "batchnorm",
    "channels",
    "kwargs",
    "freeze",
    "freeze_batchnorm",
)
OPTIMIZER_KEYS = ("name", "momentum", "nesterov", "betas", "weight_decay", "param_groups")
SCHEDULER_KEYS = ("schedule", "step_size", "gamma", "warmup_epochs")


@contextmanager
def naming_errors(key: str):
    """Turn an error raised while building `key` into one sentence that names it."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError) as error:
        message = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise ValueError(message if message.startswith(key) else f"{key}: {message}") from None


def pick_device(name: str, here: bool = True) -> torch.device:
    """The torch device for 'auto', 'cpu', 'cuda' or 'cuda:N', refused if absent (if `here`:
    a sweep checking configs for Slurm nodes cannot see their GPUs)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device '{name}' (auto, cpu, cuda or cuda:N)") from None
    if here and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: '{name}' asked for, but CUDA is not available here")
    if here and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"device: '{name}' asked for, but this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0"
        )
    return device


class Best:
    """Tracks the best value of the monitored metric and epochs since it improved."""

    def __init__(self, mode: str):
        self.mode, self.value, self.epoch, self.stale = mode, None, 0, 0

    def update(self, value: float, epoch: int) -> bool:
        better = self.value is None or (
            value > self.value if self.mode == "max" else value < self.value
        )
        if better:
            self.value, self.epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return better

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the tracker."""
        return {"value": self.value, "epoch": self.epoch, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's tracker state."""
        self.value, self.epoch, self.stale = state["value"], state["epoch"], state["stale"]


def learning_rates(opt: torch.optim.Optimizer, param_groups: list[dict]) -> dict[str, float]:
    """The lr each parameter group trains with now: `lr` is the run's lr as scheduled (the default
    group's), `lr/<pattern>` that of each configured group (the optimizer keeps them last)."""
    groups = opt.param_groups[len(opt.param_groups) - len(param_groups) :]
    has_default = len(opt.param_groups) > len(param_groups)
    scale = 1.0 if has_default else param_groups[0].get("lr_scale", 1.0)
    rates = {"lr": opt.param_groups[0]["lr"] / scale}
    rates.update(
        {f"lr/{config['pattern']}": group["lr"] for config, group in zip(param_groups, groups)}
    )
    return rates


def record_data(run, splits, timeout: float | None = None, quiet: bool = False) -> None:
    """The data file's fingerprint and statistics in the run's info, unless its SHA-256 is there
    already; the hash is waited for up to `timeout` seconds (None: until done), else recorded as
    None. The key is set before training and then only replaced, never added while Sacred's
    heartbeat thread reads the info. `quiet` logs a failed hash instead of raising it."""
    if ((run.info.get("data") or {}).get("fingerprint") or {}).get("sha256"):
        return
    try:
        fingerprint = splits.fingerprint_after(timeout)
    except ValueError as error:
        if not quiet:
            raise
        run.run_logger.warning("%s", error)
        return
    run.info["data"] = {"fingerprint": fingerprint, "standardization": splits.standardization}


@ex.main
def train(
    _run,
    _config,
    seed,
    lr,
    epochs,
    device,
    amp,
    accumulate,
    loss,
    monitor,
    monitor_mode,
    patience,
    limit_batches,
    progress,
    lr_scaling,
):
    log = _run.run_logger
    record_provenance(_run)  # packages, git commit and diff, python: what a rerun compares
    job = distributed.job()  # this process's rank under torchrun; a job of one without it
    _run.info["determinism"] = seed_everything(job.seed(seed))
    device = job.start(_run, pick_device(device))
    _run.info["device"] = str(device)
    _run.info["metric_step"] = "epoch"  # what the step of every logged metric counts (plots say it)

    splits = load_splits()  # the data file is hashed on a thread from here, alongside training
    record_data(_run, splits, timeout=0)
    generator = loader_generator(seed)
    cuda = device.type == "cuda"
    train_batches = make_loader(
        splits.train,
        True,
        generator=generator,
        worker_init_fn=seed_worker,
        device_is_cuda=cuda,
        **job.shard,
    )
    # A generator of its own, so starting the validation workers never draws from torch's global
    # RNG (a resumed run starts them at another epoch, which would shift dropout from then on).
    val_batches = make_loader(
        splits.val, False, generator=loader_generator(seed), device_is_cuda=cuda, **job.shard
    )
    # image data: uint8 batches augmented on the device (experiments/images.py)
    train_batches, val_batches = image_loaders(
        _run, splits, train_batches, val_batches, device, generator
    )

    task = describe_task(loss, describe(_config["data"]))
    net = build_model(splits.input_shape, task["outputs"]).to(device)
    summary = summarize(net, splits.input_shape)
    _run.info["model_summary"] = summary
    _run.info["task"] = task
    log.info(
        "task: %s (%s, %d output%s)",
        task["kind"],
        loss,
        task["outputs"],
        "" if task["outputs"] == 1 else "s",
    )
    log.info("model:\n%s", format_summary(summary))
    trained = job.wrap(net, _config["model"]["sync_batchnorm"])  # DDP under torchrun
    opt = build_optimizer(net, job.scaled_lr(lr, lr_scaling))
    steps_per_epoch = -(-min(len(train_batches), limit_batches or len(train_batches)) // accumulate)
    scheduler = build_scheduler(opt, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    loss_fn = make_loss(loss)
    clip_gradient = gradient_clipper()

    best, step, done = Best(monitor_mode), 0, 0
    kept = None  # the best weights, for the test split of image data
    point = ex.resume_point  # verified and loaded before the run started (experiments/resume.py)
    if point is not None:
        done, step, best_state = restore_training_state(
            job.own_state(point.state),
            model=net,
            optimizer=opt,
            scheduler=scheduler,
            scaler=scaler,
            generator=generator,
            same_schedule=point.state["config"]["epochs"] == epochs,
        )
        best.load_state_dict(best_state)
        log.info("resuming run %s after epoch %d (step %d)", point.run_id, done, step)
    checkpoints = CheckpointRecorder(_run, carried=point.carried if point else None)
    trial = TrialHook.for_run(_run)  # a search's trial reports each epoch and may be pruned

    def state(epoch: int) -> dict:
        return job.checkpoint_state(
            training_state(
                model=net,
                optimizer=opt,
                scheduler=scheduler,
                scaler=scaler,
                epoch=epoch,
                step=step,
                generator=generator,
                best=best.state_dict(),
                config=_run.config,
            )
        )  # no __doc__

    try:
        for epoch in range(done + 1, epochs + 1):
            lr_used = learning_rates(opt, _config["optimizer"]["param_groups"])
            train_metrics, step = train_one_epoch(
                trained,
                train_batches,
                opt,
                scheduler,
                loss_fn,
                device,
                epoch=epoch,
                step=step,
                amp=amp,
                scaler=scaler,
                accumulate=accumulate,
                clip=clip_gradient,
                limit_batches=limit_batches,
                progress=progress and job.is_main,
                reduce=job.reducer,
            )
            record_data(_run, splits)  # before the first metric; the hash is done by now
            metrics = {
                **train_metrics,
                **evaluate(
                    job.synced(net), val_batches, loss_fn, device, loss, amp, reduce=job.reducer
                ),
                **lr_used,
            }
            for name, value in metrics.items():
                _run.log_scalar(name, value, epoch)
            log.info("epoch %d: %s", epoch, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            improved = best.update(metrics[monitor], epoch)
            with INTERRUPTS.deferred():  # a stop waits for both checkpoints of the epoch
                checkpoints.save("last.pt", state(epoch))  # first: a kill in the next save keeps it
                if improved:
                    checkpoints.save("best.pt", state(epoch))
                    if splits.test is not None:
                        kept = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            # after the checkpoint (a pruned run keeps it); never pruned after its last epoch
            if trial.epoch_end(epoch, metrics, last=epoch == epochs):
                log.info("pruned after epoch %d", epoch)
                break
            if patience is not None and best.stale >= patience:
                log.info("early stop: %s did not improve for %d epochs", monitor, patience)
                break
    finally:  # a run ending in its first epoch waits a little for the hash, never fails on it
        record_data(_run, splits, timeout=5, quiet=True)
    _run.info["final_model_sha256"] = state_hash(net)
    _run.info["best"] = {monitor: best.value, "epoch": best.epoch}
    trial.finish(_run)  # a pruned trial ends here, as PRUNED
    if splits.test is not None and job.is_main:
        weights = best_weights(_run.info["checkpoints"], point and point.carried, kept)
        test_once(
            _run,
            splits,
            net,
            weights,
            best.epoch,
            loss_fn,
            device,
            loss,
            amp,
            lambda d, t: make_loader(d, t, device_is_cuda=cuda),
        )
    return best.value


if __name__ == "__main__":
    ex.run_commandline()
