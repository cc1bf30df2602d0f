"""The actions file (TOML): what each class of a live run drives.

    [run]
    threshold = 0.6      # a frame counts only at this score or above
    debounce = 3         # frames in a row before a class takes over
    hold_s = 1.0         # seconds a class stays at least, once it took over
    pins = "auto"        # auto | sim | gpiod | jetson

    [classes.cat]
    pin = 12             # BOARD numbering on a Jetson, a line offset with gpiod
    command = ["/usr/bin/logger", "cat"]   # argv, never a shell; local file only
    timeout_s = 5.0
    post = "http://10.0.0.5:8080/seen"     # to an allow-listed URL

A request over the network has the same shape as JSON, but may never carry a
command (:func:`parse_actions` with ``allow_commands=False`` refuses it).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgewire.errors import ConfigError, NotAllowed

#: The seed's pins: class 0 → BOARD 12, 1 → 16, 2 → 18.
DEFAULT_PINS = (12, 16, 18)
PIN_BACKENDS = ("auto", "sim", "gpiod", "jetson")
MAX_CLASSES = 256
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_PIN = 1023
MAX_FILE_BYTES = 256 * 1024
COMMAND_REFUSED = (
    "a run request from the network may not carry a command; put commands in the "
    "agent's own actions file (edgewire agent --actions FILE) and run with --actions agent"
)


@dataclass(frozen=True, kw_only=True)
class ClassAction:
    """What one class drives when it takes over."""

    pin: int | None = None
    command: tuple[str, ...] | None = None
    timeout_s: float = 5.0
    post: str | None = None


@dataclass(frozen=True, kw_only=True)
class ActionsConfig:
    threshold: float = 0.6
    debounce: int = 3
    hold_s: float = 1.0
    pins: str = "auto"
    #: By class name (a label of the model, or its index as text).
    classes: Mapping[str, ClassAction] = field(default_factory=dict)

    @property
    def has_commands(self) -> bool:
        return any(a.command is not None for a in self.classes.values())

    @property
    def post_urls(self) -> list[str]:
        return [a.post for a in self.classes.values() if a.post is not None]

    def for_labels(self, labels: Sequence[str]) -> ActionsConfig:
        """The classes keyed by the model's labels (an index as text names a label),
        with the default pins 12/16/18 on the first three labels when no class has a pin."""
        keyed: dict[str, ClassAction] = {}
        for key, action in self.classes.items():
            if key in labels:
                name = key
            elif key.isdigit() and int(key) < len(labels):
                name = labels[int(key)]
            else:
                shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
                raise ConfigError(
                    f"actions name class {key!r}, which the model does not have "
                    f"(its classes: {shown}); use a label or its index"
                )
            if name in keyed:
                raise ConfigError(f"actions name class {name!r} twice (by label and by index)")
            keyed[name] = action
        if not any(a.pin is not None for a in keyed.values()):
            for label, pin in zip(labels, DEFAULT_PINS, strict=False):
                keyed[label] = replace(keyed.get(label, ClassAction()), pin=pin)
        return replace(self, classes=keyed)

    def to_request(self) -> dict[str, Any]:
        """The JSON a run request carries (pins and posts; never a command)."""
        classes: dict[str, Any] = {}
        for name, action in self.classes.items():
            entry: dict[str, Any] = {"timeout_s": action.timeout_s}
            if action.pin is not None:
                entry["pin"] = action.pin
            if action.post is not None:
                entry["post"] = action.post
            classes[name] = entry
        run = {"threshold": self.threshold, "debounce": self.debounce,
               "hold_s": self.hold_s, "pins": self.pins}  # fmt: skip
        return {"run": run, "classes": classes}


def load_actions(path: Path) -> ActionsConfig:
    """The actions file at ``path`` (commands allowed: it is local)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"actions file {str(path)!r} is {size} bytes, over {MAX_FILE_BYTES}")
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read actions file {str(path)!r}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"actions file {str(path)!r} is not TOML: {exc}") from exc
    return parse_actions(raw, source=f"actions file {str(path)!r}", allow_commands=True)


