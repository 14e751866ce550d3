"""The router's live state: the inputs of the routing table and the snapshot built from them.

Config, probe results and drains arrive from their own tasks; each arrival builds a new
``RoutingTable`` and swaps it in whole. The only state the request path writes is the count of
launches sent per member that the table's pod counts do not include yet (for bounded loads)
and the recent-launch tally for the status page — plain integer increments, no awaits.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from federation.config import Config
from federation.drains import Drains
from federation.errors import ConfigError
from federation.health import MemberHealth, ProbeResult, State, Versions, advance
from federation.metrics import Metrics
from federation.table import (
    MemberStatus,
    RoutingTable,
    SentLaunches,
    at_capacity,
    build_table,
    pod_count_max_age,
)

__all__ = ["ConfigRejection", "RouterState"]

log = structlog.get_logger("federation.runtime")

COALESCE_SECONDS = 5.0  # pod-count-only changes are applied together, at most this late
RECENT_WINDOW = 600.0  # seconds of launches shown as "share of recent launches"
_BUCKET = 10.0


@dataclass(frozen=True, slots=True)
class ConfigRejection:
    """A config reload that failed validation; the previous config stayed in force."""

    error: ConfigError
    at: float  # wall-clock seconds


class RouterState:
    """Holds config, health and drains; rebuilds the routing table when any of them changes."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_config: Callable[[Config], None] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.on_config = on_config
        self.started = clock()
        self.config = config
        self.generation = 1
        self.healths: dict[str, MemberHealth] = {}
        self.drains: Drains = MappingProxyType({})
        self.drain_error: ConfigError | None = None
        self.rejection: ConfigRejection | None = None
        self.sent = SentLaunches()  # launches the table's pod counts do not include yet
        self._tallies = self.metrics.launches.counts
        self.routable_since: dict[str, float] = {}
        # Copies of the redirect counts taken every _BUCKET seconds; the oldest is the
        # baseline. Arrays, not a dict per member: sixty of them are kept.
        self.recent: deque[tuple[float, array[int]]] = deque([(self.started, array("q"))])
        self._ready = False
        self._swap_pending = False
        self._last_resort: str | None = None  # as last logged: see ``_last_resort()``
        self.table = self._build()
        self.metrics.watch(lambda: self.table)
        self.metrics.config_generation.set(self.generation)

    # -- inputs -----------------------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Put a newly validated config in force; members that stay keep their health."""
        names = {m.name for m in config.members}
        old = {m.name for m in self.config.members}
        for gone in old - names:
            self.healths.pop(gone, None)
            self.sent.forget(gone)
            self.routable_since.pop(gone, None)
            self.metrics.forget(gone)
        self.config = config
        self.generation += 1
        self.rejection = None
        self.metrics.config_generation.set(self.generation)
        self.metrics.config_reloads.inc()
        log.info("config applied", generation=self.generation, source=config.source,
                 added=sorted(names - old), removed=sorted(old - names))
        if self.on_config is not None:
            self.on_config(config)
        self._swap()

    def reject_config(self, error: ConfigError) -> None:
        """Record a config that failed validation; the last good one stays in force."""
        self.rejection = ConfigRejection(error, time.time())
        self.metrics.config_errors.inc()
        log.error("config rejected, keeping the last good one", error=str(error),
                  source=error.source, member=error.member, field=error.field,
                  generation=self.generation)

    def apply_drains(self, drains: Drains) -> None:
        """Put the operators' current drains in force."""
        before = self.drains
        self.drains = drains
        self.drain_error = None
        for name in sorted(set(before) | set(drains)):
            if name not in drains:
                log.warning("member undrained", member=name)
            elif before.get(name) != drains[name]:
                d = drains[name]
                log.warning("member drained", member=name, reason=d.reason, by=d.by,
                            since=d.since)
        self._swap()

    def reject_drains(self, error: ConfigError) -> None:
        """A drains document that could not be read: keep the drains in force, say so."""
        self.drain_error = error
        log.error("drains document rejected, keeping the drains in force", error=str(error))

    def apply_probe(self, name: str, result: ProbeResult) -> None:
        """Fold one probe round of ``name`` into its health."""
        member = self.config.member(name)
        if member is None:
            return
        prev = self.healths.get(name, MemberHealth())
        prime = self.config.prime
        prime_versions = self._prime_versions(prime.name)
        if member.prime and result.versions is not None:
            prime_versions = result.versions
        settings = self.config.health
        new = advance(prev, result, policy=settings.versions, prime_versions=prime_versions,
                      failures_to_eject=settings.failures_to_eject,
                      successes_to_restore=settings.successes_to_restore)
        self.healths[name] = new
        # what its pod count includes of the launches sent to it (``SentLaunches``)
        self.sent.probed(name, at=result.at,
                         fresh=new.pod_quota is not None and new.pod_quota != prev.pod_quota,
                         max_age=pod_count_max_age(settings.interval))
        self.metrics.probed(name, result)
        if new.state is not prev.state:
            healthy = new.state is State.HEALTHY
            event = log.info if healthy else log.warning
            event("member health changed", member=name, state=new.state.value,
                  previous=prev.state.value, reason=new.reason or None,
                  consecutive=new.successes if healthy else new.failures,
                  latency_ms=round(result.latency * 1000, 1))
        if (prev.state is not new.state or prev.reason != new.reason
                or at_capacity(self.config, member, prev.pod_quota)
                is not at_capacity(self.config, member, new.pod_quota)):
            self._swap()  # in or out of rotation, full or with room again: at once
        elif prev.pod_quota != new.pod_quota or prev.versions != new.versions:
            self._swap_soon()
        elif not self._swap_pending:
            self.sent.settle()  # the table already shows these pods

    def _prime_versions(self, prime: str) -> Versions | None:
        health = self.healths.get(prime)
        return health.versions if health else None

    def _swap_soon(self) -> None:
        """Rebuild within ``COALESCE_SECONDS`` for changes that only move numbers.

        A hundred members whose counts change once a minute (BinderHub's) bring a new count
        more than once a second; rebuilding the table for each would cost more than
        routing, and every five seconds instead of every second read about 0.6 % faster
        in a scratch A/B (``benchmarks/HISTORY.md``, fifteenth pass). Bounded loads
        lose nothing by the wait: until the swap, the old counts plus every launch sent
        (``sent``) still hold, and the swap drops what the new counts include. A count that
        makes a member full, or gives a full one room, does not wait (``apply_probe``):
        launches must stop going to a member that said it is full at once.
        """
        if self._swap_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._swap()  # no loop (pure tests, tools): nothing to coalesce with
            return
        self._swap_pending = True
        loop.call_later(COALESCE_SECONDS, self._swap_if_pending)

    def _swap_if_pending(self) -> None:
        if self._swap_pending:
            self._swap()

    # -- request path -----------------------------------------------------------------------

    def count_launch(self, slot: int, tally: int) -> None:
        """One launch sent, counted where both counts live: ``sent`` at the member's
        ``slot`` (bounded loads, until a table shows a later probe) and the redirect metrics
        at ``tally`` (``Metrics.launches.slot(member, reason)``). Called per launch."""
        sent = self.sent
        sent.by_slot[slot] += 1  # ``SentLaunches.add``, inlined: this runs for every launch
        sent.total += 1
        self._tallies[tally] += 1

    def mark_launches(self) -> None:
        """Note the launch totals every ``_BUCKET`` seconds (called by a ticker, not requests).

        Recent launches are today's totals minus the mark taken a window ago, so the request
        path pays nothing for the status page's "share of recent launches".
        """
        now = self.clock()
        marks = self.recent
        if now - marks[-1][0] >= _BUCKET:
            marks.append((now, array("q", self._tallies)))
        while len(marks) > 1 and now - marks[0][0] > RECENT_WINDOW:
            marks.popleft()

    def recent_launches(self) -> Mapping[str, int]:
        """Launches per member over about the last ``RECENT_WINDOW`` seconds."""
        return self.metrics.launches.since(self.recent[0][1])

    # -- snapshots --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every member probed once, or the start-up timeout passed."""
        if not self._ready:
            probed = all(self.healths.get(m.name, MemberHealth()).probes > 0
                         for m in self.config.members)
            timed_out = self.clock() - self.started >= self.config.health.startup_timeout
            self._ready = probed or timed_out
        return self._ready

    def refresh(self) -> None:
        """Rebuild the table without a new input (slow start ramps with time)."""
        self._swap()

    def ramping(self) -> bool:
        """Whether some member is still in its slow start, or has just finished it.

        An entry stays until a rebuild after its window removes it, so the ticker's last
        refresh puts the member at its full weight instead of stopping a second short.
        """
        return bool(self.routable_since)

    def _swap(self) -> None:
        self._swap_pending = False
        was_ready = self._ready
        previous = self.table
        self.table = self._build()
        self.sent.settle()
        self._track_entries(previous, was_ready)
        self._announce(previous)

    def _announce(self, previous: RoutingTable) -> None:
        """Log, once each, what changes where launches go without a health transition."""
        table = self.table
        for view in table.members:
            before = previous.by_name.get(view.name)
            was_full = before is not None and before.status is MemberStatus.FULL
            if view.status is MemberStatus.FULL and not was_full:
                log.warning("member full, takes no new launches", member=view.name,
                            pods=view.pods, quota=view.quota, capacity=view.capacity)
            elif was_full and view.status is MemberStatus.HEALTHY:
                log.info("member has room again", member=view.name, pods=view.pods,
                         quota=view.quota, capacity=view.capacity)
        if table.panic != previous.panic:
            if table.panic:
                log.error("PANIC: too little weight is routable; ignoring health and routing "
                          "over every member", threshold=table.config.routing.panic_threshold,
                          routable=sorted(m.name for m in table.members
                                          if m.status is MemberStatus.HEALTHY))
            else:
                log.warning("panic over: routing by health again")
        mode = _last_resort(table)
        if table.ready and mode != self._last_resort:
            if mode is None:
                log.info("members take launches again",
                         routable=sorted(m.name for m in table.routable))
            else:
                log.error("no member is fit to take launches; using the last resort",
                          last_resort=mode or "none, launches get 503",
                          members={m.name: m.reason or m.status.value for m in table.members})
            self._last_resort = mode

    def _track_entries(self, previous: RoutingTable, was_ready: bool) -> None:
        """Note when members enter rotation, so slow start ramps them (not at start-up).

        Entering means joining, recovering, being undrained or getting a weight again. A full
        member that has room again is not cold (its images are there), so it does not ramp.
        """
        before = {m.name for m in previous.routable}
        before |= {m.name for m in previous.members if m.status is MemberStatus.FULL}
        now = self.clock()
        entered = False
        for m in self.table.routable:
            if m.name not in before and was_ready and m.status is MemberStatus.HEALTHY:
                self.routable_since[m.name] = now
                entered = True
        if entered and self.config.routing.slow_start > 0:
            self.table = self._build()

    def _build(self) -> RoutingTable:
        now = self.clock()
        slow = self.config.routing.slow_start
        for name, t in list(self.routable_since.items()):
            if now - t >= slow:
                del self.routable_since[name]
        return build_table(self.config, self.healths, self.drains, now=now,
                           generation=self.generation, routable_since=self.routable_since,
                           ready=self.ready)



def _last_resort(table: RoutingTable) -> str | None:
    """None while some member is routable; else the fallback's name, or "" (launches get 503)."""
    if table.routable:
        return None
    fallback = table.fallback()
    return fallback.name if fallback else ""
