"""`edgewire delete` against a real agent process: what it removes and its exit codes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.e2e.conftest import EDGEWIRE, StartAgent
from tests.serve.models import linear_model


def edgewire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEWIRE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_delete_versions_aliases_and_models_and_its_exit_codes(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    agent = start_agent(tmp_path / "a", "--token", "correct-horse-battery")
    to = f"127.0.0.1:{agent.ports['http']}"
    auth = ("--token", "correct-horse-battery")
    model = tmp_path / "digits.onnx"
    linear_model(model, in_features=784, out_features=10, seed=4)
    for alias in ("staging", "production"):
        done = edgewire(
            "deploy", str(model), "--to", to, "--name", "mnist", "--alias", alias, *auth
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def delete(*args: str, token: tuple[str, ...] = auth) -> subprocess.CompletedProcess[str]:
        return edgewire("delete", "mnist", "--to", to, *token, *args)

    refused = delete("--version", "2")  # served and aliased
    assert refused.returncode == 11 and "being served" in refused.stderr, refused.stderr
    assert delete("--version", "2", token=("--token", "wrong")).returncode == 9
    assert delete("--version", "9").returncode == 11  # no such version
    assert delete("--version", "1", "--alias", "staging").returncode == 2
    whole = delete()  # a whole model needs --force
    assert whole.returncode == 2 and "--force" in whole.stderr

    gone = delete("--alias", "staging")
    assert gone.returncode == 0 and "removed alias staging of mnist (was version 1)" in gone.stdout
    forced = delete("--version", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "deleted mnist version 2; version 1 serves instead" in forced.stdout
    done = delete("--force")
    assert done.returncode == 0 and "deleted model mnist (versions 1)" in done.stdout
    assert delete("--force").returncode == 11  # nothing left

    # The native port by mistake: a hint at the HTTP port, exit 7.
    wrong = edgewire("models", "--to", f"127.0.0.1:{agent.ports['native']}", *auth)
    assert wrong.returncode == 7 and "HTTP port" in wrong.stderr, wrong.stderr
