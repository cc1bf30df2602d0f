"""Benchmark output: a readable table, a section of docs/benchmarks.md, a JSON line."""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(
    console: Console, title: str, header: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="right" if name != header[0] else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section of ``path`` between this benchmark's markers."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"{begin}\n{body.rstrip()}\n\n_Last run: {stamp} on {machine()}._\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def json_line(figures: dict[str, Any]) -> str:
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()})
