"""The model zoo for on-device training: small image classifiers that output raw logits.

Inputs are float32 N×C×H×W scaled to 0..1. Every model is built for one input
shape (channels, height, width) and one number of classes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgewire.errors import ConfigError
from edgewire.train.choices import MODEL_NAMES

#: Largest first fc layer a model may have (float32: 4 bytes each, Adam adds 3×).
MAX_PARAMETERS = 64_000_000


class MnistCNN(nn.Module):
    """The classic two-conv MNIST network; the flatten size follows the input size."""

    def __init__(self, *, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, in_channels, height, width)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class LeNet5(nn.Module):
    """LeNet-5 with a padded first conv; the flatten size follows the input size."""

    def __init__(self, *, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        # Below 16 px the unpadded second 5×5 conv would see (almost) nothing, so it
        # gets padding there; at 28×28 this is the textbook net (16×5×5 into fc120).
        # Plain pooling, not adaptive, keeps the ONNX export valid for every size.
        pad2 = 2 if min(height, width) < 16 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = _flat_size(self.features, in_channels, height, width)
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class BasicBlock(nn.Module):
    """Two 3×3 convs with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem → stages of BasicBlocks → global average pool → fc (the split module cuts
    after the stem or after any block)."""

    stem: nn.Sequential
    stages: nn.Sequential

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        stem_stride: int,
        stem_pool: bool,
        stem_kernel: int = 3,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], stem_kernel, stride=stem_stride,
                      padding=stem_kernel // 2, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]  # fmt: skip
        if stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for i, width in enumerate(widths):
            blocks += [BasicBlock(channels, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)]
            channels = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.stages(self.stem(x)))
        logits: torch.Tensor = self.fc(torch.flatten(out, 1))
        return logits


class ResNetSmall(ResNet):
    """A small ResNet: stem, three stages of two BasicBlocks (16/32/64), global pool, fc."""

    def __init__(self, *, in_channels: int, height: int, width: int, num_classes: int) -> None:
        # Large images (the 224 px camera pipeline) get a strided stem and a pool so
        # the three stages run on at most ~56 px; small ones keep full resolution.
        large = min(height, width) >= 96
        super().__init__(
            in_channels=in_channels, num_classes=num_classes, widths=(16, 32, 64),
            stem_stride=2 if large else 1, stem_pool=large,
        )  # fmt: skip


class ResNet18(ResNet):
    """ResNet-18 (four stages of two BasicBlocks, 64/128/256/512), the seed's model.

    From 96 px up it is torchvision's layout (7×7 stride-2 stem and a max pool); on
    smaller images a 3×3 stride-2 stem without the pool, so a 64×64 input still meets
    the stages at 32×32 (about 0.56 GMAC a 64×64 image).
    """

    def __init__(self, *, in_channels: int, height: int, width: int, num_classes: int) -> None:
        large = min(height, width) >= 96
        super().__init__(
            in_channels=in_channels, num_classes=num_classes, widths=(64, 128, 256, 512),
            stem_stride=2, stem_pool=large, stem_kernel=7 if large else 3,
        )  # fmt: skip


def _flat_size(features: nn.Module, channels: int, height: int, width: int) -> int:
    """Size of the flattened feature vector, found by running one dummy input.

    The dummy runs on the meta device (shapes only, no memory, no compute), so a
    large input size costs nothing to probe.
    """
    probe = copy.deepcopy(features).to("meta")
    with torch.no_grad():
        out = probe(torch.empty(1, channels, height, width, device="meta"))
    flat = int(out.shape[1])
    # The first fc layer dominates: refuse before allocating a multi-GB weight
    # matrix for an input size that a network peer may have chosen.
    if flat * 128 > MAX_PARAMETERS:
        raise ConfigError(
            f"a {channels}×{height}×{width} input gives {flat} features into the first "
            f"fc layer, over the {MAX_PARAMETERS:,} parameter cap; use 'resnet_small' "
            "or a smaller input size"
        )
    return flat


_BUILDERS: dict[str, type[nn.Module]] = {
    "mnist_cnn": MnistCNN,
    "lenet5": LeNet5,
    "resnet_small": ResNetSmall,
    "resnet18": ResNet18,
}

# Smallest side each net can shrink to a non-empty feature map (and, for the
# ResNet, to more than one value per channel for batch norm at batch size 1).
_MIN_SIDE: dict[str, int] = {"mnist_cnn": 6, "lenet5": 4, "resnet_small": 8, "resnet18": 32}


def min_side(name: str) -> int:
    """The smallest input side model ``name`` takes."""
    return _MIN_SIDE[name]


def model_bytes(name: str, *, in_channels: int, height: int, width: int, num_classes: int) -> int:
    """Bytes of model ``name``'s parameters and buffers (what a checkpoint holds once,
    before optimizer state), counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = build_model(
            name, in_channels=in_channels, height=height, width=width, num_classes=num_classes
        )
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def build_model(
    name: str, *, in_channels: int, height: int, width: int, num_classes: int
) -> nn.Module:
    """Build the model ``name`` for C×H×W inputs and ``num_classes`` outputs."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    side = _MIN_SIDE[name]
    if min(height, width) < side:
        raise ConfigError(
            f"model {name!r} needs inputs of at least {side}×{side} pixels, got {height}×{width}"
        )
    model: nn.Module = builder(
        in_channels=in_channels, height=height, width=width, num_classes=num_classes
    )
    return model
