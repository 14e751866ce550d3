"""Reverse proxy to the UI member: request bodies bounded, answers streamed.

BinderHub's UI (``/v2/...`` pages, assets, ``/api/repoproviders``) is served by one member: the
prime while it is healthy. Two protocol facts shape the forwarding (binderhub-protocol.md §2.2):

* the ``/v2`` page mints a build token whose ``origin`` claim is the request's Origin (else
  Host); the browser later calls ``/build`` on a member with ``Origin: <public host>``, so the
  upstream request must carry ``Origin: <scheme>://<public host>`` or every launch gets 403;
* the path and query are forwarded byte for byte (``raw_path``): re-encoding would break
  gl/git/ckan specs and the token's ``aud`` claim.

The UI's requests carry small bodies or none, so a body is read whole before the member is
contacted, within ``limits.max_body_bytes`` and ``limits.body_timeout``: a slow or huge upload
then costs the client's own connection only, never one of the pooled connections to the member,
and the member sees one plainly framed request (Content-Length) whatever framing the client used.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from federation.config import Limits

__all__ = ["HOP_BY_HOP", "ProxyError", "forward", "request_target"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "origin", "x-forwarded-host",
                               "x-forwarded-proto", "x-forwarded-for", "x-binder-launch-host"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}


class ProxyError(Exception):
    """The request was not proxied: its body was refused (4xx), or the UI member failed (5xx)."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        self.status = status
        self.kind = kind
        self.reason = reason
        self.response: web.StreamResponse | None = None  # set when the answer had started
        super().__init__(reason)


def request_target(request: web.BaseRequest) -> str:
    """The request's raw path and query in origin form (``/path?query``), byte for byte.

    HTTP/1.1 servers must accept the absolute form (``GET http://host/path``) too; its scheme
    and host are the client's words, never a place to send anyone, so only the path is kept.
    """
    raw = request.raw_path
    return raw if raw.startswith("/") else request.rel_url.raw_path_qs


async def _read_body(request: web.BaseRequest, limits: Limits) -> bytes | None:
    """The whole request body, refused past ``max_body_bytes`` or ``body_timeout`` seconds."""
    if not request.body_exists:
        return None
    too_large = ProxyError(413, "body_too_large",
                           f"the request body is larger than {limits.max_body_bytes} bytes")
    if (request.content_length or 0) > limits.max_body_bytes:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise too_large
    except TimeoutError as e:
        raise ProxyError(408, "body_timeout", "the request body did not arrive in time") from e
    except (ConnectionResetError, web.RequestPayloadError) as e:  # client gone, or bad chunks
        raise ProxyError(400, "body_broken", "the request body was cut off or malformed") from e
    return bytes(body)


def _upstream_headers(request: web.BaseRequest, public_origin: str) -> CIMultiDict[str]:
    connection_tokens = {
        t.strip().lower() for v in request.headers.getall("Connection", []) for t in v.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if lower not in _NOT_FORWARDED and lower not in connection_tokens:
            headers.add(name, value)
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-Proto"] = request.scheme
    headers["Origin"] = public_origin
    headers["X-Binder-Launch-Host"] = public_origin + "/"
    return headers


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    upstream_base: str,
    *,
    limits: Limits,
) -> web.StreamResponse:
    """Send ``request`` to ``upstream_base`` + its raw path and stream the answer back."""
    url = URL(upstream_base + request_target(request), encoded=True)  # never re-quote the path
    public_origin = f"{request.scheme}://{request.host}"
    body = await _read_body(request, limits)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.proxy_connect_timeout,
                                    connect=limits.proxy_connect_timeout,
                                    sock_read=limits.proxy_read_timeout)
    try:
        upstream = await session.request(
            request.method, url, headers=_upstream_headers(request, public_origin), data=body,
            allow_redirects=False, timeout=timeout, skip_auto_headers=("User-Agent",),
        )
    except TimeoutError as e:
        raise ProxyError(504, "timeout", "the UI member did not answer in time") from e
    except aiohttp.ClientError as e:
        raise ProxyError(502, "connect", "the UI member could not be reached") from e
    response: web.StreamResponse | None = None
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _NOT_RETURNED:
                response.headers.add(name, value)
        if upstream.content_length is not None and request.method != "HEAD":
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        await response.write_eof()
        return response
    except (TimeoutError, aiohttp.ClientError) as e:
        timed_out = not isinstance(e, aiohttp.ClientError)
        error = ProxyError(504 if timed_out else 502, "timeout" if timed_out else "upstream",
                           "the UI member stopped answering" if timed_out
                           else "the UI member broke off its answer")
        if response is not None and response.prepared:
            # Headers are out: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.close()
            error.response = response
        raise error from e
    finally:
        upstream.release()
