"""Running the router: one process, or ``--workers N`` processes sharing one port.

``run_router`` serves until SIGTERM/SIGINT (SIGHUP re-reads the config); ``supervise`` forks
N of them onto one ``SO_REUSEPORT`` port and stops them all if one dies. Failures are
``ServeError``s with a sentence for the operator; the command line prints them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web

from federation.errors import ConfigError, FederationError

__all__ = ["ServeError", "run_router", "supervise"]

log = structlog.get_logger("federation.serving")


class ServeError(FederationError):
    """The router cannot start or keep running: a bad config, a busy port, a dead worker."""


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked for, or for ``auto`` when it is installed; else asyncio's loop."""
    if kind != "asyncio":
        try:
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if kind == "uvloop":
                raise ServeError("--loop uvloop: uvloop is not installed; install the 'fast' "
                                 "extra: pip install 'binder-federation-router[fast]'") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run_router(config_path: str, *, kubeconfig: str | None, host: str, port: int,
               loop_kind: str, supervisor: int | None = None) -> None:
    """One router process until SIGTERM or SIGINT; SIGHUP re-reads the config at once.

    The config is read, and any Kubernetes client made, inside the router's own event loop
    (a client cannot move between loops); a config that cannot be read or is invalid stops
    the process before it listens.
    """

    async def router() -> web.Application:
        from federation.stores import build_router

        app, source = await build_router(config_path, kubeconfig=kubeconfig)

        async def on_startup(app: web.Application) -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, source.reload_now)

        app.on_startup.append(on_startup)
        if supervisor is not None:
            app.cleanup_ctx.append(_orphan_guard(supervisor))
        return app

    try:
        web.run_app(router(), host=host, port=port, access_log=None, print=None,
                    handle_signals=True, shutdown_timeout=5, reuse_port=supervisor is not None,
                    loop=_new_loop(loop_kind))
    except ConfigError as e:
        raise ServeError(f"{e}; the router did not start") from None


def _orphan_guard(supervisor: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A worker whose supervisor is gone (SIGKILL, OOM) stops itself: no orphan routers."""

    async def guard(app: web.Application) -> AsyncIterator[None]:
        async def watch() -> None:
            while os.getppid() == supervisor:
                await asyncio.sleep(1.0)
            log.warning("the supervising process is gone; this worker stops")
            os.kill(os.getpid(), signal.SIGTERM)  # run_app's own handler shuts down cleanly

        task = asyncio.create_task(watch(), name="orphan-guard")
        yield
        task.cancel()

    return guard


def supervise(config_path: str, *, kubeconfig: str | None, host: str, port: int,
              loop_kind: str, workers: int) -> None:
    """Run ``workers`` routers on one port; stop them all on SIGTERM/SIGINT or when one dies.

    A worker that dies takes the others down and the supervisor exits non-zero, so the
    orchestrator restarts the whole pod instead of it serving at reduced capacity unnoticed.
    SIGHUP is passed on to every worker.
    """
    import multiprocessing.connection  # only a supervisor needs it: a single router never loads it

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    reserve = socket.socket(family, kind, proto)  # holds the port; port 0 becomes a real one
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind(address)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    port = reserve.getsockname()[1]
    importlib.import_module("federation.app")  # once, here: the forked workers share it
    context = multiprocessing.get_context("fork")  # no threads yet; fast, nothing to pickle
    procs = [context.Process(target=_worker, name=f"worker-{i}", args=(config_path,),
                             kwargs={"kubeconfig": kubeconfig, "host": host, "port": port,
                                     "loop_kind": loop_kind, "supervisor": os.getpid()})
             for i in range(1, workers + 1)]
    for proc in procs:
        proc.start()
    stopping = False

    def signal_all(signum: int) -> None:
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        signal_all(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda signum, frame: signal_all(signal.SIGHUP))
    log.info("router listening", url=f"http://{host}:{port}", workers=workers,
             pids=[proc.pid for proc in procs])
    failed = None
    running, deadline = list(procs), math.inf
    while running:
        multiprocessing.connection.wait([p.sentinel for p in running], timeout=0.5)
        for proc in [p for p in running if p.exitcode is not None]:
            running.remove(proc)
            if not stopping:
                failed = proc
                stop(signal.SIGTERM, None)
        if stopping and deadline == math.inf:
            deadline = time.monotonic() + 10  # run_app's shutdown_timeout is 5 s
        if time.monotonic() > deadline:
            for proc in running:
                proc.kill()
    reserve.close()
    if failed is not None:
        raise ServeError(f"{failed.name} (pid {failed.pid}) exited with code "
                         f"{failed.exitcode}; stopped the other workers")


def _worker(config_path: str, **options: Any) -> None:
    """A worker process: its failure is one log line and exit code 1, not a traceback."""
    try:
        run_router(config_path, **options)
    except ServeError as e:
        log.error("worker stopped", error=str(e))
        sys.exit(1)
