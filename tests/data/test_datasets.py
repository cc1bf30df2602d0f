"""load_dataset in every form, Dataset.split/subset, and batch_order."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgewire.data.datasets import Dataset, batch_order, load_dataset
from edgewire.data.idx import write_idx
from edgewire.errors import ConfigError, DataError

RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
LABELS = np.arange(30, dtype=np.uint8) % 3


def _dataset(n: int = 30, classes: int = 3) -> Dataset:
    return Dataset(
        x=RNG.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8),
        y=np.arange(n, dtype=np.int64) % classes,
        classes=tuple(f"c{i}" for i in range(classes)),
        name="toy",
    )


# --- the real data sets that packages ship -------------------------------------------


def test_mnist5k() -> None:
    data = load_dataset("mnist5k")
    assert (len(data), data.shape, data.num_classes) == (5000, (1, 28, 28), 10)
    assert data.x.dtype == np.uint8 and data.y.dtype == np.int64 and data.x.flags.c_contiguous
    assert data.classes == tuple("0123456789")
    assert data.x.max() == 255 and np.bincount(data.y).tolist() == [500] * 10


def test_digits_scaled_to_255() -> None:
    from sklearn.datasets import load_digits

    data = load_dataset("digits")
    assert (len(data), data.shape) == (1797, (1, 8, 8))
    raw = load_digits().images
    np.testing.assert_array_equal(data.x[:, 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert set(np.unique(data.x[:, 0][raw == 16])) == {255}


def test_limit_keeps_classes_balanced_and_image_size_resizes() -> None:
    data = load_dataset("mnist5k", limit=50, image_size=14)
    assert len(data) == 50 and data.shape == (1, 14, 14)
    assert np.bincount(data.y).tolist() == [5] * 10
    assert (
        load_dataset("digits", limit=20).y.tolist() == load_dataset("digits", limit=20).y.tolist()
    )


# --- IDX folders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("train-images.idx3-ubyte", "train-labels.idx1-ubyte"),
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("train-images.idx3-ubyte.gz", "train-labels.idx1-ubyte.gz"),
    ],
)
def test_idx_folder(tmp_path: Path, images: str, labels: str) -> None:
    write_idx(tmp_path / images, IMAGES)
    write_idx(tmp_path / labels, LABELS)
    data = load_dataset(str(tmp_path))
    assert data.shape == (1, 28, 28) and data.classes == ("0", "1", "2")
    np.testing.assert_array_equal(data.x[:, 0], IMAGES)
    np.testing.assert_array_equal(data.y, LABELS)


def test_idx_folder_with_mismatched_counts(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", IMAGES)
    write_idx(tmp_path / "train-labels-idx1-ubyte", LABELS[:-1])
    with pytest.raises(DataError, match="30 images but 29 labels"):
        load_dataset(str(tmp_path))


def test_idx_folder_missing_its_labels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images.idx3-ubyte", IMAGES)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_dataset(str(tmp_path))


def test_idx_folder_with_labels_as_images(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", LABELS)
    write_idx(tmp_path / "train-labels-idx1-ubyte", LABELS)
    with pytest.raises(DataError, match="rows"):
        load_dataset(str(tmp_path))


# --- .npz ----------------------------------------------------------------------------


def _npz_cases() -> list[tuple[str, dict[str, Any], tuple[int, int, int]]]:
    rgb = RNG.integers(0, 256, size=(30, 3, 5, 6), dtype=np.uint8)
    return [
        ("nhw", {"x": IMAGES, "y": LABELS}, (1, 28, 28)),
        ("nchw", {"images": rgb, "labels": LABELS.astype(np.int32)}, (3, 5, 6)),
        ("nhwc", {"x": rgb.transpose(0, 2, 3, 1), "y": LABELS}, (3, 5, 6)),
    ]


@pytest.mark.parametrize(("layout", "arrays", "shape"), _npz_cases())
def test_npz_layouts(
    tmp_path: Path, layout: str, arrays: dict[str, Any], shape: tuple[int, int, int]
) -> None:
    path = tmp_path / f"{layout}.npz"
    np.savez_compressed(path, **arrays)
    data = load_dataset(str(path))
    assert data.shape == shape and data.name == layout and data.x.flags.c_contiguous
    assert data.classes == ("0", "1", "2")
    if layout == "nhw":
        np.testing.assert_array_equal(data.x[:, 0], IMAGES)
    elif layout == "nhwc":
        np.testing.assert_array_equal(data.x, arrays["x"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.y, LABELS)


def test_npz_classes_and_float_images(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, x=IMAGES / 255.0, y=LABELS, classes=np.array(["cat", "dog", "eel"]))
    data = load_dataset(str(path))
    assert data.classes == ("cat", "dog", "eel")
    np.testing.assert_array_equal(data.x[:, 0], IMAGES)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"a": IMAGES, "b": LABELS}, "needs arrays x and y"),
        ({"x": IMAGES, "y": LABELS[:5]}, "30 images but 5 labels"),
        ({"x": IMAGES[:0], "y": LABELS[:0]}, "empty"),
        ({"x": IMAGES, "y": np.zeros(30, dtype=np.uint8)}, "at least 2 classes"),
        ({"x": IMAGES, "y": LABELS - 1.0}, "1-D integers"),
        ({"x": IMAGES, "y": LABELS.astype(np.int8) - 1}, "negative"),
        ({"x": IMAGES * 2.0, "y": LABELS}, "0..255"),
        ({"x": IMAGES[:, :, :, None].repeat(2, 3), "y": LABELS}, "N×H×W×C"),
        ({"x": IMAGES, "y": LABELS, "classes": np.array(["a", "b"])}, r"labels must be in 0\.\.1"),
    ],
)
def test_npz_bad_contents(tmp_path: Path, arrays: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path))


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=LABELS)
    with pytest.raises(DataError, match="object arrays"):
        load_dataset(str(path))


def test_npz_header_bigger_than_stored_data(tmp_path: Path) -> None:
    # A valid .npy header that claims 10^12 bytes, followed by 16 bytes.
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, dtype=np.uint8))
    header["shape"] = (10**12,)
    fake = tmp_path / "x.npy"
    with open(fake, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(16))
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.write(fake, "x.npy")
        zf.writestr("y.npy", b"")
    with pytest.raises(DataError, match="1000000000000"):
        load_dataset(str(path))


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"hello")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_dataset(str(tmp_path / "junk.npz"))


# --- image folders -------------------------------------------------------------------


def _write_images(folder: Path, count: int, *, mode: str, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        channels = 1 if mode == "L" else 3
        pixels = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
        img = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels)
        img.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


def test_class_folders_grayscale(tmp_path: Path) -> None:
    for name, count in [("b", 3), ("a", 2)]:
        _write_images(tmp_path / name, count, mode="L", size=(20, 10))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = load_dataset(str(tmp_path), image_size=12)
    assert data.classes == ("a", "b") and data.shape == (1, 12, 12)
    assert data.y.tolist() == [0, 0, 1, 1, 1]
    first = (
        Image.open(tmp_path / "a" / "000.jpg")
        .convert("L")
        .resize((12, 12), Image.Resampling.BILINEAR)
    )
    np.testing.assert_array_equal(data.x[0, 0], np.asarray(first))


def test_class_folders_mixed_modes_become_rgb_default_64(tmp_path: Path) -> None:
    _write_images(tmp_path / "x", 2, mode="L", size=(8, 8))
    _write_images(tmp_path / "y", 2, mode="RGB", size=(100, 70))
    data = load_dataset(str(tmp_path))
    assert data.shape == (3, 64, 64) and len(data) == 4
    gray = data.x[0]
    np.testing.assert_array_equal(gray[0], gray[1])  # a gray image has R == G == B


def test_ai_nano_layout(tmp_path: Path) -> None:
    root = tmp_path / "fruit"
    (root).mkdir()
    (root / "labels.txt").write_text("pear\napple\nfig\n")
    for split, count in [("train", 2), ("val", 1), ("test", 1)]:
        for name in ["apple", "fig", "pear"]:
            _write_images(root / split / name, count, mode="RGB", size=(30, 30))
    data = load_dataset(str(root), image_size=16)
    assert data.classes == ("pear", "apple", "fig") and data.name == "fruit"
    assert data.y.tolist() == [0, 0, 1, 1, 2, 2] and data.shape == (3, 16, 16)
    expected = Image.open(root / "train" / "pear" / "001.png").resize(
        (16, 16), Image.Resampling.BILINEAR
    )
    np.testing.assert_array_equal(data.x[1], np.asarray(expected).transpose(2, 0, 1))


def test_ai_nano_layout_reads_the_split_asked_for_in_the_modes_of_all(tmp_path: Path) -> None:
    for split, mode in [("train", "L"), ("val", "L"), ("test", "RGB")]:
        for name in ["a", "b"]:
            _write_images(tmp_path / split / name, 1 + (split == "val"), mode=mode, size=(8, 8))
    val = load_dataset(str(tmp_path), image_size=8, split="val")
    train = load_dataset(str(tmp_path), image_size=8)
    assert val.y.tolist() == [0, 0, 1, 1] and len(train) == 2
    assert val.shape == train.shape == (3, 8, 8)  # one colour image anywhere: RGB for all
    with pytest.raises(ConfigError, match="split must be one of"):
        load_dataset(str(tmp_path), split="holdout")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "test").rename(tmp_path / "gone")
    with pytest.raises(DataError, match="no test/ split"):
        load_dataset(str(tmp_path), split="test")


def test_ai_nano_layout_with_unlisted_class(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    for name in ["a", "b", "c"]:
        _write_images(tmp_path / "train" / name, 1, mode="L", size=(4, 4))
    with pytest.raises(DataError, match=r"\['c'\]"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("problem", ["empty class", "one class", "no folders", "broken image"])
def test_bad_image_folders(tmp_path: Path, problem: str) -> None:
    _write_images(tmp_path / "a", 2, mode="L", size=(4, 4))
    if problem == "empty class":
        (tmp_path / "b").mkdir()
    elif problem == "no folders":
        (tmp_path / "a" / "000.jpg").rename(tmp_path / "lonely.jpg")
        (tmp_path / "a" / "001.png").unlink()
        (tmp_path / "a").rmdir()
    elif problem == "broken image":
        _write_images(tmp_path / "b", 1, mode="L", size=(4, 4))
        (tmp_path / "b" / "000.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    message = {
        "empty class": "no images",
        "one class": "at least 2 classes",
        "no folders": "no class folders",
        "broken image": "000.jpg",
    }[problem]
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path))


# --- unknown specs and bad arguments ---------------------------------------------------


@pytest.mark.parametrize("spec", ["mnist6k", "/no/such/place", "data.csv"])
def test_unknown_spec_lists_accepted_forms(tmp_path: Path, spec: str) -> None:
    (tmp_path / "data.csv").write_text("1,2,3\n")
    target = str(tmp_path / spec) if spec == "data.csv" else spec
    with pytest.raises(DataError, match="mnist5k") as info:
        load_dataset(target)
    assert repr(target) in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        load_dataset("digits", limit=0)
    with pytest.raises(ConfigError):
        load_dataset("digits", image_size=0)


# --- Dataset ---------------------------------------------------------------------------


def test_dataset_validates() -> None:
    good = _dataset()
    with pytest.raises(DataError, match="uint8"):
        Dataset(x=good.x.astype(np.float32), y=good.y, classes=good.classes)
    with pytest.raises(DataError, match="int64"):
        Dataset(x=good.x, y=good.y.astype(np.int32), classes=good.classes)
    with pytest.raises(DataError, match="labels must be in"):
        Dataset(x=good.x, y=good.y + 1, classes=good.classes)
    strided = Dataset(x=good.x[:, :, ::2, ::2], y=good.y, classes=good.classes)
    assert strided.x.flags.c_contiguous and strided.shape == (1, 2, 2)


def test_split_is_stratified_and_deterministic() -> None:
    data = _dataset(n=100, classes=4)
    train, val = data.split(val_fraction=0.2, seed=3)
    assert (len(train), len(val)) == (80, 20)
    assert np.bincount(val.y).tolist() == [5, 5, 5, 5]
    assert train.classes == val.classes == data.classes
    again_train, again_val = data.split(val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(val.x, again_val.x)
    np.testing.assert_array_equal(train.y, again_train.y)
    other = data.split(val_fraction=0.2, seed=4)[1]
    assert not np.array_equal(val.x, other.x)
    # Disjoint and complete: every image lands in exactly one half.
    keys = sorted(img.tobytes() for img in np.concatenate([train.x, val.x]))
    assert keys == sorted(img.tobytes() for img in data.x)


def test_split_refuses_bad_fractions_and_tiny_sets() -> None:
    data = _dataset(n=4, classes=2)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError):
            data.split(val_fraction=fraction)
    with pytest.raises(DataError, match="too few"):
        data.split(val_fraction=0.1)


def test_subset_takes_every_class_in_proportion() -> None:
    y = np.repeat(np.arange(3), [60, 30, 10]).astype(np.int64)
    data = Dataset(x=np.zeros((100, 1, 2, 2), np.uint8), y=y, classes=("a", "b", "c"))
    part = data.subset(10)
    assert np.bincount(part.y).tolist() == [6, 3, 1]
    assert part.y.tolist() == sorted(part.y.tolist())  # original order kept
    assert data.subset(1000) is data
    with pytest.raises(ConfigError):
        data.subset(0)


# --- batch_order -----------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size"), [(100, 8), (64, 8), (5, 16), (0, 4), (1, 1)])
def test_batch_order_covers_every_index_once(n: int, batch_size: int) -> None:
    batches = batch_order(n, batch_size=batch_size, epoch=2, seed=9)
    assert all(len(b) == batch_size for b in batches[:-1])
    assert len(batches) == -(-n // batch_size)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(n))


def test_batch_order_is_deterministic_and_varies_by_epoch_and_seed() -> None:
    def order(epoch: int, seed: int) -> list[list[int]]:
        return [b.tolist() for b in batch_order(50, batch_size=8, epoch=epoch, seed=seed)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != order(0, 1)
    # Pinned: a change here breaks resumed runs and the sender/baseline agreement.
    expected = np.random.default_rng((0, 0)).permutation(50)[:8].tolist()
    assert order(0, 0)[0] == expected


def test_batch_order_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        batch_order(10, batch_size=0, epoch=0, seed=0)
    with pytest.raises(ConfigError):
        batch_order(10, batch_size=2, epoch=-1, seed=0)
