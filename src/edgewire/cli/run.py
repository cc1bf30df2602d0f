"""``edgewire run`` and ``edgewire runs``: live runs on an agent (its camera, its pins).

``run`` starts one and follows its server-sent events (``/api/runs/{id}/events``) until
its summary; Ctrl-C detaches and leaves it running. ``runs`` lists runs and stops one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.table import Table

from edgewire.actions.config import load_actions
from edgewire.cli.agent_http import auth_headers, check, send
from edgewire.cli.common import console, err_console
from edgewire.client.native import tls_from_env
from edgewire.errors import ConfigError, ConnectError, RemoteError
from edgewire.ports import DEFAULT_HTTP_PORT, parse_address
from edgewire.wire import sse

_ON = typer.Option(f"127.0.0.1:{DEFAULT_HTTP_PORT}", "--on", help="Agent HOST:HTTP_PORT.")
_TOKEN = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN].")
#: Seconds without a byte (the agent sends a keep-alive every 10 s) before reconnecting.
READ_TIMEOUT = 30.0
RECONNECTS = 3


def run_command(
    on: str = _ON,
    model: str = typer.Option(..., help="The served model that classifies each frame."),
    source: str = typer.Option(
        ...,
        help="On the AGENT's machine: a camera (0, /dev/video0), an http(s) MJPEG or "
        "rtsp:// URL, a video file or an image folder (files and URLs only under the "
        "agent's --run-source-allow).",
    ),
    rate: float = typer.Option(10.0, min=0.01, max=100.0, help="Frames classified a second."),
    actions: str | None = typer.Option(
        None,
        help="An actions file (TOML: pins and posts; commands only from the agent's own "
        "file), or 'agent' for the agent's --actions file \\[default: the agent's file if "
        "it has one, else pins 12/16/18 for the first three classes].",
    ),
    max_frames: int | None = typer.Option(None, min=1, help="Stop after this many frames."),
    loop: bool = typer.Option(False, help="Start a video file again at its end."),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON line per event, the summary last."
    ),
    detach: bool = typer.Option(False, help="Start it and return; it keeps running."),
    token: str | None = _TOKEN,
) -> None:
    """Run a model on an agent's camera or video, driving its pins and actions."""
    host, port = parse_address(on, default_port=DEFAULT_HTTP_PORT)
    body: dict[str, Any] = {"model": model, "source": source, "rate": rate, "loop": loop}
    if max_frames is not None:
        body["max_frames"] = max_frames
    if actions == "agent":
        body["actions"] = "agent"
    elif actions is not None:
        parsed = load_actions(Path(actions))
        if parsed.has_commands:
            raise ConfigError(
                f"{actions} has commands: they run only from the agent's own actions file; "
                "start the agent with edgewire agent --actions FILE and run with --actions agent"
            )
        body["actions"] = parsed.to_request()
    headers = auth_headers(token)
    answer = send("POST", host, port, "/api/runs", json=body, headers=headers, timeout=30)
    run_id = str(check(answer, "start the run")["id"])
    stop_hint = f"edgewire runs --on {on} --stop {run_id}"
    if detach:
        if as_json:
            print(json.dumps({"id": run_id}), flush=True)
        else:
            console.print(f"run {run_id} started; stop it with: {stop_hint}", highlight=False)
        return
    if not as_json:
        err_console.print(f"run {run_id}: {model} on {source} at {rate:g} Hz (Ctrl-C detaches)",
                          highlight=False)  # fmt: skip
    try:
        summary = _follow(host, port, run_id, headers, as_json=as_json)
    except KeyboardInterrupt:
        err_console.print(
            f"detached; run {run_id} keeps running on the agent; stop it with: {stop_hint}",
            highlight=False,
        )
        return
    if not as_json:
        _print_summary(summary)
    if summary.get("state") == "failed":
        raise RemoteError(f"run {run_id} failed: {summary.get('reason')}", remote_code="run_failed")


