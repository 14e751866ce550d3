"""The Kubernetes I/O layer: one ConfigMap key, watched or updated, over kubernetes_asyncio.

The router keeps its shared state (the federation config, operator drains) as text under one
key of a ConfigMap, so it needs three operations: read that text once, follow it as it
changes, and change it safely while other replicas and operators do the same. A ConfigMap
named without a namespace is looked up where kubectl would look (`default_namespace`).

Errors are wrapped at this boundary so callers never see kubernetes_asyncio or aiohttp types:

    KubeError
    ├── KubeConfigError        no usable kubeconfig or in-cluster credentials
    ├── InvalidConfigMapRef    a `NAMESPACE/NAME/KEY` reference that cannot be valid
    ├── KubeUnreachable        the request or stream failed in transport, or timed out
    ├── WatchStreamError       a watch stream line that is not a watch event
    └── KubeAPIError           the API server refused, with its Status (status, reason, message)
        ├── ResourceNotFound   404
        ├── ResourceConflict   409: stale resourceVersion, or created by someone else first
        └── ResourceExpired    410: the resourceVersion fell out of the server's history
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
import structlog
import yaml

from federation.errors import (
    InvalidConfigMapRef,
    KubeAPIError,
    KubeConfigError,
    KubeError,
    KubeUnreachable,
    ResourceConflict,
    ResourceExpired,
    ResourceNotFound,
    WatchStreamError,
)

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, CoreV1Api

# kubernetes_asyncio is imported where it is used, not here: it costs ~35 MiB of memory, and a
# router whose config and drains are plain files never talks to Kubernetes.

__all__ = [
    "RECONNECT_BACKOFF",
    "ConfigMapRef",
    "connect",
    "default_namespace",
    "read_configmap_key",
    "update_configmap_key",
    "watch_configmap",
]

log = structlog.get_logger("federation.kube")

_T = TypeVar("_T")

RECONNECT_BACKOFF: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
"""Seconds between failed watch attempts; the last delay repeats for as long as it takes."""

_CONFLICT_BACKOFF = (0.01, 0.02, 0.05, 0.1, 0.2)
_REQUEST_TIMEOUT = 30.0
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


_ERRORS_BY_STATUS: Mapping[int, type[KubeAPIError]] = {
    404: ResourceNotFound,
    409: ResourceConflict,
    410: ResourceExpired,
}


def _status_error(status: int, body: Any, fallback_reason: str) -> KubeAPIError:
    """Build the error for a Status object, or for a body that is not one (a proxy's page)."""
    if isinstance(body, Mapping) and body.get("kind") == "Status":
        status = int(body.get("code", status))
        reason = str(body.get("reason") or fallback_reason)
        message = str(body.get("message", ""))
    else:
        reason, message = fallback_reason, str(body)[:200]
    return _ERRORS_BY_STATUS.get(status, KubeAPIError)(status, reason, message)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _call(operation: str, request: Awaitable[_T], *, timeout: float) -> _T:
    """Await one API request, translating the library's failures into this module's errors."""
    from kubernetes_asyncio.client import ApiException

    try:
        async with asyncio.timeout(timeout):
            return await request
    except ApiException as e:
        body = _json_or_text(e.body) if isinstance(e.body, str) else None
        raise _status_error(e.status or 0, body, str(e.reason)) from e
    except TimeoutError as e:
        raise KubeUnreachable(operation, f"no answer within {timeout}s") from e
    except aiohttp.ClientError as e:
        raise KubeUnreachable(operation, f"{type(e).__name__}: {e}") from e


async def connect(kubeconfig: str | None = None) -> ApiClient:
    """A client for the pod's own cluster, or for the kubeconfig an operator points us at.

    An explicit `kubeconfig` wins; inside a pod (KUBERNETES_SERVICE_HOST is set) the service
    account is used; otherwise `$KUBECONFIG` or `~/.kube/config`. The file is never written back.
    The caller owns the client and must close it.
    """
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config import ConfigException

    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = Configuration()
        try:
            # The library leaves this one function unannotated.
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise KubeConfigError("in-cluster service account", str(e)) from e
        return ApiClient(configuration=configuration)
    path = _kubeconfig_path(kubeconfig)
    if not _kubeconfig_exists(path):
        raise KubeConfigError(path, "no such file")
    try:
        return await config.new_client_from_config(config_file=path, persist_config=False)
    except (ConfigException, OSError, yaml.YAMLError) as e:
        raise KubeConfigError(path, str(e)) from e


def _core(api: ApiClient) -> CoreV1Api:
    from kubernetes_asyncio.client import CoreV1Api

    return CoreV1Api(api)


def _kubeconfig_path(kubeconfig: str | None) -> str:
    """The kubeconfig file `connect` reads outside a pod, as kubectl would pick it."""
    return kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")


def _kubeconfig_exists(path: str) -> bool:
    """Whether any file of a (``:``-separated) kubeconfig path exists; checked first because
    the library only logs a warning for a missing file, then fails obscurely."""
    return any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p)


