"""ONNX Runtime sessions: providers, exact outputs, input checks, fail-safe swaps."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import ConfigError, DataError, ModelError
from edgewire.serve.backends.onnx import available_providers, pick_providers
from edgewire.serve.runtime import (
    LoadedModel,
    ModelHost,
    RuntimeOptions,
    load_model,
)
from edgewire.serve.store import ModelStore, ModelVersion
from tests.serve.models import (
    INPUT,
    OUTPUT,
    broken_model,
    expected,
    linear_model,
    model_with_external_data,
)

OPTIONS = RuntimeOptions(intra_op_threads=1, warmup_batch_sizes=(1, 4), max_batch_size=16)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown(wait=True)


def _add_linear(
    store: ModelStore, tmp_path: Path, *, seed: int = 0
) -> tuple[ModelVersion, np.ndarray, np.ndarray]:
    path = tmp_path / f"linear-{seed}.onnx"
    w, b = linear_model(path, seed=seed)
    return store.add("mnist", path), w, b


def _add_broken(store: ModelStore, tmp_path: Path) -> ModelVersion:
    path = tmp_path / "broken.onnx"
    broken_model(path)
    return store.add("mnist", path)


def _x(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 784), dtype=np.float32)


# -- providers -------------------------------------------------------------------------


def test_providers_on_this_machine_are_cpu_only() -> None:
    assert "CPUExecutionProvider" in available_providers()
    assert pick_providers() == ["CPUExecutionProvider"]
    assert pick_providers(["cpu"]) == ["CPUExecutionProvider"]
    assert pick_providers(["CPUExecutionProvider", "cpu"]) == ["CPUExecutionProvider"]


def test_unknown_provider_is_a_config_error_listing_the_available_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"'NoSuchExecutionProvider' is not available; available: .*CPUExecutionProvider",
    ):
        pick_providers(["NoSuchExecutionProvider"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"intra_op_threads": -1},
        {"max_batch_size": 0},
        {"warmup_batch_sizes": (0,)},
        {"warmup_batch_sizes": (1, 128), "max_batch_size": 64},
    ],
)
def test_bad_runtime_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RuntimeOptions(**kwargs)  # type: ignore[arg-type]


# -- load and run ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7])
def test_the_linear_model_answers_exactly(store: ModelStore, tmp_path: Path, batch: int) -> None:
    version, w, b = _add_linear(store, tmp_path)
    model = load_model(version, OPTIONS)
    x = _x(batch)
    out = model.run({INPUT: x})
    assert list(out) == [OUTPUT]
    assert out[OUTPUT].shape == (batch, 10) and out[OUTPUT].dtype == np.float32
    np.testing.assert_allclose(out[OUTPUT], expected(x, w, b), atol=1e-5, rtol=0)


def test_loaded_model_describes_itself(store: ModelStore, tmp_path: Path) -> None:
    version, _, _ = _add_linear(store, tmp_path)
    model = load_model(version, OPTIONS)
    assert model.version == version
    assert model.input_names == [INPUT] and model.output_names == [OUTPUT]
    assert model.inputs == version.inputs and model.outputs == version.outputs
    assert model.providers == ["CPUExecutionProvider"]
    assert model.batch_dim_ok()
    assert model.max_batch_size == 16


def test_external_data_models_load_from_the_store(store: ModelStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    w, b = model_with_external_data(src / "ext.onnx", "w.bin")
    version = store.add("ext", src / "ext.onnx")
    (src / "w.bin").unlink()  # the stored copy is what loads
    x = _x(3)
    out = load_model(version, OPTIONS).run({INPUT: x})
    np.testing.assert_allclose(out[OUTPUT], expected(x, w, b), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_x(2).astype(np.float64), "expected dtype float32, got float64"),
        (_x(2)[0], r"expected shape \[\?, 784\], got \[784\]"),
        (_x(2)[:, :, None], r"expected shape \[\?, 784\], got \[2, 784, 1\]"),
        (_x(2)[:, :783], r"expected shape \[\?, 784\], got \[2, 783\]"),
        (_x(17), "batch of 17 is over the maximum of 16"),
        ([[0.0] * 784], "must be a numpy array, got list"),
    ],
)
def test_inputs_that_do_not_fit_are_data_errors(
    store: ModelStore, tmp_path: Path, value: object, message: str
) -> None:
    model = load_model(_add_linear(store, tmp_path)[0], OPTIONS)
    with pytest.raises(DataError, match=message):
        model.run({INPUT: value})  # type: ignore[dict-item]


def test_missing_and_unknown_input_names_are_data_errors(store: ModelStore, tmp_path: Path) -> None:
    model = load_model(_add_linear(store, tmp_path)[0], OPTIONS)
    with pytest.raises(
        DataError, match=r"unknown input\(s\) \['x'\]; the model takes \['input_0'\]"
    ):
        model.run({INPUT: _x(1), "x": _x(1)})
    with pytest.raises(DataError, match="'input_0' is missing"):
        model.run({})


def test_a_model_failing_its_warm_up_is_a_model_error(store: ModelStore, tmp_path: Path) -> None:
    version = _add_broken(store, tmp_path)
    with pytest.raises(
        ModelError, match=r"version 1 failed its warm-up \(batch 1\): inference failed"
    ) as info:
        load_model(version, OPTIONS)
    assert "\n" not in str(info.value)
    assert str(store.root) not in str(info.value)


def test_a_tampered_file_is_refused_before_loading(store: ModelStore, tmp_path: Path) -> None:
    version, _, _ = _add_linear(store, tmp_path)
    other = tmp_path / "other.onnx"
    linear_model(other, seed=5)  # a valid model, but not the one that was stored
    version.model_path.write_bytes(other.read_bytes())
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(version, OPTIONS)


def test_a_file_onnxruntime_cannot_open_is_a_model_error(store: ModelStore, tmp_path: Path) -> None:
    version, _, _ = _add_linear(store, tmp_path)
    # Metadata and hash agree with the bytes, but the bytes are not a model: only
    # session creation can tell (e.g. a store written by a buggy tool).
    version.model_path.write_bytes(b"not a model")
    forged = dataclasses.replace(version, sha256=hashlib.sha256(b"not a model").hexdigest())
    with pytest.raises(ModelError, match="cannot load model 'mnist' version 1: ") as info:
        load_model(forged, OPTIONS)
    assert str(store.root) not in str(info.value)


def test_the_serving_agent_modules_do_not_import_torch() -> None:
    code = "import sys, edgewire.serve.runtime, edgewire.serve.store; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- ModelHost -------------------------------------------------------------------------


async def test_host_keeps_the_old_model_when_a_new_one_fails(
    store: ModelStore, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    host = ModelHost(OPTIONS)
    v1, w1, b1 = _add_linear(store, tmp_path, seed=0)
    first = await host.activate(v1, executor=executor)
    assert host.get("mnist") is first and host.names() == ["mnist"]

    v2 = _add_broken(store, tmp_path)
    with pytest.raises(ModelError, match="failed its warm-up"):
        await host.activate(v2, executor=executor)
    assert host.get("mnist") is first
    x = _x(5)
    np.testing.assert_allclose(
        host.get("mnist").run({INPUT: x})[OUTPUT], expected(x, w1, b1), atol=1e-5
    )

    v3, w3, b3 = _add_linear(store, tmp_path, seed=3)
    third = await host.activate(v3, executor=executor)
    assert host.get("mnist") is third and third.version.version == 3
    np.testing.assert_allclose(
        host.get("mnist").run({INPUT: x})[OUTPUT], expected(x, w3, b3), atol=1e-5
    )
    # A request that took the old model before the swap still finishes on it.
    np.testing.assert_allclose(first.run({INPUT: x})[OUTPUT], expected(x, w1, b1), atol=1e-5)


async def test_swap_under_load_drops_nothing(
    store: ModelStore, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    host = ModelHost(OPTIONS)
    v1, w1, b1 = _add_linear(store, tmp_path, seed=0)
    v2, w2, b2 = _add_linear(store, tmp_path, seed=2)
    await host.activate(v1, executor=executor)
    x = _x(2)
    answers = {1: expected(x, w1, b1), 2: expected(x, w2, b2)}
    stop, progress = asyncio.Event(), asyncio.Event()
    served: list[int] = []

    async def client() -> None:
        while not stop.is_set():
            try:
                model: LoadedModel = host.get("mnist")
                out = await asyncio.to_thread(model.run, {INPUT: x})
                np.testing.assert_allclose(out[OUTPUT], answers[model.version.version], atol=1e-5)
                served.append(model.version.version)
            finally:
                progress.set()

    clients = [asyncio.create_task(client()) for _ in range(4)]

    async def until_served(n: int) -> None:
        while True:
            progress.clear()  # no await between this and the check: no wake-up is lost
            # A failing client ends its task: stop waiting and let gather() raise.
            if len(served) >= n or any(c.done() for c in clients):
                return
            await progress.wait()

    await until_served(20)
    await host.activate(v2, executor=executor)
    await until_served(len(served) + 20)
    stop.set()
    await asyncio.gather(*clients)  # any failed request would raise here
    assert served[0] == 1 and served[-1] == 2


async def test_host_get_and_unload_unknown_models(store: ModelStore, tmp_path: Path) -> None:
    host = ModelHost(OPTIONS)
    with pytest.raises(ModelError, match=r"'mnist' is not loaded \(loaded: none\)"):
        host.get("mnist")
    v1, _, _ = _add_linear(store, tmp_path)
    kept = await host.activate(v1)  # the loop's default executor
    host.unload("mnist")
    assert host.names() == []
    with pytest.raises(ModelError, match="not loaded"):
        host.unload("mnist")
    assert kept.run({INPUT: _x(1)})[OUTPUT].shape == (1, 10)  # a held model still answers


async def test_a_failed_first_activation_leaves_nothing_loaded(
    store: ModelStore, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    host = ModelHost(OPTIONS)
    with pytest.raises(ModelError):
        await host.activate(_add_broken(store, tmp_path), executor=executor)
    assert host.names() == []
