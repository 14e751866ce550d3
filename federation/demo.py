"""Simulated BinderHub members: real HTTP servers that speak BinderHub's protocol.

Used by ``federation demo`` and by the tests. A member answers ``/health`` and ``/versions`` in
BinderHub's formats, runs ``/build/...`` as an event stream (waiting → building or "Found built
image" → launching → ready, with a URL on the member itself), serves a minimal ``/v2`` page,
and remembers what it has built, so the first launch of a repository builds and later ones
reuse the image. ``controls`` make it misbehave on purpose: 503, hang, reset, garbage, slow
trickle, other versions, a full quota.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from html import escape
from typing import Literal

from aiohttp import web

from federation.errors import LaunchPathError
from federation.launch import parse_launch

__all__ = ["HealthMode", "MemberControls", "SimulatedMember"]

HealthMode = Literal["ok", "503", "hang", "close", "garbage", "trickle", "huge"]


@dataclass
class MemberControls:
    """Knobs a test or the demo turns to make a member misbehave."""

    health: HealthMode = "ok"
    binderhub: str = "1.0.0+demo"
    builder: str = "quay.io/jupyterhub/repo2docker:2026.11.0"
    quota: int | None = 100
    extra_pods: int = 0  # pods running besides the simulated sessions
    build_pods: int = 0
    session_seconds: float = 60.0
    event_delay: float = 0.0  # seconds between build events
    hold_ready: float = 0.0  # BinderHub holds the stream 60 s after ready; 0 closes at once
    # BinderHub counts its pods at most once a minute and answers /health from that count in
    # between (``table.POD_COUNT_CACHE``); 0 counts at every request, as tests want
    pod_count_every: float = 0.0


@dataclass
class SimulatedMember:
    """One simulated BinderHub; ``start()`` serves it on 127.0.0.1."""

    name: str
    controls: MemberControls = field(default_factory=MemberControls)
    built: set[str] = field(default_factory=set)
    launches: Counter[str] = field(default_factory=Counter)
    builds: int = 0
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _sessions: deque[float] = field(default_factory=deque)
    _count: tuple[float, int, int] | None = None  # when pods were last counted: user, build
    _runner: web.AppRunner | None = None
    url: str = ""

    @property
    def user_pods(self) -> int:
        """Simulated sessions still running, plus ``extra_pods``."""
        now = time.monotonic()
        while self._sessions and self._sessions[0] <= now:
            self._sessions.popleft()
        return len(self._sessions) + self.controls.extra_pods

    def app(self) -> web.Application:
        """The member's aiohttp application."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/versions", self._versions)
        app.router.add_get("/build/{provider}/{spec:.*}", self._build)
        app.router.add_get("/v2/{provider}/{spec:.*}", self._v2)
        app.router.add_get("/api/repoproviders", self._providers)
        app.router.add_get("/user/{user}/", self._session)
        app.router.add_route("*", "/{tail:.*}", self._home)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = any free port); returns the member's URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.raw_path, dict(request.headers)))
        del self.requests[:-500]

    async def _misbehave(self, request: web.Request) -> web.StreamResponse | None:
        mode = self.controls.health
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "close" and request.transport is not None:
            request.transport.abort()
            return web.Response(status=500)
        if mode == "garbage":
            return web.Response(text="<html>Bad Gateway</html>", content_type="text/html")
        if mode == "huge":
            return web.Response(text=json.dumps({"ok": True, "pad": "x" * 200_000}),
                                content_type="application/json")
        if mode == "trickle":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for char in '{"ok": true, "checks": []}':
                await response.write(char.encode())
                await asyncio.sleep(0.5)
            return response
        return None

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        odd = await self._misbehave(request)
        if odd is not None:
            return odd
        ok = self.controls.health != "503"
        c = self.controls
        now = time.monotonic()
        if self._count is None or now - self._count[0] >= c.pod_count_every:
            self._count = (now, self.user_pods, c.build_pods)
        _, user, build = self._count
        total = user + build
        checks = [
            {"service": "Docker registry", "ok": ok},
            {"service": "JupyterHub API", "ok": ok},
            {"service": "Pod quota", "total_pods": total, "build_pods": build,
             "user_pods": user, "quota": c.quota,
             "ok": c.quota is None or total <= c.quota, "_ignore_failure": True},
        ]
        return web.json_response({"ok": ok, "checks": checks}, status=200 if ok else 503)

    async def _versions(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        odd = await self._misbehave(request)
        if odd is not None:
            return odd
        c = self.controls
        return web.json_response(
            {"builder_info": {"build_image": c.builder}, "binderhub": c.binderhub,
             "builder": c.builder},
            headers={"Access-Control-Allow-Origin": "*"})

    async def _build(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        accept = [p.strip() for p in request.headers.get("Accept", "").split(";")]
        if "text/event-stream" not in accept:
            return web.Response(status=400, text="Missing Accept header")
        try:
            launch = parse_launch(request.raw_path)
        except LaunchPathError as e:
            return await self._events(request, [{"phase": "failed", "message": e.reason}])
        c = self.controls
        if c.quota is not None and self.user_pods >= c.quota:
            return await self._events(request, [{
                "phase": "failed",
                "message": "Too many users on this BinderHub! Try again soon.\n"}])
        self.launches[launch.key] += 1
        image = f"{self.name}/{launch.key}"
        events: list[dict[str, object]] = [
            {"phase": "waiting", "message": "Waiting for build to start...\n"}]
        if launch.key in self.built:
            events.append({"phase": "built", "imageName": image,
                           "message": "Found built image, launching...\n"})
        else:
            self.builds += 1
            self.built.add(launch.key)
            events += [
                {"phase": "building", "message": f"Building {launch.repo} on {self.name}\n"},
                {"phase": "built", "imageName": image, "message": "Built image, launching...\n"},
            ]
        self._sessions.append(time.monotonic() + c.session_seconds)
        user = secrets.token_hex(4)
        server = f"{self.url}/user/{user}/"
        events += [
            {"phase": "launching", "message": "Launching server...\n"},
            {"phase": "ready", "message": f"server running at {server}\n", "url": server,
             "token": secrets.token_urlsafe(16), "image": image,
             "binder_request": request.raw_path.lstrip("/").replace("build/", "v2/", 1),
             "binder_launch_host": "https://mybinder.org/"},
        ]
        return await self._events(request, events)

    async def _events(self, request: web.Request,
                      events: list[dict[str, object]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Headers": "cache-control"})
        await response.prepare(request)
        for event in events:
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            if self.controls.event_delay:
                await asyncio.sleep(self.controls.event_delay)
        if self.controls.hold_ready:
            await asyncio.sleep(self.controls.hold_ready)
        await response.write_eof()
        return response

    async def _v2(self, request: web.Request) -> web.Response:
        self._record(request)
        spec = escape(request.match_info["provider"] + "/" + request.match_info["spec"])
        build = escape(request.raw_path.replace("/v2/", "/build/", 1))
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><meta charset=utf-8><title>Binder: {spec}</title>"
            f"<h1>Launching {spec}</h1><p>Served by simulated member "
            f"<b>{escape(self.name)}</b>. The page opens the event stream at "
            f"<code>{build}</code> on the public URL.</p>"))

    async def _providers(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response([{"id": "gh", "displayName": "GitHub"}])

    async def _session(self, request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><title>Session</title><h1>A Jupyter session on "
            f"{escape(self.name)}</h1>"))

    async def _home(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><meta charset=utf-8><title>Binder</title>"
            f"<h1>Binder (simulated member {escape(self.name)})</h1>"
            f"<p>Path: <code>{escape(request.path)}</code></p>"))


DEMO_MEMBERS = (
    # name, kind, weight, quota: a small federation shaped like mybinder.org's
    ("gke", "gke", 60, 300),
    ("gesis", "bare-metal", 40, 180),
    ("ovh", "ovh", 30, 60),
    ("azure", "azure", 30, 120),
    ("bare-metal", "bare-metal", 20, 60),
)


def demo_config_text(members: list[SimulatedMember], kinds: dict[str, tuple[str, int]]) -> str:
    """A router config for running simulated members (the first is the prime)."""
    lines = [
        "# Demo federation written by `federation demo`; edit it while the demo runs.",
        "routing:", "  strategy: bounded", "  bound_floor: 10", "  slow_start: 30",
        "health:", "  interval: 2", "  timeout: 1", "  failures_to_eject: 2",
        "  successes_to_restore: 2", "  max_backoff: 8",
        "drains:", "  file: drains.yaml",
        "members:",
    ]
    for i, m in enumerate(members):
        kind, weight = kinds[m.name]
        lines += [f"  - name: {m.name}", f"    kind: {kind}", f"    url: {m.url}",
                  f"    weight: {weight}"]
        if i == 0:
            lines.append("    prime: true")
    return "\n".join(lines) + "\n"


async def run_demo(*, members: int, port: int, host: str = "127.0.0.1") -> None:
    """Run simulated members and the router until interrupted."""
    import tempfile
    from pathlib import Path

    from federation.app import STATUS_PATH, create_app
    from federation.config import load_config
    from federation.drains import FileDrainStore
    from federation.sources import FileConfigSource
    from federation.table import POD_COUNT_CACHE

    chosen = DEMO_MEMBERS[:members]
    sims = [SimulatedMember(name, MemberControls(quota=quota, session_seconds=120,
                                                 pod_count_every=POD_COUNT_CACHE))
            for name, _kind, _weight, quota in chosen]
    workdir = Path(tempfile.mkdtemp(prefix="federation-demo-"))
    runner: web.AppRunner | None = None
    try:
        for sim in sims:
            await sim.start(host)
        config_path = workdir / "config.yaml"
        config_path.write_text(demo_config_text(
            sims, {name: (kind, weight) for name, kind, weight, _q in chosen}))
        config = load_config(config_path)
        app = create_app(config, config_source=FileConfigSource(config_path),
                         drain_source=FileDrainStore(workdir / "drains.yaml"))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        _print_demo_help(f"http://{host}:{port}", sims, config_path, STATUS_PATH)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("Stopping the demo federation.", flush=True)
    finally:
        if runner is not None:
            await runner.cleanup()
        for sim in sims:
            await sim.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _print_demo_help(router: str, sims: list[SimulatedMember], config: object,
                     status_path: str) -> None:
    other = sims[-1].name
    member_lines = "\n".join(
        f"  member {s.name:<11} {s.url}{'  (prime: serves the UI)' if i == 0 else ''}"
        for i, s in enumerate(sims))
    print(f"""
Demo federation running on 127.0.0.1 (Ctrl-C stops everything):
  router             {router}/
{member_lines}
  config             {config}   (edits are applied live)

Open the on-call status page:   {router}{status_path}
Launch a repository (307 to a member; every ref of a repo goes to the same one):
  curl -si {router}/build/gh/binder-examples/requirements/HEAD -H 'Accept: text/event-stream'
  curl -si {router}/build/gh/binder-examples/requirements/main -H 'Accept: text/event-stream'
See where any launch would go, and why:
  federation route --config {config} https://mybinder.org/v2/gh/binder-examples/conda/HEAD
Take a member out of rotation, and back:
  federation drain {other} --reason "trying the demo" --config {config}
  federation undrain {other} --config {config}
""", flush=True)
