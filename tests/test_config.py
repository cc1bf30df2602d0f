"""Config: defaults < file < env < flags, values coerced by their declared types, one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from edgewire.config import AgentConfig, field_default, load_config
from edgewire.errors import ConfigError
from edgewire.ports import DEFAULT_HTTP_PORT, DEFAULT_NATIVE_PORT, PORTS

TOKEN = "s3cret-token"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toggles:
    """A config with the types AgentConfig does not use (yet)."""

    verbose: bool = False
    strict: bool = True
    limit: int | None = None
    ratio: float = 0.5
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgewire.toml"
    path.write_text(text)
    return path


def load(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    file: Path | None = None,
    cls: type[Any] = AgentConfig,
) -> Any:
    return load_config(cls, flags=flags or {}, config_file=file, environ=env or {})


# --- defaults and precedence ----------------------------------------------------------


def test_defaults_come_from_the_ports_table_and_nothing_is_opened() -> None:
    cfg = load()
    assert (cfg.port, cfg.http_port) == (DEFAULT_NATIVE_PORT, DEFAULT_HTTP_PORT)
    assert cfg.legacy_ports == {}
    assert all(cfg.port_of(spec.name) is None for spec in PORTS)
    assert cfg.max_request_rows == 4096
    assert field_default(AgentConfig, "port") == DEFAULT_NATIVE_PORT


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    file = write_toml(
        tmp_path,
        '[agent]\nport = 1001\nhttp_port = 1002\nidle_timeout = 5\ndata_dir = "/from/file"\n'
        'token = "file-token-123"\nmax_queue_delay_ms = 1.5\n',
    )
    env = {
        "EDGEWIRE_HTTP_PORT": "2002",
        "EDGEWIRE_IDLE_TIMEOUT": "6.5",
        "EDGEWIRE_DATA_DIR": "/env",
    }
    flags = {"idle_timeout": 7.0, "data_dir": Path("/flag"), "port": None}
    cfg = load(flags, env, file)
    assert cfg.port == 1001  # file (the flag is None: not given)
    assert cfg.http_port == 2002  # env over file
    assert cfg.idle_timeout == 7.0  # flag over env over file
    assert cfg.data_dir == Path("/flag")
    assert cfg.token == "file-token-123"
    assert cfg.max_queue_delay_ms == 1.5
    assert cfg.max_batch_size == 32  # default
    assert isinstance(load({}, env, file).idle_timeout, float)
    assert load({}, env, file).data_dir == Path("/env")


def test_values_are_coerced_to_the_declared_type(tmp_path: Path) -> None:
    env = {"EDGEWIRE_PORT": "+7701", "EDGEWIRE_FRAME_TIMEOUT": "1e1", "EDGEWIRE_DATA_DIR": "~/ew"}
    cfg = load(env=env)
    assert cfg.port == 7701 and type(cfg.port) is int
    assert cfg.frame_timeout == 10.0 and type(cfg.frame_timeout) is float
    assert cfg.data_dir == Path("~/ew").expanduser() and "~" not in str(cfg.data_dir)
    cfg = load(file=write_toml(tmp_path, "drain_timeout = 3\n"))  # no [agent]: the whole file
    assert cfg.drain_timeout == 3.0 and type(cfg.drain_timeout) is float


def test_an_empty_env_variable_is_not_given() -> None:
    assert load(env={"EDGEWIRE_PORT": "", "EDGEWIRE_TOKEN": ""}).port == DEFAULT_NATIVE_PORT


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True),
     ("0", False), ("false", False), ("False", False), ("no", False), ("OFF", False)],
)  # fmt: skip
def test_bool_from_env_both_ways(text: str, value: bool) -> None:
    cfg = load(env={"EDGEWIRE_VERBOSE": text, "EDGEWIRE_STRICT": text}, cls=Toggles)
    assert cfg.verbose is value and cfg.strict is value


def test_bool_int_optional_and_mapping_from_toml_and_flags(tmp_path: Path) -> None:
    file = write_toml(
        tmp_path, 'verbose = true\nstrict = false\nlimit = 3\n[tags]\na = "x"\nb = "y"\n'
    )
    cfg = load(file=file, cls=Toggles)
    assert (cfg.verbose, cfg.strict, cfg.limit, cfg.tags) == (True, False, 3, {"a": "x", "b": "y"})
    cfg = load({"verbose": False, "limit": 4}, {"EDGEWIRE_TAGS": "b=z, c=w"}, file, cls=Toggles)
    assert (cfg.verbose, cfg.limit) == (False, 4)
    assert cfg.tags == {"a": "x", "b": "z", "c": "w"}  # a later source adds to a mapping


# --- one line for every bad value --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"EDGEWIRE_PORT": "abc"}, ["port", "env EDGEWIRE_PORT", "'abc'", "integer"]),
        ({"EDGEWIRE_PORT": "7.5"}, ["port", "'7.5'", "integer"]),
        ({"EDGEWIRE_PORT": "1_000"}, ["'1_000'", "integer"]),
        ({"EDGEWIRE_PORT": " 77"}, ["' 77'", "integer"]),
        ({"EDGEWIRE_PORT": "\uff17\uff17"}, ["integer"]),  # fullwidth digits: int() takes them
        ({"EDGEWIRE_PORT": "70000"}, ["port", "'70000'", "TCP port (0-65535)"]),
        ({"EDGEWIRE_IDLE_TIMEOUT": "fast"}, ["idle_timeout", "'fast'", "finite number"]),
        ({"EDGEWIRE_IDLE_TIMEOUT": "nan"}, ["idle_timeout", "'nan'", "finite number"]),
        ({"EDGEWIRE_IDLE_TIMEOUT": "1e999"}, ["idle_timeout", "'1e999'", "finite number"]),
        ({"EDGEWIRE_IDLE_TIMEOUT": "-1"}, ["idle_timeout", "'-1'", "positive"]),
        ({"EDGEWIRE_MAX_REQUEST_ROWS": "0"}, ["max_request_rows", "'0'", "at least 1"]),
        ({"EDGEWIRE_LEGACY_MNISTPROT_PORT": "65536"},
         ["legacy_mnistprot_port", "env EDGEWIRE_LEGACY_MNISTPROT_PORT", "'65536'", "TCP port"]),
        ({"EDGEWIRE_LEGACY_BTS0_PORT": "-1"}, ["legacy_bts0_port", "'-1'", "TCP port"]),
        ({"EDGEWIRE_LEGACY_PORTS": "nope=1"}, ["legacy_ports", "unknown port 'nope'", "bts0"]),
        ({"EDGEWIRE_LEGACY_PORTS": "mnistprot=x"}, ["legacy_ports['mnistprot']", "'x'"]),
        ({"EDGEWIRE_LEGACY_PORTS": "mnistprot"}, ["legacy_ports", "'mnistprot'", "table"]),
    ],
)  # fmt: skip
def test_bad_env_values_are_one_line_naming_setting_source_and_value(
    env: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load(env=env)
    message = info.value.message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("text", "cls", "fragments"),
    [
        ("port = true\n", AgentConfig, ["port", "True", "integer"]),
        ("port = 7700.0\n", AgentConfig, ["port", "7700.0", "integer"]),
        ("idle_timeout = nan\n", AgentConfig, ["idle_timeout", "nan", "finite number"]),
        ("idle_timeout = inf\n", AgentConfig, ["idle_timeout", "inf", "finite number"]),
        ("data_dir = 5\n", AgentConfig, ["data_dir", "5", "path"]),
        ("host = 127\n", AgentConfig, ["host", "127", "string"]),
        ("token = 12345678\n", AgentConfig, ["token", "<hidden>", "string"]),
        ("verbose = 1\n", Toggles, ["verbose", "1", "boolean"]),
        ("verbose = 'maybe'\n", Toggles, ["verbose", "'maybe'", "boolean"]),
        ("http_prot = 1\n", AgentConfig, ["unknown setting 'http_prot'", "did you mean 'http_port'"]),
        ("legacy_nope_port = 1\n", AgentConfig, ["unknown setting 'legacy_nope_port'"]),
        ("[legacy_ports]\nnope = 1\n", AgentConfig, ["legacy_ports", "unknown port 'nope'"]),
        ("[legacy_ports]\nbts0 = 99999\n", AgentConfig, ["legacy_ports['bts0']", "TCP port"]),
        ("legacy_ports = 5\n", AgentConfig, ["legacy_ports", "5", "table"]),
    ],
)  # fmt: skip
def test_bad_file_values_name_the_file(
    tmp_path: Path, text: str, cls: type[Any], fragments: list[str]
) -> None:
    file = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(file=file, cls=cls)
    message = info.value.message
    assert "\n" not in message
    assert f"file {str(file)!r}" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_flags_and_env_bools_name_their_source() -> None:
    with pytest.raises(ConfigError, match=r"bad port from flag --port: 70000 is not a TCP port"):
        load({"port": 70000})
    with pytest.raises(ConfigError, match=r"from flag --legacy-mnistprot-port: -2 is not"):
        load({"legacy_mnistprot_port": -2})
    with pytest.raises(ConfigError, match=r"bad verbose from env EDGEWIRE_VERBOSE: 'maybe' is not"):
        load(env={"EDGEWIRE_VERBOSE": "maybe"}, cls=Toggles)
    with pytest.raises(ConfigError, match=r"bad strict from flag --strict: '' is not a boolean"):
        load({"strict": ""}, cls=Toggles)


def test_a_secret_never_shows_in_an_error_or_a_repr(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(file=write_toml(tmp_path, "token = ['hunter2hunter2']\n"))
    assert "hunter2" not in info.value.message
    assert TOKEN not in repr(AgentConfig(token=TOKEN))


def test_unreadable_or_broken_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(file=write_toml(tmp_path, "port = \n"))
    with pytest.raises(ConfigError, match=r"\[agent\] .* must be a table"):
        load(file=write_toml(tmp_path, "agent = 5\n"))


# --- the opt-in ports ----------------------------------------------------------------------


def test_port_keys_from_each_source(tmp_path: Path) -> None:
    flat = write_toml(tmp_path, "[agent]\nlegacy_bts0_port = 9000\n")
    assert load(file=flat).legacy_ports == {"bts0": 9000}
    table = tmp_path / "table.toml"
    table.write_text("[agent.legacy_ports]\nmnistprot = 32001\nbts0 = 9001\n")
    assert load(file=table).legacy_ports == {"mnistprot": 32001, "bts0": 9001}
    env = {"EDGEWIRE_LEGACY_MNISTPROT_PORT": "0"}
    assert load(env=env).legacy_ports == {"mnistprot": 0}
    assert load(env={"EDGEWIRE_LEGACY_PORTS": "bts0=1, mnistprot=2"}).legacy_ports == {
        "bts0": 1,
        "mnistprot": 2,
    }
    assert load({"legacy_bts0_port": 5}).legacy_ports == {"bts0": 5}
    # Sources add ports (or move one); they do not close what an earlier one opened.
    cfg = load({"legacy_mnistprot_port": 7}, env, flat)
    assert cfg.legacy_ports == {"bts0": 9000, "mnistprot": 7}
    assert (cfg.port_of("bts0"), cfg.port_of("mnistprot")) == (9000, 7)
    assert (cfg.port_of("bts0"), cfg.port_of("mnistprot")) == (9000, 7)


@pytest.mark.parametrize("spec", PORTS, ids=lambda spec: spec.name)
def test_every_port_in_the_table_has_its_config_key(spec: Any) -> None:
    cfg = load(env={"EDGEWIRE_" + spec.config_key.upper(): str(spec.seed_port)})
    assert cfg.port_of(spec.name) == spec.seed_port


def test_ports_given_directly_are_checked_and_frozen() -> None:
    with pytest.raises(ConfigError, match="unknown port 'nope'"):
        AgentConfig(legacy_ports={"nope": 1})
    with pytest.raises(ConfigError, match="port 'bts0' must be a TCP port"):
        AgentConfig(legacy_ports={"bts0": 70000})
    with pytest.raises(ConfigError, match="port 'bts0' must be a TCP port"):
        AgentConfig(legacy_ports={"bts0": True})
    ports = {"mnistprot": 0}
    cfg = AgentConfig(legacy_ports=ports)
    ports["bts0"] = 1  # the caller's dict is not the config's
    assert cfg.legacy_ports == {"mnistprot": 0}
    with pytest.raises(TypeError):
        cfg.legacy_ports["bts0"] = 1  # type: ignore[index]
    with pytest.raises(KeyError, match="unknown port 'nope'"):
        cfg.port_of("nope")


def test_direct_construction_keeps_its_checks() -> None:
    with pytest.raises(ConfigError, match="port must be a TCP port"):
        AgentConfig(port=-1)
    with pytest.raises(ConfigError, match="max_request_rows must be at least 1"):
        AgentConfig(max_request_rows=0)
    with pytest.raises(ConfigError, match="max_buffered_bytes"):
        AgentConfig(max_frame_bytes=10, max_buffered_bytes=5)
    with pytest.raises(ConfigError, match="at least 8 characters"):
        AgentConfig(token="short")
