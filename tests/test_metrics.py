"""Prometheus metrics: each one provoked over real sockets, read back through /metrics.

Every scrape is parsed with prometheus-client's own text parser, so what a Prometheus server
would reject fails here first.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from federation.app import LIVE_PATH, METRICS_PATH, READY_PATH, STATUS_PATH
from federation.demo import MemberControls
from federation.drains import FileDrainStore, with_drain, without_drain
from tests.conftest import Federation, StartFederation, start_mixed_federation


async def _samples(fed: Federation) -> list[Sample]:
    """Every sample of one scrape, through the reference parser."""
    response = await fed.client.get(METRICS_PATH)
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    found = [s.value for s in samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def _series(samples: list[Sample], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


async def test_metrics_text_parses_and_has_every_family(
    start_federation: StartFederation,
) -> None:
    """/metrics is valid Prometheus text and carries the redirector's compatible names and
    every metric dashboards need, after a mixed federation has routed some launches."""
    fed = await start_mixed_federation(start_federation)
    response = await fed.client.get(METRICS_PATH)
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    expected = {
        "federation_health": "gauge", "federation_health_check": "gauge",
        "federation_redirect_count": "gauge", "federation_redirects": "counter",
        "federation_request_duration_seconds": "histogram",
        "federation_proxy_errors": "counter", "federation_probe_duration_seconds": "histogram",
        "federation_config_generation": "gauge", "federation_config_reloads": "counter",
        "federation_config_reload_errors": "counter", "federation_member_drained": "gauge",
        "federation_member_state": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    health = _series([s for f in families.values() for s in f.samples], "federation_health")
    assert len(health) == 5  # exactly one series per member
    assert health[(("member", "azure"), ("reason", "Docker registry"))] == 0
    assert health[(("member", "gke"), ("reason", ""))] == 1


async def test_request_latency_by_route_kind(start_federation: StartFederation) -> None:
    """Launch redirects, proxied requests and the router's own endpoints are timed under
    route="launch", "proxy" and "other", one observation per request."""
    fed = await start_federation(["a", "b"])
    before = await _samples(fed)  # observed under "other" once it has been answered
    for i in range(3):
        assert (await fed.launch(f"/build/gh/org/repo{i}/HEAD")).status == 307
    assert (await fed.launch("/build/gh/onlyorg")).status == 400  # refusals count too
    for path in ("/", "/api/repoproviders"):
        assert (await fed.launch(path)).status == 200
    for path in (LIVE_PATH, READY_PATH, STATUS_PATH, "/active_hosts"):
        assert (await fed.launch(path)).status == 200
    after = await _samples(fed)
    name = "federation_request_duration_seconds_count"
    delta = {route: _value(after, name, route=route) - _value(before, name, route=route)
             for route in ("launch", "proxy", "other")}
    assert delta == {"launch": 4, "proxy": 2, "other": 4 + 1}
    assert _value(after, "federation_request_duration_seconds_bucket", route="launch",
                  le="+Inf") == _value(after, name, route="launch")


async def test_redirects_by_member_and_reason(start_federation: StartFederation) -> None:
    """Redirects are counted per member and reason: load balancer, cookie, and spill-over
    once the repository's home member holds more than its bounded share."""
    fed = await start_federation(["a", "b"], health={"interval": 30},
                                 routing={"strategy": "bounded", "load_factor": 1.25})
    homes = [fed.member_by_url((await fed.launch("/build/gh/org/same/HEAD")).headers[
        "Location"]) for _ in range(3)]
    home, other = homes[0], "b" if homes[0] == "a" else "a"
    assert homes == [home, home, other]  # the third exceeds ceil(1.25 * 3 * 1/2) = 2
    cookie = f'host="{fed.members[home].url}"'
    assert (await fed.launch("/build/gh/org/other/HEAD", Cookie=cookie)).status == 307
    samples = await _samples(fed)
    assert _value(samples, "federation_redirects_total", member=home,
                  reason="load_balancer") == 2
    assert _value(samples, "federation_redirects_total", member=other,
                  reason="spill-over") == 1
    assert _value(samples, "federation_redirects_total", member=home, reason="cookie") == 1
    assert _value(samples, "federation_redirect_count", member=home, reason="cookie") == 1


async def test_fallback_redirects_when_no_member_is_fit(
    start_federation: StartFederation,
) -> None:
    """With every member unhealthy, launches go to the prime as a last resort, counted with
    reason="fallback"."""
    fed = await start_federation({"a": MemberControls(health="503"),
                                  "b": MemberControls(health="503")})
    await fed.wait_status("b", "unhealthy")
    response = await fed.launch("/build/gh/org/repo/HEAD")
    assert fed.member_by_url(response.headers["Location"]) == "a"
    samples = await _samples(fed)
    assert _value(samples, "federation_redirects_total", member="a", reason="fallback") == 1


async def test_proxy_upstream_errors_are_counted(start_federation: StartFederation) -> None:
    """A UI member that refuses connections gives a 502 and one proxy error of kind
    "connect"."""
    fed = await start_federation(["a"])
    await fed.members["a"].stop()
    response = await fed.launch("/v2/gh/org/repo/HEAD")
    assert response.status == 502
    samples = await _samples(fed)
    assert _value(samples, "federation_proxy_errors_total", kind="connect") == 1


