"""Model backends: chosen by content, refusing what a file is not, and the seed's
TFLite model served with LiteRT-exact scores."""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import DependencyMissing, ModelError
from edgewire.serve import backends
from edgewire.serve.model import RuntimeOptions
from edgewire.serve.runtime import load_model
from edgewire.serve.store import ModelStore
from tests.serve.models import linear_model
from tests.serve.tflite_models import SEED_TFLITE, litert_scores, with_custom_op


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from edgewire.data.datasets import load_dataset

    data = load_dataset("mnist5k", limit=40)
    return (data.x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1), data.y


def test_formats_are_told_apart_by_content(tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    linear_model(onnx_file)
    assert backends.detect(SEED_TFLITE).name == "tflite"
    assert backends.detect(onnx_file).name == "onnx"
    renamed = tmp_path / "seed.bin"
    renamed.write_bytes(SEED_TFLITE.read_bytes())
    assert backends.detect(renamed).name == "tflite"  # the name is a hint, not the truth


@pytest.mark.parametrize(
    ("content", "hint", "message"),
    [
        (b"", "m.onnx", "empty"),
        (pickle.dumps({"weights": [1, 2, 3]}), "m.onnx", "pickle"),
        (pickle.dumps({"weights": [1, 2, 3]}), "m.tflite", "pickle"),
    ],
)
def test_files_that_are_no_model_are_refused(
    tmp_path: Path, content: bytes, hint: str, message: str
) -> None:
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        backends.detect(path, name_hint=hint)


def test_a_torch_style_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1]))
    with pytest.raises(ModelError, match="zip archive"):
        backends.detect(path, name_hint="model.onnx")


def test_a_name_that_contradicts_the_content_is_refused(tmp_path: Path) -> None:
    onnx_file = tmp_path / "m.onnx"
    linear_model(onnx_file)
    with pytest.raises(ModelError, match=r"named 'seed\.onnx' but holds a tflite model"):
        backends.detect(SEED_TFLITE, name_hint="seed.onnx")
    with pytest.raises(ModelError, match=r"named 'm\.tflite' but holds a onnx model"):
        backends.detect(onnx_file, name_hint="m.tflite")


def test_seed_model_is_inspected_with_a_batch_axis() -> None:
    info = backends.backend("tflite").inspect(SEED_TFLITE)
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [
        ("conv2d_input", "float32", (None, 28, 28, 1))
    ]
    assert [(t.name, t.shape) for t in info.outputs] == [("dense_1/Softmax", (None, 10))]


def test_truncated_and_custom_op_tflite_files_are_model_errors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(SEED_TFLITE.read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a usable TFLite model"):
        store.add("seed", truncated)
    custom = with_custom_op(SEED_TFLITE, tmp_path / "custom.tflite")
    with pytest.raises(ModelError, match="EdgewireNoSuchOp"):
        store.add("seed", custom)
    assert store.names() == []  # nothing half-stored


@pytest.mark.parametrize("mode", ["resize", "rows"])
def test_seed_model_batches_with_litert_exact_scores(
    tmp_path: Path, mnist: tuple[np.ndarray, np.ndarray], mode: str
) -> None:
    digits, labels = mnist
    store = ModelStore(tmp_path / "store")
    version = store.add("seed", SEED_TFLITE)
    assert (version.format, version.file) == ("tflite", "model.tflite")
    options = RuntimeOptions(max_batch_size=16, warmup_batch_sizes=(1, 16), fixed_batch=mode)
    loaded = load_model(store.get("seed", version.version), options)
    assert loaded.platform == "tensorflow_lite"
    assert loaded.batch_dim_ok()
    want = litert_scores(SEED_TFLITE, digits)
    for rows in (1, 3, 16):
        got = loaded.run({"conv2d_input": digits[:rows]})["dense_1/Softmax"]
        assert got.shape == (rows, 10)
        assert np.abs(got - want[:rows]).max() <= 1e-5
    assert (want.argmax(axis=1) == labels).mean() >= 0.95  # the seed's real model, real digits


def test_without_litert_a_tflite_model_asks_for_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(DependencyMissing, match=r"pip install 'edgewire\[tflite\]'") as info:
        store.add("seed", SEED_TFLITE)
    assert info.value.exit_code == 3


def test_onnx_metadata_props_are_kept(tmp_path: Path) -> None:
    import onnx

    path = tmp_path / "m.onnx"
    linear_model(path)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"classes": "a,b,c"})
    onnx.save(model, str(path))
    version = ModelStore(tmp_path / "store").add("m", path)
    assert version.format == "onnx"
    assert version.metadata == {"classes": "a,b,c"}
