"""What a member's probes say: parsing BinderHub's /health and /versions, and the hysteresis
that turns single probe results into "in rotation" or "out".

Pure: the probe loop in ``probes.py`` does the I/O and feeds results here. Facts this module
relies on (binderhub-protocol.md §3.1, §3.2):

* /health answers ``{"ok": bool, "checks": [{"service": name, "ok": bool, ...}]}``, HTTP 503
  when ``ok`` is false — the 503 body is still parsed so the reason is the failing check's name;
* the ``Pod quota`` check carries ``total_pods``, ``user_pods``, ``build_pods`` and ``quota``
  (null when unset) and is marked ``_ignore_failure``: being over quota never makes a member sick;
* /versions answers ``{"binderhub": "...", "builder_info": {...}, "builder": "..."}``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from federation.config import VersionPolicy
from federation.errors import ProbeError

__all__ = [
    "Check",
    "HealthReport",
    "MemberHealth",
    "PodQuota",
    "ProbeResult",
    "State",
    "Versions",
    "advance",
    "parse_health",
    "parse_versions",
    "verdict",
    "versions_match",
]

POD_QUOTA = "Pod quota"


class State(StrEnum):
    """Whether a member is in rotation as far as its probes go."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class Check:
    """One entry of BinderHub's /health ``checks``."""

    service: str
    ok: bool
    ignore_failure: bool = False


@dataclass(frozen=True, slots=True)
class PodQuota:
    """The ``Pod quota`` check: pods running and the member's launch quota (None = unset)."""

    total_pods: int
    user_pods: int
    build_pods: int
    quota: int | None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A parsed /health answer."""

    ok: bool
    checks: tuple[Check, ...]
    pod_quota: PodQuota | None

    @property
    def failing(self) -> tuple[str, ...]:
        """Names of failing checks that make a member sick, in BinderHub's order.

        ``Pod quota`` never does, even from a BinderHub that forgets ``_ignore_failure``:
        a member over quota is full, and the routing table keeps it out without ejecting it.
        """
        return tuple(c.service for c in self.checks
                     if not c.ok and not c.ignore_failure and c.service != POD_QUOTA)

    @property
    def problem(self) -> str | None:
        """Why this answer says the member is sick: the first failing check's name, else
        ``unhealthy`` for a not-ok answer that names no failing check; None when fine."""
        failing = self.failing
        if failing:
            return failing[0]
        if not self.ok and all(c.ok for c in self.checks):
            return "unhealthy"
        return None


@dataclass(frozen=True, slots=True)
class Versions:
    """A parsed /versions answer; ``raw`` keeps the whole object for the status page.

    Equality is on the whole object so any change shows up in the status page; the version
    policies compare only the fields that matter (``versions_match``).
    """

    binderhub: str
    builder: str
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # ``raw`` as sorted JSON, made once: every probe round compares versions
    canonical: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "canonical", json.dumps(self.raw, sort_keys=True, default=str))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Versions) and self.canonical == other.canonical

    def __hash__(self) -> int:
        return hash(self.canonical)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe round of a member: /health, and /versions when the round asked for it."""

    at: float
    latency: float
    health: HealthReport | None = None
    versions: Versions | None = None  # None: not asked this round, or the fetch failed
    error: str | None = None  # reason when the round failed before a verdict (timeout, garbage)

    @property
    def reachable(self) -> bool:
        """Both answers arrived and parsed."""
        return self.error is None and self.health is not None


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """What the probes last concluded about one member."""

    state: State = State.UNKNOWN
    reason: str = "not probed yet"
    since: float = 0.0
    failures: int = 0
    successes: int = 0
    probes: int = 0
    last: ProbeResult | None = None
    report: HealthReport | None = None  # the last /health that parsed, even if a later failed
    versions: Versions | None = None  # likewise for /versions
    versions_at: float | None = None  # when ``versions`` was fetched

    @property
    def pod_quota(self) -> PodQuota | None:
        """The most recent pod counts and quota reported by /health, if any."""
        return self.report.pod_quota if self.report else None


@functools.lru_cache(maxsize=256)
def parse_health(status: int, body: bytes) -> HealthReport:
    """Parse BinderHub's /health (200 or 503 with the same JSON body).

    Memoized on the answer (the result is immutable): a member whose answer has not changed
    since its last round costs a lookup, not a JSON parse. Refusals raise and are not kept.
    """
    if status not in (200, 503):
        raise ProbeError(f"HTTP {status}", "/health answered neither 200 nor 503")
    data = _json_object(body, "/health")
    checks_data = data.get("checks", [])
    ok = data.get("ok")
    if not isinstance(ok, bool) or not isinstance(checks_data, list):
        raise ProbeError("bad /health", "expected {'ok': bool, 'checks': [...]}")
    checks: list[Check] = []
    quota: PodQuota | None = None
    for item in checks_data:
        if not isinstance(item, Mapping) or not isinstance(item.get("service"), str):
            raise ProbeError("bad /health", "a check has no 'service' name")
        check = Check(str(item["service"])[:80], item.get("ok") is True,
                      item.get("_ignore_failure") is True)
        checks.append(check)
        if check.service == POD_QUOTA:
            quota = _pod_quota(item)
    if status == 503 and ok:
        ok = False  # trust the status code over a body that contradicts it
    return HealthReport(ok=ok, checks=tuple(checks), pod_quota=quota)


