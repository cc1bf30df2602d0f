"""MNIST-M from real digits and real photographs: the recipe, the seed, the named sets."""

from __future__ import annotations

import numpy as np
import pytest

from edgewire.data.mnistm import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, blend, photographs
from edgewire.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from edgewire.data.datasets import load_dataset

    return load_dataset("mnist5k", limit=30).x


def test_every_photograph_ships_with_its_package() -> None:
    photos = photographs()
    assert len(photos) == len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in photos)
    assert all(min(p.shape[:2]) >= 128 for p in photos)


def test_the_blend_is_the_absolute_difference(digits: np.ndarray) -> None:
    grey = [np.full((200, 300, 3), 128, dtype=np.uint8)]
    out = blend(digits[:3], size=28, photos=grey)
    ink = digits[:3, 0].astype(np.int16)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, channel], np.abs(128 - ink).astype(np.uint8))


def test_same_seed_same_images_other_seed_other_backgrounds(digits: np.ndarray) -> None:
    a = blend(digits, size=32, seed=5)
    assert a.shape == (30, 3, 32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, blend(digits, size=32, seed=5))
    assert not np.array_equal(a, blend(digits, size=32, seed=6))
    # Colour: the channels differ (a grey set would make them equal).
    assert np.abs(a[:, 0].astype(int) - a[:, 2].astype(int)).mean() > 5


def test_sizes_outside_the_range_are_refused(digits: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"8\.\.512"):
        blend(digits[:1], size=4)


def test_named_sets_load_with_labels_of_the_digits() -> None:
    from edgewire.data.datasets import load_dataset

    data = load_dataset("mnistm32", limit=50)
    digits = load_dataset("mnist5k", limit=50)
    assert data.x.shape == (50, 3, 32, 32) and data.name == "mnistm32"
    np.testing.assert_array_equal(data.y, digits.y)
    assert data.classes == digits.classes
    # A limit blends only what it keeps, and keeps the images the whole set has.
    from edgewire.data.datasets import stratified_order
    from edgewire.data.mnistm import blend

    every = load_dataset("mnist5k")
    ids = np.sort(stratified_order(every.y)[:50])
    np.testing.assert_array_equal(data.x[:5], blend(every.x[ids[:5]], size=32, ids=ids[:5]))
