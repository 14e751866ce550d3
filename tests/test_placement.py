"""Placement, pure: the rendezvous formula, its guarantees, and bounded-load choice."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import placement
from federation.placement import (
    Candidate,
    bounded_choice,
    load_bound,
    order,
    random_choice,
    rank,
    rendezvous_score,
)

SKEWED = [("member-000", 50.0), ("member-001", 50.0), ("member-002", 50.0),
          ("member-003", 20.0), ("member-004", 10.0)]
KEYS = [f"/build/gh/org{i % 97}/repo{i}" for i in range(20_000)]


def redirector_rank(buckets: list[tuple[str, float]], key: str) -> list[tuple[float, str]]:
    """mybinder.org federation-redirect's rendezvous_rank(), written straight from its formula
    (binderhub-protocol.md §4.3): blake2b-64 of "<key>-<bucket>", w / -ln(h / (2^64-1)),
    sorted descending as (score, name) pairs."""
    ranking = []
    for bucket, weight in buckets:
        digest = hashlib.blake2b(f"{key}-{bucket}".encode(), digest_size=8).digest()
        h = int.from_bytes(digest, "big")
        ranking.append((weight / -math.log(h / (2**64 - 1)), bucket))
    return sorted(ranking, reverse=True)


def homes(members: list[tuple[str, float]], keys: list[str]) -> list[str]:
    """The first-ranked member of each key."""
    return [rank(key, members)[0].name for key in keys]


@pytest.mark.parametrize("members", [
    [("gke", 50.0), ("ovh2", 50.0), ("hetzner-gesis", 50.0)],
    SKEWED,
    [("a", 0.5), ("b", 3.0), ("c", 1e-3), ("d", 7.25)],
])
def test_rank_equals_the_redirector_formula(members: list[tuple[str, float]]) -> None:
    """Every score and the whole order match today's redirector on 2,000 keys, so switching
    routers keeps every repository on the member that has its image."""
    weights = dict(members)
    for key in KEYS[:2000]:
        expected = redirector_rank(members, key)
        assert [(r.score, r.name) for r in rank(key, members)] == expected
        assert [rendezvous_score(key, n, weights[n]) for _, n in expected] == [
            s for s, _ in expected]


def test_equal_scores_are_ordered_by_name_descending(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties go to the name that sorts last, as the redirector's sorted(..., reverse=True).

    A real tie needs two equal 64-bit hashes, so the score is pinned to provoke one.
    """
    monkeypatch.setattr(placement, "_score", lambda data, weight: 1.0)
    members = [("beta", 1.0), ("alpha", 1.0), ("gamma", 1.0)]
    assert [r.name for r in rank("/build/gh/a/b", members)] == ["gamma", "beta", "alpha"]
    assert [n for _, n in sorted(((1.0, n) for n, _ in members), reverse=True)] == [
        "gamma", "beta", "alpha"]


class _FixedDigest:
    """Stands in for blake2b: the two 64-bit values the plain formula cannot take."""

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __call__(self, data: bytes, *, digest_size: int) -> Any:
        return self

    def digest(self) -> bytes:
        return self.value


@pytest.mark.parametrize(("digest", "score"), [(b"\x00" * 8, 0.0), (b"\xff" * 8, math.inf)])
def test_hash_edge_values_do_not_raise(monkeypatch: pytest.MonkeyPatch, digest: bytes,
                                       score: float) -> None:
    """h = 0 (log 0) and h = 2^64 - 1 (division by zero) give 0 and +inf instead of an error.

    Each has probability 2^-64, so the digest is pinned to reach them.
    """
    monkeypatch.setattr(placement, "blake2b", _FixedDigest(digest))
    assert rendezvous_score("/build/gh/a/b", "m", 5.0) == score
    assert [r.score for r in rank("/build/gh/a/b", [("m", 5.0), ("n", 1.0)])] == [score, score]


