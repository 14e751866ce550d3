"""The routing table: one immutable snapshot of who may take launches, read by every request.

Built from the three inputs that change independently — the config, the members' health and
the operators' drains — whenever one of them changes, then swapped in whole. Requests never
await anything and never see a half-applied change.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from federation.config import Config, Member, Strategy, WeightMode
from federation.drains import Drain
from federation.health import MemberHealth, State
from federation.launch import LaunchKey
from federation.placement import Candidate, Ranked, bounded_choice, rank, random_choice

__all__ = ["Decision", "MemberStatus", "MemberView", "RoutingTable", "build_table"]

SLOW_START_FLOOR = 0.1  # a ramping member starts at 10 % of its weight
RANK_CACHE_SIZE = 4096

RedirectReason = Literal["cookie", "load_balancer", "spill-over", "fallback", "panic"]


class MemberStatus(StrEnum):
    """A member's state as on-call staff see it."""

    HEALTHY = "healthy"
    FULL = "full"
    UNHEALTHY = "unhealthy"
    DRAINED = "drained"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member as this snapshot sees it: config, health and drain joined."""

    member: Member
    status: MemberStatus
    reason: str
    effective_weight: float
    health: MemberHealth
    drain: Drain | None
    pods: int | None
    quota: int | None
    capacity: int | None  # pods at which it counts as full (quota - headroom)

    @property
    def name(self) -> str:
        """The member's config name."""
        return self.member.name

    @property
    def url(self) -> str:
        """The member's base URL."""
        return self.member.url


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one launch goes and why."""

    member: MemberView
    reason: RedirectReason
    ranking: tuple[Ranked, ...] = ()


@dataclass(frozen=True)
class RoutingTable:
    """An immutable snapshot; ``route`` is the whole launch decision."""

    config: Config
    generation: int
    members: tuple[MemberView, ...]
    routable: tuple[MemberView, ...]
    ui: MemberView
    ready: bool
    panic: bool
    by_name: Mapping[str, MemberView] = field(repr=False)
    by_url: Mapping[str, MemberView] = field(repr=False)  # routable members by URL (cookies)
    _weights: tuple[tuple[str, float], ...] = field(repr=False)
    _rank_cache: dict[str, tuple[Ranked, ...]] = field(repr=False, compare=False)

    @property
    def status(self) -> Literal["healthy", "degraded", "down"]:
        """In words: every member routable, some, or none."""
        if not self.routable:
            return "down"
        active = [m for m in self.members if m.member.weight > 0]
        return "healthy" if len(self.routable) == len(active) else "degraded"

    def ranking(self, key: str) -> tuple[Ranked, ...]:
        """The routable members ranked for ``key``; cached per snapshot (it never changes)."""
        cached = self._rank_cache.get(key)
        if cached is None:
            if len(self._rank_cache) >= RANK_CACHE_SIZE:
                self._rank_cache.clear()
            cached = self._rank_cache[key] = rank(key, self._weights)
        return cached

    def route(
        self,
        launch: LaunchKey,
        *,
        cookie: str | None = None,
        loads: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> Decision | None:
        """The member for a launch, or None when no member can take it (answer 503).

        A ``host`` cookie naming a routable member wins (it keeps a retried launch where its
        build started); otherwise the configured strategy decides among routable members,
        and when there are none the fallback chain does.
        """
        if cookie is not None:
            sticky = self.by_url.get(cookie.strip('"'))
            if sticky is not None:
                return Decision(sticky, "cookie")
        if not self.routable:
            fallback = self.fallback()
            return Decision(fallback, "fallback") if fallback else None
        reason: RedirectReason = "panic" if self.panic else "load_balancer"
        strategy = self.config.routing.strategy
        if strategy is Strategy.RANDOM:
            name = random_choice(self._weights, rng or random.Random())
            return Decision(self.by_name[name or self.routable[0].name], reason)
        ranking = self.ranking(launch.key)
        if strategy is Strategy.RENDEZVOUS:
            return Decision(self.by_name[ranking[0].name], reason, ranking)
        choice = bounded_choice(ranking, self._candidates(loads or {}),
                                load_factor=self.config.routing.load_factor)
        assert choice is not None  # routable is not empty
        if choice.reason in ("spill-over", "fallback") and not self.panic:
            reason = choice.reason
        return Decision(self.by_name[choice.member], reason, ranking)

    def _candidates(self, loads: Mapping[str, int]) -> dict[str, Candidate]:
        return {
            m.name: Candidate(m.name, m.effective_weight, (m.pods or 0) + loads.get(m.name, 0),
                              m.capacity)
            for m in self.routable
        }

    def fallback(self) -> MemberView | None:
        """No member routable: the full member with most room, else the prime, else none."""
        full = [m for m in self.members if m.status is MemberStatus.FULL]
        if full:
            return max(full, key=lambda m: ((m.quota or 0) - (m.pods or 0), m.name))
        prime = self.by_name[self.config.prime.name]
        return None if prime.status is MemberStatus.DRAINED else prime


def build_table(
    config: Config,
    healths: Mapping[str, MemberHealth],
    drains: Mapping[str, Drain],
    *,
    now: float,
    generation: int = 0,
    routable_since: Mapping[str, float] | None = None,
    ready: bool = True,
) -> RoutingTable:
    """A snapshot of ``config`` under the given health and drains at time ``now``.

    ``routable_since`` holds when each member last entered rotation, for slow start.
    """
    since = routable_since or {}
    views = tuple(
        _view(config, m, healths.get(m.name, MemberHealth()), _drain_of(m, drains),
              now=now, since=since.get(m.name))
        for m in config.members
    )
    routable = tuple(
        v for v in views if v.status is MemberStatus.HEALTHY and v.member.weight > 0
    )
    panic = False
    threshold = config.routing.panic_threshold
    eligible = [v for v in views if v.status is not MemberStatus.DRAINED and v.member.weight > 0]
    if threshold > 0 and eligible:
        share = sum(v.member.weight for v in routable) / sum(v.member.weight for v in eligible)
        if share < threshold:
            panic, routable = True, tuple(eligible)
    by_name = MappingProxyType({v.name: v for v in views})
    return RoutingTable(
        config=config,
        generation=generation,
        members=views,
        routable=routable,
        ui=_ui_member(config, views),
        ready=ready,
        panic=panic,
        by_name=by_name,
        by_url=MappingProxyType({v.url: v for v in routable}),
        _weights=tuple((v.name, v.effective_weight) for v in routable),
        _rank_cache={},
    )


def _drain_of(member: Member, drains: Mapping[str, Drain]) -> Drain | None:
    if member.name in drains:
        return drains[member.name]
    if member.drain:
        return Drain(member.name, member.drain, by="config")
    return None


def _view(
    config: Config,
    member: Member,
    health: MemberHealth,
    drain: Drain | None,
    *,
    now: float,
    since: float | None,
) -> MemberView:
    pq = health.pod_quota
    pods = pq.total_pods if pq else None
    quota = pq.quota if pq else None
    capacity = None
    if quota is not None:
        capacity = max(0, quota - config.headroom_for(member).pods_for(quota))
    status, reason = _status(health, drain, pods, quota, capacity)
    weight = member.weight
    if config.routing.weights is WeightMode.CAPACITY and quota is not None and member.weight > 0:
        weight = float(quota)
    slow = config.routing.slow_start
    if since is not None and slow > 0 and now - since < slow:
        ramp = max(0.0, now - since) / slow
        weight *= SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * ramp
    return MemberView(member, status, reason, weight, health, drain, pods, quota, capacity)


def _status(
    health: MemberHealth,
    drain: Drain | None,
    pods: int | None,
    quota: int | None,
    capacity: int | None,
) -> tuple[MemberStatus, str]:
    if drain is not None:
        return MemberStatus.DRAINED, f"drained by {drain.by}: {drain.reason}"
    if health.state is State.UNKNOWN:
        return MemberStatus.UNKNOWN, health.reason
    if health.state is State.UNHEALTHY:
        return MemberStatus.UNHEALTHY, health.reason
    if capacity is not None and pods is not None and pods >= capacity:
        return MemberStatus.FULL, f"{pods} of {quota} pods in use (takes launches below {capacity})"
    return MemberStatus.HEALTHY, ""


def _ui_member(config: Config, views: tuple[MemberView, ...]) -> MemberView:
    """The prime while it serves; else the serving member with the highest weight."""
    serving = (MemberStatus.HEALTHY, MemberStatus.FULL)
    prime = next(v for v in views if v.member.prime)
    if prime.status in serving:
        return prime
    others = [v for v in views if v.status in serving]
    if others:
        return max(others, key=lambda v: (v.member.weight, v.name))
    return prime


def ramping(table: RoutingTable, now: float, since: Mapping[str, float]) -> bool:
    """Whether some member's slow start is still under way (the table needs rebuilding)."""
    slow = table.config.routing.slow_start
    return slow > 0 and any(now - t < slow for t in since.values()) and not math.isinf(slow)
