"""Remote training over HTTP against a real agent: content-addressed upload (resumable,
sha256-checked), a run on the agent's training thread, its event stream, its files."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgewire.agent.blobs import BlobStore
from edgewire.data.manifest import Entry, Manifest, pack, scan_folder
from edgewire.errors import DataError
from edgewire.train.folder import FolderOptions, train_folder
from tests.helpers import RunningAgent, agent_in_thread, write_split

TOKEN = "remote-train-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUICK = {"model": "mnist_cnn", "image_size": 32, "epochs": 1, "batch_size": 16,
         "augment": False, "patience": None}  # fmt: skip
#: Enough epochs that a run only ends when stopped.
ENDLESS = {**QUICK, "epochs": 10_000}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split") / "dataset"
    return write_split(root, ["0", "1", "7"], {"train": 20, "val": 6, "test": 6})


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    data = tmp_path_factory.mktemp("agent")
    with agent_in_thread(data, token=TOKEN, max_dataset_files=1000,
                         max_dataset_bytes=8 << 20) as agent:  # fmt: skip
        yield agent


def url(agent: RunningAgent, path: str) -> str:
    return f"http://127.0.0.1:{agent.http}{path}"


def post(agent: RunningAgent, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url(agent, path), json=body, headers=AUTH, timeout=30, **kw)


def put_blob(agent: RunningAgent, sha: str, data: bytes) -> httpx.Response:
    return httpx.put(url(agent, f"/api/blobs/{sha}"), content=data, headers=AUTH, timeout=30)


def upload_all(agent: RunningAgent, folder: Path, manifest: Manifest) -> str:
    answer = post(agent, "/api/datasets", manifest.to_dict())
    assert answer.status_code == 200, answer.text
    by_sha = {e.sha256: folder / e.path for e in manifest.files}
    for sha in answer.json()["missing"]:
        assert put_blob(agent, sha, by_sha[sha].read_bytes()).status_code == 201
    return str(answer.json()["dataset"])


def events(agent: RunningAgent, run_id: str, after: int = 0) -> list[tuple[int | None, str, Any]]:
    """The run's event stream from ``after`` until the agent ends it: (id, event, data)."""
    found = []
    with httpx.stream("GET", url(agent, f"/api/train/{run_id}/events"), params={"after": after},
                      headers=AUTH, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "data" in fields:
            seq = int(fields["id"]) if "id" in fields else None
            found.append((seq, fields["event"], json.loads(fields["data"])))
    return found


def start(
    agent: RunningAgent, dataset: str, run_id: str, options: dict[str, Any]
) -> httpx.Response:
    return post(agent, "/api/train", {"dataset": dataset, "options": options, "run_id": run_id})


def test_upload_resumes_train_follow_and_download(
    running: RunningAgent, split: Path, tmp_path: Path
) -> None:
    manifest = scan_folder(split)
    assert len(manifest.files) == 97  # 96 digits and labels.txt
    first = post(running, "/api/datasets", manifest.to_dict()).json()
    assert first["dataset"] == manifest.id and first["files"] == 97
    lacking = first["missing"]
    assert sorted(lacking) == sorted(manifest.blobs())
    by_sha = {e.sha256: split / e.path for e in manifest.files}
    half = lacking[: len(lacking) // 2]
    for sha in half:  # an upload cut off half-way
        answer = put_blob(running, sha, by_sha[sha].read_bytes())
        assert answer.status_code == 201 and answer.json()["stored"] is True
    again = post(running, "/api/datasets", manifest.to_dict()).json()
    assert sorted(again["missing"]) == sorted(set(lacking) - set(half))  # only the rest
    for sha in again["missing"]:
        assert put_blob(running, sha, by_sha[sha].read_bytes()).status_code == 201
    assert post(running, "/api/datasets", manifest.to_dict()).json()["missing"] == []

    answer = start(running, manifest.id, "quick", QUICK)
    assert answer.status_code == 202, answer.text
    seen = events(running, "quick")
    kinds = [kind for _, kind, _ in seen]
    assert kinds[0] == "ready" and kinds[-1] == "summary"
    assert {"batch_size", "feedback", "epoch", "report"} <= set(kinds)
    assert [seq for seq, _, _ in seen] == list(range(1, len(seen) + 1))
    assert kinds.count("feedback") == 4  # 60 train images in batches of 16
    # A follower that reconnects after event 3 gets the same events from 4 on.
    assert events(running, "quick", after=3) == seen[3:]

    summary = seen[-1][2]
    assert summary["state"] == "succeeded"
    assert str(running.config.data_dir) not in json.dumps(seen)  # no agent paths leak
    status = httpx.get(url(running, "/api/train/quick"), headers=AUTH).json()
    assert status["state"] == "succeeded" and status["last_event"]["event"] == "summary"
    assert not (running.config.data_dir / "remote" / "work" / "quick").exists()

    local = tmp_path / "local"
    train_folder(split, local, FolderOptions(**QUICK))
    names = {p.name for p in local.iterdir() if not p.name.startswith(".")}
    assert set(summary["files"]) == names
    for name, meta in summary["files"].items():
        got = httpx.get(url(running, f"/api/train/quick/files/{name}"), headers=AUTH)
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == meta["sha256"]
        assert got.headers["x-edgewire-sha256"] == meta["sha256"]
        assert str(running.config.data_dir).encode() not in got.content  # nor in the meta
    checkpoint = httpx.get(url(running, "/api/train/quick/files/checkpoint.safetensors"),
                           headers=AUTH).content  # fmt: skip
    header = json.loads(checkpoint[8 : 8 + int.from_bytes(checkpoint[:8], "little")])
    meta = json.loads(header["__metadata__"]["edgewire"])["meta"]
    assert meta["dataset"] == meta["data"] == "dataset"  # the client's WS/dataset
    assert (httpx.get(url(running, "/api/train/quick/files/..%2Fsecret"), headers=AUTH)
            .status_code == 404)  # fmt: skip
    assert httpx.get(url(running, "/api/train/quick/files/x.txt"), headers=AUTH).status_code == 404


def test_packs_store_many_files_at_once_and_check_each(running: RunningAgent) -> None:
    files = [f"packed file {i}".encode() for i in range(50)]
    items = [(hashlib.sha256(data).hexdigest(), data) for data in files]
    manifest = {"files": [{"path": f"p/{i}.txt", "sha256": sha, "size": len(data)}
                          for i, (sha, data) in enumerate(items)]}  # fmt: skip
    assert len(post(running, "/api/datasets", manifest).json()["missing"]) == 50
    blobs = running.config.data_dir / "remote" / "blobs"
    # A record whose bytes do not match its sha256: the ones before it stay, it does not.
    bad = [*items[:10], (items[10][0], b"tampered"), *items[11:20]]
    refused = httpx.post(url(running, "/api/blobs"), content=pack(bad), headers=AUTH)
    assert refused.status_code == 400 and refused.json()["code"] == "checksum"
    assert not (blobs / items[10][0]).exists()
    assert len(post(running, "/api/datasets", manifest).json()["missing"]) == 40
    torn = httpx.post(url(running, "/api/blobs"), content=pack(items)[:-3], headers=AUTH)
    assert torn.status_code == 400 and "middle of a record" in torn.json()["error"]
    whole = httpx.post(url(running, "/api/blobs"), content=pack(items), headers=AUTH)
    assert whole.status_code == 201, whole.text
    assert whole.json()["files"] == 50
    assert post(running, "/api/datasets", manifest).json()["missing"] == []
    for sha, data in items:
        assert (blobs / sha).read_bytes() == data
    huge = bytes.fromhex("0" * 64) + (5 << 20).to_bytes(8, "big")
    assert httpx.post(url(running, "/api/blobs"), content=huge, headers=AUTH).status_code == 413


def test_a_wrong_sha256_is_refused_and_nothing_is_stored(running: RunningAgent) -> None:
    body = b"the real bytes"
    claimed = hashlib.sha256(b"other bytes").hexdigest()
    answer = put_blob(running, claimed, body)
    assert answer.status_code == 400 and answer.json()["code"] == "checksum"
    assert claimed in answer.json()["error"]
    assert not (running.config.data_dir / "remote" / "blobs" / claimed).exists()
    assert put_blob(running, "not-a-sha", body).status_code == 400
    assert list((running.config.data_dir / "uploads").glob("blob-*")) == []


@pytest.mark.parametrize("path", ["../escape.png", "/etc/passwd", "a/../b.png", "a\\b.png",
                                  "a//b.png", "./a.png", "a\x00b", "x/" * 20 + "deep.png",
                                  "p" * 300, ""])  # fmt: skip
def test_hostile_paths_are_refused(running: RunningAgent, path: str) -> None:
    entry = {"path": path, "sha256": "0" * 64, "size": 1}
    answer = post(running, "/api/datasets", {"files": [entry]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "protocol"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"files": [{"path": "a", "sha256": "0" * 64, "size": 1}] * 2}, 400),  # listed twice
        ({"files": [{"path": "a", "sha256": "0" * 64, "size": 1},
                    {"path": "a/b", "sha256": "0" * 64, "size": 1}]}, 400),  # file and folder
        ({"files": [{"path": f"f{i}", "sha256": "0" * 64, "size": 1} for i in range(1001)]},
         413),  # over max_dataset_files
        ({"files": [{"path": "big", "sha256": "0" * 64, "size": 9 << 20}]}, 413),
        ({"files": [{"path": "a", "sha256": "0" * 64, "size": -1}]}, 400),
        ({"files": [{"path": "a", "sha256": "0" * 64, "size": True}]}, 400),
        ({"files": [{"path": "a", "sha256": "0" * 64, "size": 1},
                    {"path": "b", "sha256": "0" * 64, "size": 2}]}, 400),  # one sha, two sizes
        ({"files": []}, 400),
        ({"files": "nope"}, 400),
        ([1, 2], 400),
    ],
)  # fmt: skip
def test_bad_manifests_are_refused(running: RunningAgent, body: Any, status: int) -> None:
    answer = post(running, "/api/datasets", body)
    assert answer.status_code == status, answer.text


