"""A fake Kubernetes API server for ConfigMaps, served over real loopback sockets.

No API server can run where our tests run, and monkeypatching kubernetes_asyncio would test
our guesses about the client, not the contract. So this server speaks the slice of core/v1
that the router uses, the way a real API server does: `Status` bodies on errors, one global
etcd-like resourceVersion, watch streams as chunked JSON lines with bookmarks, and a bounded
event history whose expiry is reported as an ERROR event inside a 200 stream.

Test controls break the server on purpose: cut or freeze open watches, compact the history,
inject conflicts. Deliberate simplifications: lists ignore `resourceVersion`, `labelSelector`
and paging (they always serve the latest state), watching from a future resourceVersion just
waits, and JSON patch and server-side apply are refused with 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import json
import re
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

__all__ = ["TOKEN", "FakeKubeAPI", "running_kube_api"]

TOKEN = "fake-token-for-tests"

JSON = dict[str, Any]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_MERGE_PATCH_TYPES = frozenset(
    {"application/merge-patch+json", "application/strategic-merge-patch+json"}
)
# The field selectors the API server supports for ConfigMaps.
_SELECTABLE_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_SELECTOR_TERM = re.compile(r"^([A-Za-z.]+)(==|=)(.*)$")
_TRUE_WORDS = frozenset({"1", "t", "T", "true", "True", "TRUE"})


class _StatusError(Exception):
    """A request the real API server would refuse; the middleware renders it as a Status."""

    def __init__(
        self, code: int, reason: str, message: str, *, details: JSON | None = None
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details


def _status(code: int, reason: str, message: str, *, details: JSON | None = None) -> JSON:
    """The `Status` object the API server sends with every failure (and in ERROR events)."""
    status: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


def _not_found(name: str) -> _StatusError:
    return _StatusError(
        404,
        "NotFound",
        f'configmaps "{name}" not found',
        details={"name": name, "kind": "configmaps"},
    )


def _conflict(name: str) -> _StatusError:
    # The exact wording client-go users grep their logs for.
    return _StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on configmaps "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details={"name": name, "kind": "configmaps"},
    )


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _field_selector(text: str) -> dict[str, str]:
    """Parse `metadata.name=X[,metadata.namespace=Y]`; other fields get the server's 400."""
    wanted: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        match = _SELECTOR_TERM.match(term)
        if match is None:
            raise _StatusError(400, "BadRequest", f"invalid field selector: {term!r}")
        name, _, value = match.groups()
        if name not in _SELECTABLE_FIELDS:
            raise _StatusError(400, "BadRequest", f'field label not supported: "{name}"')
        wanted[name] = value
    return wanted


def _selected(obj: JSON, namespace: str, wanted: Mapping[str, str]) -> bool:
    meta = obj["metadata"]
    if meta["namespace"] != namespace:
        return False
    return all(meta[path.removeprefix("metadata.")] == value for path, value in wanted.items())


def _flag(value: str | None) -> bool:
    """Boolean query parameters as Go's strconv.ParseBool reads them (Python clients send True)."""
    return value in _TRUE_WORDS


class _Signal(enum.Enum):
    """What a test control tells an open watch stream to do, besides sending events."""

    CUT = "abort the TCP connection mid-stream"
    FREEZE = "go silent: no events, no bookmarks, connection kept open"
    CLOSE = "end the stream cleanly (server shutdown)"


@dataclass(eq=False)
class _Watch:
    namespace: str
    wanted: Mapping[str, str]
    queue: asyncio.Queue[JSON | _Signal] = field(default_factory=asyncio.Queue)

    def offer(self, event: JSON) -> None:
        if _selected(event["object"], self.namespace, self.wanted):
            self.queue.put_nowait(event)


