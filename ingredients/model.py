"""Model ingredient: models built by name or import path, parameter and BatchNorm freezing, a layer summary."""

from __future__ import annotations

import fnmatch
import math
import types
from collections.abc import Callable

import torch
from sacred import Ingredient
from torch import nn

from ingredients.convnet import convnet
from ingredients.imports import import_callable
from ingredients.resnet import resnet18
from ingredients.schema import (
    BOOLEAN,
    INSPECTION_COMMANDS,
    POSITIVE_INT,
    TEXT,
    Rule,
    check_section,
    list_of,
    mapping,
    number,
    shown,
)

# Explicit globals and no git query: Sacred would scan the whole stack (slow); the run's
# sources and their git state are gathered once by experiments/base.py.
model = Ingredient("model", _caller_globals=globals(), save_git_info=False)


@model.config
def config():
    name = "mlp"  # registered model (mlp, cnn, convnet, resnet18) or your own as 'package.module:callable'
    hidden = [128, 64]  # mlp: sizes of the hidden layers
    dropout = 0.1  # mlp and cnn: dropout probability before each classifier layer
    batchnorm = False  # mlp: BatchNorm after each hidden layer (the cnn always has it)
    channels = [16, 32]  # cnn: output channels of the conv blocks
    kwargs = {}  # extra keyword arguments for a model given by import path
    freeze = []  # glob patterns on named_parameters() to keep fixed, e.g. ['features.0.*']
    freeze_batchnorm = False  # BatchNorm layers stay in eval mode: running stats and affine fixed
    sync_batchnorm = False  # under torchrun: BatchNorm layers become SyncBatchNorm (statistics over every process; CUDA only)


SIZES = Rule(list_of(POSITIVE_INT).accepts, "a list of positive integers")
# What each key of the config accepts, checked before a run starts (see ingredients/__init__.py).
SCHEMA = {
    "name": Rule(TEXT.accepts, "a registered model name or 'package.module:callable'"),
    "hidden": SIZES,
    "dropout": number(0, 1, high_open=True),
    "batchnorm": BOOLEAN,
    "channels": SIZES,
    "kwargs": mapping(),
    "freeze": Rule(list_of(TEXT).accepts, "a list of glob patterns"),
    "freeze_batchnorm": BOOLEAN,
    "sync_batchnorm": BOOLEAN,
}


def mlp(
    input_shape: tuple[int, ...], num_outputs: int, hidden=(128, 64), dropout=0.1, batchnorm=False
) -> nn.Module:
    """A fully connected classifier over the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batchnorm:
            layers.append(nn.BatchNorm1d(size))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each halving the image, then global pooling and a linear head."""

    def __init__(self, input_shape, num_outputs, channels=(16, 32), dropout=0.1):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"model.name: the cnn needs image input [channels, height, width], got shape "
                f"{list(input_shape)} (set data.shape, e.g. [1, 8, 8])"
            )
        blocks, width = [], input_shape[0]
        for out in channels:
            blocks += [
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": SmallCNN}
REGISTRY["resnet18"] = resnet18  # ingredients/resnet.py; options through model.kwargs
REGISTRY["convnet"] = convnet  # ingredients/convnet.py; options through model.kwargs


def resolve(name: str) -> Callable[..., nn.Module]:
    """The model factory for a registry name or a 'package.module:callable' import path."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise ValueError(
            f"model.name: unknown model {shown(name)} (registered: {', '.join(REGISTRY)}; "
            "or give an import path 'package.module:callable')"
        )
    return import_callable("model.name", name)


@model.config_hook
def validate(config, command_name, logger):
    """Refuse an unknown model name or out-of-range options before the run starts."""
    if command_name in INSPECTION_COMMANDS:
        return {}
    cfg = check_section("model", config, SCHEMA)
    resolve(cfg["name"])
    return {}


@model.capture
def build_model(
    input_shape: tuple[int, ...],
    num_outputs: int,
    name: str,
    hidden: list,
    dropout: float,
    batchnorm: bool,
    channels: list,
    kwargs: dict,
    freeze: list,
    freeze_batchnorm: bool,
) -> nn.Module:
    """Build the configured model and apply the freezing options."""
    factory = resolve(name)
    if name == "mlp":
        net = factory(input_shape, num_outputs, hidden=hidden, dropout=dropout, batchnorm=batchnorm)
    elif name == "cnn":
        net = factory(input_shape, num_outputs, channels=channels, dropout=dropout)
    else:
        net = factory(input_shape=tuple(input_shape), num_outputs=num_outputs, **kwargs)
    freeze_parameters(net, freeze)
    if freeze_batchnorm:
        freeze_batchnorm_layers(net)
    return net


def freeze_parameters(net: nn.Module, patterns: list[str]) -> list[str]:
    """Turn off gradients of parameters whose name matches a glob pattern; return their names."""
    names = [name for name, _ in net.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ValueError(
                f"model.freeze: pattern {shown(pattern)} matches no parameter "
                f"(parameters: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
            )
    frozen = []
    for name, param in net.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm_layers(net: nn.Module) -> int:
    """Keep every BatchNorm in eval mode with fixed affine parameters, whatever net.train() says."""
    count = 0
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.requires_grad_(False)
            module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]
            module.eval()
            count += 1
    return count


def summarize(net: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """Per-layer output shape and parameter counts, from one forward pass on a zero batch."""
    rows, hooks = [], []

    def record(name):
        def hook(module, inputs, output):
            params = list(module.parameters(recurse=False))
            rows.append(
                {
                    "layer": name,
                    "type": type(module).__name__,
                    "output_shape": list(output.shape[1:]) if torch.is_tensor(output) else None,
                    "params": sum(p.numel() for p in params),
                    "trainable": sum(p.numel() for p in params if p.requires_grad),
                }
            )

        return hook

    for name, module in net.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(record(name)))
    was_training = net.training
    device = next(net.parameters()).device
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros((2, *input_shape), device=device))
    finally:
        for handle in hooks:
            handle.remove()
        net.train(was_training)
    return {
        "layers": rows,
        "params": sum(p.numel() for p in net.parameters()),
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }


def format_summary(summary: dict) -> str:
    """The summary as a fixed-width table for the log."""
    rows = [
        (
            row["layer"],
            row["type"],
            "x".join(map(str, row["output_shape"] or [])) or "-",
            f"{row['params']:,}",
            f"{row['trainable']:,}",
        )
        for row in summary["layers"]
    ]
    header = ("layer", "type", "output", "params", "trainable")
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        )
        for cells in [header, *rows]
    ]
    lines.append(
        f"total {summary['params']:,} parameters, {summary['trainable_params']:,} trainable"
    )
    return "\n".join(lines)
