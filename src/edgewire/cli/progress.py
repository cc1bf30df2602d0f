"""Live display of a training run (streamed or local), or JSON lines with --json."""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


class TrainDisplay:
    """Takes the (kind, data) events of a run and shows them."""

    def __init__(
        self,
        *,
        console: Console,
        total: int,
        epochs: int = 1,
        as_json: bool = False,
        resume: bool = False,
    ) -> None:
        self.console = console
        self.epochs = epochs
        self.as_json = as_json
        self.resume = resume  # asked to resume: say so when there was nothing to resume
        self.total = total
        self.samples = 0
        self.started = time.perf_counter()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("loss {task.fields[loss]} acc {task.fields[acc]}"),
            TextColumn("{task.fields[step]} {task.fields[mem]}"),
            console=console,
            disable=as_json,
            transient=False,
        )
        # The bar counts the batches of the epoch it names (``total`` is the run's).
        self._per_epoch = max(total // max(epochs, 1), 1)
        self._epoch = 0
        self._task = self._progress.add_task(
            "training", total=self._per_epoch, rate="", loss="-", acc="-", step="", mem=""
        )
        self._mem = ""
        #: The agent's TRAIN_READY (None until the run started): a run to resume exists.
        self.ready: dict[str, Any] | None = None

    def __enter__(self) -> TrainDisplay:
        self._progress.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(et, ev, tb)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(time.perf_counter() - self.started, 1e-9)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps({"event": kind, **data}) + "\n")
            sys.stdout.flush()
        if kind == "ready":
            self.ready = data
            done = int(data.get("next_seq", 0))
            self._epoch = done // self._per_epoch
            self._progress.update(self._task, completed=done % self._per_epoch)
            self.started = time.perf_counter()
            if data.get("resumed") and not self.as_json:
                self.console.print(
                    f"resuming run {data['run_id']!r} at batch {done} (device: {data['device']})"
                )
            elif self.resume and not self.as_json:
                self.console.print(
                    f"[yellow]the agent has no run {data.get('run_id')!r} to resume "
                    "(check --run-id): starting it from the first batch[/]",
                    highlight=False,
                )
        elif kind == "feedback":
            if data.get("split") == "train" and not data.get("duplicate"):
                self.samples += int(data["count"])
            epoch = int(data["epoch"])
            if epoch != self._epoch:  # a new epoch: its own count from 0
                self._epoch = epoch
                self._progress.update(self._task, completed=0)
            mem = int(data.get("memory_bytes", 0))
            if mem:
                self._mem = f"{mem / 2**20:.0f} MB"
            self._progress.update(
                self._task,
                advance=1,
                description=f"epoch {int(data['epoch']) + 1}/{self.epochs} {data['split']}",
                rate=f"{self.samples_per_s:,.0f}/s",
                loss=_loss(data["loss"]),
                acc=_pct(float(data["accuracy"])),
                step=f"{float(data['step_ms']):.0f} ms",
                mem=self._mem,
            )
        elif kind == "epoch" and not self.as_json:
            train = data["train"]
            line = f"epoch {int(data['epoch']) + 1}: train loss {_loss(train['loss'])} acc {_pct(train['accuracy'])}"
            if data.get("val"):
                val = data["val"]
                line += f" | held-out loss {_loss(val['loss'])} acc {_pct(val['accuracy'])}"
            self._progress.console.print(line, highlight=False)


def _loss(value: object) -> str:
    """A loss as 4 decimals; the agent sends null for one that overflowed."""
    return "nan" if value is None else f"{float(value):.4f}"  # type: ignore[arg-type]
