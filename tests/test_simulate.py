"""``federation simulate``: traces, the replay through the router's placement, what-ifs."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from click.testing import CliRunner, Result

from federation.cli import main
from federation.config import Strategy, parse_config
from federation.launch import parse_launch
from federation.simulate import STRATEGIES, replay, run
from federation.traces import Launch, Trace, TraceError, ZipfWorkload, read_archive, zipf_trace

ARCHIVE = Path(__file__).parent / "data" / "launches.jsonl"
MEMBERS = {"a": 30, "b": 20, "c": 10}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A three-member federation file, probed every 10 s, no pod headroom."""
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump({
        "routing": {"pod_headroom": 0},
        "members": [{"name": n, "url": f"https://{n}.example.org", "weight": w,
                     "prime": n == "a"} for n, w in MEMBERS.items()],
    }))
    return path


def cli(*args: str) -> Result:
    """Run ``federation`` in-process; stderr is kept apart from stdout."""
    return CliRunner().invoke(main, list(args))


def archive_paths() -> list[str]:
    """Launch paths of the successful events in the shipped archive sample."""
    paths = []
    for line in ARCHIVE.read_text().splitlines():
        event = json.loads(line)
        if event["status"] == "success":
            prefix = {"GitHub": "gh", "GitLab": "gl", "Gist": "gist", "Zenodo": "zenodo"}
            paths.append(f"/build/{prefix[event['provider']]}/{event['spec']}")
    return paths


def test_archive_sample_reads_in_time_order_and_skips_failed_launches() -> None:
    """The shipped sample (archive format) gives one launch per successful event, in time
    order; launches stamped with the same minute are spread over that minute; refs of one
    repository share its key."""
    trace = read_archive([ARCHIVE], session_lifetime=600, seed=1)
    assert len(trace.launches) == len(archive_paths()) == 318
    assert trace.skipped == 2
    times = [item.at for item in trace.launches]
    assert times == sorted(times) and times[0] == 0
    per_minute = Counter(math.floor(t / 60) for t in times)
    assert max(per_minute.values()) > 1 and len(set(times)) == len(times)
    keys = {item.launch.key for item in trace.launches}
    assert len(keys) < len(set(archive_paths()))  # HEAD, main, v1.0 of one repo: one key


def test_archive_files_merge_and_may_be_gzipped(tmp_path: Path) -> None:
    """A day split into two files (given in either order, or as their directory), one
    gzipped, replays as the same trace."""
    lines = ARCHIVE.read_text().splitlines(keepends=True)
    minute = [json.loads(line)["timestamp"] for line in lines]
    cut = next(i for i in range(150, len(lines)) if minute[i] != minute[i - 1])
    first, second = tmp_path / "events-1.jsonl", tmp_path / "events-2.jsonl.gz"
    first.write_text("".join(lines[cut:]))
    with gzip.open(second, "wt") as f:
        f.write("".join(lines[:cut]))
    whole = read_archive([ARCHIVE], session_lifetime=600, seed=1)
    expected = [(i.at, i.launch.key) for i in whole.launches]
    for paths in ([first, second], [second, first], [tmp_path]):
        merged = read_archive(paths, session_lifetime=600, seed=1)
        assert [(i.at, i.launch.key) for i in merged.launches] == expected


@pytest.mark.parametrize(("line", "reason"), [
    ("not json", "not a JSON object"),
    ('{"timestamp": "2026-11-01T08:00:00", "spec": "a/b/HEAD"}', "'provider'"),
    ('{"timestamp": "yesterday", "provider": "GitHub", "spec": "a/b/HEAD"}', "ISO 8601"),
])
def test_unreadable_archive_lines_name_file_and_line(tmp_path: Path, line: str,
                                                     reason: str) -> None:
    """A line that is not a launch event stops the replay with its file and line number."""
    path = tmp_path / "events.jsonl"
    good = '{"timestamp": "2026-11-01T08:00:00+00:00", "provider": "GitHub", "spec": "a/b/HEAD"}'
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(TraceError, match=f"{path}:2: .*{reason}"):
        read_archive([path], session_lifetime=600, seed=1)


