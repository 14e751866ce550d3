"""The federation's declarative configuration: YAML (or JSON) text → a frozen, validated ``Config``.

Two formats are read:

* the router's own format (``members:`` as a list, ``routing:``, ``health:``, ``drains:``), whose
  JSON Schema is generated from the classes below into ``config/schema.json``;
* the configuration of the federation-redirect that serves mybinder.org today (``hosts:`` as a
  mapping, ``check``, ``load_balancer``, ``pod_headroom``, ``host_cookie_age_hours``), so a
  deployment can switch without rewriting its config. It is translated into the same ``Config``.

Validation is done by pydantic; its errors are turned into :class:`ConfigError` naming the
source, the member and the field.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from federation.errors import ConfigError

__all__ = [
    "Config",
    "DrainsSource",
    "Headroom",
    "HealthSettings",
    "Limits",
    "Logging",
    "Member",
    "MemberKind",
    "Routing",
    "Strategy",
    "VersionPolicy",
    "WeightMode",
    "config_json_schema",
    "load_config",
    "load_config_text",
]

_STRICT = ConfigDict(extra="forbid")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")
_HEADROOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")

# Keys of the legacy redirector's config that belong to its Helm chart, not to routing.
_LEGACY_IGNORED = frozenset(
    {"enabled", "host", "hosts_file", "resources", "image", "nodeSelector", "tolerations",
     "affinity", "replicas", "ingress", "service", "annotations", "labels", "podAnnotations"}
)


class Strategy(StrEnum):
    """How a launch picks its member among the routable ones."""

    BOUNDED = "bounded"
    RENDEZVOUS = "rendezvous"
    RANDOM = "random"


class WeightMode(StrEnum):
    """Where effective weights come from: the config, or each member's reported pod quota."""

    CONFIGURED = "configured"
    CAPACITY = "capacity"


class VersionPolicy(StrEnum):
    """How strictly a member's /versions must match the prime's to stay in rotation."""

    EXACT = "exact"
    BINDERHUB = "binderhub"
    OFF = "off"


class MemberKind(StrEnum):
    """Where a member runs; shown to on-call staff, never used for routing."""

    GKE = "gke"
    OVH = "ovh"
    AZURE = "azure"
    BARE_METAL = "bare-metal"
    OTHER = "other"


