"""Member health over real sockets: probing, ejection and restoration, version skew, full
members, readiness, the fallback chain, panic, the UI proxy, and what on-call staff see in
/active_hosts, /metrics and the logs.

Simulated members (``federation.demo``) are driven through their controls; probe intervals
are tiny (tests/conftest.py) and every test waits for conditions, never for fixed times. The
probe pacing itself is tested on virtual time in ``TestDelays``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from federation.config import HealthSettings, Member, VersionPolicy, parse_config
from federation.demo import MemberControls
from federation.drains import FileDrainStore, with_drain
from federation.health import (
    MemberHealth,
    ProbeResult,
    State,
    advance,
    parse_health,
    parse_versions,
)
from federation.probes import (
    ROUND_TICK,
    next_delay,
    probe_delay,
    probe_fetcher,
    probe_member,
    round_start,
    versions_due,
)
from federation.runtime import RouterState
from federation.table import MemberStatus
from tests.conftest import Federation, StartFederation

Samples = dict[str, list[tuple[dict[str, str], float]]]
SSE = "text/event-stream"


async def scrape(fed: Federation) -> Samples:
    """Every sample of the router's /metrics, by sample name."""
    response = await fed.client.get("/metrics")
    assert response.status == 200
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def series(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """The samples of ``name`` whose labels include ``labels``."""
    return [(lab, v) for lab, v in samples.get(name, [])
            if all(lab.get(k) == want for k, want in labels.items())]


async def launches(fed: Federation, n: int, *, tag: str = "r", **headers: str) -> Counter[str]:
    """Send ``n`` launches of different repositories; count where each was redirected."""
    where: Counter[str] = Counter()
    for i in range(n):
        response = await fed.launch(f"/build/gh/org/{tag}{i}/HEAD", Accept=SSE, **headers)
        assert response.status == 307, await response.text()
        where[fed.member_by_url(response.headers["Location"])] += 1
    return where


def requests_to(fed: Federation, member: str, path: str) -> int:
    """How many requests the simulated ``member`` has had for ``path``."""
    return sum(1 for _method, raw, _headers in fed.members[member].requests if raw == path)


async def probed_more(fed: Federation, member: str, rounds: int) -> None:
    """Wait until ``member`` has had ``rounds`` more probe rounds than now."""
    start = fed.state.healths[member].probes
    await fed.wait_for(lambda: fed.state.healths[member].probes >= start + rounds)


def reported_version(fed: Federation, member: str, key: str) -> object:
    """A field of ``member``'s last parsed /versions."""
    versions = fed.state.healths[member].versions
    return versions.raw.get(key) if versions else None


def transitions(logs: list[dict[str, Any]], member: str) -> list[dict[str, Any]]:
    """The "member health changed" events of ``member``."""
    return [e for e in logs if e["event"] == "member health changed" and e["member"] == member]


# -- pacing, on virtual time -----------------------------------------------------------------

def _round(at: float, ok: bool) -> ProbeResult:
    if not ok:
        return ProbeResult(at=at, latency=0.0, error="unreachable")
    report = parse_health(200, b'{"ok": true, "checks": []}')
    return ProbeResult(at=at, latency=0.0, health=report)


class TestVersionsDue:
    SETTINGS = HealthSettings(interval=1, versions_interval=60)
    FETCHED = MemberHealth(state=State.HEALTHY, versions=parse_versions(
        200, b'{"binderhub": "1.0", "builder": "r2d:1"}'), versions_at=100.0)

    def test_a_member_in_rotation_is_asked_once_per_versions_interval(self) -> None:
        """Versions change on deploys only: a member in rotation is asked again once
        ``versions_interval`` has passed since its last answer, not every round."""
        assert not versions_due(self.FETCHED, self.SETTINGS, 159.9, prime=False)
        assert versions_due(self.FETCHED, self.SETTINGS, 160.0, prime=False)

    def test_the_prime_and_members_out_or_unknown_are_asked_every_round(self) -> None:
        """The prime is the reference, and a member out of rotation may be waiting to clear
        a skew: both are asked every round, as is one without any versions yet."""
        assert versions_due(self.FETCHED, self.SETTINGS, 101.0, prime=True)
        for state in (State.UNKNOWN, State.UNHEALTHY):
            assert versions_due(replace(self.FETCHED, state=state), self.SETTINGS, 101.0,
                                prime=False)
        never = replace(self.FETCHED, versions=None, versions_at=None)
        assert versions_due(never, self.SETTINGS, 101.0, prime=False)
        assert versions_due(None, self.SETTINGS, 101.0, prime=False)


class TestDelays:
    SETTINGS = HealthSettings(interval=10, jitter=0, failures_to_eject=2,
                              successes_to_restore=3, max_backoff=60)

    def test_healthy_unknown_and_suspect_members_probe_every_interval(self) -> None:
        """Only ejected members back off; a healthy member with one failure is re-checked
        at the normal pace."""
        rng = random.Random(0)
        suspect = MemberHealth(state=State.HEALTHY, failures=1)
        for health in (None, MemberHealth(), MemberHealth(state=State.HEALTHY), suspect):
            assert probe_delay(health, self.SETTINGS, rng) == 10

    def test_ejected_member_backs_off_exponentially_up_to_the_cap(self) -> None:
        """One interval after ejection, then doubling, capped at max_backoff — also after
        thousands of failures (the exponent must not overflow)."""
        rng = random.Random(0)
        delays = [probe_delay(MemberHealth(state=State.UNHEALTHY, failures=f), self.SETTINGS,
                              rng) for f in (1, 2, 3, 4, 5, 6, 50_000)]
        assert delays == [10, 10, 20, 40, 60, 60, 60]

    def test_recovering_member_is_confirmed_at_the_interval(self) -> None:
        """Once an ejected member passes a round, the rest come every interval."""
        recovering = MemberHealth(state=State.UNHEALTHY, failures=0, successes=1)
        assert probe_delay(recovering, self.SETTINGS, random.Random(0)) == 10

    def test_jitter_spreads_rounds_within_half_the_jitter_each_way(self) -> None:
        """With jitter 0.2 every delay is within ±10 % of the interval, and they differ."""
        settings = HealthSettings(interval=10, jitter=0.2)
        rng = random.Random(7)
        delays = [next_delay(settings, failures=0, healthy=True, rng=rng) for _ in range(500)]
        assert all(9.0 <= d <= 11.0 for d in delays)
        assert max(delays) - min(delays) > 1.0

    @pytest.mark.parametrize(("interval", "tick"), [(10, ROUND_TICK), (1, ROUND_TICK),
                                                   (0.2, 0.01)])
    def test_rounds_start_on_a_shared_grid_at_most_one_tick_late(
        self, interval: float, tick: float,
    ) -> None:
        """Rounds due within one tick start together, on the tick after they are due: the
        grid is 1/20 of the interval, at most ROUND_TICK, so short test intervals keep pace."""
        rng = random.Random(3)
        settings = HealthSettings(interval=interval)
        for _ in range(400):
            now = rng.uniform(0, 1000)
            delay = next_delay(settings, failures=0, healthy=True, rng=rng)
            start = round_start(now, delay, interval)
            assert now + delay - 1e-9 <= start < now + delay + tick + 1e-9
            assert abs(start / tick - round(start / tick)) < 1e-6
        assert round_start(7.0, 0.3 * tick, interval) == round_start(7.0, 0.9 * tick, interval)

    @pytest.mark.parametrize("outage", [25.0, 95.0, 5000.0])
    def test_recovered_member_is_back_within_the_restore_rounds(self, outage: float) -> None:
        """Simulated probe loop (advance + probe_delay on virtual time): a member that goes
        down is out after failures_to_eject rounds; after it recovers it is back exactly
        (successes_to_restore − 1) intervals after the first round that sees it up, and at
        most max_backoff plus that after the moment it recovered."""
        s = self.SETTINGS
        down, up = 100.0, 100.0 + outage
        t, health, rng = 0.0, MemberHealth(), random.Random(1)
        ejected_at = first_up_round = restored_at = None
        while restored_at is None:
            ok = not down <= t < up
            prev = health
            health = advance(prev, _round(t, ok), policy=VersionPolicy.OFF,
                             prime_versions=None, failures_to_eject=s.failures_to_eject,
                             successes_to_restore=s.successes_to_restore)
            if prev.state is State.HEALTHY and health.state is State.UNHEALTHY:
                ejected_at = t
            if t >= up and ok and first_up_round is None:
                first_up_round = t
            if prev.state is State.UNHEALTHY and health.state is State.HEALTHY:
                restored_at = t
            t += probe_delay(health, s, rng)
        assert ejected_at is not None and first_up_round is not None
        assert ejected_at - down < s.failures_to_eject * s.interval
        assert restored_at - first_up_round == (s.successes_to_restore - 1) * s.interval
        assert restored_at - up <= s.max_backoff + (s.successes_to_restore - 1) * s.interval


# -- one probe round -------------------------------------------------------------------------

async def test_a_probe_round_is_one_health_and_one_versions_request(
    start_federation: StartFederation,
) -> None:
    """No retry loop: each round asks /health and /versions once, healthy member or not."""
    fed = await start_federation({"a": MemberControls(), "b": MemberControls(health="503")},
                                 health={"interval": 60})
    for name in ("a", "b"):
        assert fed.state.healths[name].probes == 1
        assert requests_to(fed, name, "/health") == 1
        assert requests_to(fed, name, "/versions") == 1
    assert fed.state.table.by_name["b"].status is MemberStatus.UNHEALTHY


async def test_versions_are_asked_each_round_of_the_prime_and_each_interval_of_others(
    start_federation: StartFederation,
) -> None:
    """With ``versions_interval`` far above the probe interval, a member in rotation is
    asked /versions once while its /health is asked round after round; the prime, the
    reference, every round. A member whose entry changes is asked again at once."""
    fed = await start_federation(["a", "b"], health={"versions_interval": 3600})
    await probed_more(fed, "b", 4)
    assert requests_to(fed, "b", "/health") >= 5
    assert requests_to(fed, "b", "/versions") == 1
    await fed.wait_for(lambda: requests_to(fed, "a", "/versions") >= 5)
    doc = dict(fed.config_doc)
    doc["members"] = [dict(m, weight=m["weight"] + 1) if m["name"] == "b" else m
                      for m in doc["members"]]
    fed.write_config(doc)
    await fed.wait_for(lambda: requests_to(fed, "b", "/versions") == 2)
    await probed_more(fed, "b", 3)
    assert requests_to(fed, "b", "/versions") == 2


async def test_a_skew_is_seen_within_versions_interval_and_cleared_round_by_round(
    start_federation: StartFederation,
) -> None:
    """A member in rotation that deploys other versions is ejected as "versions" once it
    is asked again, and rounds between are judged on the versions it last gave; out of
    rotation it is asked every round, so it rejoins as soon as it matches the prime."""
    fed = await start_federation(["a", "b"], health={"versions_interval": 0.5})
    b = fed.members["b"].controls
    b.binderhub = "9.9.9"
    asked = requests_to(fed, "b", "/versions")
    await fed.wait_status("b", "unhealthy")
    assert fed.state.table.by_name["b"].reason == "versions"
    assert requests_to(fed, "b", "/versions") == asked + 1
    b.binderhub = fed.members["a"].controls.binderhub
    await fed.wait_status("b", "healthy")


async def test_a_cancelled_round_leaves_no_fetch_behind(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """A round cancelled while its member hangs (it left the config) takes both fetches
    down with it: nothing keeps waiting on a member nobody probes."""
    asked: set[str] = set()
    both_asked = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        asked.add(request.path)
        if len(asked) == 2:
            both_asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/health", hang)
    app.router.add_get("/versions", hang)
    server = await aiohttp_server(app)
    member = Member(name="m", url=str(server.make_url("")).rstrip("/"), prime=True)
    async with probe_fetcher() as fetcher:
        round_ = asyncio.create_task(probe_member(fetcher, member, HealthSettings(timeout=30)))
        await asyncio.wait_for(both_asked.wait(), 5)
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks()
                if not t.done() and getattr(t.get_coro(), "__name__", "") == "_answer"]
        assert left == []


async def test_bodies_arriving_in_pieces_are_read_whole_and_capped(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    """A /health sent in several chunks is read to its end (not just the first chunk), and a
    chunked body with no Content-Length is still cut off at max_body_bytes."""
    async def in_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        pieces = [b'{"ok": true, ', b'"checks": []}'] if request.path == "/health" else [
            b"[" + b"0," * 400, b"0]"]
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.02)  # let the client see the first piece on its own
        await response.write_eof()
        return response

    async def versions(request: web.Request) -> web.Response:
        return web.json_response({"binderhub": "1"})

    app = web.Application()
    app.router.add_get("/health", in_pieces)
    app.router.add_get("/big", in_pieces)
    app.router.add_get("/versions", versions)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    settings = HealthSettings(timeout=2, max_body_bytes=256)
    async with probe_fetcher() as fetcher:
        whole = await probe_member(fetcher, Member(name="m", url=url), settings)
        capped = await probe_member(fetcher, Member(name="m", url=url, health=url + "/big"),
                                    settings)
    assert whole.error is None and whole.health is not None and whole.health.ok
    assert capped.error == "answer too large"
    assert capped.versions is not None  # /versions is judged on its own


# -- ejection and restoration ----------------------------------------------------------------

async def test_ejected_after_failures_and_restored_after_successes_logged_once(
    start_federation: StartFederation,
) -> None:
    """A 503 member leaves after failures_to_eject rounds, with the failing check as the
    reason (the 503 body is parsed), and returns after successes_to_restore; each transition
    is logged once, with the reason and the count of rounds that decided it."""
    fed = await start_federation(["a", "b"], health={"failures_to_eject": 3,
                                                     "successes_to_restore": 4})
    with capture_logs() as logs:
        fed.members["b"].controls.health = "503"
        await fed.wait_status("b", "unhealthy")
        view = fed.state.table.by_name["b"]
        assert view.reason == "Docker registry"  # first failing check, as BinderHub lists
        assert fed.state.healths["b"].report is not None
        fed.members["b"].controls.health = "ok"
        await fed.wait_status("b", "healthy")
    events = transitions(logs, "b")
    assert [(e["state"], e["reason"], e["consecutive"]) for e in events] == [
        ("unhealthy", "Docker registry", 3), ("healthy", None, 4)]
    assert events[0]["log_level"] == "warning"


@pytest.mark.parametrize(("mode", "reason"), [
    ("hang", "timeout after 0.3s"),
    ("trickle", "timeout after 0.3s"),
    ("close", "connection closed"),
    ("garbage", "not JSON"),
    ("huge", "answer too large"),
])
async def test_misbehaving_member_is_ejected_with_a_clear_reason(
    start_federation: StartFederation, mode: str, reason: str,
) -> None:
    """Hangs, resets, trickled bytes, non-JSON and oversized answers each eject the member
    with a reason that says which; launches keep flowing to the others."""
    fed = await start_federation(["a", "b", "c"], health={"timeout": 0.3})
    fed.members["b"].controls.health = mode  # type: ignore[assignment]
    await fed.wait_status("b", "unhealthy")
    assert fed.state.table.by_name["b"].reason == reason
    where = await launches(fed, 30)
    assert set(where) == {"a", "c"}


async def test_a_hanging_probe_never_delays_launches(start_federation: StartFederation) -> None:
    """While a probe of a hanging member is in flight (10 s timeout), launches are answered
    at once: the request path never waits on a probe."""
    fed = await start_federation(["a", "b"], health={"timeout": 10, "interval": 0.05})
    fed.members["b"].controls.health = "hang"
    asked = requests_to(fed, "b", "/health")
    await fed.wait_for(lambda: requests_to(fed, "b", "/health") > asked)
    rounds = fed.state.healths["b"].probes
    where = await launches(fed, 40)
    assert sum(where.values()) == 40
    assert fed.state.healths["b"].probes == rounds  # the probe was still hanging throughout


async def test_no_launch_reaches_a_member_after_its_ejection(
    start_federation: StartFederation,
) -> None:
    """Launches sent while a member goes down: once it is ejected, none is redirected to it,
    not even with a sticky cookie naming it."""
    fed = await start_federation(["a", "b", "c"])
    before = await launches(fed, 30, tag="warm")
    assert before["b"] > 0
    fed.members["b"].controls.health = "503"
    sent_after_ejection: Counter[str] = Counter()
    i = 0
    while sum(sent_after_ejection.values()) < 60:
        ejected = fed.state.table.by_name["b"].status is MemberStatus.UNHEALTHY
        response = await fed.launch(f"/build/gh/org/x{i}/HEAD", Accept=SSE)
        i += 1
        if ejected:
            sent_after_ejection[fed.member_by_url(response.headers["Location"])] += 1
    assert "b" not in sent_after_ejection
    cookie = f'host="{fed.members["b"].url}"'
    where = await launches(fed, 10, tag="sticky", Cookie=cookie)
    assert "b" not in where


# -- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "change", "ejected"), [
    ("exact", {"builder": "r2d:other"}, True),
    ("exact", {"binderhub": "2.0.0"}, True),
    ("binderhub", {"builder": "r2d:other"}, False),
    ("binderhub", {"binderhub": "2.0.0"}, True),
    ("off", {"binderhub": "2.0.0", "builder": "r2d:other"}, False),
])
async def test_version_skew_under_each_policy(
    start_federation: StartFederation, policy: str, change: dict[str, str], ejected: bool,
) -> None:
    """A member whose versions drift from the prime's is ejected as "versions" only when the
    policy cares about what changed, and comes back when it matches again."""
    fed = await start_federation(["a", "b"], health={"versions": policy})
    controls = fed.members["b"].controls
    original = {key: getattr(controls, key) for key in change}
    with capture_logs() as logs:
        for key, value in change.items():
            setattr(controls, key, value)
        if ejected:
            await fed.wait_status("b", "unhealthy")
            assert fed.state.table.by_name["b"].reason == "versions"
            for key, value in original.items():
                setattr(controls, key, value)
            await fed.wait_status("b", "healthy")
        else:
            await fed.wait_for(lambda: all(reported_version(fed, "b", key) == value
                                           for key, value in change.items()))
            await probed_more(fed, "b", 3)
            assert fed.state.table.by_name["b"].status is MemberStatus.HEALTHY
    assert len(transitions(logs, "b")) == (2 if ejected else 0)


