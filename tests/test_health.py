"""Pure unit tests: parsing BinderHub's /health and /versions, the hysteresis in ``advance``,
the version policies, and how ``build_table`` turns health into status, fallback, panic and
the UI member. No sockets, no clocks: every input is built here."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.config import Config, VersionPolicy, parse_config
from federation.drains import Drain
from federation.errors import ProbeError
from federation.health import (
    MemberHealth,
    ProbeResult,
    State,
    Versions,
    advance,
    parse_health,
    parse_versions,
    verdict,
    versions_match,
)
from federation.launch import parse_launch
from federation.table import MemberStatus, RoutingTable, build_table

# Bodies shaped like the real ones in binderhub-protocol.md §3.1 and §3.2.
HEALTHY = {"ok": True, "checks": [
    {"service": "Docker registry", "ok": True},
    {"service": "JupyterHub API", "ok": True},
    {"service": "Pod quota", "total_pods": 188, "build_pods": 1, "user_pods": 187,
     "quota": 300, "ok": True, "_ignore_failure": True}]}
HUB_DOWN = {"ok": False, "checks": [
    {"service": "Docker registry", "ok": True},
    {"service": "JupyterHub API", "ok": False},
    {"service": "Pod quota", "total_pods": 170, "build_pods": 4, "user_pods": 166,
     "quota": 300, "ok": True, "_ignore_failure": True}]}
VERSIONS = {"builder_info": {"build_image": "quay.io/jupyterhub/repo2docker:2024.07.0"},
            "binderhub": "0.2.0+1763.gfaafab2",
            "builder": "quay.io/jupyterhub/repo2docker:2024.07.0"}


def body(doc: Any) -> bytes:
    """JSON bytes of ``doc``."""
    return json.dumps(doc).encode()


def versions(binderhub: str = "1.0", builder: str = "r2d:1", **extra: Any) -> Versions:
    """Parsed /versions with the given fields."""
    return parse_versions(200, body({"binderhub": binderhub, "builder": builder, **extra}))


def passed(at: float = 0.0, v: Versions | None = None) -> ProbeResult:
    """A probe round where the member answered healthy."""
    return ProbeResult(at=at, latency=0.01, health=parse_health(200, body(HEALTHY)),
                       versions=v or versions())


def failed(at: float = 0.0, error: str = "timeout after 2s") -> ProbeResult:
    """A probe round that got no usable answer."""
    return ProbeResult(at=at, latency=2.0, error=error)


def step(prev: MemberHealth, result: ProbeResult, *, eject: int = 2, restore: int = 2,
         policy: VersionPolicy = VersionPolicy.EXACT,
         prime: Versions | None = None) -> MemberHealth:
    """``advance`` with the settings these tests vary."""
    return advance(prev, result, policy=policy, prime_versions=prime,
                   failures_to_eject=eject, successes_to_restore=restore)


class TestParseHealth:
    def test_healthy_body_gives_checks_and_pod_counts(self) -> None:
        """A 200 body yields every check by service name and the Pod quota counts."""
        report = parse_health(200, body(HEALTHY))
        assert report.ok
        assert [c.service for c in report.checks] == [
            "Docker registry", "JupyterHub API", "Pod quota"]
        assert report.pod_quota is not None
        assert (report.pod_quota.total_pods, report.pod_quota.user_pods,
                report.pod_quota.build_pods, report.pod_quota.quota) == (188, 187, 1, 300)
        assert report.problem is None

    def test_503_body_is_parsed_and_names_the_failing_check(self) -> None:
        """A 503 is still read: the reason is the failing check's name, never "unknown"."""
        report = parse_health(503, body(HUB_DOWN))
        assert not report.ok
        assert report.problem == "JupyterHub API"
        result = ProbeResult(at=0, latency=0, health=report, versions=versions())
        assert verdict(result, policy=VersionPolicy.EXACT, prime_versions=None) == (
            "JupyterHub API")

    def test_first_failing_check_in_binderhubs_order_is_the_reason(self) -> None:
        """With several checks failing the reason is the first, as BinderHub lists them."""
        doc = {"ok": False, "checks": [{"service": "Docker registry", "ok": False},
                                       {"service": "JupyterHub API", "ok": False}]}
        assert parse_health(503, body(doc)).failing == ("Docker registry", "JupyterHub API")
        assert parse_health(503, body(doc)).problem == "Docker registry"

    @pytest.mark.parametrize("ignore_flag", [True, False])
    def test_over_quota_never_makes_a_member_sick(self, ignore_flag: bool) -> None:
        """A failing Pod quota check is not a sickness, even without ``_ignore_failure``."""
        quota: dict[str, Any] = {"service": "Pod quota", "total_pods": 62, "build_pods": 0,
                                 "user_pods": 62, "quota": 60, "ok": False}
        if ignore_flag:
            quota["_ignore_failure"] = True
        doc = {"ok": ignore_flag, "checks": [{"service": "JupyterHub API", "ok": True}, quota]}
        report = parse_health(200, body(doc))
        assert report.failing == ()
        assert report.problem is None
        assert report.pod_quota is not None and report.pod_quota.total_pods == 62

    def test_503_that_claims_ok_is_not_ok(self) -> None:
        """The status code wins over a body that contradicts it; the reason says unhealthy."""
        report = parse_health(503, body({"ok": True, "checks": []}))
        assert not report.ok
        assert report.problem == "unhealthy"

    def test_null_quota_is_kept_as_unset(self) -> None:
        """A member without a launch quota reports quota null: counts, but no limit."""
        doc = {"ok": True, "checks": [{"service": "Pod quota", "total_pods": 5, "build_pods": 0,
                                       "user_pods": 5, "quota": None, "ok": True}]}
        pq = parse_health(200, body(doc)).pod_quota
        assert pq is not None and pq.quota is None and pq.total_pods == 5

    @pytest.mark.parametrize(("status", "raw", "reason"), [
        (500, body(HEALTHY), "HTTP 500"),
        (302, b"", "HTTP 302"),
        (200, b"<html>Bad Gateway</html>", "not JSON"),
        (200, b"\xff\xfe", "not JSON"),
        (200, b"[1, 2]", "not JSON"),
        (200, body({"checks": []}), "bad /health"),
        (200, body({"ok": True, "checks": [{"ok": True}]}), "bad /health"),
        (200, body({"ok": True, "checks": [{"service": "Pod quota", "total_pods": -1}]}),
         "bad /health"),
        (200, body({"ok": True, "checks": [{"service": "Pod quota", "quota": "60"}]}),
         "bad /health"),
    ])
    def test_unusable_answers_raise_probe_error_with_a_short_reason(
        self, status: int, raw: bytes, reason: str
    ) -> None:
        """Wrong status, non-JSON and malformed checks are failures with a stable reason."""
        with pytest.raises(ProbeError) as caught:
            parse_health(status, raw)
        assert caught.value.reason == reason


