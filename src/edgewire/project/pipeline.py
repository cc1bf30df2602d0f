"""``edgewire pipeline``: the workspace's steps in order, each skipped while up to date.

The steps are ``capture → split → train → export → deploy → run``; each is the
``edgewire`` command a user would type, built from its table in ``edgewire.toml``::

    [capture.cat]                 # one table per class (optional: import by hand instead)
    source = "cat.avi"            # camera 0, /dev/videoN, an MJPEG/RTSP URL, a file, a folder
    count = 60
    [split]
    ratios = "0.8,0.1,0.1"
    [train]
    model = "resnet_small"
    epochs = 10
    size = 64
    on = "gpu-box:8000"           # optional: train on a remote agent
    [export]
    int8 = true
    [deploy]
    to = "jetson:8000"
    name = "pets"
    variant = "int8"              # fp32 (default), fp16 or int8
    min_accuracy = 0.8            # gate on the workspace's test split
    [run]
    on = "jetson:8000"
    source = "0"
    rate = 10

A step is up to date when the digest of what it depends on (its table and the
output of the step before) is the one recorded when it last finished, and its
output is still what it made then. Digests of images and data sets are over file
names, which are the images' content hashes. The record (``.edgewire/pipeline.json``)
is written after each step finishes, so an interrupted pipeline starts again at the
step it was in. ``run`` is never skipped. Tokens are never read from the file: the
commands get ``EDGEWIRE_TOKEN`` from the environment.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewire import fsutil
from edgewire.errors import ConfigError
from edgewire.project.workspace import CONFIG_FILE, DATASET, IMAGES, LATEST, RUNS, Workspace

STEPS = ("capture", "split", "train", "export", "deploy", "run")
STATE_FILE = Path(".edgewire") / "pipeline.json"
EXPORT_DIR, EXPORT_FILE = "export", "model.onnx"
VARIANT_SUFFIX = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx"}

# Each step's keys: "value" → --key VALUE, "flag" → --key when true, "switch" → --key/--no-key.
_KEYS: dict[str, dict[str, str]] = {
    "capture": {"source": "value", "count": "value", "duration": "value", "every": "value",
                "size": "value"},
    "split": {"ratios": "value", "seed": "value"},
    "train": {"model": "value", "epochs": "value", "size": "value", "batch_size": "value",
              "lr": "value", "optimizer": "value", "patience": "value", "augment": "switch",
              "init": "value", "memory_budget": "value", "seed": "value", "on": "value"},
    "export": {"fp16": "flag", "int8": "flag", "opset": "value", "names": "value",
               "triton_repo": "value", "triton_name": "value", "max_batch": "value"},
    "deploy": {"to": "value", "name": "value", "alias": "value", "variant": "none",
               "min_accuracy": "value", "no_worse_than_current": "value", "gate": "none",
               "timeout": "value"},
    "run": {"on": "value", "model": "value", "source": "value", "rate": "value",
            "actions": "value", "max_frames": "value", "json": "flag"},
}  # fmt: skip
#: Keys that name a file of the workspace (relative paths are taken from its folder).
_PATHS = {("train", "init"), ("export", "triton_repo")}
#: Keys that may name a file of the workspace, or a camera or URL: a relative path is
#: taken from the workspace's folder when it is there. (``[run] source`` is not one:
#: it is a path on the agent's machine.)
_MAYBE_PATHS = {("capture", "source"), ("run", "actions")}
_SECRETS = {"token", "password", "secret"}


@dataclass(frozen=True)
class Step:
    name: str
    #: The ``edgewire`` commands (argv after ``edgewire``) that do the step, in order.
    commands: list[list[str]]
    #: Digest of what the step depends on.
    inputs: str
    #: Digest of what the step has made, now (None: missing).
    outputs: Callable[[], str | None]
    #: Whether a changed output makes the step run again (capture's images may grow by
    #: hand-made imports without a new capture being wanted).
    verify_outputs: bool = True
    cached: bool = True
    #: Why the step does nothing, when it has nothing to do.
    skip_reason: str | None = None


@dataclass
class State:
    path: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, ws: Workspace) -> State:
        path = ws.root / STATE_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); remove it to run every step") from None
        steps = data.get("steps") if isinstance(data, dict) else None
        return cls(path=path, steps=steps if isinstance(steps, dict) else {})

    def fresh(self, step: Step) -> bool:
        done = self.steps.get(step.name)
        if not step.cached or not isinstance(done, dict) or done.get("inputs") != step.inputs:
            return False
        now = step.outputs()
        return now is not None and (not step.verify_outputs or now == done.get("outputs"))

    def record(self, step: Step) -> None:
        self.steps[step.name] = {
            "inputs": step.inputs, "outputs": step.outputs(), "finished_at": time.time(),
        }  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": 1, "steps": self.steps}, indent=1, sort_keys=True)
        fsutil.atomic_write_bytes(self.path, text.encode(), what="record the pipeline step")


def step_range(start: str | None, stop: str | None) -> list[str]:
    for given in (start, stop):
        if given is not None and given not in STEPS:
            raise ConfigError(f"unknown step {given!r}; the steps are: {', '.join(STEPS)}")
    first = STEPS.index(start) if start else 0
    last = STEPS.index(stop) if stop else len(STEPS) - 1
    if first > last:
        raise ConfigError(f"--from {start} comes after --to {stop}")
    return list(STEPS[first : last + 1])


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tree_digest(root: Path) -> str | None:
    """Over the names (content hashes) and sizes of every file below ``root``."""
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file())
    listing = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in files]
    labels = root / "labels.txt"
    return digest(listing, labels.read_text("utf-8") if labels.is_file() else None)


def file_digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    return fsutil.sha256_file(path)


def latest_run(ws: Workspace) -> Path | None:
    """The folder of the workspace's last finished training run."""
    pointer = ws.root / RUNS / LATEST
    try:
        run_id = pointer.read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{pointer}: unreadable ({exc})") from None
    folder = ws.root / RUNS / run_id
    return folder if run_id and folder.is_dir() else None


