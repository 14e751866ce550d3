"""The benchmarks' router config goes through the router's own validation."""

from __future__ import annotations

from benchmarks.workload import config_text
from federation.config import Routing, load_config_text

URLS = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]


def test_benchmark_config_keeps_the_routers_defaults() -> None:
    config = load_config_text(config_text(URLS, interval=1), source="<benchmark>")
    assert config.health.interval == 1
    assert config.routing == Routing()
    assert [m.prime for m in config.members] == [True, False, False]


def test_load_factor_override_reaches_bounded_loads() -> None:
    """``probing --load-factor 10`` must change the bound the routers run with, and only it."""
    config = load_config_text(config_text(URLS, interval=10, load_factor=10),
                              source="<benchmark>")
    assert config.routing == Routing(load_factor=10)
