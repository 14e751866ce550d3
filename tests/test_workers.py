"""``federation serve --workers N``: N routers on one port, one supervisor, no orphans.

Each test runs the real command in a subprocess on 127.0.0.1 against simulated members. Which
worker answered a connection is read from /proc (the worker holding the accepted socket), so
the tests see the kernel spreading connections without the router having to say who it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from federation.demo import SimulatedMember
from tests.conftest import federation_doc

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to tell the workers apart")


@dataclass
class Served:
    """A running ``federation serve --workers`` and what it announced."""

    proc: subprocess.Popen[bytes]
    port: int
    workers: list[int]
    members: dict[str, SimulatedMember]
    log: Path


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped has stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _until(predicate: object, what: str, timeout: float = 8.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    del what  # named for the reader of a failing test's traceback


def _announcement(log: Path) -> dict[str, object] | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"router listening"' in line:
            event: dict[str, object] = json.loads(line)
            return event
    return None


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """Two simulated members and ``federation serve --workers 2`` on a free port."""
    members = {name: SimulatedMember(name) for name in ("a", "b")}
    for sim in members.values():
        await sim.start()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(federation_doc(members)))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "federation", "serve", "--config", str(config), "--host",
             "127.0.0.1", "--port", "0", "--workers", "2", "--log-format", "json"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        await _until(lambda: _announcement(log) is not None or proc.poll() is not None,
                     "the supervisor announces its port")
        event = _announcement(log)
        assert event is not None, log.read_text()
        url, pids = str(event["url"]), event["pids"]
        assert isinstance(pids, list)
        yield Served(proc, int(url.rsplit(":", 1)[1]), [int(p) for p in pids], members, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for sim in members.values():
            await sim.stop()


def _worker_holding(port: int, client_port: int, workers: list[int]) -> int | None:
    """The worker that accepted the connection from ``client_port`` to ``port``, if any."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == port and int(remote[1], 16) == client_port:
            inode = fields[9]
    for pid in workers:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


async def _launch_on_new_connection(port: int) -> tuple[str, int, asyncio.StreamWriter]:
    """One launch on a fresh connection left open: (status line, client port, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /build/gh/org/repo/HEAD HTTP/1.1\r\nHost: router\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], writer.get_extra_info("sockname")[1], writer


async def _wait_ready(served: Served) -> None:
    """Every worker answers launches with 307 once it has probed the members."""
    async def ready() -> bool:
        statuses = set()
        for _ in range(8):
            try:
                status, _, writer = await _launch_on_new_connection(served.port)
            except ConnectionRefusedError:  # a worker is still starting
                return False
            writer.close()
            statuses.add(status)
        return statuses == {"HTTP/1.1 307 Temporary Redirect"}

    async with asyncio.timeout(8):
        while not await ready():
            await asyncio.sleep(0.05)


async def test_two_workers_share_the_port_and_both_redirect(served: Served) -> None:
    """Connections to the one port are spread over both workers, and each answers a 307."""
    assert len(served.workers) == 2 and served.proc.pid not in served.workers
    await _wait_ready(served)
    answered: dict[int, set[str]] = {}
    writers = []
    try:
        for _ in range(64):
            status, client_port, writer = await _launch_on_new_connection(served.port)
            writers.append(writer)
            pid = _worker_holding(served.port, client_port, served.workers)
            assert pid is not None, "no worker holds the accepted connection"
            answered.setdefault(pid, set()).add(status)
            if len(answered) == 2:
                break
    finally:
        for writer in writers:
            writer.close()
    assert set(answered) == set(served.workers)
    assert all(statuses == {"HTTP/1.1 307 Temporary Redirect"}
               for statuses in answered.values())


async def test_stopping_the_supervisor_stops_every_worker(served: Served) -> None:
    """SIGTERM to the supervisor: it exits 0 after every worker has stopped."""
    assert all(_alive(pid) for pid in served.workers)
    served.proc.send_signal(signal.SIGTERM)
    await _until(lambda: served.proc.poll() is not None, "the supervisor exits")
    assert served.proc.returncode == 0, served.log.read_text()
    assert not any(_alive(pid) for pid in served.workers)


async def test_workers_stop_when_the_supervisor_is_killed(served: Served) -> None:
    """A supervisor killed outright (SIGKILL) leaves no orphan: the workers stop themselves."""
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait()
    await _until(lambda: not any(_alive(pid) for pid in served.workers),
                 "the orphaned workers stop")
    assert "the supervising process is gone" in served.log.read_text()


async def test_a_dead_worker_stops_the_others_and_fails_the_supervisor(served: Served) -> None:
    """One worker dying takes the rest down, and the supervisor exits non-zero saying why."""
    os.kill(served.workers[0], signal.SIGKILL)
    await _until(lambda: served.proc.poll() is not None, "the supervisor exits")
    assert served.proc.returncode == 1
    assert not _alive(served.workers[1])
    assert f"pid {served.workers[0]}) exited with code -9" in served.log.read_text()
