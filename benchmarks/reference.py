"""The reference: a bare aiohttp app answering every request with one fixed 307.

It is the floor the router is measured against: the same server stack and event loop, and
none of the routing work. ``python -m benchmarks.reference --port P --loop uvloop``.

``--background SHARE`` makes it spend that share of a core on busy work whatever the load,
as a router's probing does. Its cost on a whole core is known (the share), which is what
calibrates ``benchmarks.run probing --whole-core``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable

import click
from aiohttp import web

__all__ = ["create_reference_app", "main", "new_loop"]

_LOCATION = {"Location": "http://127.0.0.1:9/build/gh/bench-org/repo/HEAD"}


async def _redirect(request: web.Request) -> web.Response:
    return web.Response(status=307, headers=_LOCATION)


def create_reference_app(background: float = 0.0) -> web.Application:
    """One catch-all route, one fixed answer; ``background``: the share of a core to spend
    on busy work besides."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _redirect)
    if background > 0:
        app.cleanup_ctx.append(_busy_work(background))
    return app


_BUSY_EVERY = 0.01  # seconds between bouts of busy work: spread as probe rounds are


def _busy_work(share: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """Every ``_BUSY_EVERY`` seconds, spin until the CPU spent on busy work since start is
    ``share`` of the time passed. CPU time, not wall time: a bout the scheduler interrupts
    still costs exactly its share."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        started, spent = time.monotonic(), 0.0
        handle: asyncio.TimerHandle | None = None

        def bout() -> None:
            nonlocal spent, handle
            begin = time.thread_time()
            owed = share * (time.monotonic() - started) - spent
            while time.thread_time() - begin < owed:
                pass
            spent += time.thread_time() - begin
            handle = loop.call_later(_BUSY_EVERY, bout)

        handle = loop.call_later(_BUSY_EVERY, bout)
        yield
        handle.cancel()

    return lifetime


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of ``kind`` (``asyncio`` or ``uvloop``)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@click.command()
@click.option("--port", type=int, required=True)
@click.option("--loop", "loop_kind", type=click.Choice(["asyncio", "uvloop"]), required=True)
@click.option("--background", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Share of a core to spend on busy work whatever the load.")
def main(port: int, loop_kind: str, background: float) -> None:
    """Serve the reference app on 127.0.0.1:PORT until SIGTERM."""
    web.run_app(create_reference_app(background), host="127.0.0.1", port=port, access_log=None,
                print=None, loop=new_loop(loop_kind), shutdown_timeout=1)


if __name__ == "__main__":
    sys.exit(main())