@dataclass(frozen=True)
class Headroom:
    """Pods kept free below a member's quota: a count, or a fraction of the quota."""

    pods: int = 0
    fraction: float = 0.0

    def pods_for(self, quota: int) -> int:
        """Headroom in pods for a member whose quota is ``quota``."""
        return max(self.pods, round(self.fraction * quota))

    @classmethod
    def parse(cls, value: object) -> Headroom:
        """``10`` means ten pods; ``"15%"`` or ``0.15`` means 15 % of the quota."""
        if isinstance(value, Headroom):
            return value
        if isinstance(value, bool):
            raise ValueError("pod_headroom must be a number of pods or a percentage like '15%'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"pod_headroom must not be negative, got {value}")
            return cls(pods=value)
        if isinstance(value, float):
            if not 0 <= value < 1:
                raise ValueError(
                    f"a fractional pod_headroom must be in [0, 1), got {value}; "
                    "write whole pods as an integer"
                )
            return cls(fraction=value)
        if isinstance(value, str) and (m := _HEADROOM.match(value)):
            percent = float(m.group(1))
            if percent >= 100:
                raise ValueError(f"pod_headroom must be below 100%, got {value!r}")
            return cls(fraction=percent / 100)
        raise ValueError(
            f"pod_headroom must be a number of pods or a percentage like '15%', got {value!r}"
        )

    def __str__(self) -> str:
        return f"{self.fraction:.0%}" if self.fraction else str(self.pods)


HeadroomField = Annotated[Headroom, Field(json_schema_extra={"type": ["integer", "string"]})]


@dataclass(frozen=True, config=_STRICT)
class Routing:
    """How launches are placed on members."""

    strategy: Strategy = Strategy.BOUNDED
    load_factor: Annotated[float, Field(ge=1.0, le=10.0)] = 1.25
    # bounded: a member holding fewer launches than this is never over its load bound
    bound_floor: Annotated[int, Field(ge=0, le=100_000)] = 0
    weights: WeightMode = WeightMode.CONFIGURED
    slow_start: Annotated[float, Field(ge=0)] = 300.0
    sticky_cookie_hours: Annotated[float, Field(ge=0)] = 4.0
    redirect_v2: bool = False
    pod_headroom: HeadroomField = Headroom(pods=10)
    panic_threshold: Annotated[float, Field(ge=0, le=1)] = 0.0

    @field_validator("pod_headroom", mode="before")
    @classmethod
    def _headroom(cls, value: object) -> Headroom:
        return Headroom.parse(value)


@dataclass(frozen=True, config=_STRICT)
class Logging:
    """What the router logs beyond state changes (which are always logged)."""

    # Share of launch redirects written as access-log events, sampled at random: 0 logs none,
    # 1 every one. Sampling, not a level, because at high rates the cost is per event written.
    access_log: Annotated[float, Field(ge=0, le=1)] = 0.0


@dataclass(frozen=True, config=_STRICT)
class HealthSettings:
    """How members are probed and when they leave and rejoin the rotation."""

    interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    timeout: Annotated[float, Field(gt=0, le=120)] = 2.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.1
    failures_to_eject: Annotated[int, Field(ge=1, le=100)] = 2
    successes_to_restore: Annotated[int, Field(ge=1, le=100)] = 2
    max_backoff: Annotated[float, Field(gt=0, le=3600)] = 60.0
    versions: VersionPolicy = VersionPolicy.EXACT
    startup_timeout: Annotated[float, Field(gt=0, le=600)] = 15.0
    max_body_bytes: Annotated[int, Field(ge=256, le=10_000_000)] = 65536


@dataclass(frozen=True, config=_STRICT)
class Limits:
    """What one client may send and how long the router waits, so no client can hold it.

    The request line, header and client limits bind the listening server at start-up; the body
    and proxy limits are read on every request, so a reload changes them.
    """

    max_request_line: Annotated[int, Field(ge=1024, le=65536)] = 8190
    max_header_size: Annotated[int, Field(ge=1024, le=65536)] = 8190
    max_headers: Annotated[int, Field(ge=16, le=1000)] = 100
    max_body_bytes: Annotated[int, Field(ge=0, le=100_000_000)] = 1024 * 1024
    # Longest a connection may stay idle or take to send a complete request head (slowloris);
    # keep it above the idle timeout of any load balancer in front of the router.
    client_timeout: Annotated[float, Field(gt=0, le=86400)] = 75.0
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    proxy_connect_timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    proxy_read_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0


@dataclass(frozen=True, config=_STRICT)
class DrainsSource:
    """Where operators' drain decisions are kept: a file next to the config, or a ConfigMap."""

    file: str | None = None
    configmap: str | None = None


@dataclass(frozen=True, config=_STRICT)
class Member:
    """One BinderHub cluster of the federation."""

    name: str
    url: str
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    kind: MemberKind = MemberKind.OTHER
    prime: bool = False
    health: str | None = None
    versions: str | None = None
    drain: str | None = None
    pod_headroom: HeadroomField | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"member names are 1-63 letters, digits, '.', '_' or '-', got {value!r}"
            )
        return value

    @field_validator("url", "health", "versions")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _normalise_url(value)

    @field_validator("weight", mode="before")
    @classmethod
    def _weight(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"weight must be a number, got {value!r}")
        return value

    @field_validator("drain", mode="before")
    @classmethod
    def _drain(cls, value: object) -> object:
        if value is True:
            return "drained in config"
        if value is False:
            return None
        return value

    @field_validator("pod_headroom", mode="before")
    @classmethod
    def _headroom(cls, value: object) -> Headroom | None:
        return None if value is None else Headroom.parse(value)

    @property
    def health_url(self) -> str:
        """Where the member's BinderHub /health is probed."""
        return self.health or f"{self.url}/health"

    @property
    def versions_url(self) -> str:
        """Where the member's BinderHub /versions is probed."""
        return self.versions or f"{self.url}/versions"


@dataclass(frozen=True, config=_STRICT)
class Config:
    """A whole, validated federation description; never mutated, replaced on reload."""

    members: Annotated[tuple[Member, ...], Field(min_length=1)]
    routing: Routing = Routing()
    health: HealthSettings = HealthSettings()
    drains: DrainsSource = DrainsSource()
    logging: Logging = Logging()
    limits: Limits = Limits()
    source: Annotated[str, Field(exclude=True)] = "<config>"
    format: Annotated[Literal["router", "redirector"], Field(exclude=True)] = "router"

    @property
    def prime(self) -> Member:
        """The member that serves the UI while it is healthy, and the versions reference."""
        return next(m for m in self.members if m.prime)

    def member(self, name: str) -> Member | None:
        """The member called ``name``, if any."""
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> Mapping[str, Member]:
        """Members by name, made on first use: every probe result looks its member up."""
        return MappingProxyType({m.name: m for m in self.members})

    def headroom_for(self, member: Member) -> Headroom:
        """The member's own headroom if set, else the federation's."""
        return member.pod_headroom or self.routing.pod_headroom


def _normalise_url(value: str) -> str:
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if not rest or rest.startswith("/") or any(c in text for c in " \t\r\n\\?#"):
        raise ValueError(f"must be a plain http(s) URL with a host, got {value!r}")
    return f"{scheme.lower()}://{rest}".rstrip("/")


_CONFIG_ADAPTER: TypeAdapter[Config] = TypeAdapter(Config)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the router's YAML format (kept in ``config/schema.json``)."""
    schema = _CONFIG_ADAPTER.json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Binder federation router configuration"
    return schema


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror or e}", source=str(p)) from e
    return load_config_text(text, source=str(p))


