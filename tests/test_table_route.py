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


MAX_AGE = 5.0

step = st.one_of(
    st.tuples(st.sampled_from(["add", "settle", "forget"]), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("probed"), st.sampled_from(["a", "b", "c"]), st.booleans(),
              st.sampled_from([0.0, 1.0, 2.5, MAX_AGE])),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=80))
def test_sent_launches_drop_exactly_what_the_shown_probes_include(steps: list[tuple]) -> None:
    """Whatever launches, probes, swaps and removals come, each member's count is what its
    reported pods are not sure to include, as of the last swap: a new count includes the
    launches sent before the probe preceding it; a count unchanged since the last such point
    (the first probe, a new count, or an earlier one of these) for ``MAX_AGE`` includes those
    sent before that point. The model keeps launches as positions in the sequence of steps,
    the class keeps running counts. The total stays the sum (bounded loads read it)."""
    sent = SentLaunches()
    clock = 0.0
    launches: dict[str, list[int]] = {}  # the model: when each launch was sent (step index)
    previous: dict[str, int] = {}  # index of each member's previous probe
    anchor: dict[str, tuple[float, int]] = {}  # (time, index) of its last sure point
    pending: dict[str, int] = {}  # launches before this index are included, once settled
    shown: dict[str, int] = {}  # ... and those before this index, as of the last settle
    for index, (action, name, *probe) in enumerate(steps):
        if action == "add":
            sent.add(name)
            launches.setdefault(name, []).append(index)
        elif action == "probed":
            fresh, wait = probe
            clock += wait
            sent.probed(name, at=clock, fresh=fresh, max_age=MAX_AGE)
            since = anchor.get(name)
            aged = since is not None and clock - since[0] >= MAX_AGE
            cover = previous.get(name, 0) if fresh else since[1] if since and aged else 0
            pending[name] = max(pending.get(name, 0), cover)
            if fresh or aged or since is None:
                anchor[name] = (clock, index)
            previous[name] = index
        elif action == "settle":
            sent.settle()
            shown.update(pending)
        else:
            sent.forget(name)
            for model in (launches, previous, anchor, pending, shown):
                model.pop(name, None)
        expected = {n: sum(1 for at in sent_at if at >= shown.get(n, 0))
                    for n, sent_at in launches.items()}
        assert {n: c for n, c in sent.counts.items() if c} == {
            n: c for n, c in expected.items() if c}
        assert sent.total == sum(sent.counts.values())
