"""Instructions per launch, counted by callgrind: a figure a noisy machine cannot move.

Timings on a shared machine move by a third between runs minutes apart; the number of
instructions a server executes per request does not. Each server runs under valgrind's
callgrind with counting off; after a warm-up, counting is switched on for a load of launches
over **one** connection (so every request is handled alone, not batched with others into
one wake-up), switched off, and the total is divided by the requests answered. User-space
instructions only: the kernel's share (sockets) is the same for both servers and not counted.

The router runs as shipped except for its probe interval (five minutes, so that no probe
round lands in the counted window). Probing is counted apart, the same way: a router probing
100 churning members every second, with no launches, counted for a while and divided by the
probe rounds it made (table rebuilds, metrics and everything else probing causes included).
That is what probing costs in the units a launch costs, where the probing benchmark's
throughput ratio moves by more than the effect between runs on a shared machine.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Server, launches, members, reference, router

__all__ = ["Count", "count_instructions", "count_probing", "instructions_table", "missing_tools"]

_TOOLS = ("valgrind", "callgrind_control")
_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)
_READY_TIMEOUT = 180.0  # a Python server starts some 50 times slower under callgrind
_ROUNDS = re.compile(r"^federation_probes_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
PROBED_MEMBERS = 100


@dataclass(frozen=True)
class Count:
    """Instructions one server executed per event (a launch answered, or a probe round)."""

    server: str
    events: int
    instructions: int

    @property
    def per_event(self) -> float:
        """Instructions per event."""
        return self.instructions / self.events


def missing_tools() -> list[str]:
    """The valgrind tools this benchmark needs that are not installed."""
    return [tool for tool in _TOOLS if shutil.which(tool) is None]


def count_instructions(workdir: Path, *, loop: str, duration: float, warmup: float,
                       server_cores: set[int], load_cores: set[int]) -> list[Count]:
    """Count the reference's and the router's instructions per launch, one after the other."""
    counts = []
    with members(3, churn=False, cores=load_cores) as urls:
        for name in ("reference", "router"):
            out = workdir / f"callgrind.{name}.out"
            with _server(name, workdir, urls, loop, server_cores, _callgrind(out)) as server:
                launches(server, connections=1, duration=warmup, cores=load_cores)
                _control(server, "--instr=on")
                result = launches(server, connections=1, duration=duration, cores=load_cores)
                _control(server, "--instr=off")
                _control(server, "--dump")
                counts.append(Count(name, int(result["requests"]), _dumped(out)))
    return counts


def count_probing(workdir: Path, *, loop: str, duration: float, warmup: float,
                  server_cores: set[int], load_cores: set[int]) -> Count:
    """Count the router's instructions per probe round: 100 churning members every second."""
    out = workdir / "callgrind.probing.out"
    with members(PROBED_MEMBERS, churn=True, cores=load_cores) as urls, \
            router("probing", workdir, urls, interval=1.0, loop=loop, cores=server_cores,
                   wrapper=_callgrind(out), ready_timeout=_READY_TIMEOUT) as server:
        time.sleep(warmup)
        before = _probe_rounds(server)
        _control(server, "--instr=on")
        time.sleep(duration)
        _control(server, "--instr=off")
        rounds = _probe_rounds(server) - before
        _control(server, "--dump")
        return Count("router, one probe round", rounds, _dumped(out))


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def _probe_rounds(server: Server) -> int:
    """Probe rounds the router has made so far, from its /metrics."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=60) as answer:
        text = answer.read().decode()
    return round(sum(float(n) for n in _ROUNDS.findall(text)))


@contextlib.contextmanager
def _server(name: str, workdir: Path, urls: list[str], loop: str, cores: set[int],
            wrapper: list[str]) -> Iterator[Server]:
    if name == "reference":
        with reference(workdir, loop=loop, cores=cores, wrapper=wrapper,
                       ready_timeout=_READY_TIMEOUT) as server:
            yield server
    else:
        with router(name, workdir, urls, interval=300, loop=loop, cores=cores,
                    wrapper=wrapper, ready_timeout=_READY_TIMEOUT) as server:
            yield server


def _control(server: Server, command: str) -> None:
    subprocess.run(["callgrind_control", command, str(server.proc.pid)], check=True,
                   capture_output=True)


def _dumped(out: Path) -> int:
    """The instruction total of the dump ``--dump`` wrote (``<out>.1``), once it is there."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(f"{out.name}.*"))
        if dumps and (match := _TOTALS.search(dumps[-1].read_text(errors="replace"))):
            return int(match.group(1))
        time.sleep(0.5)
    raise RuntimeError(f"callgrind wrote no dump next to {out}")


def instructions_table(counts: list[Count], probing: Count | None = None) -> str:
    """The counts as a Markdown table, with the router's ratio to the reference; a probe
    round, if counted, in launches of the router's."""
    by_name = {c.server: c for c in counts}
    reference_count = by_name["reference"].per_event
    router_count = by_name["router"].per_event
    lines = ["| counted | events | instructions each | ÷ reference launch | "
             "÷ router launch |", "|---|---:|---:|---:|---:|"]
    for c in (*counts, *([probing] if probing else [])):
        what = c.server if c is probing else f"{c.server}, one launch"
        ratio = "" if c.server == "reference" else f"{c.per_event / reference_count:.3f}"
        own = "" if c.server == "reference" else f"{c.per_event / router_count:.3f}"
        lines.append(f"| {what} | {c.events:,} | {c.per_event:,.0f} | {ratio} | {own} |")
    if probing is not None:
        per_second = PROBED_MEMBERS * probing.per_event / router_count
        lines.append(f"\nProbing {PROBED_MEMBERS} members every second costs as many user-space "
                     f"instructions as {per_second:,.0f} launches a second.")
    return "\n".join(lines)
