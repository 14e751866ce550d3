"""Hostile input against the running router, over raw loopback sockets.

Anyone can reach the router without an account, so these tests send what a browser never
would: open-redirect and header-injection attempts, absolute-form targets, forged cookies,
request smuggling, oversized and slow requests, and a seeded fuzz of request lines. The
promises checked everywhere: a ``Location`` starts with a configured member's URL, nothing is
answered with a 5xx, nothing unhandled is logged, and the UI proxy connects to the UI member
only — a second "evil" server on 127.0.0.1 must never see a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conftest import Federation, StartFederation
from tests.test_chaos import LogWatch

pytestmark = pytest.mark.timeout(10)


@dataclass
class Reply:
    """A raw HTTP answer: status, headers (names lower-cased, repeats kept) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, if any."""
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class EvilServer:
    """A loopback server no request to the router may ever make the router connect to."""

    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = field(default=None, repr=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


@contextlib.asynccontextmanager
async def evil_server() -> AsyncIterator[EvilServer]:
    """Serve an EvilServer on 127.0.0.1 for the block's duration."""
    evil = EvilServer()
    evil._server = await asyncio.start_server(evil._accept, "127.0.0.1", 0)
    evil.port = evil._server.sockets[0].getsockname()[1]
    try:
        yield evil
    finally:
        evil._server.close()
        await evil._server.wait_closed()


@contextlib.contextmanager
def nothing_unhandled() -> Iterator[LogWatch]:
    """Fail the test if the block makes the router log an unhandled exception."""
    with LogWatch() as logs:
        yield logs
    assert logs.problems() == []


async def send_raw(port: int, data: bytes, *, timeout: float = 3.0) -> Reply | None:
    """Write ``data`` to the router as is and read one answer (None: closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await _read_reply(reader, head=data.startswith(b"HEAD "))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader, *, head: bool = False) -> Reply | None:
    try:
        message_head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    status_line, *lines = message_head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines if line)]
    reply = Reply(int(status_line.split()[1]), headers, b"")
    length = reply.header("content-length")
    if head:
        return reply
    if length is not None:
        reply.body = await reader.readexactly(int(length))
    elif reply.header("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            reply.body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
    return reply


def request(target: str | bytes, *, method: bytes = b"GET", headers: bytes = b"",
            body: bytes = b"") -> bytes:
    """One HTTP/1.1 request that asks the router to close the connection after answering."""
    raw = target if isinstance(target, bytes) else target.encode()
    return (method + b" " + raw + b" HTTP/1.1\r\nHost: router.test\r\nConnection: close\r\n"
            + headers + b"\r\n" + body)


_ROUTER_COOKIE = re.compile(r'host="([^"]+)"; Max-Age=\d+; Path=(/[^;," \\]*)')


def assert_safe(fed: Federation, reply: Reply | None) -> None:
    """No 5xx; any redirect points into a configured member; any cookie is the router's
    own, naming that member for a prefix of the redirected path (nothing the client sent)."""
    assert reply is not None, "the router closed the connection without answering"
    assert reply.status < 500, reply
    location = reply.header("location") or ""
    urls = {sim.url for sim in fed.members.values()}
    if location:
        member = next((url for url in urls if location.startswith(url + "/")), None)
        assert member is not None, location
        # … and stays on a launch path there once a browser has resolved it (WHATWG URL:
        # backslashes are slashes, %2e is a dot), not on some other page of the member.
        path = location[len(member):].partition("?")[0].replace("\\", "/").lower()
        assert path.startswith(("/build/", "/v2/")), location
        assert not {".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"} & set(path.split("/")), location
    cookies = [v for k, v in reply.headers if k == "set-cookie"]
    assert len(cookies) <= 1, cookies
    for cookie in cookies:
        ours = _ROUTER_COOKIE.fullmatch(cookie)
        assert ours is not None and ours.group(1) in urls, cookie
        assert location.startswith(ours.group(1) + ours.group(2)), (cookie, location)


def port_of(fed: Federation) -> int:
    """The router's port on 127.0.0.1."""
    port = fed.client.port
    assert port is not None
    return port


def proxied_paths(fed: Federation, name: str) -> list[str]:
    """Paths member ``name`` received other than probes."""
    return [path for _method, path, _headers in fed.members[name].requests
            if not path.startswith(("/health", "/versions"))]


# -- redirects ---------------------------------------------------------------------------------

