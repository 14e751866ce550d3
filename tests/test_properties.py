"""Properties of the two parsers that read text from outside, checked on generated input.

``parse_launch`` reads any path a stranger sends; ``load_config_text`` reads whatever lands in
the config file or ConfigMap. For any input at all they answer or raise their own error
(LaunchPathError, ConfigError), never anything else. And a repository's placement key survives
every normalisation BinderHub applies — case, trailing slashes, ``.git``, the ref, the query,
``/v2`` for ``/build`` — or one repository's launches would scatter over several members.
"""

from __future__ import annotations

import os
import string
from typing import Any
from urllib.parse import quote

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from federation.config import Config, load_config_text
from federation.errors import ConfigError, LaunchPathError
from federation.launch import PROVIDERS, LaunchKey, parse_launch

# Reproducible in CI (the same examples every run); exploring anew on a laptop.
settings.register_profile("federation", deadline=None, derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("federation")

_URL_CHARS = string.ascii_letters + string.digits + "-._~%/?#@:;=&+$,!*'()[] \\\"<>^`{|}"
_DOT_SEGMENTS = {".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"}

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,24}", fullmatch=True).filter(
    lambda n: n.lower().removesuffix(".git") not in ("", ".", ".."))
refs = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,30}", fullmatch=True).filter(
    lambda r: not _DOT_SEGMENTS & set(r.lower().split("/")))
queries = st.text(alphabet=string.ascii_letters + string.digits + "=&%._-/", max_size=30)
launchish = st.builds(
    lambda kind, provider, parts, query: f"/{kind}/{provider}/{'/'.join(parts)}{query}",
    st.sampled_from(["build", "v2", "BUILD", "build/"]),
    st.one_of(st.sampled_from(sorted(PROVIDERS)), st.text(_URL_CHARS, max_size=8)),
    st.lists(st.text(_URL_CHARS, max_size=12), max_size=5),
    st.one_of(st.just(""), st.text(_URL_CHARS, max_size=12).map("?".__add__)),
)


def _parsed(path: str) -> LaunchKey | LaunchPathError:
    try:
        return parse_launch(path)
    except LaunchPathError as e:
        return e


@given(st.one_of(st.text(), launchish))
@settings(max_examples=500)
@example("/build/gh/../../..//evil.example/x")
@example("/build/gh/a/b/%2e%2E/x")
@example("/build/gh/a\\b/c/HEAD")
@example("/build/git/%ZZ/HEAD")
@example("/build/ckan/http%3A%2F%2F%5B::1/x")
def test_any_path_parses_or_is_refused_with_a_reason(path: str) -> None:
    """Any text is a LaunchKey or a LaunchPathError with a 4xx; a key is canonical (lower
    case, under /build/<provider>/, no control characters) and the sticky cookie's Path is a
    prefix of the launch path, so a cookie never covers another repository's launches."""
    result = _parsed(path)
    if isinstance(result, LaunchPathError):
        assert result.status in (400, 404, 414) and result.reason
        return
    assert result.key.startswith(f"/build/{result.provider}/")
    assert result.provider == result.provider.lower()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in result.key)
    assert path.partition("?")[0].startswith(result.cookie_path)


@given(owner=names, repo=names, ref=refs, other_ref=refs, query=queries, dot_git=st.booleans(),
       trailing=st.sampled_from(["", "/", "//"]), v2=st.booleans())
def test_gh_key_ignores_case_dot_git_ref_trailing_slashes_and_query(
    owner: str, repo: str, ref: str, other_ref: str, query: str, dot_git: bool, trailing: str,
    v2: bool,
) -> None:
    """Every launch of one GitHub repository has one key, the redirector's
    ``/build/gh/<owner>/<repo>`` in lower case, whatever the spelling."""
    plain = parse_launch(f"/build/gh/{owner}/{repo}/{ref}")
    kind = "v2" if v2 else "build"
    respelt = parse_launch(f"/{kind}/GH/{owner.swapcase()}/{repo.upper()}"
                           f"{'.git' if dot_git else ''}/{other_ref}{trailing}?{query}")
    assert plain.key == respelt.key == (
        f"/build/gh/{owner.lower()}/{repo.lower().removesuffix('.git')}")


@given(parts=st.lists(names, min_size=1, max_size=4), ref=refs, other_ref=refs,
       upper_escapes=st.booleans())
def test_gl_key_ignores_case_escapes_and_ref(
    parts: list[str], ref: str, other_ref: str, upper_escapes: bool,
) -> None:
    """A GitLab project keeps its key whatever the ref, the case, or the case of the
    %2F escapes in its namespace."""
    namespace = quote("/".join(parts), safe="")
    respelt = namespace.swapcase() if upper_escapes else namespace.upper()
    assert parse_launch(f"/build/gl/{namespace}/{ref}").key == parse_launch(
        f"/build/gl/{respelt}/{other_ref}/").key


