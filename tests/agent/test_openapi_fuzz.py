"""schemathesis against a live agent: requests generated from its own ``/openapi.json``
(inputs that fit the document and inputs that do not) on every operation; none may be
answered 500 (``not_a_server_error``).

The agent has a token, automation with one hook, and a tiny ONNX model (``tiny``, 4
inputs), which the KServe routes are also fuzzed against by name. Examples are bounded
and derandomized (the same run every time), and not shrunk: a failure shows its case.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.errors import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edgewire.serve.kserve import DATATYPES, HEADER_LENGTH  # noqa: E402
from tests.agent.test_openapi import HOOK_SECRET, automated_config  # noqa: E402
from tests.helpers import RunningAgent, agent_in_thread  # noqa: E402
from tests.serve.models import linear_model  # noqa: E402

TOKEN = "fuzz-token-1234567"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "tiny"
EXAMPLES = 15
#: Streams that never end on their own and take no input (tested where they are built).
ENDLESS = {"/api/overview/events"}
#: What each answer is checked for.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = automated_config(tmp)
    with agent_in_thread(tmp / "data", token=TOKEN, automation=config.automation,
                         max_request_bytes=1 << 20, max_upload_bytes=1 << 20) as agent:  # fmt: skip
        model = tmp / "tiny.onnx"
        linear_model(model, in_features=4, out_features=3)
        data = model.read_bytes()
        answer = httpx.put(
            f"http://127.0.0.1:{agent.http}/api/models/{MODEL}",
            params={"sha256": hashlib.sha256(data).hexdigest(), "filename": model.name},
            content=data, headers=AUTH, timeout=60,
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        yield agent


def test_no_generated_request_gets_a_500(running: RunningAgent) -> None:
    base = f"http://127.0.0.1:{running.http}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=AUTH, timeout=10)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS:
            continue
        overrides: list[dict[str, Any]] = [{}]
        if operation.path.startswith("/v2/models/"):
            # The real model (and its version), as well as made-up names.
            real = {"name": MODEL, "version": "1"} if "{version}" in operation.path else {}
            overrides.append(real or {"name": MODEL})
        for path_parameters in overrides:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(mode, path_parameters=path_parameters or None)
                failures += _run(strategy, base)
                operations += 1
    assert operations > 25
    assert not failures, "\n\n".join(failures[:10])
    # The agent still serves the model it had.
    ready = httpx.get(f"{base}/v2/models/{MODEL}/ready", timeout=10)
    assert ready.status_code == 200


def test_a_version_the_agent_does_not_serve_is_not_found(running: RunningAgent) -> None:
    """Found by the fuzzing: metadata, config and ready of /versions/{version} answered for
    whatever version the path named (only infer checked it)."""
    base = f"http://127.0.0.1:{running.http}/v2/models/{MODEL}/versions"
    for route in ("", "/config", "/ready"):
        assert httpx.get(f"{base}/1{route}", timeout=10).status_code == 200, route
        answer = httpx.get(f"{base}/7{route}", timeout=10)
        assert answer.status_code == 404, route
    assert answer.json() == {"name": MODEL, "ready": False}
    assert "serves version 1, not 7" in httpx.get(f"{base}/7", timeout=10).json()["error"]


def _run(strategy: st.SearchStrategy[Any], base: str) -> list[str]:
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=base, headers=AUTH, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:
            if len(found) < 3:
                found.append(f"{case.operation.label}: {exc}\n{case.as_curl_command()}")

    with contextlib.suppress(Unsatisfiable):  # an operation without any input to get wrong
        check()
    return found


# -- what the document cannot say: tensors that fit the model, and signed deliveries ----------

_NUMBER = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-(2**70), 2**70)
_VALUE = _NUMBER | st.booleans() | st.text(max_size=3) | st.none()


@st.composite
def _tensor_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A KServe request for ``tiny`` (input_0, FP32, [batch, 4]): right (in JSON or as
    binary data), or wrong in one of many ways."""
    if draw(st.booleans()):
        rows = draw(st.integers(0, 4))
        values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=4 * rows,
                               max_size=4 * rows))  # fmt: skip
        item: dict[str, Any] = {"name": "input_0", "shape": [rows, 4], "datatype": "FP32"}
        binary = b""
        if draw(st.booleans()):
            binary = np.asarray(values, dtype="<f4").tobytes()
            item["parameters"] = {"binary_data_size": len(binary)}
        else:
            item["data"] = values
        doc: dict[str, Any] = {"inputs": [item]}
        if draw(st.booleans()):
            doc["outputs"] = [{"name": "output_0",
                               "parameters": {"binary_data": draw(st.booleans())}}]  # fmt: skip
    else:
        shape = draw(st.lists(st.integers(-1, 5) | st.integers(2**31, 2**64), max_size=4))
        item = {"name": draw(st.sampled_from(["input_0", "x"])), "shape": shape,
                "datatype": draw(st.sampled_from([*sorted(DATATYPES), "FP8", ""])),
                "data": draw(st.lists(_VALUE | st.lists(_NUMBER, max_size=4), max_size=20))}  # fmt: skip
        binary = b""
        if draw(st.integers(0, 3)) == 0:  # binary data, of a size that may be wrong
            binary = draw(st.binary(max_size=80))
            del item["data"]
            item["parameters"] = {"binary_data_size": draw(st.sampled_from([len(binary), 16]))}
        doc = {"inputs": [item]}
        if draw(st.booleans()):
            doc["outputs"] = [{"name": draw(st.sampled_from(["output_0", "y"])),
                               "parameters": {"binary_data": draw(_VALUE)}}]  # fmt: skip
        if draw(st.booleans()):
            doc["parameters"] = {"binary_data_output": draw(st.booleans() | st.integers())}
    head = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers[HEADER_LENGTH] = str(draw(st.sampled_from([len(head), len(head), len(head) + 3])))
    return head + binary, headers


