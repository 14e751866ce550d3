"""Entry point: ``python -m benchmarks.run {throughput,probing,placement,instructions,all}``.

* ``throughput`` — the router as shipped (``federation serve``, default settings: metrics,
  sticky cookies, default logging) against a bare aiohttp app answering a fixed 307, on the
  same event loop, at 16 and 64 connections.
* ``probing`` — the router with 100 members probed every second against 3 members probed
  every 10 s; the difference is what probing costs the request path. ``--paired`` loads
  two routers at once (the raw ratio a lower bound, beside it the whole-core ratio by CPU
  accounting, checked by a calibration whose answer is known); ``--whole-core``
  extrapolates from two and three routers on the core to one.
* ``placement`` — microseconds per routing decision (parse + route) at 3, 5, 10, 100 members.
* ``instructions`` — user-space instructions per launch under callgrind, router vs reference:
  steady where timings on a shared machine are not (needs ``apt-get install valgrind``).

wrk drives the load when installed (``apt-get install wrk``), else a Python load generator
that is usually too slow to saturate a server (such runs are refused, not reported). Servers
run alone on the first core, the load generator on the others, where the servers not being
measured wait parked. Every figure is the median of the accepted runs. Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from operator import attrgetter
from pathlib import Path

import click

from benchmarks import harness
from benchmarks.accounting import whole_core_ratios
from benchmarks.harness import Limits, Run, Server, Summary
from benchmarks.instructions import (
    count_instructions,
    count_probing,
    instructions_table,
    missing_tools,
)
from benchmarks.members import LIFETIME, forget_launches
from benchmarks.placement import placement_table, run_placement

__all__ = ["extrapolate", "interval", "main"]

Contender = Callable[[], contextlib.AbstractContextManager[Server]]


def _counts(text: str) -> list[int]:
    """Connection counts written as ``16,64``."""
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}",
                                 param_hint="--connections") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"expected positive numbers, got {text!r}",
                                 param_hint="--connections")
    return counts


def _loadgen_name() -> str:
    if harness.WRK is None:
        return "Python load generator (benchmarks/loadgen.py; install wrk: apt-get install wrk)"
    version = subprocess.run([harness.WRK, "--version"], capture_output=True, check=False)
    return (version.stdout or version.stderr).decode().split("\n")[0].split(" Copyright")[0]


@dataclass(frozen=True)
class _Plan:
    """How to load the contenders: levels, rounds, seconds, retries and the refusal rule."""

    connections: Sequence[int]
    runs: int
    duration: float
    warmup: float
    attempts: int
    limits: Limits
    server_cores: set[int]
    load_cores: set[int]


@contextlib.contextmanager
def _federation(count: int, *, churn: bool, cores: set[int], pod_cache: float = 0.0,
                lifetime: float | None = None) -> Iterator[tuple[Path, list[str]]]:
    """A work directory, and ``count`` members that see the launches sent to them: routers
    started for them get ``tallies=_tallies(workdir)``. Members that never saw a launch
    would look idle at every probe, and the router's own count of what it sent them would
    be all their load. They count their pods at every look, or every ``pod_cache``
    seconds, and a launch runs ``lifetime`` seconds there (``benchmarks.members``)."""
    with tempfile.TemporaryDirectory(prefix="federation-bench-") as tmp:
        workdir = Path(tmp)
        with harness.members(count, churn=churn, cores=cores, seen=_tallies(workdir),
                             pod_cache=pod_cache, lifetime=lifetime) as urls:
            yield workdir, urls


def _tallies(workdir: Path) -> Path:
    """Where the load generators tally launches per member for ``_federation``'s members."""
    return workdir / "tallies"


def _sessions_ended(workdir: Path) -> Callable[[], None]:
    """What ends the sessions on ``_federation``'s members before the next pair starts:
    otherwise the launches of one pair (ten minutes of sessions with ``--session-lifetime
    600``) load the members the next pair routes to, and bounded loads spill there for the
    pair before's sake (in one run, 27 % of a 3-member baseline's launches, against 0 % for
    the same router two pairs earlier)."""
    return partial(forget_launches, _tallies(workdir))