@pytest.mark.parametrize("prime_trouble", ["503", "health not JSON", "full"])
async def test_prime_versions_are_refreshed_while_the_prime_is_sick_or_full(
    start_federation: StartFederation, prime_trouble: str,
) -> None:
    """The prime's new versions are the reference even while it is out — answering 503, or
    with a /health that cannot be read at all, or full: members on the old version leave,
    members on the new one stay, and a member that upgrades comes back."""
    fed = await start_federation(["a", "b", "c"])
    prime = fed.members["a"].controls
    if prime_trouble == "503":
        prime.health = "503"
    elif prime_trouble == "full":
        prime.extra_pods = prime.quota or 0
    else:  # /health at a page that answers HTML; /versions still works
        doc = dict(fed.config_doc)
        doc["members"] = [dict(m, health=m["url"] + "/not-health") if m["prime"] else m
                          for m in doc["members"]]
        fed.write_config(doc)
    fed.members["c"].controls.binderhub = prime.binderhub = "2.0.0"
    await fed.wait_status("a", "full" if prime_trouble == "full" else "unhealthy")
    await fed.wait_status("b", "unhealthy")
    assert fed.state.table.by_name["b"].reason == "versions"
    assert fed.state.table.by_name["c"].status is MemberStatus.HEALTHY
    fed.members["b"].controls.binderhub = "2.0.0"
    await fed.wait_status("b", "healthy")


