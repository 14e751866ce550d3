"""The ``federation`` command: serve, demo, route, check, drain, undrain, status.

Written for the people who use it: operators switching from today's redirector, institutions
joining, and on-call staff at 3 a.m. Every failure prints one plain sentence saying what is
wrong and what to do, and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import click

from federation.config import Config, Strategy
from federation.drains import current_user, drain_member, undrain_member
from federation.errors import ConfigError, FederationError, KubeError, LaunchPathError
from federation.launch import parse_launch
from federation.logs import LogFormat, configure_logging
from federation.placement import rank
from federation.serving import ServeError, run_router, supervise
from federation.table import POD_COUNT_CACHE

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 8080

_T = TypeVar("_T")

if TYPE_CHECKING:
    from federation.drains import Drains
    from federation.stores import Stores


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


_CONFIG_HELP = ("Federation config: a YAML file (or today's redirector JSON), or a ConfigMap "
                "key as configmap:NAME, configmap:NS/NAME or configmap:NS/NAME/KEY "
                "(key config.yaml).")
_kubeconfig_option = click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), default=None, metavar="PATH",
    help="For ConfigMaps: this kubeconfig; default: in a pod its service account, else "
         "$KUBECONFIG or ~/.kube/config.")


def _using_stores(kubeconfig: str | None, work: Callable[[Stores], Awaitable[_T]]) -> _T:
    """Run ``work`` with access to config and drains; any failure (invalid config, Kubernetes
    unreachable, drain refused) is printed as one sentence and exits 1."""
    from federation.stores import Stores

    async def run() -> _T:
        async with Stores(kubeconfig=kubeconfig) as stores:
            return await work(stores)

    try:
        return asyncio.run(run())
    except (FederationError, KubeError) as e:
        _fail(str(e))
        raise  # unreachable; keeps type checkers content


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Launch router for a federation of BinderHub clusters."""


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
              show_default=True, help="auto: console on a terminal, JSON otherwise.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Router processes sharing the port (SO_REUSEPORT); about one per core.")
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]),
              default="auto", show_default=True,
              help="Event loop; auto takes uvloop when installed (the 'fast' extra).")
def serve(config_path: str, kubeconfig: str | None, host: str, port: int,
          log_format: LogFormat, workers: int, loop_kind: str) -> None:
    """Run the router. The config and drains are watched and applied live.

    With --workers N, N processes each run a whole router (own probes, metrics and caches)
    on the same port, and the kernel spreads connections among them.
    """
    configure_logging(log_format)
    if workers > 1:
        # A bad config (or an unreachable ConfigMap) fails here, before any worker starts.
        _using_stores(kubeconfig, lambda stores: stores.open_with_drains(config_path))
    try:
        if workers == 1:
            run_router(config_path, kubeconfig=kubeconfig, host=host, port=port,
                       loop_kind=loop_kind)
        else:
            supervise(config_path, kubeconfig=kubeconfig, host=host, port=port,
                      loop_kind=loop_kind, workers=workers)
    except ServeError as e:
        _fail(str(e))


