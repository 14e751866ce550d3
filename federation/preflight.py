"""Preflight for joining: probe each member once, and say in plain words who is not fit, and why.

An institution adding its cluster runs ``federation check --config PATH --probe`` before the
pull request. Every member gets exactly the probe round the router would make (``probe_member``)
and the router's own judgement of it (``health.verdict``), so preflight passes exactly when the
router would take the member into rotation; this module only adds the explanations a newcomer
can act on, and the pod quota arithmetic the router does against ``pod_headroom``.

What "answer" measures: the wall time of one probe round — GET /health and GET /versions in
parallel, each on a fresh connection (DNS, TCP and TLS included), until both bodies are read.
It is how quickly the member answers the router, not the time of a /build redirect (the router
answers those itself, without asking the member).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from federation.config import Config, Member, VersionPolicy
from federation.health import ProbeResult, Versions, verdict, versions_match
from federation.probes import probe_fetcher, probe_member

__all__ = ["MemberCheck", "Preflight", "assess", "preflight", "render_preflight"]

_SLOW_SHARE = 0.5  # of the probe timeout: an answer slower than this is worth a warning


@dataclass(frozen=True, slots=True)
class MemberCheck:
    """One member's probe round, and what it means for joining."""

    member: Member
    result: ProbeResult
    versions_ok: bool | None  # None: not compared (policy off, or the prime did not answer)
    capacity: int | None  # pods at which it would count as full (quota - headroom)
    problems: tuple[str, ...]  # each one a reason it is not fit to join
    warnings: tuple[str, ...]  # fit, but worth knowing

    @property
    def fit(self) -> bool:
        """Whether the router would take this member into rotation."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class Preflight:
    """The verdict on every judged member of one config."""

    config: Config
    checks: tuple[MemberCheck, ...]
    prime_versions: Versions | None

    @property
    def fit(self) -> bool:
        """Whether every judged member is fit to join."""
        return all(c.fit for c in self.checks)


async def preflight(config: Config, *, only: Collection[str] = ()) -> Preflight:
    """Probe the members (``only`` these, if given, plus the prime as the versions reference)
    once each, all at the same time, and judge them."""
    judged = [m for m in config.members if not only or m.name in only]
    probed = {m.name: m for m in judged} | {config.prime.name: config.prime}
    async with probe_fetcher(keep_alive=False) as fetcher:
        results = await asyncio.gather(*(probe_member(fetcher, m, config.health)
                                         for m in probed.values()))
    return assess(config, dict(zip(probed, results, strict=True)),
                  judged=[m.name for m in judged])


def assess(config: Config, results: Mapping[str, ProbeResult], *,
           judged: Collection[str]) -> Preflight:
    """Judge each member in ``judged`` from its probe round (pure: no I/O)."""
    prime = config.prime
    prime_result = results.get(prime.name)
    prime_versions = prime_result.versions if prime_result else None
    checks = tuple(_check(config, m, results[m.name], prime_versions, prime_result)
                   for m in config.members if m.name in judged)
    return Preflight(config, checks, prime_versions)


def _check(config: Config, member: Member, result: ProbeResult, prime_versions: Versions | None,
           prime_result: ProbeResult | None) -> MemberCheck:
    policy = config.health.versions
    problems: list[str] = []
    warnings: list[str] = []
    reason = verdict(result, policy=policy, prime_versions=prime_versions)
    versions_ok: bool | None = None
    if result.health is None:
        problems.append(_unreachable(config, member, reason or "no answer"))
    else:
        if reason is not None and reason != "versions":
            problems.append(_health_problem(result.health.failing))
        if policy is VersionPolicy.OFF:
            warnings.append("versions not compared (health.versions is off)")
        elif prime_versions is None:
            why = prime_result.error if prime_result and prime_result.error else "no answer"
            warnings.append(f"versions not compared: the prime {config.prime.name} did not "
                            f"answer ({why})")
        else:
            # Also when /health already failed: a newcomer should learn both at once.
            versions_ok = versions_match(policy, result.versions, prime_versions)
            if not versions_ok:
                problems.append(_versions_problem(config, result.versions, prime_versions))
    capacity = _quota(config, member, result, problems, warnings)
    timeout = config.health.timeout
    if result.reachable and result.latency > _SLOW_SHARE * timeout:
        warnings.append(f"answered in {result.latency * 1000:.0f} ms, more than half the "
                        f"probe timeout of {timeout:g} s; a little slower and the router "
                        "ejects it")
    if member.drain:
        warnings.append(f"marked drained in the config ({member.drain}): it takes no launches")
    return MemberCheck(member, result, versions_ok, capacity, tuple(problems), tuple(warnings))


def _unreachable(config: Config, member: Member, reason: str) -> str:
    """Turn a failed probe round's short reason into a sentence with a next step."""
    urls = f"{member.health_url} and {member.versions_url}"
    if reason == "unreachable":
        return (f"cannot connect to {member.health_url} — is the URL right, does the host "
                "name resolve, and is /health open to the router (firewall, ban_networks)?")
    if reason.startswith("timeout"):
        return (f"no answer from {urls} within {config.health.timeout:g} s "
                "(health.timeout) — is BinderHub up, and reachable from where you run this?")
    if reason.startswith("HTTP "):
        return (f"{urls} answered {reason} — are these the BinderHub's own /health and "
                "/versions? Set 'health:' and 'versions:' in the member's entry if they are "
                "elsewhere")
    if reason in ("not JSON", "bad /health", "bad /versions"):
        return (f"{urls} did not answer in BinderHub's format ({reason}) — is a login page, "
                "proxy or another service answering at that URL?")
    if reason == "answer too large":
        return (f"{urls} sent more than {config.health.max_body_bytes} bytes "
                "(health.max_body_bytes) — is that really BinderHub answering?")
    return (f"the probe of {urls} failed: {reason} — check TLS certificates and any proxy in "
            "front of BinderHub")


