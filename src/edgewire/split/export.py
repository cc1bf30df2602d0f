"""``head.onnx`` and ``tail.onnx`` of a split model, with the metadata both ends need.

The head takes float32 N×C×H×W in 0..1 and gives the uint8 bottleneck (Round and
Clip before the Cast, so every runtime produces the same bytes); the tail takes
that uint8 tensor and gives logits. Both carry ``metadata_props``: the split point,
the bottleneck shape, and the quantisation (scale, zero point), plus any ``extra``
entries the caller adds (the coder's prior, for one).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgewire import fsutil
from edgewire.errors import ConfigError
from edgewire.split.model import ZERO_POINT, SplitModel

HEAD_FILE, TAIL_FILE = "head.onnx", "tail.onnx"
HEAD_IN, BOTTLENECK, TAIL_OUT = "input_0", "bottleneck", "output_0"


class _Head(nn.Module):
    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)


class _Tail(nn.Module):
    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.model.decode(q)


def metadata(model: SplitModel) -> dict[str, str]:
    return {
        "edgewire.split.at": model.spec.at,
        "edgewire.split.bottleneck_shape": json.dumps(list(model.bottleneck_shape)),
        "edgewire.split.feature_shape": json.dumps(list(model.feature_shape)),
        "edgewire.split.quant": json.dumps(
            {
                "dtype": "uint8",
                "scale": model.scale,
                "zero_point": ZERO_POINT,
                "levels": model.spec.levels,
            }
        ),
    }


def export_split(
    model: SplitModel, out: Path, *, extra: Mapping[str, str] | None = None
) -> tuple[Path, Path]:
    """Write ``head.onnx`` and ``tail.onnx`` into ``out`` (each checked, then renamed in).

    ``extra`` adds metadata_props to both files; it may not replace the split's own keys.
    """
    import onnx

    props = metadata(model)
    clash = sorted(set(props) & set(extra or {}))
    if clash:
        raise ConfigError(f"extra metadata may not replace {', '.join(clash)}")
    props.update(extra or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    head_in = torch.zeros(1, *model.input_shape)
    tail_in = torch.zeros(1, *model.bottleneck_shape, dtype=torch.uint8)
    # The wrappers start in eval mode: the exporter restores each module's mode
    # afterwards, and a wrapper left in training mode would flip the model's batch norms.
    parts = (
        (_Head(model).eval(), head_in, HEAD_IN, BOTTLENECK, out / HEAD_FILE),
        (_Tail(model).eval(), tail_in, BOTTLENECK, TAIL_OUT, out / TAIL_FILE),
    )
    for module, dummy, name_in, name_out, path in parts:

        def write(tmp: Path, module: nn.Module = module, dummy: torch.Tensor = dummy,
                  name_in: str = name_in, name_out: str = name_out) -> None:  # fmt: skip
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    module, (dummy,), str(tmp), input_names=[name_in], output_names=[name_out],
                    dynamic_axes={name_in: {0: "batch"}, name_out: {0: "batch"}},
                    opset_version=17, dynamo=False,
                )  # fmt: skip
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, props)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))

        fsutil.atomic_write(path, write, what=f"export {path.name}")
    return out / HEAD_FILE, out / TAIL_FILE
