"""ResNet-18 for small images (CIFAR-style): a 3x3 stem without max pooling, four stages of two
basic blocks. `width` scales every stage (64 is the standard network; 16 trains fast on a CPU)."""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet18(nn.Module):
    """ResNet-18 with a 3x3 stem for 28x28 / 32x32-ish inputs [channels, height, width]."""

    def __init__(
        self, input_shape: tuple[int, ...], num_outputs: int, width: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"model.name: resnet18 needs image input [channels, height, width], got shape "
                f"{list(input_shape)}"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, inputs = [], width
        for i, outputs in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(inputs, num_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet18(input_shape: tuple[int, ...], num_outputs: int, **kwargs) -> nn.Module:
    """The registry's factory (options through model.kwargs: width, dropout)."""
    return ResNet18(tuple(input_shape), num_outputs, **kwargs)
