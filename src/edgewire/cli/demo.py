"""``edgewire demo``: the whole loop on loopback, with nothing to set up."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import typer

from edgewire.cli.common import console, run
from edgewire.cli.progress import TrainDisplay
from edgewire.cli.train import load_splits, print_summary, spec_dict


def demo_command(
    data_dir: Path = typer.Option(
        Path("edgewire-data/demo"), help="Where the demo agent keeps its runs."
    ),
    epochs: int = typer.Option(1, min=1),
    batch_size: int = typer.Option(32, min=1),
    limit: int | None = typer.Option(None, min=100, help="Use only this many MNIST digits."),
) -> None:
    summary, rate = run(
        _demo(data_dir=data_dir.resolve(), epochs=epochs, batch_size=batch_size, limit=limit)
    )
    print_summary(
        summary, samples_per_s=rate, title="edgewire demo: streaming training on loopback"
    )


async def _demo(
    *, data_dir: Path, epochs: int, batch_size: int, limit: int | None
) -> tuple[dict[str, Any], float]:
    from edgewire.agent.server import Agent
    from edgewire.config import AgentConfig
    from edgewire.train.stream_client import StreamOptions, stream_training

    agent = Agent(AgentConfig(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir))
    await agent.start()
    try:
        console.print(
            f"[bold]1.[/] agent on 127.0.0.1 (native port {agent.ports['native']}, "
            f"HTTP {agent.ports['http']}), data in {data_dir}"
        )
        train, val = load_splits("mnist5k", val_fraction=0.1, limit=limit, image_size=None, seed=0)
        console.print(
            f"[bold]2.[/] streaming {len(train):,} real MNIST digits ({len(val):,} held out), "
            f"{epochs} epoch(s), batch {batch_size}, to the agent, which trains on-device"
        )
        options = StreamOptions(
            run_id=time.strftime("demo-%Y%m%d-%H%M%S"),
            spec=spec_dict(train, model="mnist_cnn", optimizer="adam", lr=1e-3, seed=0),
            epochs=epochs,
            batch_size=batch_size,
            checkpoint_every=50,
        )
        total = epochs * (math.ceil(len(train) / batch_size) + math.ceil(len(val) / batch_size))
        with TrainDisplay(console=console, total=total) as display:
            summary = await stream_training(
                "127.0.0.1", agent.ports["native"], train, val, options, on_event=display
            )
        return summary, display.samples_per_s
    finally:
        await agent.stop()
