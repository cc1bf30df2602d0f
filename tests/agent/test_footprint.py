"""An agent that only serves ONNX models never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgewire.serve.store import ModelStore
from tests.serve.models import linear_model

PROBE = """
import asyncio, sys
from pathlib import Path
import numpy as np
from edgewire.agent.server import Agent
from edgewire.client.native import Client
from edgewire.config import AgentConfig

async def main():
    agent = Agent(AgentConfig(port=0, http_port=0, legacy_ports={"mnistprot": 0}, data_dir=Path(sys.argv[1])))
    await agent.start()
    async with await Client.connect("127.0.0.1", agent.ports["native"]) as client:
        answer = await client.infer("mnist", [np.zeros((1, 784), np.float32)])
    await agent.stop()
    print(answer.outputs["output_0"].shape, "torch" in sys.modules)

asyncio.run(main())
"""


def test_serving_agent_never_imports_torch(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    linear_model(model)
    store = ModelStore(tmp_path / "data" / "models")
    store.add("mnist", model)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "10)", "False"]
