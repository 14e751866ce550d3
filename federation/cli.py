"""The ``federation`` command: serve, demo, route, check, drain, undrain, status.

Written for the people who use it: operators switching from today's redirector, institutions
joining, and on-call staff at 3 a.m. Every failure prints one plain sentence saying what is
wrong and what to do, and exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from aiohttp import web

from federation.config import Config, load_config
from federation.drains import FileDrainStore, current_user, with_drain, without_drain
from federation.errors import ConfigError, DrainError, LaunchPathError
from federation.launch import parse_launch
from federation.logs import LogFormat, configure_logging
from federation.placement import rank

__all__ = ["DEFAULT_PORT", "main"]

DEFAULT_PORT = 8080


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _load(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable; keeps type checkers content


def drain_store_for(config: Config, config_path: str) -> FileDrainStore:
    """The drain store a config names; by default ``drains.yaml`` next to the config file."""
    if config.drains.configmap:
        _fail("this config keeps drains in a ConfigMap, which this command cannot reach yet")
    base = Path(config_path).resolve().parent
    return FileDrainStore(base / (config.drains.file or "drains.yaml"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Launch router for a federation of BinderHub clusters."""


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH",
              help="Federation config (YAML, or today's redirector JSON).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto",
              show_default=True, help="auto: console on a terminal, JSON otherwise.")
def serve(config_path: str, host: str, port: int, log_format: LogFormat) -> None:
    """Run the router. The config and drains are watched and applied live."""
    from federation.app import create_app
    from federation.sources import FileConfigSource

    configure_logging(log_format)
    config = _load(config_path)
    source = FileConfigSource(config_path)
    drains = drain_store_for(config, config_path)
    app = create_app(config, config_source=source, drain_source=drains)

    async def on_startup(app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, source.reload_now)

    app.on_startup.append(on_startup)
    web.run_app(app, host=host, port=port, access_log=None, print=None,
                handle_signals=True, shutdown_timeout=5)


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
@click.option("--config", "config_path", required=True, metavar="PATH")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per path.")
@click.option("--drain", "drain_names", multiple=True, metavar="NAME",
              help="What if NAME were drained (repeatable).")
@click.option("--weight", "weights", multiple=True, metavar="NAME=W",
              help="What if NAME had weight W (repeatable).")
@click.argument("targets", nargs=-1, required=True, metavar="URL_OR_PATH...")
def route(config_path: str, as_json: bool, drain_names: tuple[str, ...],
          weights: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Which member each launch goes to, with the full ranking (from the config alone).

    Every member with weight > 0 that is not drained is a candidate; health is not known here.
    """
    config = _load(config_path)
    overrides = _weight_overrides(config, weights)
    for name in drain_names:
        if config.member(name) is None:
            _fail(f"--drain {name}: no member called {name!r} in {config_path}")
    drained = set(drain_names) | {m.name for m in config.members if m.drain}
    store = drain_store_for(config, config_path) if not config.drains.configmap else None
    if store is not None:
        try:
            drained |= set(store.read())
        except ConfigError as e:
            click.secho(f"warning: drains not read: {e}", fg="yellow", err=True)
    candidates = [(m.name, overrides.get(m.name, m.weight)) for m in config.members
                  if m.name not in drained]
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


def _weight_overrides(config: Config, weights: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in weights:
        name, sep, value = item.partition("=")
        if not sep or config.member(name) is None:
            _fail(f"--weight {item!r}: expected NAME=W with NAME a member of the config")
        try:
            out[name] = float(value)
        except ValueError:
            _fail(f"--weight {item!r}: {value!r} is not a number")
        if out[name] < 0:
            _fail(f"--weight {item!r}: weights cannot be negative")
    return out


@main.command()
@click.option("--config", "config_path", required=True, metavar="PATH")
def check(config_path: str) -> None:
    """Validate a config; exit non-zero with the reason when it is not valid."""
    config = _load(config_path)
    names = ", ".join(f"{m.name}{' (prime)' if m.prime else ''}" for m in config.members)
    click.echo(f"OK: {config_path}: {len(config.members)} members: {names}; "
               f"strategy {config.routing.strategy.value}"
               f"{' (read as the redirector format)' if config.format == 'redirector' else ''}")


@main.command()
@click.argument("member")
@click.option("--reason", required=True, help="Why, for the status page and the next shift.")
@click.option("--config", "config_path", required=True, metavar="PATH")
@click.option("--by", "by", default=None, help="Who drains (default: your login name).")
@click.option("--force", is_flag=True, help="Drain even the last member taking launches.")
def drain(member: str, reason: str, config_path: str, by: str | None, force: bool) -> None:
    """Take MEMBER out of rotation on every router replica, without a redeploy."""
    config = _load(config_path)
    store = drain_store_for(config, config_path)
    drains = store.read()
    try:
        _check_drain(config, set(drains), member, force=force)
    except DrainError as e:
        _fail(e.reason)
    store.write(with_drain(drains, member, reason=reason, by=by or current_user()))
    click.echo(f"Drained {member}: routers stop sending it launches within 2 seconds.\n"
               f"Undo with: federation undrain {member} --config {config_path}")


@main.command()
@click.argument("member")
@click.option("--config", "config_path", required=True, metavar="PATH")
def undrain(member: str, config_path: str) -> None:
    """Put MEMBER back into rotation (it still has to pass its health checks)."""
    config = _load(config_path)
    store = drain_store_for(config, config_path)
    drains = store.read()
    if member not in drains:
        cfg = config.member(member)
        if cfg is not None and cfg.drain:
            _fail(f"{member} is drained in the config file itself ('drain:'); edit the config")
        _fail(f"{member} is not drained" if cfg else f"no member called {member!r}")
    store.write(without_drain(drains, member))
    click.echo(f"Undrained {member}: it takes launches again once its probes pass.")


def _check_drain(config: Config, drained: set[str], member: str, *, force: bool) -> None:
    if config.member(member) is None:
        known = ", ".join(m.name for m in config.members)
        raise DrainError(member, f"no member called {member!r}; members are: {known}")
    left = [m.name for m in config.members
            if m.weight > 0 and not m.drain and m.name not in drained | {member}]
    if not left and not force:
        prime = config.prime
        after = ("launches will be refused with 503" if prime.name == member
                 or prime.name in drained else
                 f"launches will go to the prime {prime.name} whatever its health")
        raise DrainError(member, f"{member} is the last member taking launches; after this "
                         f"{after}. Repeat with --force if that is what you want")


@main.command()
def schema() -> None:
    """Print the JSON Schema of the config format (kept in config/schema.json)."""
    from federation.config import config_json_schema

    click.echo(json.dumps(config_json_schema(), indent=2, sort_keys=True))
