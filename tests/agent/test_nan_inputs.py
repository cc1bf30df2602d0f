"""NaN or Inf in an inference input: code ``data`` (as HTTP says), and the connection stays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from edgewire.agent.serving import check_inputs
from edgewire.client.native import Client
from edgewire.errors import DataError, RemoteError
from edgewire.serve.model import TensorInfo
from edgewire.serve.store import ModelStore
from tests.helpers import serving_agent
from tests.serve.models import linear_model


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_inputs_refuses_non_finite_values_as_data(bad: float) -> None:
    x = np.zeros((1, 4), np.float32)
    x[0, 2] = bad
    info = TensorInfo(name="x", dtype="float32", shape=(None, 4))
    with pytest.raises(DataError, match="NaN or Inf"):
        check_inputs([info], [x])


def test_native_nan_gets_data_and_the_connection_stays_open(tmp_path: Path) -> None:
    linear_model(tmp_path / "m.onnx", in_features=784, out_features=10, seed=3)
    ModelStore(tmp_path / "models").add("mnist", tmp_path / "m.onnx")
    good = np.zeros((1, 784), np.float32)
    bad = good.copy()
    bad[0, 100] = np.nan

    async def go(port: int) -> tuple[str, int]:
        async with await Client.connect("127.0.0.1", port) as client:
            with pytest.raises(RemoteError) as refused:
                await client.infer("mnist", [bad])
            answer = await client.infer("mnist", [good])  # same connection
            return refused.value.remote_code, next(iter(answer.outputs.values())).size

    with serving_agent(tmp_path) as agent:
        code, size = asyncio.run(go(agent.native))
    assert (code, size) == ("data", 10)
