"""The benchmarks' members see the launches sent to them: the load generator tallies its
redirects per member in files, and the members report those of the last lifetime as pods."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.members import LaunchesSeen, Tallies, forget_launches
from tests.conftest import missing_tool

_CORES = os.sched_getaffinity(0)


def test_launches_count_for_their_lifetime_then_drop_out() -> None:
    seen = LaunchesSeen(lifetime=10.0)
    assert seen.running("a") == 0
    seen.observe(0.0, {"a": 5})
    seen.observe(4.0, {"a": 15, "b": 2})
    assert (seen.running("a"), seen.running("b")) == (15, 2)  # less than a lifetime seen
    seen.observe(12.0, {"a": 40, "b": 2})
    assert (seen.running("a"), seen.running("b")) == (35, 2)  # the 5 seen by t=0 are over
    seen.observe(15.0, {"a": 41, "b": 2})
    assert (seen.running("a"), seen.running("b")) == (26, 0)  # and those seen by t=4
    assert seen.running("never") == 0


def test_forgotten_launches_never_count_again() -> None:
    seen = LaunchesSeen(lifetime=10.0)
    seen.observe(0.0, {"a": 5, "b": 3})
    seen.forget({"a": 8, "b": 3})  # three more launches of "a" since the last look
    seen.observe(1.0, {"a": 8, "b": 3})
    assert (seen.running("a"), seen.running("b")) == (0, 0)
    seen.observe(2.0, {"a": 10, "b": 3})
    assert seen.running("a") == 2  # launches after the forgetting count
    seen.observe(12.0, {"a": 11, "b": 4})
    assert (seen.running("a"), seen.running("b")) == (1, 1)  # the window moves on as before


def test_tallies_add_up_over_files_and_skip_what_is_half_written(tmp_path: Path) -> None:
    (tmp_path / "one.0.json").write_text(json.dumps({"http://127.0.0.1:1": 3}))
    (tmp_path / "two.json").write_text(json.dumps({"http://127.0.0.1:1": 4,
                                                   "http://127.0.0.1:2": 1}))
    (tmp_path / "three.0.json.part").write_text(json.dumps({"http://127.0.0.1:1": 100}))
    (tmp_path / "four.json").write_text('{"http://127.0.0.1:1": 10')  # torn: skipped
    tallies = Tallies(tmp_path)
    assert tallies.read() == {"http://127.0.0.1:1": 7, "http://127.0.0.1:2": 1}
    assert Tallies(tmp_path / "missing").read() == {}


def test_a_replaced_tally_is_read_again(tmp_path: Path) -> None:
    tallies = Tallies(tmp_path)
    path = tmp_path / "gen.0.json"
    for count in (3, 5, 8):  # as the load generators write: a new file renamed over the old
        (tmp_path / "next").write_text(json.dumps({"http://127.0.0.1:1": count}))
        os.replace(tmp_path / "next", path)
        assert tallies.read() == {"http://127.0.0.1:1": count}


def _user_pods(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
        checks = json.load(answer)["checks"]
    return next(c["user_pods"] for c in checks if c["service"] == "Pod quota")


def _pods_become(url: str, expected: int) -> int:
    deadline = time.monotonic() + 10
    while (pods := _user_pods(url)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return pods


def test_members_report_the_launches_tallied_for_them(tmp_path: Path) -> None:
    tallies = tmp_path / "tallies"
    with harness.members(2, churn=False, cores=_CORES, seen=tallies, pod_cache=0) as urls:
        assert [_user_pods(u) for u in urls] == [0, 0]
        (tallies / "gen.0.json").write_text(json.dumps({urls[0]: 7}))
        assert _pods_become(urls[0], 7) == 7
        (tallies / "gen.0.json").write_text(json.dumps({urls[0]: 9, urls[1]: 2}))
        assert (_pods_become(urls[0], 9), _pods_become(urls[1], 2)) == (9, 2)


def test_members_report_the_same_count_until_they_count_again(tmp_path: Path) -> None:
    """As BinderHub, a member answers from a count it takes at most every ``pod_cache``
    seconds (spread over the members: with two, the second counts again after half of it)."""
    tallies = tmp_path / "tallies"
    with harness.members(2, churn=False, cores=_CORES, seen=tallies, pod_cache=3600) as urls:
        (tallies / "gen.0.json").write_text(json.dumps({urls[0]: 7, urls[1]: 2}))
        time.sleep(1.0)  # five looks at the tallies
        assert [_user_pods(u) for u in urls] == [0, 0]


def test_members_forget_their_launches_when_told(tmp_path: Path) -> None:
    """``forget_launches`` ends every session at once, even on members that would not count
    their pods again for an hour, and launches after it count as before."""
    tallies = tmp_path / "tallies"
    with harness.members(2, churn=False, cores=_CORES, seen=tallies, pod_cache=0) as urls:
        (tallies / "gen.0.json").write_text(json.dumps({urls[0]: 7, urls[1]: 2}))
        assert (_pods_become(urls[0], 7), _pods_become(urls[1], 2)) == (7, 2)
        forget_launches(tallies)
        assert [_user_pods(u) for u in urls] == [0, 0]
        (tallies / "gen.0.json").write_text(json.dumps({urls[0]: 10, urls[1]: 2}))
        assert _pods_become(urls[0], 3) == 3
    # A member that counts once an hour has not counted its churning pods yet; told to
    # forget, it counts them at once. Its seeded churn draws 1 to 49 pods every half
    # second for the first five and a half seconds, and this takes well under one.
    with harness.members(1, churn=True, cores=_CORES, seen=tallies, pod_cache=3600) as urls:
        assert _user_pods(urls[0]) == 0
        forget_launches(tallies)
        assert _user_pods(urls[0]) > 0


@pytest.mark.parametrize("generator", ["wrk", "python"])
def test_load_generators_tally_every_redirect_by_member(
        generator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if generator == "python":
        monkeypatch.setattr(harness, "WRK", None)
    elif harness.WRK is None:
        missing_tool("wrk", "apt-get install -y wrk",
                     "to test the Lua script that tells the benchmarks' members their launches")
    tallies = tmp_path / "tallies"
    with harness.members(3, churn=False, cores=_CORES, seen=tallies) as urls, \
            harness.router("router", tmp_path, urls, interval=10, loop="asyncio",
                           cores=_CORES, tallies=tallies) as server:
        result = harness.launches(server, connections=4, duration=1.0, cores=_CORES)
        counted = Tallies(tallies).read()
        sent: dict[str, float] = {}
        for (member, _), redirects in server.redirects().items():
            sent[member] = sent.get(member, 0.0) + redirects
    assert sum(counted.values()) == result["requests"] > 0
    assert set(counted) <= set(urls) and len(counted) == 3
    by_name = {f"m{i:03d}": url for i, url in enumerate(urls)}
    for name, redirects in sent.items():  # a response still in flight at the end is uncounted
        assert redirects - 4 <= counted[by_name[name]] <= redirects