def test_bad_json_wrong_token_and_unknown_things(running: RunningAgent, split: Path) -> None:
    raw = httpx.post(url(running, "/api/datasets"), content=b"{nope", headers=AUTH)
    assert raw.status_code == 400 and raw.json()["code"] == "protocol"
    nan = httpx.post(url(running, "/api/train"), content=b'{"options": NaN}', headers=AUTH)
    assert nan.status_code == 400
    wrong = {"Authorization": "Bearer not-the-token"}
    for method, path in [("POST", "/api/datasets"), ("PUT", f"/api/blobs/{'0' * 64}"),
                         ("POST", "/api/blobs"),
                         ("POST", "/api/train"), ("GET", "/api/train/quick"),
                         ("GET", "/api/train/quick/events"), ("POST", "/api/train/quick/stop"),
                         ("GET", "/api/train/quick/files/report.json")]:  # fmt: skip
        for headers in (wrong, {}, {"Authorization": "garbage"}):
            got = httpx.request(method, url(running, path), headers=headers, content=b"{}")
            assert got.status_code == 401, (method, path, got.text)
    assert httpx.get(url(running, "/api/train/nope"), headers=AUTH).status_code == 404
    assert httpx.get(url(running, "/api/train/nope/events"), headers=AUTH).status_code == 404
    assert start(running, "f" * 64, "r1", QUICK).status_code == 400  # no such data set
    dataset = upload_all(running, split, scan_folder(split))
    assert start(running, dataset, "r1", {"model": "gpt5"}).status_code == 400
    assert start(running, dataset, "r1", {"epochz": 1}).status_code == 400
    assert start(running, dataset, "../r1", QUICK).status_code == 400
    after = httpx.get(url(running, "/api/train/quick/events"), params={"after": "x"},
                      headers=AUTH)  # fmt: skip
    assert after.status_code == 400


