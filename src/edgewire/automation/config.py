"""The ``[automation]`` part of an agent's TOML file, as a typed :class:`AutomationConfig`.

Hooks, rules and allow-lists are structured, so they come from the file only (not from
``EDGEWIRE_*`` variables); a secret need not sit in the file: ``secret_env`` names the
variable that holds it (a list of names, for rotation). Every key is checked: an
unknown one, or a value of the wrong type, is a one-line ConfigError naming it::

    [automation.source]
    kind = "local"                 # local | http | wandb
    root = "/srv/artifacts"        # local: root/entity/project/collection/alias/...

    [automation.allow]
    entities = ["acme"]
    projects = ["edge"]
    collections = ["mnist", "digits-data"]

    [[automation.hooks]]
    name = "wandb"                 # POST /hooks/wandb
    kind = "wandb"                 # wandb | standard | github
    secret_env = ["EDGEWIRE_HOOK_WANDB_SECRET"]

    [[automation.rules]]
    entity = "acme"
    project = "edge"
    collection = "mnist"
    kind = "model"                 # model: deploy; data: retrain, then deploy if no worse
    model = "mnist"

The sources and the poller import the HTTP client, so they are imported when used.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewire.automation.events import AllowList
from edgewire.automation.rules import DEFAULT_TRIGGER, CollectionKind, Rule, Rules
from edgewire.automation.signatures import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_TOLERANCE_S,
    HookAuth,
    HookKind,
)
from edgewire.automation.urls import UrlPolicy
from edgewire.errors import ConfigError
from edgewire.ports import DEFAULT_NATIVE_PORT
from edgewire.train.choices import MODEL_NAMES

if TYPE_CHECKING:
    from edgewire.automation.poll import PollSettings
    from edgewire.automation.sources import Source

# A hook's name is a path segment of /hooks/{name}.
_HOOK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MISSING: Any = object()


class SourceKind(enum.StrEnum):
    LOCAL = "local"
    HTTP = "http"
    WANDB = "wandb"
    AGENT = "agent"


@dataclasses.dataclass(frozen=True, kw_only=True)
class HookConfig:
    """One named hook: ``POST /hooks/{name}``, its secrets and its rate limit."""

    name: str
    auth: HookAuth
    #: Deliveries per second the hook takes on average; ``burst`` at once.
    rate_per_s: float = 1.0
    burst: int = 20

    def __post_init__(self) -> None:
        if not _HOOK_NAME.fullmatch(self.name):
            raise ConfigError(f"hook name {self.name!r} must be 1 to 64 of a-z, 0-9, '_' and '-'")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0) or self.burst < 1:
            raise ConfigError(f"hook {self.name!r}: rate_per_s must be positive and burst >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuleOptions:
    """What a rule's action needs besides the rule: the alias it moves, and for a data
    collection how to train and what held-out data the gate compares on."""

    #: The alias the new version serves as (None: the store's default, ``production``).
    alias: str | None = None
    arch: str = "mnist_cnn"
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    #: The share of the new data held out for the gate (when ``holdout`` is not set).
    val_fraction: float = 0.2
    #: Train on at most this many samples of the new data.
    limit: int | None = None
    #: A data set (a name or a path on the agent) to compare on, instead of a share of
    #: the new data: an operator's trusted test set.
    holdout: str | None = None
    #: Train on this agent (HOST:PORT, its native port) instead of here: the data is
    #: streamed to it and the model comes back in the run's summary.
    train_on: str | None = None
    #: The environment variable holding that agent's token (never the token itself).
    train_token_env: str | None = None

    def __post_init__(self) -> None:
        if self.train_on is not None:
            from edgewire.ports import parse_address

            parse_address(self.train_on, default_port=DEFAULT_NATIVE_PORT)
        if self.arch not in MODEL_NAMES:
            raise ConfigError(f"arch {self.arch!r} is not one of {', '.join(MODEL_NAMES)}")
        if not 1 <= self.epochs <= 1000 or not 1 <= self.batch_size <= 65536:
            raise ConfigError("epochs must be in 1..1000 and batch_size in 1..65536")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, not {self.val_fraction!r}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"limit must be at least 2, not {self.limit!r}")

    def train_payload(self) -> dict[str, Any]:
        """The training settings as a job's JSON (the job keeps them if the config changes)."""
        return {
            "arch": self.arch, "epochs": self.epochs, "batch_size": self.batch_size,
            "lr": self.lr, "seed": self.seed, "val_fraction": self.val_fraction,
            "limit": self.limit, "holdout": self.holdout, "train_on": self.train_on,
            "train_token_env": self.train_token_env,
        }  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Where artifacts come from; :meth:`build` makes the :class:`Source`."""

    kind: SourceKind
    #: local: the folder of ``entity/project/collection/alias`` trees.
    root: Path | None = None
    #: http: the manifest URL template, e.g. ``https://store.example/{path}/{alias}.json``.
    manifest_url: str | None = None
    #: wandb: the server (None: W&B's cloud) and the API key (from ``api_key_env``);
    #: agent: the other agent's HTTP address (``http://HOST:8000``) and its token.
    base_url: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    max_bytes: int = 2 * 1024**3
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kind is SourceKind.LOCAL and self.root is None:
            raise ConfigError("a local source needs a root folder")
        if self.kind is SourceKind.HTTP and not self.manifest_url:
            raise ConfigError("an http source needs a manifest_url")
        if self.kind is SourceKind.AGENT and not self.base_url:
            raise ConfigError("an agent source needs a base_url (http://HOST:PORT)")
        if self.max_bytes < 1 or not self.timeout_s > 0:
            raise ConfigError("a source's max_bytes and timeout_s must be positive")

    def build(self, policy: UrlPolicy) -> Source:
        from edgewire.automation import sources
        from edgewire.automation.fetch import GuardedFetcher

        if self.kind is SourceKind.LOCAL:
            assert self.root is not None
            return sources.LocalSource(self.root, max_bytes=self.max_bytes)
        if self.kind is SourceKind.HTTP:
            fetcher = GuardedFetcher(policy, timeout_s=self.timeout_s)
            return sources.HttpSource(
                fetcher, manifest_url=self.manifest_url, max_bytes=self.max_bytes
            )
        if self.kind is SourceKind.AGENT:
            assert self.base_url is not None
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            fetcher = GuardedFetcher(policy, timeout_s=self.timeout_s, headers=headers)
            return sources.AgentSource(fetcher, base_url=self.base_url, max_bytes=self.max_bytes)
        return sources.WandbSource(
            policy=policy, api_key=self.api_key, base_url=self.base_url, max_bytes=self.max_bytes
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutomationConfig:
    """Hooks, rules (with their options, one per rule), the source, polling and the queue."""

    hooks: tuple[HookConfig, ...] = ()
    rules: Rules = dataclasses.field(default_factory=Rules)
    rule_options: tuple[RuleOptions, ...] = ()
    source: SourceConfig
    #: None: no polling (webhooks only).
    poll: PollSettings | None = None
    max_attempts: int = 3
    #: Seconds a running job's lease lasts; a worker that dies frees its job this late.
    lease_s: float = 30.0
    retry_base_s: float = 5.0
    retry_cap_s: float = 600.0
    max_queued: int = 1000
    keep_finished: int = 1000

    def __post_init__(self) -> None:
        names = [hook.name for hook in self.hooks]
        if len(set(names)) != len(names):
            raise ConfigError(f"two hooks have the same name: {sorted(names)}")
        if len(self.rule_options) != len(self.rules.rules):
            raise ConfigError("each rule needs its options (one RuleOptions per rule)")
        for rule in self.rules.rules:
            unknown = sorted(rule.hooks - set(names))
            if unknown:
                raise ConfigError(f"rule for {rule.artifact_path!r} names unknown hooks {unknown}")
        if self.max_attempts < 1 or self.max_queued < 1 or self.keep_finished < 1:
            raise ConfigError("max_attempts, max_queued and keep_finished must be at least 1")
        if not (self.lease_s > 0 and 0 < self.retry_base_s <= self.retry_cap_s):
            raise ConfigError("lease_s must be positive and 0 < retry_base_s <= retry_cap_s")

    def hook(self, name: str) -> HookConfig | None:
        return next((hook for hook in self.hooks if hook.name == name), None)

    def options_for(self, rule: Rule) -> RuleOptions:
        return self.rule_options[self.rules.rules.index(rule)]


# --- reading the TOML table ---------------------------------------------------------------


class _Table:
    """One TOML table, read key by key with its type checked; :meth:`done` refuses the rest."""

    def __init__(self, raw: Any, where: str, source: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} in {source} must be a table")
        self.raw, self.where, self.source = raw, where, source
        self._used: set[str] = set()

    def _bad(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"bad {self.where}.{key} in {self.source}: it must be {expected}")

    def get(self, key: str, expected: str, ok: Callable[[Any], bool], default: Any) -> Any:
        self._used.add(key)
        if key not in self.raw:
            if default is _MISSING:
                raise ConfigError(f"{self.where}.{key} is missing in {self.source}")
            return default
        value = self.raw[key]
        if not ok(value):
            raise self._bad(key, expected)
        return value

    def text(self, key: str, default: Any = _MISSING) -> Any:
        return self.get(key, "a string", lambda v: isinstance(v, str) and v != "", default)

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        return self.get(
            key, "a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool), default
        )

    def number(self, key: str, default: Any = _MISSING) -> Any:
        def ok(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        value = self.get(key, "a finite number", ok, default)
        return float(value) if isinstance(value, int | float) else value

    def texts(self, key: str, *, one_allowed: bool = False) -> list[str]:
        """A list of strings (or, with ``one_allowed``, one string as a list of one)."""

        def ok(v: Any) -> bool:
            if one_allowed and isinstance(v, str):
                return bool(v)
            return isinstance(v, list) and all(isinstance(s, str) and s for s in v)

        value = self.get(key, "a list of strings", ok, [])
        return [value] if isinstance(value, str) else list(value)

    def table(self, key: str) -> _Table | None:
        raw = self.get(key, "a table", lambda v: isinstance(v, dict), None)
        return None if raw is None else _Table(raw, f"{self.where}.{key}", self.source)

    def tables(self, key: str) -> list[_Table]:
        def ok(v: Any) -> bool:
            return isinstance(v, list) and all(isinstance(t, dict) for t in v)

        raws = self.get(key, f"an array of tables ([[{self.where}.{key}]])", ok, [])
        return [_Table(raw, f"{self.where}.{key}[{n}]", self.source) for n, raw in enumerate(raws)]

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self._used)
        if unknown:
            raise ConfigError(
                f"unknown key {self.where}.{unknown[0]} in {self.source}"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            )

    def checked(self, build: Callable[[], Any]) -> Any:
        """``build()``, its ConfigError prefixed with where in the file it comes from."""
        try:
            return build()
        except ConfigError as exc:
            raise ConfigError(f"{self.where} in {self.source}: {exc}") from None


def load_automation(
    raw: Any, *, source: str = "the config", environ: Mapping[str, str] | None = None
) -> AutomationConfig:
    """The :class:`AutomationConfig` of an ``[automation]`` table (``source`` names the file
    in errors; ``environ`` holds the variables ``secret_env`` and ``api_key_env`` name)."""
    env = os.environ if environ is None else environ
    top = _Table(raw, "automation", source)
    allow = _allow(top.table("allow"))
    hooks = tuple(_hook(t, env) for t in top.tables("hooks"))
    rules, options = [], []
    for table in top.tables("rules"):
        rule, option = _rule(table)
        rules.append(rule)
        options.append(option)
    src = top.table("source")
    if src is None:
        raise ConfigError(f"[automation.source] is missing in {source}: say where artifacts are")
    poll_table = top.table("poll")
    built = {
        "hooks": hooks,
        "rules": top.checked(lambda: Rules(rules=tuple(rules), allow=allow)),
        "rule_options": tuple(options),
        "source": _source(src, env),
        "poll": None if poll_table is None else _poll(poll_table),
        "max_attempts": top.integer("max_attempts", 3),
        "lease_s": top.number("lease_s", 30.0),
        "retry_base_s": top.number("retry_base_s", 5.0),
        "retry_cap_s": top.number("retry_cap_s", 600.0),
        "max_queued": top.integer("max_queued", 1000),
        "keep_finished": top.integer("keep_finished", 1000),
    }
    top.done()
    return top.checked(lambda: AutomationConfig(**built))  # type: ignore[no-any-return]


def _allow(table: _Table | None) -> AllowList:
    if table is None:
        return AllowList()  # allows nothing
    lists = {key: table.texts(key) for key in ("entities", "projects", "collections")}
    urls = table.checked(
        lambda: UrlPolicy.from_strings(
            hosts=table.texts("hosts"),
            networks=table.texts("networks"),
            schemes=table.texts("schemes") or ["https"],
            file_roots=table.texts("file_roots"),
        )
    )
    table.done()
    return AllowList(**{k: frozenset(v) for k, v in lists.items()}, urls=urls)


def _secrets(table: _Table, key: str, env_key: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """The literal values of ``key`` and those of the variables ``env_key`` names."""
    return (*table.texts(key), *_from_env(table, env_key, env))


def _from_env(table: _Table, env_key: str, env: Mapping[str, str]) -> list[str]:
    """The values of the variables ``env_key`` names (one name or a list); each must be set."""
    values = []
    for name in table.texts(env_key, one_allowed=True):
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{table.where}.{env_key} in {table.source}: {name!r} is no name")
        value = env.get(name, "")
        if not value:
            raise ConfigError(
                f"{table.where}.{env_key} in {table.source}: variable {name} is not set"
            )
        values.append(value)
    return values


def _hook(table: _Table, env: Mapping[str, str]) -> HookConfig:
    name = table.text("name")
    kind = table.text("kind")
    if kind not in set(HookKind):
        raise table._bad("kind", f"one of {', '.join(HookKind)}")
    auth_args = {
        "secrets": _secrets(table, "secrets", "secret_env", env),
        "tokens": _secrets(table, "tokens", "token_env", env),
        "tolerance_s": table.number("tolerance_s", DEFAULT_TOLERANCE_S),
        "max_body_bytes": table.integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
    }
    rate = table.number("rate_per_s", 1.0)
    burst = table.integer("burst", 20)
    table.done()
    return table.checked(  # type: ignore[no-any-return]
        lambda: HookConfig(
            name=name,
            auth=HookAuth(kind=HookKind(kind), **auth_args),
            rate_per_s=rate,
            burst=burst,
        )
    )


def _rule(table: _Table) -> tuple[Rule, RuleOptions]:
    names = {key: table.text(key) for key in ("entity", "project", "collection", "model")}
    kind = table.text("kind")
    if kind not in set(CollectionKind):
        raise table._bad("kind", f"one of {', '.join(CollectionKind)}")
    on = table.texts("on") or [DEFAULT_TRIGGER]
    hooks = table.texts("hooks")
    options = {
        "alias": table.text("alias", None),
        "arch": table.text("arch", "mnist_cnn"),
        "epochs": table.integer("epochs", 2),
        "batch_size": table.integer("batch_size", 32),
        "lr": table.number("lr", 1e-3),
        "seed": table.integer("seed", 0),
        "val_fraction": table.number("val_fraction", 0.2),
        "limit": table.integer("limit", None),
        "holdout": table.text("holdout", None),
        "train_on": table.text("train_on", None),
        "train_token_env": table.text("train_token_env", None),
    }
    table.done()
    rule = table.checked(
        lambda: Rule(**names, kind=CollectionKind(kind), on=frozenset(on), hooks=frozenset(hooks))
    )
    return rule, table.checked(lambda: RuleOptions(**options))


def _source(table: _Table, env: Mapping[str, str]) -> SourceConfig:
    kind = table.text("kind")
    if kind not in set(SourceKind):
        raise table._bad("kind", f"one of {', '.join(SourceKind)}")
    root = table.text("root", None)
    if "api_key" in table.raw:
        raise ConfigError(
            f"{table.where}.api_key in {table.source}: give api_key_env, the variable that "
            "holds the key, not the key itself"
        )
    keys = _from_env(table, "api_key_env", env)
    built = {
        "kind": SourceKind(kind),
        "root": None if root is None else Path(root).expanduser(),
        "manifest_url": table.text("manifest_url", None),
        "base_url": table.text("base_url", None),
        "api_key": keys[0] if keys else None,
        "max_bytes": table.integer("max_bytes", 2 * 1024**3),
        "timeout_s": table.number("timeout_s", 30.0),
    }
    table.done()
    return table.checked(lambda: SourceConfig(**built))  # type: ignore[no-any-return]


def _poll(table: _Table) -> PollSettings:
    from edgewire.automation.poll import PollSettings

    values = {
        "interval_s": table.number("interval_s", 300.0),
        "jitter": table.number("jitter", 0.2),
        "max_backoff_s": table.number("max_backoff_s", 3600.0),
    }
    table.done()
    return table.checked(lambda: PollSettings(**values))  # type: ignore[no-any-return]
