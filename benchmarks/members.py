"""Simulated members for the benchmarks, served from a process of their own.

``python -m benchmarks.members --count 100 [--churn]`` prints the members' URLs as one JSON
line, then serves until SIGTERM. With ``--churn`` every member reports a new pod count twice
a second, as busy production members do, so each probe result changes the routing table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys

import click

from benchmarks.workload import MEMBER_QUOTA
from federation.demo import MemberControls, SimulatedMember

__all__ = ["main", "serve_members"]


async def serve_members(count: int, *, churn: bool) -> None:
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
        while not stop.is_set():
            if churn:
                for sim in sims:
                    sim.controls.extra_pods = rng.randrange(50)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    finally:
        for sim in sims:
            await sim.stop()


@click.command()
@click.option("--count", type=click.IntRange(1, 1000), required=True)
@click.option("--churn/--no-churn", default=False, help="Change every member's pod count.")
def main(count: int, churn: bool) -> None:
    """Serve COUNT simulated members until SIGTERM."""
    asyncio.run(serve_members(count, churn=churn))


if __name__ == "__main__":
    sys.exit(main())
