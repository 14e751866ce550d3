"""The probes' HTTP client: small GETs over kept-alive HTTP/1.1 connections.

Probing a hundred members every second is 200 GETs a second on the event loop that also
answers launches. Through aiohttp's client each cost nearly three times the CPU it costs here
(291 µs against 106 in one run; benchmarks/HISTORY.md): request and response objects, header
merging, stream readers, timers, none of which a probe needs. Here each URL becomes one fixed
request, written as it is, and the answer is parsed by httptools (llhttp, Node.js's parser)
into a status and a body capped at the caller's limit.

Only what probes need: GET without redirects, cookies, proxies or compression (none is
asked for), one deadline over the whole fetch, TLS through asyncio. Whatever a member does
wrong becomes a :class:`ProbeError` whose reason on-call staff can read; nothing it sends can
grow memory past the body cap plus ``_HEAD_BYTES``.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass
from typing import cast

import httptools
import yarl

from federation.errors import ProbeError

__all__ = ["Fetcher"]

_HEAD_BYTES = 65536  # status line and headers a member may send besides the body
_IDLE_PER_ORIGIN = 2  # /health and /versions are fetched in parallel


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL made ready to send: where to connect and the request's bytes."""

    origin: tuple[str, int, bool]  # host, port, TLS
    request: bytes
    closing_request: bytes  # the same with "Connection: close" (one-off rounds)


@functools.lru_cache(maxsize=1024)
def _target(url: str, user_agent: str) -> _Target:
    """Parse ``url`` and write its request once; probes ask for the same URLs every round."""
    u = yarl.URL(url)
    if u.scheme not in ("http", "https") or not u.raw_host:
        raise ProbeError("bad URL", url)
    head = (f"GET {u.raw_path_qs or '/'} HTTP/1.1\r\nHost: {u.host_port_subcomponent}\r\n"
            f"User-Agent: {user_agent}\r\nAccept: application/json\r\n")
    return _Target((u.raw_host, u.port or 0, u.scheme == "https"), f"{head}\r\n".encode(),
                   f"{head}Connection: close\r\n\r\n".encode())


class _Connection(asyncio.Protocol):
    """One connection to a member, carrying one request at a time.

    Parser callbacks fill the answer; the first thing that goes wrong settles ``_waiter``
    with a ``ProbeError`` and closes the connection, and everything after is ignored.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.reusable = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._url = ""
        self._limit = 0
        self._received = 0
        self._status = 0
        self._body = bytearray()
        self._framed = False  # the answer says where it ends (length or chunks)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        if exc is None and self._status and not self._framed:
            self._settle()  # an answer without length or chunks ends when the member closes
        else:
            what = type(exc).__name__ if exc else "closed by the member"
            self._fail("connection closed", f"{self._url}: {what}")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._received += len(data)
        if self._received > self._limit + _HEAD_BYTES:
            self._fail("answer too large", f"{self._url} sent more than {self._limit} bytes")
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail("bad answer (not HTTP)", f"{self._url}: {e}")

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # a second answer in the same bytes: nobody asked for it

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":
            self._framed = True
            if value.strip().isdigit() and int(value) > self._limit:
                self._fail("answer too large",
                           f"{self._url} announced {int(value)} bytes")
        elif name == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status in (204, 304) or self._status < 200:
            self._framed = True  # no body follows

    def on_body(self, body: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            return
        self._body += body
        if len(self._body) > self._limit:
            self._fail("answer too large", f"{self._url} sent more than {self._limit} bytes")

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self.reusable = self._parser.should_keep_alive()
            self._settle()

    # -- requests ---------------------------------------------------------------------------

    def request(self, data: bytes, url: str, limit: int) -> asyncio.Future[tuple[int, bytes]]:
        """Send one request; the future settles with (status, body) or a ``ProbeError``."""
        assert self.transport is not None
        self.reusable = False
        self._url, self._limit, self._received, self._status = url, limit, 0, 0
        self._body = bytearray()
        self._framed = False
        self._waiter = self._loop.create_future()
        self.transport.write(data)
        return self._waiter

    @property
    def got_nothing(self) -> bool:
        """Whether the member sent no byte of the current answer."""
        return self._received == 0

    def expire(self, timeout: float) -> None:
        """The deadline passed: give up on the answer and the connection."""
        self._fail(f"timeout after {timeout:g}s", self._url)

    def _settle(self) -> None:
        assert self._waiter is not None
        self._waiter.set_result((self._status, bytes(self._body)))

    def _fail(self, reason: str, detail: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ProbeError(reason, detail))
        self.close()

    def close(self) -> None:
        """Drop the connection at once (abort: nothing more is worth waiting for)."""
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class Fetcher:
    """GETs of small documents from members, keeping two idle connections per member.

    ``keep_alive=False`` asks members to close after each answer (one-off rounds such as
    ``federation check --probe``).
    """

    def __init__(self, *, user_agent: str, keep_alive: bool = True) -> None:
        self._user_agent = user_agent
        self._keep_alive = keep_alive
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def get(self, url: str, *, limit: int, timeout: float) -> tuple[int, bytes]:
        """(status, body) of ``url``, all within ``timeout`` seconds.

        Raises ``ProbeError``: unreachable, TLS failure, timeout, connection closed, answer
        too large, or not HTTP. A kept-alive connection the member closed while idle is
        retried once on a new one, as browsers do for GETs.
        """
        target = _target(url, self._user_agent)
        loop = asyncio.get_running_loop()  # once per GET: each asks the OS for the pid
        deadline = loop.time() + timeout
        idle = self._idle.get(target.origin)
        while idle:
            conn = idle.pop()
            if conn.reusable:
                try:
                    return await self._exchange(loop, conn, target, url, limit, deadline,
                                                timeout)
                except ProbeError as e:
                    if e.reason != "connection closed" or not conn.got_nothing:
                        raise
        conn = await self._connect(loop, target, url, deadline, timeout)
        return await self._exchange(loop, conn, target, url, limit, deadline, timeout)

    async def _exchange(self, loop: asyncio.AbstractEventLoop, conn: _Connection,
                        target: _Target, url: str, limit: int, deadline: float,
                        timeout: float) -> tuple[int, bytes]:
        data = target.request if self._keep_alive else target.closing_request
        answer = conn.request(data, url, limit)
        timer = loop.call_at(deadline, conn.expire, timeout)
        try:
            result = await answer
        except BaseException:
            conn.close()  # cancelled or failed mid-answer: its state is unknown
            raise
        finally:
            timer.cancel()
        if conn.reusable and self._keep_alive:
            pool = self._idle.setdefault(target.origin, [])
            if len(pool) < _IDLE_PER_ORIGIN:
                pool.append(conn)
                return result
        conn.close()
        return result

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: _Target, url: str,
                       deadline: float, timeout: float) -> _Connection:
        host, port, secure = target.origin
        tls = self._tls_context() if secure else None
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=tls,
                    server_hostname=host if tls else None)
        except TimeoutError:
            raise ProbeError(f"timeout after {timeout:g}s", url) from None
        except ssl.SSLError as e:
            raise ProbeError("TLS handshake failed", f"{url}: {e.reason or e}") from None
        except OSError as e:
            raise ProbeError("unreachable", f"{url}: {e.strerror or e}") from None
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        """Made on the first https member: loading the CA store is not free."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def close(self) -> None:
        """Close every idle connection."""
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