class TestParseVersions:
    def test_real_body(self) -> None:
        """BinderHub and builder versions are read; the raw object is kept."""
        v = parse_versions(200, body(VERSIONS))
        assert v.binderhub == "0.2.0+1763.gfaafab2"
        assert v.builder == "quay.io/jupyterhub/repo2docker:2024.07.0"
        assert dict(v.raw) == VERSIONS

    def test_builder_falls_back_to_builder_info(self) -> None:
        """Without the back-compat ``builder`` key the image comes from ``builder_info``."""
        v = parse_versions(200, body({"binderhub": "1", "builder_info": {
            "repo2docker-version": "2024.1"}}))
        assert v.builder == "2024.1"

    @pytest.mark.parametrize(("status", "raw", "reason"), [
        (404, body(VERSIONS), "HTTP 404"),
        (200, body({"builder": "x"}), "bad /versions"),
        (200, b"nope", "not JSON"),
    ])
    def test_unusable_versions(self, status: int, raw: bytes, reason: str) -> None:
        """A /versions that cannot be compared is a failure with a reason."""
        with pytest.raises(ProbeError) as caught:
            parse_versions(status, raw)
        assert caught.value.reason == reason


class TestVersionPolicy:
    def test_exact_needs_same_binderhub_and_builder_but_ignores_other_keys(self) -> None:
        """``exact`` compares the versions, not the whole JSON object."""
        prime = versions("1.0", "r2d:1")
        assert versions_match(VersionPolicy.EXACT, versions("1.0", "r2d:1", extra="x"), prime)
        assert not versions_match(VersionPolicy.EXACT, versions("1.0", "r2d:2"), prime)
        assert not versions_match(VersionPolicy.EXACT, versions("1.1", "r2d:1"), prime)

    def test_binderhub_policy_allows_another_builder(self) -> None:
        """``binderhub`` only wants the same BinderHub version."""
        prime = versions("1.0", "r2d:1")
        assert versions_match(VersionPolicy.BINDERHUB, versions("1.0", "r2d:2"), prime)
        assert not versions_match(VersionPolicy.BINDERHUB, versions("1.1", "r2d:1"), prime)

    def test_off_admits_anything(self) -> None:
        """``off`` never ejects for versions, even with no /versions at all."""
        assert versions_match(VersionPolicy.OFF, versions("9", "x"), versions("1", "y"))
        assert versions_match(VersionPolicy.OFF, None, versions("1", "y"))

    def test_unknown_prime_versions_admit_everyone(self) -> None:
        """Until the prime answers, members are admitted (start-up must not wait for it)."""
        assert versions_match(VersionPolicy.EXACT, versions("9"), None)

    def test_a_round_without_versions_is_judged_on_the_last_ones(self) -> None:
        """/versions is not asked every round: a round without it keeps the member's last
        versions (and when they came) and is judged on them."""
        prev = step(MemberHealth(), passed(at=5.0, v=versions("1.0")))
        health_only = replace(passed(at=10.0), versions=None)
        kept = step(prev, health_only, eject=1, prime=versions("1.0"))
        assert kept.state is State.HEALTHY
        assert (kept.versions, kept.versions_at) == (versions("1.0"), 5.0)
        skewed = step(prev, health_only, eject=1, prime=versions("2.0"))
        assert (skewed.state, skewed.reason) == (State.UNHEALTHY, "versions")

    def test_skew_is_the_reason_when_health_is_fine(self) -> None:
        """A healthy answer with other versions fails as "versions"; sickness wins over skew."""
        prime = versions("2.0")
        assert verdict(passed(v=versions("1.0")), policy=VersionPolicy.EXACT,
                       prime_versions=prime) == "versions"
        sick = ProbeResult(at=0, latency=0, health=parse_health(503, body(HUB_DOWN)),
                           versions=versions("1.0"))
        assert verdict(sick, policy=VersionPolicy.EXACT, prime_versions=prime) == (
            "JupyterHub API")