# -- full, not sick ---------------------------------------------------------------------------

async def test_full_member_takes_no_launches_but_stays_healthy(
    start_federation: StartFederation,
) -> None:
    """At pods + headroom >= quota a member is full: out of /active_hosts and launches,
    health unchanged (no transition, no hysteresis), and back with its first roomy probe."""
    fed = await start_federation(
        {"a": MemberControls(), "b": MemberControls(quota=20)},
        health={"successes_to_restore": 50}, routing={"pod_headroom": 10})
    with capture_logs() as logs:
        fed.members["b"].controls.extra_pods = 10
        await fed.wait_status("b", "full")
        assert fed.state.healths["b"].state is State.HEALTHY
        hosts = await (await fed.client.get("/active_hosts")).json()
        assert set(hosts["active_hosts"]) == {"a"}
        assert set(await launches(fed, 20)) == {"a"}
        samples = await scrape(fed)
        assert series(samples, "federation_health", member="b") == [
            ({"member": "b", "reason": "Pod quota"}, 0.0)]
        assert series(samples, "federation_health_check", member="b", check="Pod quota")[0][
            1] == 0.0
        fed.members["b"].controls.extra_pods = 9
        await fed.wait_status("b", "healthy")
    assert transitions(logs, "b") == []
    assert [e["event"] for e in logs if e.get("member") == "b"] == [
        "member full, takes no new launches", "member has room again"]


