"""What-if placement: replay a launch trace through the router's own placement code.

Placement changes are hard to judge from a running federation: a hot repository, a drained
member or a new weight shows its effect over hours, in cold builds and full members. This
module replays a trace on a virtual clock instead and counts what each strategy would do.
Nothing here re-implements placement: every launch is decided by ``RoutingTable.route`` on a
table from ``build_table``, exactly as the serving path does, and the load signal is the
router's own: each member's pods as its last probe reported them, plus the launches sent to it
that those pods are not sure to include (``SentLaunches``, ``RoutingTable.route(sent=)``).
Probes run every ``probe_interval`` virtual seconds, and members answer them as BinderHub does,
from a pod count taken at most every ``pod_cache`` seconds (``POD_COUNT_CACHE``).

As in hashing.md §2.4, a member's load is its running sessions (each starts at its launch and
runs for the trace's lifetime), and a launch "builds" when its repository was never launched
on that member before (an unbounded image cache); otherwise it is a cache hit. Traces come
from ``federation.traces``.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from msgspec.structs import replace

from federation.config import Config, Member, Strategy
from federation.errors import ConfigError
from federation.health import HealthReport, MemberHealth, PodQuota, State
from federation.table import (
    POD_COUNT_CACHE,
    RoutingTable,
    SentLaunches,
    build_table,
    pod_count_max_age,
)
from federation.traces import Launch, Trace

__all__ = [
    "STRATEGIES",
    "MemberResult",
    "Moves",
    "Report",
    "StrategyResult",
    "WhatIf",
    "derive_quotas",
    "home_members",
    "home_moves",
    "render_svg",
    "render_text",
    "replay",
    "run",
]

_PROGRESS_STEP = 1000
STRATEGIES = (Strategy.RANDOM, Strategy.RENDEZVOUS, Strategy.BOUNDED)  # the order shown


def derive_quotas(baseline: Config, target: Config, *, concurrency: float, utilisation: float,
                  given: Mapping[str, int]) -> dict[str, int]:
    """Pod quotas for ``target``'s members: ``given`` ones, else shared out by weight.

    hashing.md §2.4's assumption: the baseline federation holds ``concurrency`` sessions at
    ``utilisation``, quota_i = concurrency · w_i/W / utilisation. A weight what-if changes
    routing, not hardware, so members keep their baseline quota; added ones get the same
    pods per unit of weight.
    """
    unknown = sorted(set(given) - {m.name for m in target.members})
    if unknown:
        raise ConfigError("a quota for a member the federation does not have",
                          source=target.source, member=unknown[0])
    base = {m.name: m.weight for m in baseline.members}
    per_weight = concurrency / max(sum(base.values()), 1e-9) / utilisation
    return {m.name: given.get(m.name, round(base.get(m.name, m.weight) * per_weight))
            for m in target.members}


@dataclass(frozen=True, slots=True)
class WhatIf:
    """Changes to try on a federation: drain members, change weights, add members."""

    drain: tuple[str, ...] = ()
    weights: tuple[tuple[str, float], ...] = ()
    add: tuple[tuple[str, float], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.drain or self.weights or self.add)

    def __str__(self) -> str:
        parts = [f"drain {n}" for n in self.drain]
        parts += [f"weight {n}={w:g}" for n, w in self.weights]
        parts += [f"add {n}={w:g}" for n, w in self.add]
        return "; ".join(parts)

    def apply(self, config: Config) -> Config:
        """``config`` with the changes made; unknown or duplicate names are a ConfigError."""
        known = {m.name for m in config.members}
        for name in (*self.drain, *(n for n, _ in self.weights)):
            if name not in known:
                raise ConfigError("no such member to change", source=config.source, member=name)
        weights = dict(self.weights)
        members = [
            replace(m, weight=weights.get(m.name, m.weight),
                    drain="what-if drain (federation simulate)" if m.name in self.drain
                    else m.drain)
            for m in config.members
        ]
        for name, weight in self.add:
            if name in known:
                raise ConfigError("a member of that name exists already", source=config.source,
                                  member=name)
            known.add(name)
            try:
                members.append(Member(name=name, url=f"https://{name}.simulated.invalid",
                                      weight=weight))
            except ValueError:  # Member checks its name as it is made
                raise ConfigError("member names are 1-63 letters, digits, '.', '_' or '-'",
                                  source=config.source, member=name) from None
        return replace(config, members=tuple(members))


def _healths(config: Config, quotas: Mapping[str, int], loads: Mapping[str, int], *,
             report_quota: bool) -> dict[str, MemberHealth]:
    """Every member healthy, reporting ``loads`` as its pods (and its quota, if it does)."""
    return {m.name: _health(loads.get(m.name, 0), quotas.get(m.name) if report_quota else None)
            for m in config.members}


@functools.lru_cache(maxsize=65536)
def _health(pods: int, quota: int | None) -> MemberHealth:
    """One probe's verdict; cached, since a replay asks for the same few thousand again."""
    report = HealthReport(ok=True, checks=(), pod_quota=PodQuota(pods, pods, 0, quota))
    return MemberHealth(state=State.HEALTHY, reason="", probes=1, report=report)