async def test_config_generation_and_reload_errors(start_federation: StartFederation) -> None:
    """An accepted reload raises the generation; a rejected one counts an error and leaves
    the generation alone."""
    fed = await start_federation(["a", "b"])
    samples = await _samples(fed)
    assert _value(samples, "federation_config_generation") == 1
    assert _value(samples, "federation_config_reload_errors_total") == 0
    routing = {**fed.config_doc["routing"], "sticky_cookie_hours": 1}
    await fed.apply_config({**fed.config_doc, "routing": routing})
    await fed.break_config("members: [")
    samples = await _samples(fed)
    assert _value(samples, "federation_config_generation") == 2
    assert _value(samples, "federation_config_reloads_total") == 1
    assert _value(samples, "federation_config_reload_errors_total") == 1


async def test_drain_state_per_member(start_federation: StartFederation) -> None:
    """federation_member_drained is 1 for a drained member only, and 0 again on undrain."""
    fed = await start_federation(["a", "b"])
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), "b", reason="maintenance", by="ops"))
    await fed.wait_status("b", "drained")
    samples = await _samples(fed)
    assert _value(samples, "federation_member_drained", member="b") == 1
    assert _value(samples, "federation_member_drained", member="a") == 0
    assert _value(samples, "federation_member_state", member="b", state="drained") == 1
    store.write(without_drain(store.read(), "b"))
    await fed.wait_status("b", "healthy")
    samples = await _samples(fed)
    assert _value(samples, "federation_member_drained", member="b") == 0
    assert _series(samples, "federation_member_state").keys() >= {
        (("member", "b"), ("state", "healthy"))}
    assert (("member", "b"), ("state", "drained")) not in _series(
        samples, "federation_member_state")


async def test_probe_latency_and_outcomes(start_federation: StartFederation) -> None:
    """Every probe round is timed per member, and counted as ok or error."""
    fed = await start_federation({"a": MemberControls(), "b": MemberControls(health="close")})
    await fed.wait_for(lambda: fed.state.healths["b"].probes >= 2)
    samples = await _samples(fed)
    for member in ("a", "b"):
        count = _value(samples, "federation_probe_duration_seconds_count", member=member)
        assert count >= 1
        assert _value(samples, "federation_probe_duration_seconds_sum", member=member) > 0
        assert _value(samples, "federation_probe_duration_seconds_bucket", member=member,
                      le="+Inf") == count
    assert _value(samples, "federation_probes_total", member="a", outcome="ok") >= 1
    assert _value(samples, "federation_probes_total", member="b", outcome="error") >= 2


async def test_labels_stay_bounded_whatever_is_launched(
    start_federation: StartFederation,
) -> None:
    """No label value ever holds a repository, and launching many new repositories adds no
    series: label cardinality depends on members and reasons only."""
    fed = await start_federation(["a", "b"], routing={"strategy": "rendezvous"})

    async def launch_batch(batch: str) -> None:
        for i in range(30):
            await fed.launch(f"/build/gh/org-{batch}/repo-{batch}-{i}/HEAD")
            await fed.launch(f"/v2/gh/org-{batch}/repo-{batch}-{i}/HEAD")

    await launch_batch("first")
    first = await _samples(fed)
    await launch_batch("second")
    second = await _samples(fed)

    def request_series(samples: list[Sample]) -> set[Any]:
        # Probe series may gain an outcome on a slow machine; requests must add nothing.
        return {(s.name, tuple(sorted(s.labels.items()))) for s in samples
                if s.name.startswith(("federation_redirect", "federation_request"))}

    assert len(request_series(first)) > 10
    assert request_series(second) == request_series(first)
    values = {v for s in second for v in s.labels.values()}
    assert not [v for v in values if "org-" in v or "repo-" in v]


async def test_a_removed_member_leaves_no_series_behind(
    start_federation: StartFederation,
) -> None:
    """Member series follow the config in force: after a reload that removes member c, the
    next scrape has none of its gauges or probe series, while its redirect counts stay (a
    counter never goes back). A member whose reason changes keeps exactly one health series."""
    fed = await start_federation(["a", "b", "c"])
    for i in range(20):
        await fed.launch(f"/build/gh/org/repo{i}/HEAD")
    before = await _samples(fed)
    assert {s.labels.get("member") for s in before} >= {"a", "b", "c"}
    fed.members["b"].controls.health = "503"
    await fed.wait_status("b", "unhealthy")
    kept = [m for m in fed.config_doc["members"] if m["name"] != "c"]
    await fed.apply_config({**fed.config_doc, "members": kept})
    after = await _samples(fed)
    c_series = {s.name for s in after if s.labels.get("member") == "c"}
    assert c_series <= {"federation_redirects_total", "federation_redirect_count"}
    assert {s.name for s in before if s.labels.get("member") == "c"} - c_series >= {
        "federation_health", "federation_member_state", "federation_member_pods",
        "federation_probes_total", "federation_probe_duration_seconds_count"}
    health_b = [s for s in after if s.name == "federation_health" and s.labels["member"] == "b"]
    assert [(s.labels["reason"], s.value) for s in health_b] == [
        (fed.state.table.by_name["b"].reason, 0)]