async def test_per_member_fractional_headroom(start_federation: StartFederation) -> None:
    """A member's own ``pod_headroom: 25%`` makes a 40-pod member full at 30 pods, while the
    federation-wide 5 pods still applies to the others."""
    fed = await start_federation(
        {"a": MemberControls(quota=40, extra_pods=29), "b": MemberControls(quota=40,
                                                                        extra_pods=29)},
        routing={"pod_headroom": 5})
    doc = dict(fed.config_doc)
    doc["members"] = [dict(m, pod_headroom="25%") if m["name"] == "b" else m
                      for m in doc["members"]]
    fed.write_config(doc)
    await fed.wait_for(lambda: (m := fed.state.config.member("b")) is not None
                       and m.pod_headroom is not None)
    await probed_more(fed, "b", 1)
    assert fed.state.table.by_name["a"].status is MemberStatus.HEALTHY
    assert fed.state.table.by_name["b"].status is MemberStatus.HEALTHY
    assert fed.state.table.by_name["b"].capacity == 30
    fed.members["b"].controls.extra_pods = 30
    fed.members["a"].controls.extra_pods = 30
    await fed.wait_status("b", "full")
    await probed_more(fed, "a", 1)
    assert fed.state.table.by_name["a"].status is MemberStatus.HEALTHY


