"""Live config reload from a file: members come and go without a restart, broken edits are
rejected whole, and SIGHUP re-reads at once.

The router watches the config file of the ``start_federation`` fixture (polled every 50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from federation.demo import SimulatedMember
from federation.sources import FileConfigSource
from tests.conftest import Federation, StartFederation

pytestmark = pytest.mark.timeout(10)


def health_probes(sim: SimulatedMember) -> int:
    """How many /health requests ``sim`` has answered so far."""
    return sum(path == "/health" for _, path, _ in sim.requests)


def reload_errors(fed: Federation) -> float:
    """The router's federation_config_reload_errors counter."""
    value = fed.state.metrics.registry.get_sample_value("federation_config_reload_errors_total")
    return value or 0.0


@contextlib.asynccontextmanager
async def extra_member(name: str) -> AsyncIterator[SimulatedMember]:
    """A simulated member outside the fixture's, stopped at the end of the block."""
    sim = SimulatedMember(name)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_edit_adds_and_removes_members_live(start_federation: StartFederation) -> None:
    """An edited config adds a member (probed, then taking launches) and removes one (no longer
    probed nor routed to), while a member that stays keeps its health record."""
    fed = await start_federation(["a", "b"], routing={"strategy": "rendezvous"})
    kept = fed.state.healths["a"]
    async with extra_member("c") as new:
        doc = fed.config_doc
        fed.write_config({**doc, "members": [doc["members"][0],
                                             {"name": "c", "url": new.url, "weight": 10}]})
        await fed.wait_for(lambda: "c" in fed.state.table.by_name, timeout=2)
        await fed.wait_status("c", "healthy")
        assert "b" not in fed.state.table.by_name
        assert fed.state.healths["a"].since == kept.since  # not reset to "unknown"
        assert fed.state.healths["a"].probes >= kept.probes

        # b's probe task is gone: a keeps being probed, b is not asked again.
        a = fed.members["a"]
        seen = health_probes(a)
        await fed.wait_for(lambda: health_probes(a) >= seen + 2)  # nothing in flight to b now
        frozen, seen = health_probes(fed.members["b"]), health_probes(a)
        await fed.wait_for(lambda: health_probes(a) >= seen + 5)
        assert health_probes(fed.members["b"]) == frozen

        urls = {fed.members["a"].url: "a", new.url: "c"}
        landed = set()
        for i in range(30):
            location = (await fed.launch(f"/build/gh/org/r{i}/HEAD")).headers["Location"]
            landed.add(urls[location.split("/build/", 1)[0]])
        assert landed == {"a", "c"}


async def test_broken_edit_keeps_the_last_good_config(start_federation: StartFederation) -> None:
    """A config that fails validation is rejected whole: the old one stays in force, the error
    names the member and field on the status page and in the metric, and the next good edit
    clears it."""
    fed = await start_federation(["a", "b"])
    generation = fed.state.generation
    doc = fed.config_doc
    broken = {**doc, "members": [doc["members"][0], {**doc["members"][1], "weight": "heavy"},
                                 {"name": "c", "url": "http://127.0.0.1:9"}]}
    with structlog.testing.capture_logs() as logs:
        fed.write_config(broken)
        await fed.wait_for(lambda: fed.state.rejection is not None, timeout=2)
    error = fed.state.rejection.error
    logged = [e for e in logs if e["event"] == "config rejected, keeping the last good one"]
    assert [(e["member"], e["field"]) for e in logged] == [("b", "weight")]
    assert (error.member, error.field) == ("b", "weight")
    assert error.source == str(fed.config_path)
    assert reload_errors(fed) == 1
    status = await (await fed.client.get("/_router/status",
                                         headers={"Accept": "application/json"})).json()
    assert status["config"]["error"]["field"] == "weight"
    assert status["config"]["error"]["member"] == "b"
    assert "weight must be a number, got 'heavy'" in status["config"]["error"]["message"]
    assert status["config"]["generation"] == generation
    assert set(fed.state.table.by_name) == {"a", "b"}
    response = await fed.launch("/build/gh/org/repo/HEAD")
    assert response.status == 307

    fed.write_config({**doc, "members": [doc["members"][0], {**doc["members"][1], "weight": 5}]})
    await fed.wait_for(lambda: fed.state.generation == generation + 1, timeout=2)
    assert fed.state.rejection is None
    assert fed.state.config.member("b").weight == 5  # type: ignore[union-attr]
    assert reload_errors(fed) == 1


async def test_deleted_config_file_keeps_the_config(start_federation: StartFederation) -> None:
    """A config file that disappears (a bad deploy, a half-done rename) is reported and the
    config in force stays."""
    fed = await start_federation(["a", "b"])
    fed.config_path.unlink()
    await fed.wait_for(lambda: fed.state.rejection is not None, timeout=2)
    assert "missing" in fed.state.rejection.error.message
    assert set(fed.state.table.by_name) == {"a", "b"}


async def test_reload_now_rereads_without_waiting_for_the_poll(tmp_path: Path) -> None:
    """``reload_now`` (what SIGHUP calls) yields the file's text at once, even with a poll
    interval of an hour, and even when nothing seems to have changed."""
    path = tmp_path / "config.yaml"
    path.write_text("first\n")
    source = FileConfigSource(path, poll_interval=3600)
    texts = source.watch()
    try:
        assert await anext(texts) == "first\n"
        path.write_text("second\n")
        pending = asyncio.ensure_future(anext(texts))
        await asyncio.sleep(0)
        assert not pending.done()
        source.reload_now()
        async with asyncio.timeout(2):
            assert await pending == "second\n"
        source.reload_now()
        async with asyncio.timeout(2):
            assert await anext(texts) == "second\n"
    finally:
        await texts.aclose()  # type: ignore[attr-defined]
