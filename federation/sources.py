"""Where the config comes from, watched: a local file, or a key of a Kubernetes ConfigMap.

A source only yields text; validating it and deciding what to keep is the runtime's job, so a
broken edit never replaces the last good config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from federation.kube import ConfigMapRef, watch_configmap

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

__all__ = ["ConfigMapConfigSource", "ConfigSource", "FileConfigSource"]

_T = TypeVar("_T")


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


class ConfigMapConfigSource:
    """A config kept under one key of a ConfigMap, followed with the Kubernetes watch API.

    Every replica sees an edit within a second or so of the API server accepting it, without
    the minute-long delay of a ConfigMap volume. ``watch_options`` go to
    ``kube.watch_configmap`` (backoff, inactivity timeout).
    """

    def __init__(self, api: ApiClient, ref: ConfigMapRef, **watch_options: Any) -> None:
        self.api = api
        self.ref = ref
        self.name = f"configmap:{ref}"
        self._watch_options = watch_options
        self._relist = asyncio.Event()

    def reload_now(self) -> None:
        """Drop the watch and list again (SIGHUP): the way out of a stream that seems stuck
        before its inactivity timeout notices."""
        self._relist.set()

    async def watch(self) -> AsyncIterator[str | None]:
        """Yield the key's text now and after every change; None while it is missing."""
        while True:
            self._relist.clear()
            values = watch_configmap(self.api, self.ref, **self._watch_options)
            async with contextlib.aclosing(values):
                async for text in _until(values, self._relist):
                    yield text


async def _until(values: AsyncIterator[_T], stop: asyncio.Event) -> AsyncIterator[_T]:
    """The items of ``values`` until ``stop`` is set, abandoning a wait for the next one."""
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[_T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(values))
            await asyncio.wait((step, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            yield step.result()
    finally:
        for future in (step, stopped):
            if future is not None:
                future.cancel()
        await asyncio.gather(*(f for f in (step, stopped) if f is not None),
                             return_exceptions=True)
