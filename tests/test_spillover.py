"""Bounded loads over real sockets: a hot repository spills over and comes back.

The simulated members report their pods in /health like BinderHub; the router adds the
launches it sent each member since that report. Tests turn the members' pod counts and
quotas, or let the router's own count grow, and watch where the 307s point.
"""

from __future__ import annotations

import asyncio
from itertools import groupby, pairwise

from aiohttp import ClientSession

from federation.demo import MemberControls
from federation.health import ProbeResult
from federation.launch import parse_launch
from federation.runtime import COALESCE_SECONDS, RouterState
from federation.table import POD_COUNT_CACHE, MemberStatus, SentLaunches, pod_count_max_age
from tests.conftest import Federation, StartFederation
from tests.test_slow_start import config, probe

SLOW_PROBES = {"interval": 30}  # after the first round, no probe interrupts the test
NEW_COUNT = COALESCE_SECONDS + 5  # seconds a new pod count may take to reach the table


def hot_repository(fed: Federation, order: list[str]) -> str:
    """A launch path whose repository ranks the members in exactly ``order``."""
    for i in range(10_000):
        path = f"/build/gh/hot-org/repo{i}/HEAD"
        ranking = fed.state.table.ranking(parse_launch(path).key)
        if list(ranking) == order:
            return path
    raise AssertionError(f"no repository ranks {order}")


async def member_of(fed: Federation, path: str) -> str:
    """Launch ``path`` once and return the member the 307 points at."""
    response = await fed.launch(path)
    assert response.status == 307
    return fed.member_by_url(response.headers["Location"])


async def redirects(fed: Federation, member: str, reason: str) -> float:
    """The router's ``federation_redirects_total`` for one member and reason."""
    async with ClientSession() as session, session.get(fed.client.make_url("/metrics")) as r:
        text = await r.text()
    prefix = f'federation_redirects_total{{member="{member}",reason="{reason}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines()
                 if line.startswith(prefix)), 0.0)


async def test_hot_repository_spills_at_its_bound_and_comes_back(
    start_federation: StartFederation,
) -> None:
    """When the home member's reported pods pass its bound ceil(1.25·(L+1)·w/W), launches go
    to the second-ranked member and are counted as spill-overs; once its pods drop, the
    repository goes home again."""
    fed = await start_federation(["a", "b", "c"], weights={"a": 10, "b": 10, "c": 10},
                                 routing={"strategy": "bounded"})
    path = hot_repository(fed, ["a", "b", "c"])
    assert await member_of(fed, path) == "a"
    fed.members["a"].controls.extra_pods = 30  # bound for a: ceil(1.25 · 31 / 3) = 13
    # a count that only moves numbers reaches the table within COALESCE_SECONDS
    await fed.wait_for(lambda: fed.state.table.by_name["a"].pods == 30, timeout=NEW_COUNT)
    assert [await member_of(fed, path) for _ in range(3)] == ["b", "b", "b"]
    assert await redirects(fed, "b", "spill-over") == 3
    fed.members["a"].controls.extra_pods = 0
    await fed.wait_for(lambda: fed.state.table.by_name["a"].pods == 0, timeout=NEW_COUNT)
    assert await member_of(fed, path) == "a"
    assert await redirects(fed, "a", "load_balancer") == 2