def home_members(config: Config, quotas: Mapping[str, int], keys: Iterable[str], *,
                 report_quota: bool = True) -> dict[str, str | None]:
    """Each key's home: the member an idle, healthy federation ranks first (as ``route``)."""
    table = build_table(config, _healths(config, quotas, {}, report_quota=report_quota), {},
                        now=0.0)
    return {key: next(iter(table.ranking(key)), None) for key in keys}


@dataclass(frozen=True, slots=True)
class Moves:
    """How many repositories and launches change home member under a what-if."""

    repositories: int
    repositories_moved: int
    launches: int
    launches_moved: int
    gained: tuple[tuple[str, int], ...]  # member → repositories it becomes home of
    lost: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "gained": dict(self.gained), "lost": dict(self.lost)}


def home_moves(before: Mapping[str, str | None], after: Mapping[str, str | None],
               counts: Mapping[str, int]) -> Moves:
    """Compare two home assignments of the same keys, weighting launches by ``counts``."""
    moved = [key for key in counts if before.get(key) != after.get(key)]
    gained = Counter(str(after[k]) for k in moved if after.get(k) is not None)
    lost = Counter(str(before[k]) for k in moved if before.get(k) is not None)
    return Moves(len(counts), len(moved), sum(counts.values()), sum(counts[k] for k in moved),
                 tuple(sorted(gained.items())), tuple(sorted(lost.items())))


