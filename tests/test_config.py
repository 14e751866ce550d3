"""Config loading: the router's YAML, today's redirector JSON, and errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from federation.config import (
    Headroom,
    Strategy,
    VersionPolicy,
    config_json_schema,
    load_config,
    load_config_text,
)
from federation.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
members:
  - {name: gke, url: https://gke.mybinder.org/, weight: 60, prime: true, kind: gke}
  - {name: gesis, url: https://gesis.mybinder.org, weight: 40, kind: bare-metal}
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="fed.yaml")
    return info.value


def test_defaults_and_normalised_urls() -> None:
    """Sections default as documented; trailing slashes on URLs are removed."""
    config = load_config_text(GOOD, source="fed.yaml")
    assert config.routing.strategy is Strategy.BOUNDED
    assert config.health.versions is VersionPolicy.EXACT
    assert config.members[0].url == "https://gke.mybinder.org"
    assert config.members[0].health_url == "https://gke.mybinder.org/health"
    assert config.prime.name == "gke"


@pytest.mark.parametrize(
    ("text", "member", "field", "words"),
    [
        ("members: [{name: a, url: http://x, prime: true, wieght: 1}]", "a", "wieght",
         "unknown key"),
        ("members: [{name: a, url: http://x, prime: true}, {name: a, url: http://y}]", "a",
         "name", "duplicate"),
        ("members: [{name: a, url: ftp://x, prime: true}]", "a", "url", "http"),
        ("members: [{name: a, url: 'http://', prime: true}]", "a", "url", "host"),
        ("members: [{name: a, url: http://x, prime: true, weight: -1}]", "a", "weight",
         "must be at least 0 (got -1)"),
        ("members: [{name: a, url: http://x, prime: true, weight: abc}]", "a", "weight",
         "must be a number"),
        ("members: [{name: a, url: http://x, prime: true, weight: true}]", "a", "weight",
         "must be a number"),
        ("members: [{name: a, url: http://x}]", None, "prime", "no prime"),
        ("members: [{name: a, url: http://x, prime: true, weight: 0}]", None, "weight",
         "weight 0"),
        ("members: [{url: http://x, prime: true}]", "#1", "name", "missing"),
        ("members: [{name: a, url: http://x, prime: true}, {name: b, url: http://y, "
         "prime: true}]", "b", "prime", "only one member may be prime"),
        ("routing: {strategy: ring}\nmembers: [{name: a, url: http://x, prime: true}]", None,
         "routing.strategy", "'bounded', 'rendezvous' or 'random'"),
        ("health: {interval: 0}\nmembers: [{name: a, url: http://x, prime: true}]", None,
         "health.interval", "greater than 0"),
        ("routing: {pod_headroom: '150%'}\nmembers: [{name: a, url: http://x, prime: true}]",
         None, "routing.pod_headroom", "below 100%"),
        ("colour: blue\nmembers: [{name: a, url: http://x, prime: true}]", None, "colour",
         "unknown key"),
        ("source: x\nmembers: [{name: a, url: http://x, prime: true}]", None, "source",
         "unknown key"),
        ("health: {interval: '10'}\nmembers: [{name: a, url: http://x, prime: true}]", None,
         "health.interval", "interval must be a number, got '10'"),
        ("members: [{name: a, url: http://x, prime: true, weight: .inf}]", "a", "weight",
         "finite"),
        ("members: [{name: a, url: http://x, prime: true, drain: 5}]", "a", "drain",
         "drain must be a string or null, got 5"),
    ],
)
def test_errors_name_file_member_and_field(text: str, member: str | None, field: str,
                                           words: str) -> None:
    """Every validation error names the file, the member (when there is one) and the field."""
    error = _error(text)
    assert error.source == "fed.yaml"
    assert error.member == member
    assert error.field == field
    assert words in error.message
    assert str(error).startswith("fed.yaml: ")
    if member:
        assert f"member {member!r}" in str(error)


def test_broken_yaml_says_where() -> None:
    """A YAML syntax error reports its line and column."""
    error = _error("members:\n  - {name: a, url: http://x\n")
    assert "not valid YAML at line" in str(error)


def test_not_a_mapping() -> None:
    """A document that is not a mapping is refused with a hint."""
    assert "must be a mapping" in str(_error("- just a list"))


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming the file, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml")


def test_headroom_forms() -> None:
    """Headroom is whole pods, a percentage or a fraction, globally or per member."""
    config = load_config_text(
        "routing: {pod_headroom: 5}\nmembers:\n"
        "  - {name: a, url: http://a, prime: true, pod_headroom: '15%'}\n"
        "  - {name: b, url: http://b, pod_headroom: 0.2}\n"
        "  - {name: c, url: http://c}\n")
    a, b, c = config.members
    assert config.headroom_for(a).pods_for(60) == 9
    assert config.headroom_for(b).pods_for(60) == 12
    assert config.headroom_for(c).pods_for(60) == 5
    assert Headroom.parse(10) == Headroom(pods=10)


def test_config_drain_marks() -> None:
    """``drain: true`` or a reason text drains a member from the config itself."""
    config = load_config_text("members:\n  - {name: a, url: http://a, prime: true}\n"
                              "  - {name: b, url: http://b, drain: true}\n"
                              "  - {name: c, url: http://c, drain: new node pool}\n")
    assert [m.drain for m in config.members] == [None, "drained in config", "new node pool"]


def test_redirector_config_loads_unchanged() -> None:
    """Today's mybinder.org redirector JSON (with its Helm keys) loads and maps its settings."""
    config = load_config(ROOT / "config" / "redirector.json")
    assert config.format == "redirector"
    assert [m.name for m in config.members] == ["hetzner-2i2c", "hetzner-gesis", "bids-ovh"]
    assert config.prime.name == "hetzner-2i2c"
    assert config.routing.strategy is Strategy.RANDOM
    assert config.routing.sticky_cookie_hours == 4
    assert config.routing.pod_headroom == Headroom(pods=10)
    assert config.health.interval == 15
    assert config.health.timeout == 5
    assert config.health.max_backoff == 90
    assert config.members[1].health_url == "https://gesis.mybinder.org/health"


