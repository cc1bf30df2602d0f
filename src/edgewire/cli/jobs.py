"""``edgewire jobs``: the automation jobs of an agent (webhook and polling triggers)."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from edgewire.cli.agent_http import auth_headers, check, send
from edgewire.cli.common import console
from edgewire.errors import ConfigError
from edgewire.ports import DEFAULT_HTTP_PORT, parse_address


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def jobs_command(
    to: str = typer.Option(f"127.0.0.1:{DEFAULT_HTTP_PORT}", "--to", help="Agent HOST:HTTP_PORT."),
    job_id: int | None = typer.Option(
        None, "--id", min=1, help="Show this job in full, with its log tail."
    ),
    limit: int = typer.Option(20, min=1, max=500, help="How many of the newest jobs to list."),
    token: str | None = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN]."),
    as_json: bool = typer.Option(False, "--json", help="Print the agent's JSON answer."),
) -> None:
    """List the automation jobs of an agent, or show one."""
    host, port = parse_address(to, default_port=DEFAULT_HTTP_PORT)
    path = f"/api/jobs/{job_id}" if job_id is not None else f"/api/jobs?limit={limit}"
    response = send("GET", host, port, path, headers=auth_headers(token), timeout=30)
    if response.status_code == 404 and job_id is None:
        raise ConfigError(
            f"{host}:{port} runs no automation: its config file has no [automation] table"
        )
    body = check(response, "list jobs" if job_id is None else f"show job {job_id}")
    if as_json:
        console.print_json(json.dumps(body))
        return
    if job_id is not None:
        _show(body)
        return
    counts = ", ".join(f"{n} {state}" for state, n in body["counts"].items())
    table = Table(title=f"jobs on {host}:{port} ({counts})")
    for column in ("id", "kind", "state", "attempts", "artifact", "model", "updated", "error"):
        table.add_column(column, overflow="fold")
    for job in body["jobs"]:
        table.add_row(
            str(job["id"]), job["kind"], job["state"], f"{job['attempts']}/{job['max_attempts']}",
            job.get("ref") or "-", job.get("model") or "-", _when(job["updated_at"]),
            job.get("error") or "",
        )  # fmt: skip
    console.print(table)


def _show(job: dict[str, object]) -> None:
    table = Table(title=f"job {job['id']}", show_header=False)
    for key in ("kind", "state", "attempts", "max_attempts", "ref", "version_id", "model", "key"):
        table.add_row(key, str(job.get(key) if job.get(key) is not None else "-"))
    for key in ("created_at", "updated_at", "finished_at"):
        value = job.get(key)
        table.add_row(key, _when(value if isinstance(value, int | float) else None))
    if job.get("error"):
        table.add_row("error", str(job["error"]))
    if job.get("result") is not None:
        table.add_row("result", json.dumps(job["result"], sort_keys=True))
    console.print(table)
    tail = str(job.get("log_tail") or "")
    if tail:
        console.print("log:", highlight=False)
        console.print(tail, markup=False, highlight=False, soft_wrap=True)