REDIRECT_ATTEMPTS = [
    b"//evil.example/build/gh/a/b/HEAD",
    b"/\\evil.example/build/gh/a/b/HEAD",
    b"/build/../..//evil.example",
    b"/build/gh/../../..//evil.example/x",
    b"/build//evil.example/a/b",
    b"/build/gh/%2F%2Fevil.example/r/HEAD",
    b"/build/gh/@evil.example/r/HEAD",
    b"/build/git/https%3A%2F%2Fevil.example%2Fr/HEAD",
    b"/build/gh/a/b/c%0d%0aSet-Cookie:%20x=1",
    b"/build/gh/a/b/c?%0d%0aLocation:%20https://evil.example",
    b"/build/gh/a/b/\xff\xfe",
    b"/build/gh/a/b/%ff%fe%00",
    b"/build/gh/a/b/\x00",
    b"/build/gh/a/b/c\tx",
    b"/build/gh/a/b/" + b"x" * 5000,
    b"/build/gh/a/b/" + b"x" * 9000,
    b"http://evil.example/build/gh/a/b/HEAD",
    b"https://evil.example:443//build/gh/a/b/HEAD",
    b"*",
    b"evil.example:443",
]


@pytest.mark.parametrize("target", REDIRECT_ATTEMPTS, ids=lambda t: repr(t[:40]))
async def test_location_never_leaves_the_member_list(
    start_federation: StartFederation, target: bytes,
) -> None:
    """Open-redirect, traversal, header-injection, overlong, invalid UTF-8, NUL and
    absolute-form targets get a 4xx or a redirect into a member, never anywhere else."""
    fed = await start_federation(["a", "b"])
    with nothing_unhandled():
        reply = await send_raw(port_of(fed), request(target))
    assert_safe(fed, reply)


async def test_absolute_form_launch_redirects_to_the_member_path_only(
    start_federation: StartFederation,
) -> None:
    """``GET http://evil.example/build/...`` is a launch of the path; the client's host is
    dropped, not copied into the Location."""
    fed = await start_federation(["a"])
    reply = await send_raw(port_of(fed), request(b"http://evil.example/build/gh/o/r/HEAD?x=1"))
    assert reply is not None and reply.status == 307
    assert reply.header("location") == fed.members["a"].url + "/build/gh/o/r/HEAD?x=1"


@pytest.mark.parametrize("host", [b"evil.example", b"127.0.0.1:1", b"", b"a@evil.example"])
async def test_host_headers_do_not_steer_redirects(
    start_federation: StartFederation, host: bytes,
) -> None:
    """Host and X-Forwarded-Host are the client's words: the redirect ignores them."""
    fed = await start_federation(["a"])
    data = (b"GET /build/gh/o/r/HEAD HTTP/1.1\r\nHost: " + host + b"\r\nX-Forwarded-Host: "
            b"evil.example\r\nX-Forwarded-Proto: javascript\r\nConnection: close\r\n\r\n")
    reply = await send_raw(port_of(fed), data)
    assert reply is not None and reply.status == 307
    assert reply.header("location") == fed.members["a"].url + "/build/gh/o/r/HEAD"


# -- cookies -----------------------------------------------------------------------------------

FORGED_COOKIES = [
    'host="https://evil.example"',
    'host="//evil.example"',
    "host=javascript:alert(1)",
    'host="javascript:alert(1)"',
    'host="{a}/../../evil"',
    'host="{a}/build"',
    'host="{a}@evil.example"',
    'host="{a}/"',
    'host="{A}"',
    'host="http://evil.example"; host="{a}"',
    'host="{a}"; host="http://evil.example"',
    'host="\\"{a}\\""',
    'host="{a}; Domain=evil.example"',
    'host="{a}"; Path=/; host=x',
    "host=" + "x" * 4000,
]


@pytest.mark.parametrize("cookie", FORGED_COOKIES)
async def test_forged_cookies_cannot_redirect_off_the_member_list(
    start_federation: StartFederation, cookie: str,
) -> None:
    """A host cookie that names anything but a routable member's exact URL is ignored; the
    answer's Set-Cookie only ever names the member chosen, never what the client sent."""
    fed = await start_federation(["a", "b"])
    a = fed.members["a"].url
    forged = cookie.format(a=a, A=a.upper())
    with nothing_unhandled():
        reply = await send_raw(port_of(fed), request(
            "/build/gh/o/r/HEAD", headers=f"Cookie: {forged}\r\n".encode()))
    assert_safe(fed, reply)
    assert reply is not None and reply.status == 307
    chosen = next(sim.url for sim in fed.members.values()
                  if reply.header("location") == sim.url + "/build/gh/o/r/HEAD")
    assert reply.header("set-cookie") == f'host="{chosen}"; Max-Age=14400; Path=/build/gh/o/r'


