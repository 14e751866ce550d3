"""Prometheus metrics, with the redirector's names kept so existing dashboards keep working.

Compatible with mybinder.org's federation-redirect (binderhub-protocol.md §4.5), minus its bugs:

* ``federation_health{member,reason}`` — exactly one series per member: 1 with ``reason=""``
  while it takes launches, else 0 with the reason (a full member: ``Pod quota``, as today);
  the member gauges are read from the routing table in force at each scrape, so an old
  reason's series is gone at the next one;
* ``federation_health_check{member,check}`` — each BinderHub check and ``versions``, as the
  router judges them: ``Pod quota`` is 0 when headroom is used up, ``versions`` follows the
  version policy;
* ``federation_redirect_count{member,reason}`` — same name and labels as before (monotonic);
  ``federation_redirects_total`` is the same count as a proper Prometheus Counter.

Label values are member names, check names and small enums only — never repositories.
Each router owns its registry, so several routers (tests, workers) never share series.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from federation.health import POD_QUOTA, ProbeResult, versions_match
from federation.table import MemberStatus, MemberView, RoutingTable

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_PROBE_BUCKETS = tuple(float(b) for b in Histogram.DEFAULT_BUCKETS[:-1])  # without +Inf
_PROBE_OUTCOMES = ("ok", "unhealthy", "error")


class _LatencyHistogram:
    """Durations kept as plain bucket counts (one route kind's requests, one member's probes).

    prometheus_client's Histogram takes a lock on every observation; on the single-threaded
    event loop that lock is pure cost, and it was the largest part of a launch's routing time.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Record one event that took ``seconds``."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        """Export as one labelled histogram of ``family`` (cumulative, as Prometheus wants)."""
        bounds = [*(str(float(b)) for b in self.bounds), "+Inf"]
        family.add_metric(labels, list(zip(bounds, accumulate(self.counts), strict=True)),
                          self.total)


class _LaunchTally(Collector):
    """Redirect counts and request latencies, updated as plain numbers, exported when scraped.

    Exports ``federation_redirects_total`` (a Counter), ``federation_redirect_count`` (the
    redirector's old, unsuffixed name, same values) and
    ``federation_request_duration_seconds`` (a Histogram by route kind).
    """

    def __init__(self) -> None:
        self.counts: array[int] = array("q")  # per (member, reason) slot, see ``slot``
        self._slots: dict[tuple[str, str], int] = {}
        self.latency = {kind: _LatencyHistogram() for kind in ("launch", "proxy", "other")}

    def slot(self, member: str, reason: str) -> int:
        """The index in ``counts`` where redirects to ``member`` for ``reason`` are counted;
        resolve once, then count with ``counts[slot] += 1``. An array, not a dict of ints,
        for the reason ``SentLaunches`` gives."""
        index = self._slots.get((member, reason))
        if index is None:
            index = self._slots[member, reason] = len(self.counts)
            self.counts.append(0)
        return index

    def total(self, member: str, reason: str) -> int:
        """Redirects so far to ``member`` for ``reason``."""
        index = self._slots.get((member, reason))
        return 0 if index is None else self.counts[index]

    @property
    def redirects(self) -> dict[tuple[str, str], int]:
        """Redirects so far per (member, reason) (a copy, for reading)."""
        return {key: self.counts[index] for key, index in self._slots.items()}

    def since(self, then: array[int]) -> dict[str, int]:
        """Redirects per member counted after ``then``, a copy of ``counts`` taken earlier
        (slots given since then count from zero). Members with none are left out."""
        recent: dict[str, int] = {}
        for (member, _reason), index in self._slots.items():
            count = self.counts[index] - (then[index] if index < len(then) else 0)
            if count:
                recent[member] = recent.get(member, 0) + count
        return recent

    def collect(self) -> Iterator[Metric]:
        doc = "Launch redirects per member and reason"
        counter = CounterMetricFamily("federation_redirects", doc, labels=["member", "reason"])
        compat = GaugeMetricFamily("federation_redirect_count", doc + " (the redirector's "
                                   "name; same values as federation_redirects_total)",
                                   labels=["member", "reason"])
        for (member, reason), value in sorted(self.redirects.items()):
            counter.add_metric([member, reason], value)
            compat.add_metric([member, reason], value)
        latency = HistogramMetricFamily("federation_request_duration_seconds",
                                        "Time to answer a request, by route kind",
                                        labels=["route"])
        for kind, histogram in self.latency.items():
            histogram.add_to(latency, [kind])
        yield from (counter, compat, latency)