class TestAdvance:
    def test_unknown_takes_the_first_verdict_at_once(self) -> None:
        """At start-up one round decides, in either direction."""
        assert step(MemberHealth(), passed()).state is State.HEALTHY
        out = step(MemberHealth(), failed(error="unreachable"))
        assert (out.state, out.reason) == (State.UNHEALTHY, "unreachable")

    def test_ejected_after_consecutive_failures_only(self) -> None:
        """``failures_to_eject`` failures in a row take a member out; a pass resets the count."""
        h = step(MemberHealth(), passed())
        for _ in range(2):
            h = step(h, failed(), eject=3)
            assert h.state is State.HEALTHY and h.reason == ""
        h = step(h, passed(), eject=3)
        h = step(step(h, failed(), eject=3), failed(), eject=3)
        assert h.state is State.HEALTHY
        h = step(h, failed(at=7.0, error="connection closed"), eject=3)
        assert (h.state, h.reason, h.since, h.failures) == (
            State.UNHEALTHY, "connection closed", 7.0, 3)

    def test_restored_after_consecutive_successes_only(self) -> None:
        """``successes_to_restore`` passes in a row bring it back; a failure starts over."""
        h = step(MemberHealth(), failed())
        h = step(step(h, passed(), restore=3), passed(), restore=3)
        assert h.state is State.UNHEALTHY
        h = step(h, failed(error="not JSON"), restore=3)
        assert (h.state, h.reason, h.successes) == (State.UNHEALTHY, "not JSON", 0)
        for _ in range(2):
            h = step(h, passed(), restore=3)
            assert h.state is State.UNHEALTHY
        h = step(h, passed(at=9.0), restore=3)
        assert (h.state, h.reason, h.since) == (State.HEALTHY, "", 9.0)

    def test_last_parsed_answers_survive_a_failed_round(self) -> None:
        """Pod counts and versions stay known through a timeout (the status page shows them)."""
        h = step(MemberHealth(), passed(v=versions("3.0")))
        h = step(h, failed())
        assert h.report is not None and h.report.pod_quota is not None
        assert h.versions is not None and h.versions.binderhub == "3.0"
        assert h.probes == 2 and h.last is not None and h.last.error is not None

    @given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4))
    def test_state_changes_only_after_enough_rounds_in_a_row(
        self, rounds: list[bool], eject: int, restore: int
    ) -> None:
        """Past the first round, the state flips exactly when the run of opposite verdicts
        reaches the configured length, never earlier."""
        h = MemberHealth()
        run_pass = run_fail = 0
        for ok in rounds:
            prev = h.state
            h = step(h, passed() if ok else failed(), eject=eject, restore=restore)
            run_pass, run_fail = (run_pass + 1, 0) if ok else (0, run_fail + 1)
            if prev is State.UNKNOWN:
                expected = State.HEALTHY if ok else State.UNHEALTHY
            elif prev is State.HEALTHY and run_fail >= eject:
                expected = State.UNHEALTHY
            elif prev is State.UNHEALTHY and run_pass >= restore:
                expected = State.HEALTHY
            else:
                expected = prev
            assert h.state is expected


