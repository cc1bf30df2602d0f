"""``edgewire infer``: one scaling for images and uint8 arrays, a class and its probability."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgewire.cli import infer as infer_cli
from edgewire.data.datasets import Dataset, load_dataset
from edgewire.serve.store import ModelStore
from tests.cli.cli_run import run_cli
from tests.helpers import RunningAgent, agent_in_thread

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
INFO = {"name": "input_0", "dtype": "float32", "shape": [None, 784]}
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="module")
def mnist5k() -> Dataset:
    return load_dataset("mnist5k")


def centroid_model(path: Path, data: Dataset) -> None:
    """Logits (no softmax) of a nearest-centroid classifier of the MNIST-5k digits:
    ``x·m_k - |m_k|²/2`` for each class mean ``m_k`` of the 0..1 images."""
    x = data.x.reshape(len(data), -1).astype(np.float32) / 255
    means = np.stack([x[data.y == k].mean(axis=0) for k in range(10)]).astype(np.float32)
    bias = (-0.5 * (means**2).sum(axis=1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input_0", "W", "b"], ["output_0"], transB=1)],
        "centroids",
        [helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(means, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, mnist5k: Dataset) -> Iterator[RunningAgent]:
    data_dir = tmp_path_factory.mktemp("agent")
    model = data_dir / "centroids.onnx"
    centroid_model(model, mnist5k)
    store = ModelStore(data_dir / "models")
    store.add("mnist", model, labels=LABELS)
    store.add("plain", model)
    with agent_in_thread(data_dir) as running:
        yield running


def edgewire(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    return run_cli(capsys, monkeypatch, *args)


def row_of(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if name in line)
    return [cell.strip() for cell in line.strip(" │|").split("│")]


# --- pure functions ---------------------------------------------------------------


def test_probabilities_are_kept_and_logits_softmaxed() -> None:
    p = np.array([0.1, 0.7, 0.2], np.float32)
    np.testing.assert_allclose(infer_cli.probabilities(p), p, rtol=1e-6)
    logits = np.array([1.0, 3.0, 2.0])
    e = np.exp(logits - 3.0)
    np.testing.assert_allclose(infer_cli.probabilities(logits), e / e.sum())
    # Negative values, or a sum off by more than 1e-3, are not probabilities.
    for scores in ([-0.5, 1.0, 0.5], [0.3, 0.3, 0.3], [0.0, 0.0, 1.002]):
        probs = infer_cli.probabilities(np.array(scores))
        assert probs.sum() == pytest.approx(1.0) and not np.allclose(probs, scores)
    assert infer_cli.probabilities(np.array([0.25, 0.25, 0.5005])).sum() == pytest.approx(1.0005)


def test_describe_names_the_class_with_the_labels() -> None:
    scores = np.array([0.1, 0.0, 0.8, 0.1])
    assert infer_cli.describe(scores, ["a", "b", "c", "d"], 2) == ("c", "0.800", "c 0.800, a 0.100")
    assert infer_cli.describe(scores, None, 1) == ("2", "0.800", "2 0.800")


def test_uint8_arrays_are_scaled_as_images_are_and_floats_kept(tmp_path: Path) -> None:
    pixels = np.asarray(Image.open(EXAMPLES / "digit-7.png"))
    assert pixels.dtype == np.uint8 and pixels.shape == (28, 28)
    as_u8 = tmp_path / "u8.npy"
    np.save(as_u8, pixels)
    as_float = tmp_path / "f32.npy"
    np.save(as_float, pixels.astype(np.float32) / 255)
    image = infer_cli.load_input(EXAMPLES / "digit-7.png", INFO, 1 / 255)
    assert image.max() == pytest.approx(pixels.max() / 255) and image.shape == (1, 784)
    np.testing.assert_array_equal(infer_cli.load_input(as_u8, INFO, 1 / 255), image)
    np.testing.assert_allclose(infer_cli.load_input(as_float, INFO, 1 / 255), image, rtol=1e-6)
    raw = tmp_path / "raw.npy"  # a float array is not scaled again, whatever its range
    np.save(raw, pixels.astype(np.float32))
    assert infer_cli.load_input(raw, INFO, 1 / 255).max() == pixels.max()


def test_example_digits_are_small_real_mnist_digits(mnist5k: Dataset) -> None:
    data = mnist5k
    for digit in (7, 2):
        path = EXAMPLES / f"digit-{digit}.png"
        assert path.stat().st_size < 1000
        pixels = np.asarray(Image.open(path))
        same = np.flatnonzero((data.x[:, 0] == pixels).all(axis=(1, 2)))
        assert same.size >= 1 and set(data.y[same]) == {digit}


# --- against an agent -----------------------------------------------------------------


def test_readme_example_gives_the_class_and_its_probability(
    agent: RunningAgent,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(ROOT)  # the README's command, run from the checkout as written
    pixels = np.asarray(Image.open(EXAMPLES / "digit-7.png"))
    np.save(tmp_path / "seven.npy", pixels)  # uint8, as the PNG
    code, out = edgewire(
        capsys, monkeypatch, "infer", "--to", f"127.0.0.1:{agent.native}", "--model", "mnist",
        "docs/examples/digit-7.png", "docs/examples/digit-2.png", str(tmp_path / "seven.npy"),
    )  # fmt: skip
    assert code == 0, out
    png, two, npy = row_of(out, "digit-7.png"), row_of(out, "digit-2.png"), row_of(out, "seven.npy")
    assert png[1] == "seven" and two[1] == "two"
    assert 0.5 < float(png[2]) <= 1.0 and png[3].startswith(f"seven {png[2]}")
    assert npy[1:4] == png[1:4]  # the same pixels, scaled the same way
    assert len(png[3].split(", ")) == 3


def test_without_labels_the_class_is_its_index(
    agent: RunningAgent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = edgewire(
        capsys, monkeypatch, "infer", "--to", f"127.0.0.1:{agent.native}", "--model", "plain",
        "--top", "1", str(EXAMPLES / "digit-7.png"),
    )  # fmt: skip
    assert code == 0, out
    row = row_of(out, "digit-7.png")
    assert row[1] == "7" and row[3] == f"7 {row[2]}"


def test_help_says_how_inputs_are_scaled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = edgewire(capsys, monkeypatch, "infer", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "uint8 arrays" in text and "float arrays are sent as they are" in text