class _ProbeTally(Collector):
    """Probe rounds per member and outcome, and their durations: plain numbers a hundred
    members probed every second update without locks, exported when scraped.

    Exports ``federation_probes_total`` (a Counter) and ``federation_probe_duration_seconds``
    (a Histogram per member, prometheus_client's default buckets).
    """

    def __init__(self) -> None:
        self.rounds: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _LatencyHistogram] = {}

    def count(self, member: str, outcome: str, seconds: float) -> None:
        """One round of ``member`` that ended in ``outcome`` after ``seconds``."""
        key = (member, outcome)
        self.rounds[key] = self.rounds.get(key, 0) + 1
        histogram = self.latency.get(member)
        if histogram is None:
            histogram = self.latency[member] = _LatencyHistogram(_PROBE_BUCKETS)
        histogram.observe(seconds)

    def forget(self, member: str) -> None:
        """Drop every series of ``member``."""
        self.latency.pop(member, None)
        for outcome in _PROBE_OUTCOMES:
            self.rounds.pop((member, outcome), None)

    def collect(self) -> Iterator[Metric]:
        rounds = CounterMetricFamily("federation_probes", "Probe rounds by outcome: ok, "
                                     "unhealthy (answered, a check failing) or error (no "
                                     "usable answer)", labels=["member", "outcome"])
        for (member, outcome), value in sorted(self.rounds.items()):
            rounds.add_metric([member, outcome], value)
        latency = HistogramMetricFamily("federation_probe_duration_seconds",
                                        "Duration of a probe round", labels=["member"])
        for member, histogram in sorted(self.latency.items()):
            histogram.add_to(latency, [member])
        yield from (rounds, latency)


class _MemberGauges(Collector):
    """The members' gauges and ``federation_panic``, read from the routing table in force
    when scraped.

    Busy members report new pod counts on nearly every probe, so with a hundred members the
    table is rebuilt about once a second. Writing their gauges at every rebuild cost more
    than the rebuild itself (820 of 1,540 µs; ``benchmarks/HISTORY.md``, tenth pass); a
    scrape every 15 to 60 s reads one snapshot instead. A series that no longer applies (a
    removed member, a member's old reason or state) is simply not in the next scrape.
    """

    def __init__(self) -> None:
        self.table: Callable[[], RoutingTable] | None = None  # set by ``Metrics.watch``

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.table() if self.table is not None else None)

    @staticmethod
    def _families(table: RoutingTable | None) -> Iterator[Metric]:
        member, check = ["member"], ["member", "check"]
        health = GaugeMetricFamily("federation_health", "1 while a member is in rotation, "
                                   "else 0 with the reason", labels=["member", "reason"])
        checks = GaugeMetricFamily("federation_health_check", "Each BinderHub check of a "
                                   "member (1 ok, 0 failing), and versions", labels=check)
        state = GaugeMetricFamily("federation_member_state", "1 for the member's current "
                                  "state", labels=["member", "state"])
        drained = GaugeMetricFamily("federation_member_drained", "1 while an operator drain "
                                    "is in force", labels=member)
        weight = GaugeMetricFamily("federation_member_effective_weight", "Weight used for "
                                   "placement now (after capacity and slow start)",
                                   labels=member)
        pods = GaugeMetricFamily("federation_member_pods", "Pods the member last reported",
                                 labels=member)
        quota = GaugeMetricFamily("federation_member_quota", "Pod quota the member last "
                                  "reported", labels=member)
        panic = GaugeMetricFamily("federation_panic", "1 while too little weight is "
                                  "routable and launches ignore health (panic_threshold)")
        if table is not None:
            panic.add_metric([], 1 if table.panic else 0)
            for m in table.members:
                health.add_metric([m.name, _health_reason(m)],
                                  1 if m.status is MemberStatus.HEALTHY else 0)
                for name, ok in _checks(table, m).items():
                    checks.add_metric([m.name, name], 1 if ok else 0)
                state.add_metric([m.name, m.status.value], 1)
                drained.add_metric([m.name], 1 if m.drain else 0)
                weight.add_metric([m.name], m.effective_weight)
                if m.pods is not None:
                    pods.add_metric([m.name], m.pods)
                if m.quota is not None:
                    quota.add_metric([m.name], m.quota)
        yield from (health, checks, state, drained, weight, pods, quota, panic)


