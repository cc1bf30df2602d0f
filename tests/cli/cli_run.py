"""Running ``edgewire`` in-process, as a user would from a shell, for CLI tests."""

from __future__ import annotations

import sys

import pytest

from edgewire.cli.main import main


def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``edgewire ARGS`` at 200 columns."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["edgewire", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out + err
