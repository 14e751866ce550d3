"""Launch paths → ``LaunchKey``: which repository a launch is for, with its ref removed.

All refs of one repository must land on the member that already built its images, so the
placement key is the provider plus the repository's *identity* (binderhub-protocol.md §1.4,
§1.6). Parsing works on the raw, still percent-encoded path, exactly as BinderHub does: only the
first segment of gl/git/ckan/hydroshare specs is decoded, and only to compute the key — the path
forwarded to a member is never rewritten.

For ``gh`` the key is exactly ``/build/gh/<owner>/<repo>`` in lower case, the string today's
mybinder.org redirector hashes, so GitHub launches keep landing where their images are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import unquote, urlsplit

from federation.errors import LaunchPathError

__all__ = ["PROVIDERS", "LaunchKey", "parse_launch"]

LaunchKind = Literal["build", "v2"]

_PROVIDER = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_DOI = re.compile(r"^10\.\d{2,9}/\S+$")
_FIGSHARE_VERSION = re.compile(r"\.v\d+$")
_HYDROSHARE_ID = re.compile(r"[0-9a-f]{32}")
_GIT_SCHEMES = frozenset({"http", "https", "git", "ssh"})
_MAX_PATH = 4096
# Segments a browser collapses when it follows the redirect (WHATWG URL: "%2e" is a dot, "\\"
# a slash in http URLs): with them the Location would lead out of /build/ on the member.
# No repository name or git ref can be one of them or contain a backslash.
_DOT_SEGMENTS = frozenset({".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"})


@dataclass(frozen=True, slots=True)
class LaunchKey:
    """What a launch path is for.

    ``key`` is what placement hashes; ``cookie_path`` is the ``Path`` of the sticky ``host``
    cookie: the raw path prefix shared by every ref of the repository (the whole path where
    the repository is not a clean path prefix, as for DOIs with versions).
    """

    kind: LaunchKind
    provider: str
    repo: str
    key: str
    cookie_path: str


@dataclass(frozen=True, slots=True)
class _Identity:
    repo: str
    raw_repo: str | None  # raw path prefix of the spec naming only the repository, if any


_Parser = Callable[[str, str], _Identity]


def parse_launch(raw_path: str) -> LaunchKey:
    """Parse a raw launch path (``/build/<provider>/<spec>`` or ``/v2/...``; query allowed).

    Raises :class:`LaunchPathError` with a reason a user can act on. Memoized on the path
    (refusals are not memoized, they raise): every ref and query of a repository comes back.
    """
    path = raw_path.partition("?")[0]
    return _parse_path(path)


@lru_cache(maxsize=8192)
def _parse_path(path: str) -> LaunchKey:
    if len(path) > _MAX_PATH:
        raise LaunchPathError(path, f"launch path longer than {_MAX_PATH} characters", status=414)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise LaunchPathError(path, "launch path contains control characters")
    if "\\" in path or not _DOT_SEGMENTS.isdisjoint(path.lower().split("/")):
        raise LaunchPathError(path, "launch path contains '.' or '..' segments or a backslash")
    kind: LaunchKind
    if path.startswith("/build/"):
        kind, rest = "build", path[len("/build/"):]
    elif path.startswith("/v2/"):
        kind, rest = "v2", path[len("/v2/"):]
    else:
        raise LaunchPathError(path, "not a launch path: expected /build/<provider>/<spec>",
                              status=404)
    provider, _, spec = rest.partition("/")
    if not _PROVIDER.match(provider):
        raise LaunchPathError(path, f"invalid repository provider {provider[:40]!r}")
    spec = spec.rstrip("/")  # BinderHub strips trailing slashes from /build specs
    if not spec:
        raise LaunchPathError(path, f"missing repository after /{kind}/{provider}/")
    provider = provider.lower()
    parser = PROVIDERS.get(provider, _unknown)
    try:
        ident = parser(spec, path)
    except ValueError as e:
        raise LaunchPathError(path, f"{provider}: {e}") from None
    prefix = f"/{kind}/{rest.partition('/')[0]}/"
    cookie_path = prefix + ident.raw_repo if ident.raw_repo else path.rstrip("/")
    return LaunchKey(kind=kind, provider=provider, repo=ident.repo,
                     key=f"/build/{provider}/{ident.repo}", cookie_path=cookie_path)


def _split(spec: str, parts: int, usage: str) -> list[str]:
    pieces = spec.split("/", parts - 1)
    if len(pieces) < parts or not all(pieces):
        raise ValueError(f"expected {usage}")
    return pieces


def _gh(spec: str, path: str) -> _Identity:
    pieces = spec.split("/", 2)
    if len(pieces) == 2 and all(pieces):
        raise ValueError(f"missing ref; did you mean {path.rstrip('/')}/HEAD ?")
    owner, repo, _ref = _split(spec, 3, "<owner>/<repo>/<ref>")
    name = repo.lower().removesuffix(".git")
    if not name:
        raise ValueError("empty repository name")
    return _Identity(repo=f"{owner.lower()}/{name}", raw_repo=f"{owner}/{repo}")


def _gist(spec: str, path: str) -> _Identity:
    pieces = spec.split("/")
    if len(pieces) not in (2, 3) or not all(pieces[:2]):
        raise ValueError("expected <user>/<gist id>[/<revision>]")
    return _Identity(repo=pieces[1].lower(), raw_repo=f"{pieces[0]}/{pieces[1]}")


def _gl(spec: str, path: str) -> _Identity:
    namespace, _ref = _split(spec, 2, "<url-encoded namespace>/<ref>")
    decoded = unquote(namespace).strip("/").lower()
    if not decoded:
        raise ValueError("empty project namespace")
    return _Identity(repo=decoded, raw_repo=namespace)


def _git(spec: str, path: str) -> _Identity:
    url, _ref = _split(spec, 2, "<url-encoded repository URL>/<ref>")
    decoded = unquote(url).strip()
    if decoded.startswith("git@") and ":" in decoded and "://" not in decoded:
        user_host, _, repo_path = decoded.partition(":")
        decoded = f"ssh://{user_host}/{repo_path}"
    parts = urlsplit(decoded)
    if parts.scheme.lower() not in _GIT_SCHEMES or not parts.netloc:
        raise ValueError(
            "the repository URL must be fully URL-encoded (':' as %3A and '/' as %2F) and use "
            f"one of {', '.join(sorted(_GIT_SCHEMES))}; got {decoded[:80]!r}"
        )
    identity = f"{parts.scheme}://{parts.netloc}{parts.path}".lower().rstrip("/")
    return _Identity(repo=identity.removesuffix(".git"), raw_repo=url)


def _doi(spec: str) -> str:
    if not _DOI.match(spec):
        raise ValueError(f"expected a DOI like 10.5281/zenodo.3242074, got {spec[:80]!r}")
    return unquote(spec).lower()


def _zenodo(spec: str, path: str) -> _Identity:
    """zenodo and dataverse: the DOI is the identity (a concept DOI stays its own key)."""
    return _Identity(repo=_doi(spec), raw_repo=None)


def _figshare(spec: str, path: str) -> _Identity:
    return _Identity(repo=_FIGSHARE_VERSION.sub("", _doi(spec)), raw_repo=None)


def _hydroshare(spec: str, path: str) -> _Identity:
    found = _HYDROSHARE_ID.search(unquote(spec).lower())
    if not found:
        raise ValueError("expected a HydroShare resource with a 32-character hex id")
    return _Identity(repo=found.group(0), raw_repo=None)


def _ckan(spec: str, path: str) -> _Identity:
    decoded = unquote(spec)
    parts = urlsplit(decoded)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("expected a URL-encoded http(s) dataset URL")
    dataset_path = parts.path
    marker = dataset_path.find("/dataset/")
    if marker >= 0:
        dataset_id = dataset_path[marker + len("/dataset/"):].split("/", 1)[0]
        dataset_path = dataset_path[:marker] + "/dataset/" + dataset_id
    identity = f"{parts.scheme}://{parts.netloc}{dataset_path}".lower().rstrip("/")
    return _Identity(repo=identity, raw_repo=None)


def _unknown(spec: str, path: str) -> _Identity:
    """Providers this router does not know: the spec without its last segment (its ref).

    A one-segment spec is kept whole, so each such repository still gets its own key.
    """
    head, sep, _last = spec.rpartition("/")
    return _Identity(repo=head.lower() if sep else spec.lower(), raw_repo=head if sep else None)


PROVIDERS: dict[str, _Parser] = {
    "gh": _gh,
    "gist": _gist,
    "gl": _gl,
    "git": _git,
    "zenodo": _zenodo,
    "figshare": _figshare,
    "dataverse": _zenodo,  # a DOI naming the dataset; no separate ref
    "hydroshare": _hydroshare,
    "ckan": _ckan,
}
