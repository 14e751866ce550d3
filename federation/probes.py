"""Probe loops: one task per member fetching BinderHub's /health and /versions.

Each round makes exactly one request to each endpoint, in parallel, under one timeout; there is
no retry loop inside a round (today's redirector makes five full round trips per check). Flaky
answers are absorbed by the hysteresis in ``health.advance`` instead. A member that hangs,
resets connections, trickles bytes or answers garbage only ever produces a failed
``ProbeResult`` for itself: the request path never waits on a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from federation.config import HealthSettings, Member
from federation.errors import ProbeError
from federation.health import HealthReport, ProbeResult, Versions, parse_health, parse_versions

__all__ = ["Prober", "next_delay", "probe_member"]

log = structlog.get_logger("federation.probes")

ResultCallback = Callable[[str, ProbeResult], None]


@dataclass(frozen=True, slots=True)
class _Target:
    member: Member
    settings: HealthSettings


async def _fetch(
    session: aiohttp.ClientSession, url: str, *, limit: int, timeout: float
) -> tuple[int, bytes]:
    async with session.get(
        url,
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
        headers={"Accept": "application/json"},
    ) as resp:
        body = await resp.content.read(limit + 1)
        if len(body) > limit:
            raise ProbeError("answer too large", f"{url} sent more than {limit} bytes")
        return resp.status, body


async def probe_member(
    session: aiohttp.ClientSession,
    member: Member,
    settings: HealthSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """One probe round of ``member``: never raises, failures become ``ProbeResult.error``."""
    started = clock()
    limit, timeout = settings.max_body_bytes, settings.timeout
    health: HealthReport | None = None
    versions: Versions | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            (h_status, h_body), (v_status, v_body) = await asyncio.gather(
                _fetch(session, member.health_url, limit=limit, timeout=timeout),
                _fetch(session, member.versions_url, limit=limit, timeout=timeout),
            )
        health = parse_health(h_status, h_body)
        versions = parse_versions(v_status, v_body)
    except ProbeError as e:
        error = e.reason
    except TimeoutError:
        error = f"timeout after {timeout:g}s"
    except aiohttp.ClientConnectorError:
        error = "unreachable"
    except (aiohttp.ClientError, OSError) as e:
        error = f"connection error ({type(e).__name__})"
    return ProbeResult(at=started, latency=clock() - started, health=health, versions=versions,
                       error=error)


def next_delay(settings: HealthSettings, *, failures: int, healthy: bool, rng: random.Random) -> float:
    """Seconds to the next round: the interval with jitter, or capped backoff while failing."""
    base = settings.interval
    if not healthy and failures > 0:
        base = min(settings.max_backoff, settings.interval * 2 ** (failures - 1))
    return base * (1 + settings.jitter * (0.5 - rng.random()))


class Prober:
    """Owns one probe task per configured member; ``reconcile`` follows config changes.

    Results go to ``on_result`` (the runtime), which decides what they mean. The next delay
    is asked of ``delay_for`` so the runtime's view of a member (failing or not) sets the pace.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        on_result: ResultCallback,
        delay_for: Callable[[str, HealthSettings], float],
    ) -> None:
        self._session = session
        self._on_result = on_result
        self._delay_for = delay_for
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._targets: dict[str, _Target] = {}
        self._wake: dict[str, asyncio.Event] = {}

    @property
    def members(self) -> frozenset[str]:
        """Names of the members being probed."""
        return frozenset(self._tasks)

    def reconcile(self, members: tuple[Member, ...], settings: HealthSettings) -> None:
        """Start probing new members, stop removed ones, re-point changed ones."""
        wanted = {m.name: _Target(m, settings) for m in members}
        for name in set(self._tasks) - set(wanted):
            self._tasks.pop(name).cancel()
            self._targets.pop(name, None)
            self._wake.pop(name, None)
        for name, target in wanted.items():
            changed = self._targets.get(name) != target
            self._targets[name] = target
            if name not in self._tasks:
                self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._loop(name), name=f"probe:{name}")
            elif changed:
                self._wake[name].set()  # probe a changed member now, not after its old delay

    async def _loop(self, name: str) -> None:
        while name in self._targets:
            target = self._targets[name]
            result = await probe_member(self._session, target.member, target.settings)
            if self._targets.get(name) is not target:
                continue  # the member changed during the round: probe the new one
            try:
                self._on_result(name, result)
            except Exception:
                log.exception("probe result handling failed", member=name)
            wake = self._wake[name]
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay_for(name, target.settings)):
                    await wake.wait()

    async def close(self) -> None:
        """Stop every probe task and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._targets.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
