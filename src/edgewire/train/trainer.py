"""One model, one optimizer, one device: train steps, evaluation, prediction, ONNX export.

Batches arrive as numpy arrays (often straight off the wire), so every entry
point validates shape, dtype, label range and finiteness before touching the
model: a bad batch raises ``DataError`` and changes nothing.

Each trainer owns its random state (seeded from ``TrainSpec.seed``) and swaps it
in around a step, so dropout draws do not depend on whatever else the process
does with torch's global generator, and a checkpoint can restore them exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgewire import fsutil
from edgewire.errors import ConfigError, DataError, ModelError, TrainError
from edgewire.train.choices import MODEL_NAMES, OPTIMIZERS
from edgewire.train.models import build_model, model_bytes

#: Samples per forward pass in ``evaluate``/``predict``, to bound peak memory.
EVAL_CHUNK = 512

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
_SEED_MAX = 2**63 - 1


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    # bool is an int subclass; a JSON `true` must not pass as 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"train spec {name!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"train spec {name!r} must be in {lo}..{hi}, got {value!r}")
    return value


def _check_float(name: str, value: object, *, lo: float, hi: float, lo_open: bool) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"train spec {name!r} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"train spec {name!r} is out of range, got {value!r}") from None
    low_ok = number > lo if lo_open else number >= lo
    if not (math.isfinite(number) and low_ok and number <= hi):
        bound = "(" if lo_open else "["
        raise ConfigError(f"train spec {name!r} must be in {bound}{lo}, {hi}], got {value!r}")
    return number


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"train spec {name!r} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """What to train: model, input shape, classes, optimizer, seed and device.

    Every field is validated on construction; ``from_dict`` also refuses unknown
    and missing keys, since these dicts arrive from the network.
    """

    model: str = "mnist_cnn"
    in_channels: int
    height: int
    width: int
    num_classes: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("model", self.model, MODEL_NAMES)
        _check_int("in_channels", self.in_channels, 1, 16)
        _check_int("height", self.height, 4, 1024)
        _check_int("width", self.width, 4, 1024)
        _check_int("num_classes", self.num_classes, 2, 10_000)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_int("seed", self.seed, 0, _SEED_MAX)
        # Frozen: store the float form so that an int lr from JSON compares equal.
        floats = {
            "lr": _check_float("lr", self.lr, lo=0.0, hi=1e3, lo_open=True),
            "momentum": _check_float("momentum", self.momentum, lo=0.0, hi=1.0, lo_open=False),
            "weight_decay": _check_float(
                "weight_decay", self.weight_decay, lo=0.0, hi=1e3, lo_open=False
            ),
        }
        for name, number in floats.items():
            object.__setattr__(self, name, number)
        if not isinstance(self.device, str) or not _DEVICE_RE.fullmatch(self.device):
            raise ConfigError(
                f"train spec 'device' must be auto, cpu, cuda or cuda:N; got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that ``from_dict`` turns back into an equal spec."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainSpec:
        """Build a spec from untrusted input; raises ConfigError on any bad key or value."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"train spec must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [key for key in d if key not in fields]
        if unknown:
            raise ConfigError(
                f"unknown train spec key(s) {', '.join(repr(k) for k in unknown)}; "
                f"known keys: {', '.join(fields)}"
            )
        missing = [
            name for name, f in fields.items() if name not in d and f.default is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"train spec is missing key(s): {', '.join(missing)}")
        return cls(**d)


def check_model_size(spec: TrainSpec, max_bytes: int) -> int:
    """The bytes of the model ``spec`` builds, counted without building it; a
    TrainError naming the cap (``max_train_model_bytes``) if it is over."""
    size = model_bytes(
        spec.model,
        in_channels=spec.in_channels,
        height=spec.height,
        width=spec.width,
        num_classes=spec.num_classes,
    )
    if size > max_bytes:
        raise TrainError(
            f"model {spec.model!r} for {spec.in_channels}×{spec.height}×{spec.width} inputs "
            f"and {spec.num_classes} classes takes {size / 2**20:.1f} MiB, over the agent's "
            f"cap of {max_bytes / 2**20:.1f} MiB (max_train_model_bytes); use a smaller "
            "model or input size"
        )
    return size


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one training step did: mean loss, correct predictions, time and memory."""

    loss: float
    correct: int
    count: int
    step_ms: float
    memory_bytes: int


@dataclass(slots=True)
class EvalResult:
    """Summed loss and correct count over evaluated samples; add results to merge them."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, other: EvalResult) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.count += other.count

    @property
    def loss(self) -> float:
        """Mean loss per sample (0.0 when nothing was evaluated)."""
        return self.loss_sum / self.count if self.count else 0.0

    @property
    def accuracy(self) -> float:
        """Fraction correct, 0..1 (0.0 when nothing was evaluated)."""
        return self.correct / self.count if self.count else 0.0


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
        device = torch.device("cuda", index)
    return device


