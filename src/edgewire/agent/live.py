"""Live runs (``edgewire run``): frames of a source on this machine, classified by a served
model, driving the actions of :mod:`edgewire.actions`; their events in a bounded ring.

Called *live* runs here: the agent's training runs are ``runs`` (``RunRegistry``). A run
reads its source in a thread of its own (a file's next frame every 1/rate s; a camera's,
a stream's or a pushed source's newest frame, the others dropped), and classifies on the loop through
``Serving.infer``, so a model swapped meanwhile answers from the next frame on. However a
run ends (stop, end of source, an error, the agent stopping), its pins go low.

Source ``push`` is a run whose caller sends the frames (a browser's camera, through
``POST /api/runs/{id}/frame``): a :class:`PushSource`, which ends after
:data:`NO_FRAMES_S` without one. Every run keeps its newest classified frame, shown as a
JPEG on demand (:meth:`LiveRun.jpeg`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.actions.allow import CAMERA, is_url, path_allowed, url_allowed
from edgewire.actions.commands import run_command
from edgewire.actions.config import ActionsConfig, load_actions, parse_actions
from edgewire.actions.pins import Pins, Transition, open_pins
from edgewire.actions.policy import Policy, Trigger
from edgewire.actions.post import check_allowed, post_json
from edgewire.agent.context import PortContext
from edgewire.agent.live_frames import (
    PUSH,
    FrameFeed,
    PushSource,
    decode_frame,
    shown_jpeg,
)
from edgewire.errors import (
    BusyError,
    ConfigError,
    EdgewireError,
    ModelError,
    NotAllowed,
    one_line,
)
from edgewire.jsonsafe import finite
from edgewire.project.capture import Frame, open_source
from edgewire.serve.runtime import LoadedModel

log = logging.getLogger(__name__)
#: Events a run keeps for its readers (the oldest go first).
EVENT_RING = 2048
#: Latencies kept for the percentiles of the summary.
LATENCY_WINDOW = 10_000
MAX_FINISHED = 20
#: Commands and POSTs of one run in flight at once; one more is skipped, and said so.
MAX_ACTIONS_IN_FLIGHT = 2
OPEN_TIMEOUT_S = 15.0
ACTION_RESULTS = 100
#: URL schemes a run's source may have (and only under run_source_allow).
SOURCE_SCHEMES = ("http", "https", "rtsp")
#: Pushed frames of one run decoding at once; one more is answered busy.
MAX_DECODING = 2
#: Frame events carry every class's score when the model has at most this many classes.
MAX_EVENT_SCORES = 64


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    model: str
    source: str
    rate: float = 10.0
    #: A table (pins and posts, from the network), ``"agent"`` (the agent's own file),
    #: or None (the agent's file if it has one, else the default pins).
    actions: Mapping[str, Any] | str | None = None
    max_frames: int | None = None
    loop: bool = False


def preprocess(frame: Frame, loaded: LoadedModel) -> tuple[str, npt.NDArray[np.float32]]:
    """``frame`` as the model's first input: resized, scaled as its metadata says."""
    from PIL import Image

    info = loaded.inputs[0]
    version = loaded.version
    channels, height, width = input_size(loaded)
    image = Image.fromarray(frame).convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    pixels = pixels.reshape(height, width, -1).transpose(2, 0, 1)
    prep = version.preprocessing
    x = pixels * float(prep.get("scale", 1 / 255))
    mean = np.asarray(prep.get("mean", 0.0), np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.get("std", 1.0), np.float32).reshape(-1, 1, 1)
    x = ((x - mean) / std)[None].astype(np.float32)
    return info.name, x.reshape(1, -1) if len(info.shape) == 2 else x


#: The largest side of a model's image input (a frame is resized to it, every frame).
MAX_INPUT_SIDE = 4096


def _fit(size: Any) -> tuple[int, int, int] | None:
    """``size`` as (C, H, W) when it is a list of 3 ints, C in (1, 3), H and W in range."""
    if not isinstance(size, list | tuple) or len(size) != 3:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        return None
    channels, height, width = size
    if channels not in (1, 3) or not all(0 < v <= MAX_INPUT_SIDE for v in (height, width)):
        return None
    return channels, height, width


