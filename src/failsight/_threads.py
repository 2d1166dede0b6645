"""Thread limits for torch and BLAS, shared by the pillars that run networks.

Policy: workers × threads <= cores. Sweeps (:mod:`failsight.engine`) use the cores through worker
processes, one per core, each task on one thread (``FAILSIGHT_NUM_THREADS`` overrides it; the same thread
count for every task keeps results identical for any worker count). Work that
stays in the calling process uses :func:`auto_threads`: small networks on small inputs (the 8×8 digits, 32²
shapes, 28² MNIST) run fastest on one thread — with more, the per-op synchronisation costs more than the
work (measured on the MNIST CNN: 1 thread 264 images/s, 2 threads 198 on a loaded 2-core machine) — and
larger inputs get every core. ``limit_threads`` sets the limit for a block and restores it afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["SMALL_INPUT_VALUES", "auto_threads", "limit_threads"]

#: Inputs with at most this many values per sample (3 × 64 × 64) count as small: one thread is fastest.
SMALL_INPUT_VALUES = 3 * 64 * 64


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Limit torch and BLAS threads to ``n`` for the duration (restored afterwards); no-op for ``None``."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def auto_threads(values_per_sample: int, workers: int = 1) -> int | None:
    """Threads for work in the calling process: ``FAILSIGHT_NUM_THREADS`` when set; 1 for small inputs (see
    :data:`SMALL_INPUT_VALUES`; parallelism then comes from worker processes); else ``cores // workers``."""
    import os

    env = os.environ.get("FAILSIGHT_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if values_per_sample <= SMALL_INPUT_VALUES:
        return 1
    from failsight.engine.executors import available_cores

    return max(1, available_cores() // max(1, workers))
