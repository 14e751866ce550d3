"""Simulated members for the benchmarks, served from a process of their own.

``python -m benchmarks.members --count 100 [--churn] [--seen DIR]`` prints the members' URLs
as one JSON line, then serves until SIGTERM. With ``--churn`` every member adds a new number
of other pods twice a second, as busy production members do. With ``--seen DIR`` members see
the launches sent to them: the load generator never follows a redirect, so it writes how
many it got per member into ``DIR`` (``launches.lua``), and each member reports those of the
last ``--lifetime`` seconds as running sessions. Without it a member's pods never rise, and
the router's own count of the launches it sent is all of their load.

``forget_launches(DIR)`` ends every session at once: the members count their pods again
without the launches seen so far. ``probing --paired`` calls it before each pair, so the
sessions a pair's launches started (ten minutes of them with ``--lifetime 600``) do not
load the members the next pair measures on.

``--pod-cache 60`` has members report their pods as BinderHub does: from a count taken at
most once a minute (BinderHub's ``at_most_every``; members count apart from each other).
The default, 0, counts at every look, so nearly every probe of a busy member reports a new
count and rebuilds the routing table: the worst case for probing's cost. It is also the
only one that suits ``--lifetime``'s 30 s: sessions that end within one count leave a count
a minute old mostly made of sessions gone, and members whose counts fell at different
moments can look loaded by up to three times as much as each other (30 s of sessions against
up to 90 s of launches), so 41 % of launches spilled (README, *Probing with BinderHub's pod
count*).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import click

from benchmarks.workload import MEMBER_QUOTA
from federation.demo import MemberControls, SimulatedMember

__all__ = ["LIFETIME", "LaunchesSeen", "Tallies", "forget_launches", "main", "serve_members"]

_TICK = 0.2  # seconds between two looks at the tallies (and at churn)
# Seconds a launch seen runs as a session. Long against the 10 s between two probes, as in
# production (sessions last minutes): a member's load then moves by a fraction between its
# probes, where it would restart from nothing at each one. Short against a benchmark run,
# so one run's launches are gone from the members a few rounds later.
LIFETIME = 30.0


class LaunchesSeen:
    """Launches per member over the last ``lifetime`` seconds, from running totals.

    The totals only grow (every tally file keeps its counts from its load generator's start),
    so the launches of a window are the total now less the total when it began.
    """

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._history: deque[tuple[float, Mapping[str, int]]] = deque()
        self._forgotten: Mapping[str, int] = {}  # totals whose launches are over (``forget``)

    def observe(self, now: float, totals: Mapping[str, int]) -> None:
        """Record the running totals per member origin at time ``now``."""
        self._history.append((now, dict(totals)))
        # keep one sample at or before the window's start: the base the window subtracts
        while len(self._history) > 1 and self._history[1][0] <= now - self.lifetime:
            self._history.popleft()

    def forget(self, totals: Mapping[str, int]) -> None:
        """End the sessions of every launch in ``totals``, the running totals now."""
        self._history.clear()
        self._forgotten = dict(totals)

    def running(self, origin: str) -> int:
        """Launches sent to ``origin`` within the last ``lifetime`` seconds observed (all of
        them while the observations span less), less those forgotten."""
        if not self._history:
            return 0
        (start, base), (now, latest) = self._history[0], self._history[-1]
        before = base.get(origin, 0) if start <= now - self.lifetime else 0
        return latest.get(origin, 0) - max(before, self._forgotten.get(origin, 0))


class Tallies:
    """The launches per member origin in every tally ``launches.lua`` wrote to ``directory``.

    A file is parsed again only when it was replaced: each finished load generator leaves
    its tally behind, and a run's hundred of them, parsed five times a second, would take a
    tenth of the core the load generator needs.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[Path, tuple[tuple[int, int, int], dict[str, int]]] = {}

    def read(self) -> dict[str, int]:
        """The totals now."""
        totals: dict[str, int] = {}
        for path in self.directory.glob("*.json"):
            known = self._files.get(path)
            with contextlib.suppress(OSError, ValueError):  # gone or torn: as last read
                stat = path.stat()
                version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if known is None or known[0] != version:
                    counts = {origin: int(count)
                              for origin, count in json.loads(path.read_text()).items()}
                    known = self._files[path] = (version, counts)
            for origin, count in (known[1] if known else {}).items():
                totals[origin] = totals.get(origin, 0) + count
        return totals


_FORGET, _FORGOTTEN = "forget", "forgotten"  # files in the tallies' directory, not *.json


def forget_launches(seen: Path, *, timeout: float = 10.0) -> None:
    """Have the members serving ``seen`` (``--seen``) end every session now and count their
    pods again; returns once they have. The request is a token in a file, and the members
    answer with the same token in another (``_acknowledge``)."""
    token = uuid.uuid4().hex
    part = seen / f"{_FORGET}.part"
    part.write_text(token)
    os.replace(part, seen / _FORGET)
    deadline = time.monotonic() + timeout
    while _token(seen / _FORGOTTEN) != token:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the members serving {seen} did not forget their launches "
                               f"within {timeout:g} s")
        time.sleep(_TICK / 4)


