"""A full disk on a real, small file system (a 2 MiB tmpfs): a clear DiskFull, old files intact.

Mounting needs root and mount rights (a container may lack them): then these
tests skip and say why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgewire.errors import DiskFull
from tests.helpers import RunningAgent, agent_in_thread, upload
from tests.serve.models import expected, linear_model


@contextmanager
def small_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path, *, leave: int) -> None:
    """Fill ``folder``'s file system, then give ``leave`` bytes back."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: close has nothing left to fail on
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(size - leave, 0))


def _answers_with(agent: RunningAgent, w: np.ndarray, b: np.ndarray) -> None:
    body = {
        "inputs": [{"name": "input_0", "shape": [1, 784], "datatype": "FP32", "data": [1.0] * 784}]
    }
    response = httpx.post(
        f"http://127.0.0.1:{agent.http}/v2/models/mnist/infer", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    out = np.array(response.json()["outputs"][0]["data"]).reshape(1, 10)
    np.testing.assert_allclose(out, expected(np.ones((1, 784)), w, b), atol=1e-5)


def test_an_upload_bigger_than_the_free_space_is_507_and_the_old_version_serves(
    tmp_path: Path,
) -> None:
    small = tmp_path / "small.onnx"
    w, b = linear_model(small, in_features=784, out_features=10, seed=1)
    # 784 × 800 floats: 2.5 MB, more than the whole disk; the upload stream fails.
    huge = tmp_path / "huge.onnx"
    linear_model(huge, in_features=784, out_features=800, seed=2)
    # 784 × 380 floats: 1.2 MB, fits once as the upload but not twice (the store's copy).
    half = tmp_path / "half.onnx"
    linear_model(half, in_features=784, out_features=380, seed=3)
    # A floor far below zero lets every upload past the disk-budget pre-check
    # (tests/agent/test_disk_budget.py covers that), so the write path meets ENOSPC.
    with (
        small_disk(tmp_path / "data") as data_dir,
        agent_in_thread(data_dir, min_free_disk_bytes=-(1 << 40)) as agent,
    ):
        assert upload(agent, small).status_code == 201
        for model in (huge, half):
            answer = upload(agent, model)
            assert answer.status_code == 507, answer.text
            body = answer.json()
            assert body["code"] == "disk_full"
            assert "the disk is full" in body["error"] and str(data_dir) not in body["error"]
            # No upload temp file, no half-staged version; the old version answers.
            assert list((data_dir / "uploads").iterdir()) == []
            model_dir = data_dir / "models" / "mnist"
            assert sorted(p.name for p in model_dir.iterdir()) == ["aliases.json", "versions"]
            assert [p.name for p in (model_dir / "versions").iterdir()] == ["1"]
            _answers_with(agent, w, b)
        listing = httpx.get(f"http://127.0.0.1:{agent.http}/api/models", timeout=30).json()
        assert listing["models"][0]["aliases"] == {"production": 1}

        # `edgewire deploy` says why, in one line, and exits 12.
        done = subprocess.run(
            [sys.executable, "-m", "edgewire.cli", "deploy", str(huge), "--name", "mnist",
             "--to", f"127.0.0.1:{agent.http}"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert done.returncode == 12, done.stdout + done.stderr
        assert "the disk is full" in done.stderr and "internal" not in done.stderr
        assert str(data_dir) not in done.stdout + done.stderr
        _answers_with(agent, w, b)


def test_a_checkpoint_on_a_full_disk_is_disk_full_and_the_old_one_stays(tmp_path: Path) -> None:
    from edgewire.train.checkpoint import load_checkpoint, save_checkpoint
    from edgewire.train.trainer import Trainer, TrainSpec

    spec = TrainSpec(model="lenet5", in_channels=1, height=8, width=8, num_classes=10)
    trainer = Trainer(spec)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 8)
    trainer.train_step(x, y)
    with small_disk(tmp_path / "runs") as runs:
        path = runs / "checkpoint.safetensors"
        save_checkpoint(trainer, path, meta={"round": 1})
        old = path.read_bytes()
        trainer.train_step(x, y)
        _fill(runs, leave=len(old) // 2)  # room for half a checkpoint: it fails part-way
        with pytest.raises(DiskFull, match="cannot write the checkpoint: the disk is full") as info:
            save_checkpoint(trainer, path, meta={"round": 2})
        assert str(runs) not in str(info.value)
        assert path.read_bytes() == old
        assert sorted(p.name for p in runs.iterdir()) == ["checkpoint.safetensors", "filler"]
        _, meta = load_checkpoint(path)
        assert meta == {"round": 1}


def test_an_onnx_export_on_a_full_disk_is_disk_full_and_the_old_file_stays(
    tmp_path: Path,
) -> None:
    from edgewire.train.trainer import Trainer, TrainSpec

    trainer = Trainer(TrainSpec(model="lenet5", in_channels=1, height=8, width=8, num_classes=10))
    with small_disk(tmp_path / "runs") as runs:
        path = runs / "model.onnx"
        trainer.export_onnx(path)
        old = path.read_bytes()
        _fill(runs, leave=len(old) // 2)
        with pytest.raises(DiskFull, match="cannot export the ONNX model: the disk is full"):
            trainer.export_onnx(path)
        assert path.read_bytes() == old
        assert sorted(p.name for p in runs.iterdir()) == ["filler", "model.onnx"]


def test_below_the_free_space_floor_an_upload_is_refused_before_a_byte_is_written(
    tmp_path: Path,
) -> None:
    small = tmp_path / "small.onnx"
    linear_model(small, in_features=784, out_features=10, seed=1)
    # A 2 MiB disk is below the default 64 MiB floor (min_free_disk_bytes).
    with small_disk(tmp_path / "data") as data_dir, agent_in_thread(data_dir) as agent:
        answer = upload(agent, small)
        assert answer.status_code == 507, answer.text
        assert answer.json()["code"] == "disk_full"
        assert "min_free_disk_bytes" in answer.json()["error"]
        uploads = data_dir / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []
        assert not (data_dir / "models" / "mnist" / "versions" / "1").exists()
