"""Chaos: launches from many clients while members fail, configs change and drains come and go.

One bounded run drives concurrent clients against a router on 127.0.0.1 while its simulated
members fail and recover (503, hang, reset, trickle, garbage, a new BinderHub version, a full
quota), the config file is rewritten (broken edits included), members are drained and undrained
through the ConfigMap drain store, and the Kubernetes watch carrying the drains is cut. Every
answer is checked as it arrives against the routing tables in force while it was in flight;
afterwards the logs are searched for unhandled exceptions and open files, tasks and traced
memory must be back at their baseline.

The same engine drives ``benchmarks/soak.py`` for minutes instead of seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import math
import os
import random
import re
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, MappingProxyType, TracebackType
from typing import Any, Literal, cast

import aiohttp
import pytest
import structlog
import yaml
from aiohttp.http_exceptions import HttpProcessingError

import federation.demo
from federation.config import load_config_text
from federation.demo import HealthMode, MemberControls, SimulatedMember
from federation.drains import DrainStore, with_drain, without_drain
from federation.kube import ConfigMapRef, connect
from federation.logs import quiet_malformed_requests
from federation.runtime import RouterState
from federation.stores import ConfigMapDrainStore
from federation.table import Decision, RoutingTable, build_table
from tests.conftest import StartFederation
from tests.kubeapi import FakeKubeAPI, running_kube_api

SEED = 20261127
MEMBERS = ("prime", "b", "c", "d")
FAULT_MODES = ("503", "hang", "close", "trickle", "garbage", "version", "full")
MAX_FAULTY = 2  # members failing at once …
MAX_DRAINED = 1  # … and drained at once: one of four always stays sound
UI_PATHS = ("/", "/v2/gh/org0/repo1/HEAD", "/about")
UI_SHARE = 0.1
REPOS = 150
REFS = ("HEAD", "main", "v1.0", "feature/x")
_MEMBER_IN_PAGE = re.compile(r"simulated member (?:<b>)?([A-Za-z0-9._-]+)")
_SET_COOKIE = re.compile(r'host="([^"]+)"; Max-Age=\d+; Path=(\S+)')
_DRAINS_REF = ConfigMapRef(namespace="binder", name="federation-drains", key="drains.yaml")


# -- what the router believed, and when ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableFacts:
    """What the checker needs of one routing table; tables themselves are too heavy to keep."""

    since: float  # time.monotonic() when it was swapped in
    urls: Mapping[str, str]  # every configured member: URL → name
    routable: frozenset[str]
    fallback: str | None  # who takes launches when nothing is routable (None: 503)
    ui: str

    @classmethod
    def of(cls, table: RoutingTable, since: float) -> TableFacts:
        """The facts of ``table``, in force from ``since``."""
        fallback = table.fallback() if not table.routable else None
        urls = MappingProxyType({m.url: m.name for m in table.config.members})
        return cls(since=since, urls=urls, routable=frozenset(m.name for m in table.routable),
                   fallback=fallback.name if fallback else None, ui=table.ui.name)


class TableHistory:
    """The routing tables a router put in force, in order, with the time each one did.

    Tables older than ``keep`` seconds are forgotten, except the one in force then: no
    request is in flight that long (clients give up after 10 s), and a soak lasts hours.
    """

    def __init__(self, *, keep: float = 60.0) -> None:
        self.keep = keep
        self.recorded = 0
        self._starts: list[float] = []
        self._facts: list[TableFacts] = []

    def record(self, table: RoutingTable) -> None:
        """Note that ``table`` is in force from now on."""
        self.add(TableFacts.of(table, time.monotonic()))

    def add(self, facts: TableFacts) -> None:
        """Append the facts of the next table (``since`` never goes back)."""
        self._starts.append(facts.since)
        self._facts.append(facts)
        self.recorded += 1
        stale = bisect.bisect_right(self._starts, facts.since - self.keep) - 1
        if stale > len(self._starts) // 2:  # forget in batches: cheap, and bounded
            del self._starts[:stale], self._facts[:stale]

    def in_force(self, start: float, end: float) -> list[TableFacts]:
        """The tables in force at some moment of ``[start, end]``: a request in flight then
        was answered from exactly one of them (handlers never await between read and answer)."""
        first = max(0, bisect.bisect_right(self._starts, start) - 1)
        return self._facts[first:bisect.bisect_right(self._starts, end)]

    @classmethod
    def attach(cls, state: RouterState) -> TableHistory:
        """Record every table ``state`` swaps in from now on (and the one in force now)."""
        history = cls()
        state.__dict__["_chaos_history"] = history
        state.__class__ = _RecordedState
        history.record(state.table)
        return history


class _RecordedState(RouterState):
    """A RouterState whose ``table`` attribute reports each assignment to its history.

    Swapping the class of the live state (rather than polling ``state.table``) sees tables
    that were in force for a moment only; nothing else about the state changes.
    """

    @property  # type: ignore[override]
    def table(self) -> RoutingTable:
        table: RoutingTable = self.__dict__["table"]
        return table

    @table.setter
    def table(self, table: RoutingTable) -> None:
        self.__dict__["table"] = table
        self.__dict__["_chaos_history"].record(table)


# -- the invariants ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One request a chaos client sent and what came back."""

    kind: Literal["launch", "ui"]
    path: str
    sent: float
    received: float
    status: int
    location: str | None = None
    cookie: str | None = None  # the member URL the request's sticky cookie named
    body: str = ""


