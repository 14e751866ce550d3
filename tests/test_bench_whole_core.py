"""``benchmarks.run probing --whole-core``: the extrapolation and its calibration server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from benchmarks.harness import Run
from benchmarks.reference import create_reference_app
from benchmarks.run import extrapolate


def _runs(per_launch: tuple[float, ...], background: tuple[float, ...]) -> list[Run]:
    """Servers sharing one core equally: each answers what its share of the core, less its
    background work, pays for at its cost per launch."""
    share = 1 / len(per_launch)
    return [Run(f"s{i}", 32, (share - b) / c, 1.0, 2.0, 0, share, 0.3)
            for i, (c, b) in enumerate(zip(per_launch, background, strict=True))]


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
