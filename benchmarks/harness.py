"""Servers under test, the load generator, CPU pinning and the checks that make a run count.

A server runs alone on its core (the "server core"); the load generator and the simulated
members share the other one, where servers waiting for their turn are parked (``park``).
Each run measures the CPU time both sides used. A run is refused, not reported, when the
load generator was busy for most of its core (it, not the server, set the pace) or when the
server was not kept busy (something else limited the run: the load generator, or another
process taking the server's core).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.workload import POOL, config_text

__all__ = [
    "Limits",
    "Run",
    "Server",
    "Summary",
    "background",
    "choose_loop",
    "drive",
    "drive_together",
    "launches",
    "members",
    "pinning",
    "reference",
    "router",
    "same_round_ratios",
    "summarise",
]

LUA = Path(__file__).with_name("launches.lua")
WRK = shutil.which("wrk")
_TICK = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parent.parent


def choose_loop(kind: str) -> str:
    """``auto`` → ``uvloop`` when importable (as ``federation serve`` does), else ``asyncio``."""
    if kind != "auto":
        return kind
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def pinning() -> tuple[set[int], set[int]]:
    """(server cores, load cores): the first allowed core for servers, the rest for load."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return set(cores), set(cores)  # one core: nothing to separate (said in the report)
    return {cores[0]}, set(cores[1:])


@contextlib.contextmanager
def pinned(cores: set[int]) -> Iterator[None]:
    """This process on ``cores`` for a while, then back where it was allowed to run: a
    command that pins itself must not leave the next one (``run all``) a single core."""
    allowed = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _affinity(cores: set[int]) -> Callable[[], None]:
    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return pin


