"""Atomic, power-loss safe writes and streamed hashing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgewire.errors import DiskFull
from edgewire.fsutil import atomic_write, atomic_write_bytes, fsync_dir, sha256_file


def test_atomic_write_bytes_creates_then_replaces(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    atomic_write_bytes(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_the_temp_file_is_hidden_and_in_the_same_directory(tmp_path: Path) -> None:
    path = tmp_path / "ckpt"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert not path.exists()  # nothing visible at the target until the rename
        tmp.write_bytes(b"data")

    atomic_write(path, write)
    (tmp,) = seen
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".ckpt.tmp-")
    assert not tmp.exists()
    assert path.read_bytes() == b"data"


def test_temp_names_are_unique(tmp_path: Path) -> None:
    names: set[str] = set()

    def write(tmp: Path) -> None:
        names.add(tmp.name)
        tmp.write_bytes(b"x")

    for _ in range(20):
        atomic_write(tmp_path / "f", write)
    assert len(names) == 20


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failing_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, error: BaseException
) -> None:
    path = tmp_path / "weights"
    path.write_bytes(b"old and good")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half of the n")
        raise error

    # A full disk comes out as DiskFull (naming no path); anything else as it was.
    with pytest.raises(DiskFull if isinstance(error, OSError) else type(error)):
        atomic_write(path, write)
    assert path.read_bytes() == b"old and good"
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_write_that_fails_before_creating_the_temp_file(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        raise ValueError("nothing to write")

    with pytest.raises(ValueError, match="nothing to write"):
        atomic_write(tmp_path / "f", write)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "missing" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgewire.fsutil import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new but only half")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

    atomic_write(Path(sys.argv[1]), write)
    """
)


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"old model")
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"writing\n"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert path.read_bytes() == b"old model"


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_sha256_file_streams_large_and_empty_files(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)  # several read chunks and a short tail
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_fsutil_imports_no_heavy_modules() -> None:
    code = "import sys, edgewire.fsutil; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
