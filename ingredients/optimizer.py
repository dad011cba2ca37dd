"""Optimizer ingredient: optimizer over trainable parameters, per-pattern groups, clipping, LR schedule."""

from __future__ import annotations

import fnmatch
import functools
import math

import torch
from sacred import Ingredient
from torch import nn

from ingredients import INSPECTION_COMMANDS, is_int, is_number, require

# Explicit globals and no git query: Sacred would scan the whole stack (slow); the run's
# sources and their git state are gathered once by experiments/base.py.
optimizer = Ingredient("optimizer", _caller_globals=globals(), save_git_info=False)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")


@optimizer.config
def config():
    name = "adam"  # sgd | adam | adamw
    momentum = 0.9  # sgd: momentum factor
    nesterov = False  # sgd: use Nesterov momentum
    betas = [0.9, 0.999]  # adam/adamw: decay rates of the moment estimates
    weight_decay = 0.0  # weight decay of every group without its own (decoupled for adamw)
    param_groups = []  # groups by name pattern, e.g. [{'pattern': '2.*', 'lr_scale': 10, 'weight_decay': 0}]
    clip_grad_norm = None  # clip the total gradient norm to this value; None disables clipping
    schedule = "cosine"  # none | step | cosine | onecycle (stepped every optimizer step)
    step_size = 10  # step: epochs between decays
    gamma = 0.1  # step: factor applied at each decay
    warmup_epochs = 0  # linear warmup from 0 to lr over this many epochs (onecycle: its rising phase)


@optimizer.config_hook
def validate(config, command_name, logger):
    """Refuse bad optimizer settings before the run starts."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    cfg = config["optimizer"]
    if cfg["name"] not in OPTIMIZERS:
        raise ValueError(
            f"optimizer.name: unknown optimizer '{cfg['name']}' (choose {', '.join(OPTIMIZERS)})"
        )
    if cfg["schedule"] not in SCHEDULES:
        raise ValueError(
            f"optimizer.schedule: unknown schedule '{cfg['schedule']}' "
            f"(choose {', '.join(SCHEDULES)})"
        )
    clip, betas = cfg["clip_grad_norm"], cfg["betas"]
    require("optimizer.clip_grad_norm", clip, clip is None or (is_number(clip) and clip > 0),
            "a positive number or None")
    for key in ("momentum", "weight_decay"):
        require(f"optimizer.{key}", cfg[key], is_number(cfg[key]) and cfg[key] >= 0,
                "a number >= 0")
    require("optimizer.betas", betas, isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in betas), "two numbers in [0, 1)")
    require("optimizer.step_size", cfg["step_size"], is_int(cfg["step_size"]) and cfg["step_size"] >= 1,
            "a positive integer")
    require("optimizer.gamma", cfg["gamma"], is_number(cfg["gamma"]) and cfg["gamma"] > 0,
            "a positive number")
    require("optimizer.warmup_epochs", cfg["warmup_epochs"],
            is_int(cfg["warmup_epochs"]) and cfg["warmup_epochs"] >= 0, "an integer >= 0")
    if cfg["nesterov"] and cfg["momentum"] == 0 and cfg["name"] == "sgd":
        raise ValueError("optimizer.nesterov needs optimizer.momentum above 0")
    for group in cfg["param_groups"]:
        unknown = set(group) - {"pattern", "lr_scale", "weight_decay"}
        if "pattern" not in group or unknown:
            raise ValueError(
                "optimizer.param_groups: each group needs 'pattern' and may set 'lr_scale' "
                f"and 'weight_decay', got {dict(group)}"
            )
        scale = group.get("lr_scale", 1.0)
        require("optimizer.param_groups lr_scale", scale, is_number(scale) and scale > 0,
                "a positive number")
    return {}


def parameter_groups(
    net: nn.Module, lr: float, weight_decay: float, groups: list[dict]
) -> list[dict]:
    """Trainable parameters in groups: the default group first (its lr is the run's lr), then one
    group per pattern; a parameter goes to the first pattern it matches."""
    buckets: list[list] = [[] for _ in groups] + [[]]
    names: list[list[str]] = [[] for _ in groups] + [[]]
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue  # frozen parameters never reach the optimizer
        index = next(
            (i for i, g in enumerate(groups) if fnmatch.fnmatchcase(name, g["pattern"])),
            len(groups),
        )
        buckets[index].append(param)
        names[index].append(name)
    result = []
    for group, params, group_names in zip([*groups, {}], buckets, names):
        if group and not params:
            raise ValueError(
                f"optimizer.param_groups: pattern '{group['pattern']}' matches no trainable parameter"
            )
        if params:
            result.append(
                {
                    "params": params,
                    "names": group_names,
                    "lr": lr * group.get("lr_scale", 1.0),
                    "weight_decay": group.get("weight_decay", weight_decay),
                }
            )
    return result[-1:] + result[:-1] if buckets[-1] else result


@optimizer.capture
def build_optimizer(
    net: nn.Module,
    lr: float,
    name: str,
    momentum: float,
    nesterov: bool,
    betas: list,
    weight_decay: float,
    param_groups: list,
) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    groups = parameter_groups(net, lr, weight_decay, list(param_groups))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


@optimizer.capture
def build_scheduler(
    opt: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int,
    schedule: str,
    step_size: int,
    gamma: float,
    warmup_epochs: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """An LR schedule stepped once per optimizer step, with optional linear warmup."""
    total = max(1, epochs * steps_per_epoch)
    warmup = warmup_epochs * steps_per_epoch
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[group["lr"] for group in opt.param_groups],
            total_steps=total,
            pct_start=min(0.99, warmup / total) if warmup else 0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(
        opt, LRFactor(schedule, total, warmup, steps_per_epoch, step_size, gamma)
    )


class LRFactor:
    """Multiplier of the base lr at a given optimizer step (a class, so it pickles with the run)."""

    def __init__(self, schedule, total, warmup, steps_per_epoch, step_size, gamma):
        self.schedule, self.total, self.warmup = schedule, total, warmup
        self.steps_per_epoch, self.step_size, self.gamma = steps_per_epoch, step_size, gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "step":
            return self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
        if self.schedule == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0


def clip_to_norm(net: nn.Module, max_norm: float | None) -> torch.Tensor | None:
    """Clip the total gradient norm to max_norm (None: no clipping); return the norm before it.
    The norm stays a tensor, so clipping forces no device sync."""
    if max_norm is None:
        return None
    params = [p for p in net.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


@optimizer.capture
def gradient_clipper(clip_grad_norm: float | None):
    """The clipping step for the configured max norm, as a plain function: it runs every
    optimizer step, where a captured function's config lookup would cost a few percent."""
    return functools.partial(clip_to_norm, max_norm=clip_grad_norm)