@dataclass(frozen=True, slots=True)
class MemberResult:
    """One member's share of a replay."""

    name: str
    weight: float
    quota: int
    launches: int
    builds: int
    peak_load: int
    spill_overs: int  # launches it took for repositories whose home is another member

    @property
    def hit_rate(self) -> float:
        """Share of its launches that found the image already there."""
        return 1 - self.builds / self.launches if self.launches else 0.0

    @property
    def peak_load_over_quota(self) -> float:
        """Most sessions it ever ran, against its quota (a quota of 0 counts as 1)."""
        return self.peak_load / max(self.quota, 1)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, with the derived rates."""
        return {**asdict(self), "hit_rate": round(self.hit_rate, 5),
                "peak_load_over_quota": round(self.peak_load_over_quota, 4)}


@dataclass(frozen=True, slots=True)
class StrategyResult:
    """What one strategy did with a whole trace."""

    strategy: str
    launches: int
    home: int  # launches placed on their repository's home member
    fallbacks: int  # launches no member had room for (placed by the fallback rule)
    refused: int  # launches no member could take (the router answers 503)
    over_quota: int  # launches placed on a member already at or above its quota
    members: tuple[MemberResult, ...]
    samples: tuple[tuple[float, tuple[int, ...]], ...]  # (time, load of each member)

    @property
    def builds(self) -> int:
        """Launches that built their image (first launch of the repository on that member)."""
        return sum(m.builds for m in self.members)

    @property
    def spill_overs(self) -> int:
        """Launches placed away from their repository's home member."""
        return sum(m.spill_overs for m in self.members)

    @property
    def hit_rate(self) -> float:
        """Share of all launches that found their image on the member they went to."""
        placed = self.launches - self.refused
        return (placed - self.builds) / self.launches if self.launches else 0.0

    @property
    def peak_load_over_quota(self) -> float:
        """The worst member's peak load against its quota."""
        return max((m.peak_load_over_quota for m in self.members), default=0.0)

    def to_json(self, *, best_hit_rate: float, moves: Moves | None = None) -> dict[str, Any]:
        """One JSON object for ``federation simulate --json``."""
        out: dict[str, Any] = {
            "strategy": self.strategy, "launches": self.launches, "builds": self.builds,
            "hit_rate": round(self.hit_rate, 5), "best_hit_rate": round(best_hit_rate, 5),
            "home_rate": round(self.home / self.launches, 5) if self.launches else 0.0,
            "spill_overs": self.spill_overs, "fallbacks": self.fallbacks,
            "refused": self.refused, "over_quota": self.over_quota,
            "peak_load_over_quota": round(self.peak_load_over_quota, 4),
            "members": [m.to_json() for m in self.members],
        }
        if moves is not None:
            out["moved"] = moves.to_json()
        return out


class _Replay:
    """One strategy's pass over a trace: virtual clock, sessions, probes and tallies."""

    def __init__(self, config: Config, quotas: Mapping[str, int], homes: Mapping[str, str | None],
                 *, probe_interval: float, pod_cache: float, report_quota: bool,
                 sample_every: float) -> None:
        self.config, self.quotas, self.homes = config, quotas, homes
        self.names = tuple(m.name for m in config.members)
        self.interval, self.report_quota = probe_interval, report_quota
        self.sample_every = sample_every
        self.load = dict.fromkeys(self.names, 0)
        self.pod_cache = pod_cache
        self.reported = dict.fromkeys(self.names, 0)  # each member's pod count, as last taken
        stagger = random.Random("pod counts")  # members took their first counts apart
        self.counted_at = {n: -stagger.uniform(0, pod_cache) for n in self.names}
        self.sent = SentLaunches()
        self.ends: list[tuple[float, str]] = []
        self.built: dict[str, set[str]] = {n: set() for n in self.names}
        self.count = {field: Counter[str]() for field in ("launches", "builds", "spill", "peak")}
        self.totals: Counter[str] = Counter()  # home, fallbacks, refused, over_quota
        self.samples: list[tuple[float, tuple[int, ...]]] = []
        self.next_probe = self.next_sample = 0.0
        self.table = self._probe()

    def _probe(self) -> RoutingTable:
        """A probe round of every member, taken as ``RouterState.apply_probe`` takes it: a
        member whose count is ``pod_cache`` seconds old counts its sessions again."""
        now, sent = self.next_probe, self.sent
        max_age = pod_count_max_age(self.interval)  # what the router assumes
        for name in self.names:
            fresh = False
            if now - self.counted_at[name] >= self.pod_cache:
                self.counted_at[name] = now
                fresh, self.reported[name] = self.reported[name] != self.load[name], self.load[name]
            sent.probed(name, at=now, fresh=fresh, max_age=max_age)
        sent.settle()
        healths = _healths(self.config, self.quotas, self.reported,
                           report_quota=self.report_quota)
        return build_table(self.config, healths, {}, now=now)

    def advance(self, now: float) -> None:
        """Run sessions ends, probes and load samples due up to ``now``, in time order."""
        while True:
            end = self.ends[0][0] if self.ends else math.inf
            if self.next_sample <= min(now, end, self.next_probe):
                self.samples.append((self.next_sample, tuple(self.load.values())))
                self.next_sample += self.sample_every
            elif self.next_probe <= min(now, end):
                self.table = self._probe()
                # later rounds before anything changes would see the same loads: skip them
                skip = math.floor((min(now, end) - self.next_probe) / self.interval) + 1
                self.next_probe += skip * self.interval
            elif end <= now:
                self.load[heapq.heappop(self.ends)[1]] -= 1
            else:
                return

    def place(self, item: Launch, rng: random.Random) -> None:
        """Route one launch as the router would, start its session, count the outcome."""
        decision = self.table.route(item.launch, sent=self.sent, rng=rng)
        if decision is None:
            self.totals["refused"] += 1
            return
        name, key = decision.member.name, item.launch.key
        self.totals["over_quota"] += self.load[name] >= self.quotas.get(name, 0)
        self.totals["fallbacks"] += decision.reason == "fallback"
        self.sent.add(name)
        self.load[name] += 1
        heapq.heappush(self.ends, (item.at + item.lifetime, name))
        self.count["launches"][name] += 1
        if key not in self.built[name]:
            self.built[name].add(key)
            self.count["builds"][name] += 1
        if self.homes.get(key) == name:
            self.totals["home"] += 1
        else:
            self.count["spill"][name] += 1
        peak = self.count["peak"]
        peak[name] = max(peak[name], self.load[name])

    def members(self) -> tuple[MemberResult, ...]:
        """Per-member tallies."""
        c = self.count
        return tuple(MemberResult(m.name, m.weight, self.quotas.get(m.name, 0),
                                  c["launches"][m.name], c["builds"][m.name], c["peak"][m.name],
                                  c["spill"][m.name])
                     for m in self.config.members)