def test_one_run_at_a_time_stop_and_agent_stop(split: Path, tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "data", token=TOKEN) as agent:
        dataset = upload_all(agent, split, scan_folder(split))
        assert start(agent, dataset, "long", ENDLESS).status_code == 202
        busy = start(agent, dataset, "second", QUICK)
        assert busy.status_code == 503 and busy.json()["code"] == "busy"
        assert "long" in busy.json()["error"] and "stop" in busy.json()["error"]
        # Follow until training is under way, then stop it.
        with httpx.stream("GET", url(agent, "/api/train/long/events"), headers=AUTH,
                          timeout=60) as response:  # fmt: skip
            for line in response.iter_lines():
                if line == "event: feedback":
                    break
        stopped = post(agent, "/api/train/long/stop", None)
        assert stopped.status_code == 200 and stopped.json()["stopping"] is True
        seen = events(agent, "long")
        assert seen[-1][1] == "summary" and seen[-1][2]["state"] == "stopped"
        assert "report.json" in seen[-1][2]["files"]
        assert start(agent, dataset, "long", QUICK).status_code == 400  # the id is taken
        # A run the agent's own stop has to end: leaving the block stops the agent, which
        # only returns once the training thread did (else agent_in_thread fails).
        assert start(agent, dataset, "endless", ENDLESS).status_code == 202
        with httpx.stream("GET", url(agent, "/api/train/endless/events"), headers=AUTH,
                          timeout=60) as response:  # fmt: skip
            for line in response.iter_lines():
                if line == "event: feedback":
                    break
    # The stopping agent ended that run at a batch: no val pass, report or export.
    left = tmp_path / "data" / "remote" / "runs" / "endless"
    assert not (left / "report.json").exists() and not (left / "model.onnx").exists()


