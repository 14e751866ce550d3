"""Exceptions the router raises, as one small hierarchy.

::

    FederationError
    ├── ConfigError          a config file or document is invalid (file, member, field)
    ├── LaunchPathError      a launch path cannot be routed (path, reason) → HTTP 4xx
    ├── ProbeError           a member answered a probe with something unusable (reason)
    └── DrainError           a drain or undrain cannot be applied (member, reason)

Callers catch at the level they need; every class keeps its fields so messages, logs and the
status page can show them without parsing strings.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DrainError",
    "FederationError",
    "InvalidConfigMapRef",
    "KubeAPIError",
    "KubeConfigError",
    "KubeError",
    "KubeUnreachable",
    "LaunchPathError",
    "ProbeError",
    "ResourceConflict",
    "ResourceExpired",
    "ResourceNotFound",
    "WatchStreamError",
]


class FederationError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(FederationError):
    """A configuration is invalid; names where, so an operator can fix it without guessing."""

    def __init__(
        self,
        message: str,
        *,
        source: str = "<config>",
        member: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.member = member
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.source]
        if self.member is not None:
            where.append(f"member {self.member!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{': '.join(where)}: {self.message}"


class LaunchPathError(FederationError):
    """A launch path that no member could serve; the reason is shown to the user as is."""

    def __init__(self, path: str, reason: str, *, status: int = 400) -> None:
        self.path = path
        self.reason = reason
        self.status = status
        super().__init__(f"{reason} (path {path[:200]!r})")


class ProbeError(FederationError):
    """A member's /health or /versions answer could not be used; reason is short and stable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DrainError(FederationError):
    """A drain or undrain was refused (unknown member, last routable member without force)."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"cannot change drain of {member!r}: {reason}")


# -- Kubernetes API (federation.kube) ------------------------------------------------------

class KubeError(Exception):
    """Base of every error ``federation.kube`` raises."""


class KubeConfigError(KubeError):
    """No client could be configured from `source` (a kubeconfig path or the pod's account)."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"cannot configure a Kubernetes client from {source!r}: {detail}")
        self.source = source
        self.detail = detail


class InvalidConfigMapRef(KubeError, ValueError):
    """A ConfigMap reference that the API server would reject, named with the reason."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid ConfigMap reference {text!r}: {reason}")
        self.text = text
        self.reason = reason


class KubeUnreachable(KubeError):
    """The API server did not answer `operation`: connection refused or cut, or a timeout."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.detail = detail


class WatchStreamError(KubeError):
    """A watch stream carried a line that is not a `{"type", "object"}` event."""

    def __init__(self, line: str) -> None:
        super().__init__(f"not a watch event: {line!r}")
        self.line = line


class KubeAPIError(KubeError):
    """The API server answered with a failure `Status`; its code, reason and message are kept."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class ResourceNotFound(KubeAPIError):
    """404: the ConfigMap does not exist."""


class ResourceConflict(KubeAPIError):
    """409: someone else wrote first; re-read and try again."""


class ResourceExpired(KubeAPIError):
    """410: the resourceVersion is older than the server keeps; list again to catch up."""
