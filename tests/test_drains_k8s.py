"""Config and drains kept in Kubernetes ConfigMaps, as deploy/ runs the router.

No API server can run where these tests run, so ``tests/kubeapi.py`` serves the ConfigMap
slice of the API on 127.0.0.1 (list, watch streams with bookmarks, resourceVersion, 409 and
410) and every client — each router replica, the ``federation`` command — reaches it through a
real kubeconfig file, exactly as it would reach a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from kubernetes_asyncio.client import ApiClient

from federation.app import STATE
from federation.drains import drain_member, dump_drains, parse_drains, with_drain
from federation.kube import ConfigMapRef, connect, default_namespace
from federation.runtime import RouterState
from federation.stores import ConfigMapDrainStore, build_router
from tests.conftest import Federation, StartFederation, run_cli
from tests.kubeapi import FakeKubeAPI, running_kube_api

pytestmark = pytest.mark.timeout(10)

NS = "binder"
DRAINS = ConfigMapRef(NS, "federation-drains", "drains.yaml")
AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeAPI]:
    """The fake API server, with the drains ConfigMap shipped empty as deploy/ ships it."""
    async with running_kube_api(bookmark_interval=0.2) as api:
        api.apply(NS, DRAINS.name, {})
        yield api


@pytest.fixture
def kubeconfig(kube: FakeKubeAPI, tmp_path: Path) -> str:
    """A kubeconfig for the fake server whose context namespace is ``binder``."""
    return str(kube.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))


@pytest.fixture
async def kube_client(kubeconfig: str) -> AsyncIterator[ApiClient]:
    """A client for the first replica's drain store (closed after the routers stop)."""
    async with await connect(kubeconfig) as client:
        yield client


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``federation serve`` configures logging for the process (to the test runner's streams,
    closed afterwards); put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


async def two_replicas(start: StartFederation, kube_client: ApiClient, kubeconfig: str,
                       aiohttp_client: AiohttpClient) -> tuple[Federation, RouterState]:
    """Two routers for the same members and config, both watching the drains ConfigMap.

    The first is the fixture's router given a ConfigMap drain store; the second is built by
    ``build_router`` from the config file, as ``federation serve`` builds it (the drains'
    namespace then comes from the kubeconfig's context).
    """
    fed = await start(["a", "b", "c"], routing={"strategy": "rendezvous"},
                      drains={"configmap": DRAINS.name},
                      drain_source=ConfigMapDrainStore(kube_client, DRAINS))
    app, _ = await build_router(str(fed.config_path), kubeconfig=kubeconfig)
    await aiohttp_client(app)
    second = app[STATE]
    await fed.wait_for(lambda: second.ready and all(
        second.table.by_name[n].status.value == "healthy" for n in "abc"))
    return fed, second


def status_of(state: RouterState, name: str) -> str:
    """A member's status in one router's current table."""
    return state.table.by_name[name].status.value


