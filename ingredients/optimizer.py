"""Optimizer ingredient: optimizer over trainable parameters, per-pattern groups, clipping, LR schedule."""

from __future__ import annotations

import fnmatch
import functools
import math

import torch
from sacred import Ingredient
from torch import nn

from ingredients.schema import (
    BOOLEAN,
    INSPECTION_COMMANDS,
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TEXT,
    Rule,
    check_section,
    choice,
    list_of,
    mapping,
    nullable,
    number,
    shown,
)

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
    warmup_epochs = 0  # linear warmup from 0 to lr over these epochs (onecycle: its rise)


GROUP = mapping(
    {"pattern": TEXT, "lr_scale": POSITIVE_NUMBER, "weight_decay": NON_NEGATIVE_NUMBER},
    required=("pattern",),
)
# What each key of the config accepts, checked before a run starts (see ingredients/__init__.py).
SCHEMA = {
    "name": choice(*OPTIMIZERS),
    "momentum": NON_NEGATIVE_NUMBER,
    "nesterov": BOOLEAN,
    "betas": Rule(list_of(number(0, 1, high_open=True), length=2).accepts, "two numbers in [0, 1)"),
    "weight_decay": NON_NEGATIVE_NUMBER,
    "param_groups": Rule(
        list_of(GROUP).accepts,
        "a list of groups {'pattern': glob, 'lr_scale': number > 0, "
        "'weight_decay': number >= 0}, each with a pattern",
    ),
    "clip_grad_norm": nullable(POSITIVE_NUMBER),
    "schedule": choice(*SCHEDULES),
    "step_size": POSITIVE_INT,
    "gamma": POSITIVE_NUMBER,
    "warmup_epochs": NON_NEGATIVE_INT,
}


@optimizer.config_hook
def validate(config, command_name, logger):
    """Refuse bad optimizer settings before the run starts."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    cfg = check_section("optimizer", config, SCHEMA)
    if cfg["nesterov"] and cfg["momentum"] == 0 and cfg["name"] == "sgd":
        raise ValueError("optimizer.nesterov needs optimizer.momentum above 0")
    return {}


def parameter_groups(
    net: nn.Module, lr: float, weight_decay: float, groups: list[dict]
) -> list[dict]:
    """Trainable parameters in groups: the default group first (its lr is the run's lr), then one
    group per pattern; a parameter goes to the first pattern it matches."""
    buckets: list[list] = [[] for _ in groups] + [[]]
    names: list[list[str]] = [[] for _ in range(len(groups) + 1)]
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
                f"optimizer.param_groups: pattern {shown(group['pattern'])} matches no trainable parameter"
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
