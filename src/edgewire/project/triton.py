"""A Triton model repository for an exported model: ``REPO/NAME/1/model.onnx`` and a
``config.pbtxt``, so the model an agent serves also runs on Triton or KServe unchanged.

    REPO/NAME/config.pbtxt      platform onnxruntime_onnx, max_batch_size, dynamic batching
    REPO/NAME/labels.txt        the class names, referenced by the output's label_filename
    REPO/NAME/1/model.onnx      the exported file, byte for byte

The model folder is written beside the old one and swapped in when complete.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from edgewire import fsutil
from edgewire.errors import ConfigError, ModelError
from edgewire.project.workspace import replace_folder

#: Triton's names for the element types an exported model uses.
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64",
          "uint8": "TYPE_UINT8", "int32": "TYPE_INT32"}  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: How long Triton may hold a request to make a bigger batch (the agent's default is 2 ms).
QUEUE_DELAY_US = 2000


def triton_config(
    model: Path, *, name: str, max_batch: int, queue_delay_us: int = QUEUE_DELAY_US
) -> tuple[str, list[str]]:
    """(config.pbtxt text, class names) for the ONNX file ``model``."""
    from edgewire.serve.backends.onnx import OnnxBackend

    info = OnnxBackend().inspect(model)
    blocks: dict[str, list[str]] = {"input": [], "output": []}
    labels = json.loads(info.metadata.get("labels", "[]"))
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            if not t.shape or t.shape[0] is not None:
                raise ModelError(
                    f"{kind} {t.name!r} has no dynamic batch axis (shape {list(t.shape)}); "
                    "export it with edgewire export"
                )
            if t.dtype not in _TYPES:
                raise ModelError(f"{kind} {t.name!r} is {t.dtype}, which Triton's config lacks")
            dims = ", ".join("-1" if d is None else str(d) for d in t.shape[1:])
            extra = '\n    label_filename: "labels.txt"' if kind == "output" and labels else ""
            blocks[kind].append(
                f'  {{\n    name: "{t.name}"\n    data_type: {_TYPES[t.dtype]}\n'
                f"    dims: [ {dims} ]{extra}\n  }}"
            )
    text = (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch}\n'
        f"input [\n{','.join(blocks['input'])}\n]\n"
        f"output [\n{','.join(blocks['output'])}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_AUTO\n  }\n]\n"
    )
    return text, [str(label) for label in labels]


def check_triton_args(*, name: str, max_batch: int) -> None:
    """ConfigError for a name Triton refuses or a batch size out of range."""
    if not _NAME.match(name):
        raise ConfigError(
            f"--triton-name {name!r} is not a Triton model name; use letters, digits, _ . -"
        )
    if not 1 <= max_batch <= 4096:
        raise ConfigError(f"--max-batch must be in 1..4096, got {max_batch}")


def write_triton_repo(model: Path, repo: Path, *, name: str, max_batch: int = 32) -> Path:
    """Write ``repo/name`` for ``model``; the model folder it wrote."""
    check_triton_args(name=name, max_batch=max_batch)
    text, labels = triton_config(model, name=name, max_batch=max_batch)
    repo = Path(repo)
    with fsutil.disk_errors("write the Triton repository", default=ConfigError, where=str(repo)):
        repo.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo))
        try:
            (tmp / "1").mkdir()
            shutil.copyfile(model, tmp / "1" / "model.onnx")
            (tmp / "config.pbtxt").write_text(text, "utf-8")
            if labels:
                (tmp / "labels.txt").write_text("".join(f"{x}\n" for x in labels), "utf-8")
            replace_folder(tmp, repo / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return repo / name