class Checker:
    """Judges every answer against the routing tables in force while it was in flight.

    "Routable within the last probe interval" is read exactly: routable in a table that was
    in force at some moment between sending the request and reading the answer. Tables
    change only when a probe result, a config or a drain arrives, so that is the member's
    state as of its latest probe: a member that failed since may still get launches until its
    next failed probes eject it (the router cannot know sooner), but never once a table
    without it is in force, and never from a table older than the request.
    """

    def __init__(self, history: TableHistory) -> None:
        self.history = history
        self.checked = 0
        self.violations = 0
        self.examples: list[str] = []
        self.unroutable_answers = 0  # answered while no member was routable (allowed)

    def fail(self, message: str) -> None:
        """Count a violation; keep the first few for the failure message."""
        self.violations += 1
        if len(self.examples) < 20:
            self.examples.append(message)

    def check(self, answer: Answer) -> None:
        """Check one answer; violations are counted, never raised mid-run."""
        self.checked += 1
        tables = self.history.in_force(answer.sent, answer.received)
        if not tables:
            self.fail(f"{answer.path}: answered before any routing table existed")
        elif answer.kind == "launch":
            self._launch(answer, tables)
        else:
            self._ui(answer, tables)

    def _launch(self, answer: Answer, tables: list[TableFacts]) -> None:
        if any(not t.routable for t in tables):
            self.unroutable_answers += 1
        if answer.status >= 500:
            if not any(not t.routable and t.fallback is None for t in tables):
                self.fail(f"{answer.path}: {answer.status} while a member was routable")
            return
        if answer.status != 307 or answer.location is None:
            self.fail(f"{answer.path}: {answer.status} for a valid launch")
            return
        member = next((t.urls[url] for t in tables for url in t.urls
                       if answer.location == url + answer.path), None)
        if member is None:
            self.fail(f"{answer.path}: Location {answer.location!r} is not a configured "
                      "member URL followed by the request's path")
            return
        allowed = {m for t in tables
                   for m in (t.routable or ({t.fallback} if t.fallback else set()))}
        if member in allowed:
            return
        if answer.cookie is not None and member == _name_of(answer.cookie, tables):
            self.fail(f"{answer.path}: the sticky cookie sent a launch to {member}, which was "
                      "drained or ejected")
        else:
            self.fail(f"{answer.path}: 307 to {member}, which no table in force let take "
                      f"launches (routable: {sorted({m for t in tables for m in t.routable})})")

    def _ui(self, answer: Answer, tables: list[TableFacts]) -> None:
        if answer.status != 200:
            self.fail(f"{answer.path}: UI answered {answer.status}")
            return
        served = _MEMBER_IN_PAGE.search(answer.body)
        if served is None or served.group(1) not in {t.ui for t in tables}:
            self.fail(f"{answer.path}: UI page served by "
                      f"{served.group(1) if served else 'nobody known'}, not the UI member")


def _name_of(url: str, tables: list[TableFacts]) -> str | None:
    return next((t.urls[url] for t in tables if url in t.urls), None)


class LogWatch(logging.Handler):
    """Watches what a run logs for unhandled exceptions, keeping nothing else (runs are long).

    An unhandled exception anywhere shows up here: aiohttp logs a handler's exception and
    asyncio an unretrieved task exception on stdlib loggers at ERROR; the router's own
    guards log through structlog with ``exc_info``. Two kinds are counted apart: requests
    aiohttp's parser refused with a 400 (the router turns those into warnings), and the simulated
    members' own errors (a trickling handler writing to a connection the prober gave up on).
    Like ``structlog.testing.capture_logs``, it takes structlog's processors over meanwhile.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.unhandled: list[str] = []
        self.refused_by_parser = 0
        self.simulator_errors = 0
        self._saved: list[Any] = []

    def __enter__(self) -> LogWatch:
        processors = structlog.get_config()["processors"]
        self._saved = processors.copy()
        processors[:] = [self._tap]
        structlog.configure(processors=processors)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        logging.getLogger().removeHandler(self)
        processors = structlog.get_config()["processors"]
        processors[:] = self._saved
        structlog.configure(processors=processors)

    def emit(self, record: logging.LogRecord) -> None:
        """Sort one stdlib record: parser refusals (warnings), and anything at ERROR or above."""
        if _refused_by_parser(record):
            self.refused_by_parser += 1
        elif record.levelno < logging.ERROR:
            return
        elif _from_simulator(record):
            self.simulator_errors += 1
        else:
            self.unhandled.append(f"{record.name}: {record.getMessage()} "
                                  f"({_exception_of(record)})")

    def _tap(self, logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        """The only structlog processor meanwhile: note events carrying an exception."""
        exc_info = event.get("exc_info")
        if exc_info or method == "critical":
            error = sys.exc_info()[1] if exc_info is True else exc_info
            self.unhandled.append(f"structlog {method}: {event.get('event')} ({error!r})")
        raise structlog.DropEvent

    def problems(self) -> list[str]:
        """Unhandled exceptions logged so far, one line each."""
        return list(self.unhandled)


def _exception_of(record: logging.LogRecord) -> str:
    return repr(record.exc_info[1]) if record.exc_info else "no exception logged"


def _refused_by_parser(record: logging.LogRecord) -> bool:
    """aiohttp's parser refused the request with a 400; the router logs it as a warning."""
    return getattr(record, "malformed_request", False) is True