def _process_rss() -> int:
    """Resident memory of this process in bytes, or 0 where /proc is unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Trainer:
    """Trains one model described by a ``TrainSpec`` on numpy batches."""

    def __init__(self, spec: TrainSpec) -> None:
        self._spec = spec
        self._device = _resolve_device(spec.device)
        self._steps = 0
        self._rng: dict[str, torch.Tensor] = {}
        with self._fork_rng():
            torch.manual_seed(spec.seed)
            # Built on the CPU so that the initial weights do not depend on the device.
            model = build_model(
                spec.model,
                in_channels=spec.in_channels,
                height=spec.height,
                width=spec.width,
                num_classes=spec.num_classes,
            )
            self._capture_rng()
        self._model = model.to(self._device)
        self._model.train()
        self._optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        spec = self._spec
        params = self._model.parameters()
        if spec.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
            )
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)

    @property
    def spec(self) -> TrainSpec:
        return self._spec

    @property
    def device(self) -> str:
        """The torch device in use, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(self._device)

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self._optimizer

    @property
    def steps(self) -> int:
        """Number of training steps applied so far."""
        return self._steps

    # -- random state --------------------------------------------------------------

    def _cuda_devices(self) -> list[int]:
        return [self._device.index or 0] if self._device.type == "cuda" else []

    @contextlib.contextmanager
    def _fork_rng(self) -> Iterator[None]:
        # Leaves the process-wide generators as they were once the block ends.
        with torch.random.fork_rng(devices=self._cuda_devices()):
            yield

    def _capture_rng(self) -> None:
        self._rng["cpu"] = torch.get_rng_state()
        if self._device.type == "cuda":
            self._rng["cuda"] = torch.cuda.get_rng_state(self._device)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        with self._fork_rng():
            torch.set_rng_state(self._rng["cpu"])
            if "cuda" in self._rng:
                torch.cuda.set_rng_state(self._rng["cuda"], self._device)
            yield
            self._capture_rng()

    def rng_state(self) -> dict[str, torch.Tensor]:
        """This trainer's generator states (``"cpu"``, and ``"cuda"`` on a GPU)."""
        return {name: state.clone() for name, state in self._rng.items()}

    def restore(self, *, steps: int, rng: Mapping[str, torch.Tensor]) -> None:
        """Set the step counter and generator states, as saved by a checkpoint.

        A state for a device this trainer does not use (a GPU checkpoint resumed
        on a CPU) is ignored. Raises ValueError for a state torch refuses.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        new = dict(self._rng)
        if "cpu" in rng:
            new["cpu"] = rng["cpu"].to(torch.uint8).clone()
        if "cuda" in rng and self._device.type == "cuda":
            new["cuda"] = rng["cuda"].to(torch.uint8).clone()
        # Try the states before keeping them, so that a bad one changes nothing.
        with self._fork_rng():
            try:
                torch.set_rng_state(new["cpu"])
                if "cuda" in new:
                    torch.cuda.set_rng_state(new["cuda"], self._device)
            except RuntimeError as exc:
                raise ValueError(f"invalid random generator state: {exc}") from exc
        self._rng = new
        self._steps = steps

    # -- input validation ----------------------------------------------------------

    def _check_x(self, x: object) -> np.ndarray:
        spec = self._spec
        expected = (spec.in_channels, spec.height, spec.width)
        if not isinstance(x, np.ndarray):
            raise DataError(f"images must be a numpy array, got {type(x).__name__}")
        if x.dtype != np.uint8 and x.dtype != np.float32:
            raise DataError(f"images must be uint8 (0..255) or float32 (0..1), got {x.dtype}")
        if x.ndim != 4 or tuple(x.shape[1:]) != expected or x.shape[0] < 1:
            raise DataError(
                f"images must have shape N×{expected[0]}×{expected[1]}×{expected[2]} "
                f"with N ≥ 1, got {x.shape}"
            )
        if x.dtype == np.float32 and not np.isfinite(x).all():
            raise DataError("images contain NaN or Inf values")
        return x

    def _check_y(self, y: object, n: int) -> np.ndarray:
        if not isinstance(y, np.ndarray):
            raise DataError(f"labels must be a numpy array, got {type(y).__name__}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"labels must be integers, got {y.dtype}")
        if y.shape != (n,):
            raise DataError(f"labels must have shape ({n},) to match the images, got {y.shape}")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= self._spec.num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"label {bad!r} is outside 0..{self._spec.num_classes - 1} "
                f"({self._spec.num_classes} classes)"
            )
        return y

    def _to_tensor(self, x: np.ndarray) -> torch.Tensor:
        # torch warns on read-only arrays (np.frombuffer over wire bytes): copy those.
        if not x.flags.writeable or not x.flags.c_contiguous:
            x = np.array(x, order="C")
        tensor = torch.from_numpy(x).to(self._device, non_blocking=False)
        if tensor.dtype == torch.uint8:
            # Scale on the device: a uint8 batch is 4× cheaper to move than float32.
            return tensor.to(torch.float32).div_(255.0)
        return tensor

    def _labels(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64)).to(self._device)

    # -- training and inference ----------------------------------------------------

    def train_step(self, x: np.ndarray, y: np.ndarray) -> StepResult:
        """One optimizer step on a batch; raises DataError on bad input and TrainError on a
        NaN or infinite loss, changing nothing in either case."""
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        start = time.perf_counter()
        inputs, labels = self._to_tensor(x), self._labels(y)
        with self._own_rng():
            self._model.train()
            self._optimizer.zero_grad(set_to_none=True)
            logits = self._model(inputs)
            loss = F.cross_entropy(logits, labels)
            loss_value = float(loss.item())  # .item() also waits for the GPU to finish
            if not math.isfinite(loss_value):
                # Stepping on it would turn every weight into NaN for good.
                raise TrainError(
                    f"the loss is {loss_value} on this batch (no step taken): "
                    "check the data's scale, or lower the learning rate"
                )
            torch.autograd.backward(loss)
            self._optimizer.step()
        self._steps += 1
        with torch.no_grad():
            correct = int((logits.argmax(dim=1) == labels).sum().item())
        step_ms = (time.perf_counter() - start) * 1000.0
        return StepResult(
            loss=loss_value,
            correct=correct,
            count=int(x.shape[0]),
            step_ms=step_ms,
            memory_bytes=self._memory_bytes(),
        )

    def _memory_bytes(self) -> int:
        if self._device.type == "cuda":
            return int(torch.cuda.memory_allocated(self._device))
        return _process_rss()

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self._model.training
        self._model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self._model.train(was_training)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> EvalResult:
        """Summed loss and accuracy over a labelled set, without training."""
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        result = EvalResult()
        with self._eval_mode():
            for lo in range(0, x.shape[0], EVAL_CHUNK):
                inputs = self._to_tensor(x[lo : lo + EVAL_CHUNK])
                labels = self._labels(y[lo : lo + EVAL_CHUNK])
                logits = self._model(inputs)
                loss_sum = F.cross_entropy(logits, labels, reduction="sum")
                result.add(
                    EvalResult(
                        loss_sum=float(loss_sum.item()),
                        correct=int((logits.argmax(dim=1) == labels).sum().item()),
                        count=int(labels.shape[0]),
                    )
                )
        return result

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, N×classes) for a batch of images."""
        x = self._check_x(x)
        parts: list[np.ndarray] = []
        with self._eval_mode():
            for lo in range(0, x.shape[0], EVAL_CHUNK):
                logits = self._model(self._to_tensor(x[lo : lo + EVAL_CHUNK]))
                parts.append(logits.float().cpu().numpy())
        return np.concatenate(parts, axis=0)

    # -- export --------------------------------------------------------------------

    def export_onnx(
        self, path: Path, *, input_name: str = "input_0", output_name: str = "output_0"
    ) -> Path:
        """Write the model as ONNX (opset 17, float32 N×C×H×W in 0..1, dynamic batch).

        The file is checked before it replaces ``path``, so a failed export
        leaves any previous model file intact.
        """
        import onnx

        spec = self._spec
        path = Path(path)
        dummy = torch.zeros(1, spec.in_channels, spec.height, spec.width, device=self._device)

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                # The TorchScript exporter is deprecated but fast and needs no extra
                # packages; it says so with a DeprecationWarning on every call.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    self._model,
                    (dummy,),
                    str(tmp),
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            onnx.checker.check_model(str(tmp))

        was_training = self._model.training
        self._model.eval()
        try:
            fsutil.atomic_write(path, write, what="export the ONNX model")
        except onnx.checker.ValidationError as exc:
            raise ModelError(f"the exported ONNX model is invalid: {exc}") from exc
        finally:
            self._model.train(was_training)
        return path