def load_config_text(text: str, *, source: str = "<config>") -> Config:
    """Validate config ``text`` (YAML or JSON, router or redirector format)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from e
    return parse_config(data, source=source)


def parse_config(data: object, *, source: str = "<config>") -> Config:
    """Validate an already-parsed config document."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            "the document must be a mapping with 'members' (or the redirector's 'hosts')",
            source=source,
        )
    if "hosts" in data and "members" in data:
        raise ConfigError("use either 'members' or the redirector's 'hosts', not both",
                          source=source)
    if "hosts" in data:
        data, fmt = _from_redirector(data, source), "redirector"
    else:
        fmt = "router"
    try:
        config = _CONFIG_ADAPTER.validate_python({**data, "source": source, "format": fmt})
    except ValidationError as e:
        raise _config_error(e, data, source) from None
    _check_members(config)
    return config


def _check_members(config: Config) -> None:
    seen: set[str] = set()
    for m in config.members:
        if m.name in seen:
            raise ConfigError("duplicate member name; every name must be unique",
                              source=config.source, member=m.name, field="name")
        seen.add(m.name)
    primes = [m.name for m in config.members if m.prime]
    if not primes:
        raise ConfigError(
            "no prime member: mark the member that serves the UI with 'prime: true'",
            source=config.source, field="prime",
        )
    if len(primes) > 1:
        raise ConfigError(f"only one member may be prime, found {', '.join(primes)}",
                          source=config.source, member=primes[1], field="prime")
    if all(m.weight == 0 for m in config.members):
        raise ConfigError("every member has weight 0, so no launch could be placed",
                          source=config.source, field="weight")
    if config.drains.file and config.drains.configmap:
        raise ConfigError("give either 'file' or 'configmap', not both",
                          source=config.source, field="drains")


def _config_error(error: ValidationError, data: Mapping[str, Any], source: str) -> ConfigError:
    """The first pydantic error, re-told with the member's name and a dotted field path."""
    first = error.errors(include_url=False)[0]
    loc = [part for part in first["loc"] if part not in ("source", "format")]
    member: str | None = None
    members = data.get("members") if isinstance(data, Mapping) else None
    if len(loc) >= 2 and loc[0] == "members" and isinstance(loc[1], int):
        entry = members[loc[1]] if isinstance(members, list) and loc[1] < len(members) else None
        name = entry.get("name") if isinstance(entry, Mapping) else None
        member = str(name) if name is not None else f"#{loc[1] + 1}"
        loc = loc[2:]
    field = ".".join(str(p) for p in loc) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown key (check its spelling against the config reference)"
    elif first["type"] == "missing":
        message = "required but missing"
    elif "input" in first and first["type"] not in ("value_error",):
        message = f"{message} (got {_short(first['input'])})"
    return ConfigError(message, source=source, member=member, field=field)


def _short(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _from_redirector(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Translate today's federation-redirect config into the router's format.

    The redirector drops hosts whose weight is missing or 0 at load time; here they stay as
    members with weight 0 (probed and shown, never sent launches), which routes the same.
    """
    hosts = data["hosts"]
    if not isinstance(hosts, Mapping) or not hosts:
        raise ConfigError("'hosts' must be a non-empty mapping of name to host",
                          source=source, field="hosts")
    members: list[dict[str, Any]] = []
    for name, host in hosts.items():
        if host is None:
            continue  # the redirector pops null hosts too
        if not isinstance(host, Mapping):
            raise ConfigError("each host must be a mapping with 'url'",
                              source=source, member=str(name))
        unknown = set(host) - {"url", "weight", "health", "versions", "prime"}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in a redirector host",
                              source=source, member=str(name), field=sorted(unknown)[0])
        members.append({"name": str(name), "weight": 0, **host})
    routing: dict[str, Any] = {}
    health: dict[str, Any] = {}
    for key, value in data.items():
        if key == "hosts" or key in _LEGACY_IGNORED:
            continue
        if key == "load_balancer":
            routing["strategy"] = value
        elif key == "pod_headroom":
            routing["pod_headroom"] = value
        elif key == "host_cookie_age_hours":
            routing["sticky_cookie_hours"] = value
        elif key == "check":
            health.update(_legacy_check(value, source))
        else:
            raise ConfigError("unknown key in a redirector config", source=source, field=key)
    return {"members": members, "routing": routing, "health": health}


def _legacy_check(check: object, source: str) -> dict[str, Any]:
    if not isinstance(check, Mapping):
        raise ConfigError("'check' must be a mapping", source=source, field="check")
    mapped = {"period": "interval", "jitter": "jitter", "timeout": "timeout",
              "failed_period": "max_backoff"}
    out: dict[str, Any] = {}
    for key, value in check.items():
        if key == "retries":
            continue  # replaced by failures_to_eject hysteresis; one fetch per probe round
        if key not in mapped:
            raise ConfigError("unknown key in 'check'", source=source, field=f"check.{key}")
        out[mapped[key]] = value
    return out
