"""``edgewire agent``."""

from __future__ import annotations

from pathlib import Path

import typer

from edgewire.cli.common import console, run
from edgewire.config import AgentConfig, load_config


def agent_command(
    host: str | None = typer.Option(None, help=r"Address to bind \[default: 127.0.0.1]."),
    port: int | None = typer.Option(None, help=r"Native wire port \[default: 7700]."),
    http_port: int | None = typer.Option(None, help=r"HTTP port \[default: 8000]."),
    data_dir: Path | None = typer.Option(None, help="Where runs and models live."),
    token: str | None = typer.Option(
        None,
        help=r"Token for management calls; required to bind beyond loopback \[env: EDGEWIRE_TOKEN].",
    ),
    legacy_bts0_port: int | None = typer.Option(
        None, help="Also accept the JettyLink BTS0 stream on this port (seed: 9000)."
    ),
    legacy_mnistprot_port: int | None = typer.Option(
        None, help="Also answer the ESP8266 MnistProt protocol on this port (seed: 32001)."
    ),
    legacy_mnistprot_model: str | None = typer.Option(
        None, help="Model that MnistProt requests go to."
    ),
    config: Path | None = typer.Option(None, help=r"TOML file with \[agent] settings."),
) -> None:
    from edgewire.agent.server import Agent, run_agent

    cfg = load_config(
        AgentConfig,
        config_file=config,
        flags={
            "host": host,
            "port": port,
            "http_port": http_port,
            "data_dir": data_dir,
            "token": token,
            "legacy_bts0_port": legacy_bts0_port,
            "legacy_mnistprot_port": legacy_mnistprot_port,
            "legacy_mnistprot_model": legacy_mnistprot_model,
        },
    )

    def started(agent: Agent) -> None:
        ports = ", ".join(f"{name} {p}" for name, p in agent.ports.items())
        console.print(
            f"edgewire agent on {cfg.host}: {ports}; data in {cfg.data_dir}", highlight=False
        )

    run(run_agent(cfg, on_started=started))
