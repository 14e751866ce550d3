"""The aiohttp application: launch redirects, the UI proxy, and the router's own endpoints.

Handlers are thin: they read the current ``RoutingTable`` snapshot, call into the pure core
(``launch.parse_launch``, ``RoutingTable.route``) and write the answer. Background work — probe
loops, config and drain watchers, the slow-start ticker — belongs to the application's
lifetime (``cleanup_ctx``) and never runs on the request path.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from federation.config import Config, HealthSettings, Member, load_config_text
from federation.drains import parse_drains
from federation.errors import ConfigError, LaunchPathError
from federation.launch import LaunchKey, parse_launch
from federation.logs import quiet_malformed_requests
from federation.metrics import Metrics
from federation.probes import Prober, probe_delay, probe_fetcher, versions_due
from federation.proxy import ProxyError, forward, request_target
from federation.runtime import RouterState
from federation.sources import ConfigSource
from federation.status import active_hosts, prefers_html, render_status_html, status_document
from federation.table import RoutingTable

__all__ = [
    "LIVE_PATH",
    "METRICS_PATH",
    "READY_PATH",
    "STATE",
    "STATUS_PATH",
    "DrainSource",
    "create_app",
]

LIVE_PATH = "/_router/live"
READY_PATH = "/_router/ready"
STATUS_PATH = "/_router/status"
METRICS_PATH = "/metrics"
ACTIVE_HOSTS_PATH = "/active_hosts"

STATE = web.AppKey("state", RouterState)
_PROXY_SESSION = web.AppKey("proxy_session", aiohttp.ClientSession)

log = structlog.get_logger("federation.app")
access_log = structlog.get_logger("federation.access")

_CORS: dict[str, str] = {
    hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*",
    hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "cache-control",
}


class DrainSource(Protocol):
    """Anything that yields the drains document's text now and on every change."""

    def watch(self) -> AsyncIterator[str | None]:
        """Yield the current text, then each new text."""
        ...


def _refusal(request: web.BaseRequest, status: int, reason: str,
             headers: dict[str, str] | None = None) -> web.Response:
    """An error a person or a program can act on: HTML, event-stream or JSON by Accept."""
    accept = request.headers.get("Accept", "")
    all_headers = {**_CORS, **(headers or {})}
    if "text/html" in accept:
        from html import escape

        body = (f"<!doctype html><meta charset=utf-8><title>{status}</title>"
                f"<h1>Cannot launch right now</h1><p>{escape(reason)}</p>")
        return web.Response(status=status, text=body, content_type="text/html",
                            headers=all_headers)
    if "text/event-stream" in accept:
        event = json.dumps({"phase": "failed", "status_code": status, "message": reason + "\n"})
        return web.Response(status=status, text=f"data: {event}\n\n",
                            content_type="text/event-stream", headers=all_headers)
    return web.json_response({"status": status, "reason": reason}, status=status,
                             headers=all_headers)


@dataclass(frozen=True, slots=True)
class _Redirect:
    """A target's redirect to one member, ready to send again."""

    member: str
    headers: CIMultiDict[str]
    slot: int  # the member's in ``RouterState.sent``
    tally: int  # (member, reason)'s in the redirect metrics (``RouterState.count_launch``)


@dataclass(slots=True)
class _Answer:
    """A launch target's parsed key, its home redirect (None under random placement), and
    what its spill-overs need: the slots of the members ranked next, and the redirect to the
    member it last spilled over to.

    ``spill`` is kept because a spill-over made fresh cost two to three times a home launch
    in the server (its code and data are cold), and a target whose home is at its bound
    spills to the same member launch after launch; it is replaced when the walk picks
    another. One, not one per member it spills to: a second would catch about a fifth of
    the replacements and cost up to 2 MiB with 4,000 targets (``benchmarks/HISTORY.md``).
    """

    launch: LaunchKey
    home: _Redirect | None
    below: tuple[int, ...] | None = None  # slots of the next _SPILL_WALK ranked, once it spilled
    spill: _Redirect | None = None


_SPILL_WALK = 3  # members below the home a spill-over tries before ``route`` walks them all


