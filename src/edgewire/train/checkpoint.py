"""Checkpoints as one safetensors file: weights, optimizer state and random state, no pickle.

Layout of the file:

- ``model.<name>``: every entry of the model's ``state_dict``;
- ``optim.<param index>.<key>``: every tensor of the optimizer state (Adam's
  ``step`` too, as a 0-d tensor);
- ``rng.cpu`` (and ``rng.cuda``): the trainer's generator states, so that dropout
  after a resume draws what an uninterrupted run would have drawn;
- metadata ``"edgewire"``: JSON ``{"format": 1, "spec", "param_groups", "steps", "meta"}``;
- metadata ``"edgewire_sha256"``: sha256 of the tensor bytes, so that a flipped bit
  on a worn SD card is caught at load time rather than trained on.

Files are written with ``fsutil.atomic_write``, so a crash or a full disk never
leaves a half-written checkpoint in place of the last good one. A full disk is
raised as DiskFull, any other failure to write as CheckpointError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors import SafetensorError
from safetensors.torch import save as safetensors_save

from edgewire import fsutil
from edgewire.errors import CheckpointError, ConfigError
from edgewire.train.trainer import Trainer, TrainSpec

FORMAT = 1
_META_KEY = "edgewire"
#: sha256 of the tensor bytes: safetensors itself checks layout, not content.
_SHA_KEY = "edgewire_sha256"
#: Largest safetensors JSON header read (the format's own reader allows 100 MB).
_HEADER_CAP = 16 * 1024 * 1024
#: The per-parameter state each optimizer keeps; anything else is a foreign checkpoint.
_STATE_KEYS: dict[str, frozenset[str]] = {
    "adam": frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    "sgd": frozenset({"momentum_buffer"}),
}
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def save_checkpoint(trainer: Trainer, path: Path, *, meta: Mapping[str, Any]) -> None:
    """Save the trainer to ``path`` atomically; DiskFull or CheckpointError if it cannot."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in trainer.model.state_dict().items():
        tensors[f"model.{name}"] = tensor.detach().cpu().contiguous()
    state = trainer.optimizer.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if value is None:  # e.g. SGD without momentum keeps no buffer
                continue
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = tensor.detach().cpu().contiguous()
    for device, rng in trainer.rng_state().items():
        tensors[f"rng.{device}"] = rng.cpu().contiguous()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    header = {
        "format": FORMAT,
        "spec": trainer.spec.to_dict(),
        "param_groups": groups,
        "steps": trainer.steps,
        "meta": dict(meta),
    }
    try:
        metadata = {_META_KEY: json.dumps(header, allow_nan=False)}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint meta must be plain JSON values: {exc}") from exc
    # The tensor bytes do not depend on the metadata, so a first pass gives the
    # checksum that the second pass stores in the header.
    metadata[_SHA_KEY] = _data_sha256(safetensors_save(tensors, metadata=metadata))
    blob = safetensors_save(tensors, metadata=metadata)

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(blob)

    with fsutil.disk_errors("write checkpoint", default=CheckpointError, where=str(path)):
        fsutil.atomic_write(path, write, what="write the checkpoint")