def _pod_quota(item: Mapping[str, Any]) -> PodQuota:
    def count(name: str) -> int:
        value = item.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ProbeError("bad /health", f"'Pod quota' {name} is not a count: {value!r}")
        return value

    quota = item.get("quota")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int)):
        raise ProbeError("bad /health", f"'Pod quota' quota is not a count: {quota!r}")
    return PodQuota(count("total_pods"), count("user_pods"), count("build_pods"), quota)


@functools.lru_cache(maxsize=256)
def parse_versions(status: int, body: bytes) -> Versions:
    """Parse BinderHub's /versions; memoized like ``parse_health`` (it changes on deploys only)."""
    if status != 200:
        raise ProbeError(f"HTTP {status}", "/versions did not answer 200")
    data = _json_object(body, "/versions")
    binderhub = data.get("binderhub")
    builder_info = data.get("builder_info")
    builder = data.get("builder")
    if builder is None and isinstance(builder_info, Mapping):
        builder = builder_info.get("build_image") or builder_info.get("repo2docker-version")
    if not isinstance(binderhub, str):
        raise ProbeError("bad /versions", "no 'binderhub' version string")
    return Versions(binderhub=binderhub, builder=str(builder or ""),
                    raw=MappingProxyType(dict(data)))


def _json_object(body: bytes, what: str) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProbeError("not JSON", f"{what} answered {body[:60]!r}") from None
    if not isinstance(data, dict):
        raise ProbeError("not JSON", f"{what} is not a JSON object")
    return data


def versions_match(policy: VersionPolicy, member: Versions | None, prime: Versions | None) -> bool:
    """Whether a member's versions are close enough to the prime's under ``policy``.

    ``exact`` wants the same BinderHub and builder image, ``binderhub`` only the same BinderHub.
    Other keys of the JSON (extra ``builder_info`` fields, key order) never count: judging the
    whole object is how today's redirector ejects members over differences nobody cares about.
    Until the prime's versions are known any member passes, so members can be admitted at
    start-up before the prime answers (as today's redirector does).
    """
    if policy is VersionPolicy.OFF or prime is None:
        return True
    if member is None:
        return False
    if policy is VersionPolicy.BINDERHUB:
        return member.binderhub == prime.binderhub
    return (member.binderhub, member.builder) == (prime.binderhub, prime.builder)


def verdict(
    result: ProbeResult, *, policy: VersionPolicy, prime_versions: Versions | None,
    known_versions: Versions | None = None,
) -> str | None:
    """Why this single probe round failed (None: it passed).

    A round that did not ask for /versions is judged on ``known_versions``, the member's
    last fetched ones.
    """
    if result.error is not None or result.health is None:
        return result.error or "unknown"
    problem = result.health.problem
    if problem is not None:
        return problem
    if not versions_match(policy, result.versions or known_versions, prime_versions):
        return "versions"
    return None


def advance(
    prev: MemberHealth,
    result: ProbeResult,
    *,
    policy: VersionPolicy,
    prime_versions: Versions | None,
    failures_to_eject: int,
    successes_to_restore: int,
) -> MemberHealth:
    """The member's health after one more probe round: hysteresis in both directions.

    A member of unknown state takes the first verdict at once (start-up should not wait for
    several rounds); afterwards ``failures_to_eject`` consecutive failures take it out and
    ``successes_to_restore`` consecutive successes bring it back.
    """
    reason = verdict(result, policy=policy, prime_versions=prime_versions,
                     known_versions=prev.versions)
    state, why, since = prev.state, prev.reason, prev.since
    if reason is None:
        failures, successes = 0, prev.successes + 1
        if state is State.UNKNOWN or (state is State.UNHEALTHY
                                      and successes >= successes_to_restore):
            state, why, since = State.HEALTHY, "", result.at
    else:
        failures, successes = prev.failures + 1, 0
        if state is State.UNKNOWN or (state is State.HEALTHY and failures >= failures_to_eject):
            state, why, since = State.UNHEALTHY, reason, result.at
        elif state is State.UNHEALTHY:
            why = reason  # still out: say why as of now
    # built whole, not by ``replace``: this runs for every member every round
    return MemberHealth(state=state, reason=why, since=since, failures=failures,
                        successes=successes, probes=prev.probes + 1, last=result,
                        report=result.health or prev.report,
                        versions=result.versions or prev.versions,
                        versions_at=result.at if result.versions else prev.versions_at)