class _Launcher:
    """The /build (and, with redirect_v2, /v2) handler, with its per-app state bound once."""

    def __init__(self, state: RouterState, rng: random.Random) -> None:
        self.state = state
        self.rng = rng
        self.metrics = state.metrics
        self._latency = state.metrics.route_latency["launch"]
        self._count = state.count_launch
        self._answers: dict[str, _Answer] = {}
        self._table = state.table  # the snapshot ``_room`` was made for
        self._room = state.table.room(state.sent)
        # What the answers were made under: they hold while these are the same objects.
        self._ranker: Callable[[str], tuple[str, ...]] | None = None
        self._config: Config | None = None
        self._reason: str | None = None
        self._log_rate = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a launch with a 307 to its member, without awaiting anything.

        This runs for every launch, so the common case — a target seen before, no ``host``
        cookie, and a home member with room — is a few lookups and the response. A target's
        parsed key, home member, headers and counter are made once (``_answer``) and kept
        while the rankings, the config and the redirect reason stay the same objects: a
        probe that only changes pod counts swaps the table but keeps all three. A home at
        its bound sends the launch down the ranking (``spill_over``, as ``route`` walks) to
        a redirect kept the same way; cookies, random placement and no-room-anywhere go
        through ``route``.
        """
        started = time.perf_counter()
        try:
            if request.method == "OPTIONS":
                return web.Response(status=204, headers={
                    **_CORS, "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                    "Access-Control-Max-Age": "86400"})
            table = self.state.table
            if (table.ranker is not self._ranker or table.config is not self._config
                    or table.reason is not self._reason):
                self._start_over(table)
            if table is not self._table:
                self._table, self._room = table, table.room(self.state.sent)
            answer = self._answers.get(request.raw_path)
            if answer is None:
                try:
                    answer = self._answer(request, table)
                except LaunchPathError as e:
                    self.metrics.bad_launch.inc()
                    return _refusal(request, e.status, e.reason)
            home, cookie = answer.home, request.headers.get(hdrs.COOKIE)
            if home is not None and (cookie is None or "host" not in cookie):
                if self._room(home.slot):
                    return self._redirect(home, answer.launch, table.reason)
                below = answer.below
                slot = table.spill_over(self._below(answer, table) if below is None else below,
                                        self.state.sent)
                if slot is not None:
                    spill = answer.spill
                    if spill is None or spill.slot != slot:
                        spill = answer.spill = self._redirect_to(
                            self.state.sent.name(slot), request_target(request),
                            answer.launch, table, table.spill_reason)
                    return self._redirect(spill, answer.launch, table.spill_reason)
            sticky = request.cookies.get("host") if cookie else None
            decision = table.route(answer.launch, cookie=sticky, sent=self.state.sent,
                                   rng=self.rng)
            if decision is None:
                self.metrics.no_member.inc()
                return _refusal(request, 503, "No member of the federation can take launches "
                                "right now. Please try again in a minute.", {"Retry-After": "30"})
            name, reason = decision.member.name, decision.reason
            headers = (home.headers if home is not None and name == home.member
                       else _redirect_headers(decision.member.url, request_target(request),
                                              answer.launch, table.config))
            return self._redirect(self._redirect_with(name, headers, reason), answer.launch,
                                  reason)
        finally:
            self._latency.observe(time.perf_counter() - started)

    def _start_over(self, table: RoutingTable) -> None:
        """Forget every answer: the rankings, the config or the redirect reason changed."""
        self._answers = {}
        self._ranker, self._config, self._reason = table.ranker, table.config, table.reason
        self._log_rate = table.config.logging.access_log

    def _below(self, answer: _Answer, table: RoutingTable) -> tuple[int, ...]:
        """The slots of the members ranked next below the target's home, kept in its answer
        (answers live no longer than rankings). A few, not all: a hundred would cost a
        kilobyte per target, and when they are all full ``route`` walks the rest."""
        ranking = table.ranker(answer.launch.key)
        answer.below = tuple(self.state.sent.slot(name)
                             for name in ranking[1:1 + _SPILL_WALK])
        return answer.below

    def _answer(self, request: web.Request, table: RoutingTable) -> _Answer:
        """Parse a target and make its home redirect, kept while the rankings hold."""
        target = request_target(request)
        launch = parse_launch(target)
        name = table.home(launch.key)
        home = (None if name is None
                else self._redirect_to(name, target, launch, table, table.reason))
        answer = _Answer(launch, home)
        if len(self._answers) >= _ANSWERS_KEPT:
            self._answers.clear()
        self._answers[request.raw_path] = answer
        return answer

    def _redirect_to(self, name: str, target: str, launch: LaunchKey, table: RoutingTable,
                     reason: str) -> _Redirect:
        """The redirect of ``target`` to member ``name``, ready to send again."""
        return self._redirect_with(name, _redirect_headers(table.by_name[name].url, target,
                                                           launch, table.config), reason)

    def _redirect_with(self, name: str, headers: CIMultiDict[str], reason: str) -> _Redirect:
        return _Redirect(name, headers, self.state.sent.slot(name),
                         self.metrics.launches.slot(name, reason))

    def _redirect(self, redirect: _Redirect, launch: LaunchKey,
                  reason: str) -> web.StreamResponse:
        """Count the launch, sample the access log, and answer 307."""
        self._count(redirect.slot, redirect.tally)
        if self._log_rate and self.rng.random() < self._log_rate:
            access_log.info("launch", key=launch.key, member=redirect.member, reason=reason)
        # A body-less StreamResponse: web.Response would add its body and compression
        # handling, which a redirect never uses, to every launch.
        response = web.StreamResponse(status=307, headers=redirect.headers)
        response.content_length = 0
        return response


class _Subtree(web.PlainResource):
    """Every path below ``prefix``, matched by ``str.startswith``.

    The handlers read the raw path themselves; a ``{spec:.*}`` route would run a regular
    expression and percent-decode the spec into ``match_info`` on every launch, for nothing.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self._below = prefix + "/"

    def _match(self, path: str) -> dict[str, str] | None:
        return {} if path.startswith(self._below) else None

    def raw_match(self, path: str) -> bool:
        return False  # never reused by add_route for another path


