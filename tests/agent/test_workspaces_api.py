"""The workspaces API on a real agent: workspaces and their classes, images uploaded and
served (thumbnails too), a split, a capture from a video file, the split registered as a
data set and trained by the agent; and the refusals (names, classes, sizes, bombs, tokens)."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from edgewire.agent import workspaces_api
from edgewire.agent.workspaces_api import MAX_IMAGE_BYTES
from edgewire.data.manifest import scan_folder
from edgewire.project.footage import write_avi
from tests.helpers import RunningAgent, agent_in_thread

TOKEN = "workspaces-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"model": "mnist_cnn", "image_size": 32, "epochs": 1, "batch_size": 8,
         "augment": False, "patience": None}  # fmt: skip


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(7)
    write_avi(folder / "clip.avi", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                                    for _ in range(12)])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, media: Path) -> Iterator[RunningAgent]:
    data = tmp_path_factory.mktemp("agent")
    with agent_in_thread(data, token=TOKEN, max_dataset_files=1000, max_dataset_bytes=64 << 20,
                         run_source_allow=frozenset({str(media)})) as agent:  # fmt: skip
        yield agent


def api(agent: RunningAgent, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    url = f"http://127.0.0.1:{agent.http}{path}"
    return httpx.request(method, url, headers=headers, timeout=60, **kw)


def make(agent: RunningAgent, name: str, classes: list[str]) -> dict[str, Any]:
    answer = api(agent, "POST", "/api/workspaces", json={"name": name, "classes": classes})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def image(seed: int, fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def send(agent: RunningAgent, ws: str, cls: str, data: bytes, **kw: Any) -> httpx.Response:
    headers = {"Content-Type": "image/png", **kw.pop("headers", {})}
    return api(agent, "POST", f"/api/workspaces/{ws}/images/{cls}", content=data,
               headers=headers, **kw)  # fmt: skip


def test_create_list_show_and_delete(running: RunningAgent) -> None:
    made = make(running, "pets", ["cat", "dog"])
    assert made == {"name": "pets", "classes": ["cat", "dog"], "counts": {"cat": 0, "dog": 0},
                    "images": {"cat": [], "dog": []}, "split": None}  # fmt: skip
    again = api(running, "POST", "/api/workspaces", json={"name": "pets", "classes": ["a", "b"]})
    assert again.status_code == 409 and again.json()["code"] == "workspace_exists"
    listed = api(running, "GET", "/api/workspaces").json()["workspaces"]
    assert {"name": "pets", "classes": ["cat", "dog"], "counts": {"cat": 0, "dog": 0},
            "split": None} in listed  # fmt: skip
    assert api(running, "GET", "/api/workspaces/pets").json() == made
    assert api(running, "DELETE", "/api/workspaces/pets").json() == {"deleted": "pets"}
    gone = api(running, "GET", "/api/workspaces/pets")
    assert gone.status_code == 404 and gone.json()["code"] == "workspace_not_found"
    assert "pets" not in [w["name"] for w in api(running, "GET", "/api/workspaces").json()[
        "workspaces"]]  # fmt: skip
    assert not list((running.config.data_dir / "workspaces").glob(".deleting-*"))
    assert api(running, "DELETE", "/api/workspaces/pets").status_code == 404


def test_a_broken_workspace_is_listed_with_its_error_and_can_be_deleted(
    running: RunningAgent,
) -> None:
    make(running, "broken", ["a", "b"])
    root = running.config.data_dir / "workspaces" / "broken"
    (root / "edgewire.toml").write_text("[project\n")
    shown = api(running, "GET", "/api/workspaces/broken")
    assert shown.status_code == 400 and "unreadable" in shown.json()["error"]
    assert str(root) not in shown.text  # no agent path goes to the browser
    listed = {w["name"]: w for w in api(running, "GET", "/api/workspaces").json()["workspaces"]}
    assert "unreadable" in listed["broken"]["error"] and listed["broken"]["classes"] == []
    assert api(running, "DELETE", "/api/workspaces/broken").status_code == 200
    assert not root.exists()


def test_images_are_stored_once_served_thumbnailed_and_deleted(running: RunningAgent) -> None:
    make(running, "imgs", ["a", "b"])
    png, jpeg, webp = image(1), image(2, "JPEG"), image(3, "WEBP")
    first = send(running, "imgs", "a", png)
    assert first.status_code == 201, first.text
    assert first.json() == {"file": first.json()["file"], "new": True, "count": 1}
    assert first.json()["file"].endswith(".png")
    assert send(running, "imgs", "a", png).json() == {**first.json(), "new": False}
    time.sleep(0.02)  # a later modification time: newest first
    second = send(running, "imgs", "a", jpeg, headers={"Content-Type": "image/jpeg"}).json()
    assert second["file"].endswith(".jpg") and second["count"] == 2
    third = send(running, "imgs", "b", webp, headers={"Content-Type": "image/webp"}).json()
    assert third["file"].endswith(".png")  # WebP is stored as PNG, as an import does

    detail = api(running, "GET", "/api/workspaces/imgs").json()
    assert detail["images"] == {"a": [second["file"], first.json()["file"]], "b": [third["file"]]}
    assert detail["counts"] == {"a": 2, "b": 1}
    # A page asks for the newest few names; the counts stay whole.
    newest = api(running, "GET", "/api/workspaces/imgs", params={"limit": "1"}).json()
    assert newest["images"] == {"a": [second["file"]], "b": [third["file"]]}
    assert newest["counts"] == {"a": 2, "b": 1}
    for bad in ("0", "-1", "x", "100001"):
        answer = api(running, "GET", "/api/workspaces/imgs", params={"limit": bad})
        assert answer.status_code == 400, bad

    path = f"/api/workspaces/imgs/images/a/{first.json()['file']}"
    got = api(running, "GET", path)
    assert got.status_code == 200 and got.content == png
    assert got.headers["content-type"] == "image/png"
    big = image(4, size=(400, 300))
    big_file = send(running, "imgs", "b", big).json()["file"]
    thumb = api(running, "GET", f"/api/workspaces/imgs/images/b/{big_file}", params={"thumb": "1"})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as small:
        assert small.format == "JPEG" and max(small.size) <= 96 and small.size == (96, 72)
    # Served again from the kept thumbnail.
    again = api(running, "GET", f"/api/workspaces/imgs/images/b/{big_file}?thumb=1")
    assert again.content == thumb.content
    kept = running.config.data_dir / "workspaces" / "imgs" / ".thumbs" / "b" / f"{big_file}.jpg"
    assert kept.read_bytes() == thumb.content
    bad_flag = api(running, "GET", f"/api/workspaces/imgs/images/b/{big_file}?thumb=maybe")
    assert bad_flag.status_code == 400
    assert api(running, "DELETE", f"/api/workspaces/imgs/images/b/{big_file}").status_code == 200
    assert not kept.exists()  # its thumbnail goes with it

    assert api(running, "DELETE", path).json() == {"deleted": first.json()["file"]}
    missing = api(running, "GET", path)
    assert missing.status_code == 404 and missing.json()["code"] == "image_not_found"
    assert api(running, "DELETE", path).status_code == 404
    assert api(running, "GET", "/api/workspaces/imgs").json()["counts"] == {"a": 1, "b": 1}


def fill(agent: RunningAgent, ws: str, classes: dict[str, int]) -> None:
    for k, (cls, n) in enumerate(classes.items()):
        for i in range(n):
            base = np.zeros((32, 32, 3), dtype=np.uint8)
            base[..., k % 3] = 200  # each class its own colour, and noise
            noise = np.random.default_rng(1000 * k + i).integers(0, 40, base.shape, dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(base + noise).save(out, format="PNG")
            assert send(agent, ws, cls, out.getvalue()).status_code == 201


def test_split_register_and_train_on_the_agent(running: RunningAgent) -> None:
    make(running, "colours", ["red", "green"])
    early = api(running, "POST", "/api/workspaces/colours/dataset")
    assert early.status_code == 400 and "split it first" in early.json()["error"]
    fill(running, "colours", {"red": 10, "green": 10})
    split = api(running, "POST", "/api/workspaces/colours/split",
                json={"ratios": [0.6, 0.2, 0.2], "seed": 3})  # fmt: skip
    assert split.status_code == 200, split.text
    assert split.json() == {
        "train": 12,
        "val": 4,
        "test": 4,
        "classes": {
            "green": {"train": 6, "val": 2, "test": 2},
            "red": {"train": 6, "val": 2, "test": 2},
        },
    }
    summary = [w for w in api(running, "GET", "/api/workspaces").json()["workspaces"]
               if w["name"] == "colours"]  # fmt: skip
    assert summary[0]["split"] == {"train": 12, "val": 4, "test": 4}

    registered = api(running, "POST", "/api/workspaces/colours/dataset")
    assert registered.status_code == 200, registered.text
    body = registered.json()
    folder = running.config.data_dir / "workspaces" / "colours" / "dataset"
    manifest = scan_folder(folder)
    assert body == {"dataset": manifest.id, "files": 21, "bytes": manifest.total_bytes}
    # As a client's upload would leave it: the manifest lacks nothing.
    check = api(running, "POST", "/api/datasets", json=manifest.to_dict()).json()
    assert check["dataset"] == manifest.id and check["missing"] == []
    assert api(running, "POST", "/api/workspaces/colours/dataset").json() == body  # again: same

    started = api(
        running,
        "POST",
        "/api/train",
        json={"dataset": body["dataset"], "options": QUICK, "run_id": "colours-1"},
    )
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 120
    while True:
        status = api(running, "GET", "/api/train/colours-1").json()
        if status["finished"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["state"] == "succeeded", status
    assert "checkpoint.safetensors" in status["files"]


def test_two_splits_and_uploads_at_once_leave_one_whole_split(running: RunningAgent) -> None:
    make(running, "busy", ["x", "y"])
    fill(running, "busy", {"x": 6, "y": 6})
    answers: list[int] = []

    def split(seed: int) -> None:
        got = api(running, "POST", "/api/workspaces/busy/split", json={"seed": seed})
        answers.append(got.status_code)

    def upload(seed: int) -> None:
        answers.append(send(running, "busy", "x", image(500 + seed)).status_code)

    threads = [threading.Thread(target=split, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=upload, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == [200] * 3 + [201] * 4
    dataset = running.config.data_dir / "workspaces" / "busy" / "dataset"
    files = [p for p in dataset.rglob("*") if p.is_file() and p.name != "labels.txt"]
    assert len({p.name for p in files}) == len(files)  # each image in one split only
    assert not list(dataset.parent.glob(".dataset-*"))  # no split left half-made


def test_capture_from_a_video_file_on_the_allow_list(running: RunningAgent, media: Path) -> None:
    make(running, "cam", ["on", "off"])
    body = {"class": "on", "source": str(media / "clip.avi"), "count": 5, "every": 0}
    got = api(running, "POST", "/api/workspaces/cam/capture", json=body)
    assert got.status_code == 200, got.text
    assert got.json() == {"saved": 5, "duplicates": 0, "seen": 5}
    assert api(running, "GET", "/api/workspaces/cam").json()["counts"] == {"on": 5, "off": 0}
    rest = api(running, "POST", "/api/workspaces/cam/capture", json={**body, "count": 100})
    assert rest.json() == {"saved": 7, "duplicates": 5, "seen": 12}  # the file ends

    outside = Path(running.config.data_dir) / "clip.avi"
    outside.write_bytes((media / "clip.avi").read_bytes())
    refused = api(running, "POST", "/api/workspaces/cam/capture",
                  json={**body, "source": str(outside)})  # fmt: skip
    assert refused.status_code == 403 and refused.json()["code"] == "not_allowed"
    # A camera needs no allow entry; one that is not there is one line (502).
    camera = api(running, "POST", "/api/workspaces/cam/capture",
                 json={**body, "source": "/dev/video63"})  # fmt: skip
    assert camera.status_code == 502 and "no camera" in camera.json()["error"]
    for bad in ({**body, "count": 0}, {**body, "count": 1001}, {**body, "every": -1},
                {**body, "count": 1000, "every": 1}, {**body, "class": "nope"},
                {**body, "extra": 1}, {"class": "on"},
                # A live run's pushed frames, not a source: a file named "push" in the
                # agent's folder is not read past the allow-list either.
                {**body, "source": "push"}):  # fmt: skip
        answer = api(running, "POST", "/api/workspaces/cam/capture", json=bad)
        assert answer.status_code == 400, (bad, answer.text)


@pytest.mark.parametrize("name", ["..", ".hidden", "a b", "x" * 65, "é"])
def test_bad_workspace_names_are_refused(running: RunningAgent, name: str) -> None:
    answer = api(running, "POST", "/api/workspaces", json={"name": name, "classes": ["a", "b"]})
    assert answer.status_code == 400 and "workspace name" in answer.json()["error"]


def test_bad_paths_classes_and_file_names_are_refused(running: RunningAgent) -> None:
    make(running, "names", ["a", "b"])
    stored = send(running, "names", "a", image(9)).json()["file"]
    assert api(running, "GET", "/api/workspaces/%2E%2E").status_code == 400
    assert api(running, "GET", f"/api/workspaces/names/images/a/..%2F..%2F{stored}").status_code \
        == 404  # a '/' is no file name: no route  # fmt: skip
    for file in ("%2E%2E", ".lock", "..x"):
        answer = api(running, "GET", f"/api/workspaces/names/images/a/{file}")
        assert answer.status_code == 400, file
    assert api(running, "GET", f"/api/workspaces/names/images/b/{stored}").status_code == 404
    unknown = send(running, "names", "c", image(10))
    assert unknown.status_code == 400 and "unknown class 'c'" in unknown.json()["error"]
    assert api(running, "GET", f"/api/workspaces/names/images/c/{stored}").status_code == 400
    for classes in (["only"], ["a", "a"], ["a/b", "c"], "ab", [1, 2]):
        answer = api(running, "POST", "/api/workspaces", json={"name": "n2", "classes": classes})
        assert answer.status_code == 400, classes
    bad_split = api(running, "POST", "/api/workspaces/names/split", json={"ratios": [1, 1, 1]})
    assert bad_split.status_code == 400
    few = api(running, "POST", "/api/workspaces/names/split", json={})
    assert few.status_code == 400 and "too few images" in few.json()["error"]


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)  # fmt: skip

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(
        b"IEND", b"")  # fmt: skip


def test_bodies_that_are_not_images_are_refused(running: RunningAgent) -> None:
    make(running, "bodies", ["a", "b"])
    for data in (b"not an image at all", image(11)[:200], b"GIF89a" + b"\x00" * 100):
        answer = send(running, "bodies", "a", data)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "data"
    assert send(running, "bodies", "a", b"").status_code == 400
    bomb = send(running, "bodies", "a", bomb_png(50_000, 50_000))
    assert bomb.status_code == 413 and "pixels" in bomb.json()["error"]
    bigger = send(running, "bodies", "a", bomb_png(200_000, 200_000))
    assert bigger.status_code == 413
    assert api(running, "GET", "/api/workspaces/bodies").json()["counts"] == {"a": 0, "b": 0}
    over = send(running, "bodies", "a", b"\x00" * (MAX_IMAGE_BYTES + 1))
    assert over.status_code == 413


def test_an_oversized_body_is_refused_before_it_is_read(running: RunningAgent) -> None:
    make(running, "big", ["a", "b"])
    head = (f"POST /api/workspaces/big/images/a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {MAX_IMAGE_BYTES + 1}\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection(("127.0.0.1", running.http), timeout=10) as sock:
        sock.sendall(head)  # and not one byte of the body
        answer = b""
        while b"}" not in answer:  # the head, then the one-line JSON error
            got = sock.recv(65536)
            assert got, answer
            answer += got
    text = answer.decode()
    assert text.startswith("HTTP/1.1 413"), text
    assert '"code":"too_large"' in text.replace(" ", "")


def test_workspace_and_image_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workspaces_api, "MAX_WORKSPACES", 3)
    with agent_in_thread(tmp_path, token=TOKEN, max_dataset_files=4) as agent:
        for i in range(3):
            make(agent, f"w{i}", ["a", "b"])
        full = api(agent, "POST", "/api/workspaces", json={"name": "w3", "classes": ["a", "b"]})
        assert full.status_code == 400 and "3 workspaces" in full.json()["error"]
        for seed in range(3):  # max_dataset_files less labels.txt
            assert send(agent, "w0", "a", image(seed)).status_code == 201
        more = send(agent, "w0", "b", image(99))
        assert more.status_code == 400 and "max_dataset_files" in more.json()["error"]


def test_the_api_needs_the_token(running: RunningAgent) -> None:
    url = f"http://127.0.0.1:{running.http}/api/workspaces"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["code"] == "auth"
    post = httpx.post(url, json={"name": "sneaky", "classes": ["a", "b"]}, timeout=10)
    assert post.status_code == 401
    image_url = f"{url}/sneaky/images/a"
    assert httpx.post(image_url, content=image(1), timeout=10).status_code == 401
    assert not (running.config.data_dir / "workspaces" / "sneaky").exists()
