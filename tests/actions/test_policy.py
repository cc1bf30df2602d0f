"""The policy, sans-IO: threshold, debounce, hold time, one pin high at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgewire.actions.config import ActionsConfig, ClassAction
from edgewire.actions.policy import PinChange, Policy, Trigger

PINS = {"a": 12, "b": 16, "c": 18}


def config(*, threshold: float = 0.6, debounce: int = 3, hold_s: float = 1.0) -> ActionsConfig:
    classes = {k: ClassAction(pin=p) for k, p in PINS.items()}
    classes["d"] = ClassAction(command=("/bin/true",), post="http://127.0.0.1:9/x")
    return ActionsConfig(threshold=threshold, debounce=debounce, hold_s=hold_s, classes=classes)


def test_a_class_takes_over_after_debounce_frames_and_holds() -> None:
    policy = Policy(config(debounce=3, hold_s=1.0))
    assert [policy.step("a", 0.9, t * 0.1).changes for t in range(3)] == [
        (), (), (PinChange(12, 1),)
    ]  # fmt: skip
    # b for three frames, but within the hold time: a stays.
    assert all(not policy.step("b", 0.9, 0.3 + t * 0.1).changes for t in range(3))
    switched = policy.step("b", 0.9, 1.3)
    assert switched.changes == (PinChange(12, 0), PinChange(16, 1)) and switched.active == "b"


def test_frames_under_the_threshold_count_as_no_class() -> None:
    policy = Policy(config(debounce=2, hold_s=0.0))
    policy.step("a", 0.9, 0.0)
    assert policy.step("a", 0.9, 0.1).changes == (PinChange(12, 1),)
    policy.step("b", 0.5, 0.2)
    assert policy.step("c", 0.1, 0.3).changes == (PinChange(12, 0),)
    assert policy.active is None


def test_a_class_without_a_pin_lowers_the_old_one_and_fires_its_triggers() -> None:
    policy = Policy(config(debounce=1, hold_s=0.0))
    policy.step("a", 0.9, 0.0)
    decision = policy.step("d", 0.9, 0.1)
    assert decision.changes == (PinChange(12, 0),)
    assert decision.triggers == (Trigger("command", "d"), Trigger("post", "d"))
    assert policy.release() == ()


def test_release_lowers_the_pin_in_charge() -> None:
    policy = Policy(config(debounce=1))
    policy.step("c", 1.0, 0.0)
    assert policy.release() == (PinChange(18, 0),)


frames = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.floats(0, 1), st.floats(0, 0.5)),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(1, 5), st.floats(0, 2), st.floats(0.05, 0.95))
def test_any_frames_keep_the_promises(
    seen: list[tuple[str, float, float]], debounce: int, hold_s: float, threshold: float
) -> None:
    policy = Policy(config(threshold=threshold, debounce=debounce, hold_s=hold_s))
    levels = dict.fromkeys(PINS.values(), 0)
    now, streak, last, took_over = 0.0, 0, None, -float("inf")
    for name, score, step in seen:
        now += step
        counted = name if score >= threshold else None
        streak = streak + 1 if counted == last else 1
        last = counted
        before = policy.active
        decision = policy.step(name, score, now)
        for change in decision.changes:
            assert levels[change.pin] != change.level  # a change is a change
            levels[change.pin] = change.level
        assert sum(levels.values()) <= 1  # one class pin high at a time
        if decision.active != before:
            # Only after debounce frames in a row of that class, past the hold time.
            assert decision.active == counted and streak >= debounce
            assert now - took_over >= hold_s
            took_over = now
        high = [pin for pin, level in levels.items() if level]
        expected = PINS.get(decision.active or "")
        assert high == ([expected] if expected is not None else [])
    for change in policy.release():
        levels[change.pin] = change.level
    assert not any(levels.values())
