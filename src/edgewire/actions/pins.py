"""Pin backends: Jetson.GPIO (BOARD numbering), libgpiod v2, and ``sim``.

Every backend records its transitions (pin, level, time, frame), so a run's API and
``/metrics`` show them whatever drives the pins; ``sim`` only records (as gpiozero's
mock pin factory does). Every open backend is driven low at interpreter exit too.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgewire.errors import ConfigError, DependencyMissing

log = logging.getLogger(__name__)
#: Transitions a backend keeps (the oldest go first).
MAX_TRANSITIONS = 10_000
GPIOD_CHIP = "/dev/gpiochip0"


@dataclass(frozen=True, slots=True)
class Transition:
    pin: int
    level: int
    #: Wall-clock seconds (time.time()).
    time: float
    frame: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"pin": self.pin, "level": self.level, "time": self.time, "frame": self.frame}


OnTransition = Callable[[Transition], None]


class Pins:
    """Output pins, all low at first; subclasses set a line in :meth:`_set`."""

    kind = "sim"

    def __init__(self, pins: Iterable[int], *, on_transition: OnTransition | None = None) -> None:
        self.pins = tuple(sorted(set(pins)))
        self.levels = dict.fromkeys(self.pins, 0)
        self.transitions: deque[Transition] = deque(maxlen=MAX_TRANSITIONS)
        self.count = 0
        self._on_transition = on_transition
        self._lock = threading.Lock()  # the atexit path may run beside the loop
        _OPEN.add(self)

    def write(self, pin: int, level: int, *, frame: int | None = None) -> Transition | None:
        """Set ``pin`` to ``level`` (0/1); the transition, or None when it was there already."""
        with self._lock:
            if self.levels.get(pin) == level:
                return None
            self._set(pin, level)
            self.levels[pin] = level
            moved = Transition(pin, level, time.time(), frame)
            self.transitions.append(moved)
            self.count += 1
        if self._on_transition is not None:
            self._on_transition(moved)
        return moved

    def all_low(self, *, frame: int | None = None) -> None:
        """Every pin low; a pin that fails to go low does not keep the others high."""
        for pin in self.pins:
            try:
                self.write(pin, 0, frame=frame)
            except Exception:  # the next pin must still go low
                log.exception("cannot drive pin %d low", pin)

    def close(self) -> None:
        self.all_low()
        _OPEN.discard(self)

    def _set(self, pin: int, level: int) -> None:
        """Simulated pins: nothing to drive."""


class SimPins(Pins):
    kind = "sim"


class GpiodPins(Pins):
    """libgpiod v2 (``gpiod`` >= 2, kernel >= 5.10): the lines are offsets on one chip."""

    kind = "gpiod"

    def __init__(self, pins: Iterable[int], *, chip: str = GPIOD_CHIP,
                 on_transition: OnTransition | None = None) -> None:  # fmt: skip
        gpiod = _import("gpiod", "pip install 'edgewire[gpio]' (libgpiod v2)")
        line = _import("gpiod.line", "pip install 'edgewire[gpio]' (libgpiod v2)")
        Direction, Value = line.Direction, line.Value

        self._value = {0: Value.INACTIVE, 1: Value.ACTIVE}
        wanted = tuple(sorted(set(pins)))
        try:
            settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE)
            self._request = gpiod.request_lines(
                chip, consumer="edgewire", config={wanted: settings}
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot drive lines {list(wanted)} of {chip}: {exc} "
                '(pins = "sim" in the actions file simulates them)'
            ) from exc
        super().__init__(wanted, on_transition=on_transition)

    def _set(self, pin: int, level: int) -> None:
        self._request.set_value(pin, self._value[level])

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._request.release()


class JetsonPins(Pins):
    """Jetson.GPIO in BOARD numbering (the 40-pin header's pin numbers)."""

    kind = "jetson"

    def __init__(self, pins: Iterable[int], *, on_transition: OnTransition | None = None) -> None:
        gpio = _import("Jetson.GPIO", "pip install Jetson.GPIO (on a Jetson)")
        self._gpio = gpio
        wanted = tuple(sorted(set(pins)))
        gpio.setwarnings(False)
        gpio.setmode(gpio.BOARD)
        try:
            gpio.setup(list(wanted), gpio.OUT, initial=gpio.LOW)
        except ValueError as exc:
            raise ConfigError(
                f"BOARD pins {list(wanted)}: {exc} "
                '(pins = "sim" in the actions file simulates them)'
            ) from exc
        super().__init__(wanted, on_transition=on_transition)

    def _set(self, pin: int, level: int) -> None:
        self._gpio.output(pin, self._gpio.HIGH if level else self._gpio.LOW)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self._gpio.cleanup(list(self.pins))


_said_sim = False


def open_pins(kind: str, pins: Iterable[int], *, on_transition: OnTransition | None = None) -> Pins:
    """The backend ``kind`` names; ``auto`` tries Jetson, then gpiod, then ``sim``
    (saying once that there is no GPIO here)."""
    global _said_sim
    wanted = list(pins)
    if kind == "sim":
        return SimPins(wanted, on_transition=on_transition)
    if kind == "jetson":
        return JetsonPins(wanted, on_transition=on_transition)
    if kind == "gpiod":
        return GpiodPins(wanted, on_transition=on_transition)
    if kind != "auto":
        raise ConfigError(f"pins must be auto, sim, gpiod or jetson, got {kind!r}")
    # Only a backend that is not here (not installed, or Jetson.GPIO off a Jetson) falls
    # back: a bad pin or a busy line on real GPIO is the user's to hear about.
    with contextlib.suppress(DependencyMissing):
        return JetsonPins(wanted, on_transition=on_transition)
    if glob.glob("/dev/gpiochip*"):
        with contextlib.suppress(DependencyMissing):
            return GpiodPins(wanted, on_transition=on_transition)
    if not _said_sim:
        _said_sim = True
        log.warning("no GPIO here; using simulated pins")
    return SimPins(wanted, on_transition=on_transition)


def _import(module: str, hint: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyMissing(f"{module} is not installed: {hint}") from exc
    except RuntimeError as exc:  # Jetson.GPIO off a Jetson: this hardware lacks it
        raise DependencyMissing(f"{module} cannot run here: {exc}") from exc


_OPEN: weakref.WeakSet[Pins] = weakref.WeakSet()


@atexit.register
def _all_low_at_exit() -> None:
    # A crash that skips the runs' finally blocks still leaves no pin high.
    for pins in list(_OPEN):
        pins.all_low()
