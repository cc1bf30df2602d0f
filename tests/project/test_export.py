"""edgewire export: scores with metadata the store reads, fp16 and int8 variants measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgewire.errors import ConfigError
from edgewire.project.export import export_model
from edgewire.serve.store import ModelStore
from tests.cli.cli_run import run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgewire.data.datasets import load_dataset
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.local import train_local
    from edgewire.train.stream_client import spec_for
    from edgewire.train.trainer import Trainer, TrainSpec

    data = load_dataset("digits")
    train, _ = data.split(val_fraction=0.1, seed=0)
    trainer = Trainer(TrainSpec.from_dict(spec_for(train, model="lenet5", lr=3e-3)))
    train_local(trainer, train, None, epochs=3, batch_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    save_checkpoint(trainer, path, meta={"data": "digits", "val_fraction": 0.1, "seed": 0})
    return path


def test_export_writes_scores_metadata_and_measured_variants(
    checkpoint: Path, tmp_path: Path
) -> None:
    variants = export_model(checkpoint, tmp_path / "m.onnx", fp16=True, int8=True)
    kinds = {v.kind: v for v in variants}
    assert set(kinds) == {"fp32", "fp16", "int8"}
    assert kinds["fp32"].max_abs_diff < 1e-4 and kinds["fp16"].max_abs_diff < 2e-2
    assert kinds["fp32"].accuracy > 0.7
    assert abs(kinds["int8"].accuracy - kinds["fp32"].accuracy) < 0.1
    assert kinds["int8"].size < kinds["fp32"].size
    for v in variants:
        onnx.checker.check_model(str(v.path))
        scores = ort.InferenceSession(str(v.path)).run(
            None, {"input_0": np.zeros((3, 1, 8, 8), np.float32)}
        )[0]
        assert scores.shape == (3, 10) and np.allclose(scores.sum(1), 1.0, atol=1e-2)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["labels"]) == [str(i) for i in range(10)]
    # The store reads what the file carries: the agent needs nothing else.
    version = ModelStore(tmp_path / "store").add("digits", tmp_path / "m.onnx")
    assert version.labels == tuple(str(i) for i in range(10))
    assert version.preprocessing == {"scale": 1 / 255}


def test_export_cli_names_and_refusals(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "named.onnx"
    code, text = run_cli(capsys, monkeypatch, "export", str(checkpoint), "--out", str(out),
                         "--names", "data,prob")  # fmt: skip
    assert code == 0 and "fp32" in text and "held-out accuracy" in text, text
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["data"] and [o.name for o in graph.output] == ["prob"]
    code, text = run_cli(capsys, monkeypatch, "export", str(checkpoint), "--out",
                         str(tmp_path / "x.onnx"), "--names", "same,same")  # fmt: skip
    assert code == 2 and "--names is INPUT,OUTPUT" in text
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ConfigError, match="--opset"):
        export_model(checkpoint, tmp_path / "y.onnx", opset=9)
