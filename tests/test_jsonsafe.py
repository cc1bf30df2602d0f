"""loads_strict: the one parser of peer JSON, and every protection it keeps."""

from __future__ import annotations

import json

import pytest

from edgewire.errors import ProtocolError
from edgewire.jsonsafe import loads_strict


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body is not valid JSON: Expecting value"),
        (b'{"a": 1} []', "body is not valid JSON: Extra data"),
        (b'{"a": "\xff"}', r"body is not valid UTF-8 \(bad byte at 7\)"),
        # json.loads(bytes) would skip a BOM and read UTF-16; a peer's JSON is UTF-8.
        (b"\xef\xbb\xbf{}", "body is not valid JSON"),
        ('{"a": 1}'.encode("utf-16"), "body is not valid UTF-8"),
        (b"[" * 100_000, "body JSON is nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "body JSON holds an integer with too many digits"),
        (b'{"a": NaN}', "NaN is not a JSON number; body values must be finite"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
    ],
)
def test_what_a_peer_gets_wrong_is_one_protocol_error(raw: bytes | str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        loads_strict(raw, what="body")
    assert "\n" not in info.value.message


def test_what_is_accepted_can_be_encoded_again() -> None:
    doc = {"a": [1, 2.5, -3e-7, True, None, "é"], "b": {"c": 10**4000}}
    raw = json.dumps(doc).encode()
    assert loads_strict(raw, what="body") == doc
    assert loads_strict(raw.decode(), what="body") == doc
    json.dumps(loads_strict(raw, what="body"), allow_nan=False)


def test_it_is_a_leaf_the_codecs_and_the_api_can_share() -> None:
    from tests.arch.test_imports import import_graph

    assert import_graph()["edgewire.jsonsafe"] <= {"edgewire.errors"}