@given(host=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,2}",
                          fullmatch=True),
       parts=st.lists(names, min_size=1, max_size=3), ref=refs, other_ref=refs,
       scheme=st.sampled_from(["https", "http", "git"]), dot_git=st.booleans(),
       trailing_slash=st.booleans())
def test_git_key_ignores_case_dot_git_trailing_slash_and_ref(
    host: str, parts: list[str], ref: str, other_ref: str, scheme: str, dot_git: bool,
    trailing_slash: bool,
) -> None:
    """A git URL keeps its key across refs, case, a ``.git`` suffix and a trailing slash."""
    url = f"{scheme}://{host}/{'/'.join(parts)}"
    respelt = url.upper() + (".git" if dot_git else "") + ("/" if trailing_slash else "")
    assert parse_launch(f"/build/git/{quote(url, safe='')}/{ref}").key == parse_launch(
        f"/build/git/{quote(respelt, safe='')}/{other_ref}").key


def _loaded(text: str) -> Config | ConfigError:
    try:
        return load_config_text(text, source="<generated>")
    except ConfigError as e:
        return e


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                               max_size=4),
    max_leaves=20,
)

VALID = {
    "routing": {"strategy": "bounded", "load_factor": 1.25, "pod_headroom": "10%"},
    "health": {"interval": 10, "timeout": 2},
    "limits": {"max_body_bytes": 65536, "client_timeout": 60},
    "members": [{"name": "gke", "url": "https://gke.example", "weight": 60, "prime": True},
                {"name": "gesis", "url": "https://gesis.example", "weight": 40}],
}


def _mutated(doc: Any, path: list[int], value: Any, action: int) -> Any:
    """``doc`` with one change at the node ``path`` picks: replace, delete, or add a key."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value if action == 0 else doc
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    if len(path) == 1 and action == 1:
        del copy[key]
    elif len(path) == 1 and action == 2 and isinstance(copy, dict):
        copy[f"extra{path[0]}"] = value
    else:
        copy[key] = _mutated(doc[key], path[1:], value, action)
    return copy


@given(st.text())
@settings(max_examples=300)
@example("members: [")
@example("? [a]\n: b")
@example("members: !!python/object:os.system {}")
@example("a: &x [*x]")
@example("[" * 200)
@example('{"hosts": {"1": {"url": "https://x.example", "prime": true}}}')
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    """Arbitrary text, YAML oddities included, gives a Config or a ConfigError naming its
    source, never another exception."""
    result = _loaded(text)
    if isinstance(result, ConfigError):
        assert result.source == "<generated>" and result.message


@given(doc=json_values | st.dictionaries(st.sampled_from(["members", "hosts", "routing",
                                                          "health", "limits", "drains"]),
                                         json_values, max_size=4))
def test_any_document_is_a_config_or_a_config_error(doc: Any) -> None:
    """Any JSON-shaped document, in either format's vocabulary, validates or is refused with
    a ConfigError."""
    assert isinstance(_loaded(yaml.safe_dump(doc)), Config | ConfigError)


@given(path=st.lists(st.integers(0, 10), min_size=1, max_size=4), value=json_values,
       action=st.integers(0, 2))
def test_one_edit_away_from_valid_is_a_config_or_a_config_error(
    path: list[int], value: Any, action: int,
) -> None:
    """A valid config with one value replaced, one key deleted or one key added (the broken
    edit an operator makes) validates or is refused with a ConfigError."""
    assert isinstance(_loaded(yaml.safe_dump(_mutated(VALID, path, value, action))),
                      Config | ConfigError)


@given(scheme=st.sampled_from(["https", "HTTPS", "Https"]), slashes=st.sampled_from(["", "/"]),
       spaces=st.sampled_from(["", " ", "\t"]), as_redirector=st.booleans())
def test_member_urls_are_normalised_the_same_in_both_formats(
    scheme: str, slashes: str, spaces: str, as_redirector: bool,
) -> None:
    """A member URL's scheme case, a trailing slash and surrounding spaces never make two
    spellings of one member differ, in the router's format or the redirector's."""
    url = f"{spaces}{scheme}://gke.example{slashes}{spaces}"
    if as_redirector:
        text = yaml.safe_dump({"hosts": {"gke": {"url": url, "weight": 1, "prime": True}}})
    else:
        text = yaml.safe_dump({"members": [{"name": "gke", "url": url, "prime": True}]})
    assert load_config_text(text).members[0].url == "https://gke.example"
