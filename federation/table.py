"""The routing table: one immutable snapshot of who may take launches, read by every request.

Built from the three inputs that change independently — the config, the members' health and
the operators' drains — whenever one of them changes, then swapped in whole. Requests never
await anything and never see a half-applied change.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache, partial
from itertools import islice
from types import MappingProxyType
from typing import Literal

from federation.config import Config, Member, Strategy, WeightMode
from federation.drains import Drain
from federation.health import MemberHealth, PodQuota, State
from federation.launch import LaunchKey
from federation.placement import (
    Candidate,
    order,
    random_choice,
)

__all__ = ["Decision", "MemberStatus", "MemberView", "RoutingTable", "SentLaunches", "at_capacity",
           "build_table", "pod_count_max_age"]

SLOW_START_FLOOR = 0.1  # a ramping member starts at 10 % of its weight
RANK_CACHE_SIZE = 4096  # repositories whose rankings are kept, at most
RANK_CACHE_ENTRIES = 262_144  # member names kept over all of them (about 2 MiB)
# BinderHub counts a member's pods at most this often (seconds: ``at_most_every``'s default on
# ``KubernetesHealthHandler._get_pods``, binderhub-protocol.md §3.1) and answers /health from
# that count in between
POD_COUNT_CACHE = 60.0


def pod_count_max_age(interval: float) -> float:
    """How long a member probed every ``interval`` seconds can repeat a pod count without
    having counted again: BinderHub counts at the first request a minute after its last
    count, and the next probe can come up to an interval (and its jitter) late."""
    return POD_COUNT_CACHE + 2 * interval


RedirectReason = Literal["cookie", "load_balancer", "spill-over", "fallback", "panic"]


class SentLaunches:
    """Launches sent per member that the routing table's pod counts do not include yet.

    BinderHub counts its pods at most once a minute (``POD_COUNT_CACHE``) and answers every
    probe in between from that count, so a probe's pods say nothing about when they were
    counted. What is sure: a count the member had not reported before was taken after its
    previous probe, so it includes every launch sent before that probe (a launch becomes a
    pod some seconds after its redirect, once the browser follows it); and a count reported
    unchanged for ``max_age`` was taken again meanwhile, so it includes the launches sent
    before the last such point. ``probed`` marks what a probe covers by these two rules, and
    the swap that shows its pods takes it off (``settle``): until then, the old count plus
    everything sent still holds. Counting a launch the count already includes makes a member
    look fuller for a while; forgetting one it does not include yet lets a workshop's
    launches pile onto one member past its quota.

    Counts live in one array, a slot per member name (``slot``), not in a dict of ints:
    with a hundred members a launch then reads and writes a few bytes of memory that every
    launch touches, where a dict entry and an int object per member fell out of the caches
    between two launches to the same member (``benchmarks/HISTORY.md``, seventh pass). Change
    counts only through the methods, or as ``RouterState.count_launch`` does, both at once.
    """

    __slots__ = ("_anchor", "_covered", "_dropped", "_names", "_previous", "_slots", "by_slot",
                 "total")

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._slots: dict[str, int] = {}
        self._names: list[str] = []  # by slot
        self.by_slot: array[int] = array("q")
        self.total = 0
        # Per member, in launches sent to it ever (``_sent``): taken off so far, to take off at
        # the next settle, as of its previous probe, and as of the last point it was known to
        # be counted again (with that point's time).
        self._dropped: dict[str, int] = {}
        self._covered: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._anchor: dict[str, tuple[float, int]] = {}
        for name, count in (counts or {}).items():
            self.by_slot[self.slot(name)] = count
            self.total += count

    def slot(self, name: str) -> int:
        """``name``'s index in ``by_slot``, given on first use and kept for good."""
        index = self._slots.get(name)
        if index is None:
            index = self._slots[name] = len(self.by_slot)
            self.by_slot.append(0)
            self._names.append(name)
        return index

    def name(self, slot: int) -> str:
        """The member name that has ``slot``."""
        return self._names[slot]

    @property
    def counts(self) -> dict[str, int]:
        """The count per member name (a copy, for reading)."""
        return {name: self.by_slot[index] for name, index in self._slots.items()}

    def add(self, name: str) -> None:
        """One more launch sent to ``name``."""
        self.by_slot[self.slot(name)] += 1
        self.total += 1

    def probed(self, name: str, *, at: float, fresh: bool, max_age: float) -> None:
        """``name`` answered a probe at ``at``; ``fresh``: with pod counts it had not reported
        before. Marks what its count includes by the two rules above; ``max_age`` is how long
        an unchanged count can be without having been taken again."""
        sent = self._sent(name)
        anchor = self._anchor.get(name)
        aged = anchor is not None and at - anchor[0] >= max_age
        if fresh:
            cover = self._previous.get(name, 0)
        else:
            cover = anchor[1] if anchor is not None and aged else 0
        if fresh or aged or anchor is None:
            self._anchor[name] = (at, sent)
        self._previous[name] = sent
        if cover > max(self._dropped.get(name, 0), self._covered.get(name, 0)):
            self._covered[name] = cover

    def settle(self) -> None:
        """The table now shows every probe's pods: drop the launches they include."""
        by_slot, slots, dropped = self.by_slot, self._slots, self._dropped
        for name, cover in self._covered.items():
            done = cover - dropped.get(name, 0)
            by_slot[slots[name]] -= done
            self.total -= done
            dropped[name] = cover
        self._covered.clear()

    def forget(self, name: str) -> None:
        """``name`` left the config (its slot stays, at zero, should it come back)."""
        index = self._slots.get(name)
        if index is not None:
            self.total -= self.by_slot[index]
            self.by_slot[index] = 0
        for per_member in (self._covered, self._dropped, self._previous, self._anchor):
            per_member.pop(name, None)

    def _sent(self, name: str) -> int:
        """Launches sent to ``name`` ever (since it last joined)."""
        return self.by_slot[self.slot(name)] + self._dropped.get(name, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SentLaunches):
            return NotImplemented
        return (self._nonzero() == other._nonzero() and self.total == other.total
                and self._pending() == other._pending())

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SentLaunches({self._nonzero()}, covered={self._pending()})"

    def _nonzero(self) -> dict[str, int]:
        return {name: count for name, count in self.counts.items() if count}

    def _pending(self) -> dict[str, int]:
        """Per member, the launches the next settle takes off."""
        return {name: cover - self._dropped.get(name, 0)
                for name, cover in self._covered.items()}


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
    ranking: tuple[str, ...] = ()  # member names, best first


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

    @property
    def status(self) -> Literal["healthy", "degraded", "down"]:
        """In words: every member routable, some, or none."""
        if not self.routable:
            return "down"
        active = [m for m in self.members if m.member.weight > 0]
        return "healthy" if len(self.routable) == len(active) else "degraded"

    def ranking(self, key: str) -> tuple[str, ...]:
        """The routable members' names for ``key``, best first (weight 0 ranks nowhere)."""
        return self.ranker(key)

    @cached_property
    def ranker(self) -> Callable[[str], tuple[str, ...]]:
        """``ranking``'s memo, one object shared by every snapshot with the same weights.

        Whoever keeps per-key results (the launch handler's answers) can tell with ``is``
        whether a new snapshot still ranks every key as before.
        """
        return _shared_ranker(self._weights)

    def route(
        self,
        launch: LaunchKey,
        *,
        cookie: str | None = None,
        sent: SentLaunches | None = None,
        rng: random.Random | None = None,
    ) -> Decision | None:
        """The member for a launch, or None when no member can take it (answer 503).

        A ``host`` cookie naming a routable member wins (it keeps a retried launch where its
        build started); otherwise the configured strategy decides among routable members,
        and when there are none the fallback chain does. ``sent`` counts the launches sent
        to each member that the pods in this snapshot do not include yet.
        """
        if cookie is not None:
            sticky = self.by_url.get(cookie.strip('"'))
            if sticky is not None:
                return Decision(sticky, "cookie")
        if not self.routable:
            fallback = self.fallback()
            return Decision(fallback, "fallback") if fallback else None
        if self._random:
            name = random_choice(self._weights, rng or random.Random())
            return Decision(self.by_name[name or self.routable[0].name], self.reason)
        sent = SentLaunches() if sent is None else sent  # tools and tests: nothing sent
        ranking = self.ranker(launch.key)
        if not ranking:  # every routable member has weight 0: nothing ranks
            return Decision(self.routable[0], self.reason)
        if self.has_room(ranking[0], sent):  # nearly every launch
            return self._homes.get(launch.key) or self._home_decision(launch.key, ranking)
        slot = self.spill_over((sent.slot(name) for name in islice(ranking, 1, None)), sent)
        if slot is not None:
            return Decision(self.by_name[sent.name(slot)], self.spill_reason, ranking)
        # everyone is at their bound: the home member takes it anyway
        return Decision(self.by_name[ranking[0]], self.reason if self.panic else "fallback",
                        ranking)

    def spill_over(self, below: Iterable[int], sent: SentLaunches) -> int | None:
        """Under bounded loads, where a launch goes when its home has no room: the first of
        ``below`` (the slots in ``sent`` of the members under the home in the key's ranking,
        best first) with room, or None when all are full.

        By slot, not by name: the launch handler keeps a key's slots and its redirects by
        slot, so a spilled launch costs no name lookups. ``room`` gave every live member,
        so every ranked one, its slot.
        """
        room = self.room(sent)
        for slot in below:
            if room(slot):
                return slot
        return None

    @cached_property
    def spill_reason(self) -> RedirectReason:
        """Why a launch goes to a member below its home: spill-over, or panic."""
        return self.reason if self.panic else "spill-over"

    @cached_property
    def _random(self) -> bool:
        return self.config.routing.strategy is Strategy.RANDOM

    @cached_property
    def _homes(self) -> dict[str, Decision]:
        """Decisions sending a key to its home member, made once per key and snapshot."""
        return {}

    def _home_decision(self, key: str, ranking: tuple[str, ...]) -> Decision:
        """The decision sending ``key`` to its first-ranked member, memoized per snapshot."""
        if len(self._homes) >= RANK_CACHE_SIZE:
            self._homes.clear()
        home = self._homes[key] = Decision(self.by_name[ranking[0]], self.reason, ranking)
        return home

    def home(self, key: str) -> str | None:
        """The member a launch of ``key`` goes to when it has room: the first of its ranking.

        None under random placement, or when no routable member has weight.
        """
        if self._random:
            return None
        ranking = self.ranker(key)
        return ranking[0] if ranking else None

    def has_room(self, name: str, sent: SentLaunches) -> bool:
        """Whether member ``name`` is below its bounded-load bound and its capacity, given
        ``sent``, the launches sent per member since their last probes. Always true without
        bounded loads.

        ``route`` asks it member by member down a key's ranking, as ``bounded_choice``
        walks (the same decisions: tests/test_table_route.py).
        """
        return self.room(sent)(sent.slot(name))

    def room(self, sent: SentLaunches) -> Callable[[int], bool]:
        """``has_room`` by the member's slot in ``sent``: the launch handler asks it of a
        repository's home member for nearly every launch.

        What is fixed for the snapshot is gathered once, into arrays indexed like ``sent``'s
        counts: per launch it is a few array reads, the same few bytes whichever member
        it is, and no lists.
        """
        made = self._rooms
        if made and made[0][0] is sent:
            return made[0][1]
        room = self._make_room(sent) if self._bounded else _always
        made[:] = [(sent, room)]
        return room

    @cached_property
    def _rooms(self) -> list[tuple[SentLaunches, Callable[[int], bool]]]:
        """``room``'s last answer, with the ``sent`` it was made for (one in a router)."""
        return []

    @cached_property
    def _bounded(self) -> bool:
        return self.config.routing.strategy is Strategy.BOUNDED

    def _make_room(self, sent: SentLaunches) -> Callable[[int], bool]:
        live = [c for c in self._candidates.values() if c.weight > 0]  # as ``order`` ranks
        names = {c.name for c in live}
        # the walk counts the members it could choose, only: the others' launches are not
        uncounted = tuple(sent.slot(m.name) for m in self.members if m.name not in names)
        slots = [sent.slot(c.name) for c in live]  # before sizing: new members get one here
        size = len(sent.by_slot)
        pods = array("q", bytes(8 * size))
        capacity = array("d", bytes(8 * size))  # 0 for members not live: no room
        weights = array("d", bytes(8 * size))
        for i, c in zip(slots, live, strict=True):
            pods[i], weights[i] = c.load, c.weight
            capacity[i] = math.inf if c.capacity is None else c.capacity
        reported, total_weight = sum(c.load for c in live), sum(c.weight for c in live)
        load_factor, floor = self.config.routing.load_factor, self.config.routing.bound_floor
        counts = sent.by_slot

        def room(i: int) -> bool:
            load = pods[i] + counts[i]
            if load >= capacity[i]:
                return False
            if load < floor:
                return True
            total = reported + sent.total
            for j in uncounted:
                total -= counts[j]
            # ``load_bound``, inlined: this runs for every launch
            return load < math.ceil(load_factor * (total + 1) * weights[i] / total_weight)

        return room

    @cached_property
    def reason(self) -> RedirectReason:
        """Why a launch goes to the member placement picked: panic, or plain balancing."""
        return "panic" if self.panic else "load_balancer"

    @cached_property
    def _candidates(self) -> Mapping[str, Candidate]:
        """Routable members with their reported pods, built once per snapshot, not per launch."""
        return MappingProxyType({
            m.name: Candidate(m.name, m.effective_weight, m.pods or 0, m.capacity)
            for m in self.routable
        })

    def fallback(self) -> MemberView | None:
        """No member routable: the full member with most room, else the prime, else none.

        A full member is healthy and only short of headroom, so it is the better bet; the
        prime takes launches whatever its health (today's behaviour), unless an operator
        drained it or gave it weight 0 — both mean "send it nothing".
        """
        full = [m for m in self.members
                if m.status is MemberStatus.FULL and m.member.weight > 0]
        if full:
            return max(full, key=lambda m: ((m.quota or 0) - (m.pods or 0), m.name))
        prime = self.by_name[self.config.prime.name]
        if prime.status is MemberStatus.DRAINED or prime.member.weight <= 0:
            return None
        return prime


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

    ``routable_since`` holds when each member last entered rotation, for slow start. Panic
    (routing over every member, whatever its health) needs ``ready``: before every member
    has been probed, a low routable share means "not known yet", not "health is lying".
    """
    since = routable_since or {}
    per_weight = _pods_per_weight(config, healths)
    views = tuple(
        _view(config, m, healths.get(m.name, MemberHealth()), _drain_of(m, drains),
              now=now, since=since.get(m.name), pods_per_weight=per_weight)
        for m in config.members
    )
    routable = tuple(
        v for v in views if v.status is MemberStatus.HEALTHY and v.member.weight > 0
    )
    panic = False
    threshold = config.routing.panic_threshold
    eligible = [v for v in views if v.status is not MemberStatus.DRAINED and v.member.weight > 0]
    if threshold > 0 and ready and eligible:
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
    )


_RANKERS: dict[tuple[tuple[str, float], ...], Callable[[str], tuple[str, ...]]] = {}
_RANKERS_KEPT = 4


def _always(slot: int) -> bool:
    return True


def _shared_ranker(weights: tuple[tuple[str, float], ...]) -> Callable[[str], tuple[str, ...]]:
    """A memo of ``order`` for these weights, shared by every snapshot that has them.

    A ranking depends on the weights alone, and a probe that only changes pod counts
    rebuilds the table with the same ones: a cache per snapshot would be emptied several
    times a second on a busy federation. Pure memo: its answers never differ from ``order``.
    The few most recent weight sets are kept (slow start changes weights every second).
    """
    ranker = _RANKERS.pop(weights, None)
    if ranker is None:
        size = max(256, min(RANK_CACHE_SIZE, RANK_CACHE_ENTRIES // max(1, len(weights))))
        ranker = lru_cache(maxsize=size)(partial(order, members=weights))
    _RANKERS[weights] = ranker  # most recently used last
    while len(_RANKERS) > _RANKERS_KEPT:
        del _RANKERS[next(iter(_RANKERS))]
    return ranker


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
    pods_per_weight: float,
) -> MemberView:
    """Join one member's config, health and drain; its effective weight is set here.

    With ``weights: capacity`` the weight is the pods the member can take (quota minus
    headroom: headroom 10 turns a 60-pod quota into 50, binderhub-protocol.md §5), so
    300/180/60-pod members get 290/170/50 shares instead of what the config says. Weight 0
    stays 0: it is the operator saying "no launches". Slow start then scales the weight.
    """
    pq = health.pod_quota
    pods = pq.total_pods if pq else None
    quota = pq.quota if pq else None
    capacity = None if quota is None else _capacity(config, member, quota)
    status, reason = _status(health, drain, pods, quota, capacity,
                             full=at_capacity(config, member, pq))
    weight = member.weight
    if config.routing.weights is WeightMode.CAPACITY and weight > 0:
        weight = float(capacity) if capacity is not None else weight * pods_per_weight
    weight *= _slow_start_factor(config.routing.slow_start, now=now, since=since)
    return MemberView(member, status, reason, weight, health, drain, pods, quota, capacity)


def _capacity(config: Config, member: Member, quota: int) -> int:
    return max(0, quota - config.headroom_for(member).pods_for(quota))


def at_capacity(config: Config, member: Member, pod_quota: PodQuota | None) -> bool:
    """Whether ``pod_quota`` puts ``member`` at its capacity (quota less headroom): a
    healthy member there is full and takes no new launches."""
    if pod_quota is None or pod_quota.quota is None:
        return False
    return pod_quota.total_pods >= _capacity(config, member, pod_quota.quota)


def _pods_per_weight(config: Config, healths: Mapping[str, MemberHealth]) -> float:
    """Pods of capacity per unit of configured weight, over the members reporting a quota.

    Under ``weights: capacity`` a member that reports no quota keeps its configured weight,
    converted by this ratio into pods so that it is not dwarfed (weight 10 next to 300 pods)
    or dominant (weight 100 next to 60 pods).
    """
    if config.routing.weights is not WeightMode.CAPACITY:
        return 1.0
    pods = weights = 0.0
    for m in config.members:
        pq = healths.get(m.name, MemberHealth()).pod_quota
        if m.weight > 0 and pq is not None and pq.quota is not None:
            pods += _capacity(config, m, pq.quota)
            weights += m.weight
    return pods / weights if pods > 0 else 1.0


def _slow_start_factor(window: float, *, now: float, since: float | None) -> float:
    """How much of its weight a member that entered rotation at ``since`` gets at ``now``.

    Linear from ``SLOW_START_FLOOR`` to 1 over ``window`` seconds, like HAProxy's
    ``slowstart``; the floor keeps a new member visible to rendezvous from the first second,
    and the ramp moves repositories to it a few at a time instead of all at once.
    """
    if since is None or window <= 0 or now - since >= window:
        return 1.0
    ramp = max(0.0, now - since) / window
    return SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * ramp


def _status(
    health: MemberHealth,
    drain: Drain | None,
    pods: int | None,
    quota: int | None,
    capacity: int | None,
    *,
    full: bool,
) -> tuple[MemberStatus, str]:
    if drain is not None:
        return MemberStatus.DRAINED, f"drained by {drain.by}: {drain.reason}"
    if health.state is State.UNKNOWN:
        return MemberStatus.UNKNOWN, health.reason
    if health.state is State.UNHEALTHY:
        return MemberStatus.UNHEALTHY, health.reason
    if full:
        return MemberStatus.FULL, f"{pods} of {quota} pods in use (takes launches below {capacity})"
    return MemberStatus.HEALTHY, ""


def _ui_member(config: Config, views: tuple[MemberView, ...]) -> MemberView:
    """The prime while it serves; else the serving member with the highest weight.

    A full member still serves pages. The prime keeps the UI until its first probe answers,
    so the landing page does not hop away at start-up just because another member was faster.
    """
    serving = (MemberStatus.HEALTHY, MemberStatus.FULL)
    prime = next(v for v in views if v.member.prime)
    if prime.status in serving or prime.status is MemberStatus.UNKNOWN:
        return prime
    others = [v for v in views if v.status in serving]
    if others:
        return max(others, key=lambda v: (v.member.weight, v.name))
    return prime