def _load(server: Server, conns: int, round_no: int, plan: _Plan) -> list[Run]:
    """One run of ``server`` at ``conns`` connections, retried while refused."""
    runs = []
    for _ in range(plan.attempts):
        run = replace(harness.drive(server, connections=conns, duration=plan.duration,
                                    cores=plan.load_cores, server_cores=plan.server_cores,
                                    limits=plan.limits), round_no=round_no)
        runs.append(run)
        verdict = f"REFUSED: {run.refused}" if run.refused else "ok"
        click.echo(f"  round {round_no} {server.name:<30} c={conns:<3} {run.rps:7.0f} req/s "
                   f"p99 {run.p99_ms:6.2f} ms, server {run.server_cpu:4.0%} CPU "
                   f"{run.cpu_us:5.1f} µs/req, load {run.loadgen_cpu:4.0%} CPU: {verdict}",
                   err=True)
        if run.refused is None:
            break
    return runs


def _warm(server: Server, plan: _Plan) -> None:
    harness.drive(server, connections=max(plan.connections), duration=plan.warmup,
                  cores=plan.load_cores, server_cores=plan.server_cores, limits=plan.limits)


@dataclass(frozen=True)
class _Standing:
    """What a server showed over a whole benchmark, read once its runs are done."""

    rss_mib: float
    idle_share: float  # of a core, while parked without load (``Server.idle_share``)
    spilled: float  # share of its launches sent below their home member (NaN: reference)


def _measure(contenders: Sequence[Contender], plan: _Plan
             ) -> tuple[list[Run], dict[str, _Standing]]:
    """Load every contender at every level, round after round; the runs, and each
    contender's standing at the end, by name.

    All contenders run side by side for the whole benchmark, so none is measured in its
    first seconds, and each round pairs runs made seconds apart. The one being loaded has
    the server core to itself; the others wait parked on the load cores, where their
    background work (probing 100 members) cannot tax it. Rounds alternate the order, first
    to last then last to first, so a machine that drifts during a round weighs on every
    contender alike.
    """
    results: list[Run] = []
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(start()) for start in contenders]
        for server in servers:
            server.park(plan.load_cores)
        for server in servers:
            with _on_server_core(server, plan):
                _warm(server, plan)
        for round_no in range(1, plan.runs + 1):
            order = servers if round_no % 2 else servers[::-1]
            for conns in plan.connections:
                for server in order:
                    with _on_server_core(server, plan):
                        results += _load(server, conns, round_no, plan)
        standing = {s.name: _Standing(s.rss_mib(), s.idle_share, s.spill_share())
                    for s in servers}
    return results, standing


@contextlib.contextmanager
def _on_server_core(server: Server, plan: _Plan) -> Iterator[None]:
    """``server`` on the server core for a while, then parked on the load cores again."""
    server.unpark(plan.server_cores)
    try:
        yield
    finally:
        server.park(plan.load_cores)


def _ratios(s: Summary, b: Summary, attribute: str) -> list[float]:
    """Per round, ``s``'s figure divided by the baseline's in the same round."""
    return harness.same_round_ratios(s.runs, b.runs, attrgetter(attribute))


def _paired(s: Summary, b: Summary, attribute: str) -> float:
    """Median over rounds of ``s``'s figure divided by the baseline's in the same round."""
    return _median(_ratios(s, b, attribute))


def _median(values: Sequence[float]) -> float:
    """The median, or NaN (printed "n/a") when no round counted."""
    return statistics.median(values) if values else math.nan


def interval(values: Sequence[float], *, level: float = 0.9, draws: int = 2000,
             seed: int = 0) -> tuple[float, float]:
    """Where ``level`` of the medians of resamples of ``values`` fall (a bootstrap interval
    of the median; NaNs when there are none).

    Rounds on a shared machine spread by up to ±20 %, so a median alone hides how far it can
    be trusted. The interval covers the rounds' spread only: a shift of the whole machine
    during a run moves it too. A fixed seed gives the same interval for the same rounds.
    """
    if not values:
        return math.nan, math.nan
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(draws))
    tail = int(draws * (1 - level) / 2)
    return medians[tail], medians[-1 - tail]


def _spread(ratios: Sequence[float]) -> str:
    """The median's 90 % interval, then the rounds' range: "0.88–0.97 (0.65–1.26)"."""
    if not ratios:
        return "n/a"
    low, high = interval(ratios)
    return f"{low:.2f}–{high:.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def _percent(share: float) -> str:
    return "n/a" if math.isnan(share) else f"{100 * share:.1f} %"