def test_weight_zero_is_never_chosen() -> None:
    """A member of weight 0 appears in no ranking and is never picked, by any strategy."""
    members = [*SKEWED, ("idle", 0.0)]
    rng = random.Random(1)
    for key in KEYS[:3000]:
        ranking = order(key, members)
        assert "idle" not in set(ranking)
        candidates = {n: Candidate(n, w) for n, w in members}
        choice = bounded_choice(ranking, candidates, load_factor=1.25)
        assert choice is not None and choice.member != "idle"
        assert random_choice(members, rng) != "idle"
    assert rank("/build/gh/a/b", [("idle", 0.0)]) == ()
    assert random_choice([("idle", 0.0)], rng) is None


def test_shares_follow_weights_within_sampling_noise() -> None:
    """Over 20,000 keys each member's share of homes matches its weight share: the chi-square
    statistic (4 degrees of freedom) is below 18.47, the 0.1 % critical value."""
    counts = Counter(homes(SKEWED, KEYS))
    total_weight = sum(w for _, w in SKEWED)
    chi2 = 0.0
    for name, weight in SKEWED:
        expected = len(KEYS) * weight / total_weight
        chi2 += (counts[name] - expected) ** 2 / expected
    assert chi2 < 18.47, (chi2, counts)


def test_removing_a_member_moves_only_its_keys() -> None:
    """Drain or remove one member: exactly its keys move; every other key stays put."""
    keys = KEYS[:8000]
    before = homes(SKEWED, keys)
    after = homes(SKEWED[1:], keys)
    moved = {k for k, b, a in zip(keys, before, after, strict=True) if b != a}
    assert moved == {k for k, b in zip(keys, before, strict=True) if b == "member-000"}


def test_doubling_a_weight_moves_about_the_theoretical_minimum() -> None:
    """Doubling member-004's weight moves keys only onto it, and about as many as its share
    grows: 2w/(W+w) - w/W of all keys, within four standard deviations."""
    keys = KEYS[:10_000]
    doubled = [*SKEWED[:-1], ("member-004", 20.0)]
    before, after = homes(SKEWED, keys), homes(doubled, keys)
    moves = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert {a for _, a in moves} == {"member-004"}
    w, total = 10.0, sum(x for _, x in SKEWED)
    minimum = 2 * w / (total + w) - w / total
    sigma = math.sqrt(minimum * (1 - minimum) / len(keys))
    assert abs(len(moves) / len(keys) - minimum) < 4 * sigma


names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=8)
federations = st.dictionaries(names, st.floats(min_value=0.0, max_value=100.0), min_size=1,
                              max_size=8)
keys = st.text(min_size=1, max_size=40)
# no per-example deadline: a shared, loaded machine must not turn speed into a failure
properties = settings(max_examples=60, deadline=None)


@properties
@given(federations, keys, st.randoms(use_true_random=False))
def test_rank_ignores_config_order(members: dict[str, float], key: str,
                                   shuffler: random.Random) -> None:
    """The ranking depends on names and weights only, never on the order of the config, and
    holds every member of positive weight exactly once."""
    items = list(members.items())
    shuffled = items[:]
    shuffler.shuffle(shuffled)
    ranking = rank(key, items)
    assert ranking == rank(key, shuffled)
    assert sorted(r.name for r in ranking) == sorted(n for n, w in items if w > 0)


@properties
@given(federations, keys, st.floats(min_value=1.0, max_value=10.0))
def test_raising_a_weight_never_moves_a_key_away_from_that_member(
        members: dict[str, float], key: str, factor: float) -> None:
    """Giving a member more weight can only bring keys to it (slow start relies on this)."""
    items = list(members.items())
    raised_name = items[0][0]
    raised = [(n, w * factor if n == raised_name else w) for n, w in items]
    before, after = rank(key, items), rank(key, raised)
    if before and after and before[0].name != after[0].name:
        assert after[0].name == raised_name
    if before and before[0].name == raised_name:
        assert after[0].name == raised_name


