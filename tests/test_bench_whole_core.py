"""Whole-core estimates from a shared core: ``probing --whole-core``'s extrapolation, the
CPU accounting of ``--paired`` (``benchmarks.accounting``), and their calibration server."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from benchmarks.accounting import whole_core_rate, whole_core_ratios
from benchmarks.harness import Run
from benchmarks.reference import create_reference_app
from benchmarks.run import extrapolate


def _runs(per_launch: tuple[float, ...], background: tuple[float, ...],
          shares: tuple[float, ...] | None = None, round_no: int = 0) -> list[Run]:
    """Servers sharing one core (equally unless ``shares`` says): each answers what its
    share of the core, less its background work, pays for at its cost per launch."""
    shares = shares or (1 / len(per_launch),) * len(per_launch)
    return [Run(f"s{i}", 32, (share - b) / c, 1.0, 2.0, 0, share, 0.3, round_no=round_no)
            for i, (c, b, share) in enumerate(zip(per_launch, background, shares,
                                                  strict=True))]


def test_extrapolation_finds_the_whole_core_ratio() -> None:
    """A server 2 % dearer per launch that spends 3 % of a core on background work keeps
    0.97 / 1.02 of the baseline's throughput on a whole core; sharing the core understates
    that, and the extrapolation recovers it."""
    two = _runs((1.0, 1.02), (0.0, 0.03))
    three = _runs((1.0, 1.02, 1.0), (0.0, 0.03, 0.0))
    ratios = extrapolate(two, three)
    assert ratios is not None
    with_two, with_three, whole = ratios
    assert abs(whole - 0.97 / 1.02) < 1e-9
    assert with_three < with_two < whole


def test_a_refused_run_spoils_the_round() -> None:
    two = _runs((1.0, 1.0), (0.0, 0.0))
    three = _runs((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    three[2] = Run("s2", 32, 1.0, 1.0, 2.0, 0, 0.1, 0.3, refused="server used only 10 %")
    assert extrapolate(two, three) is None


async def test_calibration_reference_spends_its_share_of_a_core(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> None:
    """The calibration's known cost is real: the reference told to spend a quarter of a
    core on busy work does so while idle (its answers stay the reference's 307)."""
    client = await aiohttp_client(create_reference_app(background=0.25))
    cpu, wall = time.thread_time(), time.monotonic()
    await asyncio.sleep(0.6)
    spent, passed = time.thread_time() - cpu, time.monotonic() - wall
    assert spent >= 0.25 * passed * 0.7
    response = await client.get("/build/gh/org/repo/HEAD", allow_redirects=False)
    assert response.status == 307


def test_accounting_finds_the_whole_core_ratio() -> None:
    """The same server as above, paired with the baseline: its throughput ratio (0.921)
    counts the background twice; CPU accounting recovers 0.97 / 1.02, whatever share of
    the core the scheduler happened to give each."""
    for shares in ((0.5, 0.5), (0.45, 0.55), (0.6, 0.4)):
        base, other = _runs((1.0, 1.02), (0.0, 0.03), shares)
        (ratio,) = whole_core_ratios([other], [base], compared_background=0.03,
                                     baseline_background=0.0)
        assert abs(ratio - 0.97 / 1.02) < 1e-9
    base, other = _runs((1.0, 1.02), (0.0, 0.03))
    assert other.rps / base.rps < 0.93


def test_accounting_puts_background_apart_from_launches() -> None:
    """Alone on a whole core, the core less the background goes to launches."""
    (run,) = _runs((1e-4,), (0.03,), (0.5,))
    assert abs(whole_core_rate(run, 0.03) - 9_700) < 1e-6
    assert abs(whole_core_rate(run, 0.0) - 10_000 * 0.47 / 0.5) < 1e-6


def test_accounting_pairs_rounds_and_skips_what_has_no_figure() -> None:
    rounds = [_runs((1.0, 1.0 + n / 100), (0.0, 0.0), round_no=n) for n in (1, 2, 3)]
    base = [pair[0] for pair in rounds]
    other = [pair[1] for pair in rounds]
    other[1] = Run("s1", 32, 1.0, 1.0, 2.0, 0, 0.5, 0.3, refused="load generator busy",
                   round_no=2)
    base[2] = Run("s0", 32, 0.5, 1.0, 2.0, 0, 0.5, 0.3, round_no=4)  # no round 3 to pair
    ratios = whole_core_ratios(other, base, compared_background=0.0, baseline_background=0.0)
    assert ratios == [1 / 1.01]
    idle_only = Run("s1", 32, 100.0, 1.0, 2.0, 0, 0.02, 0.3, round_no=1)
    assert math.isnan(whole_core_rate(idle_only, 0.03))  # no CPU left for its launches
    assert whole_core_ratios([idle_only], base[:1], compared_background=0.03,
                             baseline_background=0.0) == []
