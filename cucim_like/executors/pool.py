"""Long-lived decode thread pools, one per worker count, re-created lazily after ``fork``."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
_lock = threading.Lock()


def thread_pool(workers: int, role: str = "decode") -> ThreadPoolExecutor:
    """A shared pool of ``workers`` threads for ``role`` (created on first use, kept for the life of the
    process). Roles never share threads: a batch producer waiting for its decode helpers must not be the
    thread those helpers are queued on."""
    key = (role, workers)
    pool = _pools.get(key)
    if pool is None:
        with _lock:
            pool = _pools.get(key)
            if pool is None:
                from concurrent.futures import ThreadPoolExecutor  # imported on first use: keeps import fast

                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"cucim_like-{role}-{workers}")
                _pools[key] = pool
    return pool


def _forget_pools_in_child() -> None:
    # Threads do not survive fork: the child starts with no pools and builds its own on first use.
    global _lock
    _pools.clear()
    _lock = threading.Lock()


def default_workers() -> int:
    """Threads used when the caller asks for automatic parallelism: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_in_child)
