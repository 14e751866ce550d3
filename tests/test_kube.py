"""federation.kube against the fake API server, over loopback sockets and a real kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import structlog
import yaml
from kubernetes_asyncio.client import (
    ApiClient,
    ApiException,
    CoreV1Api,
    V1ConfigMap,
    V1ObjectMeta,
)

from federation import kube
from federation.errors import InvalidConfigMapRef, KubeConfigError, ResourceConflict
from federation.kube import ConfigMapRef, connect, update_configmap_key, watch_configmap
from tests.kubeapi import FakeKubeAPI, running_kube_api

pytestmark = pytest.mark.timeout(3)

REF = ConfigMapRef(namespace="binder", name="federation", key="federation.yaml")
FAST = {"backoff": (0.01, 0.02), "inactivity_timeout": 2.0}


@pytest.fixture
async def server() -> AsyncIterator[FakeKubeAPI]:
    async with running_kube_api(bookmark_interval=0.05) as fake:
        yield fake


@pytest.fixture
async def api(server: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[ApiClient]:
    client = await connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    async with client:
        yield client


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition on the fake server's side, polling briefly."""
    async with asyncio.timeout(2):
        while not predicate():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def following(
    api: ApiClient, ref: ConfigMapRef, **options: Any
) -> AsyncIterator[asyncio.Queue[str | None]]:
    """Consume watch_configmap in a task, as a router task would, so the watch runs meanwhile.

    An async generator only works while someone waits on it; a test that waited for the
    watch to open before asking for the next value would wait forever.
    """
    values: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump() -> None:
        async with contextlib.aclosing(watch_configmap(api, ref, **options)) as watcher:
            async for value in watcher:
                values.put_nowait(value)

    task = asyncio.create_task(pump())
    try:
        yield values
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises whatever made the watcher fail, if anything did


async def next_value(values: asyncio.Queue[str | None]) -> str | None:
    async with asyncio.timeout(2):
        return await values.get()


def add_member(name: str) -> Callable[[str | None], str]:
    """A mutation of a YAML document, as an operator command would make it."""

    def mutate(text: str | None) -> str:
        doc = yaml.safe_load(text or "") or {}
        doc.setdefault("members", {})[name] = {"weight": 1}
        return yaml.safe_dump(doc)

    return mutate


