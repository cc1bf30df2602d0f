"""The URL policy: schemes, hosts, addresses and local paths."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edgewire.automation.urls import UrlPolicy, is_public, looks_like_url
from edgewire.errors import ConfigError, NotAllowed


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("1.1.1.1", True),
        ("127.0.0.1", False), ("127.1.2.3", False), ("10.0.0.1", False), ("172.16.0.1", False),
        ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
        ("0.0.0.0", False), ("255.255.255.255", False), ("224.0.0.1", False), ("240.0.0.1", False),
        ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False),
        ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::7f00:1", False),
    ],
)  # fmt: skip
def test_only_global_unicast_is_public(address: str, public: bool) -> None:
    policy = UrlPolicy()
    assert policy.address_allowed(ipaddress.ip_address(address)) is public
    if public:
        assert is_public(ipaddress.ip_address(address))


def test_allow_listed_networks_admit_private_addresses() -> None:
    policy = UrlPolicy.from_strings(hosts=["store"], networks=["127.0.0.1/32", "10.0.0.0/8"])
    assert str(policy.check_addresses("store", ["127.0.0.1"])) == "127.0.0.1"
    assert str(policy.check_addresses("store", ["10.9.8.7", "8.8.8.8"])) == "10.9.8.7"
    assert policy.address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    with pytest.raises(NotAllowed, match=r"127.0.0.2"):
        policy.check_addresses("store", ["127.0.0.2"])
    with pytest.raises(NotAllowed, match=r"192.168.0.1"):  # one bad address spoils the name
        policy.check_addresses("store", ["8.8.8.8", "192.168.0.1"])
    with pytest.raises(NotAllowed, match="no address"):
        policy.check_addresses("store", [])
    with pytest.raises(NotAllowed, match="not an address"):
        policy.check_addresses("store", ["store.example"])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://store.example/x", "scheme 'ftp'"),
        ("http://store.example/x", "scheme 'http'"),
        ("https://other.example/x", "host 'other.example'"),
        ("https://user:pw@store.example/x", "credentials"),
        ("https:///x", "no host"),
        ("https://store.example:99999/x", "malformed"),
        ("https://store.example/ x", "printable ASCII"),
        ("https://störe.example/", "printable ASCII"),
        ("https://store.example/" + "a" * 3000, "too long"),
    ],
)
def test_urls_outside_the_policy_are_refused(url: str, message: str) -> None:
    policy = UrlPolicy(hosts=frozenset({"store.example"}))
    with pytest.raises(NotAllowed, match=message):
        policy.check_url(url)


def test_a_listed_url_is_split_for_the_request() -> None:
    policy = UrlPolicy(hosts=frozenset({"store.example"}))
    parsed = policy.check_url("HTTPS://Store.Example/a/b.json?x=1")
    assert (parsed.scheme, parsed.host, parsed.port, parsed.path) == (
        "https",
        "store.example",
        443,
        "/a/b.json?x=1",
    )


def test_file_references_only_under_allowed_roots(tmp_path: Path) -> None:
    inside = tmp_path / "store"
    inside.mkdir()
    (tmp_path / "escape").symlink_to("/etc")
    policy = UrlPolicy(file_roots=(inside,))
    policy.check_reference(f"file://{inside}/model.onnx")
    for bad in (f"file://{tmp_path}/other", f"file://{inside}/../x", "file:///etc/passwd",
                f"file://{tmp_path}/escape/passwd", "file://remote-host/share/x"):  # fmt: skip
        with pytest.raises(NotAllowed):
            policy.check_reference(bad)
    with pytest.raises(NotAllowed):
        policy.check_reference("s3://bucket/key")


@pytest.mark.parametrize(
    ("text", "url"),
    [("https://x", True), ("file:/etc", True), ("//host/x", True), ("s3://b/k", True),
     ("alice", False), ("v3", False), ("a:b", False)],
)  # fmt: skip
def test_looks_like_url(text: str, url: bool) -> None:
    assert looks_like_url(text) is url


def test_bad_policies_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        UrlPolicy(schemes=frozenset({"ftp"}))
    with pytest.raises(ConfigError):
        UrlPolicy.from_strings(networks=["10.0.0.1/8"])
    with pytest.raises(ConfigError):
        UrlPolicy(hosts=frozenset({"Upper.Example"}))
