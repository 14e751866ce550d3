"""The federation's declarative configuration: YAML (or JSON) text → a frozen, validated ``Config``.

Two formats are read:

* the router's own format (``members:`` as a list, ``routing:``, ``health:``, ``drains:``), whose
  JSON Schema is generated from the classes below into ``config/schema.json``;
* the configuration of the federation-redirect that serves mybinder.org today (``hosts:`` as a
  mapping, ``check``, ``load_balancer``, ``pod_headroom``, ``host_cookie_age_hours``), so a
  deployment can switch without rewriting its config. It is translated into the same ``Config``.

Validation is done by msgspec (about 1.2 MiB resident, where pydantic took 9); its errors are
turned into :class:`ConfigError` naming the source, the member and the field, in plain words.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args, get_type_hints

import msgspec
import yaml
from msgspec import Meta

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

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$")
_HEADROOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNKNOWN = "unknown key (check its spelling against the config reference)"

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


class _FieldError(ValueError):
    """A check in ``__post_init__`` failed: msgspec says which struct, this says which field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Headroom:
    """Pods kept free below a member's quota: a count, or a fraction of the quota.

    Not a Struct, which msgspec reads only from a mapping: ``parse`` reads ``10``, ``"15%"``.
    """

    __slots__ = ("fraction", "pods")
    pods: int
    fraction: float

    def __init__(self, pods: int = 0, fraction: float = 0.0) -> None:
        object.__setattr__(self, "pods", pods)
        object.__setattr__(self, "fraction", fraction)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Headroom is immutable; cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headroom):
            return NotImplemented
        return (self.pods, self.fraction) == (other.pods, other.fraction)

    def __hash__(self) -> int:
        return hash((self.pods, self.fraction))

    def __repr__(self) -> str:
        return f"Headroom(pods={self.pods!r}, fraction={self.fraction!r})"

    def __reduce__(self) -> tuple[type[Headroom], tuple[int, float]]:
        """Copies and pickles are made through ``__init__``, as attributes cannot be set."""
        return Headroom, (self.pods, self.fraction)

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


HeadroomField = Annotated[Headroom, Meta(extra_json_schema={
    "type": ["number", "string"],
    "description": "Pods kept free below the quota: a count (10), or a share ('15%' or 0.15)."})]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Immutable and hashable; a key no field knows is an error, never silently ignored.

    Subclasses repeat ``frozen=True`` only because mypy does not see it inherited.
    """


class Routing(_Strict, frozen=True):
    """How launches are placed on members."""

    strategy: Strategy = Strategy.BOUNDED
    load_factor: Annotated[float, Meta(ge=1.0, le=10.0)] = 1.25
    bound_floor: Annotated[int, Meta(ge=0, le=100_000, description=(
        "bounded: a member holding fewer launches than this is never over its load bound"))] = 0
    weights: WeightMode = WeightMode.CONFIGURED
    slow_start: Annotated[float, Meta(ge=0)] = 300.0
    sticky_cookie_hours: Annotated[float, Meta(ge=0)] = 4.0
    redirect_v2: bool = False
    # A factory: msgspec writes only plain values into the schema as defaults.
    pod_headroom: Annotated[HeadroomField, Meta(extra_json_schema={"default": 10})] = (
        msgspec.field(default_factory=lambda: Headroom(pods=10)))
    panic_threshold: Annotated[float, Meta(ge=0, le=1)] = 0.0


class Logging(_Strict, frozen=True):
    """What the router logs beyond state changes (which are always logged)."""

    # Sampling, not a level, because at high rates the cost is per event written.
    access_log: Annotated[float, Meta(ge=0, le=1, description=(
        "Share of launch redirects written as access-log events, sampled at random: 0 logs "
        "none, 1 every one."))] = 0.0


class HealthSettings(_Strict, frozen=True):
    """How members are probed and when they leave and rejoin the rotation."""

    interval: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    timeout: Annotated[float, Meta(gt=0, le=120)] = 2.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.1
    failures_to_eject: Annotated[int, Meta(ge=1, le=100)] = 2
    successes_to_restore: Annotated[int, Meta(ge=1, le=100)] = 2
    max_backoff: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    versions: VersionPolicy = VersionPolicy.EXACT
    versions_interval: Annotated[float, Meta(gt=0, le=86400, description=(
        "Seconds between /versions fetches of a member in rotation (versions change only on "
        "deploys); the prime, and a member out of rotation, are asked every round"))] = 60.0
    startup_timeout: Annotated[float, Meta(gt=0, le=600)] = 15.0
    max_body_bytes: Annotated[int, Meta(ge=256, le=10_000_000)] = 65536


class Limits(_Strict, frozen=True):
    """What one client may send and how long the router waits, so no client can hold it.

    The request line, header and client limits bind the listening server at start-up; the body
    and proxy limits are read on every request, so a reload changes them.
    """

    max_request_line: Annotated[int, Meta(ge=1024, le=65536)] = 8190
    max_header_size: Annotated[int, Meta(ge=1024, le=65536)] = 8190
    max_headers: Annotated[int, Meta(ge=16, le=1000)] = 100
    max_body_bytes: Annotated[int, Meta(ge=0, le=100_000_000)] = 1024 * 1024
    client_timeout: Annotated[float, Meta(gt=0, le=86400, description=(
        "Longest a connection may stay idle or take to send a complete request head "
        "(slowloris); keep it above the idle timeout of any load balancer in front."))] = 75.0
    body_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    proxy_connect_timeout: Annotated[float, Meta(gt=0, le=300)] = 5.0
    proxy_read_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0


class DrainsSource(_Strict, frozen=True):
    """Where operators' drain decisions are kept: a file next to the config, or a ConfigMap."""

    file: str | None = None
    configmap: str | None = None


