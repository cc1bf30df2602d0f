"""Artifact sources: local folders, HTTP(S) through the SSRF guard against a real server on
loopback, and W&B through a fake of the SDK's small surface (no test reaches W&B)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edgewire.automation.fetch import GuardedFetcher
from edgewire.automation.sources import (
    HttpSource,
    LocalSource,
    RemoteFile,
    Resolved,
    WandbSource,
    parse_ref,
    safe_name,
)
from edgewire.automation.urls import UrlPolicy
from edgewire.errors import (
    ChecksumMismatch,
    DataError,
    DependencyMissing,
    FrameTooLarge,
    NotAllowed,
    PeerTimeout,
    ProtocolError,
    RemoteError,
)

MODEL = b"\x08\x07fake onnx bytes" * 100
LABELS = b"zero\none\ntwo\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


# -- refs and names -----------------------------------------------------------------------


def test_refs_and_names() -> None:
    assert parse_ref("acme/edge/mnist:download") == ("acme/edge/mnist", "download")
    for bad in ("acme/edge:download", "acme/edge/mnist", "../x/y:z", "a/b/c:d:e", "a/b/c/d:e"):
        with pytest.raises(ProtocolError):
            parse_ref(bad)
    assert str(safe_name("sub/model.onnx")) == "sub/model.onnx"
    for bad in ("", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "a\0b", "a\nb"):
        with pytest.raises(NotAllowed):
            safe_name(bad)


# -- LocalSource ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    version = root / "acme" / "edge" / "mnist" / "v3"
    (version / "sub").mkdir(parents=True)
    (version / "model.onnx").write_bytes(MODEL)
    (version / "sub" / "labels.txt").write_bytes(LABELS)
    (root / "acme" / "edge" / "mnist" / "download").symlink_to("v3")  # the alias
    return root


async def test_local_source_resolves_an_alias_and_downloads_it(store: Path, tmp_path: Path) -> None:
    source = LocalSource(store)
    resolved = await source.resolve("acme/edge/mnist:download")
    assert {f.name: f.sha256 for f in resolved.files} == {
        "model.onnx": sha(MODEL),
        "sub/labels.txt": sha(LABELS),
    }
    assert resolved.version_id == f"sha256:{resolved.digest}"
    assert (await source.resolve("acme/edge/mnist:v3")).digest == resolved.digest
    paths = await source.download(resolved, tmp_path / "out" / "v")
    assert [p.read_bytes() for p in paths] == [MODEL, LABELS]
    assert leftovers(tmp_path / "out") == ["v"]
    with pytest.raises(DataError, match="exists already"):
        await source.download(resolved, tmp_path / "out" / "v")


async def test_local_source_refuses_escapes_and_symlinked_files(
    store: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside").mkdir()
    (store / "acme" / "edge" / "mnist" / "evil").symlink_to(tmp_path / "outside")
    source = LocalSource(store)
    with pytest.raises(NotAllowed, match="outside"):
        await source.resolve("acme/edge/mnist:evil")
    (store / "acme" / "edge" / "mnist" / "v3" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(NotAllowed, match="symlink"):
        await source.resolve("acme/edge/mnist:v3")
    with pytest.raises(DataError, match="not in the local source"):
        await source.resolve("acme/edge/mnist:v9")


async def test_local_source_refuses_a_file_changed_after_resolve(
    store: Path, tmp_path: Path
) -> None:
    source = LocalSource(store)
    resolved = await source.resolve("acme/edge/mnist:download")
    (store / "acme" / "edge" / "mnist" / "v3" / "model.onnx").write_bytes(MODEL[:-1] + b"!")
    with pytest.raises(ChecksumMismatch):
        await source.download(resolved, tmp_path / "out" / "v")
    assert leftovers(tmp_path / "out") == []


async def test_local_source_size_cap(store: Path) -> None:
    with pytest.raises(FrameTooLarge):
        await LocalSource(store, max_bytes=len(MODEL)).resolve("acme/edge/mnist:v3")
    with pytest.raises(FrameTooLarge):
        await LocalSource(store, max_files=1).resolve("acme/edge/mnist:v3")


# -- HttpSource on a real server on 127.0.0.1 -----------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: bool = True  # send Content-Length (else close-delimited)
    stall_s: float = 0.0  # pause after the first byte of the body


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, str]] = []  # (path, Host header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                server.seen.append((self.path, self.headers.get("Host", "")))
                route = server.routes.get(self.path, Route(status=404, body=b"no"))
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                if route.length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.stall_s:
                    self.wfile.write(route.body[:1])
                    self.wfile.flush()
                    time.sleep(route.stall_s)
                self.wfile.write(route.body[1:] if route.stall_s else route.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = False  # server_close() joins every handler thread
        self.httpd.block_on_close = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(10)


LOOPBACK = UrlPolicy.from_strings(hosts=["127.0.0.1"], networks=["127.0.0.1/32"], schemes=["http"])


def manifest(server: Server, **changes: Any) -> bytes:
    doc = {
        "version": "v3",
        "digest": "d3",
        "files": [
            {
                "name": "model.onnx",
                "url": "files/model.onnx",
                "size": len(MODEL),
                "sha256": sha(MODEL),
            },
            {
                "name": "sub/labels.txt",
                "url": server.url("/files/labels.txt"),
                "sha256": sha(LABELS),
            },
        ],
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def serve_artifact(server: Server, **changes: Any) -> None:
    server.routes["/a/manifest.json"] = Route(body=manifest(server, **changes))
    server.routes["/a/files/model.onnx"] = Route(body=MODEL)
    server.routes["/files/labels.txt"] = Route(body=LABELS, length=False)


async def test_http_source_resolves_and_downloads(server: Server, tmp_path: Path) -> None:
    serve_artifact(server)
    source = HttpSource(GuardedFetcher(LOOPBACK))
    resolved = await source.resolve(server.url("/a/manifest.json"))
    assert (resolved.version_id, resolved.digest) == ("v3", "d3")
    assert [f.url for f in resolved.files] == [
        server.url("/a/files/model.onnx"),
        server.url("/files/labels.txt"),
    ]
    paths = await source.download(resolved, tmp_path / "dl" / "v3")
    assert [p.read_bytes() for p in paths] == [MODEL, LABELS]
    assert leftovers(tmp_path / "dl") == ["v3"]


async def test_http_source_by_ref_template(server: Server) -> None:
    serve_artifact(server)
    server.routes["/acme/edge/mnist/download.json"] = server.routes["/a/manifest.json"]
    source = HttpSource(GuardedFetcher(LOOPBACK), manifest_url=server.url("/{path}/{alias}.json"))
    resolved = await source.resolve("acme/edge/mnist:download")
    assert resolved.version_id == "v3" and resolved.ref == "acme/edge/mnist:download"


async def test_connects_to_the_checked_address_and_keeps_the_host_name(server: Server) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert host == "store.test"
        return ["127.0.0.1"]

    serve_artifact(server)
    server.routes["/m.json"] = Route(body=manifest(server, files=[]))
    policy = UrlPolicy.from_strings(
        hosts=["store.test"], networks=["127.0.0.1/32"], schemes=["http"]
    )
    resolved = await HttpSource(GuardedFetcher(policy, resolver=resolver)).resolve(
        server.url("/m.json", host="store.test")
    )
    assert resolved.files == ()
    assert server.seen == [("/m.json", f"store.test:{server.port}")]


async def test_a_name_resolving_to_loopback_is_refused_unless_allow_listed(server: Server) -> None:
    serve_artifact(server)
    not_listed = UrlPolicy.from_strings(hosts=["localhost", "127.0.0.1"], schemes=["http"])
    for host in ("localhost", "127.0.0.1"):
        with pytest.raises(NotAllowed, match="non-public address"):
            await HttpSource(GuardedFetcher(not_listed)).resolve(
                server.url("/a/manifest.json", host=host)
            )
    with pytest.raises(NotAllowed, match="host 'localhost' is not on the allow-list"):
        await HttpSource(GuardedFetcher(LOOPBACK)).resolve(
            server.url("/a/manifest.json", host="localhost")
        )
    assert server.seen == []  # nothing was sent


async def test_a_name_with_any_private_address_is_refused(server: Server) -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "10.0.0.7"]

    policy = UrlPolicy.from_strings(
        hosts=["store.test"], networks=["127.0.0.1/32"], schemes=["http"]
    )
    with pytest.raises(NotAllowed, match=r"10.0.0.7"):
        await HttpSource(GuardedFetcher(policy, resolver=rebinding)).resolve(
            "http://store.test/m.json"
        )
    assert server.seen == []


@pytest.mark.parametrize(
    "target", ["http://10.1.2.3/x", "http://127.0.0.2:{port}/x", "http://169.254.169.254/latest"]
)
async def test_a_redirect_to_a_private_address_is_refused(server: Server, target: str) -> None:
    location = target.format(port=server.port)
    server.routes["/go"] = Route(status=302, headers={"Location": location})
    policy = UrlPolicy.from_strings(
        hosts=["127.0.0.1", "127.0.0.2", "10.1.2.3", "169.254.169.254"],
        networks=["127.0.0.1/32"], schemes=["http"],
    )  # fmt: skip
    with pytest.raises(NotAllowed, match="non-public address"):
        await HttpSource(GuardedFetcher(policy)).resolve(server.url("/go"))
    assert [path for path, _ in server.seen] == ["/go"]


async def test_redirects_are_rechecked_followed_and_bounded(server: Server) -> None:
    serve_artifact(server)
    server.routes["/go"] = Route(status=307, headers={"Location": "/a/manifest.json"})
    server.routes["/elsewhere"] = Route(status=301, headers={"Location": "https://evil.example/m"})
    server.routes["/loop"] = Route(status=302, headers={"Location": "/loop"})
    source = HttpSource(GuardedFetcher(LOOPBACK))
    assert (await source.resolve(server.url("/go"))).version_id == "v3"
    with pytest.raises(NotAllowed, match=r"scheme 'https'|evil.example"):
        await source.resolve(server.url("/elsewhere"))
    with pytest.raises(NotAllowed, match="redirects"):
        await source.resolve(server.url("/loop"))
    assert [p for p, _ in server.seen].count("/loop") == LOOPBACK.max_redirects + 1


async def test_an_oversize_body_is_refused_and_leaves_nothing(
    server: Server, tmp_path: Path
) -> None:
    serve_artifact(server)
    source = HttpSource(GuardedFetcher(LOOPBACK))
    resolved = await source.resolve(server.url("/a/manifest.json"))
    # The server sends more than the manifest said, with and without a Content-Length.
    for length in (True, False):
        server.routes["/a/files/model.onnx"] = Route(body=MODEL + b"x" * 5000, length=length)
        with pytest.raises(FrameTooLarge):
            await source.download(resolved, tmp_path / "dl" / "v3")
        assert leftovers(tmp_path / "dl") == []
    # A manifest over the source's cap is refused before any file is fetched.
    small = HttpSource(GuardedFetcher(LOOPBACK), max_bytes=len(MODEL) - 1)
    server.routes["/a/files/model.onnx"] = Route(body=MODEL)
    with pytest.raises(FrameTooLarge):
        await small.resolve(server.url("/a/manifest.json"))
    # Files of no declared size share the source's cap.
    server.routes["/big"] = Route(body=b"y" * 2000, length=False)
    unsized = Resolved(
        ref="r", version_id="v", digest="d", files=(RemoteFile(name="big", url=server.url("/big")),)
    )
    with pytest.raises(FrameTooLarge):
        await HttpSource(GuardedFetcher(LOOPBACK), max_bytes=1000).download(
            unsized, tmp_path / "dl" / "big"
        )
    assert leftovers(tmp_path / "dl") == []


async def test_a_digest_mismatch_is_refused_and_leaves_nothing(
    server: Server, tmp_path: Path
) -> None:
    serve_artifact(server)
    source = HttpSource(GuardedFetcher(LOOPBACK))
    resolved = await source.resolve(server.url("/a/manifest.json"))
    server.routes["/files/labels.txt"] = Route(body=LABELS.replace(b"one", b"uno"))
    with pytest.raises(ChecksumMismatch, match=r"labels.txt"):
        await source.download(resolved, tmp_path / "dl" / "v3")
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"files": [{"name": "../x", "url": "x"}]}, NotAllowed),
        ({"files": [{"name": "x", "url": "https://evil.example/x"}]}, NotAllowed),
        ({"files": [{"name": "x", "url": "file:///etc/passwd"}]}, NotAllowed),
        ({"files": [{"name": "x", "url": "http://10.0.0.1/x"}]}, NotAllowed),
        ({"files": [{"name": "x", "url": "x"}, {"name": "x", "url": "y"}]}, ProtocolError),
        ({"files": [{"name": "x", "url": "x"}, {"name": "x/y", "url": "y"}]}, ProtocolError),
        ({"files": [{"name": "x", "url": "x", "size": -1}]}, ProtocolError),
        ({"files": [{"name": "x", "url": "x", "sha256": "abc"}]}, ProtocolError),
        ({"files": [{"name": "x", "url": "x", "extra": 1}]}, ProtocolError),
        ({"files": "x"}, ProtocolError),
        ({"version": 3}, ProtocolError),
        ({"extra": 1}, ProtocolError),
    ],
)
async def test_bad_manifests_are_refused(
    server: Server, changes: dict[str, Any], error: type[Exception]
) -> None:
    server.routes["/m.json"] = Route(body=manifest(server, **changes))
    with pytest.raises(error):
        await HttpSource(GuardedFetcher(LOOPBACK)).resolve(server.url("/m.json"))


async def test_http_errors_are_remote_errors(server: Server) -> None:
    with pytest.raises(RemoteError, match="HTTP 404"):
        await HttpSource(GuardedFetcher(LOOPBACK)).resolve(server.url("/missing.json"))
    server.routes["/big.json"] = Route(body=b" " * (1024 * 1024 + 1))
    with pytest.raises(FrameTooLarge):
        await HttpSource(GuardedFetcher(LOOPBACK)).resolve(server.url("/big.json"))


# -- WandbSource with a fake SDK -----------------------------------------------------------


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@dataclass
class FakeEntry:
    path: str
    digest: str
    size: int
    ref: str | None = None


class FakeManifest:
    def __init__(self, entries: dict[str, FakeEntry]) -> None:
        self.entries = entries


class FakeArtifact:
    def __init__(
        self, version: str, digest: str, files: dict[str, bytes], refs: dict[str, str] | None = None
    ) -> None:
        self.version, self.digest, self.files = version, digest, dict(files)
        refs = refs or {}
        self.manifest = FakeManifest({
            name: FakeEntry(path=name, digest=md5_b64(data), size=len(data), ref=refs.get(name))
            for name, data in files.items()
        })  # fmt: skip
        self.on_disk = dict(files)  # what download() writes (tests corrupt it)

    def download(self, root: str) -> str:
        for name, data in self.on_disk.items():
            path = Path(root) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root


class FakeApi:
    def __init__(self, artifacts: dict[str, FakeArtifact]) -> None:
        self.artifacts = artifacts
        self.asked: list[str] = []

    def artifact(self, name: str) -> FakeArtifact:
        self.asked.append(name)
        if name not in self.artifacts:
            raise ValueError(f"artifact {name} not found")
        return self.artifacts[name]


@pytest.fixture
def api() -> FakeApi:
    art = FakeArtifact("v3", "digest-3", {"model.onnx": MODEL, "meta/labels.txt": LABELS})
    return FakeApi({"acme/edge/mnist:download": art, "acme/edge/mnist:v3": art})


async def test_wandb_source_resolves_the_alias_and_downloads_that_version(
    api: FakeApi, tmp_path: Path
) -> None:
    source = WandbSource(policy=UrlPolicy(), api=api)
    resolved = await source.resolve("acme/edge/mnist:download")
    assert (resolved.version_id, resolved.digest) == ("acme/edge/mnist:v3", "digest-3")
    assert {f.name: f.md5_b64 for f in resolved.files} == {
        "model.onnx": md5_b64(MODEL),
        "meta/labels.txt": md5_b64(LABELS),
    }
    paths = await source.download(resolved, tmp_path / "dl" / "v3")
    assert [p.read_bytes() for p in paths] == [MODEL, LABELS]
    assert api.asked == ["acme/edge/mnist:download", "acme/edge/mnist:v3"]  # pinned to the version


@pytest.mark.parametrize(
    "ref",
    [
        "https://evil.example/model.onnx",
        "file:///etc/passwd",
        "s3://bucket/key",
        "gs://b/k",
        "http://10.0.0.1/x",
    ],
)
async def test_wandb_manifest_references_off_the_allow_list_are_refused(ref: str) -> None:
    art = FakeArtifact("v1", "d", {"model.onnx": MODEL}, refs={"model.onnx": ref})
    source = WandbSource(
        policy=UrlPolicy(hosts=frozenset({"bucket.example"})), api=FakeApi({"a/b/c:x": art})
    )
    with pytest.raises(NotAllowed):
        await source.resolve("a/b/c:x")


async def test_wandb_manifest_references_on_the_allow_list_pass(tmp_path: Path) -> None:
    refs = {
        "model.onnx": "https://bucket.example/m.onnx",
        "labels.txt": f"file://{tmp_path}/labels.txt",
    }
    art = FakeArtifact("v1", "d", {"model.onnx": MODEL, "labels.txt": LABELS}, refs=refs)
    policy = UrlPolicy(hosts=frozenset({"bucket.example"}), file_roots=(tmp_path,))
    resolved = await WandbSource(policy=policy, api=FakeApi({"a/b/c:x": art})).resolve("a/b/c:x")
    assert {f.url for f in resolved.files} == set(refs.values())


async def test_wandb_manifest_with_an_escaping_name_is_refused() -> None:
    art = FakeArtifact("v1", "d", {"../../etc/cron.d/x": b"x"})
    with pytest.raises(NotAllowed):
        await WandbSource(policy=UrlPolicy(), api=FakeApi({"a/b/c:x": art})).resolve("a/b/c:x")


async def test_wandb_download_that_does_not_match_its_manifest_leaves_nothing(
    api: FakeApi, tmp_path: Path
) -> None:
    source = WandbSource(policy=UrlPolicy(), api=api)
    resolved = await source.resolve("acme/edge/mnist:download")
    art = api.artifacts["acme/edge/mnist:v3"]
    art.on_disk["model.onnx"] = MODEL[:-1] + b"?"
    with pytest.raises(ChecksumMismatch):
        await source.download(resolved, tmp_path / "dl" / "v3")
    art.on_disk = {**art.files, "extra.py": b"import os"}
    with pytest.raises(DataError, match="does not match its manifest"):
        await source.download(resolved, tmp_path / "dl" / "v3")
    art.on_disk = dict(art.files)
    art.digest = "digest-4"  # the version changed under us
    with pytest.raises(ChecksumMismatch, match="changed"):
        await source.download(resolved, tmp_path / "dl" / "v3")
    assert leftovers(tmp_path / "dl") == []


async def test_wandb_errors_and_caps(api: FakeApi) -> None:
    with pytest.raises(RemoteError, match="cannot resolve"):
        await WandbSource(policy=UrlPolicy(), api=api).resolve("acme/edge/mnist:nope")
    with pytest.raises(ProtocolError):
        await WandbSource(policy=UrlPolicy(), api=api).resolve("https://evil.example/x")
    with pytest.raises(FrameTooLarge):
        await WandbSource(policy=UrlPolicy(), api=api, max_bytes=10).resolve(
            "acme/edge/mnist:download"
        )


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
async def test_wandb_missing_gives_an_install_hint() -> None:
    with pytest.raises(DependencyMissing, match=r"pip install 'edgewire\[wandb\]'"):
        await WandbSource(policy=UrlPolicy()).resolve("acme/edge/mnist:download")


async def test_https_is_pinned_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    import httpx

    seen: list[httpx.Request] = []

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'{"version": "v1", "files": []}'

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=Body())

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    policy = UrlPolicy(hosts=frozenset({"store.example"}))
    fetcher = GuardedFetcher(policy, resolver=resolver, transport=httpx.MockTransport(answer))
    resolved = await HttpSource(fetcher).resolve("https://store.example/m.json")
    assert resolved.digest == sha(b'{"version": "v1", "files": []}')  # no digest: the manifest's
    [request] = seen
    assert str(request.url) == "https://93.184.216.34/m.json"
    assert request.headers["host"] == "store.example"
    assert request.extensions["sni_hostname"] == "store.example"


async def test_a_server_that_stalls_runs_into_the_total_timeout(server: Server) -> None:
    server.routes["/slow.json"] = Route(body=b'{"version": "v1", "files": []}', stall_s=1.0)
    fetcher = GuardedFetcher(LOOPBACK, total_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(PeerTimeout, match="took too long"):
        await HttpSource(fetcher).resolve(server.url("/slow.json"))
    assert time.monotonic() - started < 0.9
