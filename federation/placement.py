"""Which member a launch goes to: weighted rendezvous ranking, random choice, bounded loads.

Pure functions over plain values; no I/O, no clocks. The rendezvous formula is the one the
mybinder.org federation-redirect uses (binderhub-protocol.md §4.3), so the same member names
and weights give the same repo → member mapping and no image cache is lost by switching:

    h = BLAKE2b-64(key + "-" + member name), big-endian
    score = weight / -ln(h / (2^64 - 1)), highest first, ties broken by name (descending)

Written in-tree (about thirty lines) instead of using a ring library: rings are 2.5–30 % off
their weight shares and move more keys than necessary on weight changes (hashing.md §2).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Literal

__all__ = [
    "Candidate",
    "Choice",
    "Ranked",
    "bounded_choice",
    "load_bound",
    "order",
    "random_choice",
    "rank",
    "rendezvous_score",
]

_MAX_HASH = 2**64 - 1

ChoiceReason = Literal["home", "spill-over", "fallback"]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One member's place in a key's ranking."""

    name: str
    score: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """A routable member as placement sees it.

    ``load`` is the pods its last /health reported; ``capacity`` is the load at which it counts
    as full (quota minus headroom), or None when it reports no quota. Both change only with a
    probe, so a routing table builds its candidates once and adds the per-launch part (the
    launches sent that those pods are not sure to include) as ``bounded_choice(..., sent=)``.
    """

    name: str
    weight: float
    load: int = 0
    capacity: int | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """A bounded-load placement and why it was made (home, spill-over, fallback)."""

    member: str
    reason: ChoiceReason
    position: int  # 0 = the repository's home member in the ranking


def rendezvous_score(key: str, member: str, weight: float) -> float:
    """Weighted rendezvous score of ``member`` for ``key`` (higher wins).

    The two hash values the plain formula cannot take are given their limits: h = 0 would be
    log(0) (score 0: never preferred) and h = 2^64 - 1 would divide by zero (score +inf).
    """
    return _score(f"{key}-{member}".encode(), weight) if weight > 0 else 0.0


def _score(data: bytes, weight: float) -> float:
    h = int.from_bytes(blake2b(data, digest_size=8).digest(), "big")
    if h == 0:
        return 0.0
    if h == _MAX_HASH:
        return math.inf
    return weight / -math.log(h / _MAX_HASH)


def rank(key: str, members: Iterable[tuple[str, float]]) -> tuple[Ranked, ...]:
    """Every member with weight > 0, best first (ties: name descending), for ``key``."""
    return tuple(Ranked(name, score) for score, name in _scored(key, members))


def order(key: str, members: Iterable[tuple[str, float]]) -> tuple[str, ...]:
    """The names of ``rank(key, members)``, best first: what routing walks, in an eighth of
    the memory (a routing table memoizes thousands of these)."""
    return tuple(name for _, name in _scored(key, members))


def _scored(key: str, members: Iterable[tuple[str, float]]) -> list[tuple[float, str]]:
    """(score, name) best first. Hashes ``key + "-"`` encoded once and appends each name:
    the same bytes as ``rendezvous_score`` hashes, at a third less cost."""
    prefix = f"{key}-".encode()
    scored = [(_score(prefix + name.encode(), weight), name)
              for name, weight in members if weight > 0]
    scored.sort(reverse=True)
    return scored


def random_choice(members: Sequence[tuple[str, float]], rng: random.Random) -> str | None:
    """A weighted random member (mybinder.org's current ``load_balancer: random``)."""
    live = [(n, w) for n, w in members if w > 0]
    if not live:
        return None
    return rng.choices([n for n, _ in live], [w for _, w in live])[0]


def load_bound(*, load_factor: float, total_load: int, weight: float, total_weight: float,
               floor: int = 0) -> int:
    """The most launches a member may hold under bounded loads: ceil(c·(L+1)·w/W).

    ``floor`` keeps a nearly idle federation from spilling: with two or three launches in
    flight the formula's bound is one or two, so a second launch of a repository would
    already leave the member holding its image, though nothing is anywhere near loaded.
    """
    return max(floor, math.ceil(load_factor * (total_load + 1) * weight / total_weight))


def bounded_choice(
    ranking: Sequence[str],
    candidates: Mapping[str, Candidate],
    *,
    load_factor: float,
    sent: Mapping[str, int] | None = None,
    floor: int = 0,
) -> Choice | None:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam).

    A member's load is its reported pods plus ``sent``, the launches this router sent it since
    that report: a snapshot alone makes every launch between two probes pile onto the same
    member (hashing.md §2.4). Walk the ranking (member names, best first) and take the first
    member below both its load bound and its capacity; when none is, the repository's home
    member takes it anyway ("fallback"), so placement never fails while a member is routable.

    This is the algorithm's plain statement. ``RoutingTable.route`` makes the same decisions
    from sums it keeps per snapshot (tests/test_table_route.py checks that they agree).
    """
    extra = sent or {}
    live = [candidates[name] for name in ranking if name in candidates]
    if not live:
        return None
    loads = [c.load + extra.get(c.name, 0) for c in live]
    total_load = sum(loads)
    total_weight = sum(c.weight for c in live)
    for position, (c, load) in enumerate(zip(live, loads, strict=True)):
        bound = load_bound(load_factor=load_factor, total_load=total_load,
                           weight=c.weight, total_weight=total_weight, floor=floor)
        has_room = c.capacity is None or load < c.capacity
        if load < bound and has_room:
            return Choice(c.name, "home" if position == 0 else "spill-over", position)
    return Choice(live[0].name, "fallback", 0)
