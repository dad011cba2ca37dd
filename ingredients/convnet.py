"""A small two-block CNN with a fully connected head (LeNet/VGG-like): cheap on a CPU, and the
head keeps where features are (global pooling, as the registry's cnn does, loses that on 28x28
clothing). The `fashion` recipe's model."""

from __future__ import annotations

import math

from torch import Tensor, nn


class ConvNet(nn.Module):
    """conv-BN-ReLU-maxpool blocks, then flatten, a hidden linear layer and the classifier."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: tuple[int, ...] = (16, 32),
        hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"model.name: convnet needs image input [channels, height, width], got shape "
                f"{list(input_shape)}"
            )
        blocks, width, (h, w) = [], input_shape[0], input_shape[1:]
        for out in channels:
            blocks += [
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width * math.prod((h, w)), hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def convnet(input_shape: tuple[int, ...], num_outputs: int, **kwargs) -> nn.Module:
    """The registry's factory (options through model.kwargs: channels, hidden, dropout)."""
    return ConvNet(tuple(input_shape), num_outputs, **kwargs)
