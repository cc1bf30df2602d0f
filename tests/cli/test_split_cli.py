"""``edgewire split build | profile | suggest`` and ``train run --checkpoint``, from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgewire.split.profile import Candidate, Profile
from tests.cli.cli_run import run_cli

FAST = ("--limit", "200", "--head-epochs", "1", "--kd-epochs", "1", "--batch-size", "60")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet_small trained briefly on mnistm32, saved with the data's name as train run does."""
    from edgewire.data.datasets import load_dataset
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.trainer import Trainer, TrainSpec

    data = load_dataset("mnistm32", limit=200)
    trainer = Trainer(TrainSpec(model="resnet_small", in_channels=3, height=32, width=32,
                                num_classes=10, lr=3e-3, device="cpu"))  # fmt: skip
    for i in range(0, len(data), 50):
        trainer.train_step(data.x[i : i + 50], data.y[i : i + 50])
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_checkpoint(trainer, path, meta={"data": "mnistm32"})
    return path


def error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: "), out
    return lines[0]


def test_train_run_saves_a_checkpoint_that_split_build_reads(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from edgewire.train.checkpoint import load_checkpoint

    ckpt = tmp_path / "teacher.safetensors"
    code, out = run_cli(capsys, monkeypatch, "train", "run", "--data", "mnistm32", "--limit",
                        "100", "--model", "resnet_small", "--epochs", "1", "--output",
                        str(tmp_path / "model.onnx"), "--checkpoint", str(ckpt))  # fmt: skip
    assert code == 0, out
    assert f"checkpoint: {ckpt}" in out
    trainer, meta = load_checkpoint(ckpt)
    assert trainer.spec.model == "resnet_small"
    assert meta["data"] == "mnistm32" and meta["limit"] == 100


def test_split_build_writes_the_split_and_reports_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, checkpoint: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    out_dir = tmp_path / "split"
    code, out = run_cli(capsys, monkeypatch, "split", "build", str(checkpoint), "--at", "stage2",
                        "--out", str(out_dir), *FAST)  # fmt: skip
    assert code == 0, out
    assert "head distillation" in out and "KD fine-tuning" in out
    assert "student accuracy (held-out)" in out and "4×8×8 uint8" in out
    assert f"head: {out_dir / 'head.onnx'}" in out
    assert f"summary: {out_dir / 'split.json'}" in out
    summary = json.loads((out_dir / "split.json").read_text())
    assert summary["at"] == "stage2" and summary["bytes_per_sample"]["raw"] == 256
    assert {p.name for p in out_dir.iterdir()} == {"head.onnx", "tail.onnx", "full.onnx",
                                                   "split.json"}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "exit_code", "match"),
    [
        (("--at", "stage9"), 2, "cannot split at 'stage9'; candidates: stem, stage1, stage2"),
        (("--at", "stage2", "--quant", "int4"), 2, "unknown --quant 'int4'; the one choice"),
        (("--at", "stage2", "--bottleneck-channels", "0"), 2, "bottleneck channels must be in"),
        (("--at", "stage2", "--data", "mnistm64"), 4, "the teacher takes 3×32×32"),
    ],
)
def test_split_build_refuses_bad_input_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, checkpoint: Path,
    tmp_path: Path, args: tuple[str, ...], exit_code: int, match: str,
) -> None:  # fmt: skip
    code, out = run_cli(capsys, monkeypatch, "split", "build", str(checkpoint), "--out",
                        str(tmp_path / "out"), "--limit", "20", *args)  # fmt: skip
    assert code == exit_code
    assert match in error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.safetensors"
    for command in (("build", str(missing), "--at", "stage2", "--out", str(tmp_path / "o")),
                    ("profile", str(missing), "--out", str(tmp_path / "p.json"))):  # fmt: skip
        code, out = run_cli(capsys, monkeypatch, "split", *command)
        assert code == 10
        assert "no checkpoint file or run folder at" in error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_split_profile_refuses_an_unknown_cut_before_measuring(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, checkpoint: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    code, out = run_cli(capsys, monkeypatch, "split", "profile", str(checkpoint), "--at", "stage2",
                        "--at", "fc", "--out", str(tmp_path / "p.json"))  # fmt: skip
    assert code == 2
    assert "cannot split at 'fc'; candidates: stem, stage1" in error_line(out)
    assert list(tmp_path.iterdir()) == []


def test_split_profile_then_suggest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, checkpoint: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, monkeypatch, "split", "profile", str(checkpoint), "--at", "stem",
                        "--at", "stage2", "--repeats", "2")  # fmt: skip
    assert code == 0, out
    profile = Profile.load(tmp_path / "profile.json")
    assert [c.name for c in profile.candidates] == ["stem", "stage2", "local", "offload"]
    for name in ("stem", "stage2", "local", "offload", "bytes up", "head ms"):
        assert name in out
    assert "profile: profile.json" in out

    code, out = run_cli(capsys, monkeypatch, "split", "suggest", "--bandwidth", "0.001",
                        "--rtt", "100")  # fmt: skip
    assert code == 0, out
    assert "pick: local" in out
    assert out.count("predicted") >= 2  # the column and the pick


