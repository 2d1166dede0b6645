"""Thread limits for torch and BLAS, shared by the pillars that run networks.

Policy: every core is used, and workers × threads <= cores.

- **Sweeps** (:mod:`failsight.engine`) use the cores through worker processes, one per core, each task on one
  thread (``FAILSIGHT_NUM_THREADS`` overrides it; the same thread count for every task keeps results identical
  for any worker count, see :func:`failsight.engine.threads_per_worker`).
- **Everything else** — work in the calling process such as the reliability bootstrap, predictions of the
  calibration and test sets, Defuse's generator training, search and correction, training loops and the demo —
  runs on :func:`auto_threads`: every usable core divided by the number of processes sharing them
  (``FAILSIGHT_NUM_THREADS`` when set). An earlier policy kept small inputs (up to 3×64×64) on one thread, which
  left the second core of a 2-core machine idle for the whole audit outside the sweep.

``limit_threads`` sets the limit for a block and restores it afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["SMALL_INPUT_VALUES", "auto_threads", "limit_threads"]

#: Kept for compatibility: the old policy's "small input" bound (3 × 64 × 64 values per sample); unused.
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


def auto_threads(values_per_sample: int | None = None, workers: int = 1) -> int:
    """Torch/BLAS threads for work in the calling process: ``FAILSIGHT_NUM_THREADS`` when set, else every usable
    core divided by ``workers`` (the processes sharing the cores; at least 1). ``values_per_sample`` is accepted
    for compatibility and no longer changes the answer (see the module docstring)."""
    import os

    env = os.environ.get("FAILSIGHT_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    from failsight.engine.executors import available_cores

    return max(1, available_cores() // max(1, int(workers)))
