"""The on-call status page and document: content, escaping, negotiation, schema, and the CLI."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from federation.app import STATUS_PATH
from federation.cli import main
from federation.demo import MemberControls
from federation.drains import FileDrainStore, with_drain
from federation.runtime import RECENT_WINDOW, RouterState
from federation.status import render_status_html, status_document
from tests.conftest import Federation, StartFederation, start_mixed_federation
from tests.test_slow_start import config, probe

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "status.schema.json"
BROWSER_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                  "image/webp,*/*;q=0.8")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


async def _document(fed: Federation) -> dict[str, Any]:
    response = await fed.client.get(STATUS_PATH, headers={"Accept": "application/json"})
    assert response.status == 200
    assert response.content_type == "application/json"
    document: dict[str, Any] = await response.json()
    return document


async def _page(fed: Federation) -> str:
    response = await fed.client.get(STATUS_PATH, headers={"Accept": BROWSER_ACCEPT})
    assert response.status == 200
    assert response.content_type == "text/html"
    return await response.text()


async def _cli(*args: str) -> Result:
    """Run the ``federation`` command in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(args))


def _drain(fed: Federation, member: str, reason: str, by: str = "alice") -> None:
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), member, reason=reason, by=by))


# -- what the page and the document say ---------------------------------------------------------


async def test_header_says_healthy_degraded_or_down_and_who_serves_the_ui(
    start_federation: StartFederation,
) -> None:
    """The header sentence follows the federation from healthy through degraded (the UI
    moving off a failed prime) to down, in the JSON summary and on the page alike."""
    fed = await start_federation(["a", "b"])
    document = await _document(fed)
    assert document["status"] == "healthy"
    assert document["summary"] == "Healthy: all 2 members take launches; a serves the UI."
    page = await _page(fed)
    assert "HEALTHY</h1>" in page and "all 2 members take launches; a serves the UI." in page

    fed.members["a"].controls.health = "503"
    await fed.wait_status("a", "unhealthy")
    document = await _document(fed)
    assert document["status"] == "degraded"
    assert document["ui_member"] == "b"
    assert document["summary"] == ("Degraded: 1 of 2 members take launches; out: a "
                                   "(unhealthy); b serves the UI while the prime a is out.")
    assert "DEGRADED</h1>" in await _page(fed)

    fed.members["b"].controls.health = "503"
    await fed.wait_status("b", "unhealthy")
    document = await _document(fed)
    assert document["status"] == "down"
    assert document["summary"].startswith("Down: no member is fit to take launches; they go "
                                          "to a (unhealthy) as a last resort")
    assert document["summary"].endswith("a serves the UI.")
    assert "DOWN</h1>" in await _page(fed)


async def test_document_describes_every_member(start_federation: StartFederation) -> None:
    """Each member carries its state and reason, weights, pods against quota, drain, versions
    compared with the prime, its checks, last probe and its share of recent launches."""
    fed = await start_mixed_federation(start_federation)
    document = await _document(fed)
    members = {m["name"]: m for m in document["members"]}
    assert [m["state"] for m in document["members"]] == [
        "healthy", "healthy", "full", "unhealthy", "drained"]
    assert members["ovh"]["reason"] == "35 of 40 pods in use (takes launches below 30)"
    assert (members["ovh"]["pods"], members["ovh"]["quota"], members["ovh"]["capacity"]) == (
        35, 40, 30)
    assert members["azure"]["reason"] == "Docker registry"
    assert {c["service"]: c["ok"] for c in members["azure"]["checks"]} == {
        "Docker registry": False, "JupyterHub API": False, "Pod quota": True}
    gesis = members["gesis"]
    assert gesis["drain"]["reason"] == "registry timeouts, incident 42"
    assert gesis["drain"]["by"] == "alice" and gesis["drain"]["since"]
    assert gesis["versions_match"] is False and members["ovh"]["versions_match"] is True
    assert gesis["probe_state"] == "unhealthy" and gesis["probe_reason"] == "versions"
    assert members["gke"]["kind"] == "gke" and members["gesis"]["kind"] == "bare-metal"
    assert (members["gke"]["weight"], members["gke"]["effective_weight"]) == (60, 60)
    assert document["recent_launches"] == 24
    assert members["gke"]["recent_launches"] + members["bare-metal"]["recent_launches"] == 24
    assert sum(m["recent_share"] for m in document["members"]) == pytest.approx(1.0)
    assert all(m["last_probe"]["latency_ms"] > 0 for m in document["members"])


