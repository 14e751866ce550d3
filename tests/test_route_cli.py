"""`federation route` and `federation check`: what operators see before anything is live."""

from __future__ import annotations

import json
import math
from hashlib import blake2b
from pathlib import Path

from click.testing import CliRunner

from federation.cli import main

ROOT = Path(__file__).resolve().parent.parent
REDIRECTOR_CONFIG = ROOT / "config" / "redirector.json"


def redirector_cache_key(path: str) -> str:
    """mybinder.org's federation-redirect cache key, from binderhub-protocol.md §4.4."""
    key = path.lower()
    if key.startswith("/build/gh"):
        key = key.rsplit("/", 1)[0]
    return key


def redirector_choice(path: str, hosts: dict[str, float]) -> str:
    """The redirector's weighted rendezvous pick (§4.3), written straight from the formula."""
    key = redirector_cache_key(path)
    best: tuple[float, str] | None = None
    for name, weight in hosts.items():
        if weight <= 0:
            continue
        h = int.from_bytes(blake2b(f"{key}-{name}".encode(), digest_size=8).digest(), "big")
        score = weight / -math.log(h / (2**64 - 1))
        if best is None or (score, name) > best:
            best = (score, name)
    assert best is not None
    return best[1]


def _route_json(*args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["route", "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_route_agrees_with_todays_redirector_for_github_launches() -> None:
    """Same member names and weights → the same member as mybinder.org's redirector picks.

    Covers mybinder.org's production config (three members of weight 50) and a skewed copy.
    """
    hosts = {"hetzner-2i2c": 50.0, "hetzner-gesis": 50.0, "bids-ovh": 50.0}
    paths = [f"/build/gh/Org{i % 37}/Repo{i}/{'HEAD' if i % 2 else 'main'}" for i in range(400)]
    routed = _route_json("--config", str(REDIRECTOR_CONFIG), *paths)
    assert [r["member"] for r in routed] == [redirector_choice(p, hosts) for p in paths]
    skewed = _route_json("--config", str(REDIRECTOR_CONFIG), "--weight", "bids-ovh=10",
                         "--weight", "hetzner-gesis=80", *paths)
    hosts.update({"bids-ovh": 10.0, "hetzner-gesis": 80.0})
    assert [r["member"] for r in skewed] == [redirector_choice(p, hosts) for p in paths]
    assert {r["member"] for r in skewed} == set(hosts)


def test_route_json_shape_and_full_urls() -> None:
    """Full URLs are accepted; each line has path, key, member and the full ranking."""
    (row,) = _route_json("--config", str(REDIRECTOR_CONFIG),
                         "https://mybinder.org/v2/gh/Binder-Examples/Requirements/HEAD?urlpath=lab")
    assert row["path"] == "/v2/gh/Binder-Examples/Requirements/HEAD?urlpath=lab"
    assert row["key"] == "/build/gh/binder-examples/requirements"
    ranking = row["ranking"]
    assert isinstance(ranking, list) and len(ranking) == 3
    assert row["member"] == ranking[0]["member"]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)


def test_route_what_if_drain_moves_only_that_members_repositories() -> None:
    """--drain NAME sends NAME's repositories to their second choice and moves nothing else."""
    paths = [f"/build/gh/org/r{i}/HEAD" for i in range(200)]
    before = _route_json("--config", str(REDIRECTOR_CONFIG), *paths)
    after = _route_json("--config", str(REDIRECTOR_CONFIG), "--drain", "bids-ovh", *paths)
    for b, a in zip(before, after, strict=True):
        if b["member"] == "bids-ovh":
            assert a["member"] == b["ranking"][1]["member"]  # type: ignore[index]
        else:
            assert a["member"] == b["member"]


def test_route_reports_bad_paths_and_exits_nonzero() -> None:
    """A path that cannot be routed is reported with its reason; the exit code says so."""
    result = CliRunner().invoke(main, ["route", "--config", str(REDIRECTOR_CONFIG),
                                       "/build/gh/org/repo"])
    assert result.exit_code == 1
    assert "did you mean /build/gh/org/repo/HEAD" in result.output


def test_route_rejects_unknown_what_if_members() -> None:
    """What-if flags naming no member fail with a sentence, not a traceback."""
    result = CliRunner().invoke(main, ["route", "--config", str(REDIRECTOR_CONFIG),
                                       "--drain", "nope", "/build/gh/a/b/HEAD"])
    assert result.exit_code == 1
    assert "no member called 'nope'" in result.output


def test_check_validates_and_names_the_field(tmp_path: Path) -> None:
    """`federation check` prints OK for a good config and file/member/field for a bad one."""
    good = CliRunner().invoke(main, ["check", "--config", str(ROOT / "config/example.yaml")])
    assert good.exit_code == 0
    assert good.output.startswith("OK: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("members:\n  - {name: gke, url: https://gke, prime: true, weight: -3}\n")
    result = CliRunner().invoke(main, ["check", "--config", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}: member 'gke': field 'weight'" in result.output