class CuttingProxy:
    """A TCP proxy to the agent that cuts the first event stream after ``cut`` bytes."""

    def __init__(self, port: int, cut: int) -> None:
        self.upstream, self.cut, self.cuts = port, cut, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [down, up]
            conn = {"events": False}
            for src, dst, answers in ((down, up, False), (up, down, True)):
                thread = threading.Thread(target=self._pipe, args=(src, dst, answers, conn),
                                          daemon=True)  # fmt: skip
                thread.start()
                self.threads.append(thread)

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool,
              conn: dict[str, bool]) -> None:  # fmt: skip
        sent = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not answers and b"/events" in data and self.cuts == 0:
                    conn["events"] = True
                if answers and conn["events"] and self.cuts == 0 and sent + len(data) >= self.cut:
                    dst.sendall(data[: self.cut - sent])
                    self.cuts = 1
                    break
                dst.sendall(data)
                sent += len(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self.server.close()
        self.accepting.join(5)
        assert not self.accepting.is_alive()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        for sock in self.sockets:
            sock.close()


def test_the_cli_follower_picks_a_cut_stream_up_after_the_last_event(
    running: RunningAgent, split: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgewire.cli import train_remote

    dataset = upload_all(running, split, scan_folder(split))
    assert start(running, dataset, "cut", QUICK).status_code == 202
    whole = events(running, "cut")  # the run is over: the ring holds every event
    proxy = CuttingProxy(running.http, cut=900)
    try:
        where = train_remote._where(f"127.0.0.1:{proxy.port}", TOKEN)
        where.run_id = "cut"

        async def follow() -> Any:
            async with where.client() as client:
                return await train_remote._follow(where, client, epochs=1, as_json=True)

        summary, files = asyncio.run(follow())
    finally:
        proxy.close()
    assert proxy.cuts == 1  # the stream was cut once, mid-way
    assert summary == whole[-1][2]["summary"] and files == whole[-1][2]["files"]
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [{"event": kind, **data} for _, kind, data in whole[:-1]]
    assert shown == expected  # every event once, in order, none lost at the cut


def test_the_disk_budget_is_asked_before_a_file_is_written(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "data", token=TOKEN, max_disk_bytes=200_000) as agent:
        data = bytes(300_000)
        sha = hashlib.sha256(data).hexdigest()
        full = put_blob(agent, sha, data)
        assert full.status_code == 507 and full.json()["code"] == "disk_full"
        assert not (agent.config.data_dir / "remote" / "blobs" / sha).exists()
        packed = httpx.post(url(agent, "/api/blobs"), content=pack([(sha, data)]), headers=AUTH)
        assert packed.status_code == 507


def test_old_data_sets_and_their_files_are_swept_but_not_those_in_use(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = BlobStore(tmp_path, ttl_s=100.0, clock=lambda: now[0])
    items = {name: hashlib.sha256(name.encode()).hexdigest() for name in ("a", "b", "c")}
    store.write_many([(sha, name.encode()) for name, sha in items.items()])

    def manifest(*names: str) -> str:
        return store.save_manifest(Manifest(tuple(
            Entry(f"{n}.txt", items[n], 1) for n in names)))  # fmt: skip

    old, kept = manifest("a", "b"), manifest("b", "c")
    for path in [*store.blobs.iterdir(), *store.datasets.iterdir()]:
        os.utime(path, (now[0] - 500, now[0] - 500))  # everything is past its TTL
    assert store.sweep(in_use={kept}) == 2  # the old manifest, and "a" only it named
    assert sorted(p.name for p in store.blobs.iterdir()) == sorted([items["b"], items["c"]])
    assert [p.name for p in store.datasets.iterdir()] == [f"{kept}.json"]
    assert old != kept
    assert store.sweep(in_use=set()) == 0  # at most once a minute unless forced
    assert store.sweep(in_use=set(), force=True) == 3


def test_a_symlink_in_the_data_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"x")
    (tmp_path / "train" / "b.png").symlink_to("/etc/hostname")
    with pytest.raises(DataError, match="symlink"):
        scan_folder(tmp_path)


def test_a_failed_run_names_the_data_set_not_the_agents_folders(
    running: RunningAgent, tmp_path: Path
) -> None:
    broken = write_split(tmp_path / "dataset", ["0", "1"], {"train": 4, "test": 2})  # no val/
    dataset = upload_all(running, broken, scan_folder(broken))
    assert start(running, dataset, "noval", QUICK).status_code == 202
    error = events(running, "noval")[-1]
    assert error[1] == "error" and error[2]["code"] == "data"
    assert error[2]["error"] == "dataset: has no val/ split"
    status = httpx.get(url(running, "/api/train/noval"), headers=AUTH).json()
    assert str(running.config.data_dir) not in json.dumps(status)


def test_a_run_over_the_memory_model_or_disk_caps_is_refused_before_it_starts(
    split: Path, tmp_path: Path
) -> None:
    with agent_in_thread(tmp_path / "data", token=TOKEN, max_train_data_bytes=1 << 20,
                         max_train_model_bytes=6_600_000,
                         max_disk_bytes=10_000_000) as agent:  # fmt: skip
        dataset = upload_all(agent, split, scan_folder(split))
        # 96 images × 3 × 64² × 3 copies is 3.5 MiB, over the 1 MiB cap.
        big = start(agent, dataset, "big", {**QUICK, "image_size": 64})
        assert big.status_code == 400 and "max_train_data_bytes" in big.json()["error"]
        huge = start(agent, dataset, "huge", {**QUICK, "model": "resnet18"})
        assert huge.status_code == 400 and "max_train_model_bytes" in huge.json()["error"]
        # mnist_cnn at 32×32 is 6.5 MB: two checkpoints with Adam's state and an ONNX
        # model are far over the 10 MB disk budget (half a model would fit).
        full = start(agent, dataset, "full", QUICK)
        assert full.status_code == 507 and full.json()["code"] == "disk_full"
        assert httpx.get(url(agent, "/api/train/full"), headers=AUTH).status_code == 404


def test_a_manifest_with_another_size_never_deletes_a_whole_blob(
    running: RunningAgent, tmp_path: Path
) -> None:
    data = b"a whole file that a run may link"
    sha = hashlib.sha256(data).hexdigest()
    assert put_blob(running, sha, data).status_code in (200, 201)
    blob = running.config.data_dir / "remote" / "blobs" / sha
    lying = post(running, "/api/datasets",
                 {"files": [{"path": "x.bin", "sha256": sha, "size": len(data) + 1}]})  # fmt: skip
    assert lying.status_code == 400 and lying.json()["code"] == "data", lying.text
    assert blob.read_bytes() == data
    # A blob that fails its own hash (torn by a power cut) goes, and is asked for again.
    store = BlobStore(tmp_path, ttl_s=100.0)
    store.blobs.mkdir(parents=True)
    (store.blobs / sha).write_bytes(data[:5])
    assert store.missing(Manifest((Entry("x.bin", sha, len(data)),))) == [sha]
    assert not (store.blobs / sha).exists()


def test_the_client_refuses_result_names_outside_the_known_set(
    running: RunningAgent, tmp_path: Path
) -> None:
    from edgewire.cli import train_remote
    from edgewire.errors import ProtocolError

    where = train_remote._where(f"127.0.0.1:{running.http}", TOKEN)
    where.run_id = "quick"
    (tmp_path / "runs").mkdir()

    async def finish(files: dict[str, Any]) -> Any:
        async with where.client() as client:
            summary = {"files": {"report": "report.json"}}
            return await train_remote._finish(where, client, tmp_path, summary, files,
                                              as_json=True)  # fmt: skip

    for name in ("../../evil.sh", "x.txt", ".bashrc"):
        with pytest.raises(ProtocolError, match="not among"):
            asyncio.run(finish({name: {"sha256": "0" * 64}}))
    assert not (tmp_path / "evil.sh").exists()
    assert os.listdir(tmp_path / "runs") == []


class _EndlessLine(http.server.BaseHTTPRequestHandler):
    """An event stream whose one line never ends (2 MiB and more, no newline)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b"event: epoch\ndata: ")
            for _ in range(32):
                self.wfile.write(b"x" * 65536)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_caps_an_event_line() -> None:
    from edgewire.cli import train_remote
    from edgewire.errors import FrameTooLarge

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessLine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        where = train_remote._where(f"127.0.0.1:{server.server_address[1]}", None)

        async def read() -> list[Any]:
            async with where.client() as client:
                return [event async for event in train_remote._sse(client, "/events", 0)]

        with pytest.raises(FrameTooLarge, match="over 1048576 bytes"):
            asyncio.run(read())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