def input_size(loaded: LoadedModel) -> tuple[int, int, int]:
    """The (C, H, W) a frame becomes: the model's ``edgewire.input_size`` when it makes
    sense, else its static input shape; a ModelError when neither does."""
    import json

    info, version = loaded.inputs[0], loaded.version
    raw = version.metadata.get("edgewire.input_size")
    if raw is not None:
        try:
            given = _fit(json.loads(raw))
        except (ValueError, TypeError, RecursionError):
            given = None
        if given is not None:
            return given
    shape = _fit(list(info.shape[1:])) if len(info.shape) == 4 else None
    if shape is not None:
        return shape
    said = "a bad edgewire.input_size" if raw is not None else "no edgewire.input_size"
    raise ModelError(
        f"{version.label} takes {info.shape}: not an image input of 1 or 3 channels up to "
        f"{MAX_INPUT_SIDE} pixels a side, and its metadata has {said}; "
        "export it with edgewire export"
    )


def scores_of(output: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """One row of scores (a softmax applied when the model gives logits)."""
    row: npt.NDArray[np.float64] = np.asarray(output, np.float64).reshape(output.shape[0], -1)[0]
    if row.min() >= 0 and abs(row.sum() - 1.0) < 1e-3:
        return row
    e = np.exp(row - row.max())
    return e / e.sum()  # type: ignore[no-any-return]


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


class LiveRun:
    def __init__(self, runs: LiveRuns, request: RunRequest, actions: ActionsConfig,
                 feed: FrameFeed, pins: Pins, *, labels: list[str],
                 push: PushSource | None = None) -> None:  # fmt: skip
        self.id = secrets.token_hex(6)
        self.request, self.actions, self.feed, self.pins = request, actions, feed, pins
        #: The model's class labels in its output's order (what a page names its bars by).
        self.labels = labels
        self.push = push
        #: The newest classified frame and its number; once the run ends, only its JPEG.
        self._shown: tuple[int, Frame] | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._jpeg_lock = asyncio.Lock()
        self._runs = runs
        self.policy = Policy(actions)
        self.state = "running"
        self.reason: str | None = None
        self.started = time.time()
        self.ended: float | None = None
        self.frames = 0
        self.errors = 0
        self.skipped_actions = 0
        self.per_class: Counter[str] = Counter()
        self.versions: set[int] = set()
        self.latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.pin_latency: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.action_results: deque[dict[str, Any]] = deque(maxlen=ACTION_RESULTS)
        self.events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=EVENT_RING)
        self.seq = 0
        self._tick = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._actions_in_flight: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state != "running"

    # --- events ------------------------------------------------------------------------

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self.seq += 1
        # A model may score NaN: one event must not end every follower's stream.
        self.events.append((self.seq, kind, finite(data)))
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def events_after(self, seq: int) -> list[tuple[int, str, dict[str, Any]]]:
        return [e for e in self.events if e[0] > seq]

    async def wait_for_event(self, seq: int, timeout: float) -> None:
        """Until an event after ``seq`` exists, the run ends, or ``timeout`` passes."""
        if self.seq > seq or self.done:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._tick.wait()

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        period = 1.0 / self.request.rate
        loop = asyncio.get_running_loop()
        due = loop.time()
        limit = self.request.max_frames
        errors_in_row = 0
        try:
            while not self.stop_requested.is_set():
                wait = due - loop.time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.stop_requested.wait()
                    if self.stop_requested.is_set():
                        break
                due = max(due + period, loop.time())
                got = self.feed.take(0) if self.feed.ready() else await self._take_waiting()
                if got is None:
                    if self.feed.ended:
                        if self.feed.error is not None:
                            raise ConfigError(self.feed.error)
                        ended = self.push.ended_why if self.push is not None else None
                        self.reason = ended or "end of source"
                        break
                    continue
                try:
                    await self._frame(*got)
                    errors_in_row = 0
                except BusyError:
                    self.errors += 1  # the model's queue is full: this frame is dropped
                except EdgewireError as exc:
                    self.errors += 1
                    errors_in_row += 1
                    if errors_in_row >= max(20, int(self.request.rate * 10)):
                        raise
                    if errors_in_row == 1:
                        log.warning("live run %s: %s (still trying)", self.id, exc.message)
                if limit is not None and self.frames >= limit:
                    self.reason = f"{limit} frames"
                    break
            if self.stop_requested.is_set():
                self.state, self.reason = "stopped", self.reason or "stopped"
            else:
                self.state = "finished"
        except EdgewireError as exc:
            self.state, self.reason = "failed", exc.message
        except Exception as exc:
            log.exception("live run %s failed", self.id)
            self.state, self.reason = "failed", f"internal error: {one_line(exc)}"
        finally:
            await self._finish()
        await self._settle_actions()

    async def _take_waiting(self) -> tuple[Frame, float] | None:
        # A live source's next frame, or a file's read-ahead running late: wait in a thread.
        return await asyncio.to_thread(self.feed.take, 1.0)

    async def _frame(self, frame: Frame, captured: float) -> None:
        serving = self._runs.ctx.serving
        loaded = serving.loaded(self.request.model)
        name, x = preprocess(frame, loaded)
        served = await serving.infer(self.request.model, {name: x})
        inferred = time.monotonic()
        out = served.result.outputs.get(loaded.output_names[0])
        if out is None:
            out = next(iter(served.result.outputs.values()))
        scores = scores_of(out)
        index = int(scores.argmax())
        labels = served.version.labels or ()
        label = labels[index] if index < len(labels) else str(index)
        score = float(scores[index])
        shown = round(score, 5) if math.isfinite(score) else None
        self.frames += 1
        self.per_class[label] += 1
        self.versions.add(served.version.version)
        self._runs.ctx.metrics.live_frames_total.inc()
        decision = self.policy.step(label, score, inferred)
        fired: list[dict[str, Any]] = []
        event: dict[str, Any] = {
            "frame": self.frames, "label": label, "class": index, "score": shown,
            "version": served.version.version, "active": decision.active,
            "latency_ms": round((inferred - captured) * 1000, 3),
        }  # fmt: skip
        for change in decision.changes:
            self.pins.write(change.pin, change.level, frame=self.frames)
            fired.append({"kind": "pin", "pin": change.pin, "level": change.level})
        if decision.changes:
            pin_ms = (time.monotonic() - captured) * 1000
            self.pin_latency.append(pin_ms)
            event["pin_latency_ms"] = round(pin_ms, 3)
        for trigger in decision.triggers:
            fired.append(self._start_action(trigger, label, score))
        event["fired"] = fired
        if len(scores) <= MAX_EVENT_SCORES:  # a bar per class; NaN becomes null in _emit
            event["scores"] = [round(float(s), 5) for s in scores]
        self.latency.append(event["latency_ms"])
        self._shown = (self.frames, frame)
        self._emit("frame", event)

    # --- frames pushed in, the newest frame shown ----------------------------------------

    async def take_pushed(self, data: bytes) -> dict[str, int]:
        """Decode ``data`` (off the loop) and put it in the run's push slot:
        ``{"frame": frames pushed so far, "dropped": frames replaced or skipped}``."""
        push = self.pushable()
        if push.decoding >= MAX_DECODING:
            raise BusyError(
                f"{MAX_DECODING} frames of run {self.id} are being decoded; send the next "
                "once one is answered"
            )
        push.decoding += 1
        try:
            frame = await asyncio.to_thread(decode_frame, data)
        finally:
            push.decoding -= 1
        pushed, dropped = push.push(frame)
        return {"frame": pushed, "dropped": dropped + self.feed.dropped}

    def pushable(self) -> PushSource:
        """The run's push source; ConfigError when it has none or has ended."""
        if self.push is None:
            raise ConfigError(
                f"live run {self.id} reads {self.request.source!r:.200}: only a run started "
                f'with source "{PUSH}" takes frames'
            )
        if self.done or self.push.closed:
            raise ConfigError(
                f"live run {self.id} has ended ({self.reason or self.state}): start another "
                "to send frames"
            )
        return self.push

    async def jpeg(self) -> tuple[int, bytes] | None:
        """The newest classified frame's number and JPEG (encoded once, off the loop);
        None before the first."""
        async with self._jpeg_lock:
            shown = self._shown
            if shown is None or (self._jpeg is not None and self._jpeg[0] == shown[0]):
                return self._jpeg
            number, frame = shown
            self._jpeg = (number, await asyncio.to_thread(shown_jpeg, frame))
            return self._jpeg

    # --- commands and posts, off the loop ----------------------------------------------

    def _start_action(self, trigger: Trigger, label: str, score: float) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": trigger.kind, "class": trigger.class_name}
        if len(self._actions_in_flight) >= MAX_ACTIONS_IN_FLIGHT:
            self.skipped_actions += 1
            entry["skipped"] = "busy"
            return entry
        frame = self.frames
        task = asyncio.create_task(self._action(trigger, label, score, frame))
        self._actions_in_flight.add(task)
        task.add_done_callback(self._actions_in_flight.discard)
        return entry

    async def _action(self, trigger: Trigger, label: str, score: float, frame: int) -> None:
        action = self.actions.classes[trigger.class_name]
        result: dict[str, Any]
        if trigger.kind == "command" and action.command is not None:
            env = {k: v for k in ("PATH", "HOME", "LANG") if (v := os.environ.get(k)) is not None}
            env.update(EDGEWIRE_RUN=self.id, EDGEWIRE_CLASS=label, EDGEWIRE_SCORE=f"{score:.5f}",
                       EDGEWIRE_FRAME=str(frame))  # fmt: skip
            done = await asyncio.to_thread(
                run_command, action.command, timeout_s=action.timeout_s, env=env
            )
            result = done.to_dict()
        elif trigger.kind == "post" and action.post is not None:
            body = {"run": self.id, "model": self.request.model, "class": label,
                    "score": round(score, 5) if math.isfinite(score) else None, "frame": frame, "time": time.time()}  # fmt: skip
            result = (await post_json(action.post, body, timeout_s=action.timeout_s)).to_dict()
        else:
            return
        result.update(kind=trigger.kind, frame=frame, **{"class": label})
        self.action_results.append(result)
        self._emit("action", result)

    async def _settle_actions(self) -> None:
        pending = set(self._actions_in_flight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=5.0)
            for task in late:
                task.cancel()

    # --- the end -----------------------------------------------------------------------

    async def _finish(self) -> None:
        try:
            for change in self.policy.release():
                with contextlib.suppress(Exception):
                    self.pins.write(change.pin, change.level, frame=self.frames)
        finally:
            self.pins.close()  # every pin low, whatever happened above
        if self.state == "running":
            self.state = "stopped"
        self.ended = time.time()
        self._emit("summary", self.summary())  # no await since the state changed
        self._runs.finished(self)
        if self.push is not None:
            self.push.close()
        # Its reader may take a while to let go of the source: not on the loop.
        await asyncio.to_thread(self.feed.stop)
        # A finished run keeps its last frame as a small JPEG, not a camera-sized array.
        with contextlib.suppress(Exception):
            await self.jpeg()
        self._shown = None

    def summary(self) -> dict[str, Any]:
        elapsed = (self.ended or time.time()) - self.started
        return {
            "id": self.id, "state": self.state, "reason": self.reason,
            "model": self.request.model, "source": self.request.source,
            "rate": self.request.rate, "frames": self.frames,
            "per_class": dict(self.per_class), "transitions": self.pins.count,
            "fps": round(self.frames / elapsed, 3) if elapsed > 0 else 0.0,
            "latency_ms": _percentiles(self.latency),
            "pin_latency_ms": _percentiles(self.pin_latency),
            "errors": self.errors, "source_dropped": self.dropped,
            "skipped_actions": self.skipped_actions, "versions": sorted(self.versions),
            "pins": self.pins.kind, "started": self.started, "ended": self.ended,
            "duration_s": round(elapsed, 3), "labels": self.labels,
        }  # fmt: skip

    @property
    def dropped(self) -> int:
        """Frames of the source never classified: replaced by a newer one, or pushed
        into a slot that already held one."""
        return self.feed.dropped + (self.push.dropped if self.push is not None else 0)

    def _pin_of(self, label: str) -> int | None:
        action = self.actions.classes.get(label)
        return None if action is None else action.pin

    def detail(self, *, transitions: int = 500) -> dict[str, Any]:
        """What ``GET /api/runs/{id}`` shows: the summary so far, the pins, the last actions."""
        moved = list(self.pins.transitions)[-transitions:]
        return {
            **self.summary(),
            "pin_levels": {str(p): v for p, v in self.pins.levels.items()},
            "class_pins": {name: self._pin_of(name) for name in self.labels},
            "pin_transitions": [t.to_dict() for t in moved],
            "actions": list(self.action_results),
            "last_event": self.seq,
        }