def _health_problem(failing: tuple[str, ...]) -> str:
    if not failing:
        return ("/health answers ok: false without naming a failing check — look at the "
                "BinderHub's logs")
    names = ", ".join(repr(name) for name in failing)
    return (f"/health says {names} {'is' if len(failing) == 1 else 'are'} failing — fix that "
            "on the member's BinderHub before joining")


def _versions_problem(config: Config, member: Versions | None, prime: Versions) -> str:
    name = config.prime.name
    if member is None:
        return "/versions gave no versions to compare with the prime's"
    differ = [(what, mine or "?", theirs or "?") for what, mine, theirs in
              (("BinderHub", member.binderhub, prime.binderhub),
               ("builder", member.builder, prime.builder)) if mine != theirs]
    if differ:
        ours = " and ".join(f"{what} {mine}" for what, mine, _ in differ)
        theirs = " and ".join(f"{what} {their}" for what, _, their in differ)
        return (f"runs {ours}, but the prime {name} runs {theirs} — upgrade to the prime's "
                "versions before joining")
    return (f"its /versions answer differs from the prime {name}'s beyond the BinderHub and "
            "builder versions (health.versions: exact compares all of it) — match the prime's "
            "configuration")


def _quota(config: Config, member: Member, result: ProbeResult, problems: list[str],
           warnings: list[str]) -> int | None:
    """The member's capacity under its headroom, noting quota trouble on the way."""
    if result.health is None:
        return None
    pq = result.health.pod_quota
    if pq is None or pq.quota is None:
        warnings.append("reports no pod quota, so the router cannot tell when it is full — "
                        "set LaunchQuota.total_quota in the BinderHub config")
        return None
    headroom = config.headroom_for(member).pods_for(pq.quota)
    capacity = max(0, pq.quota - headroom)
    if capacity == 0:
        problems.append(f"its pod quota of {pq.quota} leaves nothing above the headroom of "
                        f"{headroom} pods, so it would never take a launch — raise "
                        "LaunchQuota.total_quota or lower pod_headroom")
    elif pq.total_pods >= capacity:
        warnings.append(f"full right now: {pq.total_pods} of {pq.quota} pods in use; it takes "
                        f"launches below {capacity}")
    return capacity


def render_preflight(report: Preflight) -> str:
    """The member table, then every problem and warning as a sentence, then the verdict."""
    header = ("member", "reachable", "health", "versions", "pods/quota", "takes below",
              "answer")
    rows = [header, *(_row(c) for c in report.checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    notes = [(f"  ✗ {c.member.name}: {p}") for c in report.checks for p in c.problems]
    notes += [(f"  ! {c.member.name}: {w}") for c in report.checks for w in c.warnings]
    if notes:
        lines += ["", *notes]
    unfit = [c.member.name for c in report.checks if not c.fit]
    lines.append("")
    if unfit:
        lines.append(f"NOT READY: {len(unfit)} of {len(report.checks)} members are not fit to "
                     f"join ({', '.join(unfit)}); fix what is marked ✗ and run this again.")
    else:
        lines.append(f"READY: all {len(report.checks)} members probed are fit to join.")
    return "\n".join(lines)


def _row(check: MemberCheck) -> tuple[str, ...]:
    result = check.result
    name = check.member.name + (" (prime)" if check.member.prime else "")
    answer = f"{result.latency * 1000:.0f} ms"
    if not result.reachable or result.health is None:
        return (name, "no", "-", "-", "-", "-", answer)
    failing = result.health.failing
    health = "ok" if result.health.ok and not failing else "failing: " + ", ".join(failing)
    version = result.versions.binderhub if result.versions else "?"
    versions = {True: f"{version} = prime", False: f"{version} ≠ prime",
                None: f"{version} (not compared)"}[check.versions_ok]
    pq = result.health.pod_quota
    pods = "-" if pq is None else f"{pq.total_pods}/{pq.quota if pq.quota is not None else '∞'}"
    capacity = "-" if check.capacity is None else str(check.capacity)
    return (name, "yes", health, versions, pods, capacity, answer)
