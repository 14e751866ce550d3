"""A Python load generator for machines without wrk: keep-alive HTTP/1.1 over raw sockets.

It sends what ``launches.lua`` sends, tallies the redirects per member as it does (``--tally``),
and prints the same JSON line. Being Python it costs about
as much CPU per request as the server it drives, so against a fast server it is usually the
bottleneck; the harness sees that from its CPU use and refuses the run rather than report it.

``python -m benchmarks.loadgen --url http://127.0.0.1:PORT --connections 16 --duration 10``
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import click

from benchmarks.workload import POOL, random_paths

__all__ = ["Tally", "drive", "main"]

_HEAD_END = b"\r\n\r\n"
_TALLY_EVERY = 1000  # responses between two writes of the tally, as launches.lua


class Tally:
    """Redirects per member origin, written as JSON to ``path`` (replaced whole, so a reader
    never sees half a file) every ``_TALLY_EVERY`` responses and at the end."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._responses = 0

    def count(self, location: str | None) -> None:
        """One more response; a redirect counts for the origin of its ``location``."""
        if self.path is None:
            return
        if location is not None:
            scheme, _, rest = location.partition("://")
            if rest:
                self.counts[f"{scheme}://{rest.partition('/')[0]}"] += 1
        self._responses += 1
        if self._responses % _TALLY_EVERY == 0:
            self.write()

    def write(self) -> None:
        """Write the counts so far."""
        if self.path is None:
            return
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps(self.counts))
        os.replace(part, self.path)


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the next launch as soon as an answer is complete."""

    def __init__(self, requests: list[bytes], start: int, deadline: float,
                 latencies: list[float], tally: Tally, done: asyncio.Future[None]) -> None:
        self._requests = requests
        self._tally = tally
        self._next = start
        self._deadline = deadline
        self._latencies = latencies
        self._done = done
        self._buffer = b""
        self._sent_at = 0.0
        self._transport: asyncio.Transport | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        self._sent_at = time.perf_counter()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            return
        head = self._buffer[:end].decode("latin-1")
        length, location = 0, None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "location":
                location = value.strip()
        if len(self._buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        self._latencies.append(now - self._sent_at)
        self._tally.count(location)
        if not head.startswith(("HTTP/1.1 2", "HTTP/1.1 3")):
            self.errors += 1
        self._buffer = self._buffer[end + 4 + length:]
        if now < self._deadline:
            self._send()
        elif self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or time.perf_counter() < self._deadline:
            self.errors += 1
        if not self._done.done():
            self._done.set_result(None)


def _returning(protocol: _Connection) -> Callable[[], _Connection]:
    return lambda: protocol


async def drive(url: str, *, connections: int, duration: float, pool: int,
                tally: Path | None = None) -> dict[str, float]:
    """Load ``url`` for ``duration`` seconds; the same result fields as launches.lua prints.
    With ``tally``, the redirects per member go there as launches.lua writes them."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [f"GET {p} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
                for p in random_paths(20_000, pool=pool)]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    counts = Tally(tally)
    started = time.perf_counter()
    deadline = started + duration
    conns: list[_Connection] = []
    waits: list[asyncio.Future[None]] = []
    for i in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        protocol = _Connection(requests, i * 997, deadline, latencies, counts, done)
        await loop.create_connection(_returning(protocol), host, port)
        conns.append(protocol)
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), duration + 10)  # a stuck server fails
    elapsed = time.perf_counter() - started
    counts.write()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"requests": len(latencies), "duration_s": elapsed,
            "errors": sum(c.errors for c in conns),
            "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
            "p99_ms": q[98] * 1000}


@click.command()
@click.option("--url", required=True)
@click.option("--connections", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--duration", type=float, default=10.0, show_default=True)
@click.option("--pool", type=int, default=POOL, show_default=True)
@click.option("--tally", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the redirects per member here (JSON), for members that see them.")
def main(url: str, connections: int, duration: float, pool: int, tally: Path | None) -> None:
    """Drive URL with launches and print one JSON line of results."""
    work = drive(url, connections=connections, duration=duration, pool=pool, tally=tally)
    try:  # the same loop the servers use by default, when installed
        result: dict[str, float] = importlib.import_module("uvloop").run(work)
    except ImportError:
        result = asyncio.run(work)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
