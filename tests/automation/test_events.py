"""Webhook payloads as typed events: the three shapes, strictness, allow-lists, URLs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgewire.automation.events import AllowList, ArtifactEvent, parse_event
from edgewire.automation.urls import UrlPolicy
from edgewire.errors import FrameTooLarge, NotAllowed, ProtocolError

ALLOW = AllowList(
    entities=frozenset({"acme"}),
    projects=frozenset({"edge"}),
    collections=frozenset({"mnist-model", "mnist-data"}),
    urls=UrlPolicy(hosts=frozenset({"wandb.ai"})),
)

WANDB = {
    "event_type": "ADD_ARTIFACT_ALIAS",
    "event_author": "alice",
    "alias": "download",
    "artifact_collection_name": "mnist-model",
    "artifact_version": "wandb-artifact://_id/QXJ0aWZhY3Q6MTIzNDU2Nzg=",
    "artifact_version_string": "acme/edge/mnist-model:v3",
    "project_name": "edge",
    "entity_name": "acme",
    "artifact_metadata": {"accuracy": 0.98, "note": "good", "final": True},
}


def parse(doc: Any, allow: AllowList = ALLOW, **kwargs: Any) -> ArtifactEvent:
    return parse_event(json.dumps(doc).encode(), allow=allow, **kwargs)


def test_wandb_template_with_every_variable() -> None:
    event = parse(WANDB)
    assert event == ArtifactEvent(
        event_type="ADD_ARTIFACT_ALIAS",
        entity="acme",
        project="edge",
        collection="mnist-model",
        alias="download",
        version_ref="v3",
        version_id="wandb-artifact://_id/QXJ0aWZhY3Q6MTIzNDU2Nzg=",
        author="alice",
        metadata={"accuracy": 0.98, "note": "good", "final": True},
    )
    assert event.artifact_path == "acme/edge/mnist-model"
    assert event.triggers == {"ADD_ARTIFACT_ALIAS", "download", "v3"}


def test_the_seed_shape_client_payload() -> None:
    doc = {"event_type": "wandb-alias", "client_payload": {
        "artifact_collection_name": "mnist-data", "artifact_version_string": "acme/edge/mnist-data:download"}}  # fmt: skip
    event = parse(doc)
    assert (event.entity, event.project, event.collection) == ("acme", "edge", "mnist-data")
    assert (event.version_ref, event.event_type, event.alias) == ("download", "wandb-alias", None)
    assert event.triggers == {"download", "wandb-alias"}


def test_github_dispatch_and_standard_webhooks_shapes() -> None:
    inner = {"artifact_version_string": "acme/edge/mnist-data:download"}
    gh = parse({"event_type": "retrain", "client_payload": inner})
    assert (gh.event_type, gh.version_ref) == ("retrain", "download")
    sw = parse({"type": "LINK_ARTIFACT", "timestamp": "2026-12-07T10:00:00Z", "data": inner})
    assert (sw.event_type, sw.collection) == ("LINK_ARTIFACT", "mnist-data")
    flat = parse(
        {
            "entity_name": "acme",
            "project_name": "edge",
            "artifact_collection_name": "mnist-data",
            "tag": "prod",
        }
    )
    assert (flat.tag, flat.version_ref, flat.triggers) == ("prod", None, frozenset({"prod"}))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({**WANDB, "extra": 1}, r"unknown fields \['extra'\]"),
        ({"client_payload": {}, "other": 1}, r"unknown fields \['other'\]"),
        ({"client_payload": []}, "must be an object"),
        ({"data": {"artifact_version_string": "acme/edge/mnist-data:x", "x": 1}, "type": "T"}, r"unknown fields \['x'\]"),
        ({"alias": "download"}, "does not name the artifact's entity, project, collection"),
        ({"artifact_version_string": "acme/edge:v1"}, "not entity/project/collection:alias"),
        ({"artifact_version_string": "acme/edge/mnist-model"}, "not entity/project/collection:alias"),
        ({"artifact_version_string": "acme/edge/../x:v1"}, "not entity/project/collection:alias"),
        ({**WANDB, "entity_name": "other"}, "names entity 'other' and 'acme'"),
        ({**WANDB, "alias": 3}, "'alias' must be a string"),
        ({**WANDB, "alias": "has space"}, "'alias' is not a valid name"),
        ({**WANDB, "alias": "x" * 600}, "too long"),
        ({**WANDB, "event_author": "a\nb"}, "not printable"),
        ({**WANDB, "artifact_version": "v3"}, "not wandb-artifact://_id/"),
        ({**WANDB, "artifact_metadata": [1]}, "must be an object"),
        ({**WANDB, "artifact_metadata": {"k": {"nested": 1}}}, "must be a string, number or bool"),
        ({**WANDB, "artifact_metadata": {"bad key": 1}}, "key 'bad key' is not a valid name"),
        ({**WANDB, "event_type": "ADD ALIAS"}, "'event_type' is not a valid name"),
    ],
)  # fmt: skip
def test_malformed_payloads_are_one_line_protocol_errors(doc: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse(doc)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "raw", [b"", b"{", b"\xff\xfe{}", b'{"a": NaN}', b"[" * 100_000 + b"]" * 100_000]
)
def test_invalid_json_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_event(raw, allow=ALLOW, max_bytes=1 << 20)


def test_payload_over_the_cap_is_too_large() -> None:
    raw = json.dumps(WANDB).encode()
    with pytest.raises(FrameTooLarge):
        parse_event(raw, allow=ALLOW, max_bytes=len(raw) - 1)
    assert parse_event(raw, allow=ALLOW, max_bytes=len(raw))


@pytest.mark.parametrize(
    ("changed", "what"),
    [
        ({"entity_name": "evil", "artifact_version_string": "evil/edge/mnist-model:v3"}, "entity 'evil'"),
        ({"project_name": "p2", "artifact_version_string": "acme/p2/mnist-model:v3"}, "project 'p2'"),
        ({"artifact_collection_name": "other", "artifact_version_string": "acme/edge/other:v3"}, "collection 'other'"),
    ],
)  # fmt: skip
def test_unknown_entity_project_or_collection_is_not_allowed(
    changed: dict[str, str], what: str
) -> None:
    with pytest.raises(NotAllowed, match=what):
        parse({**WANDB, **changed})


@pytest.mark.parametrize(
    "changed",
    [
        {"alias": "https://evil.example/x"},
        {"artifact_collection_name": "file:///etc/passwd"},
        {"artifact_version_string": "http://evil.example/a/b/c:v1"},
        {"artifact_version": "https://evil.example/model.onnx"},
        {"event_author": "http://169.254.169.254/latest/meta-data"},
        {"event_author": "file:///etc/shadow"},
        {"artifact_metadata": {"weights": "https://evil.example/w.bin"}},
        {"artifact_metadata": {"weights": "//evil.example/w.bin"}},
        {"artifact_metadata": {"weights": "s3://bucket/key"}},
    ],
    ids=lambda c: next(iter(c.values())) if isinstance(c, dict) else str(c),
)
def test_urls_in_payload_fields_are_refused(changed: dict[str, Any]) -> None:
    with pytest.raises(NotAllowed):
        parse({**WANDB, **changed})


def test_allow_listed_urls_in_free_text_fields_pass(tmp_path: Path) -> None:
    allow = AllowList(
        entities=ALLOW.entities, projects=ALLOW.projects, collections=ALLOW.collections,
        urls=UrlPolicy(hosts=frozenset({"wandb.ai"}), file_roots=(tmp_path,)),
    )  # fmt: skip
    event = parse({**WANDB, "event_author": "https://wandb.ai/alice",
                   "artifact_metadata": {"src": f"file://{tmp_path}/x"}}, allow)  # fmt: skip
    assert event.author == "https://wandb.ai/alice"
    with pytest.raises(NotAllowed):  # a name field never takes a URL, listed or not
        parse({**WANDB, "alias": "https://wandb.ai/x"}, allow)
    with pytest.raises(NotAllowed):
        parse({**WANDB, "event_author": "http://wandb.ai/alice"}, allow)  # http not allowed
    with pytest.raises(NotAllowed):
        parse({**WANDB, "artifact_metadata": {"src": f"file://{tmp_path}/../x"}}, allow)


def test_an_empty_allow_list_allows_nothing() -> None:
    with pytest.raises(NotAllowed):
        parse(WANDB, AllowList())


def test_template_variables_left_empty_count_as_absent() -> None:
    event = parse({**WANDB, "tag": "", "event_author": "", "artifact_version": ""})
    assert (event.tag, event.author, event.version_id, event.alias) == (
        None,
        None,
        None,
        "download",
    )