def replay(
    config: Config,
    trace: Trace,
    *,
    quotas: Mapping[str, int],
    strategy: Strategy,
    probe_interval: float,
    pod_cache: float = POD_COUNT_CACHE,
    homes: Mapping[str, str | None] | None = None,
    report_quota: bool = True,
    seed: int = 0,
    samples: int = 600,
    progress: Callable[[int], None] | None = None,
) -> StrategyResult:
    """Replay ``trace`` on ``config`` with ``strategy`` (other settings as configured).

    ``homes`` (from ``home_members``) names each key's home for the spill-over count;
    ``pod_cache`` is how often members count their pods (0: at every probe);
    ``report_quota=False`` simulates members whose /health carries no quota, so only the
    load bound limits them. ``progress`` is called with the launches done since its last call.
    """
    config = replace(config, routing=replace(config.routing, strategy=strategy))
    if homes is None:
        homes = home_members(config, quotas, trace.launches_per_key(), report_quota=report_quota)
    run = _Replay(config, quotas, homes, probe_interval=probe_interval, pod_cache=pod_cache,
                  report_quota=report_quota,
                  sample_every=max(trace.duration / max(samples, 1), 1e-9))
    rng = random.Random(f"placement {seed}")  # not the trace's stream: choices would follow it
    for done, item in enumerate(trace.launches, 1):
        run.advance(item.at)
        run.place(item, rng)
        if progress is not None and done % _PROGRESS_STEP == 0:
            progress(_PROGRESS_STEP)
    if progress is not None:
        progress(len(trace.launches) % _PROGRESS_STEP)
    t = run.totals
    return StrategyResult(strategy.value, len(trace.launches), t["home"], t["fallbacks"],
                          t["refused"], t["over_quota"], run.members(), tuple(run.samples))


