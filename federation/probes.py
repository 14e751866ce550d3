"""Probe loops: one task per member fetching BinderHub's /health and /versions.

Each round makes exactly one request to /health and, when due (``versions_due``), one to
/versions in parallel, each under the probe timeout and a body size cap; there is no retry
loop inside a round (today's redirector makes five full round trips per check). Flaky
answers are absorbed by the hysteresis in ``health.advance`` instead. A member that hangs,
resets connections, trickles bytes or answers garbage only ever produces a failed
``ProbeResult`` for itself: the request path never waits on a probe.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from federation import __version__
from federation.config import HealthSettings, Member
from federation.errors import ProbeError
from federation.fetch import Fetcher
from federation.health import (
    HealthReport,
    MemberHealth,
    ProbeResult,
    State,
    Versions,
    parse_health,
    parse_versions,
)

__all__ = ["Prober", "next_delay", "probe_delay", "probe_fetcher", "probe_member", "round_start",
           "versions_due"]

log = structlog.get_logger("federation.probes")

ResultCallback = Callable[[str, ProbeResult], None]
_Parsed = TypeVar("_Parsed", HealthReport, Versions)


@dataclass(frozen=True, slots=True)
class _Target:
    member: Member
    settings: HealthSettings


def probe_fetcher(*, keep_alive: bool = True) -> Fetcher:
    """The HTTP client probes use: kept-alive connections (two per member, as /health and
    /versions go in parallel); ``keep_alive=False`` suits one-off rounds (``check --probe``)."""
    return Fetcher(user_agent=_USER_AGENT, keep_alive=keep_alive)


_USER_AGENT = f"binder-federation-router/{__version__} (health probe)"


async def _answer(
    fetcher: Fetcher,
    url: str,
    parse: Callable[[int, bytes], _Parsed],
    settings: HealthSettings,
) -> _Parsed:
    """One endpoint fetched and parsed; every way it can go wrong is a ``ProbeError``."""
    status, body = await fetcher.get(url, limit=settings.max_body_bytes,
                                     timeout=settings.timeout)
    return parse(status, body)


def _failure(outcome: object, member: Member, what: str) -> str | None:
    """The reason a fetch failed, or None if it produced an answer."""
    if isinstance(outcome, ProbeError):
        return outcome.reason
    if isinstance(outcome, BaseException):  # a bug, not the member: say so, keep probing
        log.error("probe failed unexpectedly", member=member.name, endpoint=what,
                  exc_info=outcome)
        return f"probe failed ({type(outcome).__name__})"
    return None


async def probe_member(
    fetcher: Fetcher,
    member: Member,
    settings: HealthSettings,
    *,
    versions: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """One probe round of ``member``: never raises, failures become ``ProbeResult.error``.

    /health and /versions are fetched in parallel and judged apart, so /versions is kept
    even when /health fails — the prime's versions must stay current while it is sick.
    ``versions=False`` fetches /health alone (``versions_due``).
    """
    started = clock()
    # One task for /versions while this one fetches /health: gather's two tasks and its
    # future cost a seventh of a round's instructions (benchmarks/instructions.py).
    versions_fetch = asyncio.ensure_future(
        _answer(fetcher, member.versions_url, parse_versions, settings)) if versions else None
    health: HealthReport | Exception
    versions_got: Versions | Exception | None = None
    try:
        try:
            health = await _answer(fetcher, member.health_url, parse_health, settings)
        except Exception as e:
            health = e
        if versions_fetch is not None:
            try:
                versions_got = await versions_fetch
            except Exception as e:
                versions_got = e
    finally:
        if versions_fetch is not None:
            versions_fetch.cancel()  # this round was cancelled: so is its /versions fetch
    health_error = _failure(health, member, "health")
    versions_error = _failure(versions_got, member, "versions")
    error = health_error or (versions_error and f"/versions: {versions_error}")
    return ProbeResult(
        at=started,
        latency=clock() - started,
        health=health if isinstance(health, HealthReport) else None,
        versions=versions_got if isinstance(versions_got, Versions) else None,
        error=error,
    )


def next_delay(
    settings: HealthSettings, *, failures: int, healthy: bool, rng: random.Random
) -> float:
    """Seconds to the next round: the interval with jitter, or capped backoff while failing.

    Backoff starts once the member is out: the round after ejection comes one interval later,
    then two, four, … up to ``max_backoff``. Jitter spreads rounds by ±``jitter``/2.
    """
    base = settings.interval
    if not healthy and failures > 0:
        doublings = max(0, failures - settings.failures_to_eject)
        # capped exponent: a member down for days must not overflow the float
        base = min(settings.max_backoff, settings.interval * 2.0 ** min(doublings, 32))
    return base * (1 + settings.jitter * (0.5 - rng.random()))


def probe_delay(health: MemberHealth | None, settings: HealthSettings, rng: random.Random) -> float:
    """Seconds until a member in ``health`` is probed again.

    Only an unhealthy member whose last round failed backs off. Once a round passes, the
    next ones come every interval, so a member is restored ``successes_to_restore − 1``
    intervals after the first round that sees it back — at worst ``max_backoff`` plus that
    after it really recovered.
    """
    if health is None:
        return next_delay(settings, failures=0, healthy=True, rng=rng)
    return next_delay(settings, failures=health.failures,
                      healthy=health.state is not State.UNHEALTHY, rng=rng)


def versions_due(health: MemberHealth | None, settings: HealthSettings, now: float, *,
                 prime: bool) -> bool:
    """Whether a member's next round fetches /versions as well as /health.

    Versions change only on deploys, and fetching them every round was about a quarter of
    what probing a hundred members every second cost an idle router. So a member in
    rotation is asked every ``versions_interval``. The prime is asked every round: its
    versions are the reference every other member is judged on, and a stale reference once
    starved a federation for hours. So is a member that is unknown, out (it may be waiting
    to clear a version skew) or has never answered /versions.
    """
    if (prime or health is None or health.state is not State.HEALTHY
            or health.versions_at is None):
        return True
    return now - health.versions_at >= settings.versions_interval


ROUND_TICK = 0.05  # seconds: rounds start on this grid at most (see ``round_start``)


def round_start(now: float, delay: float, interval: float) -> float:
    """When a round due ``delay`` seconds after ``now`` starts: the next tick of a shared grid.

    The grid is 1/20 of the interval, at most ``ROUND_TICK``. Rounds due in the same tick
    start in one wake-up of the event loop instead of one each: with a hundred members probed
    every second that is twenty wake-ups a second instead of a hundred, and what probing
    cost an idle router fell from 7.5–7.9 % to 4.1–4.9 % of a core (one scratch A/B of three
    runs each). A round starts at most one tick late; jitter still spreads the members.
    """
    tick = min(ROUND_TICK, interval / 20)
    return math.ceil((now + delay) / tick) * tick


class Prober:
    """Owns one probe task per configured member; ``reconcile`` follows config changes.

    Results go to ``on_result`` (the runtime), which decides what they mean. The next delay
    is asked of ``delay_for`` (``probe_delay`` over the runtime's view of the member), so
    whether it is failing sets the pace; likewise ``wants_versions`` (``versions_due``)
    says whether a round fetches /versions. The first round of a new or changed member
    always does.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        on_result: ResultCallback,
        delay_for: Callable[[str, HealthSettings], float],
        wants_versions: Callable[[Member, HealthSettings], bool],
    ) -> None:
        self._fetcher = fetcher
        self._on_result = on_result
        self._delay_for = delay_for
        self._wants_versions = wants_versions
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
        last: _Target | None = None
        while name in self._targets:
            target = self._targets[name]
            versions = target is not last or self._wants_versions(target.member,
                                                                  target.settings)
            last = target
            result = await probe_member(self._fetcher, target.member, target.settings,
                                        versions=versions)
            if self._targets.get(name) is not target:
                continue  # the member changed during the round: probe the new one
            try:
                self._on_result(name, result)
            except Exception:
                log.exception("probe result handling failed", member=name)
            wake = self._wake[name]
            wake.clear()
            # a timer that sets the event, not asyncio.timeout: no exception thrown into
            # the task a hundred times a second
            loop = asyncio.get_running_loop()
            settings = target.settings
            timer = loop.call_at(
                round_start(loop.time(), self._delay_for(name, settings), settings.interval),
                wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    async def close(self) -> None:
        """Stop every probe task and wait for them to end."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._targets.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