def load_checkpoint(path: Path, *, device: str | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Rebuild the trainer saved at ``path`` and return it with the saved ``meta``.

    ``device`` overrides the saved spec's device (resume a GPU run on a CPU).
    Any unreadable, foreign or mismatching file raises CheckpointError.
    """
    path = Path(path)
    header, tensors = _read(path)
    spec_dict = header.get("spec")
    if not isinstance(spec_dict, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no train spec")
    if device is not None:
        spec_dict = {**spec_dict, "device": device}
    try:
        trainer = Trainer(TrainSpec.from_dict(spec_dict))
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} has a bad train spec: {exc}") from exc
    _restore_model(trainer, tensors, path)
    _restore_optimizer(trainer, tensors, header.get("param_groups"), path)
    steps = header.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise CheckpointError(f"checkpoint {str(path)!r} has a bad step count {steps!r}")
    rng = {k.removeprefix("rng."): t for k, t in tensors.items() if k.startswith("rng.")}
    try:
        trainer.restore(steps=steps, rng=rng)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no meta object")
    return trainer, meta


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The parsed header and all tensors, after checking the data against its checksum."""
    where = str(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"no checkpoint at {where!r}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {where!r}: {exc.strerror or exc}") from exc
    not_valid = f"{where!r} is not a valid checkpoint (truncated, corrupt or another format)"
    metadata = _metadata(blob)
    if metadata is None:
        raise CheckpointError(not_valid)
    try:
        # Checks the layout: offsets, sizes, and that the data covers the file exactly.
        views = safetensors.deserialize(blob)  # type: ignore[no-untyped-call]
    except SafetensorError as exc:
        raise CheckpointError(f"{not_valid}: {exc}") from exc
    raw = metadata.get(_META_KEY)
    if not isinstance(raw, str):
        raise CheckpointError(f"{where!r} is a safetensors file but not an edgewire checkpoint")
    if metadata.get(_SHA_KEY) != _data_sha256(blob):
        raise CheckpointError(f"checkpoint {where!r} is corrupt: its data fails the checksum")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {where!r} has a corrupt header: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise CheckpointError(
            f"checkpoint {where!r} has format {found!r}; this version reads format {FORMAT}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, view in views:
        dtype = _DTYPES.get(view["dtype"])
        if dtype is None:
            raise CheckpointError(f"checkpoint {where!r}: {name!r} has dtype {view['dtype']!r}")
        data = view["data"]
        # A writable buffer: torch warns on read-only ones, and the optimizer updates
        # its state tensors in place.
        buffer = data if isinstance(data, bytearray) else bytearray(data)
        if len(buffer) == 0:
            tensors[name] = torch.empty(view["shape"], dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype).reshape(view["shape"])
    return header, tensors


def _metadata(blob: bytes) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors blob ({} if none), or None for a bad header."""
    if len(blob) < 8:
        return None
    size = int.from_bytes(blob[:8], "little")
    if size > min(len(blob) - 8, _HEADER_CAP):
        return None
    try:
        header = json.loads(blob[8 : 8 + size])
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.get("__metadata__", {})
    return metadata if isinstance(metadata, dict) else None


def _data_sha256(blob: bytes) -> str:
    """The sha256 of the tensor bytes that follow the safetensors header."""
    size = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(memoryview(blob)[8 + size :]).hexdigest()


def _restore_model(trainer: Trainer, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    saved = {k.removeprefix("model."): t for k, t in tensors.items() if k.startswith("model.")}
    current = trainer.model.state_dict()
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match model {trainer.spec.model!r}: "
            f"missing {missing[:5]!r}, unexpected {extra[:5]!r}"
        )
    for name, tensor in current.items():
        got = saved[name]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match model {trainer.spec.model!r}: "
                f"{name!r} is {got.dtype} {tuple(got.shape)}, "
                f"the model has {tensor.dtype} {tuple(tensor.shape)}"
            )
    trainer.model.load_state_dict(saved, strict=True)


def _restore_optimizer(
    trainer: Trainer, tensors: Mapping[str, torch.Tensor], groups: object, path: Path
) -> None:
    where = str(path)
    optimizer = trainer.optimizer
    current = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if not name.startswith("optim."):
            continue
        index_text, _, key = name.removeprefix("optim.").partition(".")
        if (
            not (index_text.isascii() and index_text.isdigit())
            or int(index_text) >= len(params)
            or not key
        ):
            raise CheckpointError(f"checkpoint {where!r} has a stray optimizer tensor {name!r}")
        index = int(index_text)
        if key not in _STATE_KEYS[trainer.spec.optimizer]:
            raise CheckpointError(
                f"checkpoint {where!r} has optimizer tensor {name!r}, "
                f"which a {trainer.spec.optimizer!r} optimizer does not keep"
            )
        # Per-parameter buffers must match their parameter; "step" is a counter.
        expected = torch.Size([]) if key == "step" else params[index].shape
        if tensor.numel() != expected.numel() or (key != "step" and tensor.shape != expected):
            raise CheckpointError(
                f"checkpoint {where!r}: optimizer tensor {name!r} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(expected)}"
            )
        state.setdefault(index, {})[key] = tensor.reshape(expected) if key == "step" else tensor
    if not isinstance(groups, list) or len(groups) != len(current["param_groups"]):
        raise CheckpointError(f"checkpoint {where!r} has bad optimizer parameter groups")
    merged = []
    for saved, group in zip(groups, current["param_groups"], strict=True):
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {where!r} has bad optimizer parameter groups")
        new = dict(group)
        # Only keys the running torch knows, each with the kind of value it expects.
        for key, value in saved.items():
            if key in group and key not in ("params", "param_names"):
                new[key] = _group_value(key, value, group[key], where)
        merged.append(new)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": merged})
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {where!r} has bad optimizer state: {exc}") from exc


def _group_value(key: str, saved: object, default: object, where: str) -> object:
    """``saved`` checked against the kind of ``default`` (JSON made tuples into lists)."""
    if isinstance(default, tuple):
        if (
            isinstance(saved, list)
            and len(saved) == len(default)
            and all(_is_number(v) for v in saved)
        ):
            return tuple(saved)
    elif isinstance(default, bool) or default is None:
        if saved is None or isinstance(saved, bool):
            return saved
    elif _is_number(default) and _is_number(saved):
        return saved
    raise CheckpointError(f"checkpoint {where!r} has a bad optimizer setting {key!r}: {saved!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