@dataclass
class Server:
    """A server process under test, pinned to its core."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    routes: bool = True  # the router, with its metrics; the reference answers anything 307
    tallies: Path | None = None  # where its load generator tallies launches per member
    idle_cpu: float = 0.0  # CPU seconds used while parked (``park``) ...
    idle_wall: float = 0.0  # ... over these seconds
    _parked_at: tuple[float, float] | None = None  # (CPU, clock) when last parked

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def park(self, cores: set[int]) -> None:
        """Move the server off the server core, onto ``cores``, until ``unpark``: another
        is measured meanwhile, and this one's background work (probing) must not tax it.
        The CPU it uses while parked, without load, is its background work
        (``idle_share``)."""
        self._move(cores)
        self._parked_at = (self.cpu_seconds(), time.monotonic())

    def unpark(self, cores: set[int]) -> None:
        """Move the server back onto ``cores`` (the server core) to be measured."""
        if self._parked_at is not None:
            cpu, wall = self._parked_at
            self.idle_cpu += self.cpu_seconds() - cpu
            self.idle_wall += time.monotonic() - wall
            self._parked_at = None
        self._move(cores)

    @property
    def idle_share(self) -> float:
        """The share of a core the server used while parked without load (NaN if never)."""
        return self.idle_cpu / self.idle_wall if self.idle_wall else math.nan

    def _move(self, cores: set[int]) -> None:
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():  # every thread
            with contextlib.suppress(ProcessLookupError):  # one that has just ended
                os.sched_setaffinity(int(task.name), cores)

    def rss_mib(self) -> float:
        """Resident set size now, in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{self.name}: no VmRSS in /proc/{self.proc.pid}/status")

    def redirects(self) -> dict[tuple[str, str], float]:
        """The router's launch redirects so far, by (member, reason), from its ``/metrics``
        (``federation_redirects_total``)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {(sample.labels["member"], sample.labels["reason"]): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == "federation_redirects_total"}

    def spill_share(self) -> float:
        """The share of the router's launch redirects so far that went below the
        repository's home member (reason ``spill-over``).

        Spilled launches take another path through the router, and how many spill depends on
        the load the members report (``members(seen=...)``), so a comparison shows them
        beside its ratios. NaN for the reference, which routes nothing.
        """
        if not self.routes:
            return math.nan
        redirects = self.redirects()
        total = sum(redirects.values())
        spilled = sum(n for (_, reason), n in redirects.items() if reason == "spill-over")
        return spilled / total if total else math.nan

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end within 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _get(url: str, path: str) -> int:
    parts = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(parts[0], int(parts[1]), timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_until(server: Server, path: str, status: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; "
                               f"see {server.log}")
        with contextlib.suppress(OSError):
            if _get(server.url, path) == status:
                return
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} did not answer {path} with {status} within {timeout:g} s; "
                       f"see {server.log}")


def _start(name: str, argv: list[str], cores: set[int], log: Path, port: int) -> Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=_ROOT,
                                preexec_fn=_affinity(cores))
    return Server(name, proc, f"http://127.0.0.1:{port}", log)


@contextlib.contextmanager
def router(name: str, workdir: Path, urls: Sequence[str], *, interval: float, loop: str,
           cores: set[int], wrapper: Sequence[str] = (), load_factor: float | None = None,
           tallies: Path | None = None, ready_timeout: float = 30.0) -> Iterator[Server]:
    """``federation serve`` as shipped (default settings) for members at ``urls``.

    ``wrapper`` goes before the command (``valgrind …`` for instruction counts);
    ``load_factor`` replaces the default bound of bounded loads; ``tallies``: where the
    load generator tells the members the launches it was sent to them (``members``)."""
    config = workdir / f"{name.replace(' ', '-')}.yaml"
    config.write_text(config_text(urls, interval=interval, load_factor=load_factor))
    port = _free_port()
    server = _start(name, [*wrapper, sys.executable, "-m", "federation", "serve", "--config",
                           str(config), "--host", "127.0.0.1", "--port", str(port), "--loop",
                           loop],
                    cores, workdir / f"{config.stem}.log", port)
    server.tallies = tallies
    with _running(server, "/_router/ready", 200, ready_timeout):
        yield server


@contextlib.contextmanager
def reference(workdir: Path, *, loop: str, cores: set[int], wrapper: Sequence[str] = (),
              ready_timeout: float = 30.0, name: str = "reference",
              background: float = 0.0) -> Iterator[Server]:
    """The bare aiohttp app answering every request with a fixed 307 (``background``: the
    share of a core it spends on busy work besides)."""
    port = _free_port()
    server = _start(name, [*wrapper, sys.executable, "-m", "benchmarks.reference",
                           "--port", str(port), "--loop", loop, "--background", str(background)],
                    cores, workdir / f"{name.replace(' ', '-').replace(',', '')}.log", port)
    server.routes = False
    with _running(server, "/build/gh/a/b/HEAD", 307, ready_timeout):
        yield server


@contextlib.contextmanager
def _running(server: Server, path: str, status: int, timeout: float) -> Iterator[None]:
    """Until the block ends: ``server`` answering ``path`` with ``status``, then stopped."""
    try:
        _wait_until(server, path, status, timeout)
        yield
    finally:
        server.stop()


@contextlib.contextmanager
def members(count: int, *, churn: bool, cores: set[int], seen: Path | None = None,
            pod_cache: float = 0.0, lifetime: float | None = None) -> Iterator[list[str]]:
    """``count`` simulated members in their own process; yields their URLs. With ``seen``
    (made if missing), they report the launches tallied there as sessions: give it to every
    router they serve as ``router(tallies=...)``. Each counts its pods at most every
    ``pod_cache`` seconds (BinderHub: 60; 0: at every look, ``benchmarks.members``), and
    reports a launch as a session for ``lifetime`` seconds (``members.LIFETIME`` if None)."""
    if seen is not None:
        seen.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "benchmarks.members", "--count", str(count),
            "--pod-cache", str(pod_cache), *(["--seen", str(seen)] if seen is not None else []),
            *(["--lifetime", str(lifetime)] if lifetime is not None else [])]
    proc = subprocess.Popen([*argv, "--churn" if churn else "--no-churn"],
                            stdout=subprocess.PIPE, cwd=_ROOT, preexec_fn=_affinity(cores))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the members process exited with {proc.wait()}")
        urls: list[str] = json.loads(line)
        yield urls
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass(frozen=True)
class Limits:
    """When a run is refused: load generator above ``loadgen_max`` of a core, or the server
    below ``server_min`` of its core."""

    loadgen_max: float = 0.90
    server_min: float = 0.90


@dataclass(frozen=True)
class Run:
    """One load run against one server."""

    server: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float  # share of one core the server used during the run
    loadgen_cpu: float  # likewise for the load generator
    refused: str | None = None  # why this run does not count
    round_no: int = 0  # which round of the benchmark it belongs to (pairs runs)

    @property
    def cpu_us(self) -> float:
        """Server CPU time per request: steadier than req/s when the machine is shared."""
        return self.server_cpu / self.rps * 1e6 if self.rps else float("nan")


def _core_busy(cores: set[int]) -> float:
    """Seconds the ``cores`` spent busy so far, whoever used them (from /proc/stat)."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / _TICK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _loadgen_argv(url: str, connections: int, duration: float,
                  tallies: Path | None) -> list[str]:
    """The load generator's command; with ``tallies``, it writes its redirects per member
    there, under a name of its own, for the members to read (``members(seen=...)``)."""
    name = None if tallies is None else tallies / uuid.uuid4().hex
    if WRK is not None:
        return [WRK, "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "2s",
                "-s", str(LUA), url, "--", str(POOL), *([] if name is None else [str(name)])]
    return [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--connections",
            str(connections), "--duration", str(duration), "--pool", str(POOL),
            *([] if name is None else ["--tally", f"{name}.json"])]


