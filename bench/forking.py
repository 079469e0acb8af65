"""Forked worker pools, where they pay: the report's record reading and figure drawing.

A forked worker starts at once with everything its parent loaded, which is what makes it worth
starting for a second of work. Forking is used only on Linux, with two or more usable cores, and
never from a process that has loaded torch (its thread pools do not survive a fork).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["fork_pool", "MAX_WORKERS", "usable_cores"]

MAX_WORKERS = 4


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fork_pool(workers: int | None = None, initializer: Callable[[], None] | None = None) -> Any:
    """A ``multiprocessing`` pool of ``workers`` forked processes (default: the usable cores, at most
    4), or None where forking does not pay or is not safe. Close it with ``close()`` and ``join()``."""
    workers = min(usable_cores(), MAX_WORKERS) if workers is None else workers
    if workers < 2 or not sys.platform.startswith("linux") or "torch" in sys.modules:
        return None
    import multiprocessing as mp

    return mp.get_context("fork").Pool(workers, initializer=initializer)
