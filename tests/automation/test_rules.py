"""Rules: which event runs which action, matched by a pure function."""

from __future__ import annotations

import pytest

from edgewire.automation.events import AllowList, ArtifactEvent
from edgewire.automation.rules import (
    Action,
    ActionKind,
    CollectionKind,
    Rule,
    Rules,
    match,
)
from edgewire.errors import ConfigError

ALLOW = AllowList(
    entities=frozenset({"acme"}),
    projects=frozenset({"edge"}),
    collections=frozenset({"mnist-model", "mnist-data", "other"}),
)
MODEL = Rule(
    entity="acme",
    project="edge",
    collection="mnist-model",
    kind=CollectionKind.MODEL,
    model="mnist",
)
DATA = Rule(entity="acme", project="edge", collection="mnist-data", kind=CollectionKind.DATA,
            model="mnist", on=frozenset({"download", "LINK_ARTIFACT", "retrain"}))  # fmt: skip
RULES = Rules(rules=(MODEL, DATA), allow=ALLOW)


def event(collection: str = "mnist-model", **kwargs: object) -> ArtifactEvent:
    return ArtifactEvent(entity="acme", project="edge", collection=collection, **kwargs)  # type: ignore[arg-type]


def test_alias_download_on_a_model_collection_deploys_that_alias() -> None:
    action = match(
        event(alias="download", event_type="ADD_ARTIFACT_ALIAS", version_ref="v3"), RULES
    )
    assert action == Action(kind=ActionKind.DEPLOY, rule=MODEL, ref="acme/edge/mnist-model:download",
                            trigger="download")  # fmt: skip
    assert action.payload() == {
        "action": "deploy", "ref": "acme/edge/mnist-model:download", "trigger": "download",
        "collection": "acme/edge/mnist-model", "collection_kind": "model", "model": "mnist",
    }  # fmt: skip


def test_the_seed_shape_matches_by_the_version_strings_alias() -> None:
    action = match(event("mnist-data", version_ref="download"), RULES)
    assert action is not None
    assert (action.kind, action.ref) == (
        ActionKind.RETRAIN_THEN_DEPLOY,
        "acme/edge/mnist-data:download",
    )


def test_an_event_type_or_tag_trigger_resolves_the_version_string_or_latest() -> None:
    linked = match(event("mnist-data", event_type="LINK_ARTIFACT", version_ref="v7"), RULES)
    assert linked is not None and linked.ref == "acme/edge/mnist-data:v7"
    tagged = match(event("mnist-data", tag="retrain"), RULES)
    assert tagged is not None and (tagged.ref, tagged.trigger) == (
        "acme/edge/mnist-data:latest",
        "retrain",
    )


@pytest.mark.parametrize(
    "ev",
    [
        event(alias="staging"),
        event("other", alias="download"),
        event(event_type="ADD_ARTIFACT_ALIAS"),
        ArtifactEvent(entity="acme", project="p2", collection="mnist-model", alias="download"),
    ],
)
def test_no_rule_no_action(ev: ArtifactEvent) -> None:
    assert match(ev, RULES) is None


def test_a_rule_limited_to_hooks() -> None:
    only_gh = Rule(entity="acme", project="edge", collection="mnist-model",
                   kind=CollectionKind.MODEL, model="m", hooks=frozenset({"gh"}))  # fmt: skip
    rules = Rules(rules=(only_gh,), allow=ALLOW)
    assert match(event(alias="download"), rules, hook="gh") is not None
    assert match(event(alias="download"), rules, hook="wandb") is None
    assert match(event(alias="download"), rules) is None


def test_poll_refs_are_the_alias_triggers() -> None:
    assert DATA.poll_refs() == ["acme/edge/mnist-data:download", "acme/edge/mnist-data:retrain"]


def test_rules_outside_the_allow_list_or_twice_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="collection 'mnist-model' is not on"):
        Rules(rules=(MODEL,), allow=AllowList(entities=ALLOW.entities, projects=ALLOW.projects))
    with pytest.raises(ConfigError, match="trigger on 'download'"):
        Rules(rules=(MODEL, MODEL), allow=ALLOW)
    with pytest.raises(ConfigError):
        Rule(
            entity="acme",
            project="edge",
            collection="c",
            kind=CollectionKind.DATA,
            model="m",
            on=frozenset(),
        )
    with pytest.raises(ConfigError):
        Rule(entity="acme", project="edge", collection="c", kind=CollectionKind.DATA, model="")
