"""The router over real sockets: redirects, cookies, CORS, the UI proxy, bad paths."""

from __future__ import annotations

from collections import Counter

from federation.drains import FileDrainStore, with_drain
from tests.conftest import StartFederation

SSE = {"Accept": "text/event-stream"}


async def test_launch_redirects_with_exact_raw_path_and_query(
    start_federation: StartFederation,
) -> None:
    """A 307 carries the member URL plus the raw path and query, byte for byte."""
    fed = await start_federation()
    path = "/build/gl/group%2Fsub%2Fproj/main?build_token=a.b%2Fc&x=%20"
    response = await fed.launch(path)
    assert response.status == 307
    location = response.headers["Location"]
    member = fed.member_by_url(location)
    assert location == fed.members[member].url + path


async def test_redirect_is_followed_to_a_working_launch(start_federation: StartFederation) -> None:
    """Following the 307 reaches the member's event stream, which ends in a ready event."""
    fed = await start_federation()
    response = await fed.client.session.get(fed.raw_url("/build/gh/org/repo/HEAD"), headers=SSE)
    body = await response.text()
    assert response.status == 200
    assert '"phase": "ready"' in body
    assert sum(m.builds for m in fed.members.values()) == 1


async def test_cors_and_preflight(start_federation: StartFederation) -> None:
    """Redirects carry CORS headers for embedders; OPTIONS answers a preflight."""
    fed = await start_federation()
    response = await fed.launch("/build/gh/org/repo/HEAD")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Headers"] == "cache-control"
    preflight = await fed.launch("/build/gh/org/repo/HEAD", method="OPTIONS",
                                 Origin="https://example.org",
                                 **{"Access-Control-Request-Method": "GET"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    head = await fed.launch("/build/gh/org/repo/HEAD", method="HEAD")
    assert head.status == 307


async def test_every_ref_lands_on_one_member_and_repos_spread(
    start_federation: StartFederation,
) -> None:
    """All refs of a repository go to the same member; many repositories use every member."""
    fed = await start_federation(["a", "b", "c"], routing={"strategy": "rendezvous"})
    for repo in range(5):
        members = set()
        for ref in ("HEAD", "main", "feature/x", "HEAD/"):
            response = await fed.launch(f"/build/gh/org/Repo{repo}/{ref}")
            members.add(fed.member_by_url(response.headers["Location"]))
        assert len(members) == 1
    spread = Counter()
    for repo in range(60):
        response = await fed.launch(f"/build/gh/org/many{repo}/HEAD")
        spread[fed.member_by_url(response.headers["Location"])] += 1
    assert set(spread) == {"a", "b", "c"}


async def test_sticky_cookie_is_repository_scoped(start_federation: StartFederation) -> None:
    """The host cookie names the member, lasts 4 h and covers every ref of the repository."""
    fed = await start_federation()
    response = await fed.launch("/build/gh/Org/Repo/feature/x")
    cookie = response.headers["Set-Cookie"]
    member_url = fed.members[fed.member_by_url(response.headers["Location"])].url
    assert cookie == f'host="{member_url}"; Max-Age=14400; Path=/build/gh/Org/Repo'


async def test_valid_cookie_wins_and_forged_cookie_is_ignored(
    start_federation: StartFederation,
) -> None:
    """A cookie naming a routable member is honoured; one naming anything else is ignored."""
    fed = await start_federation(routing={"strategy": "rendezvous"})
    path = "/build/gh/org/sticky/HEAD"
    home = fed.member_by_url((await fed.launch(path)).headers["Location"])
    other = next(n for n in fed.members if n != home)
    sticky = await fed.launch(path, Cookie=f'host="{fed.members[other].url}"')
    assert fed.member_by_url(sticky.headers["Location"]) == other
    among_others = await fed.launch(path, Cookie=f'_xsrf=2|ab; host="{fed.members[other].url}"')
    assert fed.member_by_url(among_others.headers["Location"]) == other
    unrelated = await fed.launch(path, Cookie="_xsrf=2|ab; hostname=x")
    assert fed.member_by_url(unrelated.headers["Location"]) == home
    for forged in ('host="https://evil.example"', "host=http://127.0.0.1:1",
                   'host="//evil.example"'):
        response = await fed.launch(path, Cookie=forged)
        assert response.status == 307
        assert fed.member_by_url(response.headers["Location"]) == home
    assert fed.state.metrics.redirect_total(other, "cookie") == 2


async def test_a_member_moved_to_a_new_url_gets_launches_there_at_once(
    start_federation: StartFederation,
) -> None:
    """Swapping two members' URLs in the config keeps every ranking (same names, same
    weights), yet the next launch already points at the new URL: nothing about a
    repository's redirect outlives the config it was made under."""
    fed = await start_federation(["a", "b"], routing={"strategy": "rendezvous"})
    path = "/build/gh/org/moving/HEAD"
    before = (await fed.launch(path)).headers["Location"]
    doc = dict(fed.config_doc)
    members = [dict(m) for m in doc["members"]]
    members[0]["url"], members[1]["url"] = members[1]["url"], members[0]["url"]
    await fed.apply_config({**doc, "members": members})
    after = (await fed.launch(path)).headers["Location"]
    home = fed.state.table.home("/build/gh/org/moving")
    assert home is not None
    assert after == fed.state.table.by_name[home].url + path != before


async def test_cookie_to_drained_member_is_ignored(start_federation: StartFederation) -> None:
    """A drained member's cookie does not bring launches back to it."""
    fed = await start_federation(routing={"strategy": "rendezvous"})
    path = "/build/gh/org/drained/HEAD"
    home = fed.member_by_url((await fed.launch(path)).headers["Location"])
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), home, reason="test", by="pytest"))
    await fed.wait_status(home, "drained")
    response = await fed.launch(path, Cookie=f'host="{fed.members[home].url}"')
    assert fed.member_by_url(response.headers["Location"]) != home