def _table(summaries: Sequence[Summary], baseline: str,
           standing: Mapping[str, _Standing]) -> str:
    lines = ["| connections | server | req/s | p50 ms | p99 ms | errors | server CPU µs/req "
             "| idle CPU % of a core | launches spilled | RSS after load MiB | runs counted "
             "| req/s ÷ baseline | its 90 % interval (rounds) | p99 ÷ baseline |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    base = {s.connections: s for s in summaries if s.server == baseline}
    for s in sorted(summaries, key=lambda s: s.connections):
        b = base.get(s.connections)
        ratio = p99 = float("nan")
        spread = "n/a"
        if b is not None and s is not b:
            ratio, p99 = _paired(s, b, "rps"), _paired(s, b, "p99_ms")
            spread = _spread(_ratios(s, b, "rps"))
        errors = sum(r.errors for r in s.accepted)
        end = standing[s.server]
        lines.append(f"| {s.connections} | {s.server} | {_fmt(s.median('rps'), ',.0f')} | "
                     f"{_fmt(s.median('p50_ms'), '.2f')} | {_fmt(s.median('p99_ms'), '.2f')} | "
                     f"{errors} | {_fmt(s.median('cpu_us'), '.1f')} | "
                     f"{_fmt(100 * end.idle_share, '.2f')} | {_percent(end.spilled)} | "
                     f"{_fmt(end.rss_mib, '.1f')} | "
                     f"{len(s.accepted)}/{len(s.runs)} | "
                     f"{_fmt(ratio, '.2f')} | {spread} | {_fmt(p99, '.2f')} |")
    return "\n".join(lines)


def _report(title: str, contenders: Sequence[Contender], baseline: str, *,
            connections: Sequence[int], runs: int, duration: float, warmup: float,
            attempts: int, limits: Limits, loop: str, save: Path | None) -> None:
    server_cores, load_cores = harness.pinning()
    click.echo(f"{title}: {runs} runs of {duration:g} s per cell, loop {loop}, load by "
               f"{_loadgen_name()}; servers on cores {sorted(server_cores)}, load on "
               f"{sorted(load_cores)}", err=True)
    plan = _Plan(connections, runs, duration, warmup, attempts, limits, server_cores,
                 load_cores)
    results, standing = _measure(contenders, plan)
    summaries = harness.summarise(results)
    click.echo(f"\n{title} (event loop: {loop}; medians of accepted runs; ratios: median over "
               f"rounds of same-round pairs, with a 90 % bootstrap interval; idle CPU: while "
               f"parked, without load, and spilled launches: over the whole run; RSS: after "
               f"the last run)\n")
    click.echo(_table(summaries, baseline, standing))
    refused = [r for r in results if r.refused]
    if refused:
        click.echo(f"\n{len(refused)} run(s) refused: "
                   + "; ".join(sorted({f'{r.server} c={r.connections}: {r.refused}'
                                       for r in refused})))
    if save is not None:
        save.write_text(json.dumps({"title": title, "loop": loop,
                                    "runs": [asdict(r) for r in results],
                                    "standing": {n: asdict(e) for n, e in standing.items()}},
                                   indent=1))
    if any(not s.accepted for s in summaries):
        sys.exit(2)  # a cell without one accepted run has no figure to report


_RUN_OPTIONS = [
    click.option("--runs", type=click.IntRange(1, 50), default=3, show_default=True,
                 help="Rounds; every figure is a median over them."),
    click.option("--duration", type=click.FloatRange(1, 600), default=10, show_default=True,
                 help="Seconds per run."),
    click.option("--warmup", type=click.FloatRange(0.5, 60), default=3, show_default=True,
                 help="Seconds of load before measuring each started server."),
    click.option("--attempts", type=click.IntRange(1, 10), default=4, show_default=True,
                 help="Tries per run before giving up on a refused one."),
    click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]),
                 default="auto", show_default=True,
                 help="Event loop of every server (auto: uvloop when installed)."),
    click.option("--loadgen-max", type=float, default=Limits.loadgen_max, show_default=True,
                 help="Refuse runs where the load generator used more of its core."),
    click.option("--server-min", type=float, default=Limits.server_min, show_default=True,
                 help="Refuse runs where the server used less of its core."),
    click.option("--save", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Also write every run as JSON here."),
]