def _health_reason(view: MemberView) -> str:
    """``federation_health``'s reason: empty in rotation, ``Pod quota`` when full (as the
    redirector shows it), ``drained``, else the health reason or the state."""
    if view.status is MemberStatus.HEALTHY:
        return ""
    if view.status is MemberStatus.FULL:
        return POD_QUOTA
    if view.status is MemberStatus.DRAINED:
        return "drained"
    return view.health.reason or view.status.value


def _checks(table: RoutingTable, view: MemberView) -> dict[str, bool]:
    """A member's checks as the router judges them: ``Pod quota`` fails once headroom is
    used up (today it showed 1, MD PR#2429), ``versions`` follows the version policy."""
    report = view.health.report
    checks = {c.service: c.ok for c in report.checks} if report is not None else {}
    if POD_QUOTA in checks and view.status is MemberStatus.FULL:
        checks[POD_QUOTA] = False
    if view.health.versions is not None:
        prime = table.by_name[table.config.prime.name].health.versions
        checks["versions"] = versions_match(table.config.health.versions,
                                            view.health.versions, prime)
    return checks


class Metrics:
    """Every metric the router exports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._members = _MemberGauges()
        r.register(self._members)
        self.launches = _LaunchTally()
        r.register(self.launches)
        self.no_member = Counter("federation_launches_refused", "Launches answered 503 "
                                 "because no member could take them", registry=r)
        self.bad_launch = Counter("federation_bad_launch_paths", "Launch paths refused with "
                                  "a 4xx", registry=r)
        self.proxy_errors = Counter("federation_proxy_errors", "Proxied requests that failed "
                                    "upstream", ["kind"], registry=r)
        self.probes = _ProbeTally()
        r.register(self.probes)
        self.config_generation = Gauge("federation_config_generation", "Config generation in "
                                       "force (increments on every accepted reload)", registry=r)
        self.config_reloads = Counter("federation_config_reloads", "Accepted config reloads",
                                      registry=r)
        self.config_errors = Counter("federation_config_reload_errors", "Rejected config "
                                     "reloads (the last good config stayed in force)",
                                     registry=r)
        self.route_latency = self.launches.latency

    def watch(self, table: Callable[[], RoutingTable]) -> None:
        """Export the member gauges from ``table()``, the routing table in force."""
        self._members.table = table

    def redirect_total(self, member: str, reason: str) -> int:
        """Redirects counted so far to ``member`` for ``reason``."""
        return self.launches.total(member, reason)

    def forget(self, member: str) -> None:
        """``member`` left the config: drop its probe series (redirect counts stay, as
        counters must)."""
        self.probes.forget(member)

    def probed(self, member: str, result: ProbeResult) -> None:
        """Count one probe round by outcome, and its duration."""
        if result.health is None or not result.reachable:
            outcome = "error"
        else:
            outcome = "ok" if result.health.problem is None else "unhealthy"
        self.probes.count(member, outcome, result.latency)
