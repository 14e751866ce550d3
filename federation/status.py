"""The on-call view of the federation: one document, rendered as JSON, HTML and a CLI table.

``status_document`` builds the data from the router's state; the HTML page
(``render_status_html``), the JSON answer and ``federation status`` (``format_status_table``)
all render that one document, so they can never disagree. The renderers are pure functions of
the document, which is also what ``federation status`` receives over HTTP.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from federation.config import VersionPolicy
from federation.errors import FederationError
from federation.health import MemberHealth, Versions, versions_match
from federation.runtime import RECENT_WINDOW, RouterState
from federation.table import MemberStatus, MemberView

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "PAGE_REFRESH_SECONDS",
    "STATUS_SCHEMA_VERSION",
    "StatusUnavailable",
    "active_hosts",
    "fetch_status",
    "format_status_table",
    "prefers_html",
    "render_status_html",
    "status_document",
]

STATUS_SCHEMA_VERSION = 1
PAGE_REFRESH_SECONDS = 5  # the page reloads itself: no JavaScript, and a drain shows quickly



@functools.cache
def _page() -> jinja2.Template:
    """The page template, loaded on the first page view: a router nobody looks at in a
    browser never holds Jinja (about 2.5 MiB of resident memory)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("federation", "templates"),
        autoescape=True,  # every value on the page comes from members, operators or config
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("status.html")