@main.command()
@click.option("--members", default=3, show_default=True, type=click.IntRange(1, 10),
              help="How many simulated members.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="Port of the router (members take free ports).")
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto")
def demo(members: int, port: int, log_format: LogFormat) -> None:
    """Start a local federation of simulated members and the router, on 127.0.0.1."""
    from federation.demo import run_demo

    configure_logging(log_format)
    asyncio.run(run_demo(members=members, port=port))


def _launch_path(text: str) -> str:
    """A path (with query) from a path or a full URL, never decoding it."""
    if "://" in text:
        parts = urlsplit(text)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return text


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per path.")
@click.option("--drain", "drain_names", multiple=True, metavar="NAME",
              help="What if NAME were drained (repeatable).")
@click.option("--weight", "weights", multiple=True, metavar="NAME=W",
              help="What if NAME had weight W (repeatable).")
@click.argument("targets", nargs=-1, required=True, metavar="URL_OR_PATH...")
def route(config_path: str, kubeconfig: str | None, as_json: bool,
          drain_names: tuple[str, ...], weights: tuple[str, ...],
          targets: tuple[str, ...]) -> None:
    """Which member each launch goes to, with the full ranking (from the config and drains).

    Every member with weight > 0 that is not drained is a candidate; health is not known here,
    nor are live loads, so ``reason`` is always ``home``: a bounded-load spill-over happens
    only while the home member is at its bound (``federation simulate`` shows how often).
    """
    config, stored = _using_stores(kubeconfig,
                                   lambda stores: _config_and_drains(stores, config_path))
    overrides = _weight_overrides(config, weights)
    for name in drain_names:
        if config.member(name) is None:
            _fail(f"--drain {name}: no member called {name!r} in {config_path}")
    drained = set(drain_names) | {m.name for m in config.members if m.drain} | set(stored)
    candidates = [(m.name, overrides.get(m.name, m.weight)) for m in config.members
                  if m.name not in drained]
    if config.routing.strategy is Strategy.RANDOM and not as_json:
        click.secho("note: this config routes at random (strategy: random); the member shown "
                    "is the one rendezvous hashing would pick", fg="yellow", err=True)
    failed = False
    for target in targets:
        path = _launch_path(target)
        try:
            launch = parse_launch(path)
        except LaunchPathError as e:
            failed = True
            if as_json:
                click.echo(json.dumps({"path": path, "error": e.reason}))
            else:
                click.secho(f"{path}\n  error: {e.reason}", fg="red")
            continue
        ranking = rank(launch.key, candidates)
        result: dict[str, Any] = {
            "path": path, "key": launch.key, "provider": launch.provider, "repo": launch.repo,
            "member": ranking[0].name if ranking else None,
            "reason": "home" if ranking else "none",
            "ranking": [{"member": r.name, "score": r.score,
                         "weight": dict(candidates)[r.name]} for r in ranking],
        }
        if as_json:
            click.echo(json.dumps(result))
            continue
        click.echo(f"{path}\n  key     {launch.key}\n  member  {result['member'] or '(none)'}")
        for i, r in enumerate(ranking, 1):
            label = "ranking" if i == 1 else ""
            click.echo(f"  {label:7} {i}. {r.name:<20} score {r.score:.6g}")
    if failed:
        sys.exit(1)


async def _config_and_drains(stores: Stores, config_path: str) -> tuple[Config, Drains]:
    """The config, and the drains in force as far as they can be read (else a warning)."""

    opened = await stores.open(config_path)
    try:
        return opened.config, await (await stores.drain_store(opened)).load()
    except (ConfigError, KubeError) as e:
        click.secho(f"warning: drains not read, so none are assumed: {e}", fg="yellow",
                    err=True)
        return opened.config, {}


def _weight_overrides(config: Config, weights: tuple[str, ...]) -> dict[str, float]:
    out = _numbers("--weight", weights)
    for name in out:
        if config.member(name) is None:
            _fail(f"--weight {name}: no member called {name!r} in the config")
    return out


_LONG_SIMULATION = 50_000  # launch decisions; shorter runs end before a progress bar helps


def _numbers(option: str, items: tuple[str, ...]) -> dict[str, float]:
    """NAME=N options (weights, quotas) as a mapping; a malformed one ends the command."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value) if sep and name else math.nan
        except ValueError:
            number = math.nan
        if not 0 <= number < math.inf:
            _fail(f"{option} {item!r}: expected NAME=N with N a number, 0 or more")
        out[name] = number
    return out


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
@click.option("--trace", "traces", multiple=True, metavar="FILE|DIR",
              type=click.Path(exists=True),
              help="Launch events in the mybinder.org archive format (JSON lines, or .gz; a "
                   "directory: its *.jsonl[.gz]); repeatable, merged in time order.")
@click.option("--zipf", "zipf_repos", type=click.IntRange(min=1), metavar="N",
              help="Instead of a trace: synthetic Zipf launches over N repositories.")
@click.option("--launches", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="--zipf: number of launches.")
@click.option("--exponent", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="--zipf: Zipf exponent.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="--zipf: launches per second (Poisson arrivals).")
@click.option("--session-lifetime", type=click.FloatRange(min=0, min_open=True),
              default=1000.0, show_default=True, help="Mean seconds a session runs.")
@click.option("--seed", type=int, default=20261127, show_default=True)
@click.option("--quota", "quotas", multiple=True, metavar="NAME=PODS",
              help="A member's pod quota; others are shared out by weight (--utilisation).")
@click.option("--utilisation", type=click.FloatRange(0, 1, min_open=True), default=0.8,
              show_default=True, help="Mean share of derived quotas in use.")
@click.option("--probe-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between probes [default: the config's health.interval].")
@click.option("--pod-cache", type=click.FloatRange(min=0), default=POD_COUNT_CACHE,
              show_default=True, metavar="SECONDS",
              help="How often members count their pods (BinderHub: at most once a minute, "
                   "answering /health from that count in between); 0: at every probe.")
@click.option("--strategy", "strategies", multiple=True,
              type=click.Choice([s.value for s in Strategy]),
              help="Only these strategies [default: random, rendezvous and bounded].")
@click.option("--no-quota-reports", is_flag=True,
              help="Members report no pod quota: only the load bound limits them.")
@click.option("--drain", "drain_names", multiple=True, metavar="NAME",
              help="What if NAME were drained (repeatable).")
@click.option("--weight", "weights", multiple=True, metavar="NAME=W",
              help="What if NAME had weight W (repeatable).")
@click.option("--add", "added", multiple=True, metavar="NAME=W",
              help="What if a member NAME of weight W joined (repeatable).")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.svg",
              help="Write each member's load against its quota over time as SVG.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per strategy.")
def simulate(config_path: str, kubeconfig: str | None, traces: tuple[str, ...],
             zipf_repos: int | None, launches: int, exponent: float, rate: float,
             session_lifetime: float, seed: int, quotas: tuple[str, ...], utilisation: float,
             probe_interval: float | None, pod_cache: float, strategies: tuple[str, ...],
             no_quota_reports: bool,
             drain_names: tuple[str, ...], weights: tuple[str, ...], added: tuple[str, ...],
             plot: str | None, as_json: bool) -> None:
    """Replay launches through the router's placement and compare strategies side by side.

    Per member: launches, builds (first launch of a repository there), cache-hit rate, peak
    sessions against quota, spill-overs. What-if options also report how many repositories
    and launches change home member.
    """
    from federation import simulate as sim
    from federation.traces import ZipfWorkload, read_archive, zipf_trace

    if bool(traces) == bool(zipf_repos):
        _fail("give either --trace FILE (repeatable) or --zipf N")
    if plot is not None and not plot.endswith(".svg"):
        _fail(f"--plot {plot}: only SVG is written; name the file *.svg")
    config, stored = _using_stores(kubeconfig,
                                   lambda stores: _config_and_drains(stores, config_path))
    what_if = sim.WhatIf(tuple(drain_names), tuple(_weight_overrides(config, weights).items()),
                         tuple(_numbers("--add", added).items()))
    pods = {name: round(q) for name, q in _numbers("--quota", quotas).items()}
    try:
        trace = (zipf_trace(ZipfWorkload(zipf_repos, exponent, launches, rate,
                                         session_lifetime, seed)) if zipf_repos
                 else read_archive(traces, session_lifetime=session_lifetime, seed=seed))
        if not trace.launches:
            _fail(f"{trace.description}: no launches to replay ({trace.skipped} skipped)")
        chosen = tuple(Strategy(s) for s in strategies) or sim.STRATEGIES
        steps = len(trace.launches) * len(chosen)
        bar = (click.progressbar(length=steps, label="Simulating", file=sys.stderr)
               if sys.stderr.isatty() and steps >= _LONG_SIMULATION else None)
        with bar or contextlib.nullcontext():
            report = sim.run(
                sim.WhatIf(drain=tuple(n for n in stored if config.member(n))).apply(config),
                trace, what_if=what_if,
                strategies=chosen, quotas=pods,
                concurrency=rate * session_lifetime if zipf_repos else None,
                utilisation=utilisation, probe_interval=probe_interval, pod_cache=pod_cache,
                report_quota=not no_quota_reports, seed=seed,
                progress=bar.update if bar else None)
        if plot is not None:
            with open(plot, "w", encoding="utf-8") as f:
                f.write(sim.render_svg(report))
    except (FederationError, OSError) as e:
        _fail(str(e))
    click.echo("\n".join(report.json_lines()) if as_json else sim.render_text(report))


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
@click.option("--probe", is_flag=True,
              help="Also probe every member once: the preflight for joining the federation.")
@click.option("--member", "only", multiple=True, metavar="NAME",
              help="With --probe: judge only NAME (repeatable); the prime is still probed, "
                   "as the versions reference.")
def check(config_path: str, kubeconfig: str | None, probe: bool,
          only: tuple[str, ...]) -> None:
    """Validate a config; with --probe, say whether each member is fit to join.

    Exits non-zero, with reasons, when the config is invalid or a probed member is not fit.
    """
    config = _using_stores(kubeconfig, lambda stores: _checked_config(stores, config_path))
    names = ", ".join(f"{m.name}{' (prime)' if m.prime else ''}" for m in config.members)
    click.echo(f"OK: {config.source}: {len(config.members)} members: {names}; "
               f"strategy {config.routing.strategy.value}"
               f"{' (read as the redirector format)' if config.format == 'redirector' else ''}")
    if not probe:
        return
    from federation.preflight import preflight, render_preflight

    unknown = [name for name in only if config.member(name) is None]
    if unknown:
        _fail(f"--member {unknown[0]}: no member called {unknown[0]!r} in {config.source}")
    report = asyncio.run(preflight(config, only=only))
    click.echo(render_preflight(report))
    if not report.fit:
        sys.exit(1)


async def _checked_config(stores: Stores, config_path: str) -> Config:
    """The config, with its drains location resolved too (without contacting Kubernetes)."""
    opened = await stores.open(config_path)
    stores.drains_location(opened)
    return opened.config


def _undo_hint(command: str, member: str, config_path: str, kubeconfig: str | None) -> str:
    return (f"federation {command} {member} --config {config_path}"
            f"{f' --kubeconfig {kubeconfig}' if kubeconfig else ''}")


@main.command()
@click.argument("member")
@click.option("--reason", required=True, help="Why, for the status page and the next shift.")
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
@click.option("--by", "by", default=None, help="Who drains (default: your login name).")
@click.option("--force", is_flag=True, help="Drain even the last member taking launches.")
def drain(member: str, reason: str, config_path: str, kubeconfig: str | None,
          by: str | None, force: bool) -> None:
    """Take MEMBER out of rotation on every router replica, without a redeploy."""
    who = by or current_user()

    async def work(stores: Stores) -> str:
        opened, store = await stores.open_with_drains(config_path)
        await store.update(lambda drains: drain_member(
            drains, opened.config, member, reason=reason, by=who, force=force))
        return store.name

    where = _using_stores(kubeconfig, work)
    click.echo(f"Drained {member} in {where} (by {who}: {reason}).\n"
               f"Every router watching it stops sending {member} new launches within 2 "
               "seconds; sessions already running there are not touched.\n"
               f"Undo with: {_undo_hint('undrain', member, config_path, kubeconfig)}")
    if force:
        click.secho("warning: with --force, no member may be left taking launches: "
                    "check `federation status`", fg="yellow", err=True)


@main.command()
@click.argument("member")
@click.option("--config", "config_path", required=True, metavar="PATH|configmap:…",
              help=_CONFIG_HELP)
@_kubeconfig_option
def undrain(member: str, config_path: str, kubeconfig: str | None) -> None:
    """Put MEMBER back into rotation (it still has to pass its health checks)."""

    async def work(stores: Stores) -> str:
        opened, store = await stores.open_with_drains(config_path)
        await store.update(lambda drains: undrain_member(drains, opened.config, member))
        return store.name

    where = _using_stores(kubeconfig, work)
    click.echo(f"Undrained {member} in {where}: it takes launches again once its probes "
               "pass, ramping up over routing.slow_start.")


@main.command()
@click.option("--router", "router_url", required=True, metavar="URL",
              help="A running router, e.g. http://127.0.0.1:8080.")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to wait for the router.")
def status(router_url: str, as_json: bool, timeout: float) -> None:
    """The live member table of a running router; exit 1 when the federation is down."""
    from federation.status import StatusUnavailable, fetch_status, format_status_table

    try:
        document = asyncio.run(fetch_status(router_url, timeout=timeout))
    except StatusUnavailable as e:
        _fail(f"cannot read the router's status: {e}")
        raise  # unreachable; keeps type checkers content
    click.echo(json.dumps(document, indent=1) if as_json else format_status_table(document))
    if document["status"] == "down":
        if as_json:
            click.echo(document["summary"], err=True)
        sys.exit(1)


@main.command()
def schema() -> None:
    """Print the JSON Schema of the config format (kept in config/schema.json)."""
    from federation.config import config_json_schema

    click.echo(json.dumps(config_json_schema(), indent=2, sort_keys=True))
