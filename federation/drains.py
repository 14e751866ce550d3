"""Operators' drain decisions, kept apart from the declarative config.

GitOps owns the config; on-call staff own drains. Keeping them in separate documents means a
3 a.m. ``federation drain`` never fights the next config sync, and a config reload never undoes
a drain. The document is small YAML::

    drains:
      gesis:
        reason: "registry timeouts, see incident 42"
        by: alice
        since: "2026-11-27T03:12:00+00:00"

This module holds the pure part (the document, its edits and the rules an operator's drain
must follow) and the file store. The ConfigMap store, which needs the Kubernetes client, is in
``federation.stores``; both answer to ``DrainStore``, so ``federation drain`` is one code path.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import yaml

from federation.config import Config
from federation.errors import ConfigError, DrainError

__all__ = [
    "Drain",
    "DrainStore",
    "Drains",
    "FileDrainStore",
    "current_user",
    "drain_member",
    "dump_drains",
    "parse_drains",
    "undrain_member",
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


def drain_member(drains: Drains, config: Config, member: str, *, reason: str, by: str,
                 force: bool = False) -> Drains:
    """``drains`` plus an operator's drain of ``member``, or DrainError saying why not.

    Judged on the drains read just now (a store retries this on a write conflict), from the
    config alone: health is not known here, so "taking launches" means weight > 0 and not
    drained. Without ``force`` the last such member is refused, because afterwards every
    launch is refused (a drained prime is no fallback).
    """
    if config.member(member) is None:
        known = ", ".join(m.name for m in config.members)
        raise DrainError(member, f"no member called {member!r}; members are: {known}")
    if not reason.strip():
        raise DrainError(member, "give a --reason: the status page and the next shift need it")
    left = [m.name for m in config.members
            if m.weight > 0 and not m.drain and m.name not in drains and m.name != member]
    if not left and not force:
        raise DrainError(member, f"{member} is the last member taking launches; after this "
                         "every launch is refused with 503 until a member is undrained. "
                         "Repeat with --force if that is what you want")
    return with_drain(drains, member, reason=reason, by=by)


def undrain_member(drains: Drains, config: Config, member: str) -> Drains:
    """``drains`` without ``member``'s drain, or DrainError when there is none to remove."""
    if member in drains:
        return without_drain(drains, member)
    configured = config.member(member)
    if configured is None:
        raise DrainError(member, f"no member called {member!r}")
    if configured.drain:
        raise DrainError(member, f"{member} is drained in the config itself ('drain: "
                         f"{configured.drain}'); remove that line from the config")
    raise DrainError(member, f"{member} is not drained")


class DrainStore(Protocol):
    """Where drains are kept: read, changed safely against other operators, and watched."""

    name: str

    async def load(self) -> Drains:
        """The drains in force now."""
        ...

    async def update(self, edit: Callable[[Drains], Drains]) -> Drains:
        """Apply ``edit`` to the current drains and store the result; returns it.

        ``edit`` may run more than once (after a concurrent write) and may raise DrainError.
        """
        ...

    def watch(self) -> AsyncIterator[str | None]:
        """Yield the document's text now and whenever it changes."""
        ...


class FileDrainStore:
    """Drains in a local YAML file (the default, next to the config file).

    Writes replace the file atomically so a watching router never reads half a document.
    Watching polls the file's modification time: cheap, and works on every filesystem,
    including ConfigMap volumes whose files change by symlink swaps.
    """

    def __init__(self, path: str | Path, *, poll_interval: float = 0.25) -> None:
        self.path = Path(path)
        self.name = str(self.path)
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

    async def load(self) -> Drains:
        """The drains in force now."""
        return self.read()

    async def update(self, edit: Callable[[Drains], Drains]) -> Drains:
        """Read, edit and write back under an exclusive lock, so two operators' edits both
        land (the rename alone would let the second writer drop the first one's drain)."""
        return await asyncio.to_thread(self._update_locked, edit)

    def _update_locked(self, edit: Callable[[Drains], Drains]) -> Drains:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            drains = edit(self.read())
            self.write(drains)
        return drains

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