async def test_last_probe_is_live_between_routing_changes(
    start_federation: StartFederation,
) -> None:
    """A steady member's last probe keeps advancing on the page, though nothing about its
    routing changes (the routing table is not rebuilt for unchanged probe results)."""
    fed = await start_federation(["a"])
    first = (await _document(fed))["members"][0]["last_probe"]
    probes = fed.state.healths["a"].probes
    await fed.wait_for(lambda: fed.state.healths["a"].probes >= probes + 2)
    later = (await _document(fed))["members"][0]["last_probe"]
    assert later["at"] > first["at"]


async def test_versions_say_how_old_they_are(start_federation: StartFederation) -> None:
    """A member in rotation is asked /versions every ``versions_interval``, so the page
    says how old the versions it shows are: a member's grow older while its probes stay
    fresh; the prime's, asked every round, are as fresh as its last probe."""
    fed = await start_federation(["a", "b"], health={"versions_interval": 3600})
    b = fed.state.healths
    await fed.wait_for(lambda: b["b"].last is not None and b["b"].versions_at is not None
                       and b["b"].last.at - b["b"].versions_at >= 0.3)
    members = {m["name"]: m for m in (await _document(fed))["members"]}
    assert members["b"]["versions_ago_seconds"] >= members["b"]["last_probe"]["ago_seconds"] + 0.3
    assert members["a"]["versions_ago_seconds"] == members["a"]["last_probe"]["ago_seconds"]
    assert "as of 0 s ago" in await _page(fed)


async def test_config_reload_error_is_shown_until_a_good_config_arrives(
    start_federation: StartFederation,
) -> None:
    """A rejected reload appears in the document and as an alert on the page, naming the
    member and field, while the last good config stays in force; a good reload clears it."""
    fed = await start_federation(["a", "b"])
    good = copy.deepcopy(fed.config_doc)
    bad = copy.deepcopy(good)
    bad["members"][1]["weight"] = -3
    await fed.break_config(yaml.safe_dump(bad))
    document = await _document(fed)
    error = document["config"]["error"]
    assert (error["member"], error["field"]) == ("b", "weight")
    assert "must be at least 0 (got -3)" in error["message"]
    assert document["config"]["generation"] == 1
    page = await _page(fed)
    assert 'id="config-error"' in page and "Config reload rejected" in page
    assert "member &#39;b&#39;: field &#39;weight&#39;" in page

    good["members"][1]["weight"] = 5
    await fed.apply_config(good)
    document = await _document(fed)
    assert document["config"]["error"] is None
    assert 'id="config-error"' not in await _page(fed)


async def test_federation_drain_shows_on_the_page(start_federation: StartFederation) -> None:
    """``federation drain`` with the router's config takes the member out, and the page
    shows it drained with the reason and who drained it; ``undrain`` brings it back."""
    fed = await start_federation(["a", "b"])
    result = await _cli("drain", "b", "--reason", "disk full", "--by", "bob",
                        "--config", str(fed.config_path))
    assert result.exit_code == 0, result.output
    await fed.wait_status("b", "drained")
    page = await _page(fed)
    assert "drained by bob: disk full" in page
    assert 'id="member-b"' in page and "DRAINED" in page
    result = await _cli("undrain", "b", "--config", str(fed.config_path))
    assert result.exit_code == 0, result.output
    await fed.wait_status("b", "healthy")
    assert "drained by bob" not in await _page(fed)


# -- escaping -----------------------------------------------------------------------------------


def _poison(document: dict[str, Any]) -> dict[str, Any]:
    """The document with hostile markup in every text a member, operator or file controls."""
    doc = copy.deepcopy(document)
    doc["summary"] = HOSTILE
    doc["ui_member"] = HOSTILE
    doc["config"]["source"] = HOSTILE
    doc["config"]["error"] = {"message": HOSTILE, "source": HOSTILE, "member": HOSTILE,
                              "field": HOSTILE, "at": doc["generated_at"]}
    doc["drains_error"] = HOSTILE
    for m in doc["members"]:
        m.update(name=HOSTILE + m["name"], kind=HOSTILE, reason=HOSTILE,
                 probe_reason=HOSTILE, probe_state="unhealthy",
                 versions={"binderhub": HOSTILE, HOSTILE: {"nested": HOSTILE}},
                 drain={"reason": HOSTILE, "by": HOSTILE, "since": HOSTILE})
        m["url"] = 'javascript:alert(1)//"><script>'
        m["checks"] = [{"service": HOSTILE, "ok": False, "ignore_failure": False}]
        m["last_probe"]["error"] = HOSTILE
    return doc


