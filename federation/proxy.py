"""Reverse proxy to the UI member, streaming both ways.

BinderHub's UI (``/v2/...`` pages, assets, ``/api/repoproviders``) is served by one member: the
prime while it is healthy. Two protocol facts shape the forwarding (binderhub-protocol.md §2.2):

* the ``/v2`` page mints a build token whose ``origin`` claim is the request's Origin (else
  Host); the browser later calls ``/build`` on a member with ``Origin: <public host>``, so the
  upstream request must carry ``Origin: <scheme>://<public host>`` or every launch gets 403;
* the path and query are forwarded byte for byte (``raw_path``): re-encoding would break
  gl/git/ckan specs and the token's ``aud`` claim.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = ["HOP_BY_HOP", "ProxyError", "forward"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "origin", "x-forwarded-host",
                               "x-forwarded-proto", "x-forwarded-for", "x-binder-launch-host"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}


class ProxyError(Exception):
    """The UI member could not be reached or did not answer in time."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        self.status = status
        self.kind = kind
        self.reason = reason
        self.response: web.StreamResponse | None = None  # set when the answer had started
        super().__init__(reason)


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
    timeout: aiohttp.ClientTimeout,
) -> web.StreamResponse:
    """Send ``request`` to ``upstream_base`` + its raw path and stream the answer back."""
    url = URL(upstream_base + request.raw_path, encoded=True)  # never re-quote the path
    public_origin = f"{request.scheme}://{request.host}"
    body = request.content if request.body_exists else None
    try:
        upstream = await session.request(
            request.method, url, headers=_upstream_headers(request, public_origin), data=body,
            allow_redirects=False, timeout=timeout, skip_auto_headers=("User-Agent",),
        )
    except (TimeoutError, asyncio.TimeoutError) as e:
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
    except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError) as e:
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