def _from_simulator(record: logging.LogRecord) -> bool:
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == federation.demo.__file__:
            return True
        tb = tb.tb_next
    return False


# -- resources -------------------------------------------------------------------------------


# Memory held by the test's own machinery: the checker's records, pytest's captured log
# records, source lines cached for printing tracebacks, tracemalloc's own.
_NOT_THE_ROUTERS = tuple(tracemalloc.Filter(False, pattern) for pattern in (
    __file__, tracemalloc.__file__, logging.__file__, "*/linecache.py", "*/_pytest/*"))


@dataclass(frozen=True, slots=True)
class Resources:
    """Open file descriptors, live asyncio tasks and traced Python memory of this process."""

    fds: int
    tasks: int
    traced: int  # bytes allocated since tracemalloc started and still alive (0 when off)

    @classmethod
    def now(cls) -> Resources:
        """Measure after a full garbage collection."""
        gc.collect()
        traced = 0
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(_NOT_THE_ROUTERS)
            traced = sum(stat.size for stat in snapshot.statistics("filename"))
        fds, tasks = _counts()
        return cls(fds=fds, tasks=tasks, traced=traced)


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far above the baseline the resources may end, and why that much.

    Connections idle in the router's pools may outlive a run by their keep-alive time (15 s):
    up to 4 probe connections per member, and one proxy connection per UI request in flight
    at once to each member that served the UI (the UI moves when the prime fails). Both ends
    live in this process, so each costs two descriptors and one server task here. A leak
    grows with the work done instead: thousands of requests, hundreds of failed probes.
    """

    fds: int
    tasks: int
    traced: int

    @classmethod
    def for_run(cls, members: int, ui_members: int, ui_in_flight: int) -> Tolerance:
        """The allowance after a run over ``members``, ``ui_members`` of which served the UI
        with up to ``ui_in_flight`` pages at once; the Kubernetes client may hold one more
        connection than before."""
        pooled = 4 * members + ui_members * ui_in_flight + 1
        # Traced memory: 1 MiB for bounded caches (parsed launch paths and rankings for at
        # most REPOS repositories and a few weight sets, yarl's URL caches, metric series per
        # member), and 32 KiB per pooled connection (both ends measure about 16 KiB). A
        # request or response left behind per request (KiBs each) leaves far more after the
        # thousands of requests of a run.
        return cls(fds=2 * pooled, tasks=pooled, traced=2**20 + pooled * 2**15)


def resource_problems(before: Resources, after: Resources, tolerance: Tolerance) -> list[str]:
    """What grew past ``tolerance`` between ``before`` and ``after``."""
    problems = []
    for what in ("fds", "tasks", "traced"):
        grown = getattr(after, what) - getattr(before, what)
        if grown > getattr(tolerance, what):
            problems.append(f"{what} grew by {grown} (allowed {getattr(tolerance, what)}): "
                            f"{getattr(before, what)} → {getattr(after, what)}")
    return problems


async def settled_resources(*, baseline: Resources | None = None,
                            tolerance: Tolerance | None = None, timeout: float = 10.0) -> Resources:
    """Resources once closing connections have closed: as soon as descriptors and tasks are
    within ``tolerance`` of ``baseline``, else once they have stopped changing."""
    last, steady = _counts(), 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while steady < 5:
                await asyncio.sleep(0.05)
                fds, tasks = now = _counts()
                if baseline is not None and tolerance is not None and \
                        fds - baseline.fds <= tolerance.fds and \
                        tasks - baseline.tasks <= tolerance.tasks:
                    break
                steady, last = (steady + 1 if now == last else 0), now
    return Resources.now()


def _counts() -> tuple[int, int]:
    return len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())


def cancel_simulator_hangs() -> int:
    """Cancel member handlers stuck in a fault (``hang`` sleeps an hour, ``trickle`` for
    seconds) after the prober gave up on them: the simulator's tasks, not the router's, which
    would otherwise pile up over a soak and count as leaked tasks at the end."""
    stuck = [task for task in asyncio.all_tasks() if _MISBEHAVING in _await_chain(task)]
    for task in stuck:
        task.cancel()
    return len(stuck)


_MISBEHAVING = SimulatedMember._misbehave.__code__


def _await_chain(task: asyncio.Task[Any]) -> set[CodeType]:
    """The code of every coroutine ``task`` is suspended in."""
    codes: set[CodeType] = set()
    awaited: Any = task.get_coro()
    while (code := getattr(awaited, "cr_code", None)) is not None:
        codes.add(code)
        awaited = awaited.cr_await
    return codes


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    """How hard and how long a run pushes."""

    duration: float
    clients: int = 24
    max_requests: int = 60_000
    seed: int = SEED
    fault_period: float = 0.25
    reload_period: float = 0.6
    drain_period: float = 0.5
    cut_period: float = 1.0
    window: float = 5.0  # seconds per line of the figures over time


@dataclass
class Target:
    """A running federation the chaos engine drives."""

    url: str
    state: RouterState
    members: Mapping[str, SimulatedMember]
    config_path: Path
    base_doc: dict[str, Any]
    drains: DrainStore
    kube: FakeKubeAPI | None = None


@dataclass
class Window:
    """One slice of a run: what was served and how fast, and the process's memory."""

    end: float
    requests: int
    errors: int
    p99_ms: float
    rss_mib: float