def _loadgen(server: Server, connections: int, duration: float,
             cores: set[int]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(_loadgen_argv(server.url, connections, duration, server.tallies),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_ROOT,
                            preexec_fn=_affinity(cores))


def _loadgen_result(proc: subprocess.Popen[bytes]) -> dict[str, float]:
    """The load generator's figures (``requests``, ``duration_s``, ``errors``, ``p50_ms``,
    ``p99_ms``), once it has finished."""
    stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed ({proc.returncode}): "
                           f"{stderr.decode()[-500:]}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def launches(server: Server, *, connections: int, duration: float,
             cores: set[int]) -> dict[str, float]:
    """Send launches to ``server`` for ``duration`` seconds; the load generator's figures."""
    return _loadgen_result(_loadgen(server, connections, duration, cores))


def drive(server: Server, *, connections: int, duration: float, cores: set[int],
          server_cores: set[int], limits: Limits) -> Run:
    """Load ``server`` with launches for ``duration`` seconds and judge the run."""
    (run,) = drive_together([server], connections=connections, duration=duration,
                            cores=cores, server_cores=server_cores, limits=limits)
    return run


def drive_together(servers: Sequence[Server], *, connections: int, duration: float,
                   cores: set[int], server_cores: set[int], limits: Limits) -> list[Run]:
    """Load every one of ``servers`` at once, one load generator each, and judge the runs.

    Servers sharing the server core split it: each must use at least ``server_min`` of its
    share, and the load generators together less than ``loadgen_max`` of theirs. Runs made
    at the same moment see the same machine, which pairs them far more closely than runs
    made one after the other (``benchmarks.run probing --paired``).
    """
    cpu_before, gen_before = [s.cpu_seconds() for s in servers], _children_cpu()
    core_before, started = _core_busy(server_cores), time.monotonic()
    procs = [_loadgen(s, connections, duration, cores) for s in servers]
    results = [_loadgen_result(p) for p in procs]
    wall = time.monotonic() - started
    server_cpu = [(s.cpu_seconds() - b) / wall for s, b in zip(servers, cpu_before, strict=True)]
    gen_cpu = (_children_cpu() - gen_before) / wall
    others = max(0.0, (_core_busy(server_cores) - core_before) / wall - sum(server_cpu))
    share = limits.server_min / len(servers)
    runs = []
    for server, cpu, result in zip(servers, server_cpu, results, strict=True):
        refused = None
        if gen_cpu >= limits.loadgen_max:
            refused = f"load generator used {gen_cpu:.0%} of its core"
        elif cpu < share:
            refused = (f"server used only {cpu:.0%} of its core, below {share:.0%} (the core "
                       f"was busy {others:.0%} more: other processes, or the kernel's network "
                       "work)")
        runs.append(Run(server.name, connections, result["requests"] / result["duration_s"],
                        result["p50_ms"], result["p99_ms"], int(result["errors"]), cpu,
                        gen_cpu, refused))
    return runs


def same_round_ratios(compared: Sequence[Run], baseline: Sequence[Run],
                      figure: Callable[[Run], float],
                      baseline_figure: Callable[[Run], float] | None = None) -> list[float]:
    """Per round, the compared server's ``figure`` over the baseline's in the same round
    (``Run.round_no``), from accepted runs only; rounds without a figure (NaN) are left
    out. ``baseline_figure`` defaults to ``figure``."""
    of_base = figure if baseline_figure is None else baseline_figure
    base = {r.round_no: of_base(r) for r in baseline if r.refused is None}
    ratios = []
    for run in compared:
        if run.refused is None and run.round_no in base:
            ratio = figure(run) / base[run.round_no]
            if not math.isnan(ratio):
                ratios.append(ratio)
    return ratios


def background(servers: Sequence[Server], seconds: float) -> list[float]:
    """The share of a core each of ``servers`` uses over ``seconds`` without load, on
    whichever cores it has: its work whatever the load (probing), which CPU accounting
    (``benchmarks.accounting``) sets apart from its launches' work."""
    before, started = [s.cpu_seconds() for s in servers], time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return [(s.cpu_seconds() - b) / wall for s, b in zip(servers, before, strict=True)]


@dataclass
class Summary:
    """Medians of the accepted runs of one server at one connection count."""

    server: str
    connections: int
    runs: list[Run] = field(default_factory=list)

    @property
    def accepted(self) -> list[Run]:
        """The runs that count."""
        return [r for r in self.runs if r.refused is None]

    def median(self, attribute: str) -> float:
        """Median of ``attribute`` over accepted runs (NaN when none was accepted)."""
        values = [getattr(r, attribute) for r in self.accepted]
        return statistics.median(values) if values else float("nan")


def summarise(runs: Sequence[Run]) -> list[Summary]:
    """Group runs by (server, connections), keeping first-seen order."""
    out: dict[tuple[str, int], Summary] = {}
    for run in runs:
        key = (run.server, run.connections)
        out.setdefault(key, Summary(run.server, run.connections))
        out[key].runs.append(run)
    return list(out.values())
