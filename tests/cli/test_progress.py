"""The training display: the bar names its epoch of how many and counts that epoch's batches."""

from __future__ import annotations

import io

from rich.console import Console

from edgewire.cli.progress import TrainDisplay


def test_the_bar_names_the_epoch_of_how_many_and_counts_its_batches() -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    with TrainDisplay(console=console, total=20, epochs=2) as display:
        display("ready", {"next_seq": 0})
        for epoch in (0, 1):
            for _ in range(10):
                display("feedback", {"epoch": epoch, "split": "train", "count": 8, "loss": 0.5,
                                     "accuracy": 0.9, "step_ms": 3.0})  # fmt: skip
    text = out.getvalue()
    assert "epoch 2/2 train" in text
    assert "10/10" in text and "20/20" not in text and "20/10" not in text