_ANSWERS_KEPT = 4096  # launch targets remembered (about 2 MiB when full, measured)


def _redirect_headers(url: str, target: str, launch: LaunchKey,
                      config: Config) -> CIMultiDict[str]:
    """Location, CORS and the sticky ``host`` cookie scoped to the repository's path.

    A ``CIMultiDict`` with aiohttp's own header names, as ``web.Response`` keeps them: it
    copies one at a fifth less cost than a plain dict it has to convert.
    """
    headers = CIMultiDict({hdrs.LOCATION: url + target, **_CORS})
    hours = config.routing.sticky_cookie_hours
    if hours > 0 and launch.kind == "build" and _cookie_safe(launch.cookie_path):
        headers[hdrs.SET_COOKIE] = (f'host="{url}"; Max-Age={int(hours * 3600)}; '
                                    f"Path={launch.cookie_path}")
    return headers


_COOKIE_UNSAFE = re.compile(r'[;," \\]')


def _cookie_safe(path: str) -> bool:
    """A cookie Path must not carry attribute separators or quotes from the request."""
    return _COOKIE_UNSAFE.search(path) is None


async def _proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ui = state.table.ui
    started = time.perf_counter()
    try:
        return await forward(request, request.app[_PROXY_SESSION], ui.url,
                             limits=state.table.config.limits)
    except ProxyError as e:
        state.metrics.proxy_errors.labels(e.kind).inc()
        if e.status < 500:  # the client's body was refused: its problem, not an incident
            return _refusal(request, e.status, f"{e.reason}.")
        log.warning("proxy to the UI member failed", member=ui.name, kind=e.kind,
                    path=request.path[:200])
        if e.response is not None:
            return e.response
        return _refusal(request, e.status, f"{e.reason} ({ui.name}).")
    finally:
        state.metrics.route_latency["proxy"].observe(time.perf_counter() - started)


async def _live(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="starting: waiting for the first probe of every member\n")


_STATUS_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # Defence in depth behind the template's escaping: the page needs no script at all.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Vary": "Accept",
}


async def _status(request: web.Request) -> web.Response:
    """The on-call page for browsers; JSON for everyone else (``federation status``, scripts)."""
    document = status_document(request.app[STATE])
    if prefers_html(request.headers.get("Accept", "")):
        return web.Response(text=render_status_html(document), content_type="text/html",
                            headers=_STATUS_PAGE_HEADERS)
    return web.json_response(document, dumps=lambda d: json.dumps(d, indent=1),
                             headers={"Cache-Control": "no-store", "Vary": "Accept"})


