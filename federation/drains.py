"""Operators' drain decisions, kept apart from the declarative config.

GitOps owns the config; on-call staff own drains. Keeping them in separate documents means a
3 a.m. ``federation drain`` never fights the next config sync, and a config reload never undoes
a drain. The document is small YAML::

    drains:
      gesis:
        reason: "registry timeouts, see incident 42"
        by: alice
        since: "2026-11-27T03:12:00+00:00"

This module holds the pure part (the document and its edits) and the file store; the
Kubernetes ConfigMap store lives in ``drainstore_k8s``-style code built on ``federation.kube``.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from federation.errors import ConfigError

__all__ = [
    "Drain",
    "Drains",
    "FileDrainStore",
    "current_user",
    "dump_drains",
    "parse_drains",
    "with_drain",
    "without_drain",
]

Drains = Mapping[str, "Drain"]


@dataclass(frozen=True, slots=True)
class Drain:
    """One member taken out of rotation by an operator: why, by whom, since when."""

    member: str
    reason: str
    by: str = "unknown"
    since: str = ""  # ISO 8601; kept as text so the document round-trips exactly


def current_user() -> str:
    """Who is draining, for the record: the login name, else 'unknown'."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def parse_drains(text: str | None, *, source: str = "<drains>") -> Drains:
    """Read a drains document; empty or missing means no drains."""
    if not text or not text.strip():
        return MappingProxyType({})
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=source) from e
    if data is None:
        return MappingProxyType({})
    entries = data.get("drains") if isinstance(data, Mapping) else None
    if entries is None:
        entries = {}
    if not isinstance(entries, Mapping):
        raise ConfigError("'drains' must be a mapping of member name to drain",
                          source=source, field="drains")
    out: dict[str, Drain] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("reason"), str):
            raise ConfigError("each drain needs a 'reason' text", source=source,
                              member=str(name), field="reason")
        out[str(name)] = Drain(member=str(name), reason=entry["reason"],
                               by=str(entry.get("by", "unknown")),
                               since=str(entry.get("since", "")))
    return MappingProxyType(out)


def dump_drains(drains: Drains) -> str:
    """The drains document as YAML text."""
    body: dict[str, Any] = {
        name: {"reason": d.reason, "by": d.by, "since": d.since}
        for name, d in sorted(drains.items())
    }
    return yaml.safe_dump({"drains": body}, sort_keys=False)


def with_drain(drains: Drains, member: str, *, reason: str, by: str) -> Drains:
    """``drains`` plus (or with a refreshed) drain of ``member``."""
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return MappingProxyType({**drains, member: Drain(member, reason, by, since)})


def without_drain(drains: Drains, member: str) -> Drains:
    """``drains`` without ``member``'s drain."""
    return MappingProxyType({k: v for k, v in drains.items() if k != member})


class FileDrainStore:
    """Drains in a local YAML file (the default, next to the config file).

    Writes replace the file atomically so a watching router never reads half a document.
    Watching polls the file's modification time: cheap, and works on every filesystem,
    including ConfigMap volumes whose files change by symlink swaps.
    """

    def __init__(self, path: str | Path, *, poll_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"FileDrainStore({str(self.path)!r})"

    def read_text(self) -> str | None:
        """The document's text, None when the file does not exist yet."""
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read(self) -> Drains:
        """The drains in force now."""
        return parse_drains(self.read_text(), source=str(self.path))

    def write(self, drains: Drains) -> None:
        """Replace the document atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".drains-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dump_drains(drains))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def watch(self) -> AsyncIterator[str | None]:
        """Yield the document's text now and whenever the file changes."""
        last: tuple[float, int, int] | None = None
        first = True
        while True:
            try:
                st = self.path.stat()
                stamp: tuple[float, int, int] | None = (st.st_mtime, st.st_size, st.st_ino)
            except FileNotFoundError:
                stamp = None
            if first or stamp != last:
                first, last = False, stamp
                yield self.read_text()
            await asyncio.sleep(self.poll_interval)
