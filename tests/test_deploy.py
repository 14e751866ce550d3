"""The container image recipe and the Kubernetes manifests in ``deploy/``.

Every kustomize target is rendered with ``kubectl kustomize`` (offline) and each rendered object
is checked against the strict JSON schemas of one Kubernetes release, shipped inside the
``kubernetes-validate`` package, so no cluster and no network are needed. The rest cross-checks
the manifests against the router itself: probe paths, port, the ConfigMaps it watches, the
RBAC it needs for them, and its own config loader.

Without kubectl these tests skip, unless ``CI`` is set: then they fail, because a CI run that
skipped them would prove nothing.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BASE = "base"
OVERLAYS = ("overlays/production", "overlays/staging")
TARGETS = (BASE, *OVERLAYS)

# Schemas of this release (shipped by kubernetes-validate >= 1.32) are the reference.
KUBERNETES_VERSION = "1.32"

CONFIG_CONFIGMAP = "federation-config"
DRAINS_CONFIGMAP = "federation-drains"
DEFAULT_CONFIG_KEY = "config.yaml"
DRAINS_KEY = "drains.yaml"
IMAGE_UID = 10001

Manifest = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if _ci():
            pytest.fail("kubectl is not installed but CI is set; .ci/run must install it")
        pytest.skip("kubectl not found: it renders deploy/kubernetes with `kubectl kustomize`")
    return found


def _kustomize(directory: Path) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class Render:
    """The objects one kustomize target renders to."""

    target: str
    objects: tuple[Manifest, ...]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.of_kind(kind)
        assert len(found) == 1, f"{self.target}: expected one {kind}, found {len(found)}"
        return found[0]

    def configmap(self, name: str) -> Manifest | None:
        return next((o for o in self.of_kind("ConfigMap") if o["metadata"]["name"] == name), None)

    @property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def container(self) -> Manifest:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, f"{self.target}: expected one container"
        result: Manifest = containers[0]
        return result

    @property
    def namespace(self) -> str | None:
        ns: str | None = self.deployment["metadata"].get("namespace")
        return ns


@functools.cache
def _render(target: str) -> Render:
    return Render(target, _kustomize(KUSTOMIZE / target))


@pytest.fixture(params=TARGETS)
def render(request: pytest.FixtureRequest) -> Render:
    """Each kustomize target, rendered once per test session."""
    return _render(request.param)


# --- helpers ---------------------------------------------------------------------------------


def _name(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('name', '?')}"


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def _require_schemas() -> None:
    latest = kubernetes_validate.latest_version()
    if _minor(latest) < _minor(KUBERNETES_VERSION):
        pytest.fail(
            f"kubernetes-validate {kubernetes_validate.__version__} ships schemas up to "
            f"Kubernetes {latest}; these tests use {KUBERNETES_VERSION}: upgrade it"
        )


def _schema_problems(objects: Iterable[Manifest]) -> list[str]:
    _require_schemas()
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            problems.append(f"{_name(obj)}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{_name(obj)}: {e.message}")
    return problems


def _options(args: list[str]) -> dict[str, str]:
    """``--flag value`` pairs of a command line (every option of ``serve`` takes a value)."""
    return {flag: value for flag, value in itertools.pairwise(args) if flag.startswith("--")}


@dataclass(frozen=True)
class ConfigMapSource:
    namespace: str | None
    name: str
    key: str


def _configmap_source(source: str) -> ConfigMapSource:
    """Parse ``configmap:NAME``, ``configmap:NS/NAME`` or ``configmap:NS/NAME/KEY``."""
    assert source.startswith("configmap:"), f"expected a configmap: source, got {source!r}"
    parts = source.removeprefix("configmap:").split("/")
    assert 1 <= len(parts) <= 3 and all(parts), f"malformed config source {source!r}"
    if len(parts) == 1:
        return ConfigMapSource(None, parts[0], DEFAULT_CONFIG_KEY)
    return ConfigMapSource(parts[0], parts[1], parts[2] if len(parts) == 3 else DEFAULT_CONFIG_KEY)


def _config_source(render: Render) -> ConfigMapSource:
    return _configmap_source(_options(render.container["args"])["--config"])


def _router_config_text(render: Render) -> str:
    source = _config_source(render)
    configmap = render.configmap(source.name)
    assert configmap is not None, f"{render.target}: no ConfigMap {source.name!r}"
    text: str = configmap["data"][source.key]
    return text


def _drains_name(render: Render) -> tuple[str | None, str]:
    data = yaml.safe_load(_router_config_text(render))
    ref = str(data["drains"]["configmap"])
    namespace, _, name = ref.rpartition("/")
    return namespace or None, name


def _grants(role: Manifest) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, resourceName or *, verb) for every permission a Role gives."""
    grants = set()
    for rule in role.get("rules", []):
        assert not rule.get("nonResourceURLs"), "a Role cannot grant non-resource URLs"
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for name in rule.get("resourceNames") or ["*"]:
                    for verb in rule.get("verbs", []):
                        grants.add((group, resource, name, verb))
    return grants


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"{self.keyword} must use the JSON (exec) form"
        return [str(item) for item in parsed]


