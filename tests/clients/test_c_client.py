"""The C client (clients/c): its codec through a harness, and example.c against real servers.

The harness and a second build of the example run under AddressSanitizer and
UBSan when gcc supports them here, so a read or write one byte out of bounds
fails the test instead of passing by luck.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgewire.errors import ProtocolError
from edgewire.serve.store import ModelStore
from edgewire.wire.frames import Frame, MsgType, encode_frame
from edgewire.wire.messages import decode_message, encode_message, error_payload
from tests.clients.fixture_server import LinearServer, linear_server
from tests.helpers import agent_in_thread
from tests.serve.models import expected, linear_model

ROOT = Path(__file__).resolve().parents[2]
C_DIR = ROOT / "clients" / "c"
HARNESS = Path(__file__).with_name("ew_harness.c")
GCC = shutil.which("gcc")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g", "-O1"]

pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not on PATH: cannot build the C client")

# Return codes of edgewire.h
OK, ERR_IO, ERR_TIMEOUT, ERR_FRAME, ERR_CRC = 0, -2, -3, -4, -5
ERR_TRUNCATED, ERR_TOO_LARGE, ERR_MALFORMED, ERR_REMOTE, ERR_UNEXPECTED = -6, -7, -8, -9, -10


def gcc(*args: str | Path) -> None:
    assert GCC is not None
    done = subprocess.run([GCC, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# -- builds ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cbuild")


@pytest.fixture(scope="module")
def sanitize(build_dir: Path) -> list[str]:
    """The sanitizer flags, or none where this gcc cannot build and run with them."""
    probe = build_dir / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    assert GCC is not None
    built = subprocess.run(
        [GCC, *SANITIZE, str(probe), "-o", str(build_dir / "probe")], capture_output=True
    )
    if built.returncode != 0 or subprocess.run([build_dir / "probe"]).returncode != 0:
        return []
    return SANITIZE


@pytest.fixture(scope="module")
def example(build_dir: Path) -> Path:
    """example.c built by its own Makefile, in a copy of clients/c."""
    src = build_dir / "c"
    shutil.copytree(C_DIR, src, ignore=shutil.ignore_patterns("example"))
    if shutil.which("make") is None:  # gcc alone is enough to build it
        gcc(*STRICT, "-O2", src / "example.c", "-o", src / "example")
    else:
        done = subprocess.run(["make", "-C", str(src)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "-std=c99 -Wall -Wextra -Werror -O2" in done.stdout
    return src / "example"


@pytest.fixture(scope="module")
def example_san(build_dir: Path, sanitize: list[str]) -> Path:
    """example.c under the sanitizers, for the hostile-server tests."""
    out = build_dir / "example_san"
    gcc(*STRICT, *sanitize, C_DIR / "example.c", "-o", out)
    return out


@pytest.fixture(scope="module")
def harness(build_dir: Path, sanitize: list[str]) -> Callable[..., str]:
    out = build_dir / "ew_harness"
    gcc(*STRICT, *sanitize, "-I", C_DIR, HARNESS, "-o", out)

    def run(*args: object, data: bytes = b"") -> str:
        done = subprocess.run([out, *map(str, args)], input=data, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode()

    return run


def test_header_compiles_as_cpp_and_pedantic_c(build_dir: Path) -> None:
    """Arduino sketches are C++; the POSIX part must build with -Wpedantic too."""
    unit = build_dir / "unit.c"
    unit.write_text('#define EW_POSIX\n#include "edgewire.h"\nint main(void) { return 0; }\n')
    gcc(
        *STRICT, "-Wpedantic", "-D_POSIX_C_SOURCE=200809L", "-I", C_DIR, unit, "-o", build_dir / "u"
    )
    if shutil.which("g++") is not None:
        cpp = build_dir / "unit.cpp"
        cpp.write_text(unit.read_text())
        done = subprocess.run(
            [
                "g++",
                "-std=c++11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fsyntax-only",
                "-I",
                str(C_DIR),
                str(cpp),
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr


# -- the codec ---------------------------------------------------------------------


def test_crc32_check_value_and_chaining(harness: Callable[..., str]) -> None:
    assert harness("crc", data=b"123456789").split() == ["cbf43926", "cbf43926"]
    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 3, 17, 1000, 5003):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        want = f"{zlib.crc32(data):08x}"
        assert harness("crc", data=data).split() == [want, want]


@pytest.mark.parametrize(("n", "batch"), [(784, 1), (5, 2), (1, 1)])
def test_request_frame_is_byte_for_byte_the_reference_codec(
    harness: Callable[..., str], n: int, batch: int
) -> None:
    x = (np.arange(n * batch, dtype=np.float32) * 0.25 - 3.0).reshape(batch, n)
    want = encode_frame(
        MsgType.INFER_REQUEST, encode_message({"model": "mnist"}, [x]), request_id=7
    )
    assert bytes.fromhex(harness("build", "mnist", n, batch, 7, len(want)).strip()) == want
    # One byte less room, and it refuses instead of writing past the end.
    assert harness("build", "mnist", n, batch, 7, len(want) - 1).strip() == "none"


@pytest.mark.parametrize("model", ["", 'a"b', "a\\b", "é", "x" * 65, "tab\there"])
def test_request_refuses_names_that_would_need_json_escaping(
    harness: Callable[..., str], model: str
) -> None:
    assert harness("build", model, 4, 1, 1, 4096).strip() == "none"


def frame(
    payload: bytes, *, msg_type: int = 17, request_id: int = 1, crc: int | None = None
) -> bytes:
    """A frame with any header values, valid or not."""
    crc = zlib.crc32(payload) if crc is None else crc
    return (
        struct.pack("<2sBBHHIII", b"EW", 1, msg_type, 0, 0, request_id, len(payload), crc) + payload
    )


def response(y: np.ndarray, meta: dict[str, Any] | None = None, request_id: int = 1) -> bytes:
    meta = {"model": "mnist", "queue_ms": 0.5, "compute_ms": 0.25} if meta is None else meta
    return encode_frame(MsgType.INFER_RESPONSE, encode_message(meta, [y]), request_id=request_id)


def parsed(text: str) -> dict[str, str]:
    pairs = (line.partition(" ") for line in text.strip().splitlines())
    return {key: value for key, _, value in pairs}


@pytest.mark.parametrize("compute_ms", [0.25, 12, 1e-05, 2.5e20, -0.5, 0])
def test_response_from_the_reference_codec(harness: Callable[..., str], compute_ms: float) -> None:
    y = np.random.default_rng(1).random((1, 10), dtype=np.float32)
    meta = {"model": "mnist", "version": 3, "outputs": ["output_0"], "queue_ms": 0.41}
    meta |= {"compute_ms": compute_ms, "batch_size": 24}
    got = parsed(harness("parse", 9, 10, data=response(y, meta, request_id=9)))
    assert got["rc"] == "0" and got["n"] == "10"
    np.testing.assert_array_equal(np.array(got["out"].split(), dtype=np.float32), y[0])
    assert float(got["compute_ms"]) == pytest.approx(compute_ms, rel=1e-6)


def test_response_keeps_the_first_of_several_tensors(harness: Callable[..., str]) -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    extra = np.zeros((4, 5), dtype=np.int64)
    data = encode_frame(
        MsgType.INFER_RESPONSE, encode_message({"queue_ms": 1}, [y, extra]), request_id=1
    )
    got = parsed(harness("parse", 1, 6, data=data))
    assert got["rc"] == "0" and got["out"].split() == ["0", "1", "2", "3", "4", "5"]
    assert got["compute_ms"] == "-1"  # absent from the meta


@pytest.mark.parametrize("request_id", [5, 0])
def test_error_frame_gives_its_code_and_message(
    harness: Callable[..., str], request_id: int
) -> None:
    text = 'model "nosuch" is not served \u2014 caf\u00e9 \\ done'
    data = encode_frame(MsgType.ERROR, error_payload("model", text), request_id=request_id)
    got = parsed(harness("parse", 5, 10, data=data))
    assert got["rc"] == str(ERR_REMOTE) and got["error_rc"] == "0"
    assert got["code"] == "model"
    assert got["message"] == 'model "nosuch" is not served ? caf? \\ done'


def test_long_error_message_is_cut_to_its_buffer(harness: Callable[..., str]) -> None:
    data = encode_frame(MsgType.ERROR, error_payload("busy", "x" * 5000), request_id=1)
    got = parsed(harness("parse", 1, 10, data=data))
    assert got["rc"] == str(ERR_REMOTE) and got["message"] == "x" * 127


def tensor(dtype: int, dims: list[int], nbytes: int, data: bytes, reserved: int = 0) -> bytes:
    head = struct.pack(f"<BBH{len(dims)}IQ", dtype, len(dims), reserved, *dims, nbytes)
    return head + data


def payload(*tensors: bytes, meta: bytes = b'{"compute_ms":1}', count: int | None = None) -> bytes:
    n = len(tensors) if count is None else count
    return struct.pack("<I", len(meta)) + meta + struct.pack("<H", n) + b"".join(tensors)


TEN = tensor(6, [1, 10], 40, bytes(40))
GOOD = frame(payload(TEN))
BAD_FRAMES: dict[str, tuple[bytes, int]] = {
    "bad magic": (b"XW" + GOOD[2:], ERR_FRAME),
    "bad version": (GOOD[:2] + b"\x02" + GOOD[3:], ERR_FRAME),
    "reserved set": (GOOD[:6] + b"\x01\x00" + GOOD[8:], ERR_FRAME),
    "bad crc": (frame(payload(TEN), crc=zlib.crc32(payload(TEN)) ^ 1), ERR_CRC),
    "byte after the frame": (GOOD + b"\x00", ERR_MALFORMED),
    "length 2**32-1": (GOOD[:12] + b"\xff\xff\xff\xff" + GOOD[16:], ERR_TRUNCATED),
    "other request id": (frame(payload(TEN), request_id=2), ERR_UNEXPECTED),
    "a PONG": (frame(payload(TEN), msg_type=4), ERR_UNEXPECTED),
    "empty payload": (frame(b""), ERR_TRUNCATED),
    "meta length 2**32-1": (frame(b"\xff\xff\xff\xff" + payload(TEN)[4:]), ERR_TOO_LARGE),
    "meta past the payload": (frame(struct.pack("<I", 1000) + b"{}"), ERR_TRUNCATED),
    "no tensor count": (frame(struct.pack("<I", 2) + b"{}"), ERR_TRUNCATED),
    "no tensors": (frame(payload()), ERR_MALFORMED),
    "65 tensors": (frame(payload(TEN, count=65)), ERR_TOO_LARGE),
    "65535 tensors": (frame(payload(TEN, count=65535)), ERR_TOO_LARGE),
    "count over the tensors sent": (frame(payload(TEN, count=2)), ERR_TRUNCATED),
    "11 outputs for 10 floats of room": (
        frame(payload(tensor(6, [1, 11], 44, bytes(44)))),
        ERR_TOO_LARGE,
    ),
    "dims overflow a u64": (
        frame(payload(tensor(6, [2**32 - 1] * 8, 40, bytes(40)))),
        ERR_TOO_LARGE,
    ),
    "dims wrap a u64 to 0": (frame(payload(tensor(6, [2**16] * 4, 0, b""))), ERR_TOO_LARGE),
    "zero dim times huge dim": (frame(payload(tensor(6, [0, 2**32 - 1], 0, b""))), OK),
    "9 dims": (frame(payload(tensor(6, [1] * 9, 4, bytes(4)))), ERR_TOO_LARGE),
    "nbytes off by 4": (frame(payload(tensor(6, [1, 10], 44, bytes(44)))), ERR_MALFORMED),
    "nbytes 2**32 + 40": (frame(payload(tensor(6, [1, 10], 2**32 + 40, bytes(40)))), ERR_MALFORMED),
    "nbytes 2**64-1": (frame(payload(tensor(6, [1, 10], 2**64 - 1, bytes(40)))), ERR_MALFORMED),
    "data cut short": (frame(payload(tensor(6, [1, 10], 40, bytes(20)))), ERR_TRUNCATED),
    "float64 output": (frame(payload(tensor(7, [1, 5], 40, bytes(40)))), ERR_MALFORMED),
    "unknown dtype": (frame(payload(tensor(99, [1, 10], 40, bytes(40)))), ERR_MALFORMED),
    "tensor reserved set": (
        frame(payload(tensor(6, [1, 10], 40, bytes(40), reserved=1))),
        ERR_MALFORMED,
    ),
    "byte after the last tensor": (frame(payload(TEN) + b"\x00"), ERR_MALFORMED),
    "second tensor huge": (
        frame(payload(TEN, tensor(1, [2**32 - 1, 2**32 - 1], 2**64 - 1, b""))),
        ERR_TOO_LARGE,
    ),
    "second tensor cut short": (
        frame(payload(TEN, tensor(1, [100], 100, bytes(3)))),
        ERR_TRUNCATED,
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_give_their_code(harness: Callable[..., str], case: str) -> None:
    data, code = BAD_FRAMES[case]
    assert parsed(harness("parse", 1, 10, data=data))["rc"] == str(code)


def records(frames: list[bytes], request_id: int = 1) -> bytes:
    return b"".join(struct.pack("<II", request_id, len(f)) + f for f in frames)


def test_every_truncation_is_refused(harness: Callable[..., str]) -> None:
    full = response(np.ones((1, 10), dtype=np.float32))
    lines = harness("many", 10, data=records([full[:cut] for cut in range(len(full))])).splitlines()
    assert lines == [f"{ERR_TRUNCATED} 0"] * len(full)


def test_mutated_frames_never_crash_and_agree_with_the_reference(
    harness: Callable[..., str],
) -> None:
    """Random damage, re-checksummed so that the payload parser sees it."""
    rng = np.random.default_rng(7)
    y = rng.random((1, 10), dtype=np.float32)
    base = encode_message({"model": "mnist", "compute_ms": 0.5}, [y, np.arange(3, dtype=np.uint8)])
    payloads: list[bytes] = []
    for _ in range(3000):
        p = bytearray(base)
        kind = rng.integers(0, 3)
        if kind == 0:  # flip a few bytes
            for at in rng.integers(0, len(p), rng.integers(1, 4)):
                p[at] = int(rng.integers(0, 256))
        elif kind == 1:  # write a u32 anywhere
            at = int(rng.integers(0, len(p) - 3))
            p[at : at + 4] = struct.pack("<I", int(rng.choice([0, 1, 11, 2**16, 2**31, 2**32 - 1])))
        else:  # cut or extend
            p = p[: int(rng.integers(0, len(p)))] if rng.integers(0, 2) else p + b"\x00"
        payloads.append(bytes(p))
    lines = harness("many", 10, data=records([frame(p) for p in payloads])).splitlines()
    assert len(lines) == len(payloads)
    codes = {OK, ERR_TRUNCATED, ERR_TOO_LARGE, ERR_MALFORMED}
    for data, line in zip(payloads, lines, strict=True):
        rc, _n, *values = line.split()
        assert int(rc) in codes, line
        try:
            message = decode_message(data)
        except ProtocolError as exc:
            # The C client skips the meta JSON; everything else it must refuse too.
            assert int(rc) != OK or str(exc).startswith("meta"), (line, exc)
            continue
        if int(rc) == OK:
            want = message.tensors[0].astype(np.float32).ravel()
            np.testing.assert_array_equal(np.array(values, dtype=np.float32), want)


# -- example.c against real servers ---------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    w, b = linear_model(path, in_features=784, out_features=10, seed=5)
    return path, w, b


@pytest.fixture(scope="module")
def agent_port(
    tmp_path_factory: pytest.TempPathFactory, model: tuple[Path, np.ndarray, np.ndarray]
) -> Iterator[int]:
    data_dir = tmp_path_factory.mktemp("agent")
    store = ModelStore(data_dir / "models")
    store.add("mnist", model[0])
    store.set_alias("mnist", "production", 1)
    with agent_in_thread(data_dir, max_queue_delay_ms=1.0) as agent:
        yield agent.native


@pytest.fixture
def fixture_server(model: tuple[Path, np.ndarray, np.ndarray]) -> Iterator[LinearServer]:
    with linear_server(model[1], model[2]) as server:
        yield server


@pytest.fixture(params=["fixture", "agent"])
def port(request: pytest.FixtureRequest) -> int:
    if request.param == "agent":
        return int(request.getfixturevalue("agent_port"))
    server: LinearServer = request.getfixturevalue("fixture_server")
    return server.port


def run_example(
    binary: Path, *args: object, stdin: str | None = None, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEWIRE_TOKEN"}
    if token is not None:
        env["EDGEWIRE_TOKEN"] = token
    return subprocess.run(
        [binary, *map(str, args)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def classes(stdout: str) -> list[int]:
    """The predicted class the example prints per request."""
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("class:")]


def answers(stdout: str) -> tuple[np.ndarray, list[float]]:
    """(outputs per request, compute_ms per request) from the example's output."""
    outs = [line.split()[1:] for line in stdout.splitlines() if line.startswith("outputs:")]
    ms = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith("compute_ms:")]
    return np.array(outs, dtype=np.float64), ms


