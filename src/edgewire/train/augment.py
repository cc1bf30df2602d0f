"""Training-split augmentation, in torch on a whole batch (cheap on a CPU).

One affine warp per image (random resized crop, shift, optional horizontal
flip) through a single ``grid_sample``, then brightness/contrast jitter and a
little sensor noise. Draws come from a generator seeded by (seed, epoch, batch),
so a run is repeatable and a batch augments the same way wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Augment:
    """How strongly to augment; the defaults suit camera images of objects."""

    min_area: float = 0.7  # random resized crop keeps 70..100% of the image area
    shift: float = 0.08  # extra translation, as a fraction of the side
    flip: bool = True  # horizontal flip; off for digits or text
    brightness: float = 0.2  # ±20% added light
    contrast: float = 0.2  # ×(1 ± 20%) around each image's mean
    noise: float = 0.02  # std of Gaussian noise on the 0..1 scale
    seed: int = 0

    def __call__(self, x: np.ndarray, epoch: int, seq: int) -> np.ndarray:
        """``x`` (uint8 or float32 0..1, N×C×H×W) augmented, as float32 in 0..1."""
        import torch
        import torch.nn.functional as F

        gen = torch.Generator().manual_seed(hash_seed(self.seed, epoch, seq))
        images = torch.from_numpy(np.ascontiguousarray(x))
        images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        n = images.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=gen)

        scale = uniform(self.min_area, 1.0).sqrt()  # side fraction kept
        room = (1.0 - scale) + self.shift  # how far the crop may move, in [-1, 1] units
        tx, ty = uniform(-1.0, 1.0) * room, uniform(-1.0, 1.0) * room
        sx = scale.clone()
        if self.flip:
            sx = torch.where(torch.rand(n, generator=gen) < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sx, tx
        theta[:, 1, 1], theta[:, 1, 2] = scale, ty
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(1.0 - self.contrast, 1.0 + self.contrast).view(n, 1, 1, 1)
        bright = uniform(-self.brightness, self.brightness).view(n, 1, 1, 1)
        out = (out - mean) * contrast + mean + bright
        if self.noise > 0:
            out = out + self.noise * torch.randn(out.shape, generator=gen)
        result: np.ndarray = out.clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
        return result


def hash_seed(seed: int, epoch: int, seq: int) -> int:
    """One 63-bit seed for (seed, epoch, batch), independent of PYTHONHASHSEED."""
    return int(
        np.random.SeedSequence([seed, epoch, seq]).generate_state(1, dtype=np.uint64)[0] >> 1
    )
