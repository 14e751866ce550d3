"""Logs: JSON lines off a terminal, console lines on one, one event per state change, and
sampled launch access events."""

from __future__ import annotations

import io
import json
import logging
import os
import select
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from federation.drains import FileDrainStore, with_drain, without_drain
from federation.logs import configure_logging
from tests.conftest import Federation, StartFederation

STATE_EVENTS = {"member health changed", "member drained", "member undrained",
                "config applied", "config rejected, keeping the last good one"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers; put pytest's back afterwards."""
    root, access = logging.getLogger(), logging.getLogger("aiohttp.access")
    handlers, level, access_level = root.handlers[:], root.level, access.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.setLevel(access_level)
    structlog.reset_defaults()


def _drain(fed: Federation, member: str, reason: str) -> None:
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), member, reason=reason, by="carol"))


def _events(entries: Sequence[Mapping[str, Any]], event: str,
            **fields: Any) -> list[Mapping[str, Any]]:
    return [e for e in entries
            if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]


async def test_json_lines_when_not_a_terminal(
    start_federation: StartFederation, restore_logging: None,
) -> None:
    """Off a terminal ("auto"), every line is one JSON object with level, logger and an ISO
    timestamp: the router's own events and stdlib records (aiohttp's) alike."""
    out = io.StringIO()
    configure_logging("auto", stream=out)
    fed = await start_federation(["a", "b"])
    _drain(fed, "b", "kernel upgrade")
    await fed.wait_status("b", "drained")
    logging.getLogger("aiohttp.server").error("library said %s", "no")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    drained = _events(lines, "member drained", member="b")
    assert len(drained) == 1
    assert drained[0]["reason"] == "kernel upgrade" and drained[0]["by"] == "carol"
    assert drained[0]["level"] == "warning"
    assert drained[0]["logger"] == "federation.runtime"
    assert datetime.fromisoformat(drained[0]["timestamp"]).tzinfo is not None
    assert _events(lines, "library said no", logger="aiohttp.server", level="error")


async def test_console_lines_when_asked(
    start_federation: StartFederation, restore_logging: None,
) -> None:
    """--log-format console writes readable key=value lines, without colour codes when the
    stream is not a terminal."""
    out = io.StringIO()
    configure_logging("console", stream=out)
    fed = await start_federation(["a", "b"])
    _drain(fed, "b", "kernel upgrade")
    await fed.wait_status("b", "drained")
    line = next(ln for ln in out.getvalue().splitlines() if "member drained" in ln)
    assert "[warning  ]" in line and "member=b" in line and "reason='kernel upgrade'" in line
    assert "\x1b[" not in out.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_auto_on_a_terminal_is_coloured_console(restore_logging: None) -> None:
    """"auto" on a real terminal (a pseudo-terminal here) gives coloured console output."""
    leader, follower = os.openpty()
    with open(follower, "w", encoding="utf-8") as tty, open(leader, "rb", buffering=0) as read:
        configure_logging("auto", stream=tty)
        structlog.get_logger("federation.test").warning("member drained", member="b")
        tty.flush()
        assert select.select([leader], [], [], 5)[0], "nothing was written to the terminal"
        text = read.read(4096).decode()
    assert "member drained" in text
    assert "\x1b[" in text  # ANSI colour
    assert not text.lstrip().startswith("{")


def test_levels_below_the_threshold_are_dropped(restore_logging: None) -> None:
    """Events below the configured level are not written at all."""
    out = io.StringIO()
    configure_logging("json", level=logging.WARNING, stream=out)
    log = structlog.get_logger("federation.test")
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["loud"]


async def test_one_event_per_state_change(start_federation: StartFederation) -> None:
    """A member failing, being drained and undrained, and config reloads good and bad each
    log exactly one event with its reason, however many probe rounds follow."""
    with capture_logs() as entries:
        fed = await start_federation(["a", "b"])
        fed.members["b"].controls.health = "503"
        await fed.wait_status("b", "unhealthy")
        rounds = fed.state.healths["b"].probes
        await fed.wait_for(lambda: fed.state.healths["b"].probes >= rounds + 3)
        _drain(fed, "a", "network maintenance")
        await fed.wait_status("a", "drained")
        store = FileDrainStore(fed.workdir / "drains.yaml")
        store.write(without_drain(store.read(), "a"))
        await fed.wait_status("a", "healthy")
        routing = {**fed.config_doc["routing"], "sticky_cookie_hours": 2}
        await fed.apply_config({**fed.config_doc, "routing": routing})
        await fed.break_config("members: 7\n")
        rounds = fed.state.healths["b"].probes
        await fed.wait_for(lambda: fed.state.healths["b"].probes >= rounds + 2)

    changed = [e for e in entries if e["event"] in STATE_EVENTS]
    summary = [(e["event"], e.get("member"), e.get("state")) for e in changed]
    assert set(summary[:2]) == {("member health changed", "a", "healthy"),
                                ("member health changed", "b", "healthy")}
    assert summary[2:] == [
        ("member health changed", "b", "unhealthy"),
        ("member drained", "a", None),
        ("member undrained", "a", None),
        ("config applied", None, None),
        ("config rejected, keeping the last good one", None, None),
    ]
    assert changed[2]["reason"] == "Docker registry"
    assert changed[3]["reason"] == "network maintenance" and changed[3]["by"] == "carol"
    assert changed[5]["generation"] == 2
    assert "field 'members'" in changed[6]["error"]


@pytest.mark.parametrize(("rate", "logged"), [(0.0, 0), (1.0, 6)])
async def test_launch_access_log_is_sampled(
    start_federation: StartFederation, rate: float, logged: int,
) -> None:
    """logging.access_log is the share of redirects logged: off by default (0), every one at
    1, each event naming the member and the reason (never more than the key of the repo)."""
    fed = await start_federation(["a", "b"], logging={"access_log": rate},
                                 routing={"strategy": "rendezvous"})
    with capture_logs() as entries:
        for i in range(6):
            assert (await fed.launch(f"/build/gh/org/repo{i}/HEAD?x=secret")).status == 307
    launches = _events(entries, "launch")
    assert len(launches) == logged
    for event in launches:
        assert event["member"] in ("a", "b") and event["reason"] == "load_balancer"
        assert event["key"].startswith("/build/gh/org/repo") and "secret" not in event["key"]


async def test_malformed_requests_log_one_warning_without_traceback() -> None:
    """Garbage sent to the public port is answered 400 and logged as one warning line."""
    import asyncio
    import io
    import json as jsonlib

    from aiohttp import web as aioweb

    from federation.logs import configure_logging

    out = io.StringIO()
    configure_logging("json", stream=out)
    runner = aioweb.AppRunner(aioweb.Application())
    await runner.setup()
    await aioweb.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n"
                     b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n")
        assert (await reader.read(12)).startswith(b"HTTP/1.0 400")
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    events = [jsonlib.loads(line) for line in out.getvalue().splitlines()]
    server = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert len(server) == 1
    assert server[0]["level"] == "warning"
    assert "malformed request (Duplicate Content-Length" in server[0]["event"]
    assert "exception" not in server[0]