# -- the routing table ----------------------------------------------------------------------

def fed(members: list[dict[str, Any]] | None = None, **routing: Any) -> Config:
    """A three-member config (a is prime) with routing overrides."""
    members = members or [{"name": n, "url": f"http://127.0.0.1:{9000 + i}",
                           "prime": n == "a", "weight": 10} for i, n in enumerate("abc")]
    return parse_config({"members": members, "routing": {"slow_start": 0, **routing}})


def healthy(pods: int = 0, quota: int | None = 100) -> MemberHealth:
    """A healthy member reporting ``pods`` of ``quota``."""
    doc = {"ok": True, "checks": [{"service": "Pod quota", "total_pods": pods, "build_pods": 0,
                                   "user_pods": pods, "quota": quota, "ok": True,
                                   "_ignore_failure": True}]}
    return MemberHealth(state=State.HEALTHY, probes=1, report=parse_health(200, body(doc)))


def sick(reason: str = "JupyterHub API") -> MemberHealth:
    """An ejected member."""
    return MemberHealth(state=State.UNHEALTHY, reason=reason, probes=1)


def table(config: Config, healths: dict[str, MemberHealth],
          drains: dict[str, Drain] | None = None, *, ready: bool = True) -> RoutingTable:
    """``build_table`` at time 0."""
    return build_table(config, healths, drains or {}, now=0.0, ready=ready)


LAUNCH = parse_launch("/build/gh/org/repo/HEAD")