class FakeKubeAPI:
    """The server's state, its aiohttp handlers and the controls tests use to misbehave."""

    def __init__(self, *, history_size: int, bookmark_interval: float) -> None:
        self.bookmark_interval = bookmark_interval
        self.requests: Counter[str] = Counter()  # by Kubernetes verb: get, list, watch, patch…
        self.bookmarks_sent = 0
        self.url = ""
        self._objects: dict[tuple[str, str], JSON] = {}
        self._rv = 1
        self._history: deque[tuple[int, JSON]] = deque(maxlen=history_size)
        self._oldest_rv = self._rv  # a watch from any resourceVersion below this gets a 410
        self._watches: set[_Watch] = set()
        self._conflicts_to_inject = 0

    # -- test controls ---------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The latest resourceVersion, like etcd's current revision."""
        return str(self._rv)

    @property
    def open_watches(self) -> int:
        """How many watch streams are connected and waiting for events right now."""
        return len(self._watches)

    def get(self, namespace: str, name: str) -> JSON | None:
        """A copy of the stored ConfigMap, for assertions."""
        obj = self._objects.get((namespace, name))
        return copy.deepcopy(obj)

    def apply(self, namespace: str, name: str, data: Mapping[str, str]) -> JSON:
        """Create or replace a ConfigMap as another writer would, without counting a request."""
        key = (namespace, name)
        old = self._objects.get(key)
        if old is None:
            return self._store("ADDED", self._new_object(namespace, name, {"data": dict(data)}))
        return self._store("MODIFIED", {**old, "data": dict(data)})

    def remove(self, namespace: str, name: str) -> None:
        """Delete a ConfigMap as another writer would."""
        obj = self._objects.pop((namespace, name))
        self._store("DELETED", obj)

    def cut_watches(self) -> int:
        """Abort every open watch connection mid-chunk; returns how many were cut."""
        return self._signal_watches(_Signal.CUT)

    def freeze_watches(self) -> int:
        """Make every open watch hang silently, like a stream lost behind a dead proxy."""
        return self._signal_watches(_Signal.FREEZE)

    def compact(self, resource_version: int | str | None = None) -> None:
        """Forget history up to `resource_version` (default: all), so older watches get 410."""
        upto = self._rv if resource_version is None else int(resource_version)
        while self._history and self._history[0][0] <= upto:
            self._history.popleft()
        self._oldest_rv = max(self._oldest_rv, upto)

    def inject_conflicts(self, count: int) -> None:
        """Answer the next `count` updates (PUT or PATCH) with 409 Conflict."""
        self._conflicts_to_inject += count

    def write_kubeconfig(self, path: Path | str, *, namespace: str = "default") -> Path:
        """Write a kubeconfig that points a client at this server with a bearer token."""
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(kubeconfig))
        return path

    def _close_watches(self) -> None:
        """End every open watch stream cleanly, so the server can shut down at once."""
        self._signal_watches(_Signal.CLOSE)

    # -- storage -------------------------------------------------------------------------

    def _new_object(self, namespace: str, name: str, body: JSON) -> JSON:
        metadata = {
            **body.get("metadata", {}),
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return {**body, "kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata}

    def _store(self, kind: str, obj: JSON) -> JSON:
        """Commit one write under the next resourceVersion and fan the event out to watches."""
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        if kind == "DELETED":
            self._objects.pop((meta["namespace"], meta["name"]), None)
        else:
            self._objects[meta["namespace"], meta["name"]] = obj
        event = {"type": kind, "object": obj}
        if len(self._history) == self._history.maxlen:
            self._oldest_rv = self._history[0][0]
        self._history.append((self._rv, event))
        for watch in self._watches:
            watch.offer(event)
        return copy.deepcopy(obj)

    def _signal_watches(self, signal: _Signal) -> int:
        for watch in self._watches:
            watch.queue.put_nowait(signal)
        return len(self._watches)

    def _existing(self, namespace: str, name: str) -> JSON:
        obj = self._objects.get((namespace, name))
        if obj is None:
            raise _not_found(name)
        return obj

    def _check_update(self, current: JSON, body: JSON) -> None:
        """Injected conflicts first, then the optimistic-concurrency precondition."""
        name = current["metadata"]["name"]
        if self._conflicts_to_inject:
            self._conflicts_to_inject -= 1
            raise _conflict(name)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            raise _conflict(name)

    def _commit_update(self, current: JSON, updated: JSON) -> JSON:
        """Keep identity fields; a write that changes nothing keeps its resourceVersion."""
        meta = current["metadata"]
        immutable = ("name", "namespace", "uid", "creationTimestamp", "resourceVersion")
        updated["metadata"] = {
            **(updated.get("metadata") or {}),
            **{key: meta[key] for key in immutable},
        }
        updated["kind"], updated["apiVersion"] = "ConfigMap", "v1"
        _validate(updated)
        if updated == current:
            return copy.deepcopy(current)
        return self._store("MODIFIED", updated)

    # -- HTTP --------------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application: two resource paths, and Status 404 for everything else."""
        app = web.Application(middlewares=[self._middleware])
        collection = "/api/v1/namespaces/{namespace}/configmaps"
        app.router.add_get(collection, self._list_or_watch)
        app.router.add_post(collection, self._create)
        item = collection + "/{name}"
        app.router.add_get(item, self._read)
        app.router.add_put(item, self._replace)
        app.router.add_patch(item, self._patch)
        app.router.add_delete(item, self._delete)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Authenticate like the API server, and render refusals as Status objects."""
        try:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise _StatusError(401, "Unauthorized", "Unauthorized")
            return await handler(request)
        except _StatusError as e:
            body = _status(e.code, e.reason, e.message, details=e.details)
            return web.json_response(body, status=e.code)

    async def _unknown(self, request: web.Request) -> web.Response:
        raise _StatusError(404, "NotFound", "the server could not find the requested resource")

    async def _list_or_watch(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        wanted = _field_selector(request.query.get("fieldSelector", ""))
        if _flag(request.query.get("watch")):
            return await self._watch(request, namespace, wanted)
        self.requests["list"] += 1
        items = [
            copy.deepcopy(obj)
            for _, obj in sorted(self._objects.items())
            if _selected(obj, namespace, wanted)
        ]
        return web.json_response(
            {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": self.resource_version},
                "items": items,
            }
        )

    async def _read(self, request: web.Request) -> web.Response:
        self.requests["get"] += 1
        obj = self._existing(request.match_info["namespace"], request.match_info["name"])
        return web.json_response(obj)

    async def _create(self, request: web.Request) -> web.Response:
        self.requests["create"] += 1
        namespace = request.match_info["namespace"]
        body = await _json_body(request)
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise _StatusError(422, "Invalid", "metadata.name: Required value: name is required")
        if meta.get("namespace", namespace) != namespace:
            raise _StatusError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if (namespace, name) in self._objects:
            raise _StatusError(
                409,
                "AlreadyExists",
                f'configmaps "{name}" already exists',
                details={"name": name, "kind": "configmaps"},
            )
        meta = {k: v for k, v in meta.items() if k != "resourceVersion"}
        obj = self._new_object(namespace, name, {**body, "metadata": meta})
        _validate(obj)
        return web.json_response(self._store("ADDED", obj), status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        self.requests["update"] += 1
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await _json_body(request)
        if (body.get("metadata") or {}).get("name") != name:
            raise _StatusError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        current = self._existing(namespace, name)
        self._check_update(current, body)
        return web.json_response(self._commit_update(current, copy.deepcopy(body)))

    async def _patch(self, request: web.Request) -> web.Response:
        self.requests["patch"] += 1
        if request.content_type not in _MERGE_PATCH_TYPES:
            raise _StatusError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(sorted(_MERGE_PATCH_TYPES))}",
            )
        body = await _json_body(request)
        current = self._existing(request.match_info["namespace"], request.match_info["name"])
        self._check_update(current, body)
        return web.json_response(self._commit_update(current, _merge_patch(current, body)))

    async def _delete(self, request: web.Request) -> web.Response:
        self.requests["delete"] += 1
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        current = self._existing(namespace, name)
        self._store("DELETED", current)
        # ConfigMaps have no graceful deletion: the server answers with a success Status.
        return web.json_response(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "kind": "configmaps",
                    "uid": current["metadata"]["uid"],
                },
            }
        )

    async def _watch(
        self, request: web.Request, namespace: str, wanted: Mapping[str, str]
    ) -> web.StreamResponse:
        """Stream events after the given resourceVersion as JSON lines until told to stop."""
        self.requests["watch"] += 1
        query = request.query
        since = query.get("resourceVersion", "")
        if since and not since.isdigit():
            raise _StatusError(400, "BadRequest", f"invalid resource version: {since!r}")
        watch = _Watch(namespace, wanted)
        expired = bool(since) and int(since) < self._oldest_rv
        # Snapshot and subscribe in one step, with no await between, so no event is lost.
        if expired:
            # The real server answers 200 and reports the expiry inside the stream, then ends it.
            status = _status(
                410, "Expired", f"too old resource version: {since} ({self._oldest_rv})"
            )
            backlog = [{"type": "ERROR", "object": status}]
        elif since in ("", "0"):
            # No resourceVersion: synthetic ADDED events for the current state come first.
            backlog = [
                {"type": "ADDED", "object": copy.deepcopy(obj)}
                for _, obj in sorted(self._objects.items())
                if _selected(obj, namespace, wanted)
            ]
            self._watches.add(watch)
        else:
            backlog = [
                event
                for rv, event in self._history
                if rv > int(since) and _selected(event["object"], namespace, wanted)
            ]
            self._watches.add(watch)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for event in backlog:
                await _send(response, event)
            if not expired:
                await self._stream(
                    request,
                    response,
                    watch,
                    bookmarks=_flag(query.get("allowWatchBookmarks")),
                    timeout=int(query["timeoutSeconds"]) if "timeoutSeconds" in query else None,
                )
        finally:
            self._watches.discard(watch)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        watch: _Watch,
        *,
        bookmarks: bool,
        timeout: int | None,
    ) -> None:
        """Forward events and bookmarks until timeoutSeconds, a cut or shutdown."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        frozen = False
        while True:
            wake = end
            if bookmarks and not frozen:
                next_bookmark = loop.time() + self.bookmark_interval
                wake = next_bookmark if end is None else min(end, next_bookmark)
            try:
                async with asyncio.timeout_at(wake):
                    item = await watch.queue.get()
            except TimeoutError:
                if end is not None and loop.time() >= end:
                    return  # timeoutSeconds elapsed: the server ends the stream cleanly
                # The queue is empty here, so every event up to the current revision has
                # already been written to this stream: the bookmark promises exactly that.
                bookmark = {
                    "kind": "ConfigMap",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": self.resource_version},
                }
                await _send(response, {"type": "BOOKMARK", "object": bookmark})
                self.bookmarks_sent += 1
                continue
            if item is _Signal.CLOSE:
                return
            if item is _Signal.CUT:
                if request.transport is not None:
                    request.transport.abort()
                return
            if item is _Signal.FREEZE:
                frozen = True
            elif not frozen:
                await _send(response, item)


async def _send(response: web.StreamResponse, event: JSON) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


async def _json_body(request: web.Request) -> JSON:
    try:
        body = await request.json()
    except ValueError as e:
        raise _StatusError(400, "BadRequest", f"invalid JSON body: {e}") from e
    if not isinstance(body, dict):
        raise _StatusError(400, "BadRequest", "the request body must be a JSON object")
    return body


def _validate(obj: JSON) -> None:
    """ConfigMap data must map strings to strings, as the API's validation insists."""
    data = obj.get("data")
    if data is None:
        return
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise _StatusError(422, "Invalid", "data: Invalid value: must map strings to strings")


@contextlib.asynccontextmanager
async def running_kube_api(
    *, history_size: int = 1000, bookmark_interval: float = 1.0
) -> AsyncIterator[FakeKubeAPI]:
    """Serve a `FakeKubeAPI` on 127.0.0.1 at an ephemeral port for the block's duration."""
    api = FakeKubeAPI(history_size=history_size, bookmark_interval=bookmark_interval)
    runner = web.AppRunner(api.make_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        api.url = f"http://{host}:{port}"
        yield api
    finally:
        api._close_watches()
        await runner.cleanup()
