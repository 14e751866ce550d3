"""Shared fixtures: a federation of simulated BinderHub members and a router, on 127.0.0.1.

Everything runs over real loopback sockets on ephemeral ports. Probe intervals are tiny so
health transitions happen in milliseconds; tests wait for conditions, never for fixed times.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import structlog
import yaml
from aiohttp import ClientResponse, ClientSession, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from click.testing import CliRunner, Result
from yarl import URL

from federation.app import STATE, DrainSource, create_app
from federation.cli import main
from federation.config import load_config
from federation.demo import MemberControls, SimulatedMember
from federation.drains import FileDrainStore, with_drain
from federation.runtime import RouterState
from federation.sources import FileConfigSource

FAST_HEALTH: dict[str, Any] = {
    "interval": 0.05,
    "timeout": 0.5,
    "jitter": 0.0,
    "failures_to_eject": 2,
    "successes_to_restore": 2,
    "max_backoff": 0.2,
    "versions_interval": 0.05,  # every round, as tests of skew expect; its own tests set it
    "startup_timeout": 3,
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show the figures a test recorded (``record_property("figures", text)``) in any run's
    output, with or without ``-s``, so CI logs carry them (the chaos test's counts)."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", ()):
                if name == "figures" and report.when == "call":
                    terminalreporter.write_sep("-", f"figures: {report.nodeid}")
                    terminalreporter.write_line(str(value))


def missing_tool(tool: str, install: str, why: str) -> NoReturn:
    """Skip a test that needs ``tool`` where it is not installed, saying how to install it
    and ``why`` it matters; under CI (``CI`` set) fail instead, as ``.ci/run`` installs it."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{tool} is not installed, but CI must run this test: .ci/run installs it "
                    f"with {install}")
    pytest.skip(f"no {tool}: install it ({install}) {why}")


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    """Each test starts from structlog's defaults (capture_logs works, no stale config)."""
    structlog.reset_defaults()