def test_redirector_config_as_yaml_and_weightless_hosts() -> None:
    """The same object as YAML loads too; a host without weight stays, with weight 0."""
    doc = json.loads((ROOT / "config" / "redirector.json").read_text())
    del doc["hosts"]["bids-ovh"]["weight"]
    config = load_config_text(yaml.safe_dump(doc))
    assert config.member("bids-ovh") is not None
    assert config.member("bids-ovh").weight == 0  # type: ignore[union-attr]


def test_redirector_config_errors_name_the_host() -> None:
    """A bad host in the redirector format is reported by name and field."""
    text = json.dumps({"hosts": {"x": {"url": "https://x", "prime": True, "wieght": 5}}})
    error = _error(text)
    assert (error.member, error.field) == ("x", "wieght")
    error = _error(json.dumps({"hosts": {"x": {"url": "https://x", "prime": True}},
                               "check": {"period": 5, "speed": 1}}))
    assert error.field == "check.speed"


def test_both_formats_at_once_is_an_error() -> None:
    """'hosts' and 'members' together are ambiguous and refused."""
    assert "either" in str(_error("hosts: {a: {url: http://a}}\nmembers: []"))


def test_example_configs_are_valid() -> None:
    """Every shipped example config loads."""
    for path in [*sorted((ROOT / "config").glob("*.yaml")), ROOT / "config/redirector.json"]:
        load_config(path)


def test_shipped_configs_match_the_schema() -> None:
    """Every shipped router-format config is valid under config/schema.json, as editors see it."""
    jsonschema = pytest.importorskip(
        "jsonschema", reason="the schema test needs the jsonschema package (a test dependency)")
    schema = json.loads((ROOT / "config" / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    paths = [*sorted((ROOT / "config").glob("*.yaml")), *sorted(ROOT.glob("deploy/**/config.yaml"))]
    for path in paths:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path}: {errors}"


def test_schema_file_is_in_sync() -> None:
    """config/schema.json is exactly what the code generates (regenerate: see README)."""
    on_disk = json.loads((ROOT / "config" / "schema.json").read_text())
    assert on_disk == config_json_schema(), (
        "config/schema.json is stale: run python -m federation schema > config/schema.json")
