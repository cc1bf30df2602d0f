"""Commands: an argv, no shell, a timeout that kills the process group, output capped."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from edgewire.actions.commands import CommandResult, run_command


def test_an_argv_runs_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = run_command(["/bin/echo", "$HOME", ";", "touch", str(marker)], timeout_s=5)
    assert result.returncode == 0 and not result.timed_out
    assert result.output == f"$HOME ; touch {marker}\n"  # no shell expanded or ran anything
    assert not marker.exists()


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; child = subprocess.Popen(['sleep', '30']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(30)"
    )
    result = run_command([sys.executable, "-c", code], timeout_s=2.0)
    assert result.timed_out and result.returncode is None
    assert result.error == "timed out after 2 s"
    child = int(pid_file.read_text())
    # Killed with its group; it lingers at most as a zombie (its parent died first).
    for _ in range(100):
        try:
            state = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the command's child {child} outlived its timeout")


def test_output_is_capped_and_the_exit_status_kept() -> None:
    code = "import sys; sys.stdout.write('x' * 100000); sys.exit(3)"
    result = run_command([sys.executable, "-c", code], timeout_s=10, max_output=100)
    assert result.returncode == 3 and result.output == "x" * 100


def test_a_missing_program_is_one_line() -> None:
    result = run_command(["/no/such/program"], timeout_s=1)
    assert result.returncode is None
    assert result.error == "cannot run '/no/such/program': No such file or directory"


def test_the_environment_is_what_is_given() -> None:
    code = "import os; print(sorted(k for k in os.environ if k.startswith('EDGEWIRE')))"
    env = {"EDGEWIRE_CLASS": "cat", "PATH": "/usr/bin:/bin"}
    result = run_command([sys.executable, "-c", code], timeout_s=10, env=env)
    assert result.output.strip() == "['EDGEWIRE_CLASS']"


def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie waiting for its new parent counts as ended)."""
    for _ in range(250):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def test_a_child_left_holding_the_output_does_not_outlive_the_command() -> None:
    # The shell exits at once; its background sleep keeps the pipe open and would keep
    # the caller waiting 30 s if the group were not killed with its leader.
    box: dict[str, CommandResult] = {}
    argv = ["/bin/sh", "-c", "sleep 30 & echo $!; echo hi"]
    worker = threading.Thread(target=lambda: box.update(r=run_command(argv, timeout_s=1)))
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "run_command waited on the background child"
    result = box["r"]
    pid_line, hi = result.output.split()
    assert hi == "hi" and result.returncode == 0
    assert _gone(int(pid_line)), f"the background child {pid_line} outlived the command"