def parse_actions(data: Any, *, source: str, allow_commands: bool) -> ActionsConfig:
    """``{"run": {...}, "classes": {name: {...}}}`` as an :class:`ActionsConfig`;
    NotAllowed for a command when ``allow_commands`` is false (a network request)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: actions are a table with [run] and [classes.NAME]")
    _only(data, {"run", "classes"}, source)
    run = data.get("run", {})
    if not isinstance(run, Mapping):
        raise ConfigError(f"{source}: [run] must be a table")
    _only(run, {"threshold", "debounce", "hold_s", "pins"}, f"{source} [run]")
    threshold = _number(run, "threshold", 0.6, source, low=0.0, high=1.0)
    debounce = _int(run, "debounce", 3, source, low=1, high=1000)
    hold_s = _number(run, "hold_s", 1.0, source, low=0.0, high=3600.0)
    pins = run.get("pins", "auto")
    if pins not in PIN_BACKENDS:
        raise ConfigError(f"{source}: pins must be one of {', '.join(PIN_BACKENDS)}, got {pins!r}")
    classes = data.get("classes", {})
    if not isinstance(classes, Mapping) or len(classes) > MAX_CLASSES:
        raise ConfigError(f"{source}: [classes] must be a table of at most {MAX_CLASSES} classes")
    parsed: dict[str, ClassAction] = {}
    used: dict[int, str] = {}
    for name, table in classes.items():
        where = f"{source} [classes.{name}]"
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ConfigError(f"{source}: a class name is 1 to 128 characters, got {name!r}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table (pin, command, timeout_s, post)")
        action = _class_action(table, where, allow_commands=allow_commands)
        if action.pin is not None:
            if action.pin in used:
                raise ConfigError(f"{where}: pin {action.pin} is class {used[action.pin]!r}'s too")
            used[action.pin] = name
        parsed[name] = action
    return ActionsConfig(threshold=threshold, debounce=debounce, hold_s=hold_s, pins=str(pins),
                         classes=parsed)  # fmt: skip


def _class_action(table: Mapping[str, Any], where: str, *, allow_commands: bool) -> ClassAction:
    _only(table, {"pin", "command", "timeout_s", "post"}, where)
    pin = None
    if "pin" in table:
        pin = _int(table, "pin", 0, where, low=0, high=MAX_PIN)
    command = None
    if "command" in table:
        if not allow_commands:
            raise NotAllowed(f"{where}: {COMMAND_REFUSED}")
        argv = table["command"]
        if (
            not isinstance(argv, list)
            or not 0 < len(argv) <= MAX_ARGS
            or not all(isinstance(a, str) and 0 < len(a) <= MAX_ARG_CHARS for a in argv)
        ):
            raise ConfigError(
                f"{where}: command is a list of 1 to {MAX_ARGS} non-empty strings (an argv, "
                f'run without a shell), such as ["/usr/bin/logger", "seen"]; got {argv!r:.80}'
            )
        command = tuple(argv)
    post = None
    if "post" in table:
        post = table["post"]
        if (
            not isinstance(post, str)
            or len(post) > MAX_URL_CHARS
            or not post.startswith(("http://", "https://"))
        ):
            raise ConfigError(f"{where}: post is an http(s):// URL, got {post!r:.80}")
    timeout_s = _number(table, "timeout_s", 5.0, where, low=0.001, high=300.0)
    return ClassAction(pin=pin, command=command, timeout_s=timeout_s, post=post)


def _only(table: Mapping[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in table if k not in keys)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r:.60} (known: {', '.join(sorted(keys))})"
        )


def _number(
    table: Mapping[str, Any], key: str, default: float, where: str, *, low: float, high: float
) -> float:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ConfigError(
            f"{where}: {key} must be a number from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def _int(
    table: Mapping[str, Any], key: str, default: int, where: str, *, low: int, high: int
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"{where}: {key} must be a whole number from {low} to {high}, got {value!r}"
        )
    return value
