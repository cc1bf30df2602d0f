"""Polling, for devices behind NAT: outbound only, the same rules as the webhooks.

On an interval with jitter, resolve every alias the rules trigger on at the source; when
the version an alias names differs from the one seen last, act as a webhook for it would.
Errors back off exponentially (per round, up to ``max_backoff_s``). What was seen lives in
memory only: after a restart every alias looks new once, and the job queue's idempotency
key (:meth:`~edgewire.automation.rules.Action.job_key`) keeps a version from running twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgewire.automation.events import ArtifactEvent
from edgewire.automation.rules import Action, Rules, match
from edgewire.automation.sources import Resolved, Source, parse_ref
from edgewire.errors import ConfigError, one_line

log = logging.getLogger("edgewire.automation")

OnChange = Callable[[Action, Resolved], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class PollSettings:
    interval_s: float = 300.0
    #: Each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
    jitter: float = 0.2
    max_backoff_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0 or not 0 <= self.jitter < 1:
            raise ConfigError("poll interval_s must be positive and jitter in [0, 1)")
        if self.max_backoff_s < self.interval_s:
            raise ConfigError("poll max_backoff_s must be at least interval_s")

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.max_backoff_s, self.interval_s * 2.0**failures)
        return base * (1 + self.jitter * (2 * rng.random() - 1))


class Poller:
    """Resolves the rules' aliases on ``source`` and calls ``on_change`` for each new version."""

    def __init__(
        self,
        source: Source,
        rules: Rules,
        on_change: OnChange,
        *,
        settings: PollSettings | None = None,
        hook: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.rules = rules
        self.on_change = on_change
        self.settings = settings or PollSettings()
        self.hook = hook
        self.failures = 0
        self.seen: dict[str, str] = {}
        self._rng = rng or random.Random()

    def refs(self) -> list[str]:
        refs: list[str] = []
        for rule in self.rules.rules:
            if not rule.hooks or self.hook in rule.hooks:
                refs.extend(r for r in rule.poll_refs() if r not in refs)
        return refs

    async def poll_once(self) -> int:
        """One round over every ref; how many refs failed (each is tried, whatever the others do)."""
        failed = 0
        for ref in self.refs():
            try:
                await self._check(ref)
            except Exception as exc:  # one broken ref must not stop the others
                failed += 1
                log.warning("poll of %s failed: %s", ref, one_line(exc))
        self.failures = self.failures + 1 if failed else 0
        return failed

    async def _check(self, ref: str) -> None:
        resolved = await self.source.resolve(ref)
        if self.seen.get(ref) == resolved.version_id:
            return
        path, alias = parse_ref(ref)
        entity, project, collection = path.split("/")
        event = ArtifactEvent(entity=entity, project=project, collection=collection, alias=alias)
        action = match(event, self.rules, hook=self.hook)
        if action is not None:
            await self.on_change(action, resolved)
        self.seen[ref] = resolved.version_id  # only once acted on: a failure is retried

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            await self.poll_once()
            delay = self.settings.delay(self.failures, self._rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