async def test_page_escapes_everything_members_and_operators_write(
    start_federation: StartFederation,
) -> None:
    """Markup in any member-, operator- or file-controlled text is shown as text: no tag,
    attribute or javascript: link reaches the page."""
    fed = await start_mixed_federation(start_federation)
    page = render_status_html(_poison(await _document(fed)))
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "javascript:" not in page.split("</title>")[1].replace(
        "javascript:alert(1)//&#34;&gt;&lt;script&gt;", "")  # shown as text, never a link
    assert 'href="javascript' not in page
    assert page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 10


async def test_hostile_versions_and_drain_reason_over_http(
    start_federation: StartFederation,
) -> None:
    """A member reporting markup as its version, and a drain reason with markup, arrive
    escaped over HTTP, and the page forbids scripts by its Content-Security-Policy."""
    fed = await start_federation({"a": MemberControls(),
                                  "b": MemberControls(binderhub=HOSTILE)})
    _drain(fed, "a", reason=HOSTILE, by="<b>mallory</b>")
    await fed.wait_status("a", "drained")
    response = await fed.client.get(STATUS_PATH, headers={"Accept": BROWSER_ACCEPT})
    page = await response.text()
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "<b>mallory" not in page and "&lt;b&gt;mallory&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


# -- negotiation and schema ---------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "html"), [
    (BROWSER_ACCEPT, True),
    ("text/html", True),
    ("application/json", False),
    ("*/*", False),
    (None, False),
    ("text/html;q=0.5, application/json", False),
    ("application/json;q=0.1, text/*", True),
])
async def test_html_for_browsers_json_otherwise(
    start_federation: StartFederation, accept: str | None, html: bool,
) -> None:
    """Clients preferring text/html get the page; JSON is the default for everyone else
    (curl, scripts, monitoring), and both vary on Accept and are never cached."""
    fed = await start_federation(["a"])
    headers = {} if accept is None else {"Accept": accept}
    response = await fed.client.get(STATUS_PATH, headers=headers)
    assert response.status == 200
    assert response.content_type == ("text/html" if html else "application/json")
    assert response.headers["Vary"] == "Accept"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.text()
    if html:
        assert body.startswith("<!doctype html>")
    else:
        assert json.loads(body)["members"][0]["name"] == "a"


async def test_document_matches_its_json_schema(start_federation: StartFederation) -> None:
    """The JSON document, in every member state and with a config error, validates against
    config/status.schema.json, and the schema is strict enough to catch a broken document."""
    jsonschema = pytest.importorskip(
        "jsonschema", reason="the schema test needs the jsonschema package (a test dependency)")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    fed = await start_mixed_federation(start_federation)
    bad = copy.deepcopy(fed.config_doc)
    bad["routing"]["strategy"] = "round-robin"
    await fed.break_config(yaml.safe_dump(bad))
    document = await _document(fed)
    assert document["config"]["error"] is not None
    assert sorted(validator.iter_errors(document), key=str) == []

    broken = copy.deepcopy(document)
    broken["members"][0]["state"] = "sleeping"
    del broken["members"][1]["reason"]
    broken["surprise"] = True
    assert len(list(validator.iter_errors(broken))) == 3


# -- `federation status` ------------------------------------------------------------------------


async def test_status_command_prints_the_member_table(
    start_federation: StartFederation,
) -> None:
    """``federation status --router URL`` prints the header sentence and one line per member
    with state, weights, share of launches and reason, and exits 0 while not down."""
    fed = await start_mixed_federation(start_federation)
    router = str(fed.client.make_url("/"))
    result = await _cli("status", "--router", router)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Degraded: 2 of 5 members take launches")
    assert lines[2].split() == ["MEMBER", "STATE", "WEIGHT", "LAUNCHES", "REASON"]
    rows = {line.split()[0]: line for line in lines[3:8]}
    assert rows["gke"].split()[1:3] == ["*", "healthy"]  # * marks the UI member
    assert rows["ovh"].split()[1:3] == ["full", "30/30"]
    assert rows["ovh"].endswith("35 of 40 pods in use (takes launches below 30)")
    assert rows["azure"].split()[1] == "unhealthy" and rows["azure"].endswith("Docker registry")
    assert "drained by alice: registry timeouts, incident 42 (since 20" in rows["gesis"]
    assert rows["gke"].split()[4].endswith("%")