def test_suggest_prints_every_candidate_and_the_pick(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = Profile(
        model="m", input_shape=(3, 32, 32), classes=10, channels=4, threads=1, repeats=1,
        candidates=(
            Candidate(name="stage2", kind="split", head_ms=1.0, tail_ms=4.0, request_bytes=400,
                      response_bytes=200, bottleneck_shape=(4, 8, 8)),
            Candidate(name="local", kind="local", head_ms=5.0, tail_ms=0.0, request_bytes=0,
                      response_bytes=0),
            Candidate(name="offload", kind="offload", head_ms=0.0, tail_ms=5.0,
                      request_bytes=3_200, response_bytes=200),
        ),
    ).save(tmp_path / "p.json")  # fmt: skip
    base = ("split", "suggest", "--profile", str(path), "--rtt", "2", "--device-slowdown", "10")
    # The default overheads: offload 10.4 + a hop (1) + the link's (1) + a call (0.3).
    code, out = run_cli(capsys, monkeypatch, *base, "--bandwidth", "8")
    assert code == 0, out
    assert "pick: offload (predicted 12.70 ms)" in out
    args = (*base, "--hop-ms", "0", "--call-ms", "0", "--link-ms", "0")
    code, out = run_cli(capsys, monkeypatch, *args, "--bandwidth", "8")
    # stage2: 10 + 2 + 0.6 + 4 = 16.6; local: 50; offload: 2 + 3.4 + 5 = 10.4
    assert code == 0, out
    assert "pick: offload (predicted 10.40 ms)" in out
    assert "16.60" in out and "50.00" in out
    code, out = run_cli(capsys, monkeypatch, *args, "--bandwidth", "0.5")
    # stage2: 10 + 2 + 9.6 + 4 = 25.6; local: 50; offload: 2 + 54.4 + 5 = 61.4
    assert "pick: stage2 (predicted 25.60 ms)" in out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--bandwidth", "0", "--rtt", "5"), "bandwidth must be a positive number of Mbit/s"),
        (("--bandwidth", "-2", "--rtt", "5"), "got -2.0"),
        (
            ("--bandwidth", "fast", "--rtt", "5"),
            "--bandwidth must be a number of Mbit/s, got 'fast'",
        ),
        (("--bandwidth", "10", "--rtt", "-5"), "rtt must be"),
        (("--bandwidth", "10", "--rtt", "5", "--profile", "none.json"), "no profile at"),
    ],
)
def test_suggest_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    args: tuple[str, ...], match: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, monkeypatch, "split", "suggest", *args)
    assert code == 2
    assert match in error_line(out)