def _run_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_RUN_OPTIONS):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of the federation router (loopback only)."""


_PAIRED_HELP = ("Run two servers at once, each loaded by its own load generator, pair by "
                "pair: far steadier ratios on a shared machine (see README).")


@main.command()
@click.option("--connections", default="16,64", show_default=True,
              help="Connection counts, comma separated.")
@click.option("--members", "member_count", type=click.IntRange(1, 1000), default=3,
              show_default=True)
@click.option("--paired", is_flag=True, help=_PAIRED_HELP)
@_run_options
def throughput(connections: str, member_count: int, paired: bool, runs: int,
               duration: float, warmup: float, attempts: int, loop_kind: str,
               loadgen_max: float, server_min: float, save: Path | None) -> None:
    """The router as shipped against a bare aiohttp app answering a fixed 307."""
    loop = harness.choose_loop(loop_kind)
    server_cores, load_cores = harness.pinning()
    with _federation(member_count, churn=False, cores=load_cores) as (workdir, urls):
        reference = partial(harness.reference, workdir, loop=loop, cores=server_cores)
        contenders: list[Contender] = [
            reference,
            lambda: harness.router("router", workdir, urls, interval=10, loop=loop,
                                   cores=server_cores, tallies=_tallies(workdir)),
        ]
        title = "Launch redirects: router vs reference"
        limits = Limits(loadgen_max, server_min)
        if paired:
            plan = _Plan(_counts(connections), runs, duration, warmup, attempts, limits,
                         server_cores, load_cores)
            again = partial(reference, name="reference, again")
            _report_pairs(title, [(reference, again), (reference, contenders[1])], plan,
                          loop=loop, save=save, expected={0: "1.000"},
                          before_pair=_sessions_ended(workdir))
            return
        _report(title, contenders, "reference", connections=_counts(connections), runs=runs,
                duration=duration, warmup=warmup, attempts=attempts, limits=limits, loop=loop,
                save=save)


_MANY = 100  # members of the routers probing cost is measured for
_SMALL = "3 members probed every 10 s"  # the router they are compared with


@main.command()
@click.option("--connections", default="64", show_default=True,
              help="Connection counts, comma separated.")
@click.option("--churn/--no-churn", default=True, show_default=True,
              help="Members' pods change all the time, as on busy production members.")
@click.option("--pod-cache", type=click.FloatRange(min=0), default=0.0, show_default=True,
              metavar="SECONDS",
              help="Members count their pods at most this often (BinderHub: 60). 0, at every "
                   "probe, rebuilds the routing table at nearly every probe of a busy member: "
                   "the worst case for probing (see README).")
@click.option("--session-lifetime", type=click.FloatRange(min=1), default=LIFETIME,
              show_default=True, metavar="SECONDS",
              help="Seconds a member reports a launch sent to it as a running session; "
                   "give --pod-cache 60 sessions of minutes, as on mybinder.org.")
@click.option("--paired", is_flag=True, help=_PAIRED_HELP)
@click.option("--whole-core", is_flag=True,
              help="Estimate the ratios on a whole core: run each comparison with two "
                   "servers sharing the core, then three, and extrapolate to one (calibrated "
                   "against a reference with a known background cost; see README).")
@click.option("--load-factor", type=click.FloatRange(1, 10), default=None,
              help="routing.load_factor of every router (default: the router's own). "
                   "10 lets no launch spill over, taking spill-overs' cost out of the "
                   "comparison (see README).")
@_run_options
def probing(connections: str, churn: bool, pod_cache: float, session_lifetime: float,
            paired: bool, whole_core: bool,
            load_factor: float | None, runs: int, duration: float, warmup: float,
            attempts: int, loop_kind: str, loadgen_max: float, server_min: float,
            save: Path | None) -> None:
    """Router throughput with 100 members probed every second vs 3 members every 10 s.

    A third router, 100 members probed every 10 s, separates what the member count costs
    each launch from what probing costs.
    """
    if paired and whole_core:
        raise click.UsageError("choose one of --paired and --whole-core")
    loop = harness.choose_loop(loop_kind)
    server_cores, load_cores = harness.pinning()
    # The 3-member routers get members of their own: launches they send must not load three
    # of the hundred the other routers route to.
    with _federation(_MANY + 3, churn=churn, cores=load_cores, pod_cache=pod_cache,
                     lifetime=session_lifetime) as (workdir, urls):
        many, few = urls[:_MANY], urls[_MANY:]

        def probed(name: str, members: Sequence[str], interval: float) -> Contender:
            return partial(harness.router, name, workdir, members, interval=interval, loop=loop,
                           cores=server_cores, load_factor=load_factor,
                           tallies=_tallies(workdir))

        def small(name: str) -> Contender:
            return probed(name, few, 10.0)

        # The middle row tells the cost of 100 members apart from the cost of probing them.
        contenders = [small(_SMALL), probed(f"{_MANY} members probed every 10 s", many, 10.0),
                      probed(f"{_MANY} members probed every 1 s", many, 1.0)]
        title = (f"Probing overhead (member pods {'changing' if churn else 'steady'}, "
                 f"counted every {pod_cache:g} s, sessions of {session_lifetime:g} s")
        title += f", load_factor {load_factor:g})" if load_factor is not None else ")"
        limits = Limits(loadgen_max, server_min)
        if whole_core:
            plan = _Plan(_counts(connections), runs, duration, warmup, attempts, limits,
                         server_cores, load_cores)
            _report_whole_core(title, _whole_core_comparisons(workdir, contenders, small,
                                                              loop, server_cores),
                               plan, loop=loop, save=save, before=_sessions_ended(workdir))
            return
        if paired:
            plan = _Plan(_counts(connections), runs, duration, warmup, attempts, limits,
                         server_cores, load_cores)
            first, middle, last = contenders
            # The control: two identical routers, so the method's own bias and spread show
            # in the same run as the comparisons.
            _report_pairs(title, [_calibration(workdir, loop, server_cores),
                                  (first, small(f"{_SMALL}, again")),
                                  (first, middle), (middle, last), (first, last)], plan,
                          loop=loop, save=save, expected={0: _KNOWN_CALIBRATION, 1: "1.000"},
                          before_pair=_sessions_ended(workdir))
            return
        _report(title, contenders, _SMALL, connections=_counts(connections), runs=runs,
                duration=duration, warmup=warmup, attempts=attempts, limits=limits,
                loop=loop, save=save)


@dataclass(frozen=True)
class _Extrapolation:
    """A comparison for ``--whole-core``: the baseline, the compared server, and a third
    that joins them on the core (like the baseline, so it adds no background work)."""

    baseline: Contender
    compared: Contender
    third: Contender
    expected: str  # the whole-core ratio known beforehand, or "" when it is what is sought


def extrapolate(two: Sequence[Run], three: Sequence[Run]) -> tuple[float, float, float] | None:
    """One round of ``--whole-core``: (ratio with two servers on the core, with three, on a
    whole core), or None if a run was refused.

    ``two`` is (baseline, compared); ``three`` is (baseline, compared, third), and the
    compared server is measured against the mean of the other two there. The whole-core
    ratio is where the line through the first two meets one server: 2·ratio(2) − ratio(3).
    """
    if any(r.refused for r in (*two, *three)):
        return None
    with_two = two[1].rps / two[0].rps
    with_three = three[1].rps / statistics.mean((three[0].rps, three[2].rps))
    return with_two, with_three, 2 * with_two - with_three


def _report_whole_core(title: str, comparisons: Sequence[_Extrapolation], plan: _Plan, *,
                       loop: str, save: Path | None, before: Callable[[], None]) -> None:
    """Each comparison with two servers sharing the core, then three, round after round,
    and the whole-core ratio extrapolated from the two.

    Work a server does whatever the load (probing) costs it the same CPU however many
    servers share the core, so it takes k times the share of its throughput with k servers
    on the core as with the core to itself: per round, ratio(k) = 1/P − k·B/P, for a cost
    per launch P and background B. Two servers, then three, give the line, and its value
    at one server is 2·ratio(2) − ratio(3). The calibration row checks the method where
    the answer is known: a reference spending a set share of a core on busy work.
    ``before`` runs before each comparison starts (``_sessions_ended``).
    """
    conns = max(plan.connections)
    click.echo(f"{title}, whole core: {plan.runs} rounds of {plan.duration:g} s with two "
               f"servers on the core, then three, {_half(conns)} connections each, loop "
               f"{loop}, load by {_loadgen_name()}", err=True)
    lines = ["| baseline | compared | known beforehand | rounds counted | 2 on the core | "
             "3 on the core | whole core (2 × col. 5 − col. 6) | its 90 % interval (rounds) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    saved: list[dict[str, object]] = []
    missing = False
    for c in comparisons:
        before()
        with c.baseline() as base, c.compared() as other, c.third() as third:
            harness.drive_together((base, other, third), connections=_half(conns),
                                   duration=plan.warmup, cores=plan.load_cores,
                                   server_cores=plan.server_cores, limits=plan.limits)
            two_on, three_on, whole = [], [], []
            for n in range(1, plan.runs + 1):
                two = _load_together((base, other), conns, n, plan)[-2:]
                three = _load_together((base, other, third), conns, n, plan)[-3:]
                saved.append({"baseline": base.name, "compared": other.name, "round": n,
                              "two": [asdict(r) for r in two],
                              "three": [asdict(r) for r in three]})
                ratios = extrapolate(two, three)
                if ratios is not None:
                    two_on.append(ratios[0])
                    three_on.append(ratios[1])
                    whole.append(ratios[2])
        missing |= not whole
        lines.append(f"| {base.name} | {other.name} | {c.expected or '?'} | "
                     f"{len(whole)}/{plan.runs} | {_fmt(_median(two_on), '.3f')} | "
                     f"{_fmt(_median(three_on), '.3f')} | **{_fmt(_median(whole), '.3f')}** | "
                     f"{_spread(whole)} |")
    _publish(f"{title}, whole core (event loop: {loop}; req/s of the compared server over "
             f"the baseline's, median over rounds; with three servers, over the mean of the "
             f"baseline and the third)", lines,
             "With k servers sharing the core, work done whatever the load takes k times the "
             "share of a server's throughput that it takes of a whole core, so the ratio falls "
             "in a line with k; the whole-core column extends the line to one server, round by "
             "round. The first row calibrates the method (its answer is known), the second is "
             "a control of identical routers (answer 1).",
             save, {"title": title, "loop": loop, "whole_core": True, "rounds": saved},
             missing=missing)


CALIBRATION_SHARE = 0.03  # of a core: the known background cost ``--whole-core`` must find


def _calibration(workdir: Path, loop: str, cores: set[int]) -> tuple[Contender, Contender]:
    """A reference, and one spending ``CALIBRATION_SHARE`` of a core on busy work besides:
    a pair whose whole-core ratio is known (``1 - CALIBRATION_SHARE``)."""
    busy = f"reference spending {CALIBRATION_SHARE:.0%} of a core on busy work"
    return (partial(harness.reference, workdir, loop=loop, cores=cores, name="reference"),
            partial(harness.reference, workdir, loop=loop, cores=cores, name=busy,
                    background=CALIBRATION_SHARE))


_KNOWN_CALIBRATION = f"{1 - CALIBRATION_SHARE:.3f}"


def _whole_core_comparisons(workdir: Path, contenders: Sequence[Contender],
                            small: Callable[[str], Contender], loop: str, cores: set[int]
                            ) -> list[_Extrapolation]:
    """The calibration, the control, and the issue's comparison (3 members probed every 10 s
    against 100 probed every second), each with a third server like its baseline (``small``
    makes a 3-member router of that name)."""
    first, _, last = contenders
    reference, busy = _calibration(workdir, loop, cores)
    return [
        _Extrapolation(reference, busy, partial(reference, name="reference, third"),
                       _KNOWN_CALIBRATION),
        _Extrapolation(first, small(f"{_SMALL}, again"), small(f"{_SMALL}, third"), "1.000"),
        _Extrapolation(first, last, small(f"{_SMALL}, third"), ""),
    ]


_IDLE_SECONDS = 15.0  # per pair, without load: CPU counted in 10 ms ticks reads 2.5 % to ±0.07 %


def _half(conns: int) -> int:
    """Connections for each router of a pair: the level's, split between the two."""
    return max(1, conns // 2)


def _load_together(servers: Sequence[Server], conns: int, round_no: int, plan: _Plan
                   ) -> list[Run]:
    """One run of all ``servers`` at once, each with half of ``conns`` connections (as in a
    pair, whatever their number), retried while any is refused."""
    runs: list[Run] = []
    for _ in range(plan.attempts):
        together = [replace(r, round_no=round_no) for r in harness.drive_together(
            servers, connections=_half(conns), duration=plan.duration,
            cores=plan.load_cores, server_cores=plan.server_cores, limits=plan.limits)]
        runs += together
        base = together[0]
        verdict = "; ".join(f"REFUSED {r.server}: {r.refused}" for r in together if r.refused)
        others = ", ".join(
            f"{r.server}: {r.rps:7.0f} req/s "
            f"({_fmt(r.rps / base.rps if base.rps else math.nan, '.3f')})"
            for r in together[1:])
        click.echo(f"  round {round_no} c={conns:<3} {base.server}: {base.rps:7.0f} req/s, "
                   f"{others}, load {base.loadgen_cpu:4.0%} CPU: {verdict or 'ok'}", err=True)
        if not verdict:
            break
    return runs


def _publish(heading: str, lines: Sequence[str], note: str, save: Path | None,
             record: dict[str, object], *, missing: bool) -> None:
    """Print a comparison's table under ``heading`` with its ``note``, save ``record`` if
    asked, and exit 2 when a row had no accepted round (it has no figure to report)."""
    click.echo(f"\n{heading}\n")
    click.echo("\n".join(lines))
    click.echo(f"\n{note}")
    if save is not None:
        save.write_text(json.dumps(record, indent=1))
    if missing:
        sys.exit(2)


def _report_pairs(title: str, pairs: Sequence[tuple[Contender, Contender]], plan: _Plan, *,
                  loop: str, save: Path | None, expected: Mapping[int, str] | None = None,
                  before_pair: Callable[[], None]) -> None:
    """Each pair side by side on the server core, loaded at the same moment, round after
    round; the table gives the second's figures over the first's, as they are and on a
    whole core by CPU accounting (``benchmarks.accounting``). ``expected``: the
    whole-core ratio known beforehand, by the pair's index (calibration, control);
    ``before_pair`` runs before each pair starts (``_sessions_ended``)."""
    click.echo(f"{title}, paired: {plan.runs} runs of {plan.duration:g} s per pair and "
               f"level, loop {loop}, load by {_loadgen_name()}", err=True)
    lines = ["| connections | baseline | compared | rounds counted | req/s ÷ baseline | "
             "its 90 % interval (rounds) | CPU µs/req ÷ baseline | idle CPU % of a core: "
             "baseline, compared | **whole core, by CPU accounting** | its 90 % interval "
             "(rounds) | known | spilled: baseline, compared |",
             "|---:|---|---|---:|---:|---|---:|---|---:|---|---:|---|"]
    results: list[Run] = []
    idle: dict[str, float] = {}
    missing = False
    for index, (start_base, start_other) in enumerate(pairs):
        before_pair()
        with start_base() as base, start_other() as other:
            servers = (base, other)
            harness.drive_together(servers, connections=_half(max(plan.connections)),
                                   duration=plan.warmup, cores=plan.load_cores,
                                   server_cores=plan.server_cores, limits=plan.limits)
            base_idle, other_idle = harness.background(servers, _IDLE_SECONDS)
            idle |= {base.name: base_idle, other.name: other_idle}
            for conns in plan.connections:
                runs = [r for n in range(1, plan.runs + 1)
                        for r in _load_together(servers, conns, n, plan)]
                results += runs
                b, o = harness.summarise(runs)
                ratios = _ratios(o, b, "rps")
                whole = whole_core_ratios(o.runs, b.runs, compared_background=other_idle,
                                          baseline_background=base_idle)
                missing |= not ratios
                spilled = ", ".join(_percent(s.spill_share()) for s in servers)
                lines.append(f"| {conns} | {base.name} | {other.name} | "
                             f"{len(ratios)}/{plan.runs} | "
                             f"{_fmt(_paired(o, b, 'rps'), '.3f')} | {_spread(ratios)} | "
                             f"{_fmt(_paired(o, b, 'cpu_us'), '.3f')} | "
                             f"{100 * base_idle:.2f}, {100 * other_idle:.2f} | "
                             f"**{_fmt(_median(whole), '.3f')}** | {_spread(whole)} | "
                             f"{(expected or {}).get(index, '')} | {spilled} |")
    _publish(f"{title}, paired (event loop: {loop}; two servers at once on the server core, "
             f"each with a load generator and half the connections; ratios: median over "
             f"rounds)", lines,
             "Each server has half the core here, so work a router does whatever the load "
             "(probing) takes twice the share of its throughput it takes of a whole core; costs "
             "per launch show as they are. \"Whole core, by CPU accounting\" takes the two "
             f"apart: each server's idle CPU ({_IDLE_SECONDS:g} s without load, after the "
             "warm-up) is its background work, the rest of its CPU in a round is its launches' "
             "work, and alone on a whole core the core less the background would go to "
             "launches. Where a pair's whole-core ratio is known, its distance from the known "
             "value is how far the method can be off; a pair of identical servers is a "
             "control. \"Spilled\" is the share of each router's launches (warm-up "
             "included) sent below their home member: the members see the launches sent to "
             "them, and a member at its bound sends the next below (n/a: the reference "
             "routes nothing).",
             save, {"title": title, "loop": loop, "paired": True, "idle": idle,
                    "runs": [asdict(r) for r in results]}, missing=missing)


@main.command()
@click.option("--decisions", type=click.IntRange(1000, 10_000_000), default=50_000,
              show_default=True, help="Decisions timed per size and case.")
def placement(decisions: int) -> None:
    """Microseconds per routing decision (parse_launch + RoutingTable.route)."""
    server_cores, _ = harness.pinning()
    with harness.pinned(server_cores):  # time decisions on a core of their own
        results = run_placement(decisions=decisions)
        yardstick = min(timeit.repeat("sum(range(100))", number=20_000, repeat=5)) / 20_000 * 1e6
    click.echo("\nRouting decisions (parse_launch + RoutingTable.route, bounded loads; cached: "
               "repositories from the pool, cold: a new repository every call)\n")
    click.echo(placement_table(results))
    click.echo(f"\nYardstick for comparing machines: sum(range(100)) takes {yardstick:.2f} µs "
               "here.")


@main.command()
@click.option("--duration", type=click.FloatRange(2, 600), default=10, show_default=True,
              help="Seconds counted per server (launches), and of probing.")
@click.option("--warmup", type=click.FloatRange(1, 60), default=5, show_default=True,
              help="Seconds of uncounted load first.")
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]),
              default="auto", show_default=True)
