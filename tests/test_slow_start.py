"""Effective weights: slow start of members entering rotation, and capacity-derived weights.

Time is a fake clock handed to ``RouterState(clock=)`` and ``build_table(now=)``: ramps are
checked at chosen instants, never by sleeping.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from federation.config import Config, parse_config
from federation.drains import Drain
from federation.health import MemberHealth, ProbeResult, parse_health, parse_versions
from federation.runtime import RouterState
from federation.table import SLOW_START_FLOOR, build_table

VERSIONS = json.dumps({"binderhub": "1.0.0", "builder": "r2d:2026.11.0"}).encode()
KEYS = [f"/build/gh/org{i % 31}/repo{i}" for i in range(3000)]


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(members: dict[str, float], **routing: Any) -> Config:
    """A federation of ``name: weight`` members (the first is prime), versions not compared."""
    routing_doc: dict[str, Any] = {"slow_start": 300, **routing}
    return parse_config({
        "routing": routing_doc,
        "health": {"versions": "off", "failures_to_eject": 1, "successes_to_restore": 1},
        "members": [{"name": n, "url": f"http://{n}.invalid", "weight": w, "prime": i == 0}
                    for i, (n, w) in enumerate(members.items())],
    })


def probe(at: float, *, ok: bool = True, pods: int = 0, quota: int | None = 100) -> ProbeResult:
    """One probe round as BinderHub would answer it."""
    body = {"ok": ok, "checks": [
        {"service": "JupyterHub API", "ok": ok},
        {"service": "Pod quota", "ok": True, "_ignore_failure": True, "total_pods": pods,
         "user_pods": pods, "build_pods": 0, "quota": quota}]}
    return ProbeResult(at=at, latency=0.01,
                       health=parse_health(200 if ok else 503, json.dumps(body).encode()),
                       versions=parse_versions(200, VERSIONS))


def healthy(quota: int | None = 100, pods: int = 0) -> MemberHealth:
    """What the runtime concludes from one good probe."""
    state = RouterState(config({"x": 1}))
    state.apply_probe("x", probe(0.0, pods=pods, quota=quota))
    return state.healths["x"]


def started(members: dict[str, float], clock: Clock, **routing: Any) -> RouterState:
    """A router whose members all answered their first probe: start-up is over."""
    state = RouterState(config(members, **routing), clock=clock)
    for name in members:
        state.apply_probe(name, probe(clock.now))
    assert state.ready
    return state


def weight(state: RouterState, name: str) -> float:
    """The effective weight placement uses now."""
    return state.table.by_name[name].effective_weight


def test_ramp_is_linear_from_the_floor_to_full_weight() -> None:
    """A member that entered rotation at t=100 with slow_start 300 weighs 10 % at once, 55 %
    half-way, and all of its weight from t=400 on."""
    cfg = config({"a": 40, "b": 40})
    healths = {"a": healthy(), "b": healthy()}

    def b_at(now: float) -> float:
        table = build_table(cfg, healths, {}, now=now, routable_since={"b": 100.0})
        return table.by_name["b"].effective_weight

    assert b_at(100.0) == pytest.approx(40 * SLOW_START_FLOOR)
    assert b_at(250.0) == pytest.approx(40 * (SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) / 2))
    assert b_at(400.0) == 40
    assert b_at(99.0) == pytest.approx(40 * SLOW_START_FLOOR)  # clock before entry: floor
    unramped = build_table(cfg, healths, {}, now=100.0, routable_since={"b": 100.0})
    assert unramped.by_name["a"].effective_weight == 40


def test_members_in_rotation_at_start_up_take_full_weight() -> None:
    """Start-up is not a join: the first probe round puts every member at its full weight."""
    clock = Clock()
    state = started({"a": 40, "b": 20}, clock)
    assert (weight(state, "a"), weight(state, "b")) == (40, 20)
    assert not state.ramping()


def test_recovered_member_ramps_then_reaches_full_weight() -> None:
    """A member back from failure ramps; the refresh ticker's rebuild after the window gives
    it its full weight, and only then does ``ramping()`` turn false."""
    clock = Clock()
    state = started({"a": 40, "b": 40}, clock)
    clock.now += 5
    state.apply_probe("b", probe(clock.now, ok=False))
    assert state.table.by_name["b"].status.value == "unhealthy"
    clock.now += 5
    state.apply_probe("b", probe(clock.now))
    assert weight(state, "b") == pytest.approx(4.0)
    assert state.ramping()
    clock.now += 150
    state.refresh()
    assert weight(state, "b") == pytest.approx(40 * 0.55)
    clock.now += 151
    assert state.ramping()  # the window is over, but the table still has the last ramp step
    state.refresh()
    assert weight(state, "b") == 40
    assert not state.ramping()


def test_undrained_member_ramps() -> None:
    """Undraining puts a member back at its floor weight, not straight into full traffic."""
    clock = Clock()
    state = started({"a": 40, "b": 40}, clock)
    state.apply_drains({"b": Drain("b", "maintenance", by="alice")})
    assert state.table.by_name["b"].status.value == "drained"
    clock.now += 60
    state.apply_drains({})
    assert weight(state, "b") == pytest.approx(4.0)


def test_member_added_to_the_config_ramps_after_its_first_probe() -> None:
    """A member that joins by a config change starts at the floor once it is found healthy."""
    clock = Clock()
    state = started({"a": 40}, clock)
    state.apply_config(config({"a": 40, "c": 40}))
    clock.now += 1
    state.apply_probe("c", probe(clock.now))
    assert weight(state, "c") == pytest.approx(4.0)
    assert weight(state, "a") == 40


def test_full_member_with_room_again_does_not_ramp() -> None:
    """A member that was only full has warm caches: when pods drop it returns at full weight."""
    clock = Clock()
    state = started({"a": 40, "b": 40}, clock)
    clock.now += 10
    state.apply_probe("b", probe(clock.now, pods=95, quota=100))  # headroom 10: full at 90
    assert state.table.by_name["b"].status.value == "full"
    clock.now += 10
    state.apply_probe("b", probe(clock.now, pods=20, quota=100))
    assert state.table.by_name["b"].status.value == "healthy"
    assert weight(state, "b") == 40
    assert not state.ramping()


def test_slow_start_moves_repositories_to_the_member_gradually() -> None:
    """During the ramp the member's repositories only grow, from few to its full share, so
    its cold builds arrive a few at a time (rendezvous moves keys onto a gaining member)."""
    cfg = config({"a": 40, "b": 40, "c": 40})
    healths = {n: healthy() for n in ("a", "b", "c")}
    owned = []
    for now in (0.0, 75.0, 150.0, 225.0, 300.0):
        table = build_table(cfg, healths, {}, now=now, routable_since={"c": 0.0})
        owned.append({k for k in KEYS if table.ranking(k)[0] == "c"})
    assert all(before < after for before, after in itertools.pairwise(owned))
    assert len(owned[0]) < 0.06 * len(KEYS)  # weight 4 of 84: about 5 %
    assert len(owned[-1]) == pytest.approx(len(KEYS) / 3, rel=0.1)


def test_capacity_weights_are_the_pods_a_member_can_take() -> None:
    """weights: capacity turns reported quotas 300/180/60 into 290/170/50 with headroom 10,
    whatever the configured weights say."""
    cfg = config({"gke": 50, "gesis": 50, "ovh": 50}, weights="capacity")
    healths = {"gke": healthy(300), "gesis": healthy(180), "ovh": healthy(60)}
    table = build_table(cfg, healths, {}, now=0.0)
    assert [table.by_name[n].effective_weight for n in ("gke", "gesis", "ovh")] == [290, 170, 50]


def test_capacity_weights_fall_back_to_configured_weights_in_pods() -> None:
    """A member that reports no quota keeps its configured weight, converted to pods at the
    rate of the members that do (460 pods for weight 100 → weight 25 is 115 pods); weight 0
    stays 0, and slow start scales the result."""
    cfg = config({"gke": 50, "gesis": 50, "noquota": 25, "idle": 0}, weights="capacity")
    healths = {"gke": healthy(300), "gesis": healthy(180), "noquota": healthy(None),
               "idle": healthy(100)}
    table = build_table(cfg, healths, {}, now=0.0)
    assert table.by_name["noquota"].effective_weight == pytest.approx(115)
    assert table.by_name["idle"].effective_weight == 0
    ramping = build_table(cfg, healths, {}, now=0.0, routable_since={"gesis": 0.0})
    assert ramping.by_name["gesis"].effective_weight == pytest.approx(170 * SLOW_START_FLOOR)


def test_configured_weights_ignore_quotas() -> None:
    """With the default weights: configured, reported quotas do not change shares."""
    cfg = config({"gke": 50, "ovh": 50})
    table = build_table(cfg, {"gke": healthy(300), "ovh": healthy(60)}, {}, now=0.0)
    assert [m.effective_weight for m in table.members] == [50, 50]