# -- start-up ---------------------------------------------------------------------------------

async def test_not_ready_until_every_member_answered_and_unknown_gets_no_launches(
    start_federation: StartFederation,
) -> None:
    """/_router/ready is 503 while one member's first probe is outstanding; launches go
    only to members known healthy; once that probe ends the router is ready."""
    fed = await start_federation(
        {"a": MemberControls(), "b": MemberControls(), "c": MemberControls(health="hang")},
        health={"timeout": 10, "startup_timeout": 60}, wait_ready=False)
    await fed.wait_status("a", "healthy")
    await fed.wait_status("b", "healthy")
    assert (await fed.client.get("/_router/ready")).status == 503
    assert set(await launches(fed, 30)) <= {"a", "b"}
    assert fed.state.table.by_name["c"].status is MemberStatus.UNKNOWN
    await fed.members["c"].stop()  # ends the hanging probe: its first round is done
    await fed.wait_for(lambda: fed.state.ready)
    assert (await fed.client.get("/_router/ready")).status == 200
    await fed.wait_status("c", "unhealthy")


async def test_ready_after_startup_timeout_without_every_answer(
    start_federation: StartFederation,
) -> None:
    """A member that never answers cannot hold readiness hostage past startup_timeout."""
    fed = await start_federation(
        {"a": MemberControls(), "b": MemberControls(health="hang")},
        health={"timeout": 10, "startup_timeout": 0.2}, wait_ready=False)

    async def ready() -> int:
        return (await fed.client.get("/_router/ready")).status

    statuses = [await ready()]
    while statuses[-1] != 200:
        await asyncio.sleep(0.01)
        statuses.append(await ready())
    assert fed.state.healths.get("b", MemberHealth()).probes == 0
    assert set(statuses) <= {200, 503}


