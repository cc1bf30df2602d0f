"""Checkpoints: an exact resume, refusal of every damaged or foreign file, disk full."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgewire.errors import CheckpointError
from edgewire.train.checkpoint import load_checkpoint, save_checkpoint
from edgewire.train.trainer import Trainer, TrainSpec

DIGITS = {"in_channels": 1, "height": 8, "width": 8, "num_classes": 10}


@pytest.fixture(scope="module")
def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """Ten batches of 16 real 8×8 digits (scikit-learn), as uint8 N×1×8×8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:160] * 15).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = digits.target[:160].astype(np.int64)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 160, 16)]


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for index, entry in oa["state"].items():
        assert entry.keys() == ob["state"][index].keys()
        for key, value in entry.items():
            assert torch.equal(value, ob["state"][index][key]), (index, key)
    assert a.steps == b.steps


@pytest.mark.parametrize(
    ("model", "optimizer"),
    [("mnist_cnn", "adam"), ("lenet5", "sgd"), ("resnet_small", "adam")],
)
def test_resume_continues_exactly_like_an_uninterrupted_run(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]], model: str, optimizer: str
) -> None:
    spec = TrainSpec(model=model, optimizer=optimizer, lr=0.01, seed=3, **DIGITS)
    k = 4
    straight = Trainer(spec)
    straight_losses = [straight.train_step(x, y).loss for x, y in batches]

    first = Trainer(spec)
    for x, y in batches[:k]:
        first.train_step(x, y)
    path = tmp_path / "run.ckpt"
    save_checkpoint(first, path, meta={"epoch": 0, "next_batch": k})
    del first
    torch.rand(100)  # the process draws random numbers in between; the resume must not care

    resumed, meta = load_checkpoint(path)
    assert meta == {"epoch": 0, "next_batch": k}
    assert resumed.spec == spec
    assert resumed.steps == k
    resumed_losses = [resumed.train_step(x, y).loss for x, y in batches[k:]]
    assert resumed_losses == straight_losses[k:]
    _assert_same_state(resumed, straight)


def test_checkpoint_before_any_step_loads(tmp_path: Path) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    save_checkpoint(trainer, tmp_path / "c", meta={})
    loaded, meta = load_checkpoint(tmp_path / "c", device="cpu")
    assert meta == {}
    _assert_same_state(loaded, trainer)


