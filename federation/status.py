"""The on-call view of the federation as plain data (JSON for ``/_router/status``).

One function builds it from the router's state; the HTML page and ``federation status`` both
render this document, so they can never disagree.
"""

from __future__ import annotations

import time
from typing import Any

from federation.runtime import RouterState
from federation.table import MemberView

__all__ = ["STATUS_SCHEMA_VERSION", "active_hosts", "status_document"]

STATUS_SCHEMA_VERSION = 1


def _member(view: MemberView, prime_versions: dict[str, Any] | None, recent: int,
            total_recent: int, now_mono: float, now_wall: float) -> dict[str, Any]:
    h = view.health
    last = h.last
    versions = dict(h.versions.raw) if h.versions else None
    return {
        "name": view.name,
        "kind": view.member.kind.value,
        "url": view.url,
        "prime": view.member.prime,
        "weight": view.member.weight,
        "effective_weight": round(view.effective_weight, 3),
        "state": view.status.value,
        "reason": view.reason,
        "checks": [
            {"service": c.service, "ok": c.ok, "ignore_failure": c.ignore_failure}
            for c in (h.report.checks if h.report else ())
        ],
        "versions": versions,
        "versions_match": None if versions is None or prime_versions is None
        else versions == prime_versions,
        "pods": view.pods,
        "quota": view.quota,
        "capacity": view.capacity,
        "drain": None if view.drain is None else {
            "reason": view.drain.reason, "by": view.drain.by, "since": view.drain.since},
        "last_probe": None if last is None else {
            "ago_seconds": round(max(0.0, now_mono - last.at), 1),
            "at": round(now_wall - max(0.0, now_mono - last.at), 3),
            "latency_ms": round(last.latency * 1000, 1),
            "error": last.error,
        },
        "consecutive_failures": h.failures,
        "recent_launches": recent,
        "recent_share": round(recent / total_recent, 4) if total_recent else 0.0,
    }


def status_document(state: RouterState) -> dict[str, Any]:
    """Everything on-call staff need, as JSON-ready data."""
    table = state.table
    recent = state.recent_launches()
    total = sum(recent.values())
    prime = table.by_name[table.config.prime.name]
    prime_versions = dict(prime.health.versions.raw) if prime.health.versions else None
    now_mono, now_wall = state.clock(), time.time()
    rejection = state.rejection
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "status": table.status,
        "summary": _summary(state),
        "ready": state.ready,
        "panic": table.panic,
        "ui_member": table.ui.name,
        "strategy": table.config.routing.strategy.value,
        "config": {
            "source": table.config.source,
            "format": table.config.format,
            "generation": table.generation,
            "error": None if rejection is None else {
                "message": str(rejection.error), "source": rejection.error.source,
                "member": rejection.error.member, "field": rejection.error.field,
                "at": rejection.at,
            },
        },
        "drains_error": None if state.drain_error is None else str(state.drain_error),
        "recent_window_seconds": 600,
        "recent_launches": total,
        "members": [
            _member(v, prime_versions, recent.get(v.name, 0), total, now_mono, now_wall)
            for v in table.members
        ],
    }


def _summary(state: RouterState) -> str:
    table = state.table
    active = [m for m in table.members if m.member.weight > 0]
    if not table.routable:
        last_resort = table.fallback()
        if last_resort is not None:
            return (f"Down: no member is fit to take launches; they go to {last_resort.name} "
                    f"({last_resort.status.value}) as a last resort.")
        return "Down: no member can take launches; launches are refused with 503."
    out = [m for m in active if m not in table.routable]
    ui = f"{table.ui.name} serves the UI"
    if not out:
        return f"Healthy: all {len(active)} members take launches; {ui}."
    names = ", ".join(f"{m.name} ({m.status.value})" for m in out)
    return (f"Degraded: {len(table.routable)} of {len(active)} members take launches; "
            f"out: {names}; {ui}.")


def active_hosts(state: RouterState) -> dict[str, Any]:
    """``/active_hosts`` in today's redirector's shape: the members taking launches."""
    return {
        "active_hosts": {
            m.name: {
                "prime": m.member.prime,
                "url": m.url,
                "weight": m.member.weight,
                "health": m.member.health_url,
                "versions": m.member.versions_url,
            }
            for m in state.table.routable
        }
    }