async def test_before_any_answer_launches_follow_the_fallback_to_the_prime(
    start_federation: StartFederation,
) -> None:
    """No member known healthy while the prime's first probe is outstanding: launches follow
    the fallback to the prime, never to the member known sick."""
    fed = await start_federation(
        {"a": MemberControls(health="hang"), "b": MemberControls(health="503")},
        health={"timeout": 10}, wait_ready=False)
    await fed.wait_status("b", "unhealthy")
    assert set(await launches(fed, 10)) == {"a"}
    assert fed.state.table.by_name["a"].status is MemberStatus.UNKNOWN
    samples = await scrape(fed)
    assert series(samples, "federation_redirect_count", member="a", reason="fallback")[0][
        1] == 10


def test_startup_timeout_on_an_injected_clock() -> None:
    """Readiness turns true when the start-up timeout passes on the router's clock, and
    stays true."""
    now = [100.0]
    config = parse_config({"members": [{"name": "a", "url": "http://127.0.0.1:9", "prime": True}],
                           "health": {"startup_timeout": 15}})
    state = RouterState(config, clock=lambda: now[0])
    assert not state.ready
    now[0] = 114.9
    assert not state.ready
    now[0] = 115.0
    assert state.ready
    now[0] = 1.0
    assert state.ready


# -- fallback chain, panic --------------------------------------------------------------------

