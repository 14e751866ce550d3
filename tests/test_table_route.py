"""RoutingTable.route, with its per-snapshot sums, decides exactly as bounded_choice does;
the launches it counts keep their total."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.config import load_config_text
from federation.health import HealthReport, MemberHealth, PodQuota, State
from federation.launch import parse_launch
from federation.placement import bounded_choice
from federation.table import SentLaunches, build_table

member = st.tuples(st.integers(1, 100), st.integers(0, 120), st.one_of(st.none(),
                                                                      st.integers(0, 150)),
                   st.integers(0, 60))


@settings(max_examples=300, deadline=None)
@given(members=st.lists(member, min_size=1, max_size=8), repo=st.integers(0, 10_000),
       capacity_weights=st.booleans(), floor=st.integers(0, 20))
def test_fast_path_matches_bounded_choice(members: list[tuple[int, int, int | None, int]],
                                          repo: int, capacity_weights: bool,
                                          floor: int) -> None:
    """For any weights, pods, quotas and launches sent, route picks bounded_choice's member."""
    doc = {"routing": {"slow_start": 0, "bound_floor": floor,
                       "weights": "capacity" if capacity_weights else "configured"},
           "members": [{"name": f"m{i}", "url": f"http://127.0.0.1:{1000 + i}",
                        "weight": w, "prime": i == 0} for i, (w, _, _, _) in enumerate(members)]}
    config = load_config_text(json.dumps(doc))
    healths = {f"m{i}": MemberHealth(state=State.HEALTHY, reason="", probes=1,
                                     report=HealthReport(True, (), PodQuota(p, p, 0, q)))
               for i, (_, p, q, _) in enumerate(members)}
    sent = {f"m{i}": s for i, (_, _, _, s) in enumerate(members)}
    table = build_table(config, healths, {}, now=0.0)
    launch = parse_launch(f"/build/gh/org/repo-{repo}/HEAD")
    # slots given in another order than the members', and one to a name the table lacks
    launched = SentLaunches({"elsewhere": 0, **dict(reversed(list(sent.items())))})
    decision = table.route(launch, sent=launched)
    if not table.routable:
        return
    ranking = table.ranking(launch.key)
    choice = bounded_choice(ranking, table._candidates, load_factor=1.25, sent=sent,
                            floor=floor)
    assert decision is not None and choice is not None
    assert decision.member.name == choice.member
    expected = "load_balancer" if choice.reason == "home" else choice.reason
    assert decision.reason == expected


@given(steps=st.lists(st.tuples(st.sampled_from(["add", "probed", "settle", "forget"]),
                                st.sampled_from(["a", "b", "c"])), max_size=60))
def test_sent_launches_drop_exactly_what_the_shown_probes_include(
    steps: list[tuple[str, str]],
) -> None:
    """Whatever launches, probes, swaps and removals come, each member's count is what a
    table showing its pods has not seen: everything since its last probe once a swap showed
    that probe, everything since the one before until then. The running total stays the sum
    (bounded loads read it instead of summing every member per launch)."""
    sent = SentLaunches()
    since_probe: dict[str, int] = {}  # the model: launches after each member's last probe
    shown: dict[str, int] = {}
    unshown: set[str] = set()
    for action, name in steps:
        if action == "add":
            sent.add(name)
            since_probe[name] = since_probe.get(name, 0) + 1
            shown[name] = shown.get(name, 0) + 1
        elif action == "probed":
            sent.probed(name)
            since_probe[name] = 0
            unshown.add(name)
        elif action == "settle":
            sent.settle()
            shown.update((n, since_probe.get(n, 0)) for n in unshown)
            unshown.clear()
        else:
            sent.forget(name)
            since_probe.pop(name, None)
            shown.pop(name, None)
            unshown.discard(name)
        assert {n: c for n, c in sent.counts.items() if c} == {
            n: c for n, c in shown.items() if c}
        assert sent.total == sum(sent.counts.values())