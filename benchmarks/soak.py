"""Soak: minutes of launches while members fail and recover, with figures over time.

``python -m benchmarks.soak --minutes 5`` (from the repository root; not run in CI).

Runs the chaos test's engine (``tests/test_chaos.py``) for minutes instead of seconds: client
tasks launch and open UI pages without pause while members fail and recover, the config file
is rewritten (broken edits too), members are drained and undrained through a ConfigMap, and
the Kubernetes watch is cut. Every answer is checked against the routing tables in force, so
"errors" counts broken invariants (a 5xx while a member was routable, a redirect to a member
that could not take launches, no answer at all), not just failed requests. Prints requests
served and errors, and per window the p99 latency and the resident memory of this process
(router, members, fake API server and clients together: a leak anywhere shows as growth).
Everything listens on 127.0.0.1, and the run is bounded by ``--minutes`` and
``--max-requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import click
import yaml
from aiohttp import web

from federation.app import STATE, create_app
from federation.config import load_config
from federation.demo import SimulatedMember
from federation.kube import ConfigMapRef, connect
from federation.sources import FileConfigSource
from federation.stores import ConfigMapDrainStore
from tests.conftest import federation_doc
from tests.kubeapi import running_kube_api
from tests.test_chaos import (
    MEMBERS,
    Knobs,
    LogWatch,
    MeasuredRun,
    Target,
    Window,
    measured_run,
    resource_problems,
)

__all__ = ["main"]

_DRAINS = ConfigMapRef(namespace="binder", name="federation-drains", key="drains.yaml")


@contextlib.asynccontextmanager
async def soak_federation(workdir: Path, *, probe_interval: float) -> AsyncIterator[Target]:
    """Four simulated members, a fake Kubernetes API holding the drains, and the router."""
    sims = {name: SimulatedMember(name) for name in MEMBERS}
    async with running_kube_api(bookmark_interval=1.0) as kube:
        api = await connect(str(kube.write_kubeconfig(workdir / "kubeconfig")))
        async with api, contextlib.AsyncExitStack() as stack:
            for sim in sims.values():
                await sim.start()
                stack.push_async_callback(sim.stop)
            doc = federation_doc(sims, health={"interval": probe_interval})
            config_path = workdir / "config.yaml"
            config_path.write_text(yaml.safe_dump(doc))
            store = ConfigMapDrainStore(api, _DRAINS)
            app = create_app(load_config(config_path), drain_source=store,
                             config_source=FileConfigSource(config_path, poll_interval=0.1))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)  # before the members and the client go
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            yield Target(f"http://127.0.0.1:{port}", app[STATE], sims, config_path, doc, store,
                         kube)


def markdown(windows: list[Window]) -> str:
    """The figures over time as a Markdown table, for the README."""
    rows = ["| time | requests | errors | p99 latency | memory (RSS) |",
            "|---:|---:|---:|---:|---:|"]
    rows += [f"| {w.end / 60:.1f} min | {w.requests} | {w.errors} | {w.p99_ms:.0f} ms | "
             f"{w.rss_mib:.1f} MiB |" for w in windows]
    return "\n".join(rows)


async def soak(knobs: Knobs, *, probe_interval: float,
               warm_up: float) -> tuple[MeasuredRun, list[str]]:
    """Run the soak after a warm-up; returns the run and what broke (nothing, we hope): the
    first broken invariants, unhandled exceptions logged, resources left above the baseline."""
    with tempfile.TemporaryDirectory(prefix="federation-soak-") as tmp, LogWatch() as logs:
        async with soak_federation(Path(tmp), probe_interval=probe_interval) as target:
            run = await measured_run(target, knobs, logs, warm_up=warm_up, trace_memory=False)
    return run, [*run.violations(), *logs.problems(),
                 *resource_problems(run.before, run.after, run.tolerance)]


@click.command()
@click.option("--minutes", default=5.0, show_default=True, help="How long to keep the load on.")
@click.option("--clients", default=32, show_default=True, help="Concurrent clients.")
@click.option("--window", default=30.0, show_default=True, help="Seconds per line over time.")
@click.option("--max-requests", default=5_000_000, show_default=True,
              help="Stop early after this many requests.")
@click.option("--probe-interval", default=0.1, show_default=True,
              help="Seconds between probes of a healthy member.")
@click.option("--warm-up", default=10.0, show_default=True,
              help="Seconds of load before the baseline is taken.")
@click.option("--seed", default=9, show_default=True)
def main(minutes: float, clients: int, window: float, max_requests: int,
         probe_interval: float, warm_up: float, seed: int) -> None:
    """Soak the router under load and member churn; print figures over time."""
    knobs = Knobs(duration=minutes * 60, clients=clients, window=window,
                  max_requests=max_requests, seed=seed)
    run, broken = asyncio.run(soak(knobs, probe_interval=probe_interval, warm_up=warm_up))
    click.echo(run.report)
    click.echo()
    click.echo(markdown(run.figures.windows))
    if broken:
        raise SystemExit("soak: something broke:\n" + "\n".join(broken[:20]))


if __name__ == "__main__":
    main()