_ARTIFACT_NAME = st.sampled_from(["mnist", "digits", "mnist-data", "a" * 200, "../x", "m:n"])


@st.composite
def _delivery(draw: st.DrawFn) -> bytes:
    """A body a W&B automation might send: well formed (for a rule or for none), or odd."""
    if draw(st.booleans()):
        collection = draw(st.sampled_from(["mnist", "digits"]))
        alias = draw(st.sampled_from(["download", "latest", "v3"]))
        well_formed = {
            "artifact_collection_name": collection,
            "artifact_version_string": f"acme/edge/{collection}:{alias}",
            "alias": alias,
        }
        event = draw(st.sampled_from(["ADD_ARTIFACT_ALIAS", "LINK_ARTIFACT"]))
        return json.dumps({"event_type": event, "client_payload": well_formed}).encode()
    collection = draw(_ARTIFACT_NAME | st.text(max_size=8))
    versions = [f"acme/edge/{collection}:download", f"acme/edge/{collection}",
                "acme/other/mnist:v3", "x"]  # fmt: skip
    version = draw(st.sampled_from(versions) | st.text(max_size=12))
    payload: dict[str, Any] = {"artifact_collection_name": collection,
                               "artifact_version_string": version}  # fmt: skip
    if draw(st.booleans()):
        payload["alias"] = draw(st.sampled_from(["download", "latest", ""]) | st.text(max_size=4))
    if draw(st.integers(0, 3)) == 0:
        payload[draw(st.text(max_size=6))] = draw(_VALUE)
    body: Any = {"event_type": draw(st.sampled_from(["ADD_ARTIFACT_ALIAS", "LINK_ARTIFACT", ""])
                                    | st.text(max_size=6)), "client_payload": payload}  # fmt: skip
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.sampled_from([[], "text", None, {"client_payload": []}]))
    return json.dumps(body).encode()


def test_tensors_for_the_model_and_signed_deliveries_get_no_500(running: RunningAgent) -> None:
    base = f"http://127.0.0.1:{running.http}"
    answers: list[int] = []

    @settings(max_examples=4 * EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(request=_tensor_request(), version=st.sampled_from(["", "/versions/1"]))
    def infer(request: tuple[bytes, dict[str, str]], version: str) -> None:
        body, headers = request
        url = f"{base}/v2/models/{MODEL}{version}/infer"
        answer = httpx.post(url, content=body, headers=headers, timeout=30)
        answers.append(answer.status_code)
        assert answer.status_code < 500 or answer.status_code == 503, (body, answer.text)

    @settings(max_examples=4 * EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(body=_delivery())
    def deliver(body: bytes) -> None:
        mac = hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).digest()
        headers = {"Content-Type": "application/json",
                   "X-Wandb-Signature": base64.b64encode(mac).decode()}  # fmt: skip
        answer = httpx.post(f"{base}/hooks/wandb", content=body, headers=headers, timeout=30)
        answers.append(answer.status_code)
        assert answer.status_code < 500, (body, answer.text)

    infer()
    assert 200 in answers  # some tensors fit the model
    answers.clear()
    deliver()
    assert {200, 202} & set(answers), answers  # some deliveries are well formed
