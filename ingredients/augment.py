"""Batch augmentation on the run's device: uint8 images in, normalised float images out.

Random parameters are drawn on the CPU from a torch.Generator the caller seeds (one per epoch,
from the loader's checkpointed generator), so a run, its rerun and its resumption draw the same
values whatever the device or the number of loader workers. The geometric steps (crop, resized
crop, flip, rotate, affine) are folded into one affine matrix per image and applied in one
kornia warp; colour jitter uses kornia.enhance with per-image factors. Validation and test get
the deterministic part only: scaling to [0, 1] and normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# name -> (parameters and defaults); a step's "p" is the probability it applies to an image.
STEPS: dict[str, dict] = {
    "crop": {"padding": 4, "p": 1.0},  # random crop of the zero-padded image (shift by <= padding)
    "resized_crop": {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3], "p": 1.0},
    "flip": {"p": 0.5},  # horizontal flip
    "rotate": {"degrees": 10.0, "p": 1.0},
    "affine": {"degrees": 0.0, "translate": 0.1, "scale": [0.9, 1.1], "p": 1.0},
    "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 1.0},
}


def check_steps(steps: list[dict]) -> None:
    """One sentence naming an unknown step or parameter of data.augment."""
    for i, step in enumerate(steps):
        name = step.get("name")
        if name not in STEPS:
            raise ValueError(
                f"data.augment[{i}]: unknown step {name!r} (known: {', '.join(STEPS)})"
            )
        unknown = sorted(set(step) - {"name"} - set(STEPS[name]))
        if unknown:
            raise ValueError(
                f"data.augment[{i}] ({name}): unknown parameter {unknown[0]!r} "
                f"(known: {', '.join(STEPS[name])})"
            )


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low


def _applies(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def _eye(n: int) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)


def _about_centre(linear: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """3x3 matrices applying 2x2 `linear` about the image centre."""
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    m = _eye(len(linear))
    m[:, :2, :2] = linear
    m[:, :2, 2] = c - (linear @ c)
    return m


def _rotation(angle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rad = angle * math.pi / 180
    cos, sin = torch.cos(rad) * scale, torch.sin(rad) * scale
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def _geometry(name: str, s: dict, n: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """Source-to-output matrices of one geometric step for n images."""
    m = _eye(n)
    if name == "crop":
        pad = int(s["padding"])
        shift = torch.randint(-pad, pad + 1, (n, 2), generator=g).double()
        m[:, :2, 2] = shift
    elif name == "flip":
        m[:, 0, 0], m[:, 0, 2] = -1.0, w - 1.0
    elif name == "rotate":
        d = float(s["degrees"])
        m = _about_centre(
            _rotation(_uniform(n, -d, d, g), torch.ones(n, dtype=torch.float64)), h, w
        )
    elif name == "affine":
        d, t = float(s["degrees"]), float(s["translate"])
        scale = _uniform(n, *s["scale"], g)  # type: ignore[call-arg]  # mypy maps *args onto g too
        m = _about_centre(_rotation(_uniform(n, -d, d, g), scale), h, w)
        m[:, 0, 2] += _uniform(n, -t, t, g) * w
        m[:, 1, 2] += _uniform(n, -t, t, g) * h
    elif name == "resized_crop":
        area = _uniform(n, *s["scale"], g)  # type: ignore[call-arg]  # mypy maps *args onto g too
        log_ratio = _uniform(n, math.log(s["ratio"][0]), math.log(s["ratio"][1]), g)
        ratio = torch.exp(log_ratio)
        cw = torch.sqrt(area * ratio).clamp(max=1.0) * w
        ch = torch.sqrt(area / ratio).clamp(max=1.0) * h
        x0 = torch.rand(n, generator=g, dtype=torch.float64) * (w - cw)
        y0 = torch.rand(n, generator=g, dtype=torch.float64) * (h - ch)
        m[:, 0, 0], m[:, 1, 1] = w / cw, h / ch
        m[:, 0, 2], m[:, 1, 2] = -x0 * w / cw, -y0 * h / ch
    return m


class Augmenter:
    """uint8 (N, C, H, W) batches -> float32 in [0, 1], augmented (training), normalised."""

    def __init__(self, steps: list[dict], normalization: dict | None, channels: int):
        check_steps(steps)
        self.steps = [{**STEPS[s["name"]], **s} for s in steps]
        self.mean = self.std = None
        if normalization is not None:
            self.mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.channels = channels

    @property
    def random(self) -> bool:
        """Whether training batches draw random parameters."""
        return bool(self.steps)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The batch as the model sees it; `generator` None: the deterministic part only."""
        x = x.float().div_(255)
        if generator is not None and self.steps and len(x):
            x = self._random(x, generator)
        if self.mean is not None and self.std is not None:  # set together
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x

    def _random(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from kornia.enhance import adjust_brightness, adjust_contrast, adjust_saturation
        from kornia.geometry.transform import warp_affine

        n, _, h, w = x.shape
        matrix, geometric = _eye(n), False
        jitter: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for s in self.steps:
            on = _applies(n, s["p"], g)
            if s["name"] == "color_jitter":
                jitter.append(
                    self._jitter(s, on, g, adjust_brightness, adjust_contrast, adjust_saturation)
                )
                continue
            step = _geometry(s["name"], s, n, h, w, g)
            step[~on] = torch.eye(3, dtype=torch.float64)
            matrix, geometric = step @ matrix, True
        if geometric:
            m = matrix[:, :2].to(dtype=x.dtype, device=x.device)
            x = warp_affine(x, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
        for apply in jitter:
            x = apply(x)
        return x

    def _jitter(self, s, on, g, brightness, contrast, saturation):
        """A colour jitter step with its factors drawn now (so the draws keep their order)."""
        n = len(on)

        def factor(amount: float) -> torch.Tensor:
            f = _uniform(n, max(0.0, 1 - amount), 1 + amount, g)
            return torch.where(on, f, torch.ones_like(f)).float()

        b, c = factor(float(s["brightness"])), factor(float(s["contrast"]))
        sat = factor(float(s["saturation"]))

        def apply(x: torch.Tensor) -> torch.Tensor:
            x = brightness(x, (b - 1).to(x.device))  # kornia adds the factor
            x = contrast(x, c.to(x.device))
            if self.channels == 3:
                x = saturation(x, sat.to(x.device))
            return x

        return apply
