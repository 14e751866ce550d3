"""Instructions per launch, counted by callgrind: a figure a noisy machine cannot move.

Timings on a shared machine move by a third between runs minutes apart; the number of
instructions a server executes per request does not. Each server runs under valgrind's
callgrind with counting off; after a warm-up, counting is switched on for a load of launches
over **one** connection (so every request is handled alone, not batched with others into
one wake-up), switched off, and the total is divided by the requests answered. User-space
instructions only: the kernel's share (sockets) is the same for both servers and not counted.

The router runs as shipped except for its probe interval (five minutes, so that no probe
round lands in the counted window; probing has its own benchmark).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import Server, launches, members, reference, router

__all__ = ["Count", "count_instructions", "instructions_table", "missing_tools"]

_TOOLS = ("valgrind", "callgrind_control")
_TOTALS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)
_READY_TIMEOUT = 180.0  # a Python server starts some 50 times slower under callgrind


@dataclass(frozen=True)
class Count:
    """Instructions one server executed per launch."""

    server: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        """Instructions per answered launch."""
        return self.instructions / self.requests


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
            wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={out}"]
            with _server(name, workdir, urls, loop, server_cores, wrapper) as server:
                launches(server, connections=1, duration=warmup, cores=load_cores)
                _control(server, "--instr=on")
                result = launches(server, connections=1, duration=duration, cores=load_cores)
                _control(server, "--instr=off")
                _control(server, "--dump")
                counts.append(Count(name, int(result["requests"]), _dumped(out)))
    return counts


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


def instructions_table(counts: list[Count]) -> str:
    """The counts as a Markdown table, with the router's ratio to the reference."""
    by_name = {c.server: c for c in counts}
    reference_count = by_name["reference"].per_request
    lines = ["| server | launches counted | instructions per launch | ÷ reference |",
             "|---|---:|---:|---:|"]
    for c in counts:
        ratio = "" if c.server == "reference" else f"{c.per_request / reference_count:.3f}"
        lines.append(f"| {c.server} | {c.requests:,} | {c.per_request:,.0f} | {ratio} |")
    return "\n".join(lines)
