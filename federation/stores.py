"""Where a command finds the federation: its config (a file or a ConfigMap key) and the drain
store that config names, with the one Kubernetes client they share.

``--config`` takes a path, or ``configmap:NAME``, ``configmap:NAMESPACE/NAME`` or
``configmap:NAMESPACE/NAME/KEY`` (key ``config.yaml`` unless given). In the config,
``drains: {file: PATH}`` is relative to the config file (``drains.yaml`` next to it by default)
and ``drains: {configmap: NAME}`` (key ``drains.yaml``) takes its namespace, when not given,
from the config's own ConfigMap: ``--config configmap:federation/federation-config`` on a laptop
then finds ``federation-drains`` where the router pods find it. A namespace that is named
nowhere is the pod's own, or the kubeconfig context's (``kube.default_namespace``).

The Kubernetes API is only contacted, and a client only created, when a ConfigMap is named:
``federation route --config config.yaml`` works on a laptop without any kubeconfig.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

from federation.app import create_app
from federation.config import Config, load_config, load_config_text
from federation.drains import Drains, DrainStore, FileDrainStore, dump_drains, parse_drains
from federation.errors import ConfigError, KubeConfigError, KubeError
from federation.kube import (
    ConfigMapRef,
    connect,
    default_namespace,
    read_configmap_key,
    update_configmap_key,
    watch_configmap,
)
from federation.sources import ConfigMapConfigSource, ConfigSource, FileConfigSource

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

__all__ = [
    "CONFIGMAP_PREFIX",
    "CONFIG_KEY",
    "DRAINS_KEY",
    "ConfigMapDrainStore",
    "Opened",
    "Stores",
    "build_router",
]

CONFIGMAP_PREFIX = "configmap:"
CONFIG_KEY = "config.yaml"
DRAINS_KEY = "drains.yaml"


class ConfigMapDrainStore:
    """Drains under one key of a ConfigMap, shared by every replica and every operator.

    A change is a merge patch carrying the resourceVersion it was computed from; when another
    operator wrote first the API server answers 409 Conflict and the edit is made again on a
    fresh read (``kube.update_configmap_key``), so racing drains both land.
    """

    def __init__(self, api: ApiClient, ref: ConfigMapRef) -> None:
        self.api = api
        self.ref = ref
        self.name = f"configmap:{ref}"

    def __repr__(self) -> str:
        return f"ConfigMapDrainStore({self.name!r})"

    async def load(self) -> Drains:
        """The drains in force now (none while the ConfigMap or its key is missing)."""
        return parse_drains(await read_configmap_key(self.api, self.ref), source=self.name)

    async def update(self, edit: Callable[[Drains], Drains]) -> Drains:
        """Apply ``edit`` to the stored drains, retrying from a fresh read on 409 Conflict."""

        def mutate(text: str | None) -> str:
            return dump_drains(edit(parse_drains(text, source=self.name)))

        text = await update_configmap_key(self.api, self.ref, mutate)
        return parse_drains(text, source=self.name)

    def watch(self) -> AsyncIterator[str | None]:
        """Follow the key through list + watch, resuming from the last resourceVersion."""
        return watch_configmap(self.api, self.ref)


@dataclass(frozen=True)
class Opened:
    """The first good config, and where it keeps coming from."""

    config: Config
    config_source: ConfigSource
    origin: Path | ConfigMapRef  # the file, or the ConfigMap key, it was read from


class Stores:
    """One command's (or one router's) way to its config and drains.

    Use as ``async with Stores(kubeconfig=...) as stores:``; the Kubernetes client, if one was
    needed, is shared by the config and the drains and closed on exit. Every failure to find
    a usable config or drain store is a ConfigError naming the source, so a command can print
    one sentence.
    """

    def __init__(self, *, kubeconfig: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self._api: ApiClient | None = None

    async def __aenter__(self) -> Stores:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the Kubernetes client, if one was opened."""
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()

    async def open(self, location: str) -> Opened:
        """Read and validate the config at ``location`` (a path or ``configmap:…``)."""
        if not location.startswith(CONFIGMAP_PREFIX):
            path = Path(location)
            return Opened(load_config(path), FileConfigSource(path), path)
        ref = self._ref(location.removeprefix(CONFIGMAP_PREFIX), CONFIG_KEY, source=location,
                        field=None)
        name = f"{CONFIGMAP_PREFIX}{ref}"
        api = await self._client(name)
        try:
            document = await read_configmap_key(api, ref)
        except KubeError as e:
            raise ConfigError(f"cannot read it from the Kubernetes API: {e}", source=name) from e
        if document is None:
            raise ConfigError(f"ConfigMap {ref.namespace}/{ref.name} does not exist or has no "
                              f"key {ref.key!r}", source=name)
        return Opened(load_config_text(document, source=name), ConfigMapConfigSource(api, ref),
                      ref)

    async def open_with_drains(self, location: str) -> tuple[Opened, DrainStore]:
        """The config at ``location`` and the drain store it names, both known to be usable."""
        opened = await self.open(location)
        return opened, await self.drain_store(opened)

    def drains_location(self, opened: Opened) -> Path | ConfigMapRef:
        """Where ``opened.config`` keeps drains, resolved against where it was read, without
        contacting the API (so a config can be checked offline)."""
        config, origin = opened.config, opened.origin
        if config.drains.configmap:
            namespace = origin.namespace if isinstance(origin, ConfigMapRef) else None
            return self._ref(config.drains.configmap, DRAINS_KEY, source=config.source,
                             field="drains.configmap", namespace=namespace)
        if isinstance(origin, ConfigMapRef):
            raise ConfigError(
                "a config kept in a ConfigMap must keep drains in one too "
                "('drains: {configmap: NAME}'): a file would be neither shared by the "
                "replicas nor reachable by `federation drain`",
                source=config.source, field="drains")
        return origin.resolve().parent / (config.drains.file or DRAINS_KEY)

    async def drain_store(self, opened: Opened) -> DrainStore:
        """The drain store ``opened.config`` names, ready to read, change and watch."""
        where = self.drains_location(opened)
        if isinstance(where, ConfigMapRef):
            return ConfigMapDrainStore(await self._client(opened.config.source), where)
        return FileDrainStore(where)

    def _ref(self, text: str, key: str, *, source: str, field: str | None,
             namespace: str | None = None) -> ConfigMapRef:
        if namespace is None and "/" not in text:
            namespace = default_namespace(self.kubeconfig)
        try:
            return ConfigMapRef.parse(text, namespace, default_key=key)
        except KubeError as e:
            raise ConfigError(str(e), source=source, field=field) from e

    async def _client(self, source: str) -> ApiClient:
        if self._api is None:
            try:
                self._api = await connect(self.kubeconfig)
            except KubeConfigError as e:
                raise ConfigError(f"{e} (give --kubeconfig PATH, or run inside the cluster)",
                                  source=source) from e
        return self._api


async def build_router(location: str, *,
                       kubeconfig: str | None = None) -> tuple[web.Application, ConfigSource]:
    """The router ``federation serve`` runs: the first good config from ``location``, watched,
    and its drain store, watched; returns the application and its config source (for SIGHUP).

    Call it inside the event loop that will serve the application: the Kubernetes client
    belongs to that loop, and closes with the application, after its watchers have stopped.
    """
    stores = Stores(kubeconfig=kubeconfig)
    try:
        opened, drains = await stores.open_with_drains(location)
    except BaseException:
        await stores.close()
        raise
    app = create_app(opened.config, config_source=opened.config_source, drain_source=drains)

    async def close_client(app: web.Application) -> None:
        await stores.close()  # on_cleanup runs after cleanup_ctx has stopped the watchers

    app.on_cleanup.append(close_client)
    return app, opened.config_source