def runs_command(
    on: str = _ON,
    stop: str | None = typer.Option(None, help="Stop this run (its pins go low)."),
    as_json: bool = typer.Option(False, "--json", help="Print the agent's JSON answer."),
    token: str | None = _TOKEN,
) -> None:
    """List the live runs of an agent, or stop one."""
    host, port = parse_address(on, default_port=DEFAULT_HTTP_PORT)
    headers = auth_headers(token)
    if stop is not None:
        answer = send("POST", host, port, f"/api/runs/{stop}/stop", headers=headers, timeout=30)
        body = check(answer, f"stop run {stop}")
        if as_json:
            print(json.dumps(body), flush=True)
        else:
            console.print(f"run {stop} {body['state']}; every pin low", highlight=False)
        return
    body = check(send("GET", host, port, "/api/runs", headers=headers, timeout=30), "list runs")
    if as_json:
        print(json.dumps(body), flush=True)
        return
    table = Table(title=f"live runs on {host}:{port}")
    for column in ("id", "state", "model", "source", "frames", "fps", "p99 ms", "started"):
        table.add_column(column, overflow="fold")
    for run in body["runs"]:
        p99 = run["latency_ms"]["p99"]
        table.add_row(
            run["id"], run["state"], run["model"], run["source"], str(run["frames"]),
            f"{run['fps']:.1f}", "-" if p99 is None else f"{p99:.1f}",
            time.strftime("%H:%M:%S", time.localtime(run["started"])),
        )  # fmt: skip
    console.print(table)


def _follow(
    host: str, port: int, run_id: str, headers: dict[str, str], *, as_json: bool
) -> dict[str, Any]:
    """Print the run's events until its summary (reconnecting where the last one left off)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = tls_from_env()
    scheme = "https" if context is not None else "http"
    last = 0
    failures = 0
    while True:
        url = f"{scheme}://{where}/api/runs/{run_id}/events?after={last}"
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
        try:
            with httpx.stream("GET", url, headers=headers, timeout=timeout,
                              verify=context if context is not None else True) as stream:  # fmt: skip
                if stream.status_code >= 400:
                    stream.read()
                    check(stream, f"follow run {run_id}")
                for seq, kind, data in _events(stream):
                    last, failures = seq, 0
                    _print_event(kind, data, as_json=as_json)
                    if kind == "summary":
                        return data
        except httpx.HTTPError as exc:
            failures += 1
            if failures > RECONNECTS:
                raise ConnectError(f"lost the events of run {run_id}: {exc}") from exc
            time.sleep(min(2.0**failures / 4, 2.0))


def _events(stream: httpx.Response) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(id, event, data) of a server-sent event stream; comments are skipped."""
    decoder = sse.Decoder()
    for chunk in stream.iter_bytes():
        for event in decoder.feed(chunk):
            yield event.seq or 0, event.kind, event.data


def _print_event(kind: str, data: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": kind, **data}), flush=True)
        return
    if kind == "frame":
        fired = ", ".join(_fired(f) for f in data.get("fired", []))
        pin = f", pin in {data['pin_latency_ms']:.1f} ms" if "pin_latency_ms" in data else ""
        console.print(
            f"frame {data['frame']:>6}  {data['label']:<12} {data['score']:.3f}  "
            f"{data['latency_ms']:6.1f} ms{pin}" + (f"  → {fired}" if fired else ""),
            highlight=False, markup=False,
        )  # fmt: skip
    elif kind == "action":
        outcome = data.get("error") or data.get("returncode", data.get("status"))
        console.print(f"  {data['kind']} of class {data['class']}: {outcome}",
                      highlight=False, markup=False)  # fmt: skip


def _fired(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "pin":
        return f"pin {entry['pin']} {'high' if entry['level'] else 'low'}"
    skipped = " (skipped: busy)" if entry.get("skipped") else ""
    return f"{entry.get('kind')} {entry.get('class')}{skipped}"


def _print_summary(summary: dict[str, Any]) -> None:
    lat, pin = summary["latency_ms"], summary["pin_latency_ms"]
    counts = ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()) or "none"
    console.print(
        f"run {summary['id']} {summary['state']} ({summary['reason']}): {summary['frames']} "
        f"frames at {summary['fps']:.1f} fps; classes: {counts}; {summary['transitions']} pin "
        f"transitions; latency p50/p99 {lat['p50']}/{lat['p99']} ms, frame to pin "
        f"{pin['p50']}/{pin['p99']} ms",
        highlight=False, markup=False,
    )  # fmt: skip
