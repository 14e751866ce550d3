"""Drains with the file store: ``federation drain`` and ``undrain`` against a running router.

The command runs as a shell would (its own event loop, in a thread) against the config file of
a router that serves simulated members on 127.0.0.1, and the router picks the change up by
watching ``drains.yaml`` next to that config.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from federation.drains import FileDrainStore, parse_drains, with_drain
from tests.conftest import Federation, StartFederation, run_cli

pytestmark = pytest.mark.timeout(10)


async def homes(fed: Federation, member: str, count: int) -> list[str]:
    """Launch paths whose home (first choice) is ``member``."""
    found: list[str] = []
    for i in range(500):
        path = f"/build/gh/org/repo{i}/HEAD"
        response = await fed.launch(path)
        if fed.member_by_url(response.headers["Location"]) == member:
            found.append(path)
            if len(found) == count:
                return found
    raise AssertionError(f"no repository homed on {member}")


async def test_drain_stops_launches_within_two_seconds_and_undrain_restores(
    start_federation: StartFederation, record_property: Callable[[str, Any], None]
) -> None:
    """``federation drain`` takes a member out of every launch decision within 2 s: its
    repositories go elsewhere, its sticky cookie is ignored, it keeps being probed and shows as
    drained with reason, who and since; ``undrain`` brings its repositories back."""
    fed = await start_federation(["a", "b", "c"], routing={"strategy": "rendezvous"})
    paths = await homes(fed, "b", 3)
    config = str(fed.config_path)

    started = time.perf_counter()
    result = await run_cli("drain", "b", "--reason", "registry timeouts, INC-7", "--by", "alice",
                           "--config", config)
    assert result.exit_code == 0, result.output
    await fed.wait_for(lambda: fed.state.table.by_name["b"].status.value == "drained", timeout=2)
    drained_after = time.perf_counter() - started

    assert "Drained b in " in result.output
    assert f"Undo with: federation undrain b --config {config}" in result.output
    for path in paths:
        response = await fed.launch(path)
        assert fed.member_by_url(response.headers["Location"]) != "b"
    sticky = await fed.launch(paths[0], Cookie=f'host="{fed.members["b"].url}"')
    assert fed.member_by_url(sticky.headers["Location"]) != "b"
    probes = sum(p == "/health" for _, p, _ in fed.members["b"].requests)
    await fed.wait_for(lambda: sum(p == "/health" for _, p, _ in fed.members["b"].requests)
                       >= probes + 2)
    status = await (await fed.client.get("/_router/status",
                                         headers={"Accept": "application/json"})).json()
    row = next(m for m in status["members"] if m["name"] == "b")
    assert row["state"] == "drained"
    assert row["drain"]["reason"] == "registry timeouts, INC-7"
    assert row["drain"]["by"] == "alice"
    assert row["drain"]["since"].startswith(time.strftime("%Y-", time.gmtime()))

    started = time.perf_counter()
    result = await run_cli("undrain", "b", "--config", config)
    assert result.exit_code == 0, result.output
    await fed.wait_for(lambda: fed.state.table.by_name["b"].status.value == "healthy", timeout=2)
    undrained_after = time.perf_counter() - started
    for path in paths:
        response = await fed.launch(path)
        assert fed.member_by_url(response.headers["Location"]) == "b"
    record_property("figures", f"file store: drain applied {drained_after * 1000:.0f} ms, "
                               f"undrain applied {undrained_after * 1000:.0f} ms after the "
                               "command started")


async def test_last_member_taking_launches_needs_force(start_federation: StartFederation) -> None:
    """Draining the last member that takes launches is refused with what would happen, and
    nothing is written; with --force it is drained and launches are refused with 503."""
    fed = await start_federation(["a", "b"])
    config = str(fed.config_path)
    assert (await run_cli("drain", "a", "--reason", "x", "--config", config)).exit_code == 0
    refused = await run_cli("drain", "b", "--reason", "y", "--config", config)
    assert refused.exit_code == 1
    assert ("b is the last member taking launches; after this every launch is refused with 503 "
            "until a member is undrained. Repeat with --force") in refused.output
    assert set(FileDrainStore(fed.workdir / "drains.yaml").read()) == {"a"}

    forced = await run_cli("drain", "b", "--reason", "y", "--force", "--config", config)
    assert forced.exit_code == 0, forced.output
    await fed.wait_status("b", "drained", timeout=2)
    response = await fed.launch("/build/gh/org/repo/HEAD")
    assert response.status == 503


async def test_member_drained_in_the_config_is_drained_and_undrain_says_where(
    start_federation: StartFederation,
) -> None:
    """``drain:`` in the config drains a member too (shown as drained by config), and
    ``undrain`` refuses, pointing at the config line instead."""
    fed = await start_federation(["a", "b"])
    doc = fed.config_doc
    fed.write_config({**doc, "members": [doc["members"][0],
                                         {**doc["members"][1], "drain": "decommissioning"}]})
    await fed.wait_status("b", "drained", timeout=2)
    assert fed.state.table.by_name["b"].reason == "drained by config: decommissioning"
    result = await run_cli("undrain", "b", "--config", str(fed.config_path))
    assert result.exit_code == 1
    assert ("b is drained in the config itself ('drain: decommissioning'); remove that line "
            "from the config") in result.output


async def test_unknown_member_and_missing_reason_are_refused(
    start_federation: StartFederation,
) -> None:
    """A misspelt member name is refused listing the members; an empty reason is refused."""
    fed = await start_federation(["gke", "ovh"], wait_ready=False)
    config = str(fed.config_path)
    typo = await run_cli("drain", "ovhh", "--reason", "x", "--config", config)
    assert typo.exit_code == 1
    assert "no member called 'ovhh'; members are: gke, ovh" in typo.output
    blank = await run_cli("drain", "ovh", "--reason", " ", "--config", config)
    assert blank.exit_code == 1
    assert "give a --reason" in blank.output
    not_drained = await run_cli("undrain", "ovh", "--config", config)
    assert not_drained.exit_code == 1
    assert "ovh is not drained" in not_drained.output
    assert not (fed.workdir / "drains.yaml").exists() or not FileDrainStore(
        fed.workdir / "drains.yaml").read()


async def test_broken_drains_document_keeps_the_drains_in_force(
    start_federation: StartFederation,
) -> None:
    """A drains file that cannot be read is reported on the status page while the drains that
    were in force stay in force."""
    fed = await start_federation(["a", "b"])
    assert (await run_cli("drain", "b", "--reason", "x", "--config",
                          str(fed.config_path))).exit_code == 0
    await fed.wait_status("b", "drained", timeout=2)
    (fed.workdir / "drains.yaml").write_text("drains: [not, a, mapping]\n")
    await fed.wait_for(lambda: fed.state.drain_error is not None, timeout=2)
    status = await (await fed.client.get("/_router/status",
                                         headers={"Accept": "application/json"})).json()
    assert "'drains' must be a mapping" in status["drains_error"]
    assert fed.state.table.by_name["b"].status.value == "drained"


async def test_concurrent_file_drains_all_land(tmp_path: Any) -> None:
    """Edits of the file store are serialised by a lock: twenty drains made at the same time
    are all in the document afterwards."""
    store = FileDrainStore(tmp_path / "drains.yaml")
    await asyncio.gather(*(
        store.update(lambda drains, n=n: with_drain(drains, f"m{n}", reason="r", by="t"))
        for n in range(20)))
    assert set(parse_drains(store.read_text())) == {f"m{n}" for n in range(20)}


async def test_route_leaves_drained_members_out(start_federation: StartFederation) -> None:
    """``federation route`` reads the drain store too: a drained member is no candidate, and
    the --drain / --weight what-ifs still apply on top."""
    fed = await start_federation(["a", "b", "c"], routing={"strategy": "rendezvous"})
    paths = await homes(fed, "b", 1)
    config = str(fed.config_path)
    before = json.loads((await run_cli("route", "--json", "--config", config, paths[0])).output)
    assert before["member"] == "b"
    assert (await run_cli("drain", "b", "--reason", "x", "--config", config)).exit_code == 0
    after = json.loads((await run_cli("route", "--json", "--config", config, paths[0])).output)
    assert after["member"] != "b"
    assert [r["member"] for r in after["ranking"]] == [
        r["member"] for r in before["ranking"] if r["member"] != "b"]
    what_if = await run_cli("route", "--json", "--config", config,
                            "--drain", after["member"], "--weight", "a=0", paths[0])
    assert json.loads(what_if.output)["member"] == "c"
    stored = yaml.safe_load((fed.workdir / "drains.yaml").read_text())
    assert list(stored["drains"]) == ["b"]
