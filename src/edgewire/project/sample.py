"""A ready-made workspace for the demo, the pipeline benchmark and the end-to-end test.

Three classes (``zero``, ``one``, ``two``: real MNIST-5k digits 0, 1 and 2 over the
bundled photographs, see ``footage.py``), one MJPG video per class to capture from
(several clips, each over another photograph with other writers' digits), and a
test video whose class changes every ``segment_s`` seconds, with the class shown in
each frame, for ``edgewire run``. ``edgewire.toml`` gets every pipeline step's table,
so ``edgewire pipeline -w DIR`` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewire.project.footage import frames, write_avi
from edgewire.project.workspace import CONFIG_FILE, Workspace

CLASSES = {"zero": 0, "one": 1, "two": 2}
FPS = 10.0


@dataclass(frozen=True)
class Sample:
    workspace: Workspace
    #: The test video for ``edgewire run`` and the class shown in each of its frames.
    video: Path
    shown: list[str]
    segment_frames: int


def write_sample(
    root: Path,
    *,
    clips: int = 24,
    clip_frames: int = 8,
    segments: int = 6,
    segment_s: float = 3.0,
    size: tuple[int, int] = (160, 120),
    settings: str = "",
) -> Sample:
    """A workspace at ``root`` with its capture videos and test video; ``settings`` is
    TOML appended to ``edgewire.toml`` (the train, export, deploy and run tables)."""
    Workspace.init(root, list(CLASSES))
    videos = root / "footage"
    videos.mkdir()
    capture = []
    for name, digit in CLASSES.items():
        video = [f for clip in range(clips)
                 for f in frames(digit, count=clip_frames, size=size, seed=100 + clip)]  # fmt: skip
        write_avi(videos / f"{name}.avi", video, fps=FPS)
        capture.append(f'[capture.{name}]\nsource = "{videos / f"{name}.avi"}"\n')
    per_segment = int(segment_s * FPS)
    names = list(CLASSES)
    shown: list[str] = []
    test = []
    for index in range(segments):
        name = names[index % len(names)]
        # Seeds the capture clips did not use: photographs and digits it has not seen.
        test += frames(CLASSES[name], count=per_segment, size=size, seed=900 + index)
        shown += [name] * per_segment
    test_video = write_avi(videos / "test.avi", test, fps=FPS)
    with (root / CONFIG_FILE).open("a", encoding="utf-8") as out:
        out.write("\n" + "\n".join(capture) + "\n" + settings)
    return Sample(
        workspace=Workspace.open(root), video=test_video, shown=shown, segment_frames=per_segment
    )


def segments_right(
    sample: Sample, events: list[dict[str, Any]], pin_of: dict[str, int]
) -> tuple[int, int]:
    """(segments whose class's pin is the one high at their last frame, segments run).

    ``events`` are a run's frame events in order (``frame`` counts from 1, ``fired``
    holds its pin changes); ``pin_of`` maps a class to its pin."""
    high: dict[int, int] = {}
    at_frame: dict[int, set[int]] = {}
    for event in events:
        for fired in event.get("fired", []):
            if fired.get("kind") == "pin":
                high[int(fired["pin"])] = int(fired["level"])
        at_frame[int(event["frame"])] = {pin for pin, level in high.items() if level}
    right = total = 0
    for end in range(sample.segment_frames, len(sample.shown) + 1, sample.segment_frames):
        if end not in at_frame:
            break
        total += 1
        right += at_frame[end] == {pin_of[sample.shown[end - 1]]}
    return right, total
