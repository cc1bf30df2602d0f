"""TensorRT engines cached on the agent, and the state of their builds.

An engine is only valid for the model, TensorRT version, precision, GPU and batch range
it was built for, so each gets its own folder ``DATA_DIR/trt/<key>/`` (with a timing
cache beside the engines, which speeds up the next build of any model). The cache
folder is checked writable once at start: jetson-inference rebuilt every engine on
every start when its cache was read-only; here that is one log line and a fallback
folder. ONNX Runtime's TensorRT provider builds the engine inside ``InferenceSession``;
:class:`EngineBuilds` records when that started and how it ended, for
``GET /v2/models/{name}`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRT_PROVIDER = "TensorrtExecutionProvider"
PRECISIONS = ("fp32", "fp16", "int8")
#: TensorRT's scratch memory for a build (1 GiB suits a Jetson Nano's 4 GB).
WORKSPACE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineKey:
    """What an engine was built for; a change in any of them needs a new engine."""

    model_sha256: str
    trt_version: str
    precision: str
    gpu: str
    max_batch: int

    def folder(self) -> str:
        """A folder name that shows the key and cannot collide (a hash of all of it)."""
        digest = hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()[:12]
        gpu = re.sub(r"[^A-Za-z0-9.]+", "-", self.gpu).strip("-")[:40] or "gpu"
        trt = re.sub(r"[^A-Za-z0-9.]+", "-", self.trt_version)[:20]
        return (
            f"{self.model_sha256[:12]}-trt{trt}-{self.precision}-{gpu}-b{self.max_batch}-{digest}"
        )


def tensorrt_version() -> str:
    """The TensorRT library version (the ``tensorrt`` package's), else ORT's as a stand-in."""
    try:
        import importlib

        return str(importlib.import_module("tensorrt").__version__)
    except Exception:  # absent, or present without its shared libraries
        import onnxruntime as ort

        return f"ort{ort.__version__}"


def gpu_identity() -> str:
    """The GPU's name and compute capability ("Orin sm87"), from the CUDA driver API;
    "unknown-gpu" where the driver cannot be asked."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
        if cuda.cuInit(0) != 0:
            return "unknown-gpu"
        device = ctypes.c_int()
        if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
            return "unknown-gpu"
        raw = ctypes.create_string_buffer(100)
        cuda.cuDeviceGetName(raw, 100, device)
        major, minor = ctypes.c_int(), ctypes.c_int()
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
        return f"{raw.value.decode(errors='replace')} sm{major.value}{minor.value}"
    except (OSError, AttributeError):
        return "unknown-gpu"


def usable_cache_root(preferred: Path) -> Path:
    """``preferred`` if an engine can be written there, else a private temp folder, said once."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        probe = preferred / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return preferred
    except OSError as exc:
        fallback = _private_folder(Path(tempfile.gettempdir()) / f"edgewire-trt-{os.getuid()}")
        log.warning(
            "TensorRT engine cache %s is not writable (%s); engines go to %s, "
            "which may not survive a reboot",
            preferred, exc.strerror or exc, fallback,
        )  # fmt: skip
        return fallback


def _private_folder(path: Path) -> Path:
    """``path`` if it is a real folder of ours that no one else can write (made 0700 if
    absent); else a fresh ``mkdtemp`` folder. A shared temp dir lets anyone create that
    name first, as a symlink or an open folder, to plant or read engines."""
    with contextlib.suppress(OSError):  # there already, or not ours to make: checked next
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # what the umask took away
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if (
        st is not None
        and stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and stat.S_IMODE(st.st_mode) == 0o700
    ):
        return path
    log.warning("%s is not a private folder of this user; using a new one instead", path)
    return Path(tempfile.mkdtemp(prefix="edgewire-trt-"))


def trt_provider_options(
    cache: Path,
    *,
    key: EngineKey,
    inputs: dict[str, tuple[int | None, ...]],
    workspace_bytes: int = WORKSPACE_BYTES,
) -> dict[str, str]:
    """ONNX Runtime TensorRT provider options: engine and timing caches in ``cache``,
    the precision, and one optimisation profile for batches 1..max_batch."""
    folder = cache / key.folder()
    folder.mkdir(parents=True, exist_ok=True)

    def shapes(batch: int) -> str:
        return ",".join(
            f"{name}:" + "x".join(str(batch if i == 0 else (d or 1)) for i, d in enumerate(s))
            for name, s in inputs.items()
        )

    options = {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),  # shared: it helps every model's build
        "trt_max_workspace_size": str(workspace_bytes),
        "trt_fp16_enable": "1" if key.precision == "fp16" else "0",
        "trt_int8_enable": "1" if key.precision == "int8" else "0",
    }
    if all(s and s[0] is None for s in inputs.values()):
        options |= {
            "trt_profile_min_shapes": shapes(1),
            "trt_profile_opt_shapes": shapes(key.max_batch),
            "trt_profile_max_shapes": shapes(key.max_batch),
        }
    return options


def has_engine(cache: Path, key: EngineKey) -> bool:
    """Whether an engine for ``key`` was built before (the next load is fast)."""
    folder = cache / key.folder()
    return folder.is_dir() and any(p.suffix == ".engine" for p in folder.iterdir())


_ENGINE_FOLDER = re.compile(r"^([0-9a-f]{12})-trt")


def prune_engines(cache: Path, *, models: set[str], min_age_s: float) -> list[str]:
    """Remove engine folders in ``cache`` of models (sha256) none of ``models`` is, left
    alone for ``min_age_s`` (a build in progress writes into its folder); the names gone."""
    if not cache.is_dir():
        return []
    kept = {sha[:12] for sha in models}
    now, gone = time.time(), []
    for folder in sorted(cache.iterdir()):
        match = _ENGINE_FOLDER.match(folder.name)
        if match is None or match.group(1) in kept or folder.is_symlink() or not folder.is_dir():
            continue
        if now - folder.stat().st_mtime > min_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder.name)
    return gone


@dataclasses.dataclass
class EngineBuild:
    state: str = "pending"  # pending | building | ready | failed
    started: float | None = None
    finished: float | None = None
    key: str | None = None
    cached: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.time()
        elapsed = None if self.started is None else round(end - self.started, 3)
        return {"state": self.state, "started": self.started, "elapsed_s": elapsed,
                "key": self.key, "cached": self.cached, "error": self.error}  # fmt: skip


class EngineBuilds:
    """The latest engine build per model name; thread-safe (builds run in the loader)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds: dict[str, EngineBuild] = {}

    @contextlib.contextmanager
    def building(self, name: str, *, key: str, cached: bool) -> Iterator[None]:
        """Record a build of ``name`` from entry to exit (ready, or failed on an exception)."""
        build = EngineBuild(state="building", started=time.time(), key=key, cached=cached)
        with self._lock:
            self._builds[name] = build
        what = "loading the cached" if cached else "building a"
        log.info("%s: %s TensorRT engine (%s); the previous version serves meanwhile",
                 name, what, key)  # fmt: skip
        try:
            yield
        except BaseException as exc:
            # GET /v2/models/{name} needs no token: its text (paths, ONNX Runtime's
            # message) goes to the log only.
            shown = f"{type(exc).__name__}: engine build failed; see the agent's log"
            with self._lock:
                build.state, build.finished, build.error = "failed", time.time(), shown
            log.warning("%s: TensorRT engine build failed after %.1f s: %s",
                        name, build.finished - (build.started or 0), exc)  # fmt: skip
            raise
        with self._lock:
            build.state, build.finished = "ready", time.time()
        log.info("%s: TensorRT engine ready in %.1f s", name, build.finished - (build.started or 0))

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            build = self._builds.get(name)
            return None if build is None else build.to_dict()

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: b.to_dict() for name, b in self._builds.items()}


#: The builds of this process (one GPU; several agents in one test process share it).
BUILDS = EngineBuilds()


def tensorrt_present(available: list[str]) -> bool:
    """Whether ONNX Runtime offers TensorRT; logs one line when it does not (call once)."""
    if TRT_PROVIDER in available:
        return True
    log.info(
        "TensorRT is not available (onnxruntime offers %s); serving with ONNX Runtime on "
        "those (for engines: onnxruntime-gpu built with TensorRT, as JetPack's)",
        ", ".join(available),
    )
    return False
