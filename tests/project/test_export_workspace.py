"""edgewire export of a workspace run (val calibrates int8, test measures), and a Triton
model repository that Triton's own ModelConfig protobuf parses and the agent serves."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from PIL import Image

from edgewire.project.export import export_model
from edgewire.project.triton import write_triton_repo
from tests.cli.cli_run import run_cli
from tests.helpers import serving_agent, upload


def _model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf, without tritonclient.grpc's __init__ (it needs grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations)), "grpc", "model_config_pb2.py")
    loaded = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


model_config_pb2 = _model_config_pb2()
CLASSES = ("one", "seven", "zero")
DIGITS = {"zero": 0, "one": 1, "seven": 7}


def _save_split(root: Path) -> Path:
    from edgewire.data.datasets import load_dataset

    mnist = load_dataset("mnist5k")
    dataset = root / "dataset"
    rng = np.random.default_rng(0)
    for name in CLASSES:
        rows = rng.permutation(np.flatnonzero(mnist.y == mnist.classes.index(str(DIGITS[name]))))
        for split, part in (("train", rows[:120]), ("val", rows[120:160]), ("test", rows[160:200])):
            folder = dataset / split / name
            folder.mkdir(parents=True)
            for i in part:
                Image.fromarray(mnist.x[i, 0]).save(folder / f"{i}.png")
    (dataset / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgewire.data.datasets import load_dataset
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.local import train_local
    from edgewire.train.stream_client import spec_for
    from edgewire.train.trainer import Trainer, TrainSpec

    root = tmp_path_factory.mktemp("ws")
    dataset = _save_split(root)
    train = load_dataset(str(dataset), image_size=28)
    assert train.classes == CLASSES
    trainer = Trainer(TrainSpec.from_dict(spec_for(train, model="lenet5", lr=3e-3)))
    train_local(trainer, train, None, epochs=2, batch_size=32)
    folder = root / "runs" / "digits3"
    folder.mkdir(parents=True)
    meta = {"dataset": str(dataset.resolve()), "splits": True, "image_size": 28,
            "classes": list(CLASSES)}  # fmt: skip
    save_checkpoint(trainer, folder / "checkpoint.safetensors", meta=meta)
    return folder


def test_workspace_run_measures_on_test_and_calibrates_on_val(run: Path, tmp_path: Path) -> None:
    variants = export_model(run, tmp_path / "m.onnx", int8=True)
    assert [v.kind for v in variants] == ["fp32", "int8"]
    assert all(v.measured_on == "test" for v in variants)
    fp32, int8 = variants
    assert fp32.accuracy > 0.8 and abs(int8.accuracy - fp32.accuracy) < 0.1
    assert fp32.max_abs_diff < 1e-4 and int8.size < fp32.size
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["labels"]) == list(CLASSES)
    assert json.loads(props["edgewire.input_size"]) == [1, 28, 28]


def test_workspace_without_test_split_is_refused(run: Path, tmp_path: Path) -> None:
    from edgewire.errors import ConfigError
    from edgewire.train.checkpoint import load_checkpoint, save_checkpoint

    trainer, meta = load_checkpoint(run / "checkpoint.safetensors", device="cpu")
    gone = tmp_path / "gone"
    save_checkpoint(trainer, tmp_path / "c.safetensors", meta={**meta, "dataset": str(gone)})
    with pytest.raises(ConfigError, match="has no test/ split"):
        export_model(tmp_path / "c.safetensors", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_writes_a_triton_repository_triton_and_the_agent_accept(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    repo = tmp_path / "repo"
    code, text = run_cli(capsys, monkeypatch, "export", str(run), "--out",
                         str(tmp_path / "m.onnx"), "--triton-repo", str(repo),
                         "--max-batch", "16")  # fmt: skip
    assert code == 0, text
    assert "test accuracy" in text and "tritonserver --model-repository" in text
    folder = repo / "digits3"
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.name == "digits3" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input_0", model_config_pb2.TYPE_FP32, [1, 28, 28])
    ]
    (out,) = config.output
    assert (out.name, list(out.dims), out.label_filename) == ("output_0", [3], "labels.txt")
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert len(config.instance_group) == 1
    assert (folder / "labels.txt").read_text().split() == list(CLASSES)
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left
    # The agent serves the very file Triton would.
    with serving_agent(tmp_path / "agent") as agent:
        answer = upload(agent, folder / "1" / "model.onnx", name="digits3")
        assert answer.status_code == 201, answer.text
        import httpx

        body = {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [2, 1, 28, 28],
                            "data": [0.0] * (2 * 28 * 28)}]}  # fmt: skip
        reply = httpx.post(f"http://127.0.0.1:{agent.http}/v2/models/digits3/infer",
                           json=body, timeout=10)  # fmt: skip
        assert reply.status_code == 200, reply.text
        scores = np.asarray(reply.json()["outputs"][0]["data"]).reshape(2, 3)
        assert np.allclose(scores.sum(1), 1.0, atol=1e-4)


def test_triton_repo_refusals(run: Path, tmp_path: Path) -> None:
    from edgewire.errors import ConfigError, ModelError

    with pytest.raises(ConfigError, match="--triton-name 'a b'"):
        write_triton_repo(tmp_path / "m.onnx", tmp_path / "r", name="a b")
    with pytest.raises(ConfigError, match=r"--max-batch must be in 1\.\.4096, got 0"):
        write_triton_repo(tmp_path / "m.onnx", tmp_path / "r", name="m", max_batch=0)
    fixed = tmp_path / "fixed.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "fixed",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(fixed))
    with pytest.raises(ModelError, match="no dynamic batch axis"):
        write_triton_repo(fixed, tmp_path / "r", name="m")
    assert not (tmp_path / "r" / "m").exists()
