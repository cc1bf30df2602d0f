"""LitServe serving an ONNX model with batching: the HTTP baseline of benchmarks/serve.py.

Usage: python benchmarks/litserve_app.py MODEL.onnx PORT MAX_BATCH_SIZE BATCH_TIMEOUT_S
Requests: POST /predict {"input": [floats]} -> {"output": [floats]}.
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort


class OnnxAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        # One model thread, as the agent it is compared with runs on one pinned core.
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.model_path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_inputs()[0]
        self.input_name = meta.name
        self.row_shape = [int(d) for d in meta.shape[1:]]

    def decode_request(self, request):  # type: ignore[no-untyped-def]
        # LitServe derives the endpoint from this signature: leave the request un-annotated.
        return np.asarray(request["input"], dtype=np.float32).reshape(self.row_shape)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"output": output.tolist()}


def main() -> None:
    model, port, max_batch, timeout = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    api = OnnxAPI(model, max_batch_size=max_batch, batch_timeout=timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
