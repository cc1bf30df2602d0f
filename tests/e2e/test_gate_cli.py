"""`edgewire deploy --gate-data` against a real agent process: a worse model is refused
with both accuracies and a non-zero exit, a better one deploys; bad flags change nothing."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgewire.agent.gate import check_gate_file
from edgewire.errors import DataError, GateRefused
from edgewire.project.gate_data import pack_gate_data
from tests.agent.gate_models import dark_bright, gate_folder
from tests.e2e.conftest import EDGEWIRE, StartAgent


def edgewire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEWIRE, *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "250"}, check=False,
    )  # fmt: skip


def test_gated_deploy_from_the_command_line(tmp_path: Path, start_agent: StartAgent) -> None:
    agent = start_agent(tmp_path / "a", "--token", "gate-token-123")
    base = ("deploy", "--to", f"127.0.0.1:{agent.ports['http']}", "--name", "db",
            "--token", "gate-token-123")  # fmt: skip
    good, bad = dark_bright(tmp_path / "good.onnx"), dark_bright(tmp_path / "bad.onnx", good=False)
    # A workspace: its dataset/test is the gate (8×8 images, resized to the model's 4×4).
    workspace = tmp_path / "ws"
    gate_folder(workspace / "dataset" / "test")
    done = edgewire(*base, str(good), "--gate-data", str(workspace), "--min-accuracy", "0.9")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "serving" in done.stdout
    refused = edgewire(*base, str(bad), "--gate-data", str(workspace / "dataset" / "test"))
    text = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == GateRefused.exit_code, text
    assert "version 2 scored 50.0%, the served version 1 100.0% on 12 samples" in text
    assert "stored as version 2, not served" in text
    odd = edgewire(
        *base, str(good), "--gate-data", str(gate_folder(tmp_path / "odd", extra_class="grey"))
    )
    text = " ".join((odd.stdout + odd.stderr).split())
    assert odd.returncode == DataError.exit_code and "gate class 'grey' is not one" in text, text
    flags = edgewire(*base, str(good), "--gate-data", str(workspace), "--min-accuracy", "90")
    assert (
        flags.returncode == 2
        and "--min-accuracy is a share in 0..1, got 90.0" in flags.stdout + flags.stderr
    )
    listing = edgewire(
        "models", "--to", f"127.0.0.1:{agent.ports['http']}", "--token", "gate-token-123"
    )
    assert listing.returncode == 0, listing.stderr


def test_gate_data_is_compressed_and_a_balanced_subset_fits_the_cap(tmp_path: Path) -> None:
    model = dark_bright(tmp_path / "good.onnx")
    rng = np.random.default_rng(0)  # noise: it barely compresses
    for name, count in (("bright", 40), ("dark", 60)):
        (tmp_path / "g" / name).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (4, 4), dtype=np.uint8)
            Image.fromarray(image, "L").save(tmp_path / "g" / name / f"{i:02}.png")
    notes: list[str] = []
    whole, n = pack_gate_data(tmp_path / "g", model, note=notes.append)
    assert n == 100 and notes == []
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    body, n = pack_gate_data(tmp_path / "g", model, max_bytes=1200, note=notes.append)
    assert len(body) <= 1200 and 10 < n < 100
    assert notes == [f"gate: {n} of 100 test images (the most that fit 1200 bytes)"]
    with np.load(io.BytesIO(body)) as npz:
        assert np.bincount(npz["y"]).tolist() == [n // 2, n // 2]  # the same of each class
    assert pack_gate_data(tmp_path / "g", model, max_bytes=1200)[0] == body  # deterministic
    (tmp_path / "g.npz").write_bytes(body)
    check_gate_file(tmp_path / "g.npz")  # what the agent accepts
