"""Split inference over real sockets: a device agent runs the head, a server agent the tail."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgewire.client.native import Client
from edgewire.errors import AuthError, RemoteError
from edgewire.split import codec
from edgewire.split.codec import PRIOR_KEY, Prior
from edgewire.split.export import export_split
from edgewire.split.model import SplitModel, SplitSpec
from edgewire.split.route import Route, stamp_route
from edgewire.train.models import build_model
from edgewire.wire.frames import MsgType
from tests.helpers import RunningAgent, agent_in_thread, upload

SHAPE = (3, 32, 32)
TOKEN = "tail-secret"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """head.onnx (with a measured prior), tail.onnx and full.onnx of an untrained split model:
    the runtime's answers must equal running the two files directly, trained or not."""
    out = tmp_path_factory.mktemp("split")
    torch.manual_seed(0)
    teacher = build_model("resnet_small", in_channels=3, height=32, width=32, num_classes=10).eval()
    model = SplitModel(teacher, SplitSpec(at="stage2", channels=4), input_shape=SHAPE).eval()
    head, tail = export_split(model, out)
    with torch.no_grad():
        codes = model.encode(torch.rand(64, *SHAPE)).numpy()
    for path in (head, tail):  # as `split build` does: the prior goes in both files
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props}
        props[PRIOR_KEY] = Prior.measure(codes).to_json()
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(path))
    full = out / "full.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            teacher, (torch.zeros(1, *SHAPE),), str(full), input_names=["input_0"],
            output_names=["output_0"], dynamic_axes={"input_0": {0: "b"}, "output_0": {0: "b"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return {"head": head, "tail": tail, "full": full, "dir": out}


def _direct(files: dict[str, Path], x: np.ndarray) -> np.ndarray:
    head = ort.InferenceSession(str(files["head"]), providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(files["tail"]), providers=["CPUExecutionProvider"])
    q = head.run(None, {"input_0": x})[0]
    out: np.ndarray = tail.run(None, {"bottleneck": q})[0]
    return out


def _deploy_head(
    device: RunningAgent, files: dict[str, Path], tmp: Path, *, port: int, fallback: bool = True
) -> None:
    route = Route(
        host="127.0.0.1", port=port, tail="digits-tail", coder="rans",
        fallback="digits-full" if fallback else None,
    )  # fmt: skip
    stamped = stamp_route(files["head"], tmp / "head.onnx", route)
    assert upload(device, stamped, "digits").status_code == 201
    assert upload(device, files["full"], "digits-full").status_code == 201


async def _ask(port: int, x: np.ndarray, **kw: Any) -> Any:
    async with await Client.connect("127.0.0.1", port) as client:
        return await client.infer("digits", {"input_0": x}, **kw)


def test_the_device_answers_with_the_tails_output_and_where_time_went(
    files: dict[str, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
    expected = _direct(files, x)
    with (
        agent_in_thread(tmp_path / "server") as server,
        agent_in_thread(tmp_path / "device") as device,
    ):
        assert upload(server, files["tail"], "digits-tail").status_code == 201
        _deploy_head(device, files, tmp_path, port=server.native)
        for coder in codec.TENSOR_CODERS:
            answer = asyncio.run(_ask(device.native, x, coder=coder))
            np.testing.assert_allclose(answer.outputs["output_0"], expected, rtol=1e-5, atol=1e-5)
            split = answer.split
            assert split is not None and split["coder"] == coder
            for key in ("head_ms", "encode_ms", "transfer_ms", "tail_ms", "decode_ms", "total_ms"):
                assert split[key] >= 0.0, key
            # 2 × 4×8×8 codes cross, not 2 × 3×32×32 floats.
            assert split["bytes_up"] < 2 * 4 * 8 * 8 + 200

        # Many devices' requests batch on the server (and many of one device's on the device).
        async def many() -> list[Any]:
            async with await Client.connect("127.0.0.1", device.native) as client:
                return await asyncio.gather(
                    *(client.infer("digits", {"input_0": x[:1]}) for _ in range(24))
                )

        answers = asyncio.run(many())
        for a in answers:
            np.testing.assert_allclose(a.outputs["output_0"], expected[:1], rtol=1e-5, atol=1e-5)
        # 24 requests at once: the device ran heads together, and the server tails together.
        assert max(a.split["head_batch_size"] for a in answers) > 1
        assert max(a.split["tail_batch_size"] for a in answers) > 1


def test_an_unreachable_server_is_a_clear_error_or_the_local_fallback(
    files: dict[str, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(1).random((1, *SHAPE), dtype=np.float32)
    with agent_in_thread(tmp_path / "server") as server:
        port = server.native  # then the server goes away: nothing listens there
    with agent_in_thread(tmp_path / "device", tail_timeout=2.0) as device:
        _deploy_head(device, files, tmp_path, port=port)
        with pytest.raises(
            RemoteError, match=r"tail server 127\.0\.0\.1:\d+ is unreachable"
        ) as info:
            asyncio.run(_ask(device.native, x))
        assert info.value.remote_code == "tail_unreachable"
        answer = asyncio.run(_ask(device.native, x, fallback="local"))
        assert answer.split is not None and answer.split["fallback"] == "digits-full"
        full = ort.InferenceSession(str(files["full"]), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(
            answer.outputs["output_0"], full.run(None, {"input_0": x})[0], rtol=1e-5, atol=1e-5
        )


def test_the_tail_server_wants_its_token_and_the_device_brings_it(
    files: dict[str, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(2).random((1, *SHAPE), dtype=np.float32)
    with agent_in_thread(tmp_path / "server", token=TOKEN) as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        import hashlib

        import httpx

        data = files["tail"].read_bytes()
        r = httpx.put(
            f"http://127.0.0.1:{server.http}/api/models/digits-tail",
            params={"sha256": hashlib.sha256(data).hexdigest(), "filename": "tail.onnx"},
            content=data, headers=headers, timeout=60,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        with agent_in_thread(tmp_path / "d1") as device:
            _deploy_head(device, files, tmp_path, port=server.native)
            with pytest.raises(AuthError, match=r"set tail_token \(EDGEWIRE_TAIL_TOKEN\)"):
                asyncio.run(_ask(device.native, x))
        with agent_in_thread(tmp_path / "d2", tail_token=TOKEN) as device:
            _deploy_head(device, files, tmp_path, port=server.native)
            answer = asyncio.run(_ask(device.native, x))
            np.testing.assert_allclose(answer.outputs["output_0"], _direct(files, x), atol=1e-5)


@pytest.mark.parametrize(
    ("meta", "payload", "code", "match"),
    [
        ({"coder": "rans", "shape": [1, 4, 8, 8]}, b"", "protocol", "string 'model'"),
        (
            {"model": "digits-tail", "coder": "lzma", "shape": [1, 4, 8, 8]},
            b"",
            "data",
            "unknown coder",
        ),
        (
            {"model": "digits-tail", "coder": "raw", "shape": [1, 4, 8]},
            b"",
            "data",
            "four positive",
        ),
        (
            {"model": "digits-tail", "coder": "raw", "shape": [1, 4, 8, 8]},
            b"\x00" * 9,
            "data",
            "9 raw bytes",
        ),
        (
            {"model": "digits-tail", "coder": "raw", "shape": [1, 3, 8, 8]},
            b"\x00" * 192,
            "data",
            "bottleneck",
        ),
        (
            {"model": "digits-tail", "coder": "rans", "shape": [1, 4, 8, 8]},
            b"\x01\x02\x03",
            "data",
            "32-bit",
        ),
        (
            {"model": "nope", "coder": "raw", "shape": [1, 4, 8, 8]},
            b"\x00" * 256,
            "model_not_found",
            "not served",
        ),
        (
            {"model": "digits-tail", "coder": "raw", "shape": [4096, 4096, 64, 64]},
            b"",
            "data",
            "holds over",
        ),
    ],
)
def test_bad_tail_requests_are_answered_and_the_connection_stays(
    files: dict[str, Path],
    tmp_path: Path,
    meta: dict[str, Any],
    payload: bytes,
    code: str,
    match: str,
) -> None:
    async def run(port: int) -> None:
        async with await Client.connect("127.0.0.1", port) as client:
            with pytest.raises(RemoteError, match=match) as info:
                await client.request(
                    MsgType.SPLIT_TAIL_REQUEST, meta, [np.frombuffer(payload, np.uint8)]
                )
            assert info.value.remote_code == code
            await client.ping()  # still connected

    with agent_in_thread(tmp_path / "server") as server:
        assert upload(server, files["tail"], "digits-tail").status_code == 201
        asyncio.run(run(server.native))


def test_deploy_a_split_folder_then_split_run(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.cli.cli_run import run_cli

    x = np.random.default_rng(3).random((1, *SHAPE), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    with (
        agent_in_thread(tmp_path / "server") as server,
        agent_in_thread(tmp_path / "device") as device,
    ):
        code, out = run_cli(
            capsys, monkeypatch, "deploy", str(files["dir"]), "--to", f"127.0.0.1:{device.http}",
            "--tail-to", f"127.0.0.1:{server.http}", "--tail-native", f"127.0.0.1:{server.native}",
            "--name", "digits",
        )  # fmt: skip
        assert code == 0, out
        for name in ("digits-tail", "digits-full", "digits"):
            assert name in out
        assert server.agent.serving.names() == ["digits-tail"]
        assert device.agent.serving.names() == ["digits", "digits-full"]
        expected = int(_direct(files, x).argmax())
        code, out = run_cli(
            capsys, monkeypatch, "split", "run", str(tmp_path / "x.npy"),
            "--to", f"127.0.0.1:{device.native}", "--model", "digits",
        )  # fmt: skip
        assert code == 0, out
        row = next(line for line in out.splitlines() if "x.npy" in line)
        assert f"│ {expected} " in row, out
        # A folder without --tail-to, or a file with it, is one line and nothing changes.
        code, out = run_cli(
            capsys, monkeypatch, "deploy", str(files["dir"]), "--to", f"127.0.0.1:{device.http}",
            "--name", "other",
        )  # fmt: skip
        assert code == 2 and "needs --tail-to" in out
        code, out = run_cli(
            capsys, monkeypatch, "deploy", str(files["full"]), "--to", f"127.0.0.1:{device.http}",
            "--tail-to", f"127.0.0.1:{server.http}", "--name", "other",
        )  # fmt: skip
        assert code == 2 and "for split folders" in out
        assert "other" not in device.agent.serving.names()


def test_split_run_without_its_server_says_so_or_falls_back(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.cli.cli_run import run_cli

    np.save(tmp_path / "x.npy", np.random.default_rng(4).random((1, *SHAPE), dtype=np.float32))
    with agent_in_thread(tmp_path / "server") as server:
        port = server.native  # nothing listens there once the server has stopped
    with agent_in_thread(tmp_path / "device", tail_timeout=2.0) as device:
        _deploy_head(device, files, tmp_path, port=port)
        args = ("split", "run", str(tmp_path / "x.npy"), "--to", f"127.0.0.1:{device.native}",
                "--model", "digits")  # fmt: skip
        code, out = run_cli(capsys, monkeypatch, *args)
        assert code == 7 and "is unreachable" in out and "fallback=local" in out, out
        code, out = run_cli(capsys, monkeypatch, *args, "--fallback", "local")
        assert code == 0 and "local: digits-full" in out, out
        code, out = run_cli(capsys, monkeypatch, *args, "--fallback", "maybe")
        assert code == 2 and "--fallback is 'none' or 'local'" in out