async def test_ui_and_v2_are_proxied_to_the_prime_with_forwarding_headers(
    start_federation: StartFederation,
) -> None:
    """Non-launch paths reach the prime with the raw path and X-Forwarded-*/Origin set."""
    fed = await start_federation(["prime", "other"])
    path = "/v2/gl/group%2Fproj/HEAD?urlpath=lab%2Ftree"
    response = await fed.launch(path, **{"X-Forwarded-For": "203.0.113.7"})
    assert response.status == 200
    assert "simulated member <b>prime</b>" in await response.text()
    method, raw, headers = fed.members["prime"].requests[-1]
    assert (method, raw) == ("GET", path)
    assert headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == headers["Origin"].removeprefix("http://")
    assert "Host" in headers and headers["Host"] != headers["X-Forwarded-Host"]
    home = await fed.launch("/about")
    assert "simulated member prime" in await home.text()
    for near_miss in ("/build", "/builds/gh/org/repo/HEAD", "/v2"):  # not below /build/ or /v2/
        response = await fed.launch(near_miss)
        assert response.status == 200, near_miss
        assert fed.members["prime"].requests[-1][1] == near_miss


async def test_redirect_v2_option(start_federation: StartFederation) -> None:
    """With routing.redirect_v2 the /v2 page is redirected to the repository's member."""
    fed = await start_federation(routing={"redirect_v2": True, "strategy": "rendezvous"})
    v2 = await fed.launch("/v2/gh/org/repo/HEAD?urlpath=lab")
    build = await fed.launch("/build/gh/org/repo/main")
    assert v2.status == 307
    assert fed.member_by_url(v2.headers["Location"]) == fed.member_by_url(
        build.headers["Location"])
    assert v2.headers["Location"].endswith("/v2/gh/org/repo/HEAD?urlpath=lab")
    assert "Set-Cookie" not in v2.headers


async def test_bad_launch_paths_get_4xx_with_reason(start_federation: StartFederation) -> None:
    """Bad launch paths get a 4xx with a reason in JSON, HTML or the event stream, never 500."""
    fed = await start_federation()
    response = await fed.launch("/build/gh/org/repo")
    assert response.status == 400
    assert "did you mean /build/gh/org/repo/HEAD" in (await response.json())["reason"]
    html = await fed.launch("/build/zenodo/nope", Accept="text/html")
    assert html.status == 400
    assert "expected a DOI" in await html.text()
    stream = await fed.launch("/build/gh/", **SSE)
    assert stream.status == 400
    assert (await stream.text()).startswith('data: {"phase": "failed"')
    assert (await fed.launch("/build/gh/a/b/" + "x" * 5000)).status == 414


async def test_active_hosts_lists_members_in_rotation(start_federation: StartFederation) -> None:
    """/active_hosts keeps today's shape and lists exactly the routable members."""
    fed = await start_federation(["a", "b"])
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), "b", reason="test", by="pytest"))
    await fed.wait_status("b", "drained")
    body = await (await fed.launch("/active_hosts")).json()
    assert list(body["active_hosts"]) == ["a"]
    assert body["active_hosts"]["a"] == {
        "prime": True, "url": fed.members["a"].url, "weight": 10.0,
        "health": fed.members["a"].url + "/health",
        "versions": fed.members["a"].url + "/versions"}


async def test_proxy_reports_an_unreachable_ui_member(start_federation: StartFederation) -> None:
    """When the UI member is gone the proxy answers 502 with a short reason, not a 500."""
    fed = await start_federation(["a"], wait_ready=True)
    await fed.members["a"].stop()
    response = await fed.launch("/", Accept="application/json")
    assert response.status == 502
    assert "could not be reached" in (await response.json())["reason"]