@properties
@given(federations, keys, st.data())
def test_bounded_choice_respects_bounds_and_capacity(members: dict[str, float], key: str,
                                                     data: st.DataObject) -> None:
    """The chosen member is below its bound and capacity, and every member ranked above it is
    not; only when no member is below both does the home member take it ("fallback")."""
    ranking = order(key, list(members.items()))
    loads = {n: data.draw(st.integers(0, 50)) for n in members}
    capacities = {n: data.draw(st.none() | st.integers(0, 60)) for n in members}
    sent = {n: data.draw(st.integers(0, 5)) for n in members}
    candidates = {n: Candidate(n, w, loads[n], capacities[n]) for n, w in members.items()
                  if w > 0}
    choice = bounded_choice(ranking, candidates, load_factor=1.25, sent=sent)
    if not ranking:
        assert choice is None
        return
    assert choice is not None
    load = {n: loads[n] + sent[n] for n in candidates}
    total_weight = sum(c.weight for c in candidates.values())

    def has_room(name: str) -> bool:
        bound = load_bound(load_factor=1.25, total_load=sum(load.values()),
                           weight=candidates[name].weight, total_weight=total_weight)
        cap = capacities[name]
        return load[name] < bound and (cap is None or load[name] < cap)

    names = list(ranking)
    if choice.reason == "fallback":
        assert choice.member == names[0]
        assert not any(has_room(n) for n in names)
    else:
        assert has_room(choice.member)
        assert names.index(choice.member) == choice.position
        assert not any(has_room(n) for n in names[:choice.position])
        assert (choice.reason == "home") == (choice.position == 0)


def test_bounded_choice_home_spill_over_and_fallback() -> None:
    """Below its bound the home member takes the launch; at its bound (here counting the
    launches sent since the last probe) the next member does; with everyone at capacity the
    home member takes it anyway, so a launch is never refused while a member is routable."""
    ranking = order("/build/gh/hot/repo", [("a", 1.0), ("b", 1.0)])
    home, second = ranking[0], ranking[1]
    idle = {n: Candidate(n, 1.0, 0) for n in (home, second)}
    assert bounded_choice(ranking, idle, load_factor=1.25) == placement.Choice(home, "home", 0)
    # bound = ceil(1.25 · (2 + 1) · 1/2) = 2: two launches sent since the probe fill the home
    choice = bounded_choice(ranking, idle, load_factor=1.25, sent={home: 2})
    assert choice == placement.Choice(second, "spill-over", 1)
    full = {n: Candidate(n, 1.0, 5, capacity=5) for n in (home, second)}
    assert bounded_choice(ranking, full, load_factor=1.25) == placement.Choice(home, "fallback", 0)


def test_capacity_binds_before_the_load_bound() -> None:
    """A member below its load bound but at its quota headroom is skipped: hot repositories
    spill before the member fills, not after."""
    ranking = order("/build/gh/hot/repo", [("a", 1.0), ("b", 1.0)])
    home, second = ranking[0], ranking[1]
    # bound = ceil(1.25 · (3 + 2 + 1) / 2) = 4 for both; the home's capacity is 3
    candidates = {home: Candidate(home, 1.0, 3, capacity=3),
                  second: Candidate(second, 1.0, 2, capacity=None)}
    choice = bounded_choice(ranking, candidates, load_factor=1.25)
    assert choice is not None and choice.member == second and choice.reason == "spill-over"


def test_bound_floor_keeps_a_quiet_federation_from_spilling() -> None:
    """With three launches in flight the plain bound spills a repository's next launch;
    a floor keeps it home until the member holds that many launches."""
    ranking = order("/build/gh/org/repo", [("a", 1.0), ("b", 1.0), ("c", 1.0)])
    home = ranking[0]
    idle = {n: Candidate(n, 1.0, load=0, capacity=100) for n in ("a", "b", "c")}
    sent = {home: 3}
    plain = bounded_choice(ranking, idle, load_factor=1.25, sent=sent)
    assert plain is not None and plain.reason == "spill-over"
    floored = bounded_choice(ranking, idle, load_factor=1.25, sent=sent, floor=10)
    assert floored == placement.Choice(home, "home", 0)
    at_floor = bounded_choice(ranking, idle, load_factor=1.25, sent={home: 10}, floor=10)
    assert at_floor is not None and at_floor.reason == "spill-over"


def test_order_is_the_ranking_without_scores() -> None:
    """``order`` (what routing tables memoize) lists exactly ``rank``'s members, in its order."""
    for key in KEYS[:500]:
        assert order(key, SKEWED) == tuple(r.name for r in rank(key, SKEWED))
