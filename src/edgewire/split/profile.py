"""Measuring each split point: the head's time, the bytes that cross, the tail's time.

Every candidate cut of a teacher (:func:`edgewire.split.model.split_points`) is
exported as a head and a tail ONNX model (an untrained encoder and decoder
time the same as trained ones) and run with ONNX Runtime on this machine at
batch 1, on ``threads`` intra-op threads: the median of ``repeats`` runs after
a warm-up. The bytes are those of the native frames a request and its answer
take: SPLIT_TAIL_REQUEST with the raw uint8 codes, SPLIT_TAIL_RESPONSE with the
float32 logits (its meta's times vary by a few bytes; ``queue_ms`` is taken as 0
and ``compute_ms`` as the measured tail time).

Two pseudo-candidates go with the cuts: ``local``, the whole teacher on the
device with nothing crossing, and ``offload``, the raw uint8 image sent in a
SPLIT_TAIL_REQUEST (coder ``raw``) and the whole teacher run on the server.

A :class:`Profile` is plain data saved as JSON; ``edgewire split suggest`` reads
it without torch. torch and onnx are imported inside :func:`profile` only.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from edgewire.errors import ConfigError
from edgewire.wire.frames import MsgType, encode_frame
from edgewire.wire.messages import encode_message

if TYPE_CHECKING:
    from torch import nn

FORMAT = 1
KINDS = ("split", "local", "offload")
LOCAL, OFFLOAD = "local", "offload"
#: Model names the byte counts assume the server serves the tail and the teacher as.
TAIL_NAME, FULL_NAME = "split-tail", "split-full"
WARMUP = 3


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One way to run the model: a cut (``kind`` "split"), ``local`` or ``offload``."""

    name: str
    kind: str
    head_ms: float  # compute on the device
    tail_ms: float  # compute on the server
    request_bytes: int  # device -> server, whole frames
    response_bytes: int  # server -> device, whole frames
    bottleneck_shape: tuple[int, ...] | None = None  # C×H×W of the codes (cuts only)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"candidate {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )
        for field in ("head_ms", "tail_ms"):
            value = getattr(self, field)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0):
                raise ConfigError(f"candidate {self.name!r}: {field} must be >= 0, got {value!r}")
        for field in ("request_bytes", "response_bytes"):
            value = getattr(self, field)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ConfigError(f"candidate {self.name!r}: {field} must be >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Profile:
    """The measurements of every candidate of one teacher on one machine."""

    model: str
    input_shape: tuple[int, int, int]
    classes: int
    channels: int
    threads: int
    repeats: int
    candidates: tuple[Candidate, ...]

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.candidates)
        raise ConfigError(f"no candidate {name!r} in the profile; it has: {names}")

    def to_json(self) -> str:
        body = {"format": FORMAT, **asdict(self)}
        return json.dumps(body, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = "profile") -> Profile:
        """Parse a saved profile; anything malformed is a one-line ConfigError."""
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where} is not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ConfigError(f"{where} is not an edgewire split profile (format {FORMAT})")
        try:
            candidates = tuple(
                Candidate(
                    **{
                        **c,
                        "bottleneck_shape": None
                        if c.get("bottleneck_shape") is None
                        else tuple(int(d) for d in c["bottleneck_shape"]),
                    }
                )
                for c in body["candidates"]
            )
            c, h, w = (int(d) for d in body["input_shape"])
            profile = cls(
                model=str(body["model"]),
                input_shape=(c, h, w),
                classes=int(body["classes"]),
                channels=int(body["channels"]),
                threads=int(body["threads"]),
                repeats=int(body["repeats"]),
                candidates=candidates,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where} is not a valid split profile: {exc!r}") from None
        if not candidates:
            raise ConfigError(f"{where} has no candidates")
        return profile

    def save(self, path: Path) -> Path:
        from edgewire.fsutil import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_json().encode(), what=f"write {Path(path).name}")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Profile:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"no profile at {str(path)!r}; make one with: edgewire split profile CHECKPOINT"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read profile {str(path)!r}: {exc}") from None
        return cls.from_json(text, where=repr(str(path)))


def tail_request_bytes(
    codes: bytes, shape: Sequence[int], *, coder: str = "raw", model: str = TAIL_NAME
) -> int:
    """Bytes of the SPLIT_TAIL_REQUEST frame carrying ``codes`` (of codes of ``shape``)."""
    meta = {"model": model, "coder": coder, "shape": [int(d) for d in shape]}
    tensor = np.frombuffer(codes, dtype=np.uint8)
    return len(encode_frame(MsgType.SPLIT_TAIL_REQUEST, encode_message(meta, [tensor])))


