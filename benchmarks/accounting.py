"""What a server would answer alone on a whole core, from a run that shared the core.

Two servers loaded at once on one core (``probing --paired``) see the same machine at the
same moments, which makes their figures far steadier than runs made one after the other on
a shared VM. Their throughput ratio is still the wrong one: each has about half the core,
so work a server does whatever the load (probing) takes about twice the share of its
throughput that it takes of a whole core.

CPU accounting takes that apart. A server's CPU share during a run is its background work
``b`` (measured without load, ``harness.background``) plus its launches' work, so each
launch costs ``(cpu - b) / rps`` of a core-second. Alone on a whole core, the core less the
background goes to launches: ``rps_whole = (1 - b) / ((cpu - b) / rps)``. The assumptions:
a launch costs the same whether the server has the core to itself or half of it, and the
background costs the same under load as without. The calibration pair of
``probing --paired`` (a reference spending a known share of a core on busy work) checks
both in every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from benchmarks.harness import Run, same_round_ratios

__all__ = ["whole_core_rate", "whole_core_ratios"]


def whole_core_rate(run: Run, background: float) -> float:
    """Requests a second ``run``'s server would answer alone on a whole core, given the
    share of a core it spends without load (``background``); NaN when the run's CPU does
    not exceed the background (nothing left to put on launches)."""
    launches_cpu = run.server_cpu - background
    if run.rps <= 0 or launches_cpu <= 0 or not 0 <= background < 1:
        return math.nan
    return run.rps * (1 - background) / launches_cpu


def whole_core_ratios(compared: Sequence[Run], baseline: Sequence[Run], *,
                      compared_background: float, baseline_background: float) -> list[float]:
    """Per round, the compared server's whole-core rate over the baseline's, from accepted
    runs of the same round (``Run.round_no``)."""
    return same_round_ratios(compared, baseline,
                             partial(whole_core_rate, background=compared_background),
                             partial(whole_core_rate, background=baseline_background))