def checkpoint_digest(ws: Workspace) -> str | None:
    run = latest_run(ws)
    return None if run is None else file_digest(run / "checkpoint.safetensors")


def export_path(ws: Workspace, variant: str = "fp32") -> Path:
    if variant not in VARIANT_SUFFIX:
        raise ConfigError(
            f"[deploy] variant must be one of {', '.join(VARIANT_SUFFIX)}, got {variant!r}"
        )
    return ws.root / EXPORT_DIR / f"model{VARIANT_SUFFIX[variant]}"


def _check_table(name: str, table: Mapping[str, Any], where: Path) -> None:
    secret = sorted(set(table) & _SECRETS)
    if secret:
        raise ConfigError(
            f"{where}: [{name}] has {secret}; a token never goes in the workspace file: "
            "set EDGEWIRE_TOKEN"
        )
    unknown = sorted(set(table) - set(_KEYS[name]))
    if unknown:
        raise ConfigError(
            f"{where}: [{name}] has unknown keys {unknown}; it takes: {', '.join(_KEYS[name])}"
        )
    for key, value in table.items():
        if not isinstance(value, str | int | float | bool) or (
            _KEYS[name][key] in ("flag", "switch") and not isinstance(value, bool)
        ):
            raise ConfigError(f"{where}: [{name}] {key} = {value!r} is not a usable value")


def flags(name: str, table: Mapping[str, Any], root: Path) -> list[str]:
    """The command-line flags a step's table stands for."""
    out: list[str] = []
    for key, value in table.items():
        kind = _KEYS[name][key]
        flag = "--" + key.replace("_", "-")
        if kind == "flag":
            out += [flag] if value else []
        elif kind == "switch":
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif kind == "value":
            text = str(value)
            relative = not Path(text).is_absolute()
            if relative and (
                (name, key) in _PATHS or ((name, key) in _MAYBE_PATHS and (root / text).exists())
            ):
                text = str(root / text)
            out += [flag, text]
    return out


def plan(ws: Workspace) -> list[Step]:
    """Every step of ``ws``, each with its commands and digests (nothing runs here)."""
    where = ws.root / CONFIG_FILE
    tables = {name: ws.table(name) for name in STEPS}
    captures = tables.pop("capture")
    for klass, table in captures.items():
        ws.class_dir(str(klass))  # an unknown class is refused here
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [capture.{klass}] must be a table")
        _check_table("capture", table, where)
        if "source" not in table:
            raise ConfigError(f"{where}: [capture.{klass}] needs a source")
    for name, table in tables.items():
        _check_table(name, table, where)
    root = str(ws.root)
    capture = [["project", "capture", "-w", root, "--class", str(klass),
                *flags("capture", table, ws.root)] for klass, table in captures.items()]  # fmt: skip
    steps = [
        Step(
            name="capture",
            commands=capture,
            inputs=digest("capture", captures),
            outputs=lambda: tree_digest(ws.root / IMAGES),
            verify_outputs=False,
            skip_reason=None if captures else "no [capture.CLASS] sources; using the images there",
        )
    ]
    steps.append(Step(
        name="split",
        commands=[["project", "split", "-w", root, *flags("split", tables["split"], ws.root)]],
        inputs=digest("split", tables["split"], tree_digest(ws.root / IMAGES)),
        outputs=lambda: tree_digest(ws.root / DATASET),
    ))  # fmt: skip
    steps.append(Step(
        name="train",
        commands=[["train", "run", "-w", root, *flags("train", tables["train"], ws.root)]],
        inputs=digest("train", tables["train"], tree_digest(ws.root / DATASET)),
        outputs=lambda: checkpoint_digest(ws),
    ))  # fmt: skip
    run = latest_run(ws)
    export_out = export_path(ws)
    steps.append(Step(
        name="export",
        commands=[["export", str(run or ws.root / RUNS / LATEST), "--out", str(export_out),
                   *flags("export", tables["export"], ws.root)]],
        inputs=digest("export", tables["export"], checkpoint_digest(ws)),
        outputs=lambda: file_digest(export_out),
    ))  # fmt: skip
    deploy = tables["deploy"]
    model = export_path(ws, str(deploy.get("variant", "fp32")))
    gate = ["--gate-data", root] if deploy.get("gate", "min_accuracy" in deploy) else []
    name = str(deploy.get("name", ws.name))
    steps.append(Step(
        name="deploy",
        commands=[["deploy", str(model), "--name", name, *gate,
                   *flags("deploy", {k: v for k, v in deploy.items() if k != "name"}, ws.root)]],
        inputs=digest("deploy", deploy, file_digest(model)),
        outputs=lambda: file_digest(model),
        skip_reason=None if "to" in deploy else "no [deploy] to = HOST:PORT",
    ))  # fmt: skip
    running = tables["run"]
    steps.append(Step(
        name="run",
        commands=[["run", "--model", str(running.get("model", name)),
                   *flags("run", {k: v for k, v in running.items() if k != "model"}, ws.root)]],
        inputs=digest("run", running),
        outputs=lambda: None,
        cached=False,
        skip_reason=None if {"on", "source"} <= set(running) else "no [run] on and source",
    ))  # fmt: skip
    return steps