class TestStatus:
    def test_each_health_maps_to_a_status_with_its_reason(self) -> None:
        """Unknown, healthy, unhealthy and drained show as such, with why."""
        t = table(fed(), {"a": healthy(), "b": sick("versions")},
                  {"c": Drain("c", "maintenance", by="alice")})
        by = {m.name: (m.status, m.reason) for m in t.members}
        assert by["a"] == (MemberStatus.HEALTHY, "")
        assert by["b"] == (MemberStatus.UNHEALTHY, "versions")
        assert by["c"][0] is MemberStatus.DRAINED and "maintenance" in by["c"][1]
        assert table(fed(), {}).by_name["a"].status is MemberStatus.UNKNOWN
        assert [m.name for m in t.routable] == ["a"]

    def test_full_at_headroom_is_not_sick(self) -> None:
        """``pods + headroom >= quota`` makes a member full: healthy, but out of rotation."""
        t = table(fed(pod_headroom=10), {"a": healthy(49, 60), "b": healthy(50, 60)})
        assert t.by_name["a"].status is MemberStatus.HEALTHY
        full = t.by_name["b"]
        assert full.status is MemberStatus.FULL and full.health.state is State.HEALTHY
        assert "50 of 60" in full.reason
        assert [m.name for m in t.routable] == ["a"]

    def test_unset_quota_is_never_full(self) -> None:
        """A member without a quota cannot fill up (there is nothing to compare with)."""
        t = table(fed(), {"a": healthy(10_000, None)})
        assert t.by_name["a"].status is MemberStatus.HEALTHY

    @pytest.mark.parametrize("headroom", ["25%", 0.25])
    def test_per_member_fractional_headroom(self, headroom: object) -> None:
        """A member's own fractional headroom scales with its quota (30 of 40 at 25 %)."""
        members = [{"name": "a", "url": "http://127.0.0.1:9000", "prime": True},
                   {"name": "b", "url": "http://127.0.0.1:9001", "pod_headroom": headroom}]
        config = fed(members, pod_headroom=15)
        t = table(config, {"a": healthy(29, 40), "b": healthy(29, 40)})
        assert t.by_name["b"].status is MemberStatus.HEALTHY
        assert t.by_name["b"].capacity == 30
        assert t.by_name["a"].status is MemberStatus.FULL  # federation-wide: 15 of 40
        t = table(config, {"a": healthy(0, 40), "b": healthy(30, 40)})
        assert t.by_name["b"].status is MemberStatus.FULL


class TestFallback:
    def test_full_member_with_most_room_first(self) -> None:
        """With nothing routable, launches go to the full member with the most room left."""
        t = table(fed(pod_headroom=10), {"a": sick(), "b": healthy(95), "c": healthy(91)})
        decision = t.route(LAUNCH)
        assert decision is not None
        assert (decision.member.name, decision.reason) == ("c", "fallback")

    def test_weight_zero_full_member_is_not_a_fallback(self) -> None:
        """Weight 0 means no launches, also as a last resort."""
        members = [{"name": "a", "url": "http://127.0.0.1:9000", "prime": True},
                   {"name": "b", "url": "http://127.0.0.1:9001", "weight": 0}]
        t = table(fed(members), {"a": sick(), "b": healthy(95)})
        assert t.fallback() is t.by_name["a"]

    def test_then_the_prime_whatever_its_health(self) -> None:
        """No full member: the prime takes launches even when sick (today's behaviour)."""
        t = table(fed(), {"a": sick(), "b": sick(), "c": sick()})
        decision = t.route(LAUNCH)
        assert decision is not None
        assert (decision.member.name, decision.reason) == ("a", "fallback")

    @pytest.mark.parametrize("how", ["drained", "weight 0"])
    def test_else_no_member(self, how: str) -> None:
        """A drained or weight-0 prime is no last resort: the launch gets a 503."""
        members = [{"name": "a", "url": "http://127.0.0.1:9000", "prime": True,
                    "weight": 0 if how == "weight 0" else 1},
                   {"name": "b", "url": "http://127.0.0.1:9001"}]
        drains = {"a": Drain("a", "upgrade")} if how == "drained" else {}
        t = table(fed(members), {"a": healthy(), "b": sick()}, drains)
        assert t.fallback() is None
        assert t.route(LAUNCH) is None

    def test_start_up_goes_to_known_healthy_members_only(self) -> None:
        """Before every member is probed, only members already known healthy get launches."""
        t = table(fed(), {"b": healthy()}, ready=False)
        names = {d.member.name for i in range(50)
                 if (d := t.route(parse_launch(f"/build/gh/org/r{i}/HEAD"))) is not None}
        assert names == {"b"}
        nothing_known = table(fed(), {}, ready=False).route(LAUNCH)
        assert nothing_known is not None and nothing_known.member.name == "a"

    def test_cookie_for_an_ejected_member_is_ignored(self) -> None:
        """A sticky cookie only counts while its member is routable."""
        t = table(fed(), {"a": healthy(), "b": sick(), "c": healthy()})
        decision = t.route(LAUNCH, cookie=f'"{t.by_name["b"].url}"')
        assert decision is not None and decision.member.name != "b"
        assert decision.reason != "cookie"


