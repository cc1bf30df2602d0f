"""Profiles (measured and hand-written) and the latency model that picks a split point."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgewire.errors import ConfigError
from edgewire.split.profile import TAIL_NAME, Candidate, Profile
from edgewire.split.suggest import predict_ms, suggest
from edgewire.wire.frames import MsgType, encode_frame
from edgewire.wire.messages import encode_message


def hand_profile() -> Profile:
    """A teacher of 10 ms on this machine; the cut at stage2 sends 1 kB instead of 12 kB."""
    return Profile(
        model="resnet_small", input_shape=(3, 64, 64), classes=10, channels=4, threads=1,
        repeats=10,
        candidates=(
            Candidate(name="stage2", kind="split", head_ms=2.0, tail_ms=8.0, request_bytes=1_100,
                      response_bytes=200, bottleneck_shape=(4, 16, 16)),
            Candidate(name="local", kind="local", head_ms=10.0, tail_ms=0.0, request_bytes=0,
                      response_bytes=0),
            Candidate(name="offload", kind="offload", head_ms=0.0, tail_ms=10.0,
                      request_bytes=12_400, response_bytes=200),
        ),
    )  # fmt: skip


def test_the_prediction_is_device_plus_rtt_plus_wire_plus_server() -> None:
    split = hand_profile().candidate("stage2")
    # 1,300 bytes = 10,400 bits at 2 Mbit/s = 5.2 ms on the wire.
    got = predict_ms(split, mbit=2.0, rtt_ms=20.0, slowdown=3.0)
    assert math.isclose(got, 3 * 2.0 + 20.0 + 5.2 + 8.0)
    local = hand_profile().candidate("local")
    assert predict_ms(local, mbit=0.001, rtt_ms=500.0, slowdown=3.0) == 30.0


def test_a_slow_link_keeps_the_model_local() -> None:
    best, predictions = suggest(hand_profile(), mbit=0.1, rtt_ms=50.0, slowdown=4.0)
    assert best.name == "local"
    assert [c.name for c, _ in predictions] == ["stage2", "local", "offload"]
    assert dict((c.name, ms) for c, ms in predictions)["local"] == 40.0


def test_a_fast_link_and_a_slow_device_split_or_offload() -> None:
    # stage2: 4 + 2 + 2.08 + 8 = 16.08 ms; local: 20 ms; offload: 2 + 20.16 + 10 ms.
    best, _ = suggest(hand_profile(), mbit=5.0, rtt_ms=2.0, slowdown=2.0)
    assert best.name == "stage2"
    # offload: 1 + 0.10 + 10 ms; stage2: 20 + 1 + 0.01 + 8 ms; local: 100 ms.
    best, _ = suggest(hand_profile(), mbit=1000.0, rtt_ms=1.0, slowdown=10.0)
    assert best.name == "offload"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mbit": 0.0, "rtt_ms": 1.0, "slowdown": 1.0}, "bandwidth must be a positive"),
        ({"mbit": -3.0, "rtt_ms": 1.0, "slowdown": 1.0}, r"got -3.0"),
        ({"mbit": math.nan, "rtt_ms": 1.0, "slowdown": 1.0}, "bandwidth"),
        ({"mbit": 1.0, "rtt_ms": -1.0, "slowdown": 1.0}, "rtt must be"),
        ({"mbit": 1.0, "rtt_ms": 1.0, "slowdown": 0.0}, "device slowdown must be"),
    ],
)
def test_bad_links_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        suggest(hand_profile(), **kwargs)


def test_a_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = hand_profile()
    assert Profile.from_json(profile.to_json()) == profile
    path = profile.save(tmp_path / "profile.json")
    assert Profile.load(path) == profile
    body = json.loads(path.read_text())
    assert body["format"] == 1 and body["candidates"][0]["bottleneck_shape"] == [4, 16, 16]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "is not JSON"),
        ("[]", "not an edgewire split profile"),
        ('{"format": 1}', "not a valid split profile"),
        (
            '{"format": 1, "model": "m", "input_shape": [1, 8, 8], "classes": 2, "channels": 1,'
            ' "threads": 1, "repeats": 1, "candidates": []}',
            "has no candidates",
        ),
        (
            '{"format": 1, "model": "m", "input_shape": [1, 8, 8], "classes": 2, "channels": 1,'
            ' "threads": 1, "repeats": 1, "candidates": [{"name": "x", "kind": "split",'
            ' "head_ms": -1, "tail_ms": 0, "request_bytes": 0, "response_bytes": 0}]}',
            "head_ms must be >= 0",
        ),
    ],
)
def test_a_bad_profile_is_one_clear_error(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Profile.from_json(text)


def test_a_missing_profile_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="edgewire split profile CHECKPOINT"):
        Profile.load(tmp_path / "none.json")


def test_suggest_needs_no_torch() -> None:
    code = "import sys, edgewire.split.suggest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_profile_measures_every_cut_and_counts_the_frames() -> None:
    import torch

    from edgewire.split.model import split_points
    from edgewire.split.profile import profile
    from edgewire.train.models import build_model

    torch.manual_seed(0)
    teacher = build_model("resnet_small", in_channels=3, height=32, width=32, num_classes=10)
    seen: list[str] = []
    result = profile(teacher, (3, 32, 32), channels=4, points=["stem", "stage2"], repeats=2,
                     model="resnet_small", progress=seen.append)  # fmt: skip
    assert seen == ["stem", "stage2", "local"]
    assert [c.name for c in result.candidates] == ["stem", "stage2", "local", "offload"]
    assert result.classes == 10 and result.input_shape == (3, 32, 32)
    stage2, local, offload = result.candidates[1:]
    assert stage2.bottleneck_shape == (4, 8, 8)
    meta = {"model": TAIL_NAME, "coder": "raw", "shape": [1, 4, 8, 8]}
    codes = np.zeros(4 * 8 * 8, dtype=np.uint8)
    frame = encode_frame(MsgType.SPLIT_TAIL_REQUEST, encode_message(meta, [codes]))
    assert stage2.request_bytes == len(frame)
    assert 10 * 4 < stage2.response_bytes < 300
    assert stage2.head_ms > 0 and stage2.tail_ms > 0
    assert local.request_bytes == local.response_bytes == 0 and local.tail_ms == 0
    assert local.head_ms == offload.tail_ms > 0 and offload.head_ms == 0
    assert offload.request_bytes > 3 * 32 * 32 > stage2.request_bytes
    assert Profile.from_json(result.to_json()) == result
    with pytest.raises(
        ConfigError, match="candidates: " + ", ".join(split_points(teacher, (3, 32, 32)))
    ):
        profile(teacher, (3, 32, 32), channels=4, points=["head"], repeats=1)


def test_overheads_count_each_hop_call_and_link_crossing() -> None:
    from edgewire.split.suggest import Overheads

    o = Overheads(hop_ms=1.0, call_ms=0.5, link_ms=2.0)
    profile = hand_profile()
    split, local, offload = (profile.candidate(n) for n in ("stage2", "local", "offload"))
    bare = {
        c.name: predict_ms(c, mbit=2.0, rtt_ms=20.0, slowdown=3.0) for c in (split, local, offload)
    }
    got = {c.name: predict_ms(c, mbit=2.0, rtt_ms=20.0, slowdown=3.0, overheads=o)
           for c in (split, local, offload)}  # fmt: skip
    assert got["stage2"] == pytest.approx(bare["stage2"] + 3 * 0.5 + 0.5 + 2.0 + 2 * 1.0)
    assert got["local"] == pytest.approx(bare["local"] + 3 * 0.5 + 1.0)
    assert got["offload"] == pytest.approx(bare["offload"] + 0.5 + 2.0 + 1.0)
    with pytest.raises(ConfigError, match="hop_ms"):
        Overheads(hop_ms=-1.0)
