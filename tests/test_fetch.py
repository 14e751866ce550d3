"""The probes' HTTP client against raw servers on 127.0.0.1 that answer byte for byte.

Each server below plays one way a member can frame, end or botch an answer; the client must
return the body exactly or fail with the reason on-call staff will read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from federation.errors import ProbeError
from federation.fetch import Fetcher

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server that records what it was asked and on how many connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


@asynccontextmanager
async def serving(make: Callable[[Server], Handler]) -> AsyncIterator[Server]:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = make(server)
    listener = await asyncio.start_server(server._accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def answering(*answers: bytes, close: bool = False) -> Callable[[Server], Handler]:
    """A member that answers each request on a connection with the next of ``answers``."""
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                try:
                    await server.read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                writer.write(answer)
                await writer.drain()
                if close:
                    return
            await reader.read()  # keep the connection until the client closes it
        return handle
    return make


OK = b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n{"ok": true}'


async def test_answers_reuse_one_kept_alive_connection() -> None:
    async with serving(answering(OK, OK, OK)) as server, Fetcher(user_agent="t/1") as fetcher:
        for _ in range(3):
            assert await fetcher.get(server.url + "/health", limit=1000, timeout=2) == (
                200, b'{"ok": true}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"GET /health HTTP/1.1\r\n")
    assert f"Host: {server.url.removeprefix('http://')}".encode() in first
    assert b"User-Agent: t/1" in first and b"Connection: close" not in first


async def test_without_keep_alive_each_answer_closes_its_connection() -> None:
    async with serving(answering(OK, OK)) as server, \
            Fetcher(user_agent="t/1", keep_alive=False) as fetcher:
        await fetcher.get(server.url + "/health", limit=1000, timeout=2)
        await fetcher.get(server.url + "/health", limit=1000, timeout=2)
    assert server.connections == 2
    assert all(b"Connection: close" in r for r in server.requests)


async def test_a_connection_the_member_closed_while_idle_is_replaced_once() -> None:
    """The member answers once per connection and hangs up: the next GET finds its kept
    connection dead and retries on a fresh one instead of failing the probe."""
    async with serving(answering(OK, close=True)) as server, \
            Fetcher(user_agent="t/1") as fetcher:
        assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
        await asyncio.sleep(0.05)  # the close reaches the client
        assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
    assert server.connections == 2


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{"])
async def test_a_kept_connection_closed_under_a_request(partial: bytes) -> None:
    """The member takes the second request on a kept connection and hangs up. Without a
    byte sent (an idle timeout racing the request), the GET is repeated on a new connection;
    after part of an answer, the member did fail, and the probe says so."""
    def make(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await writer.drain()
            await server.read_request(reader)
            writer.write(partial)  # and close
        return handle

    async with serving(make) as server, Fetcher(user_agent="t/1") as fetcher:
        assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
        if partial:
            with pytest.raises(ProbeError, match="connection closed"):
                await fetcher.get(server.url + "/h", limit=100, timeout=2)
        else:
            assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
    assert server.connections == (1 if partial else 2)


@pytest.mark.parametrize(("answer", "status", "body"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n8\r\n\": true}\r\n"
     b"0\r\n\r\n", 200, b'{"ok": true}'),
    (b"HTTP/1.0 200 OK\r\n\r\n{\"ok\": true}", 200, b'{"ok": true}'),  # ends at the close
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}", 503, b"{}"),
])
async def test_bodies_however_framed(answer: bytes, status: int, body: bytes) -> None:
    async with serving(answering(answer, close=True)) as server, \
            Fetcher(user_agent="t/1") as fetcher:
        assert await fetcher.get(server.url + "/h", limit=100, timeout=2) == (status, body)


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "answer too large"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"40\r\n" + b"x" * 64 + b"\r\n" + b"40\r\n" + b"x" * 64 + b"\r\n", "answer too large"),
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 70000, "answer too large"),  # endless headers
    (b"SSH-2.0-OpenSSH_9.6\r\n", "bad answer (not HTTP)"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{\"ok\"", "connection closed"),
])
async def test_what_goes_wrong_is_named(answer: bytes, reason: str) -> None:
    async with serving(answering(answer, close=True)) as server, \
            Fetcher(user_agent="t/1") as fetcher:
        with pytest.raises(ProbeError) as caught:
            await fetcher.get(server.url + "/h", limit=100, timeout=2)
    assert caught.value.reason == reason
    assert server.url in caught.value.detail


async def test_a_silent_member_times_out_and_its_connection_is_dropped() -> None:
    def silent(server: Server) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            await reader.read()
        return handle

    async with serving(silent) as server, Fetcher(user_agent="t/1") as fetcher:
        with pytest.raises(ProbeError, match=r"timeout after 0.2s"):
            await fetcher.get(server.url + "/h", limit=100, timeout=0.2)
        with pytest.raises(ProbeError, match=r"timeout after 0.2s"):
            await fetcher.get(server.url + "/h", limit=100, timeout=0.2)
    assert server.connections == 2  # the first, its answer owed, was not reused


async def test_a_closed_port_is_unreachable() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    async with Fetcher(user_agent="t/1") as fetcher:
        with pytest.raises(ProbeError) as caught:
            await fetcher.get(f"http://127.0.0.1:{port}/health", limit=100, timeout=2)
    assert caught.value.reason == "unreachable"


async def test_bytes_nobody_asked_for_spoil_the_connection() -> None:
    """An answer followed by a second, unrequested one: the first is used, the connection is
    not (the extra bytes would be read as the next answer)."""
    async with serving(answering(OK + OK, OK)) as server, Fetcher(user_agent="t/1") as fetcher:
        assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
        await asyncio.sleep(0.05)
        assert (await fetcher.get(server.url + "/h", limit=100, timeout=2))[0] == 200
    assert server.connections == 2
