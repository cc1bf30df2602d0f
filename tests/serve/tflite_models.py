"""The seed's TFLite model (``../shared/models``) and hostile variants of it, built
with LiteRT's own flatbuffer schema (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED_TFLITE = Path(__file__).resolve().parents[3] / "shared" / "models" / "seed_mnist.tflite"


def litert_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """LiteRT run directly, one digit at a time: the reference the agent must equal."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    rows = []
    for row in x.reshape(-1, 28, 28, 1):
        interpreter.set_tensor(inp, row[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out)[0].copy())
    return np.stack(rows)


def with_custom_op(source: Path, target: Path) -> Path:
    """The seed model with its first operator turned into a custom op LiteRT lacks."""
    from ai_edge_litert import schema_py_generated as schema

    raw = source.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = b"EdgewireNoSuchOp"
    code.version = 1
    model.operatorCodes.append(code)
    op = model.subgraphs[0].operators[0]
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.builtinOptionsType = 0
    op.builtinOptions = None
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    target.write_bytes(bytes(builder.Output()))
    return target
