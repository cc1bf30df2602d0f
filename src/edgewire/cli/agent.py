"""``edgewire agent``.

Its options for the opt-in protocol ports are made from :data:`edgewire.ports.PORTS`,
one ``--legacy-<name>-port`` each (and ``--legacy-<name>-public`` for a port that
cannot carry the token), so that a new port needs no change here; the
other options are written out below, with their defaults read from the config.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from edgewire.cli.common import console, run
from edgewire.config import AgentConfig, field_default, load_config
from edgewire.ports import PORTS, PortSpec


def _fixed_options(
    host: str | None = typer.Option(
        None, help=rf"Address to bind \[default: {field_default(AgentConfig, 'host')}]."
    ),
    port: int | None = typer.Option(
        None, help=rf"Native wire port \[default: {field_default(AgentConfig, 'port')}]."
    ),
    http_port: int | None = typer.Option(
        None, help=rf"HTTP port \[default: {field_default(AgentConfig, 'http_port')}]."
    ),
    data_dir: Path | None = typer.Option(
        None,
        help=rf"Where runs and models live \[default: {escape(str(field_default(AgentConfig, 'data_dir')))}].",
    ),
    token: str | None = typer.Option(
        None,
        help=(
            "Token for management calls, native inference and training; required to bind "
            r"beyond loopback \[env: EDGEWIRE_TOKEN]."
        ),
    ),
    tls_cert: Path | None = typer.Option(
        None,
        help=(
            "PEM certificate (chain): TLS on the native and HTTP ports; needs --tls-key "
            r"\[env: EDGEWIRE_TLS_CERT]."
        ),
    ),
    tls_key: Path | None = typer.Option(
        None, help=r"PEM private key of --tls-cert, unencrypted \[env: EDGEWIRE_TLS_KEY]."
    ),
    legacy_mnistprot_model: str | None = typer.Option(
        None, help="Model that MnistProt requests go to."
    ),
    actions_file: Path | None = typer.Option(
        None,
        "--actions",
        help="Actions file of live runs (edgewire run): the only place commands may come "
        r"from (docs/run.md) \[env: EDGEWIRE_ACTIONS_FILE].",
    ),
    run_post_allow: str | None = typer.Option(
        None,
        help="URL prefixes a live run's POSTs may go to, comma-separated "
        r"\[env: EDGEWIRE_RUN_POST_ALLOW].",
    ),
    run_source_allow: str | None = typer.Option(
        None,
        help="Folders and URL prefixes (http, https, rtsp) a live run's source may come "
        r"from, comma-separated; cameras need none \[env: EDGEWIRE_RUN_SOURCE_ALLOW].",
    ),
    config: Path | None = typer.Option(
        None, help=r"TOML file with \[agent] settings (and \[automation]: docs/automation.md)."
    ),
) -> None:
    """The options every agent has; only its signature is used (see ``agent_command``)."""


def _port_option(spec: PortSpec) -> inspect.Parameter:
    return inspect.Parameter(
        spec.config_key,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            spec.flag,
            help=f"Also open this port for {escape(spec.summary)}; the seed used {spec.seed_port}.",
        ),
        annotation=int | None,
    )


def _public_option(spec: PortSpec) -> inspect.Parameter:
    return inspect.Parameter(
        _public_key(spec),
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            False,
            spec.public_flag,
            help=(
                f"Open the {spec.name} port on --host even with a token: it cannot carry "
                r"one, so it listens on loopback only otherwise \[env: "
                f"EDGEWIRE_LEGACY_PUBLIC={spec.name}]."
            ),
        ),
        annotation=bool,
    )


def _public_key(spec: PortSpec) -> str:
    return f"legacy_{spec.name}_public"


def agent_command(**options: Any) -> None:
    from edgewire.agent.server import Agent, run_agent

    config_file = options.pop("config")
    public = [
        spec.name for spec in PORTS if spec.loopback_with_token and options.pop(_public_key(spec))
    ]
    # Not given: None, so that EDGEWIRE_LEGACY_PUBLIC and the config file still count.
    options["legacy_public"] = frozenset(public) if public else None
    cfg = load_config(AgentConfig, config_file=config_file, flags=options)

    def started(agent: Agent) -> None:
        ports = ", ".join(f"{name} {p}" for name, p in agent.ports.items())
        console.print(
            f"edgewire agent on {cfg.host}: {ports}; data in {cfg.data_dir}", highlight=False
        )

    run(run_agent(cfg, on_started=started))


def _signature() -> inspect.Signature:
    """The fixed options with one port option per PortSpec, before the MnistProt model."""
    fixed = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(_fixed_options, eval_str=True).parameters.values()
    ]
    cut = [p.name for p in fixed].index("legacy_mnistprot_model")
    ports = [_port_option(spec) for spec in PORTS]
    ports += [_public_option(spec) for spec in PORTS if spec.loopback_with_token]
    return inspect.Signature([*fixed[:cut], *ports, *fixed[cut:]])


# typer reads the options from the signature, which a ``**options`` function lets us build.
agent_command.__signature__ = _signature()  # type: ignore[attr-defined]
