"""Prometheus metrics, with the redirector's names kept so existing dashboards keep working.

Compatible with mybinder.org's federation-redirect (binderhub-protocol.md §4.5), minus its bugs:

* ``federation_health{member,reason}`` — exactly one series per member: 1 with ``reason=""``
  while it takes launches, else 0 with the reason (a full member: ``Pod quota``, as today);
  the old reason's series is removed on change;
* ``federation_health_check{member,check}`` — each BinderHub check and ``versions``, as the
  router judges them: ``Pod quota`` is 0 when headroom is used up, ``versions`` follows the
  version policy;
* ``federation_redirect_count{member,reason}`` — same name and labels as before (monotonic);
  ``federation_redirects_total`` is the same count as a proper Prometheus Counter.

Label values are member names, check names and small enums only — never repositories.
Each router owns its registry, so several routers (tests, workers) never share series.
"""

from __future__ import annotations

import contextlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator
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
from federation.table import MemberStatus, RoutingTable

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


class Metrics:
    """Every metric the router exports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.health = Gauge("federation_health", "1 while a member is in rotation, else 0 "
                            "with the reason", ["member", "reason"], registry=r)
        self.health_check = Gauge("federation_health_check", "Each BinderHub check of a member "
                                  "(1 ok, 0 failing), and versions", ["member", "check"],
                                  registry=r)
        self.state = Gauge("federation_member_state", "1 for the member's current state",
                           ["member", "state"], registry=r)
        self.drained = Gauge("federation_member_drained", "1 while an operator drain is in "
                             "force", ["member"], registry=r)
        self.weight = Gauge("federation_member_effective_weight", "Weight used for placement "
                            "now (after capacity and slow start)", ["member"], registry=r)
        self.pods = Gauge("federation_member_pods", "Pods the member last reported",
                          ["member"], registry=r)
        self.quota = Gauge("federation_member_quota", "Pod quota the member last reported",
                           ["member"], registry=r)
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
        self.panic = Gauge("federation_panic", "1 while too little weight is routable and "
                           "launches ignore health (panic_threshold)", registry=r)
        self.config_generation = Gauge("federation_config_generation", "Config generation in "
                                       "force (increments on every accepted reload)", registry=r)
        self.config_reloads = Counter("federation_config_reloads", "Accepted config reloads",
                                      registry=r)
        self.config_errors = Counter("federation_config_reload_errors", "Rejected config "
                                     "reloads (the last good config stayed in force)",
                                     registry=r)
        self._members: set[str] = set()
        self._health_reason: dict[str, str] = {}
        self._state: dict[str, str] = {}
        self._checks: dict[str, set[str]] = {}
        self._synced: dict[str, tuple[object, ...]] = {}
        self._numbers: dict[str, tuple[int | None, int | None]] = {}
        self.route_latency = self.launches.latency

    def redirect_total(self, member: str, reason: str) -> int:
        """Redirects counted so far to ``member`` for ``reason``."""
        return self.launches.total(member, reason)

    def sync(self, table: RoutingTable) -> None:
        """Make member gauges show ``table``; remove series of removed members or old reasons."""
        names = {m.name for m in table.members}
        for gone in self._members - names:
            self._forget(gone)
        self._members = names
        self.panic.set(1 if table.panic else 0)
        prime_versions = table.by_name[table.config.prime.name].health.versions
        policy = table.config.health.versions
        for m in table.members:
            # Tables are rebuilt on every visible probe change, and busy members report new
            # pod counts on nearly every probe: those two gauges are written apart, and the
            # rest only for members whose state changed.
            numbers = (m.pods, m.quota)
            if self._numbers.get(m.name) != numbers:
                self._numbers[m.name] = numbers
                if m.pods is not None:
                    self.pods.labels(m.name).set(m.pods)
                if m.quota is not None:
                    self.quota.labels(m.name).set(m.quota)
            report = m.health.report
            seen = (m.status, m.health.reason, m.drain is not None, m.effective_weight,
                    report.checks if report else None, m.health.versions, prime_versions,
                    policy)
            if self._synced.get(m.name) == seen:
                continue
            self._synced[m.name] = seen
            in_rotation = m.status is MemberStatus.HEALTHY
            reason = {MemberStatus.HEALTHY: "", MemberStatus.FULL: POD_QUOTA,
                      MemberStatus.DRAINED: "drained"}.get(m.status)
            if reason is None:
                reason = m.health.reason or m.status.value
            old = self._health_reason.get(m.name)
            if old is not None and old != reason:
                self.health.remove(m.name, old)
            self._health_reason[m.name] = reason
            self.health.labels(m.name, reason).set(1 if in_rotation else 0)
            if self._state.get(m.name) not in (None, m.status.value):
                self.state.remove(m.name, self._state[m.name])
            self._state[m.name] = m.status.value
            self.state.labels(m.name, m.status.value).set(1)
            self.drained.labels(m.name).set(1 if m.drain else 0)
            self.weight.labels(m.name).set(m.effective_weight)
            self._sync_checks(table, m.name)

    def _sync_checks(self, table: RoutingTable, name: str) -> None:
        view = table.by_name[name]
        report = view.health.report
        checks: dict[str, bool] = {}
        if report is not None:
            checks = {c.service: c.ok for c in report.checks}
        if POD_QUOTA in checks and view.status is MemberStatus.FULL:
            checks[POD_QUOTA] = False  # out for headroom: today this showed 1 (MD PR#2429)
        if view.health.versions is not None:
            prime = table.by_name[table.config.prime.name].health.versions
            checks["versions"] = versions_match(table.config.health.versions,
                                                view.health.versions, prime)
        for old in self._checks.get(name, set()) - set(checks):
            self.health_check.remove(name, old)
        self._checks[name] = set(checks)
        for check, ok in checks.items():
            self.health_check.labels(name, check).set(1 if ok else 0)

    def _forget(self, name: str) -> None:
        """Remove every series of a member that left the config."""
        self._synced.pop(name, None)
        self._numbers.pop(name, None)
        self.probes.forget(name)
        for per_member in (self.drained, self.weight, self.pods, self.quota):
            with contextlib.suppress(KeyError):
                per_member.remove(name)
        if name in self._health_reason:
            self.health.remove(name, self._health_reason.pop(name))
        if name in self._state:
            self.state.remove(name, self._state.pop(name))
        for check in self._checks.pop(name, set()):
            self.health_check.remove(name, check)

    def probed(self, member: str, result: ProbeResult) -> None:
        """Count one probe round by outcome, and its duration."""
        if result.health is None or not result.reachable:
            outcome = "error"
        else:
            outcome = "ok" if result.health.problem is None else "unhealthy"
        self.probes.count(member, outcome, result.latency)