class Member(_Strict, frozen=True):
    """One BinderHub cluster of the federation."""

    name: str
    url: str
    weight: Annotated[float, Meta(ge=0)] = 1.0
    kind: MemberKind = MemberKind.OTHER
    prime: bool = False
    health: str | None = None
    versions: str | None = None
    drain: str | None = None
    pod_headroom: HeadroomField | None = None

    def __post_init__(self) -> None:
        """What types cannot say; msgspec runs it on decoding, on ``__init__`` and on replace."""
        if not _NAME.match(self.name):
            raise _FieldError("name", "member names are 1-63 letters, digits, '.', '_' or '-', "
                                      f"got {self.name!r}")
        if not math.isfinite(self.weight):
            raise _FieldError("weight", f"weight must be a finite number, got {self.weight}")
        for field in ("url", "health", "versions"):
            if (value := getattr(self, field)) is not None:
                msgspec.structs.force_setattr(self, field, _normalise_url(field, value))

    @property
    def health_url(self) -> str:
        """Where the member's BinderHub /health is probed."""
        return self.health or f"{self.url}/health"

    @property
    def versions_url(self) -> str:
        """Where the member's BinderHub /versions is probed."""
        return self.versions or f"{self.url}/versions"


class Config(_Strict, frozen=True, dict=True):
    """A whole, validated federation description; never mutated, replaced on reload."""

    # dict=True gives the instance a __dict__, where functools.cached_property keeps _by_name
    # and prime; sections are made by factories, as Routing's default holds a Headroom.
    members: Annotated[tuple[Member, ...], Meta(min_length=1)]
    routing: Routing = msgspec.field(default_factory=Routing)
    health: HealthSettings = msgspec.field(default_factory=HealthSettings)
    drains: DrainsSource = msgspec.field(default_factory=DrainsSource)
    logging: Logging = msgspec.field(default_factory=Logging)
    limits: Limits = msgspec.field(default_factory=Limits)
    source: str = "<config>"
    format: Literal["router", "redirector"] = "router"

    @functools.cached_property
    def prime(self) -> Member:
        """The member that serves the UI while it is healthy, and the versions reference
        (found once: every probe result and every table rebuild asks)."""
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


def _normalise_url(field: str, value: str) -> str:
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _FieldError(field, f"must be an http:// or https:// URL, got {value!r}")
    if not rest or rest.startswith("/") or any(c in text for c in " \t\r\n\\?#"):
        raise _FieldError(field, f"must be a plain http(s) URL with a host, got {value!r}")
    return f"{scheme.lower()}://{rest}".rstrip("/")