@dataclass(frozen=True, slots=True)
class Report:
    """Every strategy's result on one trace, and the what-if's moves, ready to print."""

    config: Config  # the federation simulated (after the what-if)
    trace: Trace
    quotas: Mapping[str, int]
    probe_interval: float
    pod_cache: float
    results: tuple[StrategyResult, ...]
    what_if: WhatIf
    moves: Moves | None

    @property
    def best_hit_rate(self) -> float:
        """Hit rate if every repository were built exactly once (plain rendezvous, no skips)."""
        n = len(self.trace.launches)
        return 1 - len(self.trace.launches_per_key()) / n if n else 0.0

    def json_lines(self) -> list[str]:
        """One JSON object per strategy."""
        return [json.dumps(r.to_json(best_hit_rate=self.best_hit_rate, moves=self.moves))
                for r in self.results]


def run(
    config: Config,
    trace: Trace,
    *,
    strategies: Iterable[Strategy] = STRATEGIES,
    what_if: WhatIf = WhatIf(),
    quotas: Mapping[str, int] | None = None,
    concurrency: float | None = None,
    utilisation: float = 0.8,
    probe_interval: float | None = None,
    pod_cache: float = POD_COUNT_CACHE,
    report_quota: bool = True,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Simulate ``config`` (changed by ``what_if``) on ``trace`` with each strategy.

    Quotas not given are derived (``derive_quotas``) from ``concurrency``, by default the
    trace's own; probes run at the config's health interval unless ``probe_interval`` is set.
    """
    target = what_if.apply(config)
    quotas = derive_quotas(config, target, concurrency=concurrency or trace.concurrency(),
                           utilisation=utilisation, given=quotas or {})
    counts = trace.launches_per_key()
    homes = home_members(target, quotas, counts, report_quota=report_quota)
    moves = None
    if what_if:
        before = home_members(config, quotas, counts, report_quota=report_quota)
        moves = home_moves(before, homes, counts)
    interval = probe_interval or config.health.interval
    results = tuple(
        replay(target, trace, quotas=quotas, strategy=s, probe_interval=interval,
               pod_cache=pod_cache, homes=homes, report_quota=report_quota, seed=seed,
               progress=progress)
        for s in strategies)
    return Report(target, trace, quotas, interval, pod_cache, results, what_if, moves)


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def render_text(report: Report) -> str:
    """The report as on-call staff read it: a summary table, then each member."""
    trace, cfg = report.trace, report.config
    lines = [
        f"Trace: {trace.description}",
        f"  {len(trace.launches):,} launches of {len(trace.launches_per_key()):,} repositories "
        f"over {trace.duration / 3600:.1f} h" + (f"; {trace.skipped:,} events skipped"
                                                 if trace.skipped else ""),
        f"Members: {len(cfg.members)}, weight {sum(m.weight for m in cfg.members):g} and quota "
        f"{sum(report.quotas.values()):,} pods in all (each below)",
        f"Probes every {report.probe_interval:g} s, pods counted every "
        f"{report.pod_cache:g} s; load factor {cfg.routing.load_factor:g}; "
        f"pod headroom {cfg.routing.pod_headroom}; weights {cfg.routing.weights.value}",
        f"Best possible hit rate (each repository built once): {_pct(report.best_hit_rate)}",
        "",
        f"{'strategy':<11} {'hit rate':>8} {'builds':>8} {'home':>7} {'spill-overs':>11} "
        f"{'fallbacks':>9} {'refused':>7} {'peak load/quota':>15} {'over quota':>10}",
    ]
    for r in report.results:
        lines.append(
            f"{r.strategy:<11} {_pct(r.hit_rate):>8} {r.builds:>8,} "
            f"{_pct(r.home / max(r.launches, 1)):>7} {r.spill_overs:>11,} {r.fallbacks:>9,} "
            f"{r.refused:>7,} {r.peak_load_over_quota:>15.2f} {r.over_quota:>10,}")
    for r in report.results:
        lines += ["", f"{r.strategy}, per member:",
                  f"  {'member':<16} {'weight':>7} {'quota':>6} {'launches':>9} {'builds':>7} "
                  f"{'hit rate':>8} {'peak load':>9} {'peak/quota':>10} {'spill-overs':>11}"]
        lines += [f"  {m.name:<16} {m.weight:>7g} {m.quota:>6} {m.launches:>9,} {m.builds:>7,} "
                  f"{_pct(m.hit_rate):>8} {m.peak_load:>9,} {m.peak_load_over_quota:>10.2f} "
                  f"{m.spill_overs:>11,}" for m in r.members]
    if report.moves is not None:
        mv = report.moves
        lines += [
            "", f"What if: {report.what_if} (the results above are for this federation)",
            f"  home member changes for {mv.repositories_moved:,} of {mv.repositories:,} "
            f"repositories ({_pct(mv.repositories_moved / max(mv.repositories, 1))}) and "
            f"{mv.launches_moved:,} of {mv.launches:,} launches "
            f"({_pct(mv.launches_moved / max(mv.launches, 1))})",
            "  repositories gained: " + (", ".join(f"{n} +{k:,}" for n, k in mv.gained) or "none")
            + "; lost: " + (", ".join(f"{n} -{k:,}" for n, k in mv.lost) or "none"),
        ]
    return "\n".join(lines)


_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def render_svg(report: Report) -> str:
    """Load against quota over time, one panel per strategy, one line per member (SVG).

    Written by hand so the router needs no plotting library; any browser shows it.
    """
    width, height, left, top, gap, per_row = 900, 200, 60, 50, 60, 6
    names = [m.name for m in report.config.members]
    quotas = [max(report.quotas[n], 1) for n in names]
    ymax = max([1.2] + [load / q for r in report.results for _, loads in r.samples
                        for load, q in zip(loads, quotas, strict=True)])
    span = max(report.trace.duration, 1e-9)
    legend_y = top + len(report.results) * (height + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + left + 20}" '
           f'height="{legend_y + 20 * math.ceil(len(names) / per_row)}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14">Sessions per member against its quota, '
           f'over {span / 3600:.1f} h of trace</text>']
    for i, r in enumerate(report.results):
        y0 = top + i * (height + gap)

        def y(v: float, y0: int = y0) -> float:
            return y0 + height - v / ymax * height

        out += [f'<rect x="{left}" y="{y0}" width="{width}" height="{height}" fill="none" '
                f'stroke="#999"/>',
                f'<text x="{left}" y="{y0 - 8}">{r.strategy}: hit rate {_pct(r.hit_rate)}, '
                f'peak {r.peak_load_over_quota:.2f}× quota</text>',
                f'<line x1="{left}" x2="{left + width}" y1="{y(1):.1f}" y2="{y(1):.1f}" '
                f'stroke="#000" stroke-dasharray="4 3"/>',
                f'<text x="{left - 6}" y="{y(1) + 4:.1f}" text-anchor="end">quota</text>',
                f'<text x="{left - 6}" y="{y(ymax) + 10:.1f}" text-anchor="end">'
                f'{ymax:.1f}×</text>',
                f'<text x="{left - 6}" y="{y(0):.1f}" text-anchor="end">0</text>',
                f'<text x="{left + width}" y="{y(0) + 14:.1f}" text-anchor="end">'
                f'{span / 3600:.1f} h</text>']
        for j, q in enumerate(quotas):
            points = " ".join(f"{left + t / span * width:.1f},{y(loads[j] / q):.1f}"
                              for t, loads in r.samples)
            out.append(f'<polyline fill="none" stroke-width="1" '
                       f'stroke="{_COLOURS[j % len(_COLOURS)]}" points="{points}"/>')
    out += [f'<text x="{left + 150 * (j % per_row)}" y="{legend_y + 20 * (j // per_row)}" '
            f'fill="{_COLOURS[j % len(_COLOURS)]}">■ {name}</text>'
            for j, name in enumerate(names)]
    out.append("</svg>")
    return "\n".join(out)