def _token(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _acknowledge(seen: Path, token: str) -> None:
    part = seen / f"{_FORGOTTEN}.part"
    part.write_text(token)
    os.replace(part, seen / _FORGOTTEN)


def _staggered(sims: list[SimulatedMember], now: float, pod_cache: float) -> dict[str, float]:
    """When each member last counted its pods, spread over the last ``pod_cache`` seconds
    (as members counting apart from each other are at any moment)."""
    return {sim.url: now - pod_cache * i / len(sims) for i, sim in enumerate(sims)}


async def serve_members(count: int, *, churn: bool, seen: Path | None = None,
                        lifetime: float = LIFETIME, pod_cache: float = 0.0) -> None:
    """Start ``count`` members on 127.0.0.1, announce their URLs, serve until told to stop."""
    sims = [SimulatedMember(f"m{i:03d}", MemberControls(quota=MEMBER_QUOTA))
            for i in range(count)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for sim in sims:
            await sim.start()
        print(json.dumps([sim.url for sim in sims]), flush=True)
        rng = random.Random(3)
        launches = LaunchesSeen(lifetime)
        tallies = None if seen is None else Tallies(seen)
        others = dict.fromkeys((sim.url for sim in sims), 0)
        counted = _staggered(sims, loop.time(), pod_cache)
        next_churn = 0.0
        forgotten = None if seen is None else _token(seen / _FORGET)
        while not stop.is_set():
            now = loop.time()
            if churn and now >= next_churn:
                others = {sim.url: rng.randrange(50) for sim in sims}
                next_churn = now + 0.5
            forget = None
            if seen is not None and tallies is not None:
                totals = tallies.read()
                forget = _token(seen / _FORGET)
                if forget is None or forget == forgotten:
                    forget = None
                else:
                    launches.forget(totals)
                launches.observe(now, totals)
            for sim in sims:
                if forget is not None or now - counted[sim.url] >= pod_cache:
                    counted[sim.url] = now
                    sim.controls.extra_pods = others[sim.url] + launches.running(sim.url)
            if seen is not None and forget is not None:
                counted, forgotten = _staggered(sims, now, pod_cache), forget
                _acknowledge(seen, forget)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_TICK)
    finally:
        for sim in sims:
            await sim.stop()


@click.command()
@click.option("--count", type=click.IntRange(1, 1000), required=True)
@click.option("--churn/--no-churn", default=False, help="Change every member's pod count.")
@click.option("--seen", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report the launches the load generator tallied here as sessions.")
@click.option("--lifetime", type=click.FloatRange(min=0.1), default=LIFETIME, show_default=True,
              help="Seconds a launch seen counts as a running session.")
@click.option("--pod-cache", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds a member reports the same pod count (BinderHub: 60).")
def main(count: int, churn: bool, seen: Path | None, lifetime: float, pod_cache: float) -> None:
    """Serve COUNT simulated members until SIGTERM."""
    asyncio.run(serve_members(count, churn=churn, seen=seen, lifetime=lifetime,
                              pod_cache=pod_cache))


if __name__ == "__main__":
    sys.exit(main())