def _dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions of a Dockerfile, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, value = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _global_args(instructions: list[Instruction]) -> dict[str, str]:
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.value.partition("=")
            args[name] = default
    return args


def _env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for pair in ins.value.split():
                name, sep, value = pair.partition("=")
                if sep:
                    env[name] = value
    return env


def _copy_sources(instructions: list[Instruction]) -> Iterator[str]:
    for ins in instructions:
        if ins.keyword in ("COPY", "ADD"):
            words = ins.value.split()
            if any(w.startswith("--from") for w in words):
                continue
            yield from (w for w in words[:-1] if not w.startswith("--"))


# --- schemas ---------------------------------------------------------------------------------


def test_rendered_objects_match_kubernetes_schemas(render: Render) -> None:
    """Every object a target renders is valid under Kubernetes' strict schemas (no unknown
    fields, right types) for the release the deployment targets."""
    assert render.objects, f"{render.target} rendered nothing"
    assert _schema_problems(render.objects) == []


@pytest.mark.parametrize(
    ("good", "bad", "where"),
    [
        ("containerPort: 8080", 'containerPort: "http-8080"', "containerPort"),
        ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", "securityContext"),
    ],
    ids=["wrong-type", "misspelt-field"],
)
def test_schema_check_rejects_a_broken_manifest(
    tmp_path: Path, good: str, bad: str, where: str
) -> None:
    """The schema check can fail: a copy of the base with a wrongly typed or misspelt field
    renders fine but is reported, naming the Deployment and the field."""
    copy = tmp_path / "base"
    shutil.copytree(KUSTOMIZE / BASE, copy)
    deployment = copy / "deployment.yaml"
    text = deployment.read_text(encoding="utf-8")
    assert good in text, f"the base Deployment no longer contains {good!r}; update this test"
    deployment.write_text(text.replace(good, bad), encoding="utf-8")

    problems = _schema_problems(_kustomize(copy))

    assert problems, "a broken Deployment passed schema validation"
    assert all(p.startswith("Deployment/federation-router:") for p in problems), problems
    assert any(where in p for p in problems), problems


