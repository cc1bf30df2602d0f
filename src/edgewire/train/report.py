"""The test-split report: accuracy, per-class precision/recall, the confusion matrix
(as JSON, an aligned text table and, with the ``plot`` extra, a PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgewire import fsutil


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Rows of ``confusion`` are the true class, columns the predicted one."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    total = int(confusion.sum())
    per_class = []
    for i, name in enumerate(classes):
        hits, predicted, support = (
            int(confusion[i, i]), int(confusion[:, i].sum()), int(confusion[i].sum())
        )  # fmt: skip
        per_class.append({
            "class": name,
            # 0.0 for a class never predicted (or absent), as scikit-learn's zero_division=0.
            "precision": hits / predicted if predicted else 0.0,
            "recall": hits / support if support else 0.0,
            "support": support,
        })  # fmt: skip
    return {
        "accuracy": int(np.trace(confusion)) / total if total else 0.0,
        "samples": total,
        "classes": list(classes),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def confusion_text(report: dict[str, Any]) -> str:
    """The matrix as a table: one row per true class, one column per predicted class."""
    classes = [str(c) for c in report["classes"]]
    matrix = report["confusion"]
    width = max([len(c) for c in classes] + [len(str(v)) for row in matrix for v in row] + [4])
    label = max([len(c) for c in classes] + [len("true \\ pred")])
    lines = ["true \\ pred".ljust(label) + " " + " ".join(c.rjust(width) for c in classes)]
    for name, row in zip(classes, matrix, strict=True):
        lines.append(name.ljust(label) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines) + "\n"


def write_confusion_png(report: dict[str, Any], path: Path) -> str | None:
    """Plot the matrix to ``path`` (atomically); None, or why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a headless box
        from matplotlib.figure import Figure
    except ImportError:
        return "confusion.png skipped: matplotlib is not installed (pip install 'edgewire[plot]')"
    classes = [str(c) for c in report["classes"]]
    matrix = np.asarray(report["confusion"], dtype=np.int64)
    side = max(3.0, 0.5 * len(classes) + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = list(range(len(classes)))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test accuracy {100 * report['accuracy']:.1f}%")
    if len(classes) <= 30:
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > limit else "black", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fsutil.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return None
