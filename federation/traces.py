"""Launch traces for the placement simulator: the mybinder.org archive and a Zipf workload.

A trace is launches in time order, each with the repository's placement key (parsed by the
router's own ``parse_launch``, so simulated keys are the served ones) and a session lifetime.
The public archive (https://archive.analytics.mybinder.org/, one ``events-YYYY-MM-DD.jsonl``
per day) has one JSON object per launch: ``timestamp`` (UTC, rounded to the minute),
``provider`` (BinderHub's display name, e.g. ``GitHub``), ``spec``, ``status`` and, since
mid-2019, ``origin`` (the member that served it). It holds no session lifetimes, so those are
drawn from an exponential distribution, as in the synthetic workload of hashing.md §2.4.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from federation.errors import FederationError, LaunchPathError
from federation.launch import LaunchKey, parse_launch

__all__ = [
    "ARCHIVE_PROVIDERS",
    "Launch",
    "Trace",
    "TraceError",
    "ZipfWorkload",
    "read_archive",
    "zipf_trace",
]

# The archive names providers by BinderHub's display name; launch paths use the URL prefix.
ARCHIVE_PROVIDERS = {
    "GitHub": "gh", "Gist": "gist", "GitLab": "gl", "Git": "git", "Zenodo": "zenodo",
    "Figshare": "figshare", "Hydroshare": "hydroshare", "Dataverse": "dataverse", "CKAN": "ckan",
}
_ARCHIVE_RESOLUTION = 60.0  # the archive rounds timestamps to the minute


class TraceError(FederationError):
    """A trace file that cannot be read as launch events; names the line."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        super().__init__(f"{source}:{line}: {reason}")


@dataclass(frozen=True, slots=True)
class Launch:
    """One launch of a trace: when (seconds from the start), what, and how long it runs."""

    at: float
    launch: LaunchKey
    lifetime: float


@dataclass(frozen=True, slots=True)
class Trace:
    """Launches in time order, with where they came from."""

    launches: tuple[Launch, ...]
    description: str
    skipped: int = 0  # events that are not successful launches of a routable path

    @property
    def duration(self) -> float:
        """Seconds from the first launch to the last."""
        return self.launches[-1].at - self.launches[0].at if self.launches else 0.0

    def launches_per_key(self) -> Counter[str]:
        """How often each repository (placement key) is launched."""
        return Counter(item.launch.key for item in self.launches)

    def concurrency(self) -> float:
        """Mean sessions running at once: arrival rate times mean session lifetime."""
        if len(self.launches) < 2 or self.duration <= 0:
            return float(len(self.launches))
        mean_life = sum(item.lifetime for item in self.launches) / len(self.launches)
        return len(self.launches) / self.duration * mean_life


@dataclass(frozen=True, slots=True)
class ZipfWorkload:
    """The synthetic workload of hashing.md §2.4; the defaults are that section's."""

    repos: int = 50_000
    exponent: float = 1.0
    launches: int = 200_000
    rate: float = 1.0  # launches per second, Poisson arrivals
    session_lifetime: float = 1000.0  # mean seconds, exponential: mean concurrency 1000
    seed: int = 20261127


def zipf_trace(workload: ZipfWorkload) -> Trace:
    """Launches of repository k with probability proportional to 1/k^exponent."""
    w = workload
    rng = random.Random(w.seed)
    cumulative = list(itertools.accumulate(1.0 / k**w.exponent for k in range(1, w.repos + 1)))
    picks = rng.choices(range(w.repos), cum_weights=cumulative, k=w.launches)
    keys: dict[int, LaunchKey] = {}
    launches: list[Launch] = []
    at = 0.0
    for r in picks:
        key = keys.get(r)
        if key is None:
            key = keys[r] = parse_launch(f"/build/gh/org{r % 997}/repo{r}/HEAD")
        launches.append(Launch(at, key, rng.expovariate(1.0 / w.session_lifetime)))
        at += rng.expovariate(w.rate)
    return Trace(tuple(launches),
                 f"synthetic Zipf {w.exponent:g} over {w.repos:,} repositories, arrivals "
                 f"{w.rate:g}/s, sessions {w.session_lifetime:g} s on average, seed {w.seed}")


def read_archive(paths: Sequence[str | Path], *, session_lifetime: float, seed: int) -> Trace:
    """Launch events from archive files (plain or ``.gz`` JSON lines), merged in time order.

    A directory stands for its ``*.jsonl`` and ``*.jsonl.gz`` files, so a folder of downloaded
    days can be replayed as one trace.

    Events whose ``status`` is not ``success`` or whose path the router would refuse are
    skipped and counted. Launches that share a (minute-rounded) timestamp are spread evenly
    over the time to the next one, at most a minute, so they do not all arrive at once.
    """
    rng = random.Random(seed)
    events: list[tuple[float, LaunchKey]] = []
    skipped = 0
    files = [f for p in map(Path, paths)
             for f in (sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")]) if p.is_dir() else [p])]
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                when, key = _archive_event(line, str(path), number)
                if key is None:
                    skipped += 1
                else:
                    events.append((when, key))
    events.sort(key=lambda e: e[0])
    start = events[0][0] if events else 0.0
    times = _spread([when - start for when, _ in events])
    launches = tuple(Launch(at, key, rng.expovariate(1.0 / session_lifetime))
                     for at, (_, key) in zip(times, events, strict=True))
    names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more"
                                                    if len(files) > 3 else "")
    return Trace(launches, f"{names} (launch events archive format)", skipped)


def _archive_event(line: str, source: str, number: int) -> tuple[float, LaunchKey | None]:
    try:
        event = json.loads(line)
    except ValueError:
        raise TraceError(source, number, "not a JSON object") from None
    if not isinstance(event, dict):
        raise TraceError(source, number, "not a JSON object")
    fields = [event.get(name) for name in ("timestamp", "provider", "spec")]
    if not all(isinstance(f, str) for f in fields):
        raise TraceError(source, number, "needs 'timestamp', 'provider' and 'spec' strings")
    stamp, provider, spec = (str(f) for f in fields)
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        raise TraceError(source, number, f"timestamp {stamp[:40]!r} is not ISO 8601") from None
    when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if event.get("status", "success") != "success":
        return when, None
    prefix = ARCHIVE_PROVIDERS.get(provider, provider.lower())
    try:
        return when, parse_launch(f"/build/{prefix}/{spec}")
    except LaunchPathError:
        return when, None


def _spread(times: list[float]) -> list[float]:
    """Sorted times with each run of equal ones spread over the gap to the next."""
    groups = [(at, len(list(run))) for at, run in itertools.groupby(times)]
    out: list[float] = []
    for (at, count), following in itertools.zip_longest(groups, groups[1:]):
        gap = _ARCHIVE_RESOLUTION if following is None else following[0] - at
        step = min(gap, _ARCHIVE_RESOLUTION) / count
        out.extend(at + k * step for k in range(count))
    return out