class TestConnect:
    async def test_kubeconfig_env_is_used_outside_a_pod(
        self, server: FakeKubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an explicit path or a pod environment, $KUBECONFIG names the file."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kc")))
        async with await connect() as client:
            cm = await CoreV1Api(client).read_namespaced_config_map("federation", "binder")
        assert cm.data == {"federation.yaml": "a: 1\n"}

    async def test_pod_environment_uses_the_service_account(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Inside a pod, with no kubeconfig given, the service account is used (here: absent)."""
        if Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists():
            pytest.skip("running in a real pod")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
        with pytest.raises(KubeConfigError) as caught:
            await connect()
        assert caught.value.source == "in-cluster service account"

    async def test_missing_kubeconfig_is_a_config_error(self, tmp_path: Path) -> None:
        """A kubeconfig path that does not exist is reported as KubeConfigError naming it."""
        missing = str(tmp_path / "nope")
        with pytest.raises(KubeConfigError) as caught:
            await connect(missing)
        assert caught.value.source == missing


class TestConfigMapRef:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("federation", ConfigMapRef("ns1", "federation", "federation.yaml")),
            ("binder/federation", ConfigMapRef("binder", "federation", "federation.yaml")),
            ("binder/drains/drains.yaml", ConfigMapRef("binder", "drains", "drains.yaml")),
            ("binder/my.config/K_1-x", ConfigMapRef("binder", "my.config", "K_1-x")),
        ],
    )
    def test_parse_accepts_the_documented_forms(self, text: str, expected: ConfigMapRef) -> None:
        """NAME, NAMESPACE/NAME and NAMESPACE/NAME/KEY parse; the defaults fill the gaps."""
        assert ConfigMapRef.parse(text, "ns1") == expected

    @pytest.mark.parametrize(
        "text",
        ["", "a/b/c/d", "Binder/federation", "binder/Fed", "binder/fed/bad key", "binder/fed/.."],
    )
    def test_parse_rejects_what_the_api_server_would(self, text: str) -> None:
        """Names, namespaces and keys the API server would refuse fail early, quoting the text."""
        with pytest.raises(InvalidConfigMapRef) as caught:
            ConfigMapRef.parse(text, "binder")
        assert repr(text) in str(caught.value)

    def test_namespace_defaults_to_the_pods(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Inside a pod the service account's namespace is the default; elsewhere "default"."""
        namespace_file = tmp_path / "namespace"
        monkeypatch.setattr(kube, "_NAMESPACE_FILE", namespace_file)
        assert ConfigMapRef.parse("federation").namespace == "default"
        namespace_file.write_text("binder-prod\n")
        assert ConfigMapRef.parse("federation").namespace == "binder-prod"


class TestWatchConfigMap:
    async def test_initial_value_is_yielded(self, server: FakeKubeAPI, api: ApiClient) -> None:
        """The first value is the key's current text, from a list filtered by name."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        server.apply("binder", "other", {"federation.yaml": "not this one\n"})
        async with following(api, REF, **FAST) as values:
            assert await next_value(values) == "a: 1\n"
        assert server.requests["list"] == 1

    async def test_change_is_yielded(
        self,
        server: FakeKubeAPI,
        api: ApiClient,
        record_property: Callable[[str, Any], None],
    ) -> None:
        """A change to the key arrives through the open watch, without another list."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        async with following(api, REF, **FAST) as values:
            await next_value(values)
            await until(lambda: server.open_watches == 1)
            started = time.perf_counter()
            server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
            assert await next_value(values) == "a: 2\n"
            record_property("change_latency_ms", round(1000 * (time.perf_counter() - started)))
        assert server.requests["list"] == 1

    async def test_cut_watch_resumes_and_sees_the_change_made_in_the_gap(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """A watch cut mid-stream is re-established from the tracked resourceVersion."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        async with following(api, REF, **FAST) as values:
            await next_value(values)
            await until(lambda: server.open_watches == 1)
            assert server.cut_watches() == 1
            server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
            assert await next_value(values) == "a: 2\n"
        assert server.requests["watch"] == 2
        assert server.requests["list"] == 1

    async def test_expired_resource_version_relists(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """A 410 inside the watch stream makes the watcher list again and report what it finds."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        with structlog.testing.capture_logs() as logs:
            async with following(api, REF, **FAST) as values:
                await next_value(values)
                await until(lambda: server.open_watches == 1)
                server.cut_watches()
                server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
                server.compact()
                assert await next_value(values) == "a: 2\n"
        assert server.requests["list"] == 2
        relists = [entry for entry in logs if entry["event"] == "configmap.relist"]
        assert len(relists) == 1
        assert "410 Expired" in relists[0]["reason"]

    async def test_missing_configmap_yields_none_until_created(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """None stands for a missing ConfigMap or key: at first, and again after deletion."""
        async with following(api, REF, **FAST) as values:
            assert await next_value(values) is None
            server.apply("binder", "federation", {"other-key": "x"})
            server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
            assert await next_value(values) == "a: 1\n"
            server.remove("binder", "federation")
            assert await next_value(values) is None

    async def test_hung_stream_is_replaced_after_inactivity(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """A stream with no event or bookmark for inactivity_timeout is dropped and resumed."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        async with following(api, REF, backoff=(0.01,), inactivity_timeout=0.3) as values:
            await next_value(values)
            await until(lambda: server.open_watches == 1)
            server.freeze_watches()
            server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
            assert await next_value(values) == "a: 2\n"
        assert server.requests["watch"] == 2
        assert server.requests["list"] == 1

    async def test_stream_ended_by_the_server_is_resumed_without_a_relist(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """When timeoutSeconds ends the stream cleanly, the watch resumes at once from where
        it was."""
        server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
        with structlog.testing.capture_logs() as logs:
            async with following(api, REF, server_timeout=1, **FAST) as values:
                await next_value(values)
                await until(lambda: server.requests["watch"] == 2 and server.open_watches == 1)
                server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
                assert await next_value(values) == "a: 2\n"
        assert server.requests["list"] == 1
        reconnects = [entry for entry in logs if entry["event"] == "configmap.reconnect"]
        assert [entry["reason"] for entry in reconnects] == ["stream ended by the server"]

    async def test_unreachable_server_is_retried_with_capped_backoff(self, tmp_path: Path) -> None:
        """Failures are retried forever, each logged with its reason, the delays following the
        backoff sequence (±20 % jitter) and then repeating its last step."""
        async with running_kube_api() as gone:
            kubeconfig = gone.write_kubeconfig(tmp_path / "kc")
        backoff = (0.01, 0.02, 0.04)
        with structlog.testing.capture_logs() as logs:
            async with (
                await connect(str(kubeconfig)) as client,
                following(client, REF, backoff=backoff),
            ):
                await until(lambda: sum(e["event"] == "configmap.reconnect" for e in logs) >= 5)
        reconnects = [entry for entry in logs if entry["event"] == "configmap.reconnect"][:5]
        assert [entry["attempt"] for entry in reconnects] == [1, 2, 3, 4, 5]
        for entry, step in zip(reconnects, (*backoff, 0.04, 0.04), strict=True):
            assert step * 0.8 - 0.001 <= entry["delay"] <= step * 1.2 + 0.001  # logged in ms
            assert entry["reason"].startswith(f"list {REF}: ClientConnectorError")

    async def test_bookmarks_keep_the_resource_version_fresh(self, tmp_path: Path) -> None:
        """Bookmarks move the tracked resourceVersion past other objects' writes, so a resumed
        watch stays inside a short history instead of needing a relist."""
        async with running_kube_api(history_size=3, bookmark_interval=0.02) as server:
            server.apply("binder", "federation", {"federation.yaml": "a: 1\n"})
            async with (
                await connect(str(server.write_kubeconfig(tmp_path / "kc"))) as client,
                following(client, REF, **FAST) as values,
            ):
                await next_value(values)
                await until(lambda: server.open_watches == 1)
                for i in range(5):
                    server.apply("binder", f"unrelated-{i}", {"k": "v"})
                seen = server.bookmarks_sent
                await until(lambda: server.bookmarks_sent >= seen + 2)
                server.cut_watches()
                server.apply("binder", "federation", {"federation.yaml": "a: 2\n"})
                assert await next_value(values) == "a: 2\n"
            assert server.requests["list"] == 1


class TestUpdateConfigMapKey:
    async def test_racing_updates_with_conflicts_both_land(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """Two writers racing on one key (plus injected 409s) retry from a fresh read: no write
        is lost, whichever created the ConfigMap."""
        server.inject_conflicts(3)
        with structlog.testing.capture_logs() as logs:
            await asyncio.gather(
                update_configmap_key(api, REF, add_member("gke"), attempts=8),
                update_configmap_key(api, REF, add_member("ovh"), attempts=8),
            )
        stored = server.get("binder", "federation")
        assert stored is not None
        members = yaml.safe_load(stored["data"]["federation.yaml"])["members"]
        assert set(members) == {"gke", "ovh"}
        assert sum(entry["event"] == "configmap.conflict" for entry in logs) >= 3

    async def test_update_keeps_other_keys_and_returns_the_new_text(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """The merge patch touches only our key, and an unchanged text writes nothing."""
        server.apply("binder", "federation", {"federation.yaml": "{}\n", "notes": "keep me"})
        text = await update_configmap_key(api, REF, add_member("gke"))
        assert text == "members:\n  gke:\n    weight: 1\n"
        await update_configmap_key(api, REF, add_member("gke"))
        stored = server.get("binder", "federation")
        assert stored is not None
        assert stored["data"] == {"federation.yaml": text, "notes": "keep me"}
        assert server.requests["patch"] == 1

    async def test_conflicts_beyond_attempts_raise(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """When every attempt meets a conflict, ResourceConflict says how many were made."""
        server.apply("binder", "federation", {"federation.yaml": "{}\n"})
        server.inject_conflicts(10)
        with pytest.raises(ResourceConflict) as caught:
            await update_configmap_key(api, REF, add_member("gke"), attempts=3)
        assert caught.value.status == 409
        assert "after 3 attempts" in caught.value.message
        assert server.requests["patch"] == 3
        stored = server.get("binder", "federation")
        assert stored is not None
        assert stored["data"] == {"federation.yaml": "{}\n"}


class TestFakeKubeAPI:
    """The fake behaves like the real API server where our client code depends on it."""

    async def test_requests_without_the_token_get_a_401_status(self, server: FakeKubeAPI) -> None:
        """Authentication is checked, and failures come back as Status objects."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.url}/api/v1/namespaces/binder/configmaps") as response,
        ):
            status = await response.json()
        assert response.status == 401
        assert (status["kind"], status["code"], status["reason"]) == ("Status", 401, "Unauthorized")

    async def test_replace_with_a_stale_resource_version_conflicts(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """PUT honours metadata.resourceVersion as a precondition."""
        created = server.apply("binder", "federation", {"k": "1"})
        server.apply("binder", "federation", {"k": "2"})
        stale = V1ConfigMap(
            metadata=V1ObjectMeta(
                name="federation", resource_version=created["metadata"]["resourceVersion"]
            ),
            data={"k": "3"},
        )
        core = CoreV1Api(api)
        with pytest.raises(ApiException) as caught:
            await core.replace_namespaced_config_map("federation", "binder", stale)
        assert caught.value.status == 409
        stale.metadata.resource_version = server.resource_version
        replaced = await core.replace_namespaced_config_map("federation", "binder", stale)
        assert replaced.data == {"k": "3"}

    async def test_watch_from_nothing_starts_with_synthetic_adds_and_honours_timeout(
        self, server: FakeKubeAPI, api: ApiClient
    ) -> None:
        """Without a resourceVersion the stream starts with the current state, and
        timeoutSeconds ends it cleanly."""
        server.apply("binder", "federation", {"k": "1"})
        raw = await CoreV1Api(api).list_namespaced_config_map(
            "binder", watch=True, timeout_seconds=1, _preload_content=False
        )
        response = cast(aiohttp.ClientResponse, raw)  # what _preload_content=False returns
        try:
            lines = [line async for line in response.content]
        finally:
            response.release()
        assert [yaml.safe_load(line)["type"] for line in lines] == ["ADDED"]