def test_unknown_kinds_are_reported_not_skipped() -> None:
    """An object whose schema is not shipped is a problem, not silently accepted."""
    stray = {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert _schema_problems([stray]) != []


# --- RBAC ------------------------------------------------------------------------------------


def test_role_grants_only_the_two_configmaps(render: Render) -> None:
    """The router may read its config and read and patch the drain records, by name, and
    nothing else: no other resources, no other verbs, no cluster-wide roles."""
    assert render.of_kind("ClusterRole") == []
    assert render.of_kind("ClusterRoleBinding") == []
    config_name = _config_source(render).name
    _, drains_name = _drains_name(render)
    assert (config_name, drains_name) == (CONFIG_CONFIGMAP, DRAINS_CONFIGMAP)

    expected = {("", "configmaps", config_name, verb) for verb in ("get", "list", "watch")} | {
        ("", "configmaps", drains_name, verb) for verb in ("get", "list", "watch", "patch")
    }
    assert _grants(render.one("Role")) == expected


def test_role_is_bound_to_the_routers_service_account(render: Render) -> None:
    """The RoleBinding gives the Role to the ServiceAccount the Deployment runs as."""
    role = render.one("Role")
    binding = render.one("RoleBinding")
    pod = render.deployment["spec"]["template"]["spec"]
    account = render.one("ServiceAccount")["metadata"]["name"]

    assert pod["serviceAccountName"] == account
    assert pod.get("automountServiceAccountToken", True) is True
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    subjects = [
        (s["kind"], s["name"], s.get("namespace", render.namespace)) for s in binding["subjects"]
    ]
    assert subjects == [("ServiceAccount", account, render.namespace)]


# --- cross-checks against the router ---------------------------------------------------------


def test_probes_use_the_routers_health_paths(render: Render) -> None:
    """Readiness and liveness probes hit the router's own endpoints on the named port."""
    from federation import app

    container = render.container
    assert container["readinessProbe"]["httpGet"] == {"path": app.READY_PATH, "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": app.LIVE_PATH, "port": "http"}


def test_ports_agree_with_the_router(render: Render) -> None:
    """The container listens on the router's default port, which the probes, the Service and
    the Prometheus annotations all use."""
    from federation import app, cli

    port = cli.DEFAULT_PORT
    container = render.container
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    assert _options(container["args"]).get("--port", str(port)) == str(port)

    annotations = render.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == app.METRICS_PATH

    service = render.one("Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, "http")]


def test_config_arg_names_a_rendered_configmap(render: Render) -> None:
    """``serve --config configmap:NAME`` names a ConfigMap of this render, in the pod's own
    namespace, holding the key the router reads. kustomize rewrites neither args nor
    config.yaml, so a namePrefix or hash suffix would break this."""
    container = render.container
    assert container["args"][0] == "serve"
    assert _options(container["args"]).get("--log-format") == "json"
    source = _config_source(render)
    assert source.namespace in (None, render.namespace)

    configmap = render.configmap(source.name)
    assert configmap is not None, f"no ConfigMap {source.name!r} in {render.target}"
    assert source.key in configmap.get("data", {})

    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_fallback_config_mount_is_the_same_configmap(render: Render) -> None:
    """The ConfigMap the router watches is also mounted read-only at /etc/federation, the
    path the image's default command reads."""
    source = _config_source(render)
    pod = render.deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in render.container["volumeMounts"]}

    mount = mounts["/etc/federation"]
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["configMap"]["name"] == source.name


def test_drains_configmap_named_in_config_exists(render: Render) -> None:
    """The drain store that config.yaml points at is rendered, in the same namespace."""
    namespace, name = _drains_name(render)
    assert namespace in (None, render.namespace)
    assert render.configmap(name) is not None, f"no ConfigMap {name!r} in {render.target}"


def test_drains_configmap_carries_no_drain_records(render: Render) -> None:
    """The drains ConfigMap is shipped without data: `kubectl apply` overwrites only the
    fields a manifest sets, so a redeploy never undoes a drain made by on-call staff."""
    _, name = _drains_name(render)
    configmap = render.configmap(name)
    assert configmap is not None
    assert DRAINS_KEY not in configmap.get("data", {})
    assert "binaryData" not in configmap


def test_rendered_configs_load_with_the_routers_loader(render: Render) -> None:
    """Every config.yaml a target renders is accepted by the router's own loader."""
    from federation.config import load_config_text

    texts = [
        (cm["metadata"]["name"], key, text)
        for cm in render.of_kind("ConfigMap")
        for key, text in cm.get("data", {}).items()
        if key.endswith(DEFAULT_CONFIG_KEY)
    ]
    assert texts, f"{render.target} renders no config.yaml"
    for name, key, text in texts:
        config = load_config_text(text, source=f"{render.target}: configmap/{name}/{key}")
        assert config.members


# --- pod hardening and availability ----------------------------------------------------------


def test_pod_runs_hardened(render: Render) -> None:
    """Non-root with the image's uid, no privilege escalation, no capabilities, read-only root
    with a writable /tmp, RuntimeDefault seccomp, and bounded memory."""
    pod = render.deployment["spec"]["template"]["spec"]
    context = render.container["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context.get("privileged", False) is False

    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in render.container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]

    resources = render.container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_replicas_autoscaling_and_disruption_budget_agree(render: Render) -> None:
    """The HPA scales this Deployment from its replica count; the PDB covers exactly the
    router's pods and always lets a node drain evict one of them."""
    deployment = render.deployment
    replicas = deployment["spec"]["replicas"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _labels_match(render.one("Service")["spec"]["selector"], pod_labels)
    assert pod_labels["app.kubernetes.io/name"] == "federation-router"

    hpa = render.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] == replicas <= hpa["maxReplicas"]
    [metric] = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}

    pdb = render.one("PodDisruptionBudget")["spec"]
    assert _labels_match(pdb["selector"]["matchLabels"], pod_labels)
    assert ("minAvailable" in pdb) != ("maxUnavailable" in pdb), "set exactly one of them"
    if "minAvailable" in pdb:
        assert 1 <= pdb["minAvailable"] < replicas
    else:
        assert pdb["maxUnavailable"] >= 1


