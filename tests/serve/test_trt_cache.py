"""The TensorRT engine cache (its key, its folder, the provider's options), the build state
in GET /v2/models/{name} and /metrics, a busy loader that does not stop answers, and the
one line an agent without TensorRT logs. No GPU here: the TensorRT build itself is not run."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgewire.serve.backends.onnx import model_precision
from edgewire.serve.backends.trt_cache import (
    TRT_PROVIDER,
    EngineBuilds,
    EngineKey,
    has_engine,
    trt_provider_options,
    usable_cache_root,
)
from tests.helpers import agent_in_thread, upload
from tests.serve.models import image_model, linear_model

KEY = EngineKey(model_sha256="ab" * 32, trt_version="10.3.0", precision="fp16",
                gpu="Orin sm87", max_batch=32)  # fmt: skip


def test_every_part_of_the_key_gives_its_own_folder() -> None:
    changes: list[dict[str, Any]] = [{"model_sha256": "cd" * 32}, {"trt_version": "8.6.2"}, {"precision": "fp32"},
               {"gpu": "Xavier sm72"}, {"max_batch": 8}]  # fmt: skip
    folders = {KEY.folder()} | {dataclasses.replace(KEY, **c).folder() for c in changes}
    assert len(folders) == 1 + len(changes)
    assert KEY.folder() == dataclasses.replace(KEY).folder()  # stable across runs
    assert KEY.folder().startswith("abababababab-trt10.3.0-fp16-Orin-sm87-b32-")
    assert "/" not in dataclasses.replace(KEY, gpu="a/b\\c").folder()


def test_provider_options_cache_engines_and_profile_the_batch(tmp_path: Path) -> None:
    options = trt_provider_options(tmp_path, key=KEY, inputs={"input_0": (None, 1, 28, 28)})
    folder = tmp_path / KEY.folder()
    assert folder.is_dir()
    assert options == {
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(tmp_path),
        "trt_max_workspace_size": str(1 << 30), "trt_fp16_enable": "1", "trt_int8_enable": "0",
        "trt_profile_min_shapes": "input_0:1x1x28x28",
        "trt_profile_opt_shapes": "input_0:32x1x28x28",
        "trt_profile_max_shapes": "input_0:32x1x28x28",
    }  # fmt: skip
    fixed = trt_provider_options(tmp_path, key=dataclasses.replace(KEY, precision="fp32"),
                                 inputs={"x": (1, 4)})  # fmt: skip
    assert "trt_profile_min_shapes" not in fixed and fixed["trt_fp16_enable"] == "0"
    assert not has_engine(tmp_path, KEY)
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_0.engine").write_bytes(b"x")
    assert has_engine(tmp_path, KEY)


def test_an_unwritable_cache_says_so_once_and_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")  # a folder cannot be made under a file, even by root
    with caplog.at_level(logging.WARNING, "edgewire.serve.backends.trt_cache"):
        root = usable_cache_root(blocker / "trt")
    assert root != blocker / "trt" and root.is_dir()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "is not writable" in lines[0] and str(root) in lines[0]
    assert usable_cache_root(tmp_path / "ok") == tmp_path / "ok"


@pytest.mark.parametrize("planted", ["symlink", "open folder"])
def test_the_fallback_is_never_a_folder_someone_else_planted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    shared = tmp_path / "tmp"  # stands for /tmp, where anyone may create the name first
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    name = shared / f"edgewire-trt-{os.getuid()}"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if planted == "symlink":
        name.symlink_to(theirs)
    else:
        name.mkdir(mode=0o777)
        name.chmod(0o777)
    blocker = tmp_path / "file"
    blocker.write_text("")
    root = usable_cache_root(blocker / "trt")
    assert root.parent == shared and root != name and not root.is_symlink()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and root.stat().st_uid == os.getuid()
    assert not list(theirs.iterdir())
    # A folder it made itself is private, and used again next time.
    name.unlink() if planted == "symlink" else name.rmdir()
    first = usable_cache_root(blocker / "trt")
    assert first == name and stat.S_IMODE(name.stat().st_mode) == 0o700
    assert usable_cache_root(blocker / "trt") == name


def test_precision_is_read_from_the_model(tmp_path: Path) -> None:
    linear_model(tmp_path / "m.onnx")
    assert model_precision(tmp_path / "m.onnx") == "fp32"


def test_build_states() -> None:
    builds = EngineBuilds()
    assert builds.get("m") is None
    with builds.building("m", key="k", cached=False):
        assert builds.get("m")["state"] == "building"  # type: ignore[index]
    done = builds.get("m")
    assert done is not None and done["state"] == "ready" and done["elapsed_s"] >= 0
    with pytest.raises(RuntimeError), builds.building("m", key="k", cached=True):
        raise RuntimeError("out of memory")
    failed = builds.get("m")
    assert failed is not None and failed["state"] == "failed"
    assert failed["error"] == "RuntimeError: engine build failed; see the agent's log"


def test_a_failed_build_shows_no_path_to_an_unauthenticated_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgewire.serve.backends.trt_cache import BUILDS

    linear_model(tmp_path / "m.onnx")
    secret = "/srv/private/models/m.onnx: TensorRT input node not supported"
    with agent_in_thread(tmp_path / "d") as agent, caplog.at_level(logging.WARNING):
        assert upload(agent, tmp_path / "m.onnx", name="leaky").status_code == 201

        def build() -> None:
            with BUILDS.building("leaky", key="k", cached=False):
                raise RuntimeError(secret)

        with pytest.raises(RuntimeError):
            agent.agent.serving.loader.submit(build).result(10)
        meta = httpx.get(f"http://127.0.0.1:{agent.http}/v2/models/leaky", timeout=10)
    engine = meta.json()["edgewire"]["engine"]
    assert engine["error"] == "RuntimeError: engine build failed; see the agent's log"
    assert "/srv/private" not in meta.text
    assert any(secret in r.getMessage() for r in caplog.records)  # the log has it all


@pytest.mark.skipif(TRT_PROVIDER in ort.get_available_providers(), reason="TensorRT present")
def test_an_agent_without_tensorrt_says_so_once_and_serves_on_the_cpu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    linear_model(tmp_path / "a.onnx")
    with caplog.at_level(logging.INFO), agent_in_thread(tmp_path / "d") as agent:
        for name in ("a", "b"):
            assert upload(agent, tmp_path / "a.onnx", name=name).status_code == 201
        assert agent.agent.serving.host.get("a").providers == ["CPUExecutionProvider"]
    said = [r for r in caplog.records if "TensorRT is not available" in r.getMessage()]
    assert len(said) == 1
    assert not (tmp_path / "d" / "trt").exists()


def test_build_state_shows_in_metadata_and_metrics_and_a_busy_loader_keeps_answers(
    tmp_path: Path,
) -> None:
    from edgewire.serve.backends.trt_cache import BUILDS

    image_model(tmp_path / "v1.onnx", seed=1)
    image_model(tmp_path / "v2.onnx", seed=2)
    body = {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 1, 28, 28],
                        "data": np.linspace(0, 1, 784).tolist()}]}  # fmt: skip
    with agent_in_thread(tmp_path / "d", max_queue_delay_ms=1.0) as agent:
        base = f"http://127.0.0.1:{agent.http}"
        assert upload(agent, tmp_path / "v1.onnx", name="engine-test").status_code == 201
        first = httpx.post(f"{base}/v2/models/engine-test/infer", json=body, timeout=10).json()
        # The loader thread is where a TensorRT build runs: hold it, as a build would.
        release, held = threading.Event(), threading.Event()

        def build() -> None:
            with BUILDS.building("engine-test", key="test-key", cached=False):
                held.set()
                release.wait(30)

        pending = agent.agent.serving.loader.submit(build)
        assert held.wait(10)
        meta = httpx.get(f"{base}/v2/models/engine-test", timeout=10).json()
        assert meta["edgewire"]["engine"]["state"] == "building"
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'edgewire_engine_building{model="engine-test"} 1.0' in metrics
        result: dict[str, httpx.Response] = {}
        deploy = threading.Thread(
            target=lambda: result.update(r=upload(agent, tmp_path / "v2.onnx", name="engine-test"))
        )
        deploy.start()
        try:
            store = agent.agent.serving.store
            while len(store.versions("engine-test")) < 2 and deploy.is_alive():
                deploy.join(0.02)  # v2 stored: its load is queued behind the "build"
            assert len(store.versions("engine-test")) == 2
            # v2 waits for the loader; v1 keeps answering meanwhile, with its own scores.
            for _ in range(5):
                answer = httpx.post(f"{base}/v2/models/engine-test/infer", json=body, timeout=10)
                assert answer.status_code == 200 and answer.json() == first
        finally:
            release.set()
            deploy.join(60)
            pending.result(10)
        assert result["r"].status_code == 201, result["r"].text
        after = httpx.post(f"{base}/v2/models/engine-test/infer", json=body, timeout=10).json()
        assert after["model_version"] != first["model_version"]
        assert after["outputs"][0]["data"] != first["outputs"][0]["data"]
        meta = httpx.get(f"{base}/v2/models/engine-test", timeout=10).json()
        assert meta["edgewire"]["engine"]["state"] == "ready"
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'edgewire_engine_building{model="engine-test"} 0.0' in metrics


def test_engines_of_models_no_version_has_are_pruned_with_the_versions(tmp_path: Path) -> None:
    import asyncio
    import hashlib
    import time

    linear_model(tmp_path / "m.onnx")
    sha = hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()
    with agent_in_thread(tmp_path / "d") as agent:
        assert upload(agent, tmp_path / "m.onnx", name="m").status_code == 201
        cache = agent.config.data_dir / "trt"
        stored = cache / dataclasses.replace(KEY, model_sha256=sha).folder()
        gone = cache / KEY.folder()  # a model no version has (its versions were deleted)
        fresh = cache / dataclasses.replace(KEY, model_sha256="cd" * 32).folder()
        for folder in (stored, gone, fresh):
            folder.mkdir(parents=True)
            (folder / "TensorrtExecutionProvider_TRTKernel_graph_0.engine").write_bytes(b"x")
        (cache / "TensorrtExecutionProvider_cache_sm87.timing").write_bytes(b"t")
        old = time.time() - 2 * 3600
        for folder in (stored, gone):
            os.utime(folder, (old, old))
        asyncio.run_coroutine_threadsafe(agent.agent.serving.prune(), agent.loop).result(30)
    assert stored.is_dir() and not gone.exists()
    assert fresh.is_dir()  # it may be a build in progress: left for the next prune
    assert (cache / "TensorrtExecutionProvider_cache_sm87.timing").is_file()
