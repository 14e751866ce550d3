"""Microseconds per routing decision: ``parse_launch`` + ``RoutingTable.route``, as a launch does.

Two cases per federation size. *Cached*: launches drawn from the benchmark's repository pool,
so the parse cache and the table's ranking LRU answer (the steady state of a busy router).
*Cold*: a repository never seen before on every call, so both caches miss and the decision
pays for the whole rendezvous ranking (BLAKE2b over every member).

Each decision is timed on its own with ``perf_counter_ns`` and the timer's own cost is
subtracted, so the median and p99 are of single decisions, not of batch averages. The
decisions are made in rounds that visit every size in turn, so a busy moment of a shared
machine hits all sizes alike; the median is the median of the rounds' medians, shown with
their spread.
"""

from __future__ import annotations

import gc
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.workload import MEMBER_QUOTA, config_text, launch_path, random_paths
from federation.config import load_config_text
from federation.health import HealthReport, MemberHealth, PodQuota, State
from federation.launch import parse_launch
from federation.table import RoutingTable, SentLaunches, build_table

__all__ = ["PlacementResult", "healthy_table", "measure", "run_placement"]

SIZES = (3, 5, 10, 100)


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """Single-decision timings for one federation size and one cache case."""

    members: int
    case: str
    median_us: float  # the median of the rounds' medians
    p99_us: float  # over every decision of every round
    decisions: int
    round_medians: tuple[float, ...] = ()


def healthy_table(members: int) -> RoutingTable:
    """A routing table whose ``members`` members are all healthy, with room to spare."""
    urls = [f"http://127.0.0.1:{20000 + i}" for i in range(members)]
    config = load_config_text(config_text(urls, interval=10), source="<benchmark>")
    report = HealthReport(ok=True, checks=(), pod_quota=PodQuota(20, 20, 0, MEMBER_QUOTA))
    healths = {m.name: MemberHealth(state=State.HEALTHY, reason="", probes=1, report=report)
               for m in config.members}
    return build_table(config, healths, {}, now=0.0)


def _timer_cost() -> int:
    """Nanoseconds one ``perf_counter_ns`` pair adds to a measurement (median of many)."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def measure(decide: Callable[[str], object], paths: Sequence[str]) -> list[float]:
    """Microseconds of ``decide(path)`` for each path, timer cost removed."""
    clock = time.perf_counter_ns
    overhead = _timer_cost()
    timings = []
    gc.disable()  # a collection in the middle of one decision is not the decision's cost
    try:
        for path in paths:
            t0 = clock()
            decide(path)
            timings.append(max(0, clock() - t0 - overhead) / 1000)
    finally:
        gc.enable()
    return timings


def _decider(table: RoutingTable) -> Callable[[str], object]:
    """What ``_Launcher`` does per launch, minus HTTP: parse, then route with live loads."""
    sent = SentLaunches({m.name: i % 4 for i, m in enumerate(table.routable)})  # since probes
    rng = random.Random(1)

    def decide(path: str) -> object:
        return table.route(parse_launch(path), cookie=None, sent=sent, rng=rng)

    return decide


def run_placement(*, decisions: int = 20_000, sizes: Sequence[int] = SIZES,
                  rounds: int = 5) -> list[PlacementResult]:
    """Time ``decisions`` cached and ``decisions`` cold decisions for each federation size,
    in ``rounds`` rounds that visit every size in turn."""
    per_round = max(1, decisions // rounds)
    deciders = {members: _decider(healthy_table(members)) for members in sizes}
    cached = random_paths(per_round)
    timings: dict[tuple[int, str], list[list[float]]] = {
        (members, case): [] for members in sizes for case in ("cached", "cold")}
    never_seen = itertools.count(10_000_000)  # repositories outside the pool, each used once
    for _ in range(rounds):
        for members in sizes:
            decide = deciders[members]
            for path in cached:  # warm both caches, as a router that has been up for a while
                decide(path)  # (the cold decisions before this flushed them)
            fresh = [launch_path(next(never_seen), "HEAD") for _ in range(per_round)]
            for case, paths in (("cached", cached), ("cold", fresh)):
                timings[members, case].append(measure(decide, paths))
    results = []
    for (members, case), runs in timings.items():
        medians = tuple(statistics.median(run) for run in runs)
        q = statistics.quantiles([t for run in runs for t in run], n=100)
        results.append(PlacementResult(members, case, statistics.median(medians), q[98],
                                       sum(len(run) for run in runs), medians))
    return results


def placement_table(results: Sequence[PlacementResult]) -> str:
    """The results as a Markdown table: one row per size, cached and cold side by side."""
    by_key = {(r.members, r.case): r for r in results}
    lines = ["| members | cached: median µs | rounds | cached: p99 µs | cold: median µs | "
             "rounds | cold: p99 µs |", "|---:|---:|---|---:|---:|---|---:|"]
    for members in sorted({r.members for r in results}):
        hot, cold = by_key[(members, "cached")], by_key[(members, "cold")]
        lines.append(f"| {members} | {hot.median_us:.2f} | {_spread(hot)} | {hot.p99_us:.2f} | "
                     f"{cold.median_us:.2f} | {_spread(cold)} | {cold.p99_us:.2f} |")
    return "\n".join(lines)


def _spread(result: PlacementResult) -> str:
    """The lowest and highest of the rounds' medians."""
    return f"{min(result.round_medians):.2f}–{max(result.round_medians):.2f}"