def test_replicas_spread_over_nodes(render: Render) -> None:
    """No two replicas share a node while another node can take one."""
    pod_labels = render.deployment["spec"]["template"]["metadata"]["labels"]
    spread = render.deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    by_host = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_host) == 1
    assert by_host[0]["maxSkew"] == 1
    assert by_host[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert _labels_match(by_host[0]["labelSelector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_puts_everything_in_its_own_namespace(overlay: str) -> None:
    """An overlay renders its Namespace and every other object into it, and the base does
    not pin one."""
    render = _render(overlay)
    [namespace] = [o["metadata"]["name"] for o in render.of_kind("Namespace")]
    assert namespace != "default"
    for obj in render.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, _name(obj)
    assert all("namespace" not in o["metadata"] for o in _render(BASE).objects)


def test_overlays_use_distinct_namespaces() -> None:
    """Production and staging can live in one cluster without touching each other."""
    namespaces = [_render(overlay).namespace for overlay in OVERLAYS]
    assert len(set(namespaces)) == len(namespaces)


def test_production_has_an_ingress_to_the_router() -> None:
    """The public host reaches the router's Service on its named port."""
    render = _render("overlays/production")
    service = render.one("Service")
    [rule] = render.one("Ingress")["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == "/"
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert path["backend"]["service"]["port"] == {"name": "http"}


# --- container image -------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    """Wheels are built in one stage; the final stage is a slim Python >= 3.11 image that
    installs only those wheels, from no index, and keeps no pip cache or bytecode writes."""
    instructions = _dockerfile()
    stages = _stages(instructions)
    assert len(stages) >= 2
    args = _global_args(instructions)
    final_from = stages[-1][0].value.split()[0]
    image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final_from)
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
    assert match is not None, image
    assert int(match.group(1)) >= 11

    assert any("pip wheel" in i.value for i in stages[0] if i.keyword == "RUN")
    final = stages[-1]
    installs = [i.value for i in final if i.keyword == "RUN" and "pip install" in i.value]
    assert len(installs) == 1
    assert "--no-index" in installs[0]
    assert list(_copy_sources(final)) == [], "the final stage copies no source"

    env = _env(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PIP_NO_CACHE_DIR"] == "1"


def test_dockerfile_command_matches_the_deployment() -> None:
    """The image runs `federation serve` as uid 10001 on the router's default port, reading the
    config file where the Deployment mounts the config ConfigMap."""
    from federation.cli import DEFAULT_PORT

    final = _stages(_dockerfile())[-1]

    def last(keyword: str) -> Instruction:
        return [i for i in final if i.keyword == keyword][-1]

    assert last("ENTRYPOINT").exec_form() == ["federation"]
    cmd = last("CMD").exec_form()
    assert cmd[0] == "serve"
    options = _options(cmd)
    assert options["--port"] == str(DEFAULT_PORT)
    assert options["--host"] == "0.0.0.0"
    assert options["--log-format"] == "json"
    assert last("EXPOSE").value == str(DEFAULT_PORT)

    user = last("USER").value.split(":")[0]
    assert user.isdigit(), "USER must be numeric for runAsNonRoot"
    assert int(user) == IMAGE_UID

    render = _render(BASE)
    mount = next(m for m in render.container["volumeMounts"] if m["name"] == "config")
    assert options["--config"] == f"{mount['mountPath']}/{_config_source(render).key}"
    assert render.deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
        user
    )


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    """The build context excludes everything by default and re-includes each path that the
    Dockerfile copies, so a new COPY cannot silently miss its files."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert patterns[0] == "*"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = {s.rstrip("/") for s in _copy_sources(_dockerfile())}
    assert sources
    assert sources <= included, f"not re-included in .dockerignore: {sources - included}"
    for path in sources:
        assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


def test_runbook_commands_match_the_production_render() -> None:
    """The on-call commands in deploy/README.md name production's real namespace and config
    ConfigMap, and the router's real status path."""
    from federation.app import STATUS_PATH

    render = _render("overlays/production")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    source = _config_source(render)
    assert f"--config configmap:{render.namespace}/{source.name}" in readme
    assert f"kubectl -n {render.namespace} " in readme
    assert STATUS_PATH in readme