def _decode(kind: type, value: object) -> object:
    """msgspec's hook for the one type it cannot read by itself."""
    if kind is Headroom:
        return Headroom.parse(value)
    raise NotImplementedError(kind)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the router's YAML format (kept in ``config/schema.json``)."""
    defs = msgspec.json.schema(Config)["$defs"]
    for part in defs.values():  # msgspec keeps the docstrings' indentation
        part["description"] = inspect.cleandoc(part["description"])
    root = defs.pop("Config")
    del root["properties"]["source"], root["properties"]["format"]  # set by the loader
    defs["Member"]["properties"]["drain"]["anyOf"].insert(1, {"type": "boolean"})
    return {**root, "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Binder federation router configuration", "$defs": defs}


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
    fmt: Literal["router", "redirector"] = "router"
    if "hosts" in data:
        data, fmt = _from_redirector(data, source), "redirector"
    elif internal := sorted({"source", "format"} & data.keys()):
        raise ConfigError(_UNKNOWN, source=source, field=internal[0])
    document = {**data, "source": source, "format": fmt}
    if isinstance(members := data.get("members"), list | tuple):
        document["members"] = [_drain_mark(entry) for entry in members]
    try:
        config = msgspec.convert(document, Config, dec_hook=_decode)
    except msgspec.ValidationError as e:
        raise _config_error(e, document, source) from None
    _check_members(config)
    return config


def _drain_mark(entry: object) -> object:
    """``drain: true`` drains a member with a stock reason, ``drain: false`` not at all."""
    if isinstance(entry, Mapping) and isinstance(entry.get("drain"), bool):
        return {**entry, "drain": "drained in config" if entry["drain"] else None}
    return entry


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


_KINDS = {"int": "a whole number", "float": "a number", "str": "a string",
          "bool": "true or false", "array": "a list", "object": "a mapping", "null": "null"}
_BOUNDS = {">=": "at least", ">": "greater than", "<=": "at most", "<": "less than"}


def _config_error(error: msgspec.ValidationError, data: Mapping[str, Any],
                  source: str) -> ConfigError:
    """msgspec's error (it stops at the first) re-told with the member and a dotted field path.

    Its text is ``<what> - at `$.members[0].weight```; our own checks' errors are its cause.
    """
    what, _, where = str(error).partition(" - at `")
    path: list[str | int] = [name or int(index) for name, index
                             in re.findall(r"\.(\w+)|\[(\d+)\]", where.rpartition("$")[2])]
    if field := re.fullmatch(r"Object (?:contains unknown|missing required) field `(.+)`", what):
        path.append(field[1])
        message = _UNKNOWN if "unknown" in what else "required but missing"
    elif error.__cause__ is not None:
        if isinstance(error.__cause__, _FieldError):
            path.append(error.__cause__.field)
        message = str(error.__cause__)
    elif where.startswith("key`"):
        message = "every key must be a string"
    else:
        message = _retold(what, path, data)
    member: str | None = None
    if len(path) >= 2 and path[0] == "members" and isinstance(path[1], int):
        entry = data["members"][path[1]]
        name = entry.get("name") if isinstance(entry, Mapping) else None
        member = str(name) if name is not None else f"#{path[1] + 1}"
        path = path[2:]
    field_path = ".".join(str(p) for p in path) or None
    return ConfigError(message, source=source, member=member, field=field_path)


def _retold(what: str, path: list[str | int], data: Mapping[str, Any]) -> str:
    """One of msgspec's own messages about the value at ``path``, in plain words."""
    value: Any = data
    kind: Any = Config
    for part in path:
        value = value[part]
        kind = get_args(kind)[0] if isinstance(part, int) else get_type_hints(kind)[part]
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        *rest, last = [repr(choice.value) for choice in kind]
        return f"must be {', '.join(rest)} or {last} (got {_short(value)})"
    if expected := re.fullmatch(r"Expected `(.+)`, got `.+`", what):
        kinds = " or ".join(_KINDS.get(k, k) for k in expected[1].split(" | "))
        subject = f"{path[-1]} " if path and isinstance(path[-1], str) else ""
        return f"{subject}must be {kinds}, got {_short(value)}"
    if bound := re.fullmatch(r"Expected `\w+`( of length)? (>=|>|<=|<) (\S+)", what):
        limit = f"{_BOUNDS[bound[2]]} {bound[3].removesuffix('.0')}"
        if bound[1]:
            return f"must list {limit} (got {len(value)})"
        return f"must be {limit} (got {_short(value)})"
    return f"{what} (got {_short(value)})"


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
