"""``train_folder``: training on a split folder of real MNIST digits saved as PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from edgewire.data.datasets import load_dataset
from edgewire.errors import ConfigError, TrainError
from edgewire.train.augment import Augment
from edgewire.train.checkpoint import load_checkpoint
from edgewire.train.folder import FolderOptions, train_folder
from edgewire.train.memory import fit_batch_size, is_out_of_memory, oom_as_one_line
from edgewire.train.report import classification_report, confusion_text
from edgewire.train.trainer import Trainer, TrainSpec
from tests.helpers import write_split

SMALL = {"model": "mnist_cnn", "image_size": 32, "flip": False}


@pytest.fixture(scope="module")
def split3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split3")
    return write_split(root, ["0", "1", "7"], {"train": 40, "val": 12, "test": 12})


@pytest.fixture(scope="module")
def split2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split2")
    return write_split(root, ["0", "1"], {"train": 24, "val": 8, "test": 8})


def collect() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    events: list[tuple[str, dict[str, Any]]] = []

    def on_event(kind: str, data: dict[str, Any]) -> None:
        json.dumps(data, allow_nan=False)  # forwarded over SSE: must be plain JSON
        events.append((kind, data))

    return events, on_event


def test_trains_and_writes_every_file(split3: Path, tmp_path: Path) -> None:
    events, on_event = collect()
    out = tmp_path / "run"
    options = FolderOptions(**SMALL, epochs=2, batch_size=16, patience=None)
    summary = train_folder(split3, out, options, on_event=on_event)
    json.dumps(summary, allow_nan=False)

    kinds = [kind for kind, _ in events]
    assert kinds.count("feedback") == 2 * math.ceil(120 / 16)
    assert kinds.count("epoch") == 2 and kinds.count("report") == 1
    assert dict(events)["batch_size"]["batch_size"] == 16 == summary["batch_size"]
    assert summary["samples_seen"] == 240 and not summary["stopped_early"]

    best, meta = load_checkpoint(out / "checkpoint.safetensors", device="cpu")
    vals = [h["val"]["accuracy"] for h in summary["history"]]
    assert meta["best_epoch"] == summary["best_epoch"] == int(np.argmax(vals))
    assert meta["dataset"] == str(split3.resolve()) and meta["splits"] is True
    assert meta["classes"] == ["0", "1", "7"] and meta["image_size"] == 32
    assert (meta["seed"], meta["model"], meta["epochs"]) == (0, "mnist_cnn", 2)
    _, last_meta = load_checkpoint(out / "last.safetensors", device="cpu")
    assert last_meta["last_epoch"] == 1

    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == summary["history"]

    # The report is the best checkpoint's, on the test split: check it independently.
    report = json.loads((out / "report.json").read_text())
    assert report == summary["report"]
    test = load_dataset(str(split3), image_size=32, split="test")
    assert report["accuracy"] == pytest.approx(best.evaluate(test.x, test.y).accuracy)
    matrix = np.array(report["confusion"])
    assert matrix.sum() == report["samples"] == 36
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / 36)
    for i, row in enumerate(report["per_class"]):
        assert row["support"] == matrix[i].sum() == 12
        assert row["recall"] == pytest.approx(matrix[i, i] / matrix[i].sum())
        col = matrix[:, i].sum()
        assert row["precision"] == pytest.approx(matrix[i, i] / col if col else 0.0)
    assert (out / "confusion.txt").read_text() == confusion_text(report)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "confusion.png") as png:
        assert png.size[0] > 100

    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input_0": test.x[:8].astype(np.float32) / 255.0})[0]
    np.testing.assert_allclose(logits, best.predict(test.x[:8]), rtol=1e-4, atol=1e-4)
    assert set(summary["files"]) == {
        "checkpoint", "last", "onnx", "history", "report", "confusion_txt", "confusion_png"
    }  # fmt: skip
    assert all(Path(p).is_file() for p in summary["files"].values())


def test_early_stopping_keeps_the_best_epoch(split3: Path, tmp_path: Path) -> None:
    events, on_event = collect()
    # So small a step that val accuracy cannot change: epoch 0 stays the best.
    options = FolderOptions(**SMALL, epochs=6, batch_size=32, lr=1e-12, patience=2)
    summary = train_folder(split3, tmp_path / "run", options, on_event=on_event)
    assert summary["stopped_early"] and summary["best_epoch"] == 0
    assert len(summary["history"]) == 3
    assert dict(events)["early_stop"] == {
        "epoch": 2, "best_epoch": 0, "patience": 2,
        "best_val_accuracy": summary["history"][0]["val"]["accuracy"],
    }  # fmt: skip
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["best_epoch"] == 0


def test_should_stop_ends_the_run_between_batches(split3: Path, tmp_path: Path) -> None:
    events, on_event = collect()
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    options = FolderOptions(**SMALL, epochs=5, batch_size=16)
    summary = train_folder(
        split3, tmp_path / "run", options, on_event=on_event, should_stop=should_stop
    )
    assert summary["stopped"] and summary["samples_seen"] == 48
    assert len(summary["history"]) == 1
    assert [k for k, _ in events].count("feedback") == 3
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "run" / "report.json").is_file()


def test_fine_tuning_starts_from_the_checkpoints_weights(split3: Path, tmp_path: Path) -> None:
    base = FolderOptions(**SMALL, epochs=2, batch_size=16, patience=None)
    train_folder(split3, tmp_path / "a", base)
    start, _ = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors", device="cpu")

    tuned_events, on_tuned = collect()
    scratch_events, on_scratch = collect()
    one = FolderOptions(**SMALL, epochs=1, batch_size=16, seed=1)
    init = tmp_path / "a" / "checkpoint.safetensors"
    train_folder(split3, tmp_path / "b", one, init=init, on_event=on_tuned)
    train_folder(split3, tmp_path / "c", one, on_event=on_scratch)
    first = {name: next(d for k, d in ev if k == "feedback")["loss"]
             for name, ev in (("tuned", tuned_events), ("scratch", scratch_events))}  # fmt: skip
    assert first["tuned"] < first["scratch"]
    assert dict(tuned_events)["init"]["new_head"] is False

    # With a step too small to move anything, the tuned weights are the checkpoint's.
    still = FolderOptions(**SMALL, epochs=1, batch_size=16, lr=1e-12)
    train_folder(split3, tmp_path / "d", still, init=init)
    after, _ = load_checkpoint(tmp_path / "d" / "checkpoint.safetensors", device="cpu")
    for name, tensor in start.model.state_dict().items():
        torch.testing.assert_close(after.model.state_dict()[name], tensor, rtol=0, atol=1e-6)


def test_another_class_count_gets_a_new_head(split2: Path, split3: Path, tmp_path: Path) -> None:
    train_folder(split2, tmp_path / "two", FolderOptions(**SMALL, epochs=1, batch_size=16))
    two, _ = load_checkpoint(tmp_path / "two" / "checkpoint.safetensors", device="cpu")
    events, on_event = collect()
    still = FolderOptions(**SMALL, epochs=1, batch_size=16, lr=1e-12)
    init = tmp_path / "two" / "checkpoint.safetensors"
    train_folder(split3, tmp_path / "three", still, init=init, on_event=on_event)
    info = dict(events)["init"]
    assert info["new_head"] is True and info["new"] == ["classifier.3.bias", "classifier.3.weight"]
    three, _ = load_checkpoint(tmp_path / "three" / "checkpoint.safetensors", device="cpu")
    new = three.model.state_dict()
    assert new["classifier.3.weight"].shape[0] == 3
    for name, tensor in two.model.state_dict().items():
        if name not in info["new"]:
            torch.testing.assert_close(new[name], tensor, rtol=0, atol=1e-6)


def test_init_of_another_model_is_refused(split2: Path, tmp_path: Path) -> None:
    train_folder(split2, tmp_path / "a", FolderOptions(**SMALL, epochs=1, batch_size=16))
    options = FolderOptions(model="lenet5", image_size=32, epochs=1)
    init = tmp_path / "a" / "checkpoint.safetensors"
    with pytest.raises(ConfigError, match=r"holds a 'mnist_cnn' model.*--model mnist_cnn"):
        train_folder(split2, tmp_path / "b", options, init=init)
    assert not (tmp_path / "b").exists()


def test_a_budget_too_small_is_one_line_and_writes_nothing(split2: Path, tmp_path: Path) -> None:
    options = FolderOptions(**SMALL, epochs=1, memory_budget_mb=1)
    with pytest.raises(TrainError, match=r"^out of memory: model 'mnist_cnn'.*--memory-budget$"):
        train_folder(split2, tmp_path / "run", options)
    assert not (tmp_path / "run").exists()


def test_the_fitted_batch_size_is_the_largest_power_of_two_in_budget() -> None:
    trainer = Trainer(TrainSpec(model="mnist_cnn", in_channels=1, height=32, width=32,
                                num_classes=3, device="cpu"))  # fmt: skip
    fit = fit_batch_size(trainer, asked=None, budget_bytes=40 << 20, n_train=1000)
    assert fit.batch_size & (fit.batch_size - 1) == 0 and fit.batch_size < 256
    assert fit.fixed_bytes + fit.batch_size * fit.per_sample_bytes <= 40 << 20
    assert fit.fixed_bytes + 2 * fit.batch_size * fit.per_sample_bytes > 40 << 20
    assert "40 MB memory budget" in fit.reason
    assert fit_batch_size(trainer, asked=24, budget_bytes=80 << 20, n_train=1000).batch_size == 24
    smaller = fit_batch_size(trainer, asked=4096, budget_bytes=40 << 20, n_train=1000)
    assert smaller.batch_size == fit.batch_size and "asked for 4096" in smaller.reason
    # Without a budget: at most 64, leaving 8 batches an epoch, but not below 8.
    assert fit_batch_size(trainer, asked=None, budget_bytes=None, n_train=20).batch_size == 8
    assert fit_batch_size(trainer, asked=None, budget_bytes=None, n_train=300).batch_size == 32
    assert fit_batch_size(trainer, asked=None, budget_bytes=None, n_train=10**5).batch_size == 64


def test_out_of_memory_becomes_one_line() -> None:
    with pytest.raises(TrainError) as caught, oom_as_one_line(64, "cpu"):
        torch.empty(1 << 50, dtype=torch.uint8)  # the CPU allocator's real refusal
    assert str(caught.value) == "out of memory at batch size 64 on cpu; try --batch-size 32"
    assert is_out_of_memory(caught.value.__cause__)  # type: ignore[arg-type]
    small = pytest.raises(TrainError, match=r"batch size 1 on cpu; use a smaller --size")
    with small, oom_as_one_line(1, "cpu"):
        np.empty(1 << 60, dtype=np.uint8)  # numpy's MemoryError
    with pytest.raises(RuntimeError, match="not memory"), oom_as_one_line(8, "cpu"):
        raise RuntimeError("not memory")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"epochs": 0}, r"'epochs' must be an integer in 1\.\.100000, got 0"),
        ({"epochs": True}, r"'epochs' must be an integer"),
        ({"lr": "fast"}, r"'lr' must be a number, got 'fast'"),
        ({"model": "vgg"}, r"'model' must be one of mnist_cnn"),
        ({"patience": 0}, r"'patience' must be an integer in 1\.\.100000 or null"),
        ({"augment": 1}, r"'augment' must be true or false"),
        ({"batch_size": 2.5}, r"'batch_size' must be an integer"),
        ({"device": "tpu"}, r"'device' must be auto, cpu, cuda or cuda:N; got 'tpu'"),
        ({"steps": 3}, r"unknown train option\(s\) 'steps'"),
    ],
)
def test_folder_options_from_dict_refuses(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FolderOptions.from_dict({**FolderOptions().to_dict(), **bad})


def test_folder_options_round_trip() -> None:
    options = FolderOptions(model="lenet5", batch_size=None, lr=1, patience=None)
    again = FolderOptions.from_dict(json.loads(json.dumps(options.to_dict())))
    assert again == options and isinstance(again.lr, float)
    with pytest.raises(ConfigError, match="must be a mapping"):
        FolderOptions.from_dict([("model", "lenet5")])  # type: ignore[arg-type]


def test_augment_is_seeded_and_identity_when_off() -> None:
    x = load_dataset("mnist5k").x[:16]
    augment = Augment(seed=3)
    a, b = augment(x, 0, 0), augment(x, 0, 0)
    assert a.dtype == np.float32 and a.shape == x.shape and 0.0 <= a.min() <= a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(x, 0, 1)) and not np.array_equal(a, augment(x, 1, 0))
    off = Augment(min_area=1.0, shift=0.0, flip=False, brightness=0.0, contrast=0.0, noise=0.0)
    np.testing.assert_allclose(off(x, 0, 0), x.astype(np.float32) / 255.0, atol=1e-5)


def test_classification_report_of_a_known_case() -> None:
    report = classification_report(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]),
                                   ["cat", "dog", "eel"])  # fmt: skip
    assert report["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    cat, dog, eel = report["per_class"]
    assert (cat["precision"], cat["recall"], cat["support"]) == (0.5, 0.5, 2)
    assert (dog["precision"], dog["recall"]) == (0.5, 1.0)
    assert (eel["precision"], eel["recall"], eel["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert confusion_text(report) == (
        "true \\ pred  cat  dog  eel\n"
        "cat            1    1    0\n"
        "dog            0    1    0\n"
        "eel            1    0    2\n"
    )


def test_print_report_renders_the_tables() -> None:
    import io

    from rich.console import Console

    from edgewire.cli.train_report import print_report

    report = classification_report(np.array([0, 0, 1]), np.array([0, 1, 1]), ["cat", "dog"])
    buffer = io.StringIO()
    print_report({**report, "best_epoch": 2}, Console(file=buffer, width=60))
    assert buffer.getvalue() == (
        "test split: 3 images, accuracy 66.7% (best epoch 3)\n"
        "┏━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━┓\n"
        "┃ class ┃ precision ┃ recall ┃ support ┃\n"
        "┡━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━┩\n"
        "│ cat   │    100.0% │  50.0% │       2 │\n"
        "│ dog   │     50.0% │ 100.0% │       1 │\n"
        "└───────┴───────────┴────────┴─────────┘\n"
        "confusion matrix (rows: true class, columns: predicted)\n"
        "true \\ pred  cat  dog\n"
        "cat            1    1\n"
        "dog            0    1\n"
    )
