"""``edgewire demo``: the whole loop on loopback, with nothing to set up.

1. start an agent (native, HTTP and MnistProt ports) on 127.0.0.1;
2. stream real MNIST digits to it; it trains on-device and exports ONNX;
3. deploy that model to it over HTTP (sha256-checked, warmed up);
4. ask it about real held-out digits in the ESP8266 seed's exact byte format;
5. serve a few hundred emulated microcontroller clients over MnistProt and
   native at once, and print the latency table;
6. the ai_nano loop on generated camera footage: ``edgewire pipeline`` captures
   three classes from video files, splits, trains, exports fp32 and int8, deploys
   int8 through the accuracy gate, then ``edgewire run`` classifies a video whose
   class changes every 3 s at 10 Hz and drives (simulated) GPIO pins 12/16/18.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer

from edgewire.cli.common import console, run
from edgewire.cli.progress import TrainDisplay
from edgewire.cli.train import load_splits, print_summary


def demo_command(
    keep: Path | None = typer.Option(
        None,
        "--keep",
        "--data-dir",
        file_okay=False,
        help="Keep the demo's runs and models (about 20 MB) in this folder. Without it they "
        "go to a temporary folder that is removed at the end.",
    ),
    epochs: int = typer.Option(1, min=1),
    batch_size: int = typer.Option(32, min=1),
    limit: int | None = typer.Option(None, min=100, help="Use only this many MNIST digits."),
    clients: int = typer.Option(200, min=1, help="Emulated microcontrollers per protocol."),
    seconds: float = typer.Option(3.0, min=0.5, help="How long each serving run lasts."),
    pipeline: bool = typer.Option(
        True, "--pipeline/--no-pipeline", help="Also run the camera-to-GPIO pipeline (step 6)."
    ),
) -> None:
    with _data_dir(keep) as data_dir:
        run(
            _demo(
                data_dir=data_dir,
                epochs=epochs,
                batch_size=batch_size,
                limit=limit,
                clients=clients,
                seconds=seconds,
                pipeline=pipeline,
            )
        )
    if keep is not None:
        console.print(f"the demo's runs and models are kept in {data_dir}", highlight=False)


@contextlib.contextmanager
def _data_dir(keep: Path | None) -> Iterator[Path]:
    """``keep`` (resolved), or a temporary folder removed afterwards, on error too."""
    if keep is not None:
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="edgewire-demo-") as tmp:
        yield Path(tmp)


async def _demo(
    *,
    data_dir: Path,
    epochs: int,
    batch_size: int,
    limit: int | None,
    clients: int,
    seconds: float,
    pipeline: bool,
) -> None:
    from edgewire.agent.server import Agent
    from edgewire.config import AgentConfig
    from edgewire.train.stream_client import StreamOptions, spec_for, stream_training

    config = AgentConfig(
        host="127.0.0.1", port=0, http_port=0, legacy_ports={"mnistprot": 0}, data_dir=data_dir,
        run_source_allow=frozenset({str(data_dir / "workspace")}),  # the generated videos
    )  # fmt: skip
    agent = Agent(config)
    await agent.start()
    try:
        ports = agent.ports
        console.print(
            f"[bold]1.[/] agent on 127.0.0.1: native {ports['native']}, HTTP {ports['http']}, "
            f"MnistProt {ports['mnistprot']}; data in {data_dir}; its dashboard (while the "
            f"demo runs): http://127.0.0.1:{ports['http']}/",
            highlight=False,
        )
        train, val = load_splits("mnist5k", val_fraction=0.1, limit=limit, image_size=None, seed=0)
        console.print(
            f"[bold]2.[/] streaming {len(train):,} real MNIST digits ({len(val):,} held out), "
            f"{epochs} epoch(s), batch {batch_size}; the agent trains on-device",
            highlight=False,
        )
        options = StreamOptions(
            run_id=time.strftime("demo-%Y%m%d-%H%M%S"),
            spec=spec_for(train, model="mnist_cnn", optimizer="adam", lr=1e-3, seed=0),
            epochs=epochs,
            batch_size=batch_size,
            checkpoint_every=50,
        )
        total = epochs * (math.ceil(len(train) / batch_size) + math.ceil(len(val) / batch_size))
        with TrainDisplay(console=console, total=total) as display:
            summary = await stream_training(
                "127.0.0.1", ports["native"], train, val, options, on_event=display
            )
        print_summary(
            summary, samples_per_s=display.samples_per_s, title="streaming training on loopback"
        )

        await _deploy_and_serve(agent, Path(summary["onnx"]), val, clients=clients, seconds=seconds)
        if pipeline:
            await _pipeline(data_dir / "workspace", http=f"127.0.0.1:{ports['http']}")
    finally:
        await agent.stop()


async def _deploy_and_serve(
    agent: Any, model: Path, val: Any, *, clients: int, seconds: float
) -> None:
    from edgewire.bench.loadgen import LoadSpec, run_load
    from edgewire.cli.bench import results_table
    from edgewire.cli.deploy import upload_model
    from edgewire.serve.store import DEFAULT_ALIAS

    ports = agent.ports
    deployed = await asyncio.to_thread(
        upload_model,
        model,
        host="127.0.0.1",
        port=ports["http"],
        name="mnist",
        alias=DEFAULT_ALIAS,
        token=None,
        timeout=120,
    )
    console.print(
        f"[bold]3.[/] deployed {model.name} as 'mnist' version {deployed['version']} "
        f"(sha256 {deployed['sha256'][:12]}…), loaded and warmed up",
        highlight=False,
    )
    correct = await asyncio.to_thread(
        _ask_like_an_esp8266, ports["mnistprot"], val.x[:20], val.y[:20]
    )
    console.print(
        f"[bold]4.[/] 20 held-out digits sent as the ESP8266 firmware does (3,180-byte flatbuffers, "
        f"96-byte answers): {correct}/20 recognised",
        highlight=False,
    )
    console.print(
        f"[bold]5.[/] {clients} emulated microcontrollers per protocol, {seconds:g} s each ..."
    )
    rows = []
    for protocol in ("mnistprot", "native"):
        spec = LoadSpec(
            host="127.0.0.1", port=ports[protocol], protocol=protocol, model="mnist",
            clients=clients, duration=seconds, input_shape=(1, 1, 28, 28),
        )  # fmt: skip
        result = await asyncio.to_thread(run_load, spec)
        rows.append({**result.summary(), "clients": f"{clients} {protocol}"})
    console.print(results_table(rows, title="serving the trained model on loopback"))


def _ask_like_an_esp8266(
    port: int, images: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> int:
    import socket

    from edgewire.wire.mnistprot import RESPONSE_SIZE, decode_response, encode_request

    correct = 0
    for image, label in zip(images, labels, strict=True):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode_request(image.reshape(-1).astype(np.float32) / 255))
            answer = b""
            while len(answer) < RESPONSE_SIZE and (chunk := sock.recv(RESPONSE_SIZE - len(answer))):
                answer += chunk
        correct += int(np.argmax(decode_response(answer).output) == label)
    return correct


async def _pipeline(root: Path, *, http: str) -> None:
    import json
    import sys

    from edgewire.actions.config import DEFAULT_PINS
    from edgewire.project.sample import segments_right, write_sample

    settings = (
        "[train]\nmodel = 'resnet_small'\nsize = 32\nepochs = 15\n"
        "[export]\nint8 = true\n"
        f"[deploy]\nto = '{http}'\nname = 'digits'\nvariant = 'int8'\nmin_accuracy = 0.6\n"
    )
    console.print(
        "[bold]6.[/] the ai_nano loop: generated camera footage of three classes (real MNIST "
        "digits 0, 1, 2 over photographs) → capture → split → train → export → gated deploy",
        highlight=False,
    )
    sample = await asyncio.to_thread(write_sample, root, settings=settings)
    command = [sys.executable, "-m", "edgewire.cli"]
    child = await asyncio.create_subprocess_exec(
        *command, "pipeline", "-w", str(root), "--to", "deploy"
    )
    if await child.wait() != 0:
        raise typer.Exit(1)
    console.print(
        f"    edgewire run on {sample.video.name} at 10 Hz (its class changes every 3 s); "
        "simulated pins 12/16/18 ...",
        highlight=False,
    )
    child = await asyncio.create_subprocess_exec(
        *command, "run", "--on", http, "--model", "digits", "--source", str(sample.video),
        "--json", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise typer.Exit(1)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    frames = [e for e in events if e.get("event") == "frame"]
    done = next(e for e in events if e.get("event") == "summary")
    labels = sorted(sample.workspace.classes)
    right, total = segments_right(sample, frames, dict(zip(labels, DEFAULT_PINS, strict=False)))
    console.print(
        f"    {done['frames']} frames at {done['fps']:.1f}/s, {done['transitions']} pin changes; "
        f"frame → pin p50 {done['pin_latency_ms']['p50']:.1f} ms, "
        f"p99 {done['pin_latency_ms']['p99']:.1f} ms; the right pin was high at the end of "
        f"{right} of {total} segments",
        highlight=False,
    )