def test_zipf_trace_follows_the_workload() -> None:
    """The synthetic trace is reproducible, arrives at the asked rate, and its hottest
    repository takes its Zipf share 1/H(N) of launches (8.8 % for 50,000 repositories)."""
    workload = ZipfWorkload(launches=30_000, rate=2.0)
    trace = zipf_trace(workload)
    assert trace.launches == zipf_trace(workload).launches
    assert len(trace.launches) / trace.duration == pytest.approx(2.0, rel=0.03)
    top = trace.launches_per_key().most_common(1)[0][1] / len(trace.launches)
    harmonic = sum(1 / k for k in range(1, workload.repos + 1))
    assert top == pytest.approx(1 / harmonic, abs=0.006)
    lifetimes = [item.lifetime for item in trace.launches]
    assert sum(lifetimes) / len(lifetimes) == pytest.approx(1000, rel=0.03)


def test_builds_and_hits_are_counted_per_member() -> None:
    """A repository builds on the first launch on a member; later launches there are hits."""
    cfg = parse_config({"members": [{"name": "solo", "url": "https://solo.example.org",
                                     "prime": True}]})
    x, y = parse_launch("/build/gh/o/x/HEAD"), parse_launch("/build/gh/o/y/HEAD")
    trace = Trace(tuple(Launch(t, key, 5.0) for t, key in enumerate([x, x, y, x])), "handmade")
    result = replay(cfg, trace, quotas={"solo": 100}, strategy=Strategy.BOUNDED,
                    probe_interval=1.0)
    assert (result.launches, result.builds, result.hit_rate) == (4, 2, 0.5)
    (member,) = result.members
    assert (member.launches, member.builds, member.peak_load, member.spill_overs) == (4, 2, 4, 0)


def test_bounded_loads_cap_the_peak_where_plain_rendezvous_overflows() -> None:
    """On a Zipf stream, plain rendezvous (members report no quota) piles hot repositories
    onto their home member past its quota; bounded placement holds every member at its
    quota (the federation has room: 60 % utilisation) and keeps the hit rate within a few
    points."""
    cfg = parse_config({"routing": {"pod_headroom": 0}, "members": [
        {"name": n, "url": f"https://{n}.example.org", "weight": w, "prime": n == "a"}
        for n, w in MEMBERS.items()]})
    trace = zipf_trace(ZipfWorkload(repos=5000, launches=8000, session_lifetime=100))
    # sessions of 100 s would mostly end inside BinderHub's minute of one pod count: these
    # members count at every probe (the next test has BinderHub's count)
    plain = run(cfg, trace, strategies=[Strategy.RENDEZVOUS], concurrency=100,
                utilisation=0.6, report_quota=False, pod_cache=0).results[0]
    bounded = run(cfg, trace, strategies=[Strategy.BOUNDED], concurrency=100,
                  utilisation=0.6, pod_cache=0).results[0]
    assert plain.peak_load_over_quota > 1.2 and plain.over_quota > 0
    assert bounded.peak_load_over_quota <= 1.0
    assert bounded.hit_rate > plain.hit_rate - 0.04
    assert bounded.spill_overs > 0 and plain.spill_overs == 0
    assert bounded.fallbacks == bounded.over_quota == 0


def test_members_answering_from_a_minute_old_pod_count_still_get_no_launch_past_quota() -> None:
    """BinderHub answers /health from a pod count it takes at most once a minute. A router
    that took each probe's count as including every launch sent before it (the tenth
    pass's router) put 42 of these launches on members at their quota (peak 1.04×); counting
    launches until a count is sure to include them, none."""
    cfg = parse_config({"routing": {"pod_headroom": 0}, "members": [
        {"name": n, "url": f"https://{n}.example.org", "weight": w, "prime": n == "a"}
        for n, w in MEMBERS.items()]})
    trace = zipf_trace(ZipfWorkload(repos=5000, launches=10_000, rate=3, session_lifetime=300))
    result = run(cfg, trace, strategies=[Strategy.BOUNDED], utilisation=0.9).results[0]
    assert result.over_quota == 0 and result.peak_load_over_quota <= 1.0
    assert result.spill_overs > 0


