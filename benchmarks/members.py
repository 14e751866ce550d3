"""Simulated members for the benchmarks, served from a process of their own.

``python -m benchmarks.members --count 100 [--churn] [--seen DIR]`` prints the members' URLs
as one JSON line, then serves until SIGTERM. With ``--churn`` every member adds a new number
of other pods twice a second, as busy production members do. With ``--seen DIR`` members see
the launches sent to them: the load generator never follows a redirect, so it writes how
many it got per member into ``DIR`` (``launches.lua``), and each member reports those of the
last ``--lifetime`` seconds as running sessions. Without it a member's pods never rise, and
the router's own count of the launches it sent is all of their load.

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
import random
import signal
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import click

from benchmarks.workload import MEMBER_QUOTA
from federation.demo import MemberControls, SimulatedMember

__all__ = ["LIFETIME", "LaunchesSeen", "Tallies", "main", "serve_members"]

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

    def observe(self, now: float, totals: Mapping[str, int]) -> None:
        """Record the running totals per member origin at time ``now``."""
        self._history.append((now, dict(totals)))
        # keep one sample at or before the window's start: the base the window subtracts
        while len(self._history) > 1 and self._history[1][0] <= now - self.lifetime:
            self._history.popleft()

    def running(self, origin: str) -> int:
        """Launches sent to ``origin`` within the last ``lifetime`` seconds observed (all of
        them while the observations span less)."""
        if not self._history:
            return 0
        (start, base), (now, latest) = self._history[0], self._history[-1]
        before = base.get(origin, 0) if start <= now - self.lifetime else 0
        return latest.get(origin, 0) - before


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
        now = loop.time()  # members took their last counts spread over the last pod_cache
        counted = {sim.url: now - pod_cache * i / count for i, sim in enumerate(sims)}
        next_churn = 0.0
        while not stop.is_set():
            now = loop.time()
            if churn and now >= next_churn:
                others = {sim.url: rng.randrange(50) for sim in sims}
                next_churn = now + 0.5
            if tallies is not None:
                launches.observe(now, tallies.read())
            for sim in sims:
                if now - counted[sim.url] >= pod_cache:
                    counted[sim.url] = now
                    sim.controls.extra_pods = others[sim.url] + launches.running(sim.url)
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