async def test_launch_paths_cannot_inject_cookie_attributes(
    start_federation: StartFederation,
) -> None:
    """A repository path with ``;``, quotes or spaces gets no sticky cookie, so it can never
    add attributes (Domain=, a wider Path) to one."""
    fed = await start_federation(["a"])
    for target in ("/build/gh/o;Domain=evil.example/r/HEAD", '/build/gh/o"/r/HEAD',
                   "/build/gh/o,x/r/HEAD"):
        reply = await send_raw(port_of(fed), request(target))
        assert_safe(fed, reply)
        assert reply is not None and reply.header("set-cookie") is None, target


# -- the proxy ---------------------------------------------------------------------------------


async def test_proxy_never_connects_anywhere_but_the_ui_member(
    start_federation: StartFederation,
) -> None:
    """Absolute-form targets, Host and X-Forwarded-Host naming another server, CONNECT and
    scheme-relative paths all end at the UI member (or a 4xx), never at the evil server."""
    fed = await start_federation(["a", "b"])
    async with evil_server() as evil:
        there = f"127.0.0.1:{evil.port}".encode()
        attempts = [
            request(b"http://" + there + b"/x"),
            request(b"https://" + there + b"/x"),
            request(b"http://" + there),
            request(b"/x", headers=b"Host: " + there + b"\r\n"),
            request(b"/x", headers=b"X-Forwarded-Host: " + there + b"\r\n"),
            request(b"//" + there + b"/x"),
            request(b"/@" + there + b"/x"),
            request(there, method=b"CONNECT"),
            request(b"/x", headers=b"Cookie: host=\"http://" + there + b"\"\r\n"),
        ]
        with nothing_unhandled():
            for data in attempts:
                assert_safe(fed, await send_raw(port_of(fed), data))
        assert evil.connections == 0
    assert proxied_paths(fed, "b") == []
    assert "/x" in proxied_paths(fed, "a")


