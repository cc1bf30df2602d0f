"""``split build``: a checkpoint in; head.onnx, tail.onnx, full.onnx and split.json out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import CheckpointError, ConfigError, DataError
from edgewire.split import codec
from edgewire.split.build import (
    BuildOptions,
    BuildResult,
    plan_build,
    resolve_checkpoint,
    run_build,
)
from edgewire.split.distill import DistillPlan
from edgewire.split.export import BOTTLENECK, HEAD_IN, TAIL_OUT

FAST = DistillPlan(head_epochs=1, kd_epochs=1, batch_size=60)


def save_teacher(path: Path, *, meta: dict[str, object]) -> Path:
    """A resnet_small trained briefly on 200 mnistm32 images, saved as a checkpoint."""
    from edgewire.data.datasets import load_dataset
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.trainer import Trainer, TrainSpec

    data = load_dataset("mnistm32", limit=200)
    trainer = Trainer(TrainSpec(model="resnet_small", in_channels=3, height=32, width=32,
                                num_classes=10, lr=3e-3, device="cpu"))  # fmt: skip
    for _ in range(2):
        for i in range(0, len(data), 50):
            trainer.train_step(data.x[i : i + 50], data.y[i : i + 50])
    save_checkpoint(trainer, path, meta=meta)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(
        tmp_path_factory.mktemp("teacher") / "teacher.safetensors", meta={"data": "mnistm32"}
    )


@pytest.fixture(scope="module")
def built(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("build") / "split"
    job = plan_build(checkpoint, out, BuildOptions(at="stage2", channels=4, limit=200, plan=FAST))
    assert job.steps == {"head": 3, "kd": 3}
    seen: list[tuple[str, int]] = []
    result = run_build(job, progress=lambda stage, step, _: seen.append((stage, step)))
    assert seen == [("head", 1), ("head", 2), ("head", 3), ("kd", 1), ("kd", 2), ("kd", 3)]
    return result


def test_the_build_writes_the_three_models_and_the_summary(built: BuildResult) -> None:
    out = built.head.parent
    assert sorted(p.name for p in out.iterdir()) == [
        "full.onnx", "head.onnx", "split.json", "tail.onnx",
    ]  # fmt: skip
    summary = json.loads((out / "split.json").read_text())
    assert summary == built.summary
    assert summary["at"] == "stage2" and summary["channels"] == 4
    assert summary["input_shape"] == [3, 32, 32]
    assert summary["bottleneck_shape"] == [4, 8, 8]
    assert summary["classes"] == [str(d) for d in range(10)]
    assert summary["train_samples"] == 180 and summary["val_samples"] == 20
    assert 0.0 <= summary["teacher_acc"] <= 1.0 and 0.0 <= summary["student_acc"] <= 1.0
    sizes = summary["bytes_per_sample"]
    assert sizes["input"] == 3 * 32 * 32 and sizes["raw"] == 4 * 8 * 8
    assert 0 < sizes["rans"] < sizes["raw"] and sizes["zstd"] > 0


def test_head_bytes_match_pytorch_and_the_tail_and_full_model_run(built: BuildResult) -> None:
    import onnxruntime as ort
    import torch

    from edgewire.data.datasets import load_dataset

    x = load_dataset("mnistm32", limit=64).x.astype(np.float32) / 255
    want = built.student.encode(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(built.head)).run([BOTTLENECK], {HEAD_IN: x})[0]
    assert got.dtype == np.uint8 and got.shape == (64, 4, 8, 8)
    # Round and Clip before the Cast: the same bytes, bar a rare float tie at .5.
    off = np.abs(got.astype(int) - want.astype(int))
    assert off.max() <= 1 and (off > 0).mean() <= 0.001
    logits = ort.InferenceSession(str(built.tail)).run([TAIL_OUT], {BOTTLENECK: want})[0]
    with torch.no_grad():
        expected = built.student.decode(torch.from_numpy(want)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    full = ort.InferenceSession(str(built.full)).run(None, {"input_0": x})[0]
    assert full.shape == (64, 10)


def test_both_files_carry_the_prior_and_the_split_metadata(built: BuildResult) -> None:
    import onnx

    for path in (built.head, built.tail):
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props[codec.PRIOR_KEY] == built.prior.to_json()
        assert props["edgewire.split.at"] == "stage2"
        assert json.loads(props["edgewire.split.bottleneck_shape"]) == [4, 8, 8]
        quant = json.loads(props["edgewire.split.quant"])
        assert quant["dtype"] == "uint8" and quant["levels"] == 16 and quant["scale"] == 1 / 15
    # The prior read back from the file codes and decodes the codes.
    prior = codec.Prior.from_json(props[codec.PRIOR_KEY])
    q = np.random.default_rng(0).integers(0, prior.levels, (2, 4, 8, 8), dtype=np.uint8)
    data = codec.encode(q, "rans", prior)
    np.testing.assert_array_equal(codec.decode(data, q.shape, "rans", prior), q)


def test_a_run_folder_stands_for_its_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoint.safetensors")
    assert resolve_checkpoint(run) == run / "checkpoint.safetensors"
    assert resolve_checkpoint(checkpoint) == checkpoint
    with pytest.raises(CheckpointError, match=r"folder without checkpoint\.safetensors"):
        resolve_checkpoint(tmp_path / "runs")
    with pytest.raises(CheckpointError, match="no checkpoint file or run folder at"):
        resolve_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        plan_build(tmp_path / "junk.safetensors", tmp_path / "o", BuildOptions(at="stage2"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (BuildOptions(at="stage9"), ConfigError, r"cannot split at 'stage9'; candidates: stem, "),
        (BuildOptions(at="classifier"), ConfigError, r"candidates: stem, stage1, stage2"),
        (BuildOptions(at="stage2", quant="int4"), ConfigError, r"unknown --quant 'int4'"),
        (BuildOptions(at="stage2", channels=0), ConfigError, r"bottleneck channels must be"),
        (
            BuildOptions(at="stage2", data="mnistm64", limit=20),
            DataError,
            r"'mnistm64' is 3×64×64 with 10 classes; the teacher takes 3×32×32",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    checkpoint: Path, tmp_path: Path, options: BuildOptions, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        plan_build(checkpoint, tmp_path / "out", options)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_its_data_name_asks_for_data(tmp_path: Path) -> None:
    bare = save_teacher(tmp_path / "bare.safetensors", meta={})
    with pytest.raises(ConfigError, match="does not say what it was trained on; give --data"):
        plan_build(bare, tmp_path / "out", BuildOptions(at="stage2"))
    job = plan_build(bare, tmp_path / "out", BuildOptions(at="stem", data="mnistm32", limit=100))
    assert job.data == "mnistm32" and len(job.val) == 10
    assert not (tmp_path / "out").exists()


def test_out_must_be_a_folder(checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        plan_build(checkpoint, tmp_path / "file", BuildOptions(at="stage2"))
