"""A webhook body as a typed, allow-listed :class:`ArtifactEvent`.

The body is JSON a user writes as a W&B template (SPEC, seed 004), in one of three
shapes, each with the W&B variable names as keys::

    {"event_type": "ADD_ARTIFACT_ALIAS", "entity_name": "e", "project_name": "p",
     "artifact_collection_name": "mnist", "alias": "download", ...}
    {"event_type": "...", "client_payload": {...the keys above...}}   # the seed, GitHub dispatch
    {"type": "...", "timestamp": "...", "data": {...the keys above...}} # Standard Webhooks

Parsing is strict: an unknown key, a value of the wrong type, a name with characters
W&B does not allow in one, or a URL in a field (but an allow-listed one) is refused with
one line saying which. The entity, project and collection must be on the allow-list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgewire.automation.urls import UrlPolicy, looks_like_url
from edgewire.errors import FrameTooLarge, NotAllowed, ProtocolError
from edgewire.jsonsafe import loads_strict

#: A webhook payload larger than this is refused before it is parsed.
DEFAULT_MAX_EVENT_BYTES = 64 * 1024

# W&B entity, project, artifact and alias names: letters, digits, '-', '_', '.'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")
# ${artifact_version} renders as wandb-artifact://_id/<base64 id>.
_VERSION_ID = re.compile(r"wandb-artifact://_id/[A-Za-z0-9+/=_-]{1,200}")
_MAX_TEXT = 512
_MAX_METADATA_KEYS = 64

_FIELDS = frozenset(
    {
        "event_type", "event_author", "alias", "tag", "artifact_collection_name",
        "artifact_version", "artifact_version_string", "artifact_metadata",
        "project_name", "entity_name",
    }
)  # fmt: skip

Scalar = str | int | float | bool | None


@dataclass(frozen=True, kw_only=True)
class AllowList:
    """Entities, projects and collections an event may name. Empty allows nothing."""

    entities: frozenset[str] = frozenset()
    projects: frozenset[str] = frozenset()
    collections: frozenset[str] = frozenset()
    #: URLs a payload field may carry (``event_author`` or a metadata value).
    urls: UrlPolicy = field(default_factory=UrlPolicy)

    def check(self, *, entity: str, project: str, collection: str) -> None:
        for what, value, allowed in (
            ("entity", entity, self.entities),
            ("project", project, self.projects),
            ("collection", collection, self.collections),
        ):
            if value not in allowed:
                raise NotAllowed(f"{what} {value!r} is not on the hook's allow-list")


@dataclass(frozen=True, kw_only=True)
class ArtifactEvent:
    """An artifact event, its names checked; ``version_ref`` is what follows ``:`` in
    ``artifact_version_string`` (an alias or ``v3``)."""

    event_type: str | None = None
    entity: str
    project: str
    collection: str
    alias: str | None = None
    tag: str | None = None
    version_ref: str | None = None
    version_id: str | None = None
    author: str | None = None
    metadata: Mapping[str, Scalar] = field(default_factory=dict)

    @property
    def artifact_path(self) -> str:
        return f"{self.entity}/{self.project}/{self.collection}"

    @property
    def triggers(self) -> frozenset[str]:
        """The words a rule may match: the alias, the tag, the event type, the version ref."""
        words = (self.alias, self.tag, self.event_type, self.version_ref)
        return frozenset(w for w in words if w)


def parse_event(
    body: bytes, *, allow: AllowList, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> ArtifactEvent:
    """The event ``body`` describes; ProtocolError when malformed, NotAllowed when off-list."""
    if len(body) > max_bytes:
        raise FrameTooLarge(f"webhook payload is {len(body)} bytes; the limit is {max_bytes}")
    doc = loads_strict(body, what="webhook payload")
    if not isinstance(doc, dict):
        raise ProtocolError("webhook payload must be a JSON object")
    fields = _flatten(doc)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ProtocolError(f"webhook payload has unknown fields {unknown!r}")
    event = _event(fields, allow.urls)
    allow.check(entity=event.entity, project=event.project, collection=event.collection)
    return event


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    """The variables of any of the three shapes, as one flat mapping."""
    for wrapper, kind_key, extra in (("client_payload", "event_type", set()),
                                     ("data", "type", {"timestamp"})):  # fmt: skip
        if wrapper in doc:
            outer = set(doc) - {wrapper, kind_key, *extra}
            if outer:
                raise ProtocolError(f"webhook payload has unknown fields {sorted(outer)!r}")
            inner = doc[wrapper]
            if not isinstance(inner, dict):
                raise ProtocolError(f"webhook payload field {wrapper!r} must be an object")
            if kind_key in doc:
                if "event_type" in inner and inner["event_type"] != doc[kind_key]:
                    raise ProtocolError("webhook payload gives two event types")
                inner = {**inner, "event_type": doc[kind_key]}
            if "timestamp" in doc and not isinstance(doc["timestamp"], str):
                raise ProtocolError("webhook payload field 'timestamp' must be a string")
            return inner
    return doc


def _text(fields: Mapping[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or value == "":  # a template variable W&B left empty for this event
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"webhook payload field {key!r} must be a string")
    if len(value) > _MAX_TEXT or not value.isprintable():
        raise ProtocolError(f"webhook payload field {key!r} is too long or not printable")
    return value


def _name(fields: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] = _NAME) -> str | None:
    value = _text(fields, key)
    if value is None:
        return None
    if looks_like_url(value):
        raise NotAllowed(f"webhook payload field {key!r} holds a URL where a name belongs")
    if not pattern.fullmatch(value):
        raise ProtocolError(f"webhook payload field {key!r} is not a valid name: {value[:80]!r}")
    return value


def _free_text(fields: Mapping[str, Any], key: str, urls: UrlPolicy) -> str | None:
    value = _text(fields, key)
    if value is not None and looks_like_url(value):
        urls.check_reference(value)
    return value


def _split_version_string(value: str) -> tuple[str, str, str, str]:
    """``entity/project/collection:ref`` into its four names."""
    path, sep, ref = value.rpartition(":")
    parts = path.split("/")
    if not sep or len(parts) != 3 or not all(_NAME.fullmatch(p) for p in (*parts, ref)):
        raise ProtocolError(
            "webhook payload field 'artifact_version_string' is not entity/project/collection:alias"
        )
    return parts[0], parts[1], parts[2], ref


def _metadata(fields: Mapping[str, Any], urls: UrlPolicy) -> dict[str, Scalar]:
    raw = fields.get("artifact_metadata")
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > _MAX_METADATA_KEYS:
        raise ProtocolError(
            f"webhook payload field 'artifact_metadata' must be an object of at most "
            f"{_MAX_METADATA_KEYS} values"
        )
    out: dict[str, Scalar] = {}
    for key, value in raw.items():
        if not _NAME.fullmatch(key):
            raise ProtocolError(f"artifact_metadata key {key[:80]!r} is not a valid name")
        if isinstance(value, str):
            out[key] = _free_text(raw, key, urls)
        elif value is None or isinstance(value, bool | int | float):
            out[key] = value
        else:
            raise ProtocolError(f"artifact_metadata value {key!r} must be a string, number or bool")
    return out


def _event(fields: Mapping[str, Any], urls: UrlPolicy) -> ArtifactEvent:
    names = {
        "entity": _name(fields, "entity_name"),
        "project": _name(fields, "project_name"),
        "collection": _name(fields, "artifact_collection_name"),
    }
    version_ref = None
    version_string = _text(fields, "artifact_version_string")
    if version_string is not None:
        if looks_like_url(version_string):
            raise NotAllowed("webhook payload field 'artifact_version_string' holds a URL")
        entity, project, collection, version_ref = _split_version_string(version_string)
        for key, value in (("entity", entity), ("project", project), ("collection", collection)):
            if names[key] is not None and names[key] != value:
                raise ProtocolError(
                    f"webhook payload names {key} {names[key]!r} and {value!r} in "
                    "artifact_version_string"
                )
            names[key] = value
    missing = [key for key, value in names.items() if value is None]
    if missing:
        raise ProtocolError(
            f"webhook payload does not name the artifact's {', '.join(missing)} "
            "(give artifact_version_string or entity_name, project_name, artifact_collection_name)"
        )
    version_id = _text(fields, "artifact_version")
    if version_id is not None and not _VERSION_ID.fullmatch(version_id):
        if looks_like_url(version_id):
            raise NotAllowed(
                "webhook payload field 'artifact_version' is a URL, not an artifact id"
            )
        raise ProtocolError(
            "webhook payload field 'artifact_version' is not wandb-artifact://_id/..."
        )
    event_type = _name(fields, "event_type", pattern=_EVENT_TYPE)
    return ArtifactEvent(
        event_type=event_type,
        entity=str(names["entity"]),
        project=str(names["project"]),
        collection=str(names["collection"]),
        alias=_name(fields, "alias"),
        tag=_name(fields, "tag"),
        version_ref=version_ref,
        version_id=version_id,
        author=_free_text(fields, "event_author", urls),
        metadata=_metadata(fields, urls),
    )