SMUGGLING = [
    b"POST /x HTTP/1.1\r\nHost: r\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nContent-Length: 44\r\nContent-Length: 4\r\n\r\n"
    b"abcdGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nabcde\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: r\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: r\r\nContent-Length: +4\r\n\r\nabcd",
    b"GET /x HTTP/1.1\r\nHost: r\r\nContent-Length: 26\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("data", SMUGGLING, ids=range(len(SMUGGLING)))
async def test_smuggling_attempts_never_reach_the_member_as_a_second_request(
    start_federation: StartFederation, data: bytes,
) -> None:
    """Conflicting or obfuscated framing is refused or read as one request; the bytes a
    confused proxy would take for a second request never reach the member as one."""
    fed = await start_federation(["a"])
    with nothing_unhandled():
        reply = await send_raw(port_of(fed), data)
    assert_safe(fed, reply)
    assert reply is not None and reply.status in (200, 400)
    for _method, path, headers in fed.members["a"].requests:
        assert path != "/smuggled"
        assert "Transfer-Encoding" not in headers


async def test_pipelined_requests_are_each_answered_once(start_federation: StartFederation) -> None:
    """Two pipelined requests get two answers, and the member sees each of them once."""
    fed = await start_federation(["a"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(fed))
    writer.write(b"GET /one HTTP/1.1\r\nHost: r\r\n\r\nGET /two HTTP/1.1\r\nHost: r\r\n"
                 b"Connection: close\r\n\r\n")
    replies = [await _read_reply(reader), await _read_reply(reader)]
    writer.close()
    assert [r.status if r else None for r in replies] == [200, 200]
    assert proxied_paths(fed, "a") == ["/one", "/two"]


async def test_hop_by_hop_headers_are_not_forwarded(start_federation: StartFederation) -> None:
    """Headers named in Connection are dropped, but the router's own forwarding headers are
    set anyway: a client cannot strip X-Forwarded-For or Origin, nor pass Upgrade on."""
    fed = await start_federation(["a"])
    headers = (b"Connection: X-Forwarded-For, Origin, X-Secret, Upgrade\r\nX-Secret: s\r\n"
               b"Upgrade: websocket\r\nProxy-Authorization: Basic c2VjcmV0\r\nKeep-Alive: 5\r\n"
               b"TE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\n")
    reply = await send_raw(port_of(fed), request("/x", headers=headers))
    assert reply is not None and reply.status == 200
    _method, _path, seen = fed.members["a"].requests[-1]
    lowered = {k.lower(): v for k, v in seen.items()}
    for name in ("x-secret", "upgrade", "proxy-authorization", "keep-alive", "te"):
        assert name not in lowered, name
    assert lowered["x-forwarded-for"].endswith("127.0.0.1")
    assert lowered["origin"] == "http://router.test"


# -- limits ------------------------------------------------------------------------------------


async def test_bodies_over_the_limit_are_refused_before_the_member_is_contacted(
    start_federation: StartFederation,
) -> None:
    """A body above limits.max_body_bytes gets 413 (declared or chunked) and never reaches
    the member; a body within it arrives with a plain Content-Length."""
    fed = await start_federation(["a"], limits={"max_body_bytes": 1024})
    port = port_of(fed)
    declared = await send_raw(port, request("/big", method=b"POST",
                                            headers=b"Content-Length: 5000\r\n"))
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    chunked = await send_raw(port, request("/big", method=b"POST", body=chunk * 2 + b"0\r\n\r\n",
                                           headers=b"Transfer-Encoding: chunked\r\n"))
    small = await send_raw(port, request("/small", method=b"POST", body=chunk + b"0\r\n\r\n",
                                         headers=b"Transfer-Encoding: chunked\r\n"))
    assert declared is not None and declared.status == 413
    assert chunked is not None and chunked.status == 413
    assert small is not None and small.status == 200
    assert proxied_paths(fed, "a") == ["/small"]
    _method, _path, seen = fed.members["a"].requests[-1]
    assert seen.get("Content-Length") == "600" and "Transfer-Encoding" not in seen


async def test_bodies_cut_off_or_malformed_midway_are_dropped_quietly(
    start_federation: StartFederation,
) -> None:
    """A client that hangs up halfway through its body is forgotten, one whose chunks turn to
    garbage halfway gets 408 after limits.body_timeout; the member is never contacted and
    nothing unhandled is logged."""
    fed = await start_federation(["a"], limits={"body_timeout": 0.3})
    port = port_of(fed)
    runner = fed.client.server.runner
    assert runner is not None and runner.server is not None
    server = runner.server
    with nothing_unhandled():
        for head, then in ((b"Content-Length: 100\r\n\r\n0123456789", None),
                           (b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", None),
                           (b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
                            b"zz\r\nxx\r\n0\r\n\r\n")):
            handled = server.requests_count
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /upload HTTP/1.1\r\nHost: r\r\n" + head)
            await fed.wait_for(lambda n=handled: server.requests_count > n,
                               what="the router reading the body")
            if then is None:
                writer.transport.abort()
                continue
            writer.write(then)
            async with asyncio.timeout(2):
                reply = await _read_reply(reader)
            writer.close()
            assert reply is not None and reply.status == 408
    assert proxied_paths(fed, "a") == []


async def test_compressed_bodies_pass_through_as_sent(start_federation: StartFederation) -> None:
    """A gzip body reaches the UI member as sent, with its Content-Encoding: the router
    neither decompresses what it only passes on nor relabels it."""
    fed = await start_federation(["a"])
    body = gzip.compress(b"x" * 5000)
    reply = await send_raw(port_of(fed), request(
        "/zipped", method=b"POST", body=body,
        headers=b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(body)))
    assert reply is not None and reply.status == 200
    _method, _path, seen = fed.members["a"].requests[-1]
    assert (seen["Content-Encoding"], seen["Content-Length"]) == ("gzip", str(len(body)))


@pytest.mark.parametrize(("what", "data"), [
    ("request line", request(b"/" + b"x" * 3000)),
    ("header", request(b"/x", headers=b"X-Big: " + b"y" * 3000 + b"\r\n")),
    ("header count", request(b"/x", headers=b"".join(b"X-%d: v\r\n" % i for i in range(40)))),
])
async def test_request_heads_over_the_limits_get_400(
    start_federation: StartFederation, what: str, data: bytes,
) -> None:
    """Request line, header size and header count limits come from the config's limits."""
    fed = await start_federation(["a"], limits={"max_request_line": 2048,
                                                "max_header_size": 2048, "max_headers": 30})
    with nothing_unhandled() as logs:
        reply = await send_raw(port_of(fed), data)
    assert reply is not None and reply.status == 400, what
    assert logs.refused_by_parser == 1
    assert proxied_paths(fed, "a") == []


async def test_slow_clients_are_cut_off_and_never_hold_up_others(
    start_federation: StartFederation,
) -> None:
    """Clients trickling a request head (slowloris) or a body are disconnected after
    limits.client_timeout and limits.body_timeout, and launches are served meanwhile."""
    fed = await start_federation(["a"], limits={"client_timeout": 0.3, "body_timeout": 0.3})
    port = port_of(fed)
    slow_heads = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    for _reader, writer in slow_heads:
        writer.write(b"GET /x HTTP/1.1\r\nHost: r\r\n")
    body_reader, body_writer = await asyncio.open_connection("127.0.0.1", port)
    body_writer.write(b"POST /upload HTTP/1.1\r\nHost: r\r\nContent-Length: 1000\r\n\r\nabc")

    async def trickle() -> None:
        for i in range(200):
            for _reader, writer in slow_heads:
                if not writer.is_closing():
                    writer.write(b"X-%d: y\r\n" % i)
            await asyncio.sleep(0.01)

    trickling = asyncio.create_task(trickle())
    served = [await fed.launch(f"/build/gh/o/r{i}/HEAD") for i in range(20)]
    assert [r.status for r in served] == [307] * 20
    async with asyncio.timeout(2.5):
        closed = [await _until_closed(reader) for reader, _writer in slow_heads]
        timed_out = await _read_reply(body_reader)
    trickling.cancel()
    for _reader, writer in [*slow_heads, (body_reader, body_writer)]:
        writer.close()
    assert all(not data.startswith(b"HTTP/1.1 2") for data in closed)
    assert timed_out is not None and timed_out.status == 408
    assert proxied_paths(fed, "a") == []


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing (a reset, when our bytes were unread, is a close)."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


# -- fuzz --------------------------------------------------------------------------------------

_METHODS = [b"GET", b"HEAD", b"POST", b"OPTIONS", b"PUT", b"DELETE", b"get", b"G\x00T", b"",
            b"GET GET", b"\xff\xfe", b"PRI", b"CONNECT"]
_PIECES = [b"/build/", b"/v2/", b"gh/", b"gl/", b"git/", b"zenodo/", b"o/", b"r/", b"HEAD",
           b"/", b"//", b"\\", b"..", b"%2F", b"%0d%0a", b"%00", b"%ff", b"?", b"#", b"@", b":",
           b";", b"\"", b"'", b"<script>", b"evil.example", b"http://", b" ", b"\t", b"\x00",
           b"\r", b"\n", b"\xc3\xa9", b"\xff", b"%", b"*", b"~"]
_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1 x", b"HTTX/1.1", b""]
FUZZ_CASES = 300


def fuzzed_request_lines(seed: int, count: int) -> Iterator[bytes]:
    """``count`` request lines from a seeded mix of plausible and broken pieces: half are a
    valid launch path with a few pieces spliced in, half are pieces strung together."""
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.5:
            target = bytearray(b"/build/gh/owner/repo/HEAD")
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(1, len(target))
                target[at:at] = rng.choice(_PIECES)
        else:
            target = bytearray(b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 12))))
        if rng.random() < 0.05:
            target += b"x" * rng.choice([5000, 9000])
        method = b"GET" if rng.random() < 0.6 else rng.choice(_METHODS)
        version = b"HTTP/1.1" if rng.random() < 0.6 else rng.choice(_VERSIONS)
        yield b" ".join((method, bytes(target), version))


async def test_fuzzed_request_lines_get_no_5xx_and_no_redirect_off_the_list(
    start_federation: StartFederation,
) -> None:
    """300 seeded random request lines: every one is answered below 500 (or the connection
    is closed), every redirect points into a member, nothing unhandled is logged, and the
    evil server is never contacted."""
    fed = await start_federation(["a", "b"])
    statuses: list[int] = []
    async with evil_server() as evil:
        with nothing_unhandled():
            for line in fuzzed_request_lines(seed=9, count=FUZZ_CASES):
                reply = await send_raw(port_of(fed), line + b"\r\nHost: r\r\nConnection: close"
                                       b"\r\n\r\n")
                if reply is not None:
                    assert_safe(fed, reply)
                    statuses.append(reply.status)
        assert evil.connections == 0
    assert len(statuses) > FUZZ_CASES // 2 and {200, 307, 400, 404} <= set(statuses)
    assert all(re.fullmatch(r"/[^\r\n]*", path) for path in proxied_paths(fed, "a"))