class TestPanic:
    def test_routes_over_all_members_below_threshold(self) -> None:
        """Below ``panic_threshold`` of routable weight, health is ignored (drains are not)."""
        config = fed(panic_threshold=0.6)
        t = table(config, {"a": healthy(), "b": sick(), "c": sick()})
        assert t.panic
        assert {m.name for m in t.routable} == {"a", "b", "c"}
        decision = t.route(LAUNCH)
        assert decision is not None and decision.reason == "panic"
        drained = table(config, {"a": healthy(), "b": sick(), "c": sick()},
                        {"c": Drain("c", "upgrade")})
        assert {m.name for m in drained.routable} == {"a", "b"}

    def test_not_at_or_above_threshold_nor_when_off(self) -> None:
        """Half the weight routable is not below 0.5; threshold 0 never panics."""
        healths = {"a": healthy(), "b": healthy(), "c": sick()}
        assert not table(fed(panic_threshold=0.5), healths).panic
        assert not table(fed(), {"a": sick(), "b": sick(), "c": sick()}).panic

    def test_not_before_ready(self) -> None:
        """At start-up "not probed yet" is not "health is lying": no panic, no unknown member."""
        t = table(fed(panic_threshold=0.5), {"a": healthy()}, ready=False)
        assert not t.panic
        assert [m.name for m in t.routable] == ["a"]


class TestUiMember:
    def weighted(self) -> Config:
        """a (prime) 10, b 20, c 30."""
        return fed([{"name": n, "url": f"http://127.0.0.1:{9000 + w}", "prime": n == "a",
                     "weight": w} for n, w in (("a", 10), ("b", 20), ("c", 30))])

    def test_prime_while_it_serves_even_when_full(self) -> None:
        """A healthy or merely full prime keeps the landing page."""
        config = self.weighted()
        assert table(config, {n: healthy() for n in "abc"}).ui.name == "a"
        assert table(config, {"a": healthy(100), "b": healthy()}).ui.name == "a"

    def test_sick_prime_hands_over_to_the_heaviest_healthy_member(self) -> None:
        """The UI moves to the highest-weight member that serves, skipping sick ones."""
        config = self.weighted()
        assert table(config, {"a": sick(), "b": healthy(), "c": healthy()}).ui.name == "c"
        assert table(config, {"a": sick(), "b": healthy(), "c": sick()}).ui.name == "b"
        drained = table(config, {n: healthy() for n in "abc"}, {"a": Drain("a", "upgrade")})
        assert drained.ui.name == "c"

    def test_prime_when_nothing_serves_or_not_probed_yet(self) -> None:
        """Nobody serving, or the prime not probed yet: stay on the prime."""
        config = self.weighted()
        assert table(config, {n: sick() for n in "abc"}).ui.name == "a"
        assert table(config, {"c": healthy()}, ready=False).ui.name == "a"