async def _active_hosts(request: web.Request) -> web.Response:
    return web.json_response(active_hosts(request.app[STATE]))


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _timed_other(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Time one of the router's own endpoints under the route kind ``other``."""
    async def timed(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            request.app[STATE].metrics.route_latency["other"].observe(
                time.perf_counter() - started)

    return timed


async def _guard(name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Run an eternal task; log and restart it if it ever fails, so watching never stops."""
    while True:
        try:
            await work()
            log.warning("background task ended, restarting", task=name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed, restarting", task=name)
        await asyncio.sleep(1.0)


def create_app(
    config: Config,
    *,
    config_source: ConfigSource | None = None,
    drain_source: DrainSource | None = None,
    rng: random.Random | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The router for ``config``; sources, when given, are watched for live changes."""
    quiet_malformed_requests()
    limits = config.limits
    # Per-connection limits of aiohttp's server; they bind whichever runner serves the app.
    # keepalive_timeout also closes a connection that has not sent a whole request head in
    # that time (aiohttp arms it at connect), which is what stops slowloris clients. A client
    # that hangs up cancels its handler, so a proxied request frees its pooled connection to
    # the member at once (run_app's default would wait for the member; the test server's
    # default is this one, so tests see what production does). Bodies are passed to the UI
    # member as sent, with their Content-Encoding, so they are not decompressed here.
    app = web.Application(client_max_size=limits.max_body_bytes, handler_args={
        "max_line_size": limits.max_request_line, "max_field_size": limits.max_header_size,
        "max_headers": limits.max_headers, "keepalive_timeout": limits.client_timeout,
        "handler_cancellation": True, "auto_decompress": False})
    state = RouterState(config, metrics=metrics)
    app[STATE] = state
    launcher = _Launcher(state, rng or random.Random())

    async def v2(request: web.Request) -> web.StreamResponse:
        if state.table.config.routing.redirect_v2:
            return await launcher.handle(request)
        return await _proxy(request)

    for prefix, handler in (("/build", launcher.handle), ("/v2", v2)):
        resource = _Subtree(prefix)
        app.router.register_resource(resource)
        resource.add_route("*", handler)
    for path, handler in ((LIVE_PATH, _live), (READY_PATH, _ready), (STATUS_PATH, _status),
                          (ACTIVE_HOSTS_PATH, _active_hosts), (METRICS_PATH, _metrics)):
        app.router.add_get(path, _timed_other(handler))
    app.router.add_route("*", "/{tail:.*}", _proxy)
    app.cleanup_ctx.append(_lifetime(config_source, drain_source))
    return app


def _lifetime(
    config_source: ConfigSource | None, drain_source: DrainSource | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        fetcher = probe_fetcher()
        proxy_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar())
        app[_PROXY_SESSION] = proxy_session

        jitter_rng = random.Random()

        def delay_for(name: str, settings: HealthSettings) -> float:
            return probe_delay(state.healths.get(name), settings, jitter_rng)

        def wants_versions(member: Member, settings: HealthSettings) -> bool:
            return versions_due(state.healths.get(member.name), settings, time.monotonic(),
                                prime=member.prime)

        prober = Prober(fetcher, state.apply_probe, delay_for, wants_versions)
        state.on_config = lambda c: prober.reconcile(c.members, c.health)
        prober.reconcile(state.config.members, state.config.health)
        tasks = [asyncio.create_task(_guard("ticker", lambda: _tick(state)), name="ticker")]
        if config_source is not None:
            tasks.append(asyncio.create_task(
                _guard("config", lambda: _watch_config(state, config_source)), name="config"))
        if drain_source is not None:
            tasks.append(asyncio.create_task(
                _guard("drains", lambda: _watch_drains(state, drain_source)), name="drains"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await prober.close()
            await fetcher.close()
            await proxy_session.close()

    return lifetime


async def _tick(state: RouterState) -> None:
    """Rebuild while members ramp up (slow start) and until start-up readiness settles;
    note launch totals for the recent-launch shares."""
    while True:
        await asyncio.sleep(1.0)
        state.mark_launches()
        if state.ramping() or state.table.ready != state.ready:
            state.refresh()


async def _watch_config(state: RouterState, source: ConfigSource) -> None:
    last: str | None = None
    async for text in source.watch():
        if text is None:
            state.reject_config(ConfigError("the config document is missing; keeping the last "
                                            "good config", source=source.name))
            continue
        if text == last:
            continue
        last = text
        try:
            config = load_config_text(text, source=source.name)
        except ConfigError as e:
            state.reject_config(e)
            continue
        if config != state.config:
            state.apply_config(config)


async def _watch_drains(state: RouterState, source: DrainSource) -> None:
    async for text in source.watch():
        try:
            drains = parse_drains(text, source=getattr(source, "name", "drains"))
        except ConfigError as e:
            state.reject_drains(e)
            continue
        if drains != state.drains:
            state.apply_drains(drains)
