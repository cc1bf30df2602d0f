"""Which events run which action: typed rules and a pure :func:`match`.

A rule names one artifact collection (``entity/project/collection``), whether it holds
models or data, and the words that trigger it: aliases (``download``), tags or event
types (``LINK_ARTIFACT``). A model collection is fetched, verified and deployed; a data
collection is fetched and trained on, and the new model deployed only if it is no
worse on the held-out split. The action names the artifact by alias, not by the
version the payload claims: the job resolves it at the source before acting.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edgewire.automation.events import AllowList, ArtifactEvent
from edgewire.errors import ConfigError, NotAllowed

#: The alias the seed acted on.
DEFAULT_TRIGGER = "download"


class CollectionKind(enum.StrEnum):
    MODEL = "model"
    DATA = "data"


class ActionKind(enum.StrEnum):
    DEPLOY = "deploy"
    RETRAIN_THEN_DEPLOY = "retrain_then_deploy"


_ACTION_FOR = {
    CollectionKind.MODEL: ActionKind.DEPLOY,
    CollectionKind.DATA: ActionKind.RETRAIN_THEN_DEPLOY,
}


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One collection and what to do when one of ``on`` happens to it.

    ``model`` is the served model the action deploys into. ``hooks`` limits the rule to
    deliveries of those named hooks (empty: any hook, and the poller).
    """

    entity: str
    project: str
    collection: str
    kind: CollectionKind
    model: str
    on: frozenset[str] = frozenset({DEFAULT_TRIGGER})
    hooks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.on:
            raise ConfigError(f"rule for {self.artifact_path!r} has nothing to trigger on")
        if not self.model:
            raise ConfigError(f"rule for {self.artifact_path!r} names no model to deploy into")

    @property
    def artifact_path(self) -> str:
        return f"{self.entity}/{self.project}/{self.collection}"

    @property
    def action(self) -> ActionKind:
        return _ACTION_FOR[self.kind]

    def poll_refs(self) -> list[str]:
        """The ``entity/project/collection:alias`` refs a poller resolves for this rule: each
        trigger that can be an alias (event types, in capitals, cannot)."""
        return [f"{self.artifact_path}:{word}" for word in sorted(self.on) if not word.isupper()]


@dataclass(frozen=True, kw_only=True)
class Rules:
    """The rules of an agent and the allow-list every event must pass first."""

    rules: tuple[Rule, ...] = ()
    allow: AllowList = field(default_factory=AllowList)

    def __post_init__(self) -> None:
        seen: set[tuple[str, str, str]] = set()
        for rule in self.rules:
            try:
                self.allow.check(
                    entity=rule.entity, project=rule.project, collection=rule.collection
                )
            except NotAllowed as exc:
                raise ConfigError(f"rule for {rule.artifact_path!r}: {exc}") from None
            for word in rule.on:
                for hook in rule.hooks or {""}:
                    key = (rule.artifact_path, word, hook)
                    if key in seen:
                        raise ConfigError(
                            f"two rules for {rule.artifact_path!r} trigger on {word!r}"
                        )
                    seen.add(key)


@dataclass(frozen=True, kw_only=True)
class Action:
    """What a matched event asks for; :meth:`payload` is the job's JSON."""

    kind: ActionKind
    rule: Rule
    #: The artifact to resolve at the source, ``entity/project/collection:alias``.
    ref: str
    #: The trigger that matched (an alias, tag or event type).
    trigger: str

    def job_key(self, version_id: str) -> str:
        """The idempotency key of acting on ``version_id``: the same version of the same
        collection is acted on once, however many deliveries or polls report it."""
        return job_key(self.kind, self.rule.artifact_path, version_id)

    def payload(self) -> dict[str, Any]:
        return {
            "action": str(self.kind),
            "ref": self.ref,
            "trigger": self.trigger,
            "collection": self.rule.artifact_path,
            "collection_kind": str(self.rule.kind),
            "model": self.rule.model,
        }


def job_key(kind: ActionKind | str, artifact_path: str, version_id: str) -> str:
    """:meth:`Action.job_key`, from a job's payload (``action``, ``collection``)."""
    return f"{ActionKind(kind)}:{artifact_path}@{version_id}"


def match(event: ArtifactEvent, rules: Rules, *, hook: str | None = None) -> Action | None:
    """The action of the first rule ``event`` triggers, or None.

    ``hook`` is the name of the hook the event came through (None: the poller). Rules are
    tried in order; within a rule the alias wins over the tag, the event type and the
    version string's ref, so that the ref to resolve is the alias that was just set.
    """
    for rule in rules.rules:
        if rule.artifact_path != event.artifact_path:
            continue
        if rule.hooks and hook not in rule.hooks:
            continue
        trigger = _first_hit(rule.on, (event.alias, event.tag, event.event_type, event.version_ref))
        if trigger is None:
            continue
        # An alias names one version at the source; a tag or an event type does not, so the
        # version string's ref (or the latest version) is what to resolve then.
        if trigger in (event.alias, event.version_ref):
            ref_name = trigger
        else:
            ref_name = event.version_ref or "latest"
        return Action(
            kind=rule.action, rule=rule, ref=f"{rule.artifact_path}:{ref_name}", trigger=trigger
        )
    return None


def _first_hit(on: frozenset[str], words: Iterable[str | None]) -> str | None:
    for word in words:
        if word and word in on:
            return word
    return None