class StatusUnavailable(FederationError):
    """The status document of a router could not be fetched; says why in plain words."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{reason} ({url})")


# -- the document ---------------------------------------------------------------------------


def _member(view: MemberView, h: MemberHealth, prime_versions: Versions | None,
            policy: VersionPolicy, recent: int, total_recent: int, uncounted: int,
            now_mono: float, now_wall: float) -> dict[str, Any]:
    """One member: state and reason as routing sees them, probe details from ``h`` (live);
    ``uncounted``: the launches sent to it that its pods are not sure to include yet."""
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
        # Fetched every ``versions_interval`` while in rotation: say how old they are.
        "versions_ago_seconds": None if h.versions_at is None
        else round(max(0.0, now_mono - h.versions_at), 1),
        # Judged as routing judges them (the federation's version policy), not byte for byte.
        "versions_match": None if h.versions is None or prime_versions is None
        else versions_match(policy, h.versions, prime_versions),
        "pods": view.pods,
        "launches_not_in_pods": uncounted,
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
        "probe_state": h.state.value,
        "probe_reason": h.reason,
        "consecutive_failures": h.failures,
        "recent_launches": recent,
        "recent_share": round(recent / total_recent, 4) if total_recent else 0.0,
    }


def status_document(state: RouterState) -> dict[str, Any]:
    """Everything on-call staff need, as JSON-ready data (schema: config/status.schema.json)."""
    table = state.table
    recent = state.recent_launches()
    total = sum(recent.values())
    uncounted = state.sent.counts
    # The table is rebuilt only when routing changes; probe details come from the live health.
    healths = {v.name: state.healths.get(v.name, v.health) for v in table.members}
    prime = healths[table.config.prime.name]
    prime_versions = prime.versions
    policy = table.config.health.versions
    now_mono, now_wall = state.clock(), time.time()
    rejection = state.rejection
    return {
        "schema": STATUS_SCHEMA_VERSION,
        "generated_at": round(now_wall, 3),
        "status": "degraded" if table.panic and table.status == "healthy" else table.status,
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
        "recent_window_seconds": int(RECENT_WINDOW),
        "recent_launches": total,
        "members": [
            _member(v, healths[v.name], prime_versions, policy, recent.get(v.name, 0), total,
                    uncounted.get(v.name, 0), now_mono, now_wall)
            for v in table.members
        ],
    }


def _summary(state: RouterState) -> str:
    """The header sentence: healthy, degraded or down, and who serves the UI."""
    table = state.table
    ui = table.ui
    prime = table.config.prime.name
    ui_text = (f"{ui.name} serves the UI" if ui.name == prime
               else f"{ui.name} serves the UI while the prime {prime} is out")
    active = [m for m in table.members if m.member.weight > 0]
    if not table.routable:
        last_resort = table.fallback()
        if last_resort is not None:
            return (f"Down: no member is fit to take launches; they go to {last_resort.name} "
                    f"({last_resort.status.value}) as a last resort; {ui_text}.")
        return f"Down: no member can take launches; launches are refused with 503; {ui_text}."
    if table.panic:
        healthy = sum(1 for m in active if m.status is MemberStatus.HEALTHY)
        return (f"Degraded (panic): only {healthy} of {len(active)} members are healthy, so "
                f"launches are spread over all {len(table.routable)} undrained members; "
                f"{ui_text}.")
    out = [m for m in active if m not in table.routable]
    if not out:
        return f"Healthy: all {len(active)} members take launches; {ui_text}."
    names = ", ".join(f"{m.name} ({m.status.value})" for m in out)
    return (f"Degraded: {len(table.routable)} of {len(active)} members take launches; "
            f"out: {names}; {ui_text}.")


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


# -- content negotiation ----------------------------------------------------------------------


def _quality(accept: str, media_type: str) -> float:
    """The q-value ``accept`` gives ``media_type``: the most specific matching range wins."""
    major = media_type.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        range_, *params = (p.strip() for p in item.split(";"))
        specificity = {media_type: 2, f"{major}/*": 1, "*/*": 0}.get(range_.lower(), -1)
        if specificity <= best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1]


def prefers_html(accept: str) -> bool:
    """Whether a client wants the page rather than JSON (browsers do; curl and scripts not).

    JSON is the default: only a client that ranks ``text/html`` above ``application/json``
    gets HTML, so ``Accept: */*`` and a missing header both mean JSON.
    """
    return _quality(accept, "text/html") > _quality(accept, "application/json")


# -- the HTML page ----------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    """A duration as a person says it: 45 s, 12 min, 3 h 4 min, 2 d 5 h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _since(iso: str, now: float) -> str:
    """An ISO timestamp with how long ago it was; the text as given when it does not parse."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if at.tzinfo is None:
        return iso
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({_ago(now - at.timestamp())} ago)"


def _version_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _versions(member: Mapping[str, Any],
              prime: Mapping[str, Any] | None) -> list[tuple[str, str, bool]]:
    """(key, value, differs from the prime) for each reported version worth a line.

    Plain version strings are always shown; structured entries (``builder_info`` repeats
    ``builder``) only when they differ from the prime's.
    """
    mine = member["versions"] or {}
    theirs = (prime or {}).get("versions") or {}
    rows = []
    for key in sorted(mine):
        differs = not member["prime"] and bool(theirs) and mine[key] != theirs.get(key)
        if isinstance(mine[key], str) or differs:
            rows.append((key, _version_text(mine[key]), differs))
    return rows


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 100.0 if part > 0 else 0.0
    return round(min(100.0, max(0.0, 100.0 * part / whole)), 1)


def _number(value: float) -> str:
    return f"{value:g}"


def _page_member(member: Mapping[str, Any], prime: Mapping[str, Any] | None,
                 now: float) -> dict[str, Any]:
    """What the template shows of one member, with the arithmetic done here."""
    pods, quota, capacity = member["pods"], member["quota"], member["capacity"]
    drain = member["drain"]
    return {
        **member,
        "weight_text": _number(member["weight"]),
        "effective_text": _number(member["effective_weight"]),
        "version_rows": _versions(member, prime),
        "pods_percent": _percent(pods, quota) if pods is not None and quota is not None
        else None,
        "capacity_percent": _percent(capacity, quota) if capacity is not None and quota
        else None,
        "over_capacity": pods is not None and capacity is not None and pods >= capacity,
        "share_percent": round(100 * member["recent_share"], 1),
        "drain_since": _since(drain["since"], now) if drain and drain["since"] else None,
        "probe_ago": (_ago(member["last_probe"]["ago_seconds"])
                      if member["last_probe"] else None),
        "versions_ago": (_ago(member["versions_ago_seconds"])
                         if member["versions_ago_seconds"] is not None else None),
    }


def render_status_html(document: Mapping[str, Any]) -> str:
    """The on-call page for ``document``: server-rendered, escaped, readable on a phone."""
    now = float(document["generated_at"])
    prime = next((m for m in document["members"] if m["prime"]), None)
    error = document["config"]["error"]
    word, _, rest = document["summary"].partition(": ")
    headline = rest if rest and word.lower().startswith(document["status"]) else None
    return _page().render(
        doc=document,
        headline=headline or document["summary"],
        members=[_page_member(m, prime, now) for m in document["members"]],
        generated=f"{datetime.fromtimestamp(now, UTC):%Y-%m-%d %H:%M:%S} UTC",
        window=_ago(document["recent_window_seconds"]),
        config_error_ago=_ago(now - error["at"]) if error else None,
        refresh=PAGE_REFRESH_SECONDS,
    )


# -- `federation status` ----------------------------------------------------------------------


async def fetch_status(router: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The status document of the router at ``router`` (a base URL, or host:port)."""
    from federation.app import STATUS_PATH  # app imports this module

    base = router if "://" in router else f"http://{router}"
    url = base.rstrip("/")
    if not url.endswith(STATUS_PATH):
        url += STATUS_PATH
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers={"Accept": "application/json"},
                        allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise StatusUnavailable(url, f"the router answered HTTP {response.status}, "
                                             "not a status document; is this a federation "
                                             "router?")
            body = await response.read()
    except TimeoutError:
        raise StatusUnavailable(url, f"the router did not answer within {timeout:g} s") from None
    except aiohttp.InvalidURL:
        raise StatusUnavailable(url, "this is not a valid router URL") from None
    except aiohttp.ClientConnectorError as e:
        raise StatusUnavailable(url, f"cannot reach the router: {e.strerror or e}") from e
    except aiohttp.ClientError as e:
        raise StatusUnavailable(url, f"the router broke off its answer ({type(e).__name__})"
                                ) from e
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict) or not isinstance(document.get("members"), list):
        raise StatusUnavailable(url, "the router's answer is not a status document")
    if document.get("schema") != STATUS_SCHEMA_VERSION:
        raise StatusUnavailable(url, f"the router sends status schema {document.get('schema')!r}"
                                     f", this command reads {STATUS_SCHEMA_VERSION}; use the "
                                     "router's own version of federation")
    return document


def format_status_table(document: Mapping[str, Any]) -> str:
    """The document as text for a terminal: the header sentence, then one line per member."""
    rows = [("MEMBER", "STATE", "WEIGHT", "LAUNCHES", "REASON")]
    for m in document["members"]:
        reason = m["reason"]
        drain = m["drain"]
        if drain and drain["since"]:
            reason += f" (since {drain['since']})"
        rows.append((
            m["name"] + (" *" if m["name"] == document["ui_member"] else ""),
            m["state"],
            f"{_number(m['weight'])}/{_number(m['effective_weight'])}",
            f"{100 * m['recent_share']:.0f}% ({m['recent_launches']})",
            reason,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [document["summary"], ""]
    lines += ["  ".join([*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4]])
              .rstrip() for row in rows]
    minutes = document["recent_window_seconds"] // 60
    lines += ["", f"* serves the UI.  WEIGHT is configured/effective.  LAUNCHES: share of the "
                  f"{document['recent_launches']} launches of the last {minutes} min."]
    error = document["config"]["error"]
    if error:
        lines.append(f"Config reload rejected, the last good config stays in force: "
                     f"{error['message']}")
    if document["drains_error"]:
        lines.append(f"Drains document rejected, the drains in force stay: "
                     f"{document['drains_error']}")
    lines.append(f"Config {document['config']['source']}, generation "
                 f"{document['config']['generation']}; strategy {document['strategy']}.")
    return "\n".join(lines)