async def test_fallback_chain_full_member_then_prime_then_503(
    start_federation: StartFederation,
) -> None:
    """Nothing routable: the full member with most room; no full member: the prime, sick or
    not; prime drained: 503 with Retry-After, as HTML, JSON or an event stream. Each change
    of last resort is logged as an error."""
    fed = await start_federation(["a", "b", "c"])
    with capture_logs() as logs:
        await _walk_the_fallback_chain(fed)
    last_resorts = [e["last_resort"] for e in logs
                    if e["event"] == "no member is fit to take launches; using the last resort"]
    assert last_resorts[0] == "b" and last_resorts[-2:] == ["a", "none, launches get 503"]


async def _walk_the_fallback_chain(fed: Federation) -> None:
    fed.members["a"].controls.health = "503"
    fed.members["b"].controls.extra_pods = 91  # room 9
    fed.members["c"].controls.extra_pods = 95  # room 5
    await fed.wait_status("a", "unhealthy")
    await fed.wait_status("b", "full")
    await fed.wait_status("c", "full")
    assert set(await launches(fed, 10, tag="full")) == {"b"}

    fed.members["b"].controls.health = fed.members["c"].controls.health = "503"
    await fed.wait_status("b", "unhealthy")
    await fed.wait_status("c", "unhealthy")
    assert set(await launches(fed, 10, tag="prime")) == {"a"}
    samples = await scrape(fed)
    assert series(samples, "federation_redirect_count", member="a", reason="fallback")[0][
        1] == 10

    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), "a", reason="upgrade", by="test"))
    await fed.wait_status("a", "drained")
    path = "/build/gh/org/repo/HEAD"
    page = await fed.launch(path, Accept="text/html,application/xhtml+xml")
    assert page.status == 503 and page.content_type == "text/html"
    assert page.headers["Retry-After"].isdigit()
    assert "No member of the federation can take launches" in await page.text()
    api = await fed.launch(path, Accept="application/json")
    assert api.status == 503 and (await api.json())["status"] == 503
    assert "Retry-After" in api.headers
    spa = await fed.launch(path, Accept=SSE)
    assert spa.status == 503 and spa.content_type == SSE
    assert '"phase": "failed"' in await spa.text()


async def test_panic_routes_over_all_members_and_says_so_loudly(
    start_federation: StartFederation,
) -> None:
    """Below panic_threshold of routable weight, launches ignore health (reason "panic"),
    logged as an error once and shown in /metrics; it ends when members return."""
    fed = await start_federation(["a", "b", "c"], routing={"panic_threshold": 0.5})
    with capture_logs() as logs:
        fed.members["b"].controls.health = fed.members["c"].controls.health = "503"
        await fed.wait_for(lambda: fed.state.table.panic)
        assert {m.name for m in fed.state.table.members
                if m.status is MemberStatus.UNHEALTHY} == {"b", "c"}
        where = await launches(fed, 60)
        assert set(where) == {"a", "b", "c"}
        samples = await scrape(fed)
        assert series(samples, "federation_panic") == [({}, 1.0)]
        panic_redirects = sum(v for _l, v in series(samples, "federation_redirect_count",
                                                     reason="panic"))
        assert panic_redirects == 60
        fed.members["b"].controls.health = fed.members["c"].controls.health = "ok"
        await fed.wait_for(lambda: not fed.state.table.panic)
    loud = [e for e in logs if e["event"].startswith("PANIC")]
    assert len(loud) == 1 and loud[0]["log_level"] == "error"
    assert any(e["event"] == "panic over: routing by health again" for e in logs)


# -- the UI proxy -----------------------------------------------------------------------------

