"""``edgewire demo`` keeps nothing in the checkout unless asked: a temporary folder by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgewire.cli import demo as demo_cli
from tests.cli.cli_run import run_cli


@pytest.fixture
def fake_demo(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The demo's body replaced by one that writes a file where the agent's data go."""
    used: list[Path] = []

    async def fake(*, data_dir: Path, **_: Any) -> None:
        used.append(data_dir)
        (data_dir / "models").mkdir(parents=True, exist_ok=True)
        (data_dir / "models" / "model.onnx").write_bytes(b"x" * 1000)

    monkeypatch.setattr(demo_cli, "_demo", fake)
    return used


def run_demo(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    return run_cli(capsys, monkeypatch, "demo", *args)


def test_by_default_the_data_go_to_a_temporary_folder_that_is_removed(
    fake_demo: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = run_demo(capsys, monkeypatch)
    assert code == 0, out
    (used,) = fake_demo
    assert not used.exists()
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    assert "kept" not in out


@pytest.mark.parametrize("flag", ["--keep", "--data-dir"])
def test_keep_keeps_them_and_says_where(
    fake_demo: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = run_demo(capsys, monkeypatch, flag, "kept-demo")
    assert code == 0, out
    where = (tmp_path / "kept-demo").resolve()
    assert fake_demo == [where]
    assert (where / "models" / "model.onnx").is_file()
    assert f"kept in {where}" in out


def test_the_temporary_folder_goes_on_error_too(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    used: list[Path] = []

    async def failing(*, data_dir: Path, **_: Any) -> None:
        used.append(data_dir)
        (data_dir / "partial").write_text("x")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_cli, "_demo", failing)
    monkeypatch.chdir(tmp_path)
    code, out = run_demo(capsys, monkeypatch)
    assert code == 130, out
    assert used and not used[0].exists()
