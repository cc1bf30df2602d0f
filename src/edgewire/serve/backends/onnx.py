"""The ONNX Runtime backend: ``.onnx`` files on TensorRT, CUDA or CPU providers.

Inspection parses the protobuf (never unpickles anything), refuses external
data that escapes the model's folder, runs the ONNX checker and shape
inference; loading builds an ``InferenceSession`` with the best providers
present.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgewire.errors import ConfigError, ModelError
from edgewire.serve.backends.trt_cache import (
    BUILDS,
    TRT_PROVIDER,
    EngineKey,
    gpu_identity,
    has_engine,
    tensorrt_version,
    trt_provider_options,
)
from edgewire.serve.model import (
    Array,
    ModelInfo,
    ModelVersion,
    RuntimeOptions,
    TensorInfo,
    reason,
)

#: The providers we pick, best first, when they are present.
PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_SHORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def pick_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """Providers for a session: TensorRT, CUDA, then CPU, those present.

    ``preferred`` (full names, or ``tensorrt``/``cuda``/``cpu``) picks and orders
    them instead; a name that is not available is a ConfigError.
    """
    available = available_providers()
    if preferred is None:
        return [p for p in PROVIDER_ORDER if p in available]
    picked: list[str] = []
    for raw in preferred:
        name = _SHORT_NAMES.get(raw.lower(), raw)
        if name not in available:
            raise ConfigError(
                f"execution provider {raw!r} is not available; available: {', '.join(available)}"
            )
        if name not in picked:
            picked.append(name)
    if not picked:
        raise ConfigError(f"no execution provider chosen; available: {', '.join(available)}")
    return picked


class OnnxSession:
    """An ONNX Runtime session; ``run`` is thread-safe."""

    def __init__(self, session: Any, output_names: list[str]) -> None:
        self._session = session
        self._outputs = output_names

    def run(self, feed: dict[str, Array]) -> dict[str, Array]:
        values = self._session.run(self._outputs, feed)
        return dict(zip(self._outputs, values, strict=True))

    @property
    def runs_on(self) -> list[str]:
        return list(self._session.get_providers())


class OnnxBackend:
    name = "onnx"
    suffix = ".onnx"
    platform = "onnxruntime_onnx"
    extra: str | None = None

    def claims(self, head: bytes) -> bool:
        # A ModelProto has no magic; exporters write ir_version (field 1, varint) first.
        return head[:1] == b"\x08"

    def companions(self, path: Path, *, source_dir: Path) -> list[str]:
        found: list[str] = []
        for location in _external_locations(_parse(path)):
            check_location(location, source_dir, own_file=path.name)
            rel = PurePosixPath(location).as_posix()  # "./w.bin" and "w.bin" are one file
            if rel not in found:
                found.append(rel)
        return found

    def inspect(self, path: Path) -> ModelInfo:
        import onnx

        model = _parse(path)
        try:
            # By path, so that external data resolves against the model's own folder
            # (a ModelProto would resolve it against the working directory).
            onnx.checker.check_model(str(path))
        except Exception as exc:
            raise ModelError(f"invalid ONNX model: {reason(exc, path.parent)}") from None
        try:
            # Shape inference fills in output shapes that the file leaves out.
            graph = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # custom ops and the like: keep the shapes the file declares
            graph = model.graph
        weights = {t.name for t in graph.initializer}
        inputs = tuple(_tensor_info(v) for v in graph.input if v.name not in weights)
        outputs = tuple(_tensor_info(v) for v in graph.output)
        if not inputs or not outputs:
            raise ModelError("the model has no inputs or no outputs")
        metadata = {p.key: p.value for p in model.metadata_props}
        return ModelInfo(inputs=inputs, outputs=outputs, metadata=metadata)

    def load(self, version: ModelVersion, options: RuntimeOptions) -> OnnxSession:
        providers = pick_providers(options.providers)
        try:
            session = _session(version, options, providers)
        except Exception as exc:  # onnxruntime's own exception types are not public
            shown = f"{version.name}/{version.version}"
            raise ModelError(
                f"cannot load {version.label}: {reason(exc, version.path, shown_as=shown)}"
            ) from None
        names = [i.name for i in session.get_inputs()]
        if sorted(names) != sorted(t.name for t in version.inputs):
            raise ModelError(
                f"{version.label}: the session's inputs {names} differ from its metadata"
            )
        return OnnxSession(session, [t.name for t in version.outputs])


def _session(version: ModelVersion, options: RuntimeOptions, providers: list[str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    if not options.spin:
        # Spinning worker threads burn the cores the event loop needs to feed them;
        # a server that shares its cores with its own I/O is faster without it.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    provider_options: list[dict[str, str]] = []
    key: EngineKey | None = None
    for name in providers:
        opts: dict[str, str] = {}
        if name == TRT_PROVIDER and options.trt_cache_dir is not None:
            key = engine_key(version, max_batch=options.max_batch_size)
            inputs = {t.name: t.shape for t in version.inputs}
            opts = trt_provider_options(options.trt_cache_dir, key=key, inputs=inputs)
        provider_options.append(opts)

    def create() -> Any:
        return ort.InferenceSession(
            str(version.model_path), so, providers=providers, provider_options=provider_options
        )

    if key is None or options.trt_cache_dir is None:
        return create()
    # The engine is built inside InferenceSession (minutes on a Jetson); this runs in the
    # agent's loader thread, so the previous version serves meanwhile.
    cached = has_engine(options.trt_cache_dir, key)
    with BUILDS.building(version.name, key=key.folder(), cached=cached):
        return create()


def engine_key(version: ModelVersion, *, max_batch: int) -> EngineKey:
    """The engine-cache key of ``version`` on this machine's GPU and TensorRT."""
    return EngineKey(
        model_sha256=version.sha256, trt_version=tensorrt_version(),
        precision=model_precision(version.model_path), gpu=gpu_identity(), max_batch=max_batch,
    )  # fmt: skip


