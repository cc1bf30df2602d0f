"""The token on the native port: HELLO carries it; inference and training need it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgewire.client.native import Client
from edgewire.errors import AuthError, RemoteError
from edgewire.serve.store import ModelStore
from edgewire.wire.frames import MsgType
from edgewire.wire.stream import open_framed
from tests.cli.cli_run import run_cli
from tests.helpers import RunningAgent, agent_in_thread
from tests.serve.models import expected, linear_model

TOKEN = "correct-horse-battery"
TRAIN_BEGIN: dict[str, Any] = {
    "run_id": "r1",
    "spec": {"model": "lenet5", "in_channels": 1, "height": 8, "width": 8, "num_classes": 2},
    "plan": {"epochs": 1, "train_batches": 1, "val_batches": 0, "checkpoint_every": 0},
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    w, b = linear_model(path, in_features=784, out_features=10, seed=2)
    return path, w, b


def _agent(data_dir: Path, model: Path, **overrides: object) -> Iterator[RunningAgent]:
    store = ModelStore(data_dir / "models")
    store.add("mnist", model)
    store.set_alias("mnist", "production", 1)
    with agent_in_thread(data_dir, max_queue_delay_ms=1.0, **overrides) as running:
        yield running


@pytest.fixture
def guarded(tmp_path: Path, model: tuple[Path, np.ndarray, np.ndarray]) -> Iterator[RunningAgent]:
    yield from _agent(tmp_path, model[0], token=TOKEN)


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEWIRE_TOKEN", raising=False)


X = np.random.default_rng(0).random((1, 784), dtype=np.float32)


async def test_infer_without_a_token_is_refused_per_request(guarded: RunningAgent) -> None:
    async with await Client.connect("127.0.0.1", guarded.native) as client:
        hello = await client.hello()  # HELLO and PING need no token
        assert hello["token_required"] is True and hello["authenticated"] is False
        await client.ping()
        for _ in range(2):  # the connection stays: each request gets its own answer
            with pytest.raises(AuthError, match="needs the agent's token"):
                await client.infer("mnist", [X])
        await client.ping()


async def test_a_wrong_token_is_an_auth_error_at_connect(guarded: RunningAgent) -> None:
    with pytest.raises(AuthError, match="wrong token") as info:
        await Client.connect("127.0.0.1", guarded.native, token="not-the-token")
    assert "\n" not in str(info.value) and TOKEN not in str(info.value)
    # A non-string token is refused the same way, not a crash.
    stream = await open_framed("127.0.0.1", guarded.native)
    stream.send(MsgType.HELLO, {"token": 12345678}, request_id=3)
    with pytest.raises(RemoteError, match=r"wrong token.*\[auth\]"):
        await stream.read_message(5)
    await stream.close()


async def test_the_right_token_opens_the_connection(
    guarded: RunningAgent, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    async with await Client.connect("127.0.0.1", guarded.native, token=TOKEN) as client:
        hello = await client.hello()
        assert hello["authenticated"] is True
        answer = await client.infer("mnist", [X])
    np.testing.assert_allclose(
        answer.outputs["output_0"], expected(X, model[1], model[2]), atol=1e-5
    )


async def test_the_token_comes_from_the_environment(
    guarded: RunningAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEWIRE_TOKEN", TOKEN)
    async with await Client.connect("127.0.0.1", guarded.native) as client:
        assert (await client.infer("mnist", [X])).outputs["output_0"].shape == (1, 10)


async def test_training_without_the_token_is_refused_and_closed(guarded: RunningAgent) -> None:
    stream = await open_framed("127.0.0.1", guarded.native)
    stream.send(MsgType.TRAIN_BEGIN, TRAIN_BEGIN)
    with pytest.raises(RemoteError, match=r"TRAIN_BEGIN needs the agent's token.*\[auth\]"):
        await stream.read_message(5)
    assert await stream.read_frame(5) is None  # closed
    await stream.close()
    assert not (guarded.config.data_dir / "runs" / "r1").exists()


def test_train_stream_with_a_wrong_token_is_an_auth_error(guarded: RunningAgent) -> None:
    import asyncio

    from edgewire.data.datasets import Dataset
    from edgewire.train.stream_client import StreamOptions, stream_training

    data = Dataset(
        x=np.zeros((4, 1, 8, 8), np.uint8), y=np.arange(4) % 2, classes=("a", "b"), name="t"
    )
    for token in (None, "wrong-token"):
        options = StreamOptions(run_id="r2", spec=TRAIN_BEGIN["spec"], token=token)
        with pytest.raises(AuthError):
            asyncio.run(stream_training("127.0.0.1", guarded.native, data, None, options))
    options = StreamOptions(run_id="r2", spec=TRAIN_BEGIN["spec"], token=TOKEN)
    summary = asyncio.run(stream_training("127.0.0.1", guarded.native, data, None, options))
    assert summary["finished"] is True


async def test_without_a_token_everything_stays_open(
    tmp_path: Path, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    for running in _agent(tmp_path, model[0]):
        # A client that sends a token anyway is not refused either.
        for token in (None, "any-token-at-all"):
            async with await Client.connect("127.0.0.1", running.native, token=token) as client:
                hello = await client.hello()
                assert hello["token_required"] is False and hello["authenticated"] is True
                assert (await client.infer("mnist", [X])).outputs["output_0"].shape == (1, 10)
        stream = await open_framed("127.0.0.1", running.native)
        stream.send(MsgType.TRAIN_BEGIN, TRAIN_BEGIN)
        got = await stream.read_message(30)
        assert got is not None and got[0].type is MsgType.TRAIN_READY
        await stream.close()


def test_a_wrong_token_is_one_line_and_exit_9_in_the_cli(
    guarded: RunningAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    digit = tmp_path / "digit.npy"
    np.save(digit, X[0])
    to = f"127.0.0.1:{guarded.native}"
    for token in ("wrong-token", TOKEN):
        monkeypatch.setenv("EDGEWIRE_TOKEN", token)
        code, out = run_cli(
            capsys, monkeypatch, "infer", "--to", to, "--model", "mnist", str(digit)
        )
        if token == TOKEN:
            assert code == 0, out
            assert "digit.npy" in out
        else:
            assert code == 9, out
            lines = [line for line in out.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:") and "token" in lines[0]


# -- ports that cannot carry the token --------------------------------------------------


def test_bts0_listens_on_loopback_when_the_agent_has_a_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgewire.agent.server import _bind_host
    from edgewire.config import AgentConfig
    from edgewire.ports import PORTS, port_spec

    bts0, mnistprot = port_spec("bts0"), port_spec("mnistprot")
    assert bts0.loopback_with_token and bts0.public_flag == "--legacy-bts0-public"
    assert [spec.name for spec in PORTS if spec.loopback_with_token] == ["bts0"]

    def config(**kw: Any) -> AgentConfig:
        return AgentConfig(host="0.0.0.0", data_dir=tmp_path, **kw)

    with caplog.at_level("WARNING", logger="edgewire.agent.server"):
        assert _bind_host(config(token=TOKEN), bts0) == "127.0.0.1"
    assert "--legacy-bts0-public" in caplog.text and TOKEN not in caplog.text
    assert _bind_host(config(token=TOKEN, legacy_public=frozenset({"bts0"})), bts0) == "0.0.0.0"
    # MnistProt is inference only: it stays where the config binds it.
    assert _bind_host(config(token=TOKEN), mnistprot) == "0.0.0.0"
    # Loopback already, or no token (then the agent binds loopback only anyway).
    assert _bind_host(AgentConfig(host="::1", token=TOKEN, data_dir=tmp_path), bts0) == "::1"
    assert _bind_host(config(), bts0) == "0.0.0.0"


async def test_a_public_agent_with_a_token_keeps_bts0_on_loopback(tmp_path: Path) -> None:
    from edgewire.agent.server import Agent
    from edgewire.config import AgentConfig

    agent = Agent(
        AgentConfig(
            host="0.0.0.0", port=0, http_port=0, data_dir=tmp_path, token=TOKEN,
            legacy_ports={"bts0": 0, "mnistprot": 0},
        )
    )  # fmt: skip
    await agent.start()
    try:
        hosts = {
            server.sockets[0].getsockname()[1]: server.sockets[0].getsockname()[0]
            for server in agent._servers
        }
        assert hosts[agent.ports["bts0"]] == "127.0.0.1"
        assert hosts[agent.ports["mnistprot"]] == "0.0.0.0"
        assert hosts[agent.ports["native"]] == "0.0.0.0"
    finally:
        await agent.stop()


def test_the_load_generator_sends_the_token_in_each_connections_hello(
    guarded: RunningAgent,
) -> None:
    from edgewire.bench.loadgen import LoadSpec, run_load

    def load(token: str | None) -> Any:
        spec = LoadSpec(
            host="127.0.0.1", port=guarded.native, protocol="native", model="mnist",
            clients=3, requests=4, processes=1, input_shape=(1, 784), token=token, timeout=20,
        )  # fmt: skip
        return run_load(spec)

    ok = load(TOKEN)
    assert (ok.ok, ok.errors) == (12, 0)
    refused = load(None)
    assert refused.ok == 0 and refused.errors == 12
    wrong = load("not-the-token")
    assert wrong.ok == 0 and wrong.errors == 12