class Latencies:
    """Latencies counted in buckets 1 % wide: percentiles to within 1 %, in constant memory
    however long the run (a soak serves millions of requests)."""

    _STEP = math.log(1.01)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0

    def add(self, seconds: float) -> None:
        """Count one latency."""
        self.counts[math.ceil(math.log(max(seconds, 1e-6)) / self._STEP)] += 1
        self.total += 1

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in milliseconds (the upper edge of its bucket; 0 if empty)."""
        rank, seen = q / 100 * self.total, 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return math.exp(bucket * self._STEP) * 1000
        return 0.0


@dataclass
class Figures:
    """What a run did, for the test output and the soak report."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    valid_writes: int = 0
    broken_writes: int = 0
    tables: int = 0  # routing tables swapped in during the run
    applied: int = 0  # config reloads the router accepted during the run …
    rejected: int = 0  # … and refused
    drains: int = 0
    undrains: int = 0
    watch_cuts: int = 0
    compactions: int = 0
    latency: Latencies = field(default_factory=Latencies)
    window_latency: Latencies = field(default_factory=Latencies)  # since the last window
    ui_members: set[str] = field(default_factory=set)  # members that served a UI page
    ui_in_flight: int = 0
    ui_in_flight_max: int = 0
    windows: list[Window] = field(default_factory=list)


