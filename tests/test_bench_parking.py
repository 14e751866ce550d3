"""Sequential benchmark runs park the servers not being measured on the load cores; paired
runs measure each server's CPU without load (its background work) where it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.harness import Server, background

# A process with a second thread that spins: parking must move both, and count their CPU.
_SPINNER = """
import threading, time
def spin():
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spinner(tmp_path: Path) -> Iterator[Server]:
    proc = subprocess.Popen([sys.executable, "-c", _SPINNER], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    server = Server("spinner", proc, "http://127.0.0.1:1", tmp_path / "spinner.log",
                    routes=False)
    yield server
    server.stop()
    proc.stdout.close()


def _affinities(server: Server) -> list[set[int]]:
    tasks = Path(f"/proc/{server.proc.pid}/task").iterdir()
    return [os.sched_getaffinity(int(task.name)) for task in tasks]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to move between")
def test_parking_moves_every_thread_and_counts_its_cpu(spinner: Server) -> None:
    first, second, *_ = sorted(os.sched_getaffinity(0))
    spinner.park({second})
    assert _affinities(spinner) == [{second}, {second}]
    time.sleep(0.5)
    spinner.unpark({first})
    assert _affinities(spinner) == [{first}, {first}]
    assert 0.3 < spinner.idle_share < 1.3  # the spinning thread kept its core busy
    time.sleep(0.3)  # unparked: not idle time
    assert spinner.idle_wall < 0.8


def test_background_is_the_cpu_each_server_uses_without_load(spinner: Server,
                                                             tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True);"
                                " time.sleep(60)"], stdout=subprocess.PIPE)
    assert sleeper.stdout is not None and sleeper.stdout.readline() == b"ready\n"  # started
    idle = Server("sleeper", sleeper, "http://127.0.0.1:1", tmp_path / "sleeper.log",
                  routes=False)
    try:
        spinning, sleeping = background([spinner, idle], 0.6)
    finally:
        idle.stop()
        sleeper.stdout.close()
    assert 0.5 < spinning < 1.3  # its spinning thread's core, in the order given
    assert sleeping < 0.1
