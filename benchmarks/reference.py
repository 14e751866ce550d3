"""The reference: a bare aiohttp app answering every request with one fixed 307.

It is the floor the router is measured against: the same server stack and event loop, and
none of the routing work. ``python -m benchmarks.reference --port P --loop uvloop``.
"""

from __future__ import annotations

import asyncio
import sys

import click
from aiohttp import web

__all__ = ["create_reference_app", "main", "new_loop"]

_LOCATION = {"Location": "http://127.0.0.1:9/build/gh/bench-org/repo/HEAD"}


async def _redirect(request: web.Request) -> web.Response:
    return web.Response(status=307, headers=_LOCATION)


def create_reference_app() -> web.Application:
    """One catch-all route, one fixed answer."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _redirect)
    return app


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of ``kind`` (``asyncio`` or ``uvloop``)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@click.command()
@click.option("--port", type=int, required=True)
@click.option("--loop", "loop_kind", type=click.Choice(["asyncio", "uvloop"]), required=True)
def main(port: int, loop_kind: str) -> None:
    """Serve the reference app on 127.0.0.1:PORT until SIGTERM."""
    web.run_app(create_reference_app(), host="127.0.0.1", port=port, access_log=None,
                print=None, loop=new_loop(loop_kind), shutdown_timeout=1)


if __name__ == "__main__":
    sys.exit(main())