async def test_drain_reaches_every_replica_within_two_seconds(
    kube: FakeKubeAPI, kubeconfig: str, kube_client: ApiClient,
    start_federation: StartFederation, aiohttp_client: AiohttpClient,
    record_property: Callable[[str, Any], None],
) -> None:
    """``federation drain`` with the ConfigMap store is applied by both router replicas within
    2 s, with reason and author stored in the ConfigMap; ``undrain`` restores both."""
    fed, second = await two_replicas(start_federation, kube_client, kubeconfig, aiohttp_client)
    replicas = {"first": fed.state, "second": second}
    config = str(fed.config_path)

    patches = kube.requests["patch"]
    seen: dict[str, float] = {}  # when the patch landed, when each replica applied it

    def applied_everywhere() -> bool:
        now = time.perf_counter()
        if "patch" not in seen and kube.requests["patch"] > patches:
            seen["patch"] = now
        for name, state in replicas.items():
            if name not in seen and status_of(state, "b") == "drained":
                seen[name] = now
        return len(seen) == 1 + len(replicas)

    commanded = time.perf_counter()
    command = asyncio.ensure_future(run_cli(
        "drain", "b", "--reason", "registry timeouts", "--by", "alice",
        "--config", config, "--kubeconfig", kubeconfig))
    await fed.wait_for(applied_everywhere, timeout=2)  # the acceptance: 2 s from the command
    result = await command
    assert result.exit_code == 0, result.output
    assert "Drained b in configmap:binder/federation-drains/drains.yaml" in result.output
    stored = kube.get(NS, DRAINS.name)
    assert stored is not None
    drain = parse_drains(stored["data"]["drains.yaml"])["b"]
    assert (drain.reason, drain.by) == ("registry timeouts", "alice")
    assert second.table.by_name["b"].reason == "drained by alice: registry timeouts"

    started = time.perf_counter()
    result = await run_cli("undrain", "b", "--config", config, "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output
    for state in replicas.values():
        await fed.wait_for(lambda state=state: status_of(state, "b") == "healthy", timeout=2)
    restored = time.perf_counter() - started
    record_property("figures", (
        f"ConfigMap store: the drain command's patch landed {ms(seen['patch'] - commanded)} after "
        f"it started; replicas applied it {ms(seen['first'] - seen['patch'])} and "
        f"{ms(seen['second'] - seen['patch'])} after the patch (10 ms polling); undrain "
        f"applied by both {ms(restored)} after its command started"))


def ms(seconds: float) -> str:
    """Milliseconds, for the figures."""
    return f"{seconds * 1000:.0f} ms"


async def test_cut_watch_is_reestablished_and_the_drain_made_meanwhile_applies(
    kube: FakeKubeAPI, kubeconfig: str, kube_client: ApiClient,
    start_federation: StartFederation, aiohttp_client: AiohttpClient,
) -> None:
    """When the watch connections are cut mid-stream, both replicas reconnect from their last
    resourceVersion (no relist) and apply the drain written while they were away."""
    fed, second = await two_replicas(start_federation, kube_client, kubeconfig, aiohttp_client)
    await fed.wait_for(lambda: kube.open_watches == 2)
    watches, lists = kube.requests["watch"], kube.requests["list"]
    assert kube.cut_watches() == 2
    # Written before either replica can have reconnected: nothing runs between these lines.
    kube.apply(NS, DRAINS.name, {"drains.yaml": dump_drains(
        with_drain({}, "c", reason="cut test", by="bob"))})
    for state in (fed.state, second):
        await fed.wait_for(lambda state=state: status_of(state, "c") == "drained", timeout=2)
    assert kube.requests["watch"] >= watches + 2
    assert kube.requests["list"] == lists


async def test_racing_drains_both_land(
    kube: FakeKubeAPI, kubeconfig: str, kube_client: ApiClient,
    start_federation: StartFederation, aiohttp_client: AiohttpClient,
) -> None:
    """Two operators draining different members at the same moment both succeed: the
    conflicting write gets 409 and is redone on a fresh read, and every replica shows both."""
    fed, second = await two_replicas(start_federation, kube_client, kubeconfig, aiohttp_client)
    config = fed.state.config
    store = ConfigMapDrainStore(kube_client, DRAINS)
    kube.inject_conflicts(2)
    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(*(
            store.update(lambda drains, name=name: drain_member(
                drains, config, name, reason=f"race {name}", by=name))
            for name in ("b", "c")))
    assert sum(entry["event"] == "configmap.conflict" for entry in logs) >= 2
    stored = kube.get(NS, DRAINS.name)
    assert stored is not None
    assert set(parse_drains(stored["data"]["drains.yaml"])) == {"b", "c"}
    for state in (fed.state, second):
        await fed.wait_for(lambda state=state: status_of(state, "b") == status_of(state, "c")
                           == "drained", timeout=2)


def config_text(fed: Federation, members: list[str], **changes: Any) -> str:
    """The fixture's config as ConfigMap text, for ``members``, drains in the ConfigMap."""
    doc = {**fed.config_doc, "drains": {"configmap": DRAINS.name}}
    entries = [m for m in doc["members"] if m["name"] in members]
    doc["members"] = [{**m, **changes.get(m["name"], {})} for m in entries]
    return yaml.safe_dump(doc, sort_keys=False)


async def test_config_in_a_configmap_is_watched_and_broken_edits_rejected(
    kube: FakeKubeAPI, kubeconfig: str, start_federation: StartFederation,
    aiohttp_client: AiohttpClient,
) -> None:
    """``serve --config configmap:NAME`` reads the config from the API, then follows it: a
    member removed in the ConfigMap leaves the router, a broken edit is rejected naming member
    and field, and SIGHUP (reload_now) makes it list again."""
    fed = await start_federation(["a", "b", "c"], wait_ready=False)
    kube.apply(NS, "federation-config", {"config.yaml": config_text(fed, ["a", "b", "c"])})
    app, source = await build_router("configmap:federation-config", kubeconfig=kubeconfig)
    await aiohttp_client(app)
    state: RouterState = app[STATE]
    assert state.config.source == "configmap:binder/federation-config/config.yaml"
    await fed.wait_for(lambda: state.ready)

    kube.apply(NS, "federation-config", {"config.yaml": config_text(fed, ["a", "b"])})
    await fed.wait_for(lambda: set(state.table.by_name) == {"a", "b"}, timeout=2)

    kube.apply(NS, "federation-config", {"config.yaml": config_text(
        fed, ["a", "b"], b={"weight": -1})})
    await fed.wait_for(lambda: state.rejection is not None, timeout=2)
    error = state.rejection.error
    assert (error.source, error.member, error.field) == (
        "configmap:binder/federation-config/config.yaml", "b", "weight")
    assert state.metrics.registry.get_sample_value(
        "federation_config_reload_errors_total") == 1
    assert set(state.table.by_name) == {"a", "b"}

    lists = kube.requests["list"]
    source.reload_now()
    await fed.wait_for(lambda: kube.requests["list"] > lists, timeout=2)


async def test_commands_find_the_drains_next_to_a_configmap_config(
    kube: FakeKubeAPI, kubeconfig: str, start_federation: StartFederation,
) -> None:
    """With ``--config configmap:NS/NAME`` the command reads the config from the API and finds
    the drains ConfigMap in the same namespace; ``check`` and ``route`` work from there too."""
    fed = await start_federation(["a", "b"], wait_ready=False)
    other = kube.write_kubeconfig(fed.workdir / "other-ns", namespace="elsewhere")
    kube.apply(NS, "federation-config", {"config.yaml": config_text(fed, ["a", "b"])})
    where = ["--config", "configmap:binder/federation-config", "--kubeconfig", str(other)]
    drained = await run_cli("drain", "b", "--reason", "x", *where)
    assert drained.exit_code == 0, drained.output
    stored = kube.get(NS, DRAINS.name)
    assert stored is not None
    assert set(parse_drains(stored["data"]["drains.yaml"])) == {"b"}
    checked = await run_cli("check", *where)
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(
        "OK: configmap:binder/federation-config/config.yaml: 2 members")
    routed = await run_cli("route", "--json", *where, "/build/gh/org/repo/HEAD")
    assert '"member": "a"' in routed.output


@pytest.mark.usefixtures("restore_logging")
async def test_serve_refuses_to_start_without_a_good_config(
    kube: FakeKubeAPI, kubeconfig: str,
) -> None:
    """``serve`` stops before listening, with one sentence, when the ConfigMap is missing,
    holds an invalid config, or keeps drains in a file no other replica could see."""
    serve = ["serve", "--kubeconfig", kubeconfig, "--host", "127.0.0.1", "--port", "0",
             "--log-format", "json", "--loop", "asyncio", "--config"]
    missing = await run_cli(*serve, "configmap:binder/nothing")
    assert missing.exit_code == 1
    assert ("error: configmap:binder/nothing/config.yaml: ConfigMap binder/nothing does not "
            "exist or has no key 'config.yaml'; the router did not start") in missing.output

    members = [{"name": "a", "url": "http://127.0.0.1:9", "prime": True},
               {"name": "b", "url": "http://127.0.0.1:9", "weight": "heavy"}]
    kube.apply(NS, "federation-config", {"config.yaml": yaml.safe_dump(
        {"members": members, "drains": {"configmap": DRAINS.name}})})
    invalid = await run_cli(*serve, "configmap:federation-config")
    assert invalid.exit_code == 1
    assert ("configmap:binder/federation-config/config.yaml: member 'b': field 'weight'"
            in invalid.output)

    kube.apply(NS, "federation-config", {"config.yaml": yaml.safe_dump(
        {"members": members[:1], "drains": {"file": "drains.yaml"}})})
    filed = await run_cli(*serve, "configmap:federation-config")
    assert filed.exit_code == 1
    assert "a config kept in a ConfigMap must keep drains in one too" in filed.output

def test_unqualified_names_resolve_where_kubectl_would(
    kubeconfig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ConfigMap named without a namespace lives in the pod's namespace ($POD_NAMESPACE, set
    by the Deployment) inside a pod, else in the kubeconfig context's, else in "default"."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert default_namespace(kubeconfig) == NS
    assert default_namespace(str(tmp_path / "missing")) == "default"
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    assert default_namespace() == NS
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("POD_NAMESPACE", "federation-staging")
    assert default_namespace() == "federation-staging"
    assert default_namespace(kubeconfig) == NS  # an explicit kubeconfig wins, as in connect()
