"""The test-split report of a training run as terminal tables (local or remote runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(report: dict[str, Any], out: Console) -> None:
    """Accuracy, per-class precision/recall/support, then the confusion matrix as text."""
    from edgewire.train.report import confusion_text

    title = f"test split: {report['samples']:,} images, accuracy {100 * report['accuracy']:.1f}%"
    if isinstance(report.get("best_epoch"), int) and report["best_epoch"] >= 0:
        title += f" (best epoch {report['best_epoch'] + 1})"
    # A line of its own: as a table title it would wrap to the table's width.
    out.print(title, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("class")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("support", justify="right")
    for row in report["per_class"]:
        table.add_row(
            str(row["class"]),
            f"{100 * row['precision']:.1f}%",
            f"{100 * row['recall']:.1f}%",
            f"{row['support']:,}",
        )
    out.print(table)
    out.print("confusion matrix (rows: true class, columns: predicted)", highlight=False)
    # Plain text, never wrapped: the columns must stay aligned.
    out.print(confusion_text(report), end="", markup=False, highlight=False, soft_wrap=True)


def print_files(files: Mapping[str, str], out: Console) -> None:
    """The run's files, one whole path a line (a table cell would cut a long path)."""
    for key, path in files.items():
        out.print(f"{key}: {path}", markup=False, highlight=False, soft_wrap=True)
