"""Cutting a trained classifier into a head and a tail with a uint8 bottleneck between.

A teacher from ``train/models.py`` is seen as an ordered list of stages
(:func:`stages`); a split point names the stage after which the cut goes. The
student keeps copies of the teacher's stages on both sides and inserts an
encoder (strided convs down to ``channels`` × H/4 × W/4 values in 0..1, then
``round(255·z)``: one byte each) and a decoder (transposed convs back to the
teacher's feature shape). Training sees the rounding through a straight-through
estimator; the exported head does Round and Clip before the Cast, so TensorRT
and ONNX Runtime produce the same bytes PyTorch does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgewire.errors import ConfigError
from edgewire.split.codec import DEFAULT_LEVELS
from edgewire.train.models import LeNet5, MnistCNN, ResNet

#: Bottleneck values are uint8 codes q in 0..levels-1; the float they stand for is
#: (q - ZERO_POINT) * scale, with scale = 1 / (levels - 1) (SCALE for all 256 levels).
SCALE = 1.0 / 255.0
ZERO_POINT = 0


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


def stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The teacher as named stages run one after the other (the candidate cuts)."""
    if isinstance(model, ResNet):
        blocks = [(f"stage{i + 1}", block) for i, block in enumerate(model.stages)]
        head = nn.Sequential(model.pool, _Flatten(), model.fc)
        return [("stem", model.stem), *blocks, ("classifier", head)]
    if isinstance(model, MnistCNN | LeNet5):
        convs = [(f"features{i}", m) for i, m in enumerate(model.features)]
        return [*convs, ("classifier", model.classifier)]
    raise ConfigError(f"cannot split a {type(model).__name__}; split a model edgewire trains")


def split_points(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Where a cut may go: after any stage that outputs a spatial feature map of 4×4 or more."""
    names = []
    probe = copy.deepcopy(model).to("meta").eval()
    x = torch.empty(1, *input_shape, device="meta")
    with torch.no_grad():
        for name, stage in stages(probe):
            x = stage(x)
            if x.ndim == 4 and min(x.shape[2:]) >= 4:
                names.append(name)
    return names


@dataclass(frozen=True, kw_only=True)
class SplitSpec:
    """Where to cut and how wide the bottleneck is."""

    at: str
    channels: int = 4
    #: Quantisation levels of each code (2..256), all stored as uint8.
    levels: int = DEFAULT_LEVELS

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 256:
            raise ConfigError(f"bottleneck channels must be in 1..256, got {self.channels!r}")
        if not 2 <= self.levels <= 256:
            raise ConfigError(f"quantisation levels must be in 2..256, got {self.levels!r}")

    @property
    def scale(self) -> float:
        return 1.0 / (self.levels - 1)


class Encoder(nn.Module):
    """Feature map (C×H×W) -> ``channels`` × H/4 × W/4 values in (0, 1).

    It runs on the device, so it is kept narrow (at most 32 wide)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        width = max(16, 2 * channels, min(in_channels, 32))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, channels, 3, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class Decoder(nn.Module):
    """Bottleneck values in 0..1 -> the teacher's feature map at the cut.

    Two 2×2 stride-2 transposed convs and a 1×1 conv: it adds about a tenth of a
    ResNet-18 stage's work to the tail."""

    def __init__(self, channels: int, out_channels: int, out_hw: tuple[int, int]) -> None:
        super().__init__()
        width = max(16, 2 * channels, min(out_channels, 64))
        self.out_hw = out_hw
        self.net = nn.Sequential(
            nn.ConvTranspose2d(channels, width, 2, stride=2),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width, 2, stride=2),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, out_channels, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(z)
        h, w = self.out_hw
        return out[:, :, :h, :w]


def quantize(z: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """uint8 codes (as float) of values in 0..1: Round, then Clip, as the export does."""
    return torch.clamp(torch.round(z * (levels - 1)) + ZERO_POINT, 0, levels - 1)


class SplitModel(nn.Module):
    """Teacher head → encoder → uint8 → decoder → teacher tail."""

    def __init__(
        self, teacher: nn.Module, spec: SplitSpec, *, input_shape: tuple[int, int, int]
    ) -> None:
        super().__init__()
        named = stages(teacher)
        names = [n for n, _ in named]
        candidates = split_points(teacher, input_shape)
        if spec.at not in candidates:
            raise ConfigError(f"cannot split at {spec.at!r}; candidates: {', '.join(candidates)}")
        cut = names.index(spec.at) + 1
        self.spec = spec
        self.input_shape = input_shape
        self.head = nn.Sequential(*[copy.deepcopy(m) for _, m in named[:cut]])
        self.tail = nn.Sequential(*[copy.deepcopy(m) for _, m in named[cut:]])
        with torch.no_grad():
            was = teacher.training
            teacher.eval()
            probe = torch.zeros(1, *self.input_shape)
            feat = nn.Sequential(*[m for _, m in named[:cut]])(probe)
            teacher.train(was)
        self.feature_shape = tuple(int(d) for d in feat.shape[1:])
        channels, h, w = self.feature_shape
        self.encoder = Encoder(channels, spec.channels)
        self.decoder = Decoder(spec.channels, channels, (h, w))
        with torch.no_grad():
            self.bottleneck_shape = tuple(int(d) for d in self.encoder(feat).shape[1:])

    @property
    def scale(self) -> float:
        return self.spec.scale

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's values in (0, 1) before rounding (what a rate penalty sees)."""
        out: torch.Tensor = self.encoder(self.head(x))
        return out

    def features(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """The student's reconstruction of the teacher's features at the cut."""
        z = self.bottleneck(x) if z is None else z
        levels = self.spec.levels
        q = z + (quantize(z, levels) * self.scale - z).detach()  # straight-through rounding
        out: torch.Tensor = self.decoder(q)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tail(self.features(x))
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 bottleneck for ``x`` (what crosses the network)."""
        return quantize(self.bottleneck(x), self.spec.levels).to(torch.uint8)

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Logits from a uint8 bottleneck."""
        z = (q.to(torch.float32) - ZERO_POINT) * self.scale
        out: torch.Tensor = self.tail(self.decoder(z))
        return out
