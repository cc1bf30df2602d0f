"""The MnistProt port on a real agent: which model answers, and requests of other layouts."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest

from edgewire.serve.store import ModelStore
from edgewire.wire.mnistprot import (
    CMD_INFERENCE_INPUT,
    DIGIT_LEN,
    RESPONSE_SIZE,
    decode_response,
    encode_request,
)
from tests.helpers import RunningAgent, serving_agent
from tests.serve.models import expected, linear_model

DIGIT = np.linspace(0.0, 1.0, DIGIT_LEN, dtype=np.float32)


@pytest.fixture
def weights(tmp_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seed, name in enumerate(("alpha", "beta"), start=1):
        path = tmp_path / f"{name}.onnx"
        out[name] = (path, *linear_model(path, in_features=784, out_features=10, seed=seed))
    return out


def store_models(data_dir: Path, weights: dict[str, Any], *, production: tuple[str, ...]) -> None:
    store = ModelStore(data_dir / "models")
    for name, (path, _, _) in weights.items():
        store.add(name, path)
        if name in production:
            store.set_alias(name, "production", 1)


def exchange(port: int, request: bytes) -> bytes:
    """Send one request and read until 96 bytes or the agent closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while len(data) < RESPONSE_SIZE and (chunk := sock.recv(RESPONSE_SIZE - len(data))):
            data += chunk
    return data


def scores_of(weights: dict[str, Any], name: str) -> np.ndarray:
    _, w, b = weights[name]
    return expected(DIGIT[None], w, b)[0]


def refused(agent: RunningAgent) -> float:
    value = agent.agent.metrics.registry.get_sample_value(
        "edgewire_infer_errors_total", {"protocol": "mnistprot", "code": "model_not_found"}
    )
    return value or 0.0


def test_two_models_the_one_with_production_answers(
    tmp_path: Path, weights: dict[str, Any]
) -> None:
    store_models(tmp_path, weights, production=("beta",))
    with serving_agent(tmp_path) as agent:
        answer = exchange(agent.port("mnistprot"), encode_request(DIGIT))
    assert len(answer) == RESPONSE_SIZE
    np.testing.assert_allclose(
        decode_response(answer).output, scores_of(weights, "beta"), atol=1e-5
    )


def test_the_configured_model_wins_over_production(tmp_path: Path, weights: dict[str, Any]) -> None:
    store_models(tmp_path, weights, production=("alpha", "beta"))
    with serving_agent(tmp_path, legacy_mnistprot_model="alpha") as agent:
        answer = exchange(agent.port("mnistprot"), encode_request(DIGIT))
    np.testing.assert_allclose(
        decode_response(answer).output, scores_of(weights, "alpha"), atol=1e-5
    )


@pytest.mark.parametrize("production", [("alpha", "beta"), ()], ids=["both", "neither"])
def test_no_choice_warns_once_and_counts_each_refusal(
    tmp_path: Path,
    weights: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    production: tuple[str, ...],
) -> None:
    store_models(tmp_path, weights, production=production)
    with caplog.at_level(logging.WARNING), serving_agent(tmp_path) as agent:
        port = agent.port("mnistprot")
        for _ in range(3):
            assert exchange(port, encode_request(DIGIT)) == b""  # closed, no answer
        assert refused(agent) == 3
    warnings = [r for r in caplog.records if "MnistProt" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    text = warnings[0].getMessage()
    assert "alpha, beta" in text and "--legacy-mnistprot-model" in text


def test_a_request_with_stats_is_answered_and_a_short_one_closed_at_once(
    tmp_path: Path, weights: dict[str, Any]
) -> None:
    store_models(tmp_path, {"alpha": weights["alpha"]}, production=("alpha",))
    b = flatbuffers.Builder(0)
    b.StartObject(3)
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUint32Slot(1, 80_000_000, 0)
    stats = b.EndObject()
    vector = b.CreateNumpyVector(DIGIT)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, vector, 0)
    inference_input = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, CMD_INFERENCE_INPUT, 0)
    b.PrependUOffsetTRelativeSlot(1, stats, 0)
    b.PrependUOffsetTRelativeSlot(2, inference_input, 0)
    b.Finish(b.EndObject())
    with_stats = bytes(b.Output())
    assert len(with_stats) == 3204
    # frame_timeout far beyond the socket's 60 s: an agent waiting for more bytes fails this.
    with serving_agent(tmp_path, frame_timeout=600.0) as agent:
        port = agent.port("mnistprot")
        answer = exchange(port, with_stats)
        np.testing.assert_allclose(
            decode_response(answer).output, scores_of(weights, "alpha"), atol=1e-5
        )
        # 783 floats: complete at 3176 bytes, refused then and there (no error message exists).
        assert exchange(port, encode_request(DIGIT[:-1])) == b""
        # Both layouts back to back on one connection.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(with_stats + encode_request(DIGIT))
            data = b""
            while len(data) < 2 * RESPONSE_SIZE and (chunk := sock.recv(4096)):
                data += chunk
        assert len(data) == 2 * RESPONSE_SIZE
