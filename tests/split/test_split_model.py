"""Split models: the cut, the uint8 bottleneck, two-stage distillation, ONNX head and tail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgewire.errors import ConfigError
from edgewire.split.distill import DistillPlan, accuracy, distill, teacher_features
from edgewire.split.export import BOTTLENECK, HEAD_IN, TAIL_OUT, export_split
from edgewire.split.model import SplitModel, SplitSpec, split_points
from edgewire.train.models import build_model

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    from edgewire.data.datasets import load_dataset

    d = load_dataset("mnistm32", limit=200)
    return d.x, d.y


@pytest.fixture(scope="module")
def teacher(data: tuple[np.ndarray, np.ndarray]) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet_small", in_channels=3, height=32, width=32, num_classes=10)
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for i in range(0, len(x), 50):
            xb = torch.from_numpy(x[i : i + 50]).float() / 255
            loss = torch.nn.functional.cross_entropy(model(xb), torch.from_numpy(y[i : i + 50]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_split_points_and_a_bad_one(teacher: torch.nn.Module) -> None:
    points = split_points(teacher, SHAPE)
    assert points[:3] == ["stem", "stage1", "stage2"]
    with pytest.raises(ConfigError, match="candidates: stem, stage1"):
        SplitModel(teacher, SplitSpec(at="classifier"), input_shape=SHAPE)


def test_the_bottleneck_is_smaller_than_the_input(teacher: torch.nn.Module) -> None:
    model = SplitModel(teacher, SplitSpec(at="stage2", channels=4), input_shape=SHAPE)
    assert model.feature_shape == (16, 32, 32)
    assert model.bottleneck_shape == (4, 8, 8)
    q = model.encode(torch.rand(3, *SHAPE))
    assert q.dtype == torch.uint8 and q.shape == (3, 4, 8, 8)
    assert int(np.prod(model.bottleneck_shape)) < int(np.prod(SHAPE)) // 10


def test_distillation_learns_the_teachers_features_and_outputs(
    teacher: torch.nn.Module, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    student = SplitModel(teacher, SplitSpec(at="stage2", channels=8), input_shape=SHAPE)
    xb = torch.from_numpy(x[:64]).float() / 255

    def feature_error() -> float:
        student.eval()
        with torch.no_grad():
            return float(
                torch.nn.functional.mse_loss(
                    student.features(xb), teacher_features(teacher, "stage2", xb)
                )
            )

    before = feature_error()
    losses: dict[str, list[float]] = {"head": [], "kd": []}
    distill(teacher, student, x, y, plan=DistillPlan(head_epochs=5, kd_epochs=1, batch_size=50),
            progress=lambda stage, _, loss: losses[stage].append(loss))  # fmt: skip
    assert feature_error() < 0.8 * before
    assert not student.training
    assert len(losses["head"]) == 20 and len(losses["kd"]) == 4
    # The teacher is left as it was, and the student agrees with it far above chance.
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        agree = (student(xb).argmax(1) == teacher(xb).argmax(1)).float().mean()
    assert float(agree) > 0.5
    assert 0.0 <= accuracy(student, x, y) <= 1.0


def test_onnx_head_gives_the_same_bytes_as_pytorch(
    teacher: torch.nn.Module, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    model = SplitModel(teacher, SplitSpec(at="stage1", channels=4), input_shape=SHAPE).eval()
    head, tail = export_split(model, tmp_path)
    x = np.random.default_rng(0).random((16, *SHAPE), dtype=np.float32)
    want = model.encode(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(head)).run([BOTTLENECK], {HEAD_IN: x})[0]
    assert got.dtype == np.uint8 and got.shape == want.shape
    off = np.abs(got.astype(int) - want.astype(int))
    assert off.max() <= 1 and (off > 0).mean() <= 0.001
    logits = ort.InferenceSession(str(tail)).run([TAIL_OUT], {BOTTLENECK: want})[0]
    np.testing.assert_allclose(
        logits, model.decode(torch.from_numpy(want)).detach().numpy(), atol=1e-4
    )
    props = {p.key: p.value for p in onnx.load(str(head)).metadata_props}
    assert props["edgewire.split.at"] == "stage1"
    assert json.loads(props["edgewire.split.bottleneck_shape"]) == [4, 8, 8]
    assert json.loads(props["edgewire.split.quant"])["dtype"] == "uint8"
