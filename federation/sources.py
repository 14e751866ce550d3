"""Where the config comes from, watched: a local file, or a key of a Kubernetes ConfigMap.

A source only yields text; validating it and deciding what to keep is the runtime's job, so a
broken edit never replaces the last good config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

__all__ = ["ConfigSource", "FileConfigSource"]


class ConfigSource(Protocol):
    """Something that yields config text now and whenever it changes."""

    name: str

    def watch(self) -> AsyncIterator[str | None]:
        """Yield the current text, then each new text (None: the document is missing)."""
        ...

    def reload_now(self) -> None:
        """Re-read at once (SIGHUP), even if nothing seems to have changed."""
        ...


class FileConfigSource:
    """A config file, polled for changes (modification time, size, inode).

    Polling is deliberate: it sees edits, atomic renames and the symlink swaps of ConfigMap
    volumes alike, on every filesystem, at the cost of one ``stat`` per interval.
    """

    def __init__(self, path: str | Path, *, poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()

    def reload_now(self) -> None:
        """Re-read at once, even if nothing seems to have changed."""
        self._wake.set()

    def _stamp(self) -> tuple[float, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    def _read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return None

    async def watch(self) -> AsyncIterator[str | None]:
        """Yield the file's text now and after every change or ``reload_now``."""
        last = self._stamp()
        yield self._read()
        while True:
            forced = False
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
                    forced = True
            except TimeoutError:
                pass
            self._wake.clear()
            stamp = self._stamp()
            if forced or stamp != last:
                last = stamp
                yield self._read()
