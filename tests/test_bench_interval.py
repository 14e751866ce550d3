"""The benchmarks' interval of a median over rounds."""

from __future__ import annotations

import statistics

from benchmarks.run import interval

ROUNDS = [0.96, 0.96, 0.97, 0.91, 1.16, 0.75, 0.81, 0.89, 0.60, 0.67, 0.83, 0.89, 0.83,
          0.81, 0.97, 0.69, 1.55, 0.99, 0.60, 0.72]  # spread like a shared VM's rounds


def test_rounds_that_agree_leave_no_doubt() -> None:
    assert interval([0.95] * 12) == (0.95, 0.95)


def test_the_interval_holds_the_median_and_is_not_the_rounds_range() -> None:
    low, high = interval(ROUNDS)
    assert low < statistics.median(ROUNDS) < high
    assert min(ROUNDS) < low and high < max(ROUNDS)


def test_more_rounds_of_the_same_spread_narrow_it() -> None:
    low, high = interval(ROUNDS)
    low4, high4 = interval(ROUNDS * 4)
    assert high4 - low4 < (high - low) * 0.75


def test_a_wider_level_widens_it() -> None:
    low, high = interval(ROUNDS, level=0.5)
    low9, high9 = interval(ROUNDS)
    assert low9 <= low and high <= high9 and high9 - low9 > high - low


def test_no_rounds_no_interval() -> None:
    low, high = interval([])
    assert low != low and high != high  # NaN


def test_one_wild_round_does_not_move_it() -> None:
    """A median's interval, not a mean's: one round the machine stalled stays out."""
    assert interval([1.0] * 15 + [3.0]) == (1.0, 1.0)
