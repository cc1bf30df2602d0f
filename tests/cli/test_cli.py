"""The ``edgewire`` command as a newcomer meets it: help, --version, and one clear line per error.

Commands run through ``edgewire.cli.main.main`` (the console-script entry point), so
exit codes and the ``error:`` line are the real ones.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgewire import __version__
from edgewire.cli import infer as infer_cli
from edgewire.cli import train as train_cli
from edgewire.cli.deploy import upload_model
from edgewire.cli.main import main
from edgewire.errors import DataError
from tests.helpers import RunningAgent, agent_in_thread
from tests.serve.models import linear_model

Invoke = Callable[..., tuple[int, str, str]]
TOKEN = "s3cret-token"


@pytest.fixture
def edgewire(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """Run ``edgewire ARGS...``; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("EDGEWIRE_TOKEN", raising=False)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["edgewire", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with agent_in_thread(tmp_path / "agent", token=TOKEN) as running:
        yield running


@pytest.fixture
def mnist_agent(agent: RunningAgent, tmp_path: Path) -> RunningAgent:
    """The agent serving a 784 -> 10 linear model as 'mnist'."""
    model = tmp_path / "linear.onnx"
    linear_model(model, in_features=784, out_features=10)
    upload_model(
        model, host="127.0.0.1", port=agent.http, name="mnist", alias="production",
        token=TOKEN, timeout=60,
    )  # fmt: skip
    return agent


# --- 1-3: --version and --help ---------------------------------------------------


def test_version_prints_the_version_and_exits_0(edgewire: Invoke) -> None:
    code, out, err = edgewire("--version")
    assert code == 0, err
    assert __version__ in out
    assert "Missing command" not in out + err


def test_agent_help_shows_text_in_square_brackets(edgewire: Invoke) -> None:
    code, out, _ = edgewire("agent", "--help")
    assert code == 0
    assert "[default: 127.0.0.1]" in out
    assert "[env: EDGEWIRE_TOKEN]" in out
    assert "[agent]" in out


def test_deploy_help_names_the_token_variable(edgewire: Invoke) -> None:
    code, out, _ = edgewire("deploy", "--help")
    assert code == 0
    assert "[env: EDGEWIRE_TOKEN]" in out


def test_help_lists_exit_codes_one_a_line(edgewire: Invoke) -> None:
    code, out, _ = edgewire("--help")
    assert code == 0
    assert ".;" not in out
    lines = [line.strip(" │") for line in out.splitlines()]
    assert any(line.startswith("4  data: The data set cannot be read") for line in lines)
    assert any(
        line.startswith("11  model, model_not_found, gate_refused: The model") for line in lines
    )
    assert any(line.startswith("130  interrupted") for line in lines)


# --- 4: infer with bad input files --------------------------------------------------

INFO = {"name": "x", "dtype": "float32", "shape": [None, 784]}


def test_npy_of_the_wrong_shape_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((3, 5)))
    with pytest.raises(DataError, match=r"shape 3x5 .*takes \?x784"):
        infer_cli.load_input(path, INFO, 1 / 255)


def test_text_file_named_npy_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.npy"
    path.write_text("not an array\n")
    with pytest.raises(DataError, match="cannot read"):
        infer_cli.load_input(path, INFO, 1 / 255)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError):
        infer_cli.load_input(path, INFO, 1 / 255)


def test_infer_bad_npy_files_give_one_line_and_exit_4(
    edgewire: Invoke, mnist_agent: RunningAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEWIRE_TOKEN", TOKEN)  # the agent has a token: inference needs it
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5)))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_text("hello\n")
    to = f"127.0.0.1:{mnist_agent.native}"
    for path in (bad, corrupt):
        code, _, err = edgewire("infer", "--to", to, "--model", "mnist", str(path))
        assert code == 4, err
        assert len(error_lines(err)) == 1, err
        assert err.startswith("error:") and path.name in err
        assert "Traceback" not in err
    good = tmp_path / "good.npy"
    np.save(good, np.zeros(784, dtype=np.float32))
    code, out, err = edgewire("infer", "--to", to, "--model", "mnist", str(good))
    assert code == 0, err
    assert "good.npy" in out


