"""BentoML serving an ONNX model with adaptive batching: an HTTP peer of benchmarks/serve.py.

Usage: python benchmarks/bentoml_app.py MODEL.onnx PORT MAX_BATCH_SIZE MAX_LATENCY_S
Requests: POST /predict {"input": [floats]} -> [[floats]]; health: GET /readyz.

BentoML's ``max_latency_ms`` (MAX_LATENCY_S here) is a latency budget, not a wait:
its dispatcher waits as long as its own model of the batch time advises, and
answers 503 to a request it predicts cannot make the budget, so a budget of a
batching delay (2 ms) sheds nearly all the load; benchmarks/http_peers.py gives it
the 60 s request timeout. One worker process, one model thread; batch sizes are
in its ``/metrics`` (``bentoml_service_adaptive_batch_size``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import onnxruntime as ort
from pydantic import AfterValidator, BaseModel

HERE = Path(__file__).resolve().parent


class Arguments(BaseModel):
    model: str
    max_batch_size: int
    max_latency_ms: int


def main() -> None:
    model, port, max_batch, latency = sys.argv[1:5]
    arguments = Arguments(
        model=str(Path(model).resolve()),
        max_batch_size=int(max_batch),
        max_latency_ms=max(1, round(float(latency) * 1000)),
    )
    # Loaded from a fresh import of this file as `bentoml_app`, as BentoML's worker loads it.
    bentoml.serve(
        "bentoml_app:OnnxService",
        working_dir=str(HERE),
        host="127.0.0.1",
        port=int(port),
        blocking=True,
        args=arguments.model_dump(),
    )


if __name__ == "__main__":
    # As a script this file only launches: the service below is defined where BentoML
    # imports the file again, here and in its worker, with the arguments set.
    main()
    sys.exit()

ARGS = bentoml.use_arguments(Arguments)


def _row(values: list[float]) -> np.ndarray:
    # One request is one row of the batch: BentoML concatenates inputs along axis 0.
    return np.asarray(values, dtype=np.float32)[np.newaxis]


# No access log line per request, as LitServe runs at log level warning.
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class OnnxService:
    def __init__(self) -> None:
        # One model thread, as the agent it is compared with runs on one pinned core.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            ARGS.model, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.row_shape = [int(d) for d in meta.shape[1:]]

    @bentoml.api(
        route="/predict",
        batchable=True,
        max_batch_size=ARGS.max_batch_size,
        max_latency_ms=ARGS.max_latency_ms,
    )
    def predict(self, input: Annotated[list[float], AfterValidator(_row)]) -> np.ndarray:
        x = np.asarray(input).reshape(-1, *self.row_shape)
        return self.session.run(None, {self.input_name: x})[0]