class _Budget:
    """A shared request allowance, so a run is bounded in requests as well as in time."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


async def run_chaos(target: Target, knobs: Knobs, checker: Checker) -> Figures:
    """Drive ``target`` for ``knobs.duration`` seconds (or ``max_requests``), checking every
    answer with ``checker``; leaves every member sound, undrained and on the base config."""
    figures = Figures()
    reloads_before, tables_before = _reloads_done(target.state), checker.history.recorded
    stop = asyncio.Event()
    impaired = _Impaired(tuple(target.members))
    budget = _Budget(knobs.max_requests)
    rng = random.Random(knobs.seed)
    connector = aiohttp.TCPConnector(limit=knobs.clients)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        clients = [asyncio.create_task(_client(i, session, target, knobs, budget, checker,
                                               figures, stop)) for i in range(knobs.clients)]
        chaos = [asyncio.create_task(work) for work in (
            _faults(target, knobs, random.Random(rng.random()), figures, stop, impaired),
            _reloads(target, knobs, random.Random(rng.random()), figures, stop),
            _drains(target, knobs, random.Random(rng.random()), figures, stop, impaired),
            _cuts(target, knobs, random.Random(rng.random()), figures, stop),
            _windows(knobs, checker, figures, stop),
        )]
        await asyncio.wait(clients, timeout=knobs.duration)
        stop.set()
        await asyncio.gather(*clients, *chaos)
    await restore(target)
    figures.tables = checker.history.recorded - tables_before
    figures.applied, figures.rejected = (
        now - then for now, then in zip(_reloads_done(target.state), reloads_before, strict=True))
    return figures


def _reloads_done(state: RouterState) -> tuple[int, int]:
    """Config reloads the router has accepted and rejected so far, from its metrics."""
    registry = state.metrics.registry
    return (int(registry.get_sample_value("federation_config_reloads_total") or 0),
            int(registry.get_sample_value("federation_config_reload_errors_total") or 0))


async def _pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless the run stops first; True while the run goes on."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return not stop.is_set()


async def _client(n: int, session: aiohttp.ClientSession, target: Target, knobs: Knobs,
                  budget: _Budget, checker: Checker, figures: Figures,
                  stop: asyncio.Event) -> None:
    """A browser-like client: launches popular repositories, keeps the sticky cookie each
    launch sets for its repository and sends it back, and now and then opens a UI page."""
    rng = random.Random(knobs.seed * 1000 + n)
    cookies: dict[str, str] = {}  # cookie Path → member URL
    while not stop.is_set() and budget.take():
        if rng.random() < UI_SHARE:
            kind: Literal["launch", "ui"] = "ui"
            path, prefix = rng.choice(UI_PATHS), ""
        else:
            kind = "launch"
            repo = min(int(rng.expovariate(1 / 25)), REPOS - 1)
            prefix = f"/build/gh/Org{repo % 7}/repo{repo}"
            path = f"{prefix}/{rng.choice(REFS)}"
        cookie = cookies.get(prefix)
        headers = {"Cookie": f'host="{cookie}"'} if cookie else {}
        sent = time.monotonic()
        figures.ui_in_flight += kind == "ui"
        figures.ui_in_flight_max = max(figures.ui_in_flight_max, figures.ui_in_flight)
        try:
            async with session.get(target.url + path, headers=headers,
                                   allow_redirects=False) as response:
                body = await response.text() if kind == "ui" else ""
                received = time.monotonic()
        except (aiohttp.ClientError, TimeoutError) as e:
            checker.fail(f"{path}: no answer: {e!r}")
            continue
        finally:
            figures.ui_in_flight -= kind == "ui"
        if served := _MEMBER_IN_PAGE.search(body):
            figures.ui_members.add(served.group(1))
        figures.requests += 1
        figures.statuses[response.status] += 1
        figures.latency.add(received - sent)
        figures.window_latency.add(received - sent)
        checker.check(Answer(kind, path, sent, received, response.status,
                             response.headers.get("Location"), cookie, body))
        if set_cookie := _SET_COOKIE.match(response.headers.get("Set-Cookie", "")):
            cookies[set_cookie.group(2)] = set_cookie.group(1)


@dataclass
class _Impaired:
    """Members failing or drained right now; the injectors share it to keep one sound."""

    members: tuple[str, ...]
    failing: set[str] = field(default_factory=set)
    drained: set[str] = field(default_factory=set)

    def sound(self) -> list[str]:
        return [n for n in self.members if n not in self.failing | self.drained]


async def _faults(target: Target, knobs: Knobs, rng: random.Random, figures: Figures,
                  stop: asyncio.Event, impaired: _Impaired) -> None:
    """Break sound members, one fault each, and heal them after a while."""
    healing: dict[str, float] = {}
    prime = next(m["name"] for m in target.base_doc["members"] if m["prime"])
    while await _pause(stop, knobs.fault_period):
        now = time.monotonic()
        for name, at in list(healing.items()):
            if now >= at:
                target.members[name].controls = MemberControls()
                impaired.failing.discard(name)
                del healing[name]
                cancel_simulator_hangs()  # as a restarted member would drop them
        sound = impaired.sound()
        if len(impaired.failing) >= MAX_FAULTY or len(sound) < 2:
            continue
        name = rng.choice(sound)
        # A new version on the prime would eject every other member (they no longer match).
        mode = rng.choice([m for m in FAULT_MODES if not (m == "version" and name == prime)])
        target.members[name].controls = _broken(mode)
        impaired.failing.add(name)
        healing[name] = now + rng.uniform(0.3, 1.5)
        figures.faults[mode] += 1
    for name in healing:
        target.members[name].controls = MemberControls()


def _broken(mode: str) -> MemberControls:
    if mode == "version":
        return MemberControls(binderhub="9.9.9+chaos")
    if mode == "full":
        return MemberControls(extra_pods=100)
    return MemberControls(health=cast(HealthMode, mode))


async def _reloads(target: Target, knobs: Knobs, rng: random.Random, figures: Figures,
                   stop: asyncio.Event) -> None:
    """Rewrite the config file: new weights and strategies, members removed and back, and
    broken edits that must be rejected while the last good config stays in force."""
    while await _pause(stop, knobs.reload_period):
        if rng.random() < 0.3:
            target.config_path.write_text(rng.choice(BROKEN_EDITS)(target.base_doc))
            figures.broken_writes += 1
        else:
            target.config_path.write_text(yaml.safe_dump(_variant(target.base_doc, rng)))
            figures.valid_writes += 1


def _variant(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    members = [{**m, "weight": rng.randint(1, 20)} for m in base["members"]]
    if rng.random() < 0.2:
        members.remove(rng.choice([m for m in members if not m["prime"]]))
    routing = {**base["routing"], "strategy": rng.choice(["bounded", "rendezvous", "random"]),
               "load_factor": round(rng.uniform(1.1, 2.0), 2)}
    health = {**base["health"], "interval": rng.choice([0.05, 0.08])}
    return {**base, "routing": routing, "health": health, "members": members}


def _without_prime(doc: dict[str, Any]) -> str:
    return yaml.safe_dump({**doc, "members": [{**m, "prime": False} for m in doc["members"]]})


def _all_weights_zero(doc: dict[str, Any]) -> str:
    return yaml.safe_dump({**doc, "members": [{**m, "weight": 0} for m in doc["members"]]})


def _duplicate_member(doc: dict[str, Any]) -> str:
    return yaml.safe_dump({**doc, "members": [*doc["members"], {**doc["members"][-1],
                                                                 "prime": False}]})


BROKEN_EDITS: tuple[Callable[[dict[str, Any]], str], ...] = (
    lambda doc: yaml.safe_dump(doc)[: len(yaml.safe_dump(doc)) // 2] + "\n  - [",
    lambda doc: yaml.safe_dump({**doc, "routng": {"strategy": "bounded"}}),
    lambda doc: "",
    lambda doc: "- a list\n- not a mapping\n",
    lambda doc: yaml.safe_dump({**doc, "members": [{**m, "url": "ftp://x"}
                                                   for m in doc["members"]]}),
    _without_prime,
    _all_weights_zero,
    _duplicate_member,
)


async def _drains(target: Target, knobs: Knobs, rng: random.Random, figures: Figures,
                  stop: asyncio.Event, impaired: _Impaired) -> None:
    """Drain sound members and undrain them again, as on-call staff would."""
    while await _pause(stop, knobs.drain_period):
        if impaired.drained and (rng.random() < 0.6 or len(impaired.drained) >= MAX_DRAINED):
            name = rng.choice(sorted(impaired.drained))
            await target.drains.update(lambda d, n=name: without_drain(d, n))
            impaired.drained.discard(name)
            figures.undrains += 1
        elif len(impaired.drained) < MAX_DRAINED and len(sound := impaired.sound()) >= 2:
            name = rng.choice(sound)
            await target.drains.update(
                lambda d, n=name: with_drain(d, n, reason="chaos", by="chaos"))
            impaired.drained.add(name)
            figures.drains += 1


async def _cuts(target: Target, knobs: Knobs, rng: random.Random, figures: Figures,
                stop: asyncio.Event) -> None:
    """Cut the Kubernetes watch streams; now and then forget history so the resume is a 410."""
    while target.kube is not None and await _pause(stop, knobs.cut_period):
        if rng.random() < 0.3:
            target.kube.compact()
            figures.compactions += 1
        figures.watch_cuts += target.kube.cut_watches()


async def _windows(knobs: Knobs, checker: Checker, figures: Figures, stop: asyncio.Event) -> None:
    """Every ``knobs.window`` seconds, note what was served, the p99 latency and the RSS."""
    started, errors = time.monotonic(), 0
    while True:
        going = await _pause(stop, knobs.window)
        latest, figures.window_latency = figures.window_latency, Latencies()
        figures.windows.append(Window(
            end=time.monotonic() - started, requests=latest.total,
            errors=checker.violations - errors, p99_ms=latest.percentile(99),
            rss_mib=_rss_mib()))
        errors = checker.violations
        if not going:
            return


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def restore(target: Target) -> None:
    """Heal every member, undrain all, put the base config back, and wait until every member
    takes launches again."""
    for sim in target.members.values():
        sim.controls = MemberControls()
    await target.drains.update(lambda d: MappingProxyType({}))
    target.config_path.write_text(yaml.safe_dump(target.base_doc))
    base = load_config_text(yaml.safe_dump(target.base_doc)).members
    async with asyncio.timeout(15):
        while {m.name for m in target.state.table.routable} != {m.name for m in base} or \
                target.state.table.config.members != base:
            await asyncio.sleep(0.02)


@dataclass(frozen=True)
class MeasuredRun:
    """A run after a warm-up, with the resources before and after it."""

    figures: Figures
    checkers: tuple[Checker, Checker]  # the warm-up's and the run's
    before: Resources
    after: Resources
    tolerance: Tolerance
    report: str

    def violations(self) -> list[str]:
        """The first broken invariants of the warm-up and the run."""
        return [example for checker in self.checkers for example in checker.examples]


async def measured_run(target: Target, knobs: Knobs, logs: LogWatch, *, warm_up: float,
                       trace_memory: bool) -> MeasuredRun:
    """Warm up (pools and caches fill), take the baseline, run ``knobs``, let connections
    settle, and measure again; every answer of both runs is checked."""
    history = TableHistory.attach(target.state)
    warm, checker = Checker(history), Checker(history)
    await run_chaos(target, Knobs(duration=warm_up, clients=knobs.clients,
                                  seed=knobs.seed + 1), warm)
    before = await settled_resources()
    if trace_memory:
        tracemalloc.start()
    try:
        started = time.monotonic()
        figures = await run_chaos(target, knobs, checker)
        duration = time.monotonic() - started
        cancel_simulator_hangs()
        for sim in target.members.values():
            sim.requests.clear()  # the simulator's request log, not the router's
        tolerance = Tolerance.for_run(len(target.members), len(figures.ui_members),
                                      figures.ui_in_flight_max)
        after = await settled_resources(baseline=before, tolerance=tolerance)
        text = report(figures, checker, logs, before=before, after=after, duration=duration)
    finally:
        if trace_memory:
            tracemalloc.stop()
    return MeasuredRun(figures, (warm, checker), before, after, tolerance, text)


def report(figures: Figures, checker: Checker, logs: LogWatch, *, before: Resources,
           after: Resources, duration: float) -> str:
    """The figures of a run, one fact per line."""
    lines = [
        f"requests         {figures.requests} in {duration:.1f} s "
        f"({figures.requests / duration:.0f}/s); "
        f"statuses {dict(sorted(figures.statuses.items()))}",
        f"latency          p50 {figures.latency.percentile(50):.1f} ms, "
        f"p99 {figures.latency.percentile(99):.1f} ms",
        f"faults injected  {sum(figures.faults.values())} {dict(sorted(figures.faults.items()))}",
        f"config writes    {figures.valid_writes} valid, {figures.broken_writes} broken; router "
        f"applied {figures.applied}, rejected {figures.rejected} (the restore included)",
        f"drains           {figures.drains} drains, {figures.undrains} undrains; "
        f"{figures.watch_cuts} watch streams cut, {figures.compactions} compactions",
        f"routing tables   {figures.tables} swapped in; {checker.unroutable_answers} "
        "launches answered while no member was routable",
        f"checked          {checker.checked} answers; errors = {checker.violations}; "
        f"unhandled exceptions logged = {len(logs.problems())} (simulator's own: "
        f"{logs.simulator_errors})",
        f"resources        fds {before.fds} → {after.fds}, tasks {before.tasks} → "
        f"{after.tasks}, " + (f"traced memory +{(after.traced - before.traced) / 1024:.0f} KiB"
                              if tracemalloc.is_tracing() else "memory not traced"),
    ]
    lines += [f"window {w.end:6.1f} s  {w.requests:6d} requests  {w.errors} errors  "
              f"p99 {w.p99_ms:6.1f} ms  rss {w.rss_mib:6.1f} MiB" for w in figures.windows]
    return "\n".join(lines)


# -- tests -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def chaos_federation(start_federation: StartFederation,
                           tmp_path: Path) -> AsyncIterator[Target]:
    """Four members and a router whose drains live in a ConfigMap of a fake API server."""
    async with running_kube_api(bookmark_interval=0.2) as kube:
        api = await connect(str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        async with api:
            store = ConfigMapDrainStore(api, _DRAINS_REF)
            fed = await start_federation(list(MEMBERS), drain_source=store)
            try:
                yield Target(str(fed.client.make_url("")).rstrip("/"), fed.state, fed.members,
                             fed.config_path, dict(fed.config_doc), store, kube)
            finally:
                await fed.client.close()  # the router stops watching before its client closes


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_chaos_keeps_every_invariant(
    start_federation: StartFederation, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Under load, member faults, config reloads (broken ones too), drains and watch cuts:
    no 5xx while a member is routable, every 307 goes to a member routable at that moment,
    sticky cookies never reach a drained or ejected member, nothing unhandled is logged,
    and file descriptors, tasks and memory end where they started."""
    with LogWatch() as logs:
        async with chaos_federation(start_federation, tmp_path) as target:
            run = await measured_run(target, Knobs(duration=20.0), logs, warm_up=1.5,
                                     trace_memory=True)
    record_property("figures", run.report)
    print(run.report)
    assert run.violations() == []
    assert logs.problems() == []
    assert run.figures.requests > 1000, "the run served too little to prove anything"
    assert sum(run.figures.faults.values()) > 20
    assert run.figures.drains > 5 and run.figures.watch_cuts > 3
    assert resource_problems(run.before, run.after, run.tolerance) == []