# --- 5-6: bench ------------------------------------------------------------------


def test_bench_plot_into_a_missing_folder_fails_before_running(
    edgewire: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr("edgewire.bench.loadgen.run_load", no_load)
    code, _, err = edgewire("bench", "--input-shape", "1,784", "--plot", "/nonexistent/x.png")
    assert code == 2
    assert len(error_lines(err)) == 1, err
    assert "/nonexistent" in err


def test_bench_where_every_request_failed_exits_7_with_valid_json(edgewire: Invoke) -> None:
    code, out, err = edgewire(
        "bench", "--to", f"127.0.0.1:{closed_port()}", "--input-shape", "1,784",
        "--clients", "2", "--requests", "2", "--processes", "1", "--json",
    )  # fmt: skip
    assert code == 7, err
    rows = json.loads(out)  # no NaN: valid JSON
    assert rows[0]["ok"] == 0 and rows[0]["p50_ms"] is None
    assert len(error_lines(err)) == 1 and "all 4 requests failed" in err


def test_bench_against_a_model_not_served_exits_6(edgewire: Invoke, agent: RunningAgent) -> None:
    code, out, err = edgewire(
        "bench", "--to", f"127.0.0.1:{agent.native}", "--model", "nope", "--input-shape",
        "1,784", "--clients", "1", "--requests", "2", "--processes", "1",
    )  # fmt: skip
    assert code == 6, err
    assert "-" in out  # the table still prints, latencies as "-"
    assert "nan" not in out.lower()


# --- 7: deploy ---------------------------------------------------------------------


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    linear_model(path)
    return path


def test_deploy_with_a_wrong_token_exits_9(
    edgewire: Invoke, agent: RunningAgent, onnx_file: Path
) -> None:
    to = f"127.0.0.1:{agent.http}"
    for token in ("wrong-token", None):
        args = ["deploy", str(onnx_file), "--to", to, "--name", "mnist"]
        code, _, err = edgewire(*args, *(["--token", token] if token else []))
        assert code == 9, err
        assert "did not take the model" in err and "token" in err.lower()
    code, _, err = edgewire("deploy", str(onnx_file), "--to", to, "--name", "m", "--token", TOKEN)
    assert code == 0, err


def test_deploy_to_an_unreachable_agent_exits_7(edgewire: Invoke, onnx_file: Path) -> None:
    to = f"127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}"
    code, _, err = edgewire("deploy", str(onnx_file), "--to", to, "--name", "mnist")
    assert code == 7, err
    assert "2 agent(s) did not take the model" in err and "cannot reach" in err


def test_deploy_with_mixed_failures_exits_11(
    edgewire: Invoke, agent: RunningAgent, onnx_file: Path
) -> None:
    to = f"127.0.0.1:{agent.http},127.0.0.1:{closed_port()}"
    code, _, err = edgewire("deploy", str(onnx_file), "--to", to, "--name", "mnist")
    assert code == 11, err


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", ""])
def test_deploy_refuses_a_bad_name_before_uploading(
    edgewire: Invoke, onnx_file: Path, name: str
) -> None:
    to = f"127.0.0.1:{closed_port()}"
    code, _, err = edgewire("deploy", str(onnx_file), "--to", to, "--name", name)
    assert code == 2, err
    assert "invalid model name" in err and "HTTP" not in err


# --- 8-9: train stream -----------------------------------------------------------


def tiny_splits(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    from edgewire.data.datasets import Dataset

    x = np.zeros((8, 1, 8, 8), dtype=np.uint8)
    y = np.arange(8, dtype=np.int64) % 2
    return Dataset(x=x, y=y, classes=("a", "b"), name="tiny"), None


@pytest.mark.parametrize(("flag", "value"), [("--model", "vgg"), ("--optimizer", "rmsprop")])
def test_train_stream_checks_model_and_optimizer_before_connecting(
    edgewire: Invoke, monkeypatch: pytest.MonkeyPatch, flag: str, value: str
) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("loaded data before checking the flags")

    monkeypatch.setattr(train_cli, "load_splits", no_data)
    code, _, err = edgewire("train", "stream", "--to", f"127.0.0.1:{closed_port()}", flag, value)
    assert code == 2, err
    assert len(error_lines(err)) == 1 and value in err


def test_ctrl_c_during_train_stream_says_how_to_resume(
    edgewire: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(coro: Any) -> None:
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "load_splits", tiny_splits)
    monkeypatch.setattr(train_cli, "run", interrupted)
    code, _, err = edgewire("train", "stream", "--run-id", "r1", "--json")
    assert code == 130
    assert "interrupted" in err and "--resume" in err and "--run-id r1" in err


def test_agent_closing_mid_run_says_how_to_resume(
    edgewire: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgewire.errors import ConnectError
    from edgewire.train import stream_client

    async def dies_mid_run(*args: Any, on_event: Any, **kwargs: Any) -> None:
        on_event("ready", {"run_id": "r1", "resumed": False, "next_seq": 0, "device": "cpu"})
        raise ConnectError("the agent closed the connection before the run summary")

    monkeypatch.setattr(train_cli, "load_splits", tiny_splits)
    monkeypatch.setattr(stream_client, "stream_training", dies_mid_run)
    code, _, err = edgewire("train", "stream", "--run-id", "r1", "--json")
    assert code == 7  # a lost connection, not a protocol error
    assert len(error_lines(err)) == 1
    assert "before the run summary" in err and "--resume" in err

    async def never_connects(*args: Any, **kwargs: Any) -> None:
        raise ConnectError("cannot connect to 127.0.0.1:7700: Connection refused")

    monkeypatch.setattr(stream_client, "stream_training", never_connects)
    code, _, err = edgewire("train", "stream", "--run-id", "r1", "--json")
    assert code == 7 and "--resume" not in err  # nothing started: nothing to resume


def test_train_summary_prints_paths_whole_at_80_columns() -> None:
    import io

    from rich.console import Console

    deep = "/var/lib/edgewire/" + "a-long-folder-name/" * 6
    summary = {
        "samples_seen": 4500, "final": {"train": {"accuracy": 0.9}},
        "onnx": deep + "model.onnx", "checkpoint": deep + "checkpoint.safetensors",
    }  # fmt: skip
    buffer = io.StringIO()
    out = Console(file=buffer, width=80, color_system=None)
    train_cli.print_summary(summary, samples_per_s=1000.0, title="run r1", out=out)
    lines = buffer.getvalue().splitlines()
    assert "…" not in buffer.getvalue()
    assert f"ONNX model: {deep}model.onnx" in lines
    assert f"checkpoint: {deep}checkpoint.safetensors" in lines


def test_a_resume_with_nothing_to_resume_is_said() -> None:
    from rich.console import Console

    from edgewire.cli.progress import TrainDisplay

    console = Console(record=True, width=200)
    with TrainDisplay(console=console, total=4, resume=True) as display:
        display("ready", {"run_id": "typo", "resumed": False, "next_seq": 0, "device": "cpu"})
    assert "no run 'typo' to resume" in console.export_text()
    console = Console(record=True, width=200)
    with TrainDisplay(console=console, total=4, resume=True) as display:
        display("ready", {"run_id": "r", "resumed": True, "next_seq": 2, "device": "cpu"})
    assert "resuming run 'r' at batch 2" in console.export_text()


# --- 10: options read from the tables (ports, load clients, defaults) -------------------


def test_agent_help_has_a_flag_for_every_port_in_the_table(edgewire: Invoke) -> None:
    from edgewire.ports import DEFAULT_HTTP_PORT, DEFAULT_NATIVE_PORT, PORTS

    code, out, _ = edgewire("agent", "--help")
    assert code == 0
    for spec in PORTS:
        assert spec.flag in out, spec
        assert f"the seed used {spec.seed_port}" in out
    assert f"[default: {DEFAULT_NATIVE_PORT}]" in out and f"[default: {DEFAULT_HTTP_PORT}]" in out
    assert "--legacy-mnistprot-model" in out
    # A port that cannot carry the token has a flag to open it beyond loopback anyway.
    for spec in PORTS:
        assert (spec.public_flag in out) == spec.loopback_with_token, spec


def test_agent_help_shows_the_data_dir_default(edgewire: Invoke) -> None:
    from edgewire.config import default_data_dir

    code, out, _ = edgewire("agent", "--help")
    assert code == 0
    assert f"[default: {default_data_dir()}]" in out


def test_agent_port_flags_reach_the_config(
    edgewire: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import edgewire.agent.server as server
    from edgewire.ports import PORTS

    seen: list[Any] = []

    async def fake_run_agent(cfg: Any, **kwargs: Any) -> None:
        seen.append(cfg)

    monkeypatch.setattr(server, "run_agent", fake_run_agent)
    flags = [arg for i, spec in enumerate(PORTS) for arg in (spec.flag, str(9100 + i))]
    code, _, err = edgewire(
        "agent", "--data-dir", str(tmp_path), *flags, "--legacy-mnistprot-model", "m"
    )
    assert code == 0, err
    (cfg,) = seen
    assert cfg.legacy_ports == {spec.name: 9100 + i for i, spec in enumerate(PORTS)}
    assert cfg.legacy_mnistprot_model == "m" and cfg.data_dir == tmp_path

    assert cfg.legacy_public == frozenset()

    code, _, err = edgewire("agent", "--data-dir", str(tmp_path), "--legacy-bts0-port", "70000")
    assert code == 2, err
    assert len(error_lines(err)) == 1
    assert "flag --legacy-bts0-port" in err and "70000" in err
    assert len(seen) == 1

    code, _, err = edgewire("agent", "--data-dir", str(tmp_path), "--legacy-bts0-public")
    assert code == 0, err
    assert seen[-1].legacy_public == frozenset({"bts0"})
    monkeypatch.setenv("EDGEWIRE_LEGACY_PUBLIC", "bts0")
    code, _, err = edgewire("agent", "--data-dir", str(tmp_path))
    assert code == 0, err
    assert seen[-1].legacy_public == frozenset({"bts0"})


def test_bench_takes_native_http_and_every_port_with_a_load_client(edgewire: Invoke) -> None:
    from edgewire.bench.loadgen import PROTOCOLS, load_client
    from edgewire.ports import PORTS

    with_client = [spec.name for spec in PORTS if spec.load_client]
    assert with_client and ("native", "http", *with_client) == PROTOCOLS
    for protocol in PROTOCOLS:
        assert load_client(protocol).request is not None
        code, out, err = edgewire(
            "bench", "--protocol", protocol, "--to", f"127.0.0.1:{closed_port()}",
            "--input-shape", "1,784", "--clients", "1", "--requests", "1", "--processes", "1",
            "--json",
        )  # fmt: skip
        assert code == 7, (protocol, err)  # it ran, and found nothing listening
        assert json.loads(out)[0]["errors"] == 1
    code, _, err = edgewire("bench", "--protocol", "carrier-pigeon")
    assert code == 2 and "native, http" in err


def test_bench_default_port_follows_the_protocol() -> None:
    from edgewire.cli.bench import default_port
    from edgewire.ports import DEFAULT_HTTP_PORT, DEFAULT_NATIVE_PORT, port_spec

    assert default_port("native") == DEFAULT_NATIVE_PORT
    assert default_port("http") == DEFAULT_HTTP_PORT
    assert default_port("mnistprot") == port_spec("mnistprot").seed_port


def test_deploy_alias_default_is_the_store_default(edgewire: Invoke) -> None:
    from edgewire.serve.store import DEFAULT_ALIAS

    code, out, _ = edgewire("deploy", "--help")
    assert code == 0
    assert f"[default: {DEFAULT_ALIAS}]" in out
