"""TLS on a real agent: HTTPS, the native client over TLS, a plain client refused
cleanly, and TLS settings that are wrong refused at start with one line."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgewire.client.native import Client
from edgewire.config import AgentConfig, load_config
from edgewire.errors import ConfigError, ConnectError
from tests.cli.cli_run import run_cli
from tests.helpers import RunningAgent, agent_in_thread

TOKEN = "tls-token-12345"


def make_cert(folder: Path, name: str = "agent") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (an EC key: quick to make), and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[RunningAgent]:
    cert, key = certs
    with agent_in_thread(
        tmp_path_factory.mktemp("data"), token=TOKEN, tls_cert=cert, tls_key=key
    ) as agent:
        yield agent


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_https_health_with_the_certificate(running: RunningAgent, certs: tuple[Path, Path]) -> None:
    answer = httpx.get(
        f"https://127.0.0.1:{running.http}/v2/health/ready", verify=trusting(certs[0]), timeout=10
    )
    assert answer.status_code == 200
    assert answer.json() == {"ready": True}
    assert running.agent.tls is not None
    assert running.agent.tls.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_https_management_still_needs_the_token(
    running: RunningAgent, certs: tuple[Path, Path]
) -> None:
    url = f"https://127.0.0.1:{running.http}/api/models"
    with httpx.Client(verify=trusting(certs[0]), timeout=10) as http:
        assert http.get(url).status_code == 401
        answer = http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200


def test_plain_http_to_the_tls_port_gets_no_answer(running: RunningAgent) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{running.http}/v2/health/live", timeout=5)


def test_an_untrusted_certificate_is_refused(running: RunningAgent, tmp_path: Path) -> None:
    other, _ = make_cert(tmp_path, "other")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://127.0.0.1:{running.http}/v2/health/live", verify=trusting(other))

    async def native() -> None:
        await Client.connect("127.0.0.1", running.native, token=TOKEN, ssl=trusting(other))

    with pytest.raises(ConnectError, match="cannot connect"):
        asyncio.run(native())


def test_native_client_over_tls(running: RunningAgent, certs: tuple[Path, Path]) -> None:
    async def main() -> dict[str, object]:
        async with await Client.connect(
            "127.0.0.1", running.native, token=TOKEN, ssl=trusting(certs[0]), timeout=10
        ) as client:
            await client.ping()
            return await client.hello()

    hello = asyncio.run(main())
    assert "infer" in hello["features"]  # type: ignore[operator]


def test_plain_client_to_the_tls_native_port_fails_and_the_agent_serves_on(
    running: RunningAgent, certs: tuple[Path, Path]
) -> None:
    async def plain() -> None:
        client = await Client.connect("127.0.0.1", running.native, timeout=5)
        try:
            await client.ping()
        finally:
            await client.close()

    with pytest.raises(ConnectError, match="closed the connection"):
        asyncio.run(plain())
    test_native_client_over_tls(running, certs)
    test_https_health_with_the_certificate(running, certs)


# -- settings that are wrong: one line, at start ---------------------------------------------


def test_cert_without_key_is_one_line(certs: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both tls_cert and tls_key") as caught:
        AgentConfig(data_dir=tmp_path, tls_cert=certs[0])
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        AgentConfig(data_dir=tmp_path, tls_key=certs[1])


def test_tls_files_from_the_environment(certs: tuple[Path, Path], tmp_path: Path) -> None:
    env = {"EDGEWIRE_TLS_CERT": str(certs[0]), "EDGEWIRE_TLS_KEY": str(certs[1])}
    cfg = load_config(AgentConfig, flags={"data_dir": tmp_path}, environ=env)
    assert (cfg.tls_cert, cfg.tls_key) == certs
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        load_config(AgentConfig, flags={}, environ={"EDGEWIRE_TLS_KEY": str(certs[1])})


@pytest.mark.parametrize("broken", ["missing", "garbage", "mismatch", "swapped", "encrypted"])
def test_bad_tls_files_stop_the_start_with_one_line(
    broken: str, certs: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certs
    if broken == "missing":
        key = tmp_path / "nope.key"
    elif broken == "garbage":
        cert = tmp_path / "garbage.pem"
        cert.write_text(
            "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
        )
    elif broken == "mismatch":
        _, key = make_cert(tmp_path, "other")
    elif broken == "swapped":
        cert, key = key, cert
    else:  # a key with a passphrase: refused, never a prompt on the terminal
        encrypted = tmp_path / "encrypted.key"
        subprocess.run(
            ["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret-pass",
             "-out", str(encrypted)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        key = encrypted
    with (
        pytest.raises(ConfigError) as caught,
        agent_in_thread(tmp_path / "data", tls_cert=cert, tls_key=key),
    ):
        pass
    message = str(caught.value)
    assert "\n" not in message
    assert "tls" in message.lower()


def test_cli_refuses_bad_tls_in_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    certs: tuple[Path, Path],
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    args = ["agent", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path / "d")]
    code, out = run_cli(capsys, monkeypatch, *args, "--tls-cert", str(certs[0]))
    assert code != 0
    assert "both tls_cert and tls_key" in out
    assert "Traceback" not in out
    code, out = run_cli(
        capsys, monkeypatch, *args, "--tls-cert", str(garbage), "--tls-key", str(certs[1])
    )
    assert code != 0
    assert "cannot load the TLS certificate" in out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) <= 2, out


def test_the_cli_speaks_tls_with_edgewire_tls_ca(
    running: RunningAgent,
    certs: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EDGEWIRE_TLS_CA makes the HTTP commands use HTTPS and the native ones TLS."""
    from tests.cli.cli_run import run_cli

    cert, _ = certs
    monkeypatch.setenv("EDGEWIRE_TOKEN", TOKEN)
    monkeypatch.setenv("EDGEWIRE_TLS_CA", str(cert))
    code, out = run_cli(capsys, monkeypatch, "models", "--to", f"127.0.0.1:{running.http}")
    assert code == 0 and "models on 127.0.0.1" in out, out
    code, out = run_cli(capsys, monkeypatch, "infer", "--to", f"127.0.0.1:{running.native}",
                        "--model", "nope", str(Path(__file__)))  # fmt: skip
    assert code == 11 and "not served there" in out, out  # it got past TLS and the hello
    monkeypatch.setenv("EDGEWIRE_TLS_CA", str(cert.parent / "missing.pem"))
    code, out = run_cli(capsys, monkeypatch, "models", "--to", f"127.0.0.1:{running.http}")
    assert code == 2 and "EDGEWIRE_TLS_CA" in out, out