class LiveRuns:
    """The agent's live runs: at most ``max_live_runs`` at once, the last few finished kept."""

    def __init__(self, ctx: PortContext) -> None:
        self.ctx = ctx
        self._runs: dict[str, LiveRun] = {}
        self._finished: deque[str] = deque()
        self._closing = False
        self._starting = 0
        #: Real pins of runs that are opening their source (not yet in ``_runs``).
        self._held_pins: set[int] = set()
        if ctx.config.actions_file is not None:
            self.agent_actions()  # a bad file stops the agent at start, not the first run

    def agent_actions(self) -> ActionsConfig | None:
        path = self.ctx.config.actions_file
        return None if path is None else load_actions(Path(path))

    def resolve_actions(self, given: Mapping[str, Any] | str | None) -> ActionsConfig:
        """The actions of a request: from the network (pins and posts; posts allow-listed),
        the agent's own file (``"agent"``), or when none are given, the agent's file or
        the default pins."""
        if given == "agent" or given is None:
            own = self.agent_actions()
            if own is None and given == "agent":
                raise ConfigError(
                    "the agent has no actions file: start it with edgewire agent --actions FILE"
                )
            return own if own is not None else ActionsConfig()
        if isinstance(given, str):
            raise ConfigError(f'actions are a table or "agent", got {given!r:.60}')
        actions = parse_actions(given, source="the request's actions", allow_commands=False)
        for url in actions.post_urls:
            check_allowed(url, self.ctx.config.run_post_allow)
        return actions

    def all_runs(self) -> list[LiveRun]:
        return sorted(self._runs.values(), key=lambda r: r.started, reverse=True)

    def get(self, run_id: str) -> LiveRun | None:
        return self._runs.get(run_id)

    def running(self) -> list[LiveRun]:
        return [r for r in self._runs.values() if not r.done]

    async def start(self, request: RunRequest) -> LiveRun:
        cap = self.ctx.config.max_live_runs
        if self._closing or self.ctx.stopping.is_set():
            raise BusyError("the agent is stopping; start the run again once it is back")
        if len(self.running()) + self._starting >= cap:
            raise BusyError(
                f"{cap} live runs already (max_live_runs); stop one with edgewire runs --stop ID"
            )
        self._starting += 1  # the slot is held while the source opens
        try:
            return await self._start(request)
        finally:
            self._starting -= 1

    async def _start(self, request: RunRequest) -> LiveRun:
        actions = self.resolve_actions(request.actions)
        loaded = self.ctx.serving.loaded(request.model)
        preprocess(np.zeros((8, 8, 3), np.uint8), loaded)  # an unfit model: refused now
        labels = list(loaded.version.labels or ())
        if not labels:
            labels = [str(i) for i in range(_classes(loaded))]
        actions = actions.for_labels(labels)
        check_source(request.source, self.ctx.config.run_source_allow)
        pins = [a.pin for a in actions.classes.values() if a.pin is not None]
        self._check_pins_free(actions.pins, pins)
        metrics = self.ctx.metrics

        def moved(t: Transition) -> None:
            metrics.gpio_transitions_total.labels(str(t.pin), str(t.level)).inc()
            metrics.gpio_level.labels(str(t.pin)).set(t.level)

        driven = open_pins(actions.pins, pins, on_transition=moved)
        # Held from here (no await since the check) until the run is registered: a
        # second start meanwhile sees them taken.
        held = set() if driven.kind == "sim" else set(driven.pins)
        self._held_pins |= held
        try:
            return await self._open(request, actions, driven, pins, labels)
        finally:
            self._held_pins -= held

    async def _open(self, request: RunRequest, actions: ActionsConfig, driven: Pins,
                    pins: list[int], labels: list[str]) -> LiveRun:  # fmt: skip
        source = request.source
        if source == PUSH:
            push = PushSource()
            feed = FrameFeed(push.frames, push.frames(), paced=False, loop=False, name=PUSH)
            return self._register(request, actions, feed, driven, pins, labels, push)

        def opener() -> Iterator[Frame]:  # again at the end of a file, to loop
            return open_source(source, timeout=10.0)

        def opened() -> tuple[Iterator[Frame], bool]:
            return opener(), Path(source).is_file() or Path(source).is_dir()

        try:
            first, paced = await asyncio.wait_for(asyncio.to_thread(opened), OPEN_TIMEOUT_S)
        except TimeoutError:
            driven.close()
            raise ConfigError(f"source {source!r} did not open in {OPEN_TIMEOUT_S:g} s") from None
        except BaseException:
            driven.close()
            raise
        feed = FrameFeed(opener, first, paced=paced, loop=request.loop, name=source)
        return self._register(request, actions, feed, driven, pins, labels)

    def _register(self, request: RunRequest, actions: ActionsConfig, feed: FrameFeed,
                  driven: Pins, pins: list[int], labels: list[str],
                  push: PushSource | None = None) -> LiveRun:  # fmt: skip
        metrics = self.ctx.metrics
        source = request.source
        for pin in driven.pins:
            metrics.gpio_level.labels(str(pin)).set(0)
        run = LiveRun(self, request, actions, feed, driven, labels=labels, push=push)
        self._runs[run.id] = run
        metrics.live_runs.inc()
        run.task = asyncio.create_task(run.run(), name=f"edgewire-live-{run.id}")
        log.info("live run %s: %s on %s at %g Hz, pins %s (%s)", run.id, request.model,
                 source, request.rate, pins, driven.kind)  # fmt: skip
        return run

    def _check_pins_free(self, kind: str, pins: list[int]) -> None:
        if kind == "sim":
            return  # simulated pins share nothing
        starting = sorted(self._held_pins & set(pins))
        if starting:
            raise BusyError(f"pins {starting} are taken by a live run that is starting")
        for other in self.running():
            if other.pins.kind != "sim" and set(other.pins.pins) & set(pins):
                shared = sorted(set(other.pins.pins) & set(pins))
                raise BusyError(
                    f"pins {shared} are driven by live run {other.id}; stop it first "
                    f"(edgewire runs --stop {other.id})"
                )

    def finished(self, run: LiveRun) -> None:
        self.ctx.metrics.live_runs.dec()
        self._finished.append(run.id)
        while len(self._finished) > MAX_FINISHED:
            self._runs.pop(self._finished.popleft(), None)

    def stop(self, run_id: str) -> LiveRun | None:
        run = self._runs.get(run_id)
        if run is not None:
            run.stop_requested.set()
        return run

    async def stop_all(self) -> None:
        """Stop every run and wait for their pins to go low (the agent is stopping)."""
        self._closing = True
        tasks = []
        for run in self.running():
            run.stop_requested.set()
            if run.task is not None:
                tasks.append(run.task)
        if tasks:
            await asyncio.wait(tasks, timeout=10.0)


def check_source(source: str, allow: Iterable[str]) -> None:
    """NotAllowed unless ``source`` is a camera, a file or folder under a folder of
    ``allow``, or a URL under one of its URL prefixes, or ``push`` (one line naming the fix)."""
    if source == PUSH:
        return
    if CAMERA.fullmatch(source) and not Path(source).is_file():
        return
    if is_url(source):
        if url_allowed(source, allow, schemes=SOURCE_SCHEMES, userinfo=True):
            return
        what = "URL"
    elif path_allowed(source, allow):
        return
    else:
        what = "path"
    raise NotAllowed(
        f"source {source!r:.200} is not on the agent's allow-list: start the agent with "
        f"--run-source-allow PREFIXES (config run_source_allow, env EDGEWIRE_RUN_SOURCE_ALLOW) "
        f"naming its {'URL prefix' if what == 'URL' else 'folder'}"
    )


def _classes(loaded: LoadedModel) -> int:
    shape = loaded.outputs[0].shape
    last = shape[-1] if shape else None
    return last if isinstance(last, int) and last > 0 else 0
