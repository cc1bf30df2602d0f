"""Pin backends: sim records every transition; auto falls back to sim here and says so once."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewire.actions import pins as pins_module
from edgewire.actions.pins import SimPins, Transition, open_pins
from edgewire.errors import ConfigError, DependencyMissing
from tests.actions.live_model import jetson_library


def test_sim_pins_record_every_transition_and_go_low() -> None:
    seen: list[Transition] = []
    pins = SimPins([18, 12, 16], on_transition=seen.append)
    assert pins.pins == (12, 16, 18) and set(pins.levels.values()) == {0}
    assert pins.write(12, 1, frame=3) is not None
    assert pins.write(12, 1, frame=4) is None  # already high: no transition
    pins.write(12, 0, frame=5)
    pins.write(16, 1, frame=5)
    pins.close()
    assert [(t.pin, t.level, t.frame) for t in pins.transitions] == [
        (12, 1, 3), (12, 0, 5), (16, 1, 5), (16, 0, None)
    ]  # fmt: skip
    assert seen == list(pins.transitions) and pins.count == 4
    times = [t.time for t in pins.transitions]
    assert times == sorted(times)
    assert not any(pins.levels.values())


def test_auto_uses_sim_where_no_gpio_exists_and_says_it_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pins_module, "_said_sim", False)
    with caplog.at_level(logging.WARNING, logger="edgewire.actions.pins"):
        first = open_pins("auto", [12])
        second = open_pins("auto", [16])
    assert first.kind == second.kind == "sim"
    assert [r.getMessage() for r in caplog.records].count("no GPIO here; using simulated pins") == 1
    first.close()
    second.close()


def test_named_backends_that_cannot_load_say_how_to_install() -> None:
    # Neither Jetson.GPIO nor gpiod is installed on the test machine.
    with pytest.raises(DependencyMissing, match=r"edgewire\[gpio\]"):
        open_pins("gpiod", [12])
    with pytest.raises(DependencyMissing, match=r"Jetson\.GPIO"):
        open_pins("jetson", [12])


def test_every_open_backend_goes_low_at_exit() -> None:
    pins = SimPins([12, 16])
    pins.write(16, 1)
    pins_module._all_low_at_exit()
    assert pins.levels == {12: 0, 16: 0}
    pins.close()


@pytest.fixture
def jetson_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("Jetson.GPIO", "Jetson"):
        sys.modules.pop(name, None)


def test_auto_on_a_jetson_reports_a_bad_pin_instead_of_simulating(jetson_path: Path) -> None:
    jetson_library(jetson_path, (
        "BOARD, OUT, LOW, HIGH = 10, 0, 0, 1\n"
        "def setwarnings(flag): pass\n"
        "def setmode(mode): pass\n"
        "def setup(channels, direction, initial=0):\n"
        "    raise ValueError(f'Channel {channels[0]} is invalid')\n"
    ))  # fmt: skip
    with pytest.raises(ConfigError, match=r"BOARD pins \[7\]: Channel 7 is invalid"):
        open_pins("auto", [7])


def test_auto_off_a_jetson_falls_back_to_sim(jetson_path: Path) -> None:
    # What Jetson.GPIO does at import on anything but a Jetson.
    jetson_library(
        jetson_path, "raise RuntimeError('The current user does not have permissions')\n"
    )
    pins = open_pins("auto", [12])
    assert pins.kind == "sim"
    pins.close()