async def test_ui_proxy_moves_off_a_sick_prime_to_the_heaviest_healthy_member_and_back(
    start_federation: StartFederation,
) -> None:
    """Pages are served by the prime while it is healthy, else by the healthy member with the
    highest weight; when the prime recovers the UI returns to it."""
    fed = await start_federation(["a", "b", "c"], weights={"a": 10, "b": 20, "c": 30})

    async def page_from() -> str:
        response = await fed.client.get("/about")
        assert response.status == 200
        text = await response.text()
        return next(n for n in fed.members if f"(simulated member {n})" in text)

    assert await page_from() == "a"
    fed.members["a"].controls.health = "503"
    await fed.wait_status("a", "unhealthy")
    assert await page_from() == "c"
    fed.members["c"].controls.health = "503"
    await fed.wait_status("c", "unhealthy")
    assert await page_from() == "b"
    fed.members["a"].controls.health = "ok"
    await fed.wait_status("a", "healthy")
    assert await page_from() == "a"


# -- what on-call staff see -------------------------------------------------------------------

async def test_ejected_member_shows_its_reason_in_active_hosts_status_and_metrics(
    start_federation: StartFederation,
) -> None:
    """Ejected: gone from /active_hosts, reason in /_router/status, one federation_health
    series (0, the failing check) and the failing checks at 0; restored: one series again
    (1, reason ""); probe outcomes and durations are counted."""
    fed = await start_federation(["a", "b"])
    fed.members["b"].controls.health = "503"
    await fed.wait_status("b", "unhealthy")
    hosts = await (await fed.client.get("/active_hosts")).json()
    assert set(hosts["active_hosts"]) == {"a"}
    status = await (await fed.client.get("/_router/status")).json()
    b = next(m for m in status["members"] if m["name"] == "b")
    assert (b["state"], b["reason"]) == ("unhealthy", "Docker registry")
    samples = await scrape(fed)
    assert series(samples, "federation_health", member="b") == [
        ({"member": "b", "reason": "Docker registry"}, 0.0)]
    checks = {lab["check"]: v for lab, v in series(samples, "federation_health_check",
                                                   member="b")}
    assert checks == {"Docker registry": 0.0, "JupyterHub API": 0.0, "Pod quota": 1.0,
                      "versions": 1.0}
    assert series(samples, "federation_probes_total", member="b", outcome="unhealthy")[0][
        1] >= 2
    assert series(samples, "federation_probe_duration_seconds_count", member="b")[0][1] >= 3

    fed.members["b"].controls.health = "ok"
    await fed.wait_status("b", "healthy")
    samples = await scrape(fed)
    assert series(samples, "federation_health", member="b") == [
        ({"member": "b", "reason": ""}, 1.0)]
    assert series(samples, "federation_member_state", member="b") == [
        ({"member": "b", "state": "healthy"}, 1.0)]


async def test_redirect_count_is_a_counter_per_member_and_reason(
    start_federation: StartFederation,
) -> None:
    """federation_redirect_count keeps today's name and labels and counts every redirect,
    equal to the federation_redirects_total counter."""
    fed = await start_federation(["a", "b"])
    where = await launches(fed, 25)
    samples = await scrape(fed)

    def per_member(name: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for labels, value in series(samples, name):
            assert labels["reason"] in ("load_balancer", "spill-over")
            counts[labels["member"]] += int(value)
        return counts

    assert per_member("federation_redirect_count") == per_member(
        "federation_redirects_total") == where


async def test_removed_member_leaves_no_series_behind(
    start_federation: StartFederation,
) -> None:
    """A member dropped from the config disappears from every health and probe series."""
    fed = await start_federation(["a", "b", "c"])
    await probed_more(fed, "c", 2)
    assert series(await scrape(fed), "federation_probes_total", member="c")
    doc = dict(fed.config_doc)
    doc["members"] = [m for m in doc["members"] if m["name"] != "c"]
    fed.write_config(doc)
    await fed.wait_for(lambda: fed.state.config.member("c") is None)
    samples = await scrape(fed)
    left = [(name, lab) for name, rows in samples.items() for lab, _v in rows
            if lab.get("member") == "c"]
    assert left == []
    assert series(samples, "federation_probes_total", member="a")
