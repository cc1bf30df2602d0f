"""``edgewire data export-idx``: MNIST's four IDX files from the bundled digits, read back."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from edgewire.data.datasets import load_dataset
from edgewire.data.idx import read_idx
from tests.cli.cli_run import run_cli

FILES = (
    "train-images.idx3-ubyte",
    "train-labels.idx1-ubyte",
    "t10k-images.idx3-ubyte",
    "t10k-labels.idx1-ubyte",
)


def edgewire(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    return run_cli(capsys, monkeypatch, *args)


def test_mnist5k_exports_four_idx_files_the_loader_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mnist"
    code, text = edgewire(capsys, monkeypatch, "data", "export-idx", "mnist5k", str(out))
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temp files left
    for name in FILES:
        assert str(out / name) in text.replace("\n", "")
    # Big-endian headers with MNIST's magic numbers.
    for name, magic, ndim in [(FILES[0], 2051, 3), (FILES[1], 2049, 1)]:
        raw = (out / name).read_bytes()
        assert struct.unpack(">I", raw[:4])[0] == magic
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        assert len(raw) == 4 + 4 * ndim + int(np.prod(dims))

    data = load_dataset("mnist5k")
    train, test = data.split(val_fraction=0.2, seed=0)
    for split, part in (("train", train), ("t10k", test)):
        images = read_idx(out / f"{split}-images.idx3-ubyte")
        labels = read_idx(out / f"{split}-labels.idx1-ubyte")
        assert images.dtype == np.uint8 and images.shape == (len(part), 28, 28)
        np.testing.assert_array_equal(images, part.x[:, 0])
        np.testing.assert_array_equal(labels, part.y)
    assert len(train) + len(test) == 5000
    # The folder is a data set the rest of edgewire reads (its train files).
    again = load_dataset(str(out))
    assert len(again) == len(train) and again.shape == (1, 28, 28)
    np.testing.assert_array_equal(again.y, train.y)


def test_digits_resized_to_mnist_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = edgewire(
        capsys, monkeypatch, "data", "export-idx", "digits", str(tmp_path), "--size", "28",
        "--test-fraction", "0.1",
    )  # fmt: skip
    assert code == 0, text
    images = read_idx(tmp_path / FILES[0])
    test_images = read_idx(tmp_path / FILES[2])
    assert images.shape[1:] == (28, 28) == test_images.shape[1:]
    assert len(images) + len(test_images) == len(load_dataset("digits"))


def test_an_unknown_data_set_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, text = edgewire(capsys, monkeypatch, "data", "export-idx", "nosuch", str(tmp_path / "x"))
    assert code == 4 and text.startswith("error:") and "'nosuch'" in text
    assert not (tmp_path / "x").exists()
