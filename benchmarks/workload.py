"""The launches every benchmark sends, and the router configs they run against.

One definition shared by the wrk script's Python twin (the fallback load generator) and the
placement micro-benchmark, so "the same load" means the same repositories and refs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

__all__ = ["POOL", "REFS", "config_text", "launch_path", "random_paths"]

POOL = 1000  # distinct repositories; launches pick one at random
REFS = ("HEAD", "main", "v1.0", "0123abcd")  # several refs per repository, as real traffic has

# Members report a quota the benchmark load never fills: at thousands of launches a second,
# the sessions of a lifetime (``benchmarks.members --lifetime``) are far more than a real
# member holds, and a realistic quota would turn every decision into the "everyone is full"
# fallback within a second.
MEMBER_QUOTA = 1_000_000


def launch_path(repo: int, ref: str) -> str:
    """A GitHub launch path for repository number ``repo``."""
    return f"/build/gh/bench-org/repo-{repo}/{ref}"


def random_paths(count: int, *, pool: int = POOL, seed: int = 7) -> list[str]:
    """``count`` launch paths drawn the way launches.lua draws them."""
    rng = random.Random(seed)
    return [launch_path(rng.randrange(pool), rng.choice(REFS)) for _ in range(count)]


def config_text(urls: Sequence[str], *, interval: float,
                load_factor: float | None = None) -> str:
    """A router config for members at ``urls`` (the first is prime); defaults elsewhere,
    ``routing.load_factor`` too unless given."""
    doc: dict[str, Any] = {
        "health": {"interval": interval},
        **({"routing": {"load_factor": load_factor}} if load_factor is not None else {}),
        "members": [
            {"name": f"m{i:03d}", "url": url, "weight": 10 + i % 3 * 10, "prime": i == 0}
            for i, url in enumerate(urls)
        ],
    }
    return json.dumps(doc, indent=1)  # JSON is YAML, and needs no extra dependency here
