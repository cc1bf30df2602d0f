"""The actions file: defaults, the default pins, refusals (one line naming the bad value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgewire.actions.config import ActionsConfig, ClassAction, load_actions, parse_actions
from edgewire.errors import ConfigError, NotAllowed

EXAMPLE = """
[run]
threshold = 0.7
debounce = 2
hold_s = 0.5
pins = "sim"

[classes.cat]
pin = 16
command = ["/bin/echo", "cat"]
timeout_s = 2.0

[classes.dog]
post = "http://127.0.0.1:9/seen"
"""


def test_a_file_is_read_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(EXAMPLE)
    actions = load_actions(path)
    assert (actions.threshold, actions.debounce, actions.hold_s, actions.pins) == (
        0.7,
        2,
        0.5,
        "sim",
    )
    assert actions.classes["cat"] == ClassAction(
        pin=16, command=("/bin/echo", "cat"), timeout_s=2.0
    )
    assert actions.classes["dog"].post == "http://127.0.0.1:9/seen"
    assert actions.has_commands and actions.post_urls == ["http://127.0.0.1:9/seen"]


def test_no_pins_given_means_the_seed_pins_in_label_order() -> None:
    actions = ActionsConfig().for_labels(["a", "b", "c", "d"])
    assert {k: v.pin for k, v in actions.classes.items()} == {"a": 12, "b": 16, "c": 18}
    # An index names a label; given pins replace the defaults altogether.
    given = parse_actions({"classes": {"1": {"pin": 22}}}, source="t", allow_commands=False)
    assert {k: v.pin for k, v in given.for_labels(["a", "b"]).classes.items()} == {"b": 22}


def test_a_class_the_model_lacks_is_named_with_the_model_classes() -> None:
    actions = parse_actions({"classes": {"cow": {"pin": 12}}}, source="t", allow_commands=False)
    with pytest.raises(ConfigError, match=r"'cow'.*its classes: a, b"):
        actions.for_labels(["a", "b"])


def test_a_command_from_the_network_is_refused() -> None:
    request = {"classes": {"a": {"command": ["/bin/true"]}}}
    with pytest.raises(NotAllowed, match="agent's own actions file"):
        parse_actions(request, source="request", allow_commands=False)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"run": {"threshold": 1.5}}, "threshold must be a number from 0 to 1, got 1.5"),
        ({"run": {"debounce": 0}}, "debounce must be a whole number from 1"),
        ({"run": {"hold_s": float("nan")}}, "hold_s must be a number"),
        ({"run": {"pins": "wiringpi"}}, "pins must be one of auto, sim, gpiod, jetson"),
        ({"run": {"treshold": 0.5}}, "unknown key 'treshold'"),
        ({"classes": {"a": {"pin": -1}}}, "pin must be a whole number from 0"),
        ({"classes": {"a": {"pin": True}}}, "pin must be a whole number"),
        ({"classes": {"a": {"pin": 12}, "b": {"pin": 12}}}, "pin 12 is class 'a'"),
        ({"classes": {"a": {"command": "rm -rf /"}}}, "command is a list of 1 to 64"),
        ({"classes": {"a": {"command": []}}}, "command is a list"),
        ({"classes": {"a": {"post": "ftp://x/y"}}}, "post is an http(s):// URL"),
        ({"classes": {"a": {"timeout_s": 0}}}, "timeout_s must be a number from 0.001"),
        ({"classes": {"a": 12}}, "must be a table"),
        ([1, 2], "actions are a table"),
    ],
)
def test_bad_values_are_one_clear_line(data: object, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_actions(data, source="file 'a.toml'", allow_commands=True)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_toml_or_missing_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nthreshold=")
    with pytest.raises(ConfigError, match="is not TOML"):
        load_actions(bad)
    with pytest.raises(ConfigError, match="cannot read actions file"):
        load_actions(tmp_path / "missing.toml")


def test_a_request_carries_pins_and_posts_but_no_command(tmp_path: Path) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(EXAMPLE.replace('command = ["/bin/echo", "cat"]\n', ""))
    request = load_actions(path).to_request()
    assert request["classes"]["cat"] == {"pin": 16, "timeout_s": 2.0}
    again = parse_actions(request, source="request", allow_commands=False)
    assert again == load_actions(path)


def test_the_example_of_docs_run_md_is_a_valid_actions_file(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "docs" / "run.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "actions.toml"
    path.write_text(example)
    actions = load_actions(path).for_labels(["0", "1", "2"])
    assert {k: v.pin for k, v in actions.classes.items()} == {"0": 12, "1": 16, "2": 18}
    assert actions.classes["1"].command is not None and actions.classes["2"].post is not None


def test_the_source_allow_list_comes_from_env_or_the_flag(tmp_path: Path) -> None:
    from edgewire.config import AgentConfig, load_config

    env = {"EDGEWIRE_RUN_SOURCE_ALLOW": f"{tmp_path},rtsp://10.0.0.7:554/live"}
    got = load_config(AgentConfig, flags={}, environ=env)
    assert got.run_source_allow == {str(tmp_path), "rtsp://10.0.0.7:554/live"}
    flag = load_config(AgentConfig, flags={"run_source_allow": "/srv/a"}, environ=env)
    assert flag.run_source_allow == {"/srv/a"}