def test_example_infers_a_digit_from_stdin(
    example: Path, port: int, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    x = np.random.default_rng(3).random((1, 784), dtype=np.float32)
    done = run_example(
        example, "127.0.0.1", port, "mnist", stdin=" ".join(f"{v:.9g}" for v in x[0])
    )
    assert done.returncode == 0, done.stderr
    outputs, ms = answers(done.stdout)
    assert outputs.shape == (1, 10) and len(ms) == 1 and ms[0] >= 0
    np.testing.assert_allclose(outputs, expected(x, model[1], model[2]), atol=1e-5)
    assert classes(done.stdout) == [int(np.argmax(expected(x, model[1], model[2])))]


def test_example_builtin_digit_reaches_the_server(
    example: Path, fixture_server: LinearServer, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    done = run_example(example, "localhost", fixture_server.port, "mnist")
    assert done.returncode == 0, done.stderr
    (x,) = fixture_server.inputs
    # A real MNIST 7 (the pixels of docs/examples/digit-7.png), not a drawing that the
    # demo's model took for a 2.
    from PIL import Image

    seven = np.asarray(Image.open(ROOT / "docs" / "examples" / "digit-7.png"), np.float32)
    np.testing.assert_array_equal(x, (seven / np.float32(255)).reshape(1, 784))
    outputs, ms = answers(done.stdout)
    np.testing.assert_allclose(outputs, expected(x, model[1], model[2]), atol=1e-5)
    assert ms == [0.125]
    assert classes(done.stdout) == [int(np.argmax(outputs[0]))]


def test_example_builtin_digit_is_a_real_mnist_seven() -> None:
    from PIL import Image

    from edgewire.data.datasets import load_dataset

    source = (C_DIR / "example.c").read_text()
    body = source[source.index("SEVEN[N_INPUT] = {") : source.index("};")]
    pixels = np.array([int(v) for v in body.split("{", 1)[1].split(",") if v.strip()], np.uint8)
    assert pixels.size == 784
    shipped = np.asarray(Image.open(ROOT / "docs" / "examples" / "digit-7.png")).reshape(-1)
    np.testing.assert_array_equal(pixels, shipped)
    data = load_dataset("mnist5k")
    same = np.flatnonzero((data.x.reshape(len(data), -1) == pixels).all(axis=1))
    assert same.size >= 1 and set(data.y[same]) == {7}
    # And a trained MNIST model (the seed's) reads it as a 7.
    pytest.importorskip("ai_edge_litert")
    from tests.serve.tflite_models import SEED_TFLITE, litert_scores

    if SEED_TFLITE.is_file():
        scores = litert_scores(SEED_TFLITE, (pixels / np.float32(255)).astype(np.float32)[None])
        assert int(np.argmax(scores[0])) == 7


def test_example_repeats_on_one_connection(
    example: Path,
    port: int,
    model: tuple[Path, np.ndarray, np.ndarray],
    request: pytest.FixtureRequest,
) -> None:
    x = np.random.default_rng(4).random((1, 784), dtype=np.float32)
    text = "\n".join(f"{v:.9g}" for v in x[0])
    done = run_example(example, "--repeat", 50, "127.0.0.1", port, "mnist", stdin=text)
    assert done.returncode == 0, done.stderr
    outputs, ms = answers(done.stdout)
    assert outputs.shape == (50, 10) and len(ms) == 50
    np.testing.assert_allclose(
        outputs, np.repeat(expected(x, model[1], model[2]), 50, axis=0), atol=1e-5
    )
    if request.node.callspec.params["port"] == "fixture":
        server: LinearServer = request.getfixturevalue("fixture_server")
        assert server.connections == 1 and server.request_ids == list(range(1, 51))


def test_example_unknown_model_prints_the_agents_message(
    example: Path, port: int, request: pytest.FixtureRequest
) -> None:
    done = run_example(example, "127.0.0.1", port, "nosuch")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("agent error [model_not_found]: ") and "'nosuch'" in done.stderr
    if request.node.callspec.params["port"] == "fixture":
        assert done.stderr.strip().endswith("model 'nosuch' is not served (served: mnist)")


def hostile(raw: bytes) -> Callable[[Frame], bytes]:
    return lambda frame: raw.replace(b"<ID>", struct.pack("<I", frame.request_id))


def answer_with(ten: bytes) -> bytes:
    body = payload(ten)
    return (
        struct.pack("<2sBBHH", b"EW", 1, 17, 0, 0)
        + b"<ID>"
        + struct.pack("<II", len(body), zlib.crc32(body))
        + body
    )


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (
            struct.pack("<2sBBHH", b"EW", 1, 17, 0, 0) + b"<ID>" + struct.pack("<II", 2**32 - 1, 0),
            ERR_TOO_LARGE,
        ),
        (answer_with(tensor(6, [1, 1000], 4000, bytes(4000))), ERR_TOO_LARGE),
        (answer_with(tensor(6, [1, 100], 400, bytes(400))), ERR_TOO_LARGE),
        (answer_with(tensor(6, [1, 10], 40, bytes(40)) + b"!"), ERR_MALFORMED),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", ERR_FRAME),
        (
            struct.pack("<2sBBHH", b"EW", 1, 17, 0, 0)
            + b"<ID>"
            + struct.pack("<II", 100, 0)
            + b"short",
            ERR_IO,
        ),
        (b"", ERR_TIMEOUT),
    ],
    ids=[
        "length 2**32-1",
        "over the buffer",
        "over the outputs",
        "trailing byte",
        "not edgewire",
        "cut off",
        "silent",
    ],
)
def test_example_survives_a_hostile_server(
    example_san: Path, model: tuple[Path, np.ndarray, np.ndarray], raw: bytes, code: int
) -> None:
    closing = code == ERR_IO
    with linear_server(model[1], model[2], reply=hostile(raw), close_after=closing) as server:
        done = run_example(example_san, "--timeout", 300, "127.0.0.1", server.port, "mnist")
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().endswith(f"({code})"), done.stderr
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr


def test_example_cannot_connect(example: Path) -> None:
    with linear_server(np.zeros((10, 784), np.float32), np.zeros(10, np.float32)) as server:
        port = server.port
    done = run_example(example, "--timeout", 2000, "127.0.0.1", port, "mnist")
    assert done.returncode == 3 and "cannot connect" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["127.0.0.1", "7700"],
        ["127.0.0.1", "0", "m"],
        ["127.0.0.1", "x", "m"],
        ["--repeat", "0", "h", "1", "m"],
    ],
)
def test_example_usage_errors(example: Path, args: list[str]) -> None:
    done = run_example(example, *args)
    assert done.returncode == 2 and "usage" in done.stderr


def test_example_refuses_a_short_digit(example: Path) -> None:
    done = run_example(example, "127.0.0.1", "1", "mnist", stdin="0.5 0.25")
    assert done.returncode == 2 and "read 2" in done.stderr


# -- the token ------------------------------------------------------------------------

TOKEN = "correct-horse-battery"


def test_hello_frame_is_byte_for_byte_the_reference_codec(harness: Callable[..., str]) -> None:
    want = encode_frame(
        MsgType.HELLO, encode_message({"client": "c", "token": TOKEN}), request_id=5
    )
    assert harness("hello", TOKEN, 5, 4096).strip() == want.hex()
    assert harness("hello", TOKEN, 5, len(want) - 1).strip() == "none"  # does not fit
    for bad in ('with"quote', "back\\slash", "", "x" * 257):
        assert harness("hello", bad, 5, 4096).strip() == "none", bad


@pytest.fixture(scope="module")
def token_agent_port(
    tmp_path_factory: pytest.TempPathFactory, model: tuple[Path, np.ndarray, np.ndarray]
) -> Iterator[int]:
    data_dir = tmp_path_factory.mktemp("token-agent")
    store = ModelStore(data_dir / "models")
    store.add("mnist", model[0])
    store.set_alias("mnist", "production", 1)
    with agent_in_thread(data_dir, max_queue_delay_ms=1.0, token=TOKEN) as agent:
        yield agent.native


def test_example_sends_the_token_in_its_hello(
    example: Path, token_agent_port: int, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    done = run_example(example, "--repeat", 2, "127.0.0.1", token_agent_port, "mnist", token=TOKEN)
    assert done.returncode == 0, done.stderr
    assert answers(done.stdout)[0].shape == (2, 10)
    done = run_example(example, "127.0.0.1", token_agent_port, "mnist")
    assert done.returncode == 1 and done.stderr.startswith("agent error [auth]: "), done.stderr
    done = run_example(example, "127.0.0.1", token_agent_port, "mnist", token="wrong-token")
    assert done.returncode == 1 and "agent error [auth]: wrong token" in done.stderr