def test_file_is_plain_safetensors_with_the_documented_layout(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    trainer.train_step(*batches[0])
    save_checkpoint(trainer, tmp_path / "c", meta={"note": "x"})
    with safe_open(str(tmp_path / "c"), framework="pt") as f:
        header = json.loads(f.metadata()["edgewire"])
        keys = set(f.keys())
        step = f.get_tensor("optim.0.step")
    assert header["format"] == 1
    assert header["spec"] == trainer.spec.to_dict()
    assert header["steps"] == 1 and header["meta"] == {"note": "x"}
    assert "params" not in header["param_groups"][0]
    assert header["param_groups"][0]["lr"] == trainer.spec.lr
    assert {f"model.{n}" for n in trainer.model.state_dict()} <= keys
    assert {"optim.0.exp_avg", "optim.0.exp_avg_sq", "rng.cpu"} <= keys
    assert step.numel() == 1 and float(step) == 1.0


def test_saving_again_replaces_the_file_and_leaves_no_temp_files(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    path = tmp_path / "c"
    save_checkpoint(trainer, path, meta={"round": 1})
    trainer.train_step(*batches[0])
    save_checkpoint(trainer, path, meta={"round": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    loaded, meta = load_checkpoint(path)
    assert meta == {"round": 2} and loaded.steps == 1


# -- files that must be refused ------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    trainer.train_step(*batches[0])
    save_checkpoint(trainer, tmp_path / "good", meta={})
    return (tmp_path / "good").read_bytes()


def _load_bytes(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing")


def test_a_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 60, 0.5, -1])
def test_truncated_file(tmp_path: Path, good: bytes, keep: float) -> None:
    cut = int(len(good) * keep) if isinstance(keep, float) else keep % len(good)
    assert "not a valid checkpoint" in _load_bytes(tmp_path, good[:cut])


def test_random_bytes(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).bytes(4096)
    assert "not a valid checkpoint" in _load_bytes(tmp_path, noise)


def test_pickle_files_are_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    # Unpickling this would create the marker file.
    payload = pickle.dumps(_Exploit(str(marker)))
    assert "not a valid checkpoint" in _load_bytes(tmp_path, payload)
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    torch.save(trainer.model.state_dict(), tmp_path / "torch.pt")
    assert "not a valid checkpoint" in _load_bytes(tmp_path, (tmp_path / "torch.pt").read_bytes())
    assert not marker.exists()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))


def test_flipped_bit_in_the_weights_fails_the_checksum(tmp_path: Path, good: bytes) -> None:
    damaged = bytearray(good)
    damaged[-100] ^= 0x01
    assert "checksum" in _load_bytes(tmp_path, bytes(damaged))


def test_flipped_byte_in_the_header(tmp_path: Path, good: bytes) -> None:
    damaged = bytearray(good)
    damaged[9] ^= 0x20  # inside the JSON header
    _load_bytes(tmp_path, bytes(damaged))


def test_safetensors_file_from_elsewhere(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other"))
    assert "not an edgewire checkpoint" in _load_bytes(tmp_path, (tmp_path / "other").read_bytes())


def _relabel(path: Path, **spec_changes: object) -> None:
    """Rewrite a checkpoint's spec, keeping its tensors: a file for another model."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header = json.loads(metadata["edgewire"])
    header["spec"].update(spec_changes)
    metadata["edgewire"] = json.dumps(header)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"num_classes": 3}, "does not match model 'lenet5'"),
        ({"height": 28, "width": 28}, "does not match model 'lenet5'"),
        ({"model": "mnist_cnn"}, "does not match model 'mnist_cnn'"),
        ({"optimizer": "sgd"}, "which a 'sgd' optimizer does not keep"),
        ({"lr": -1}, "bad train spec"),
    ],
)
def test_tensors_that_do_not_fit_the_spec(
    tmp_path: Path, good: bytes, changes: dict[str, object], expected: str
) -> None:
    path = tmp_path / "c"
    path.write_bytes(good)
    _relabel(path, **changes)
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_bad_device_override(tmp_path: Path, good: bytes) -> None:
    (tmp_path / "c").write_bytes(good)
    with pytest.raises(CheckpointError, match="'tpu'"):
        load_checkpoint(tmp_path / "c", device="tpu")


# -- failures while saving -----------------------------------------------------------


def test_meta_that_is_not_json(tmp_path: Path) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(trainer, tmp_path / "c", meta={"when": object()})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(trainer, tmp_path / "c", meta={"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_missing_directory(tmp_path: Path) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    path = tmp_path / "no" / "such" / "dir" / "c"
    with pytest.raises(CheckpointError, match="cannot write checkpoint") as info:
        save_checkpoint(trainer, path, meta={})
    assert str(path) in str(info.value)


_DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from edgewire.errors import CheckpointError
    from edgewire.train.checkpoint import load_checkpoint, save_checkpoint

    path = Path(sys.argv[1])
    trainer, _ = load_checkpoint(path)
    rng = np.random.default_rng(0)
    trainer.train_step(rng.integers(0, 256, (8, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, 8))
    # The kernel now refuses to grow any file past half a checkpoint: write() fails
    # with EFBIG, as it fails with ENOSPC on a full disk, part-way through the file.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = path.stat().st_size // 2
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        save_checkpoint(trainer, path, meta={"round": 2})
    except CheckpointError as exc:
        print("CheckpointError:", exc)
        sys.exit(0)
    sys.exit(1)
    """
)


def test_disk_full_while_saving_keeps_the_old_checkpoint(
    tmp_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    trainer = Trainer(TrainSpec(model="lenet5", **DIGITS))
    trainer.train_step(*batches[0])
    path = tmp_path / "run.ckpt"
    save_checkpoint(trainer, path, meta={"round": 1})
    old = path.read_bytes()

    script = tmp_path / "fill.py"
    script.write_text(_DISK_FULL_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cannot write checkpoint" in done.stdout
    assert str(path) in done.stdout
    assert "File too large" in done.stdout

    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fill.py", "run.ckpt"]
    loaded, meta = load_checkpoint(path)
    assert meta == {"round": 1}
    _assert_same_state(loaded, trainer)