async def test_launches_count_until_a_member_reports_a_new_pod_count(
    start_federation: StartFederation,
) -> None:
    """Between two probes the router counts its own redirects: with two equal members the
    third launch in a row spills (bound ceil(1.25·3/2) = 2). BinderHub answers /health from
    a pod count it takes at most once a minute, so a probe reporting the same count says
    nothing of those launches: they still count. A new count was taken after the probe
    before it, so it includes the launches sent before that probe, and only those go."""
    fed = await start_federation(["a", "b"], weights={"a": 10, "b": 10}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b"])
    assert [await member_of(fed, path) for _ in range(3)] == ["a", "a", "b"]
    assert fed.state.sent == SentLaunches({"a": 2, "b": 1})

    async def probe_round(timeout: float) -> None:
        """A changed probe setting probes every member at once."""
        before = {n: fed.state.healths[n].probes for n in ("a", "b")}
        fed.write_config({**fed.config_doc,
                          "health": {**fed.config_doc["health"], "timeout": timeout}})
        await fed.wait_for(lambda: all(fed.state.healths[n].probes > before[n] for n in before),
                           what="a new probe round")

    await probe_round(0.4)
    assert fed.state.sent == SentLaunches({"a": 2, "b": 1})  # the same counts as before
    assert await member_of(fed, path) == "a"  # bound ceil(1.25·4/2) = 3
    fed.members["a"].controls.extra_pods = 3  # its three launches are running now
    await probe_round(0.5)
    await fed.wait_for(lambda: fed.state.table.by_name["a"].pods == 3, timeout=NEW_COUNT)
    assert fed.state.sent == SentLaunches({"a": 1, "b": 1})  # sent after the round at 0.4


async def test_launches_sent_while_a_new_pod_count_waits_for_the_table_are_counted_once() -> None:
    """A probe's new pod count reaches the table up to ``COALESCE_SECONDS`` later. Until
    then the old count plus every launch sent holds; after, the new count plus only the
    launches it is not sure to include (those sent since the probe before it)."""
    state = RouterState(config({"a": 10, "b": 10}, slow_start=0))
    for name in ("a", "b"):
        state.apply_probe(name, probe(0.0, quota=1000))
    state.sent.add("a")
    state.sent.add("a")
    state.apply_probe("a", probe(1.0, quota=1000))  # BinderHub's count, kept: still 0
    state.sent.add("a")
    state.apply_probe("a", probe(2.0, pods=5, quota=1000))  # taken after 1.0: two are in the 5
    state.sent.add("a")
    assert state.table.by_name["a"].pods == 0
    assert state.sent.counts["a"] == 4 and state.sent.total == 4
    await asyncio.sleep(COALESCE_SECONDS * 1.5)
    assert state.table.by_name["a"].pods == 5
    assert state.sent.counts["a"] == 2 and state.sent.total == 2


async def test_a_member_that_reports_itself_full_leaves_rotation_at_once() -> None:
    """Counts that only move numbers wait up to ``COALESCE_SECONDS`` for the table; one that
    makes a member full (quota 100 less the default headroom of 10: 90 pods) does not, nor
    one that gives it room again: launches must stop going to a full member at once."""
    state = RouterState(config({"a": 10, "b": 10}, slow_start=0))
    for name in ("a", "b"):
        state.apply_probe(name, probe(0.0, pods=10))
    state.apply_probe("a", probe(1.0, pods=89))
    assert state.table.by_name["a"].pods == 10  # a number moved: it waits
    state.apply_probe("a", probe(2.0, pods=90))
    assert state.table.by_name["a"].status is MemberStatus.FULL
    assert [m.name for m in state.table.routable] == ["b"]
    state.apply_probe("a", probe(3.0, pods=95))
    state.apply_probe("a", probe(4.0, pods=60))
    assert state.table.by_name["a"].status is MemberStatus.HEALTHY
    assert state.table.by_name["a"].pods == 60


def test_an_unchanged_pod_count_includes_launches_once_it_must_have_been_taken_again() -> None:
    """A count reported unchanged for a minute and two probe intervals (80 s here) was taken
    again meanwhile, whatever it says: the launches sent before the last point known to be
    counted (the first probe, then every 80 s of the same count) are dropped, so a launch
    nobody followed counts for at most 160 s."""
    state = RouterState(config({"a": 10, "b": 10}, slow_start=0))
    max_age = pod_count_max_age(state.config.health.interval)
    assert max_age == POD_COUNT_CACHE + 2 * state.config.health.interval == 80
    state.apply_probe("a", probe(0.0))
    state.sent.add("a")
    state.sent.add("a")
    state.apply_probe("a", probe(max_age - 1))
    assert state.sent.counts["a"] == 2
    state.apply_probe("a", probe(max_age))  # the count at 0.0 had none of them
    assert state.sent.counts["a"] == 2
    state.sent.add("a")
    state.apply_probe("a", probe(2 * max_age))  # counted again since ``max_age``: two are in
    assert state.sent.counts["a"] == 1 and state.sent.total == 1


def test_a_failed_probe_drops_no_launch() -> None:
    """A probe that got no /health reports no count, so it includes no launch."""
    state = RouterState(config({"a": 10, "b": 10}, slow_start=0))
    state.apply_probe("a", probe(0.0))
    state.sent.add("a")
    state.apply_probe("a", probe(1.0))
    state.apply_probe("a", ProbeResult(at=2.0, latency=5.0, error="timeout after 5s"))
    state.apply_probe("a", ProbeResult(at=3.0, latency=5.0, error="timeout after 5s"))
    assert state.sent.counts["a"] == 1


async def test_member_at_its_quota_headroom_spills_below_its_bound(
    start_federation: StartFederation,
) -> None:
    """A heavy member far below its load bound still takes no launch that would put it at
    its quota minus headroom (quota 20, headroom 10: room for one more at 9 pods)."""
    fed = await start_federation(
        {"a": MemberControls(quota=20, extra_pods=9), "b": MemberControls(quota=1000)},
        weights={"a": 100, "b": 10}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b"])
    assert await member_of(fed, path) == "a"
    assert await member_of(fed, path) == "b"
    assert await redirects(fed, "b", "spill-over") == 1


async def test_rendezvous_strategy_keeps_a_hot_repository_home(
    start_federation: StartFederation,
) -> None:
    """Plain rendezvous ignores loads: the home member takes the repository until its probe
    says it is full, which is the hot spot bounded loads exist to avoid."""
    fed = await start_federation(["a", "b"], weights={"a": 10, "b": 10},
                                 routing={"strategy": "rendezvous"}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b"])
    assert [await member_of(fed, path) for _ in range(5)] == ["a"] * 5


async def test_each_member_a_target_is_sent_elsewhere_gets_its_own_redirect(
    start_federation: StartFederation,
) -> None:
    """One target sent to three members in turn — home, a sticky cookie's member, a
    spill-over — gets each member's own Location and cookie, whatever the router keeps of
    the target's home redirect."""
    fed = await start_federation(["a", "b", "c"], weights={"a": 10, "b": 10, "c": 10},
                                 health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b", "c"])
    assert await member_of(fed, path) == "a"
    sticky = await fed.launch(path, Cookie=f'host="{fed.members["c"].url}"')
    assert fed.member_by_url(sticky.headers["Location"]) == "c"
    # bound ceil(1.25·(L+1)/3): a takes the third launch (1 < 2), not the fourth (2 ≥ 2)
    assert [await member_of(fed, path) for _ in range(2)] == ["a", "b"]
    for _ in range(2):
        response = await fed.launch(path, Cookie=f'host="{fed.members["c"].url}"')
        assert response.headers["Location"] == sticky.headers["Location"]
        assert f'host="{fed.members["c"].url}"' in response.headers["Set-Cookie"]


async def test_a_target_follows_its_spill_over_when_that_member_fills_up(
    start_federation: StartFederation,
) -> None:
    """The router keeps a target's last spill-over redirect, but never past its use: when
    the member it spilled to has no room left, the next launch goes further down the
    ranking, with that member's own Location and cookie."""
    fed = await start_federation(
        {"a": MemberControls(extra_pods=30),  # far over its bound ceil(1.25·31/3) = 13
         "b": MemberControls(quota=12),  # headroom 10: room for two launches
         "c": MemberControls()},
        weights={"a": 10, "b": 10, "c": 10}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b", "c"])
    responses = [await fed.launch(path) for _ in range(4)]
    assert [fed.member_by_url(r.headers["Location"]) for r in responses] == ["b", "b", "c", "c"]
    third = responses[2]
    assert third.headers["Location"].startswith(fed.members["c"].url + "/build/")
    assert f'host="{fed.members["c"].url}"' in third.headers["Set-Cookie"]
    assert await redirects(fed, "b", "spill-over") == 2
    assert await redirects(fed, "c", "spill-over") == 2


async def test_spill_overs_that_alternate_between_two_members_each_get_their_own_redirect(
    start_federation: StartFederation,
) -> None:
    """With its home over its bound, a target's launches fill the second-ranked member up
    to that member's own bound, which grows with every launch, so they go back and forth
    between the second and the third. Each launch goes where ``route`` decides for the
    same counts, with that member's Location and cookie, though the router keeps only the
    target's last spill-over redirect."""
    fed = await start_federation(
        {"a": MemberControls(extra_pods=30), "b": MemberControls(), "c": MemberControls()},
        weights={"a": 10, "b": 10, "c": 10}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b", "c"])
    launch = parse_launch(path)
    got = []
    for _ in range(40):
        decided = fed.state.table.route(launch, sent=fed.state.sent)
        assert decided is not None
        response = await fed.launch(path)
        name = fed.member_by_url(response.headers["Location"])
        assert name == decided.member.name
        assert f'host="{fed.members[name].url}"' in response.headers["Set-Cookie"]
        got.append(name)
    runs = [name for name, _ in groupby(got)]
    back_to_b = sum(1 for first, then in pairwise(runs) if (first, then) == ("c", "b"))
    assert got[0] == "b" and back_to_b >= 2, got  # each return replaced c's redirect
    assert await redirects(fed, "b", "spill-over") + await redirects(
        fed, "c", "spill-over") == 40


async def test_a_spill_over_walks_past_the_members_it_tries_first(
    start_federation: StartFederation,
) -> None:
    """The launch handler tries only the first few members below a target's home; when
    they are all over their bounds, the launch still goes to the first member further
    down the ranking with room, as a spill-over."""
    over = MemberControls(extra_pods=30)  # bound ceil(1.25·121·10/80) = 19 for a to d
    fed = await start_federation(
        {"a": over, "b": over, "c": over, "d": over, "e": MemberControls()},
        weights={"a": 10, "b": 10, "c": 10, "d": 10, "e": 40}, health=SLOW_PROBES)
    path = hot_repository(fed, ["a", "b", "c", "d", "e"])
    assert [await member_of(fed, path) for _ in range(2)] == ["e", "e"]
    assert await redirects(fed, "e", "spill-over") == 2


async def test_a_member_can_count_its_pods_once_a_minute_as_binderhub_does(
    start_federation: StartFederation,
) -> None:
    """``pod_count_every`` makes a simulated member answer /health from its last count until
    it counts again, as BinderHub's ``at_most_every`` does (the demo's members count so)."""
    fed = await start_federation(["a", "b"], weights={"a": 10, "b": 10}, health=SLOW_PROBES)
    member = fed.members["a"]
    member.controls.pod_count_every = 3600

    async def pods() -> int:
        async with ClientSession() as session, session.get(f"{member.url}/health") as r:
            body = await r.json()
        return next(c["total_pods"] for c in body["checks"] if c["service"] == "Pod quota")

    before = await pods()
    member.controls.extra_pods = 30
    assert await pods() == before  # the count of the router's first probe, an hour to go
    member.controls.pod_count_every = 0
    assert await pods() == before + 30