def instructions(duration: float, warmup: float, loop_kind: str) -> None:
    """Instructions per launch under callgrind, router vs reference (needs valgrind)."""
    missing = missing_tools()
    if missing:
        raise click.ClickException(f"{', '.join(missing)} not found: install Debian's "
                                   "valgrind package (apt-get install valgrind)")
    loop = harness.choose_loop(loop_kind)
    server_cores, load_cores = harness.pinning()
    with tempfile.TemporaryDirectory(prefix="federation-bench-") as tmp:
        counts = count_instructions(Path(tmp), loop=loop, duration=duration, warmup=warmup,
                                    server_cores=server_cores, load_cores=load_cores)
        probing = count_probing(Path(tmp), loop=loop, duration=duration, warmup=warmup,
                                server_cores=server_cores, load_cores=load_cores)
    click.echo(f"\nUser-space instructions per launch (callgrind, one connection, loop {loop}) "
               "and per probe round (100 members with changing pod counts, every second, no "
               "launches)\n")
    click.echo(instructions_table(counts, probing))


@main.command()
@click.option("--minutes", type=click.FloatRange(1, 120), default=6, show_default=True,
              help="Minutes of load.")
@click.option("--members", "member_count", type=click.IntRange(1, 1000), default=100,
              show_default=True)
