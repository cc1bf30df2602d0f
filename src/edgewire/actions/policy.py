"""Which actions a frame fires (sans-IO): (class, score, time) in, pin changes and triggers out.

A class takes over once it was seen ``debounce`` frames in a row at ``threshold`` or
above; it stays at least ``hold_s`` seconds; frames under the threshold count as "no
class", which lowers the pin the same way. Only the class in charge has its pin high,
and the old pin always goes low before the new one goes high.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgewire.actions.config import ActionsConfig


@dataclass(frozen=True, slots=True)
class PinChange:
    pin: int
    level: int


@dataclass(frozen=True, slots=True)
class Trigger:
    """A command or a POST of the class that just took over."""

    kind: str  # "command" | "post"
    class_name: str


@dataclass(frozen=True, slots=True)
class Decision:
    #: The class in charge after this frame (None: no class).
    active: str | None
    changes: tuple[PinChange, ...] = ()
    triggers: tuple[Trigger, ...] = ()


class Policy:
    def __init__(self, config: ActionsConfig) -> None:
        self.config = config
        self.active: str | None = None
        self._since = -float("inf")  # when the class in charge took over
        self._seen: str | None = None
        self._streak = 0

    def step(self, class_name: str, score: float, now: float) -> Decision:
        """One classified frame at time ``now`` (seconds, monotonic)."""
        cfg = self.config
        seen = class_name if score >= cfg.threshold else None
        self._streak = self._streak + 1 if seen == self._seen else 1
        self._seen = seen
        if seen == self.active or self._streak < cfg.debounce or now - self._since < cfg.hold_s:
            return Decision(self.active)
        return self._take_over(seen, now)

    def _take_over(self, name: str | None, now: float) -> Decision:
        actions = self.config.classes
        old = actions.get(self.active) if self.active is not None else None
        new = actions.get(name) if name is not None else None
        changes = []
        if old is not None and old.pin is not None:
            changes.append(PinChange(old.pin, 0))
        if new is not None and new.pin is not None:
            changes.append(PinChange(new.pin, 1))
        triggers = []
        if name is not None and new is not None:
            if new.command is not None:
                triggers.append(Trigger("command", name))
            if new.post is not None:
                triggers.append(Trigger("post", name))
        self.active = name
        self._since = now
        return Decision(name, tuple(changes), tuple(triggers))

    def release(self) -> tuple[PinChange, ...]:
        """The end of the run: the pin in charge goes low."""
        action = self.config.classes.get(self.active) if self.active is not None else None
        self.active = None
        return (PinChange(action.pin, 0),) if action is not None and action.pin is not None else ()
