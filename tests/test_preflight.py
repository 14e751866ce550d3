"""``federation check --probe``: the preflight an institution runs before joining.

Simulated BinderHub members on 127.0.0.1 play the federation; the command runs as a shell would
run it, with its own event loop, in a thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from federation.demo import MemberControls
from tests.conftest import StartFederation, run_cli

pytestmark = pytest.mark.timeout(10)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_healthy_federation_passes(
    start_federation: StartFederation, record_property: Callable[[str, Any], None]
) -> None:
    """Every member reachable, healthy, on the prime's versions and with room: exit 0, and the
    table shows each one's checks, versions, pods against quota and capacity, and answer time."""
    fed = await start_federation(["gke", "gesis", "ovh"], wait_ready=False)
    result = await run_cli("check", "--config", str(fed.config_path), "--probe")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("member"))
    assert header.split() == ["member", "reachable", "health", "versions", "pods/quota",
                              "takes", "below", "answer"]
    for name in ("gke (prime)", "gesis", "ovh"):
        cells = next(line for line in lines if line.startswith(name)).split()
        assert cells[-9:-2] == ["yes", "ok", "1.0.0+demo", "=", "prime", "0/100", "90"]
        assert cells[-1] == "ms"
    assert "READY: all 3 members probed are fit to join." in result.output
    assert "✗" not in result.output
    record_property("figures", result.output.rstrip())


async def test_unreachable_member_fails_with_what_to_check(
    start_federation: StartFederation,
) -> None:
    """A member nothing answers for is not fit: the reason names its /health URL and what to
    look at, and the members that are fine get no complaint."""
    fed = await start_federation(["gke", "gesis"], wait_ready=False)
    url = f"http://127.0.0.1:{closed_port()}"
    doc = fed.config_doc
    fed.write_config({**doc, "members": [*doc["members"], {"name": "newinst", "url": url}]})
    result = await run_cli("check", "--config", str(fed.config_path), "--probe")
    assert result.exit_code == 1
    assert (f"✗ newinst: cannot connect to {url}/health — is the URL right, does the host name "
            "resolve, and is /health open to the router") in result.output
    assert "NOT READY: 1 of 3 members are not fit to join (newinst)" in result.output
    assert "✗ gke" not in result.output
    assert "✗ gesis" not in result.output


@pytest.mark.parametrize(
    ("controls", "reason", "cell"),
    [
        pytest.param(MemberControls(health="503"),
                     "/health says 'Docker registry', 'JupyterHub API' are failing — fix that "
                     "on the member's BinderHub before joining",
                     "failing: Docker registry, JupyterHub API", id="unhealthy"),
        pytest.param(MemberControls(binderhub="1.0.1"),
                     "runs BinderHub 1.0.1, but the prime gke runs BinderHub 1.0.0+demo — "
                     "upgrade to the prime's versions before joining",
                     "1.0.1 ≠ prime", id="other-versions"),
    ],
)
async def test_unfit_member_fails_with_a_reason_to_act_on(
    start_federation: StartFederation, controls: MemberControls, reason: str, cell: str,
) -> None:
    """A member whose /health answers 503 is not fit, the reason naming the BinderHub checks
    that fail; one on another BinderHub than the prime is not fit, the reason giving both
    versions. The table row shows the same."""
    fed = await start_federation({"gke": MemberControls(), "newinst": controls},
                                 wait_ready=False)
    result = await run_cli("check", "--config", str(fed.config_path), "--probe")
    assert result.exit_code == 1
    assert f"✗ newinst: {reason}" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("newinst"))
    assert cell in row


async def test_preflight_agrees_with_the_router(start_federation: StartFederation) -> None:
    """Preflight judges with the router's own verdict: the members it calls unfit are exactly
    those the running router keeps out of rotation for their probes."""
    fed = await start_federation({
        "gke": MemberControls(),
        "fine": MemberControls(),
        "sick": MemberControls(health="503"),
        "old": MemberControls(binderhub="0.9.0"),
        "garbage": MemberControls(health="garbage"),
    })
    for name, status in (("fine", "healthy"), ("sick", "unhealthy"), ("old", "unhealthy"),
                         ("garbage", "unhealthy")):
        await fed.wait_status(name, status)
    result = await run_cli("check", "--config", str(fed.config_path), "--probe")
    assert result.exit_code == 1
    unfit = {line.split()[1].rstrip(":") for line in result.output.splitlines()
             if line.startswith("  ✗ ")}
    out = {v.name for v in fed.state.table.members if v.status.value == "unhealthy"}
    assert unfit == out == {"sick", "old", "garbage"}
    assert "did not answer in BinderHub's format (not JSON)" in result.output


async def test_quota_inside_the_headroom_fails_and_missing_quota_warns(
    start_federation: StartFederation,
) -> None:
    """A pod quota no larger than the headroom means the member would never take a launch
    (not fit); a member without a quota is fit, with a warning to set one."""
    fed = await start_federation({"gke": MemberControls(),
                                  "tiny": MemberControls(quota=8),
                                  "open": MemberControls(quota=None)}, wait_ready=False)
    result = await run_cli("check", "--config", str(fed.config_path), "--probe")
    assert result.exit_code == 1
    assert ("✗ tiny: its pod quota of 8 leaves nothing above the headroom of 10 pods, so it "
            "would never take a launch") in result.output
    assert ("! open: reports no pod quota, so the router cannot tell when it is full — set "
            "LaunchQuota.total_quota") in result.output
    assert "✗ open" not in result.output


async def test_member_option_judges_only_the_newcomer(start_federation: StartFederation) -> None:
    """``--member NAME`` judges only that member (against the prime's versions), so a newcomer's
    preflight does not fail because another member is sick today."""
    fed = await start_federation({"gke": MemberControls(), "sick": MemberControls(health="503"),
                                  "newinst": MemberControls()}, wait_ready=False)
    result = await run_cli("check", "--config", str(fed.config_path), "--probe",
                           "--member", "newinst")
    assert result.exit_code == 0, result.output
    assert "READY: all 1 members probed are fit to join." in result.output
    assert "sick" not in result.output.split("OK:", 1)[1].split("\n", 1)[1]
    unknown = await run_cli("check", "--config", str(fed.config_path), "--probe",
                            "--member", "nobody")
    assert unknown.exit_code == 1
    assert "--member nobody: no member called 'nobody'" in unknown.output