def _pod_namespace() -> str:
    """The namespace this pod runs in: $POD_NAMESPACE (the Deployment sets it from the
    downward API), else the service account mount; else "default"."""
    if namespace := os.environ.get("POD_NAMESPACE", "").strip():
        return namespace
    try:
        return _NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace for a ConfigMap named without one, chosen as `connect` chooses credentials.

    Inside a pod (and no explicit `kubeconfig`) it is the pod's own; elsewhere the namespace of
    the kubeconfig's current context, as kubectl uses it; else "default". A kubeconfig that
    cannot be read gives "default" here: `connect` reports the actual problem.
    """
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return _pod_namespace()
    path = _kubeconfig_path(kubeconfig)
    if not _kubeconfig_exists(path):
        return "default"
    from kubernetes_asyncio import config
    from kubernetes_asyncio.config import ConfigException

    try:
        _, current = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, yaml.YAMLError):
        return "default"
    context = (current or {}).get("context") or {}
    return str(context.get("namespace") or "default")


@dataclass(frozen=True)
class ConfigMapRef:
    """One key of one ConfigMap: where a piece of shared router state lives."""

    namespace: str
    name: str
    key: str

    @classmethod
    def parse(
        cls,
        text: str,
        default_namespace: str | None = None,
        *,
        default_key: str = "federation.yaml",
    ) -> ConfigMapRef:
        """Read `NAME`, `NAMESPACE/NAME` or `NAMESPACE/NAME/KEY`.

        Without a namespace, `default_namespace` is used, or the pod's own namespace when that
        is None. (`NAME/KEY` is not accepted: it would read as `NAMESPACE/NAME`.)
        """
        parts = text.strip().split("/")
        if len(parts) > 3:
            raise InvalidConfigMapRef(text, "expected NAME, NAMESPACE/NAME or NAMESPACE/NAME/KEY")
        if len(parts) == 1:
            parts.insert(0, default_namespace or _pod_namespace())
        namespace, name, key = (*parts, default_key) if len(parts) == 2 else parts
        if not _DNS_LABEL.match(namespace):
            raise InvalidConfigMapRef(text, f"namespace {namespace!r} is not a DNS-1123 label")
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise InvalidConfigMapRef(text, f"name {name!r} is not a DNS-1123 subdomain")
        if len(key) > 253 or key in (".", "..") or not _CONFIGMAP_KEY.match(key):
            raise InvalidConfigMapRef(text, f"key {key!r} is not a valid ConfigMap key")
        return cls(namespace=namespace, name=name, key=key)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}/{self.key}"


def _jittered(delays: Sequence[float], index: int) -> float:
    """The index-th delay (the last one once past the end), ±20 % so replicas spread out."""
    if not delays:
        return 0.0
    return delays[min(index, len(delays) - 1)] * random.uniform(0.8, 1.2)


async def _list_value(
    core: CoreV1Api, ref: ConfigMapRef, *, timeout: float
) -> tuple[str | None, str]:
    """The key's current text (None if absent) and the list's resourceVersion to watch from."""
    listing = await _call(
        f"list {ref}",
        core.list_namespaced_config_map(ref.namespace, field_selector=f"metadata.name={ref.name}"),
        timeout=timeout,
    )
    value = next(((item.data or {}).get(ref.key) for item in listing.items), None)
    return value, listing.metadata.resource_version


async def _watch_events(
    core: CoreV1Api,
    ref: ConfigMapRef,
    resource_version: str,
    *,
    inactivity_timeout: float,
    server_timeout: int,
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    """One watch request: yields (type, object) until the server ends the stream cleanly.

    kubernetes_asyncio's `Watch` is not used: it reconnects silently behind our back, retries
    a 410 once with the same stale resourceVersion (which fails again), raises a bare
    Exception for a malformed line, and opens a session of its own. The raw stream is
    newline-delimited JSON, simple to read here with a timeout on every line.
    """
    operation = f"watch {ref} from resourceVersion {resource_version}"
    # With _preload_content=False the call returns the raw aiohttp response, unchecked,
    # whatever the stub's annotation says.
    raw = await _call(
        operation,
        core.list_namespaced_config_map(
            ref.namespace,
            field_selector=f"metadata.name={ref.name}",
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=server_timeout,
            _preload_content=False,
        ),
        timeout=inactivity_timeout,
    )
    response = cast(aiohttp.ClientResponse, raw)
    try:
        if response.status != 200:
            text = await _call(operation, response.text(), timeout=inactivity_timeout)
            raise _status_error(response.status, _json_or_text(text), response.reason or "")
        while True:
            line = await _call(operation, response.content.readline(), timeout=inactivity_timeout)
            if not line:
                return
            if line.strip():
                yield _parse_event(line)
    finally:
        response.release()


def _parse_event(line: bytes) -> tuple[str, dict[str, Any]]:
    """Decode one watch line; an ERROR event (e.g. 410 Expired) becomes its KubeAPIError."""
    text = line.decode("utf-8", errors="replace").strip()
    event = _json_or_text(text)
    if not (
        isinstance(event, dict)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("object"), dict)
    ):
        raise WatchStreamError(text[:200])
    if event["type"] == "ERROR":
        # The server reports an expired resourceVersion inside a 200 stream, not as HTTP 410.
        raise _status_error(500, event["object"], "Error")
    return event["type"], event["object"]


async def watch_configmap(
    api: ApiClient,
    ref: ConfigMapRef,
    *,
    backoff: Sequence[float] = RECONNECT_BACKOFF,
    inactivity_timeout: float = 120.0,
    server_timeout: int = 600,
) -> AsyncGenerator[str | None, None]:
    """Yield the text under `ref.key` now and after every change; None while it is missing.

    Lists once, then watches from the list's resourceVersion, tracking the newest one from
    every event and bookmark, so a dropped stream resumes without missing or repeating a
    change. A 410 means that version is gone from the server's history: list again. Any other
    failure reconnects after the next `backoff` delay, forever. A real API server sends a
    bookmark about once a minute, so a stream silent for `inactivity_timeout` is presumed
    hung and replaced (the list request has the same limit). Nothing is read while the
    caller holds a value; the watch resumes where it was. The caller should `aclose()` the
    iterator to release the connection.
    """
    from kubernetes_asyncio.client import CoreV1Api

    core = CoreV1Api(api)
    resource_version: str | None = None
    value: str | None = None
    listed = False
    failures = 0
    while True:
        try:
            if resource_version is None:
                current, resource_version = await _list_value(core, ref, timeout=inactivity_timeout)
                if not listed or current != value:
                    listed, value = True, current
                    yield value
            stream = _watch_events(
                core,
                ref,
                resource_version,
                inactivity_timeout=inactivity_timeout,
                server_timeout=server_timeout,
            )
            # aclosing: if our consumer stops while we wait at a yield, the stream closes too.
            async with contextlib.aclosing(stream) as events:
                async for kind, obj in events:
                    failures = 0
                    metadata = obj.get("metadata") or {}
                    resource_version = metadata.get("resourceVersion", resource_version)
                    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                        log.warning("configmap.unknown_event", configmap=str(ref), type=kind)
                    elif kind != "BOOKMARK":
                        data = {} if kind == "DELETED" else obj.get("data") or {}
                        if data.get(ref.key) != value:
                            value = data.get(ref.key)
                            yield value
            log.info(
                "configmap.reconnect",
                configmap=str(ref),
                reason="stream ended by the server",
                resource_version=resource_version,
                delay=0.0,
            )
        except ResourceExpired as e:
            log.info("configmap.relist", configmap=str(ref), reason=str(e))
            resource_version = None
        except KubeError as e:
            delay = _jittered(backoff, failures)
            failures += 1
            log.warning(
                "configmap.reconnect",
                configmap=str(ref),
                reason=str(e),
                resource_version=resource_version,
                attempt=failures,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)


async def read_configmap_key(api: ApiClient, ref: ConfigMapRef) -> str | None:
    """The text under `ref.key` now; None when the ConfigMap or the key does not exist."""
    try:
        current = await _call(
            f"read {ref}",
            _core(api).read_namespaced_config_map(ref.name, ref.namespace),
            timeout=_REQUEST_TIMEOUT,
        )
    except ResourceNotFound:
        return None
    value = (current.data or {}).get(ref.key)
    return None if value is None else str(value)


async def update_configmap_key(
    api: ApiClient,
    ref: ConfigMapRef,
    mutate: Callable[[str | None], str],
    *,
    attempts: int = 5,
) -> str:
    """Replace the text under `ref.key` with `mutate(old_text)`, safely against other writers.

    The patch carries the resourceVersion that was read, so a concurrent write makes it fail
    with 409 instead of being overwritten; then the ConfigMap is read again and `mutate` runs
    again on the fresh text. `mutate` must therefore be a pure function of its input. After
    `attempts` conflicts in a row, ResourceConflict is raised. Returns the new text; nothing
    is written when `mutate` returns the text unchanged.
    """
    from kubernetes_asyncio.client import CoreV1Api

    core = CoreV1Api(api)
    attempt = 1
    while True:
        try:
            return await _update_once(core, ref, mutate)
        except ResourceConflict as e:
            if attempt >= attempts:
                raise ResourceConflict(
                    e.status, e.reason, f"{ref}: gave up after {attempts} attempts: {e.message}"
                ) from e
            log.info(
                "configmap.conflict",
                configmap=str(ref),
                attempt=f"#{attempt}/{attempts}",
                reason=e.reason,
            )
            await asyncio.sleep(_jittered(_CONFLICT_BACKOFF, attempt - 1))
            attempt += 1


async def _update_once(
    core: CoreV1Api, ref: ConfigMapRef, mutate: Callable[[str | None], str]
) -> str:
    """One read-mutate-write round; a lost race surfaces as ResourceConflict."""
    try:
        current = await _call(
            f"read {ref}",
            core.read_namespaced_config_map(ref.name, ref.namespace),
            timeout=_REQUEST_TIMEOUT,
        )
    except ResourceNotFound:
        # Create it with the key already set; if another writer creates it first, the
        # 409 AlreadyExists sends us back to the read.
        text = mutate(None)
        from kubernetes_asyncio.client import V1ConfigMap, V1ObjectMeta

        body = V1ConfigMap(
            metadata=V1ObjectMeta(name=ref.name, namespace=ref.namespace), data={ref.key: text}
        )
        await _call(
            f"create {ref}",
            core.create_namespaced_config_map(ref.namespace, body),
            timeout=_REQUEST_TIMEOUT,
        )
        return text
    old = (current.data or {}).get(ref.key)
    text = mutate(old)
    if text == old:
        return text
    patch = {
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "data": {ref.key: text},
    }
    await _call(
        f"patch {ref}",
        core.patch_namespaced_config_map(
            ref.name,
            ref.namespace,
            patch,
            # Without this, a dict body is sent as a strategic merge patch. The library
            # accepts the argument; its stub omits it.
            _content_type="application/merge-patch+json",  # type: ignore[call-arg]
        ),
        timeout=_REQUEST_TIMEOUT,
    )
    return text