@pytest.mark.timeout(30)
async def test_chaos_run_catches_a_router_that_honours_stale_cookies(
    start_federation: StartFederation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deliberately broken router (sticky cookies honoured for any configured member, even
    a drained or ejected one) makes a short chaos run report violations."""
    original = RoutingTable.route

    def honour_any_cookie(self: RoutingTable, launch: Any, *, cookie: str | None = None,
                          **options: Any) -> Decision | None:
        for view in self.members:
            if cookie is not None and view.url == cookie.strip('"'):
                return Decision(view, "cookie")
        return original(self, launch, cookie=cookie, **options)

    async with chaos_federation(start_federation, tmp_path) as target:
        checker = Checker(TableHistory.attach(target.state))
        monkeypatch.setattr(RoutingTable, "route", honour_any_cookie)
        await run_chaos(target, Knobs(duration=2.5, clients=8, drain_period=0.2), checker)
    assert checker.violations > 0
    assert any("drained or ejected" in e for e in checker.examples), checker.examples


def _facts(routable: set[str], *, fallback: str | None = None, since: float = 0.0,
           ui: str = "a") -> TableFacts:
    urls = {f"http://127.0.0.1:100{i}": n for i, n in enumerate("abc")}
    return TableFacts(since, MappingProxyType(urls), frozenset(routable), fallback, ui)


BAD_ANSWERS = {
    "redirect off the member list": Answer(
        "launch", "/build/gh/o/r/HEAD", 1, 2, 307, "https://evil.example/build/gh/o/r/HEAD"),
    "redirect to an unroutable member": Answer(
        "launch", "/build/gh/o/r/HEAD", 1, 2, 307, "http://127.0.0.1:1002/build/gh/o/r/HEAD"),
    "redirect with another path": Answer(
        "launch", "/build/gh/o/r/HEAD", 1, 2, 307, "http://127.0.0.1:1000/build/gh/o/x/HEAD"),
    "503 while a member is routable": Answer("launch", "/build/gh/o/r/HEAD", 1, 2, 503),
    "400 for a valid launch": Answer("launch", "/build/gh/o/r/HEAD", 1, 2, 400),
    "cookie to an ejected member": Answer(
        "launch", "/build/gh/o/r/HEAD", 1, 2, 307, "http://127.0.0.1:1002/build/gh/o/r/HEAD",
        cookie="http://127.0.0.1:1002"),
    "UI from a non-UI member": Answer(
        "ui", "/", 1, 2, 200, body="<h1>Binder (simulated member c)</h1>"),
    "UI error": Answer("ui", "/", 1, 2, 502),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_checker_catches_each_broken_invariant(case: str) -> None:
    """Each fabricated bad answer is a violation, judged against the table in force then."""
    history = TableHistory()
    history.add(_facts({"a", "b"}))
    checker = Checker(history)
    checker.check(BAD_ANSWERS[case])
    assert checker.violations == 1, case


def test_checker_accepts_what_the_tables_allowed() -> None:
    """A 307 to a member routable in any table in force during the request passes, as do a
    fallback when none was routable and a 503 when not even a fallback was left."""
    history = TableHistory()
    for facts in (_facts({"a"}), _facts({"c"}, since=1.5), _facts(set(), fallback="b", since=3.0),
                  _facts(set(), since=5.0)):
        history.add(facts)
    checker = Checker(history)
    checker.check(Answer("launch", "/build/gh/o/r/x", 1, 2, 307,
                         "http://127.0.0.1:1002/build/gh/o/r/x"))  # c: swapped in mid-flight
    checker.check(Answer("launch", "/build/gh/o/r/x", 3.5, 4, 307,
                         "http://127.0.0.1:1001/build/gh/o/r/x"))  # b: the fallback
    checker.check(Answer("launch", "/build/gh/o/r/x", 5.5, 6, 503))
    assert (checker.violations, checker.examples) == (0, [])
    checker.check(Answer("launch", "/build/gh/o/r/x", 1, 1.2, 307,
                         "http://127.0.0.1:1002/build/gh/o/r/x"))  # c: not yet in force
    assert checker.violations == 1


def test_unhandled_exception_in_the_logs_is_caught() -> None:
    """An exception logged by aiohttp or by the router's guards is a problem; a request the
    parser refused is counted apart, and an error without an exception is no problem."""
    quiet_malformed_requests()  # as every router does (create_app)
    with LogWatch() as logs:
        for error in (RuntimeError("handler bug"), HttpProcessingError(message="bad line")):
            try:
                raise error
            except Exception:
                logging.getLogger("aiohttp.server").exception("Error handling request")
        try:
            raise KeyError("guard")
        except KeyError:
            structlog.get_logger("federation.app").exception("background task failed")
        structlog.get_logger("federation.runtime").error("config rejected")
    assert logs.problems() == [
        "aiohttp.server: Error handling request (RuntimeError('handler bug'))",
        "structlog error: background task failed (KeyError('guard'))"]
    assert (logs.refused_by_parser, logs.simulator_errors) == (1, 0)


def test_leaks_past_the_tolerance_are_reported() -> None:
    """Resources above the baseline by more than the tolerance are named, each one."""
    tolerance = Tolerance.for_run(members=4, ui_members=2, ui_in_flight=3)
    before = Resources(fds=40, tasks=30, traced=0)
    assert resource_problems(before, Resources(40 + tolerance.fds, 30, 0), tolerance) == []
    leaked = Resources(41 + tolerance.fds, 31 + tolerance.tasks, tolerance.traced + 1)
    assert [p.split()[0] for p in resource_problems(before, leaked, tolerance)] == [
        "fds", "tasks", "traced"]


async def test_resources_notice_descriptors_left_open(tmp_path: Path) -> None:
    """Files opened between two measurements and left open show up as grown descriptors."""
    before = Resources.now()
    with contextlib.ExitStack() as stack:
        for i in range(50):
            stack.enter_context(open(tmp_path / f"f{i}", "w"))
        assert resource_problems(before, Resources.now(), Tolerance(10, 10, 10**9)) != []


def test_table_facts_follow_the_table() -> None:
    """Facts keep the routable members, the fallback (only when none is routable), the UI
    member and every configured URL."""
    config = load_config_text(yaml.safe_dump({"members": [
        {"name": "a", "url": "http://127.0.0.1:1000", "prime": True},
        {"name": "b", "url": "http://127.0.0.1:1001"}]}))
    table = build_table(config, {}, {}, now=0.0)
    facts = TableFacts.of(table, 1.0)
    assert facts.routable == frozenset() and facts.fallback == "a" and facts.ui == "a"
    assert dict(facts.urls) == {"http://127.0.0.1:1000": "a", "http://127.0.0.1:1001": "b"}


def test_latency_percentiles_are_within_one_percent() -> None:
    """The bucketed percentiles stay within 1 % of the exact ones."""
    latencies = Latencies()
    samples = [0.0005 * 1.003**i for i in range(2000)]
    for seconds in random.Random(1).sample(samples, len(samples)):
        latencies.add(seconds)
    for q in (50, 99):
        exact = samples[math.ceil(q / 100 * len(samples)) - 1] * 1000
        assert exact <= latencies.percentile(q) <= exact * 1.01
    assert Latencies().percentile(99) == 0.0


def test_table_history_forgets_only_what_no_request_can_need() -> None:
    """Old tables are dropped once ``keep`` seconds have passed, but the one in force then
    is kept, so a request in flight since then is still judged."""
    history = TableHistory(keep=10.0)
    for since in range(100):
        history.add(_facts({"a"} if since < 95 else {"b"}, since=float(since)))
    assert history.recorded == 100 and history.in_force(0.0, 1.0) == []  # forgotten
    assert [f.routable for f in history.in_force(89.5, 96.0)] == [
        frozenset({"a"})] * 6 + [frozenset({"b"})] * 2