async def test_status_command_json_and_down_exit(start_federation: StartFederation) -> None:
    """``--json`` prints the router's document; when the federation is down the command
    exits 1 and says so in a sentence."""
    fed = await start_federation({"a": MemberControls(health="503")})
    result = await _cli("status", "--router", str(fed.client.make_url("/")), "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["status"] == "down"
    assert [m["name"] for m in document["members"]] == ["a"]
    assert result.stderr.startswith("Down: no member is fit to take launches")


async def test_status_command_says_when_the_router_is_unreachable() -> None:
    """Pointed at a port nobody listens on, the command exits 1 with one plain sentence."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await _cli("status", "--router", f"127.0.0.1:{port}", "--timeout", "5")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot read the router's status: cannot reach "
                                    "the router")
    assert f"http://127.0.0.1:{port}/_router/status" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_status_command_refuses_what_is_not_a_router(
    start_federation: StartFederation,
) -> None:
    """Pointed at a BinderHub instead of the router, the command says the answer is not a
    status document, in one sentence, and exits 1."""
    fed = await start_federation(["a"])
    result = await _cli("status", "--router", fed.members["a"].url)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: cannot read the router's status: the router's answer is not a status "
        f"document ({fed.members['a'].url}/_router/status)"]


def test_versions_match_follows_the_version_policy() -> None:
    """The document judges versions as routing does: under `binderhub` a different builder
    image still matches; under `exact` it does not."""
    from types import MappingProxyType

    from federation.config import load_config_text
    from federation.health import (
        Check,
        HealthReport,
        ProbeResult,
        Versions,
    )
    from federation.runtime import RouterState
    from federation.status import status_document

    def versions(builder: str) -> Versions:
        raw = {"binderhub": "1.0.0", "builder": builder}
        return Versions("1.0.0", builder, MappingProxyType(raw))

    report = HealthReport(True, (Check("JupyterHub API", True),), None)
    for policy, expected in (("binderhub", True), ("exact", False)):
        state = RouterState(load_config_text(
            f"health: {{versions: {policy}}}\nmembers:\n"
            "  - {name: a, url: 'http://127.0.0.1:1', prime: true}\n"
            "  - {name: b, url: 'http://127.0.0.1:2'}\n"))
        state.apply_probe("a", ProbeResult(0.0, 0.01, report, versions("r2d:1")))
        state.apply_probe("b", ProbeResult(0.0, 0.01, report, versions("r2d:2")))
        members = {m["name"]: m for m in status_document(state)["members"]}
        assert members["b"]["versions_match"] is expected
        assert members["a"]["versions_match"] is True


def test_recent_launches_cover_the_last_window_only() -> None:
    """The status page's recent launches are the redirect counts minus the oldest mark the
    ticker kept, marks older than ``RECENT_WINDOW`` dropped; a member first counted after
    a mark counts from zero."""
    now = [0.0]
    state = RouterState(config({"a": 10, "b": 10}), clock=lambda: now[0])
    tally = state.metrics.launches

    def launch(member: str, reason: str = "load_balancer") -> None:
        state.count_launch(state.sent.slot(member), tally.slot(member, reason))

    for _ in range(3):
        launch("a")
    assert state.recent_launches() == {"a": 3}
    for t in range(10, int(RECENT_WINDOW) + 21, 10):  # a mark every 10 s
        now[0] = float(t)
        state.mark_launches()
        if t == 20:
            launch("b", "spill-over")  # a slot the marks before it lack
            launch("a")
    assert state.recent_launches() == {"a": 1, "b": 1}  # the marks at 0 and 10 s are gone
    now[0] += 10
    state.mark_launches()
    assert state.recent_launches() == {}  # and now the one before the launches at 20 s too


def test_launches_not_in_pods_show_until_a_count_includes_them() -> None:
    """BinderHub counts its pods at most once a minute, so a member can look emptier than
    bounded loads take it to be: the page says how many launches the router adds, until a
    count is sure to include them (a new count covers those sent before the probe before)."""
    state = RouterState(config({"a": 10, "b": 10}, slow_start=0))
    for name in ("a", "b"):
        state.apply_probe(name, probe(0.0))
    state.sent.add("a")
    state.sent.add("a")

    def shown() -> dict[str, int]:
        return {m["name"]: m["launches_not_in_pods"] for m in status_document(state)["members"]}

    assert shown() == {"a": 2, "b": 0}
    assert "+ 2 launches not in its count yet" in render_status_html(status_document(state))
    state.apply_probe("a", probe(1.0, pods=2))  # a new count, maybe taken before them
    assert shown() == {"a": 2, "b": 0}
    state.apply_probe("a", probe(2.0, pods=3))  # taken after the probe at 1.0: they are in
    assert shown() == {"a": 0, "b": 0}
    assert "not in its count yet" not in render_status_html(status_document(state))