def response_bytes(msg_type: MsgType, model: str, classes: int, *, compute_ms: float) -> int:
    """Bytes of an answer (INFER_RESPONSE or SPLIT_TAIL_RESPONSE) of one row of logits."""
    meta = {
        "model": model, "version": 1, "outputs": ["output_0"], "queue_ms": 0.0,
        "compute_ms": round(compute_ms, 3), "batch_size": 1,
    }  # fmt: skip
    if msg_type is MsgType.SPLIT_TAIL_RESPONSE:
        meta["decode_ms"] = 0.01
    logits = np.zeros((1, classes), dtype=np.float32)
    return len(encode_frame(msg_type, encode_message(meta, [logits])))


def offload_request_bytes(input_shape: Sequence[int]) -> int:
    """Bytes of the SPLIT_TAIL_REQUEST frame carrying one raw uint8 image to the full model
    (how a device offloads: the server scales the pixels for a float model)."""
    shape = (1, *input_shape)
    return tail_request_bytes(bytes(math.prod(shape)), shape, model=FULL_NAME)


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _median_ms(session: Any, feeds: dict[str, NDArray[Any]], repeats: int) -> tuple[float, Any]:
    """(median ms of ``repeats`` runs after a warm-up, the first output)."""
    for _ in range(WARMUP):
        out = session.run(None, feeds)[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def _export_teacher(teacher: nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            teacher, (torch.zeros(1, *input_shape),), str(path), input_names=["input_0"],
            output_names=["output_0"], opset_version=17, dynamo=False,
        )  # fmt: skip


def check_points(
    teacher: nn.Module,
    input_shape: tuple[int, int, int],
    points: Sequence[str] | None,
    *,
    channels: int,
) -> list[str]:
    """The cuts to measure (default: every candidate); ConfigError for an unknown one."""
    from edgewire.split.model import SplitSpec, split_points

    known = split_points(teacher, input_shape)
    chosen = list(known if points is None else points)
    bad = [p for p in chosen if p not in known]
    if bad or not chosen:
        unknown = ", ".join(map(repr, bad)) or "nothing"
        raise ConfigError(f"cannot split at {unknown}; candidates: {', '.join(known)}")
    SplitSpec(at=chosen[0], channels=channels)  # checks the width
    return chosen


def profile(
    teacher: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    channels: int,
    points: Sequence[str] | None = None,
    repeats: int,
    threads: int = 1,
    model: str = "",
    progress: Callable[[str], None] | None = None,
) -> Profile:
    """Measure every cut in ``points`` (default: all), then ``local`` and ``offload``.

    ``progress`` is called with each candidate's name once it is measured.
    """
    import torch

    from edgewire.split import codec
    from edgewire.split.export import BOTTLENECK, HEAD_IN, export_split
    from edgewire.split.model import SplitModel, SplitSpec

    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats!r}")
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads!r}")
    chosen = check_points(teacher, input_shape, points, channels=channels)
    teacher.eval()
    x = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    with torch.no_grad():
        classes = int(teacher(torch.from_numpy(x)).shape[1])
    candidates: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="edgewire-profile-") as tmp:
        root = Path(tmp)
        for at in chosen:
            torch.manual_seed(0)
            split = SplitModel(
                teacher, SplitSpec(at=at, channels=channels), input_shape=input_shape
            )
            head, tail = export_split(split, root / at)
            head_ms, q = _median_ms(_session(head, threads), {HEAD_IN: x}, repeats)
            tail_ms, _ = _median_ms(_session(tail, threads), {BOTTLENECK: q}, repeats)
            codes = codec.encode(q, "raw", None)
            answer = response_bytes(
                MsgType.SPLIT_TAIL_RESPONSE, TAIL_NAME, classes, compute_ms=tail_ms
            )
            candidates.append(
                Candidate(
                    name=at,
                    kind="split",
                    head_ms=head_ms,
                    tail_ms=tail_ms,
                    request_bytes=tail_request_bytes(codes, q.shape),
                    response_bytes=answer,
                    bottleneck_shape=tuple(int(d) for d in q.shape[1:]),
                )
            )
            if progress is not None:
                progress(at)
        full = root / "full.onnx"
        _export_teacher(teacher, input_shape, full)
        full_ms, _ = _median_ms(_session(full, threads), {"input_0": x}, repeats)
    answer = response_bytes(MsgType.SPLIT_TAIL_RESPONSE, FULL_NAME, classes, compute_ms=full_ms)
    candidates += [
        Candidate(name=LOCAL, kind="local", head_ms=full_ms, tail_ms=0.0, request_bytes=0,
                  response_bytes=0),
        Candidate(name=OFFLOAD, kind="offload", head_ms=0.0, tail_ms=full_ms,
                  request_bytes=offload_request_bytes(input_shape), response_bytes=answer),
    ]  # fmt: skip
    if progress is not None:
        progress(LOCAL)
    return Profile(
        model=model or type(teacher).__name__, input_shape=input_shape, classes=classes,
        channels=channels, threads=threads, repeats=repeats, candidates=tuple(candidates),
    )  # fmt: skip