def moved_by_route(config_path: Path, paths: list[str], *what_if: str) -> tuple[int, int]:
    """Launches and distinct repositories whose member ``federation route`` changes."""
    def members(*extra: str) -> list[tuple[str, str]]:
        result = cli("route", "--config", str(config_path), "--json", *extra, *paths)
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        return [(row["key"], row["member"]) for row in rows]

    changed = [key for (key, before), (_, after) in zip(members(), members(*what_if),
                                                          strict=True) if before != after]
    return len(changed), len(set(changed))


@pytest.mark.parametrize("what_if", [("--drain", "b"), ("--weight", "c=40"),
                                     ("--drain", "a", "--weight", "b=5")])
def test_what_if_moves_agree_with_route(config_path: Path, what_if: tuple[str, ...]) -> None:
    """simulate's count of launches and repositories that change home member is what
    ``federation route`` shows for the same what-if, path by path."""
    result = cli("simulate", "--config", str(config_path), "--trace", str(ARCHIVE),
                 "--strategy", "bounded", "--json", *what_if)
    assert result.exit_code == 0, result.output
    moved = json.loads(result.stdout)["moved"]
    launches, repositories = moved_by_route(config_path, archive_paths(), *what_if)
    assert launches > 0
    assert (moved["launches_moved"], moved["repositories_moved"]) == (launches, repositories)


def test_simulate_prints_strategies_side_by_side_and_plots(config_path: Path,
                                                           tmp_path: Path) -> None:
    """--json gives one object per strategy (random, rendezvous, bounded) with the hit rate
    as a fraction and the peak against quota; --plot writes an SVG with one line per member
    and strategy; no progress bar is drawn when stderr is not a terminal."""
    plot = tmp_path / "load.svg"
    result = cli("simulate", "--config", str(config_path), "--zipf", "2000", "--launches",
                 "3000", "--json", "--plot", str(plot), "--add", "d=10")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["strategy"] for r in rows] == [s.value for s in STRATEGIES]
    for row in rows:
        assert row["launches"] == 3000 and 0 < row["hit_rate"] < 1
        assert row["peak_load_over_quota"] > 0
        assert [m["name"] for m in row["members"]] == ["a", "b", "c", "d"]
        assert row["moved"]["gained"] == {"d": row["moved"]["repositories_moved"]}
    svg = ElementTree.fromstring(plot.read_text())
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 3 * 4
    assert "Simulating" not in result.stderr
    text = cli("simulate", "--config", str(config_path), "--trace", str(ARCHIVE))
    assert text.exit_code == 0
    assert "Best possible hit rate" in text.stdout and "bounded, per member" in text.stdout
    assert "pods counted every 60 s" in text.stdout  # BinderHub's, unless told otherwise
    fresh = cli("simulate", "--config", str(config_path), "--trace", str(ARCHIVE),
                "--pod-cache", "0")
    assert fresh.exit_code == 0 and "pods counted every 0 s" in fresh.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--zipf", "10", "--trace", str(ARCHIVE)), "either --trace FILE"),
    (("--zipf", "10", "--plot", "load.png"), "only SVG"),
    (("--zipf", "10", "--drain", "nope"), "'nope'"),
    (("--zipf", "10", "--quota", "nope=5"), "'nope'"),
    (("--zipf", "10", "--add", "a=5"), "exists already"),
    (("--zipf", "10", "--quota", "a=lots"), "expected NAME=N"),
])
def test_simulate_refuses_bad_options_with_a_sentence(config_path: Path, args: tuple[str, ...],
                                                      message: str) -> None:
    """Contradictory or unknown options end with one plain sentence and exit 1."""
    result = cli("simulate", "--config", str(config_path), "--launches", "10", *args)
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