@click.option("--interval", type=click.FloatRange(1, 60), default=1, show_default=True,
              help="Seconds between probes of each member.")
@click.option("--connections", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--loop", "loop_kind", type=click.Choice(["auto", "asyncio", "uvloop"]),
              default="auto", show_default=True)
def memory(minutes: float, member_count: int, interval: float, connections: int,
           loop_kind: str) -> None:
    """The router's resident memory under minutes of load: what it holds once every cache
    has filled, which the other commands' seconds of load do not reach."""
    loop = harness.choose_loop(loop_kind)
    server_cores, load_cores = harness.pinning()
    runs = max(1, round(minutes * 60 / _MEMORY_RUN))
    with _federation(member_count, churn=True, cores=load_cores) as (workdir, urls), \
            harness.router("router", workdir, urls, interval=interval, loop=loop,
                           cores=server_cores, tallies=_tallies(workdir)) as server:
        click.echo(f"Memory: {member_count} members probed every {interval:g} s, "
                   f"{connections} connections, {runs} runs of {_MEMORY_RUN:g} s, loop {loop}; "
                   f"RSS at start {server.rss_mib():.1f} MiB", err=True)
        rss: list[float] = []
        for n in range(1, runs + 1):
            done = harness.launches(server, connections=connections, duration=_MEMORY_RUN,
                                    cores=load_cores)
            rss.append(server.rss_mib())
            click.echo(f"  after {n * _MEMORY_RUN:5.0f} s: RSS {rss[-1]:.1f} MiB "
                       f"({done['requests'] / _MEMORY_RUN:,.0f} req/s)", err=True)
        spill = server.spill_share()
    half = rss[max(0, len(rss) // 2 - 1)]  # after half the runs
    click.echo(f"\nResident memory under load ({member_count} members probed every "
               f"{interval:g} s, pod counts changing; {_percent(spill)} of launches "
               f"spilled)\n")
    click.echo("| after first run MiB | at half time MiB | at the end MiB | largest MiB |\n"
               "|---:|---:|---:|---:|\n"
               f"| {rss[0]:.1f} | {half:.1f} | {rss[-1]:.1f} | {max(rss):.1f} |")
    click.echo(f"\nGrowth over the second half: {rss[-1] - half:+.1f} MiB (a router that "
               "still grows there holds something unbounded, or its caches are not full yet).")


_MEMORY_RUN = 10.0  # seconds per load run between two readings


@main.command(name="all")
@click.pass_context
def run_all(ctx: click.Context) -> None:
    """placement, throughput and probing with their defaults."""
    for command in (placement, throughput, probing):
        with contextlib.suppress(SystemExit):  # a refused cell must not hide the others
            ctx.invoke(command)


if __name__ == "__main__":
    main()