@dataclass
class Federation:
    """A running router with its simulated members."""

    members: dict[str, SimulatedMember]
    client: TestClient[Any, Any]
    app: web.Application
    config_path: Path
    workdir: Path
    config_doc: dict[str, Any] = field(default_factory=dict)
    _session: ClientSession | None = None

    async def close(self) -> None:
        """Close the cookie-less client session, if one was opened."""
        if self._session is not None:
            await self._session.close()

    @property
    def state(self) -> RouterState:
        """The router's live state."""
        return self.app[STATE]

    def member_by_url(self, location: str) -> str:
        """Which simulated member a redirect Location points at."""
        for name, sim in self.members.items():
            if location.startswith(sim.url + "/"):
                return name
        raise AssertionError(f"Location {location!r} is not a member URL")

    def raw_url(self, path: str) -> URL:
        """The router URL for ``path`` exactly as written (no re-quoting by the client)."""
        return URL(str(self.client.make_url("/")).rstrip("/") + path, encoded=True)

    async def launch(self, path: str, *, method: str = "GET", **headers: str) -> ClientResponse:
        """Request ``path`` byte for byte, without following redirects; body is read.

        No cookie jar: each call sends exactly the cookies given in ``headers``.
        """
        if self._session is None:
            self._session = ClientSession(cookie_jar=DummyCookieJar())
        response = await self._session.request(
            method, self.raw_url(path), allow_redirects=False, headers=headers)
        await response.read()
        return response

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 5.0,
                       what: str = "condition") -> None:
        """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)

    async def wait_status(self, name: str, status: str, *, timeout: float = 5.0) -> None:
        """Wait until member ``name`` shows ``status`` in the routing table."""
        try:
            await self.wait_for(lambda: self.state.table.by_name[name].status.value == status,
                                timeout=timeout)
        except TimeoutError:
            view = self.state.table.by_name[name]
            raise AssertionError(f"{name} stayed {view.status.value} ({view.reason}), "
                                 f"expected {status}") from None

    def write_config(self, doc: Mapping[str, Any]) -> None:
        """Replace the config file (the router's watcher picks it up)."""
        self.config_doc = dict(doc)
        self.config_path.write_text(yaml.safe_dump(self.config_doc, sort_keys=False))

    async def apply_config(self, doc: Mapping[str, Any]) -> None:
        """Write ``doc`` and wait until the router has put it in force (a new generation)."""
        generation = self.state.generation
        self.write_config(doc)
        await self.wait_for(lambda: self.state.generation > generation, what="config applied")

    async def break_config(self, text: str) -> None:
        """Write invalid config ``text`` and wait until the router has rejected it."""
        before = self.state.rejection
        self.config_path.write_text(text)
        await self.wait_for(lambda: self.state.rejection not in (None, before),
                            what="config rejected")


def federation_doc(members: Mapping[str, SimulatedMember], *,
                   weights: Mapping[str, float] | None = None,
                   routing: Mapping[str, Any] | None = None,
                   health: Mapping[str, Any] | None = None,
                   prime: str | None = None,
                   kinds: Mapping[str, str] | None = None,
                   logging: Mapping[str, Any] | None = None,
                   drains: Mapping[str, Any] | None = None,
                   limits: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config document for running simulated members (the first is prime by default)."""
    names = list(members)
    prime = prime or names[0]
    return {
        "routing": {"slow_start": 0, **(routing or {})},
        "health": {**FAST_HEALTH, **(health or {})},
        "drains": dict(drains or {"file": "drains.yaml"}),
        "logging": dict(logging or {}),
        "limits": dict(limits or {}),
        "members": [
            {"name": n, "url": members[n].url, "weight": (weights or {}).get(n, 10),
             "prime": n == prime, "kind": (kinds or {}).get(n, "other")}
            for n in names
        ],
    }


StartFederation = Callable[..., Awaitable[Federation]]


async def run_cli(*args: str) -> Result:
    """Run the ``federation`` command as a shell would, in a thread: its own event loop must not
    block the one serving this test's members, router and fake API server.

    The runner swaps ``sys.stdout`` while the command runs, and structlog's default logger
    prints to whatever ``sys.stdout`` is; the router's events go to stderr instead, so the
    result holds only what the command printed.
    """
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), catch_exceptions=False)


@pytest.fixture
async def start_federation(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> AsyncIterator[StartFederation]:
    """Factory: ``await start_federation(["a", "b"], weights=..., routing=...)``.

    Starts the simulated members, writes a config with fast probes, starts the router and
    waits until every member has been probed once. Stops everything at the end of the test.
    Drains come from ``drains.yaml`` in the test's directory unless ``drain_source`` is given.
    """
    sims: list[SimulatedMember] = []
    federations: list[Federation] = []

    async def start(names: list[str] | Mapping[str, MemberControls] = ("a", "b", "c"),
                    *, wait_ready: bool = True, drain_source: DrainSource | None = None,
                    **doc_options: Any) -> Federation:
        controls = names if isinstance(names, Mapping) else {n: MemberControls() for n in names}
        members = {n: SimulatedMember(n, c) for n, c in controls.items()}
        for sim in members.values():
            sims.append(sim)
            await sim.start()
        doc = federation_doc(members, **doc_options)
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        app = create_app(
            load_config(config_path),
            config_source=FileConfigSource(config_path, poll_interval=0.05),
            drain_source=drain_source or FileDrainStore(tmp_path / "drains.yaml",
                                                        poll_interval=0.05),
        )
        client = await aiohttp_client(app)
        fed = Federation(members, client, app, config_path, tmp_path, doc)
        federations.append(fed)
        if wait_ready:
            await fed.wait_for(lambda: fed.state.ready, what="router ready")
        return fed

    yield start
    for fed in federations:
        await fed.close()
    for sim in sims:
        await sim.stop()


MIXED_KINDS = {"gke": "gke", "bare-metal": "bare-metal", "ovh": "ovh", "azure": "azure",
               "gesis": "bare-metal"}


async def start_mixed_federation(start: StartFederation) -> Federation:
    """Five members, one in each state on-call staff meet, with some launches recorded.

    gke (prime) and bare-metal are healthy; ovh is full (35 pods, quota 40, headroom 10);
    azure is unhealthy (/health answers 503); gesis is drained by alice and runs an older
    BinderHub than the prime.
    """
    fed = await start({
        "gke": MemberControls(),
        "bare-metal": MemberControls(),
        "ovh": MemberControls(quota=40, extra_pods=35),
        "azure": MemberControls(health="503"),
        "gesis": MemberControls(binderhub="0.9.0+old"),
    }, kinds=MIXED_KINDS, weights={"gke": 60, "bare-metal": 20, "ovh": 30, "azure": 30,
                                   "gesis": 40})
    store = FileDrainStore(fed.workdir / "drains.yaml")
    store.write(with_drain(store.read(), "gesis", reason="registry timeouts, incident 42",
                           by="alice"))
    for name, status in (("gke", "healthy"), ("bare-metal", "healthy"), ("ovh", "full"),
                         ("azure", "unhealthy"), ("gesis", "drained")):
        await fed.wait_status(name, status)
    for i in range(24):
        await fed.launch(f"/build/gh/demo/repo{i}/HEAD")
    return fed