def model_precision(path: Path) -> str:
    """int8 for a quantised graph, fp16 for float16 weights, else fp32 (what the export made)."""
    import onnx

    model = _parse(path)
    if any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


# -- inspection ------------------------------------------------------------------------


def _parse(path: Path) -> Any:
    """The ModelProto in ``path`` (external data not loaded); ModelError if it is not one."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on bad bytes
        raise ModelError(f"not an ONNX model: {reason(exc, path.parent)}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError("not an ONNX model: it has no graph or no opset")
    return model


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in a graph: initializers, attributes, and those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _external_locations(model: Any) -> list[str]:
    import onnx

    locations: list[str] = []
    function_tensors = (t for f in model.functions for t in _node_tensors(f.node))
    for tensor in (*_all_tensors(model.graph), *function_tensors):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location")
        if not location:
            raise ModelError(f"tensor {tensor.name!r} has external data without a location")
        if location not in locations:
            locations.append(location)
    return locations


#: Names inside a version folder that external data may never point at.
_RESERVED = ("meta.json",)


def check_location(location: str, folder: Path, *, own_file: str) -> Path:
    """The file that ``location`` names inside ``folder``; ModelError if it escapes."""
    escapes = ModelError(f"external data {location!r} escapes the model folder")
    parts = PurePosixPath(location.replace("\\", "/")).parts
    if (
        "\x00" in location
        or PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or ".." in parts
    ):
        raise escapes
    if not parts or parts[0] in (own_file, "model.onnx", *_RESERVED):
        raise ModelError(f"external data location {location!r} is not allowed")
    base = folder.resolve()
    target = (base / location).resolve()  # follows symlinks, so a link outside is caught
    if not target.is_relative_to(base):
        raise escapes
    if not target.is_file():
        raise ModelError(f"external data {location!r} does not exist next to the model")
    return target


def _tensor_info(value: Any) -> TensorInfo:
    from onnx import helper

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ModelError(f"{value.name!r} is a {kind}, not a tensor; only tensors are served")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(f"{value.name!r} has no known rank; export the model with shapes")
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError):
        raise ModelError(f"{value.name!r} has an unsupported element type") from None
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor_type.shape.dim
    )
    return TensorInfo(name=value.name, dtype=dtype, shape=shape)
