"""Thread limits for torch and BLAS, shared by the pillars that run networks.

Small networks on small inputs (the 8×8 digits, 32² shapes) run fastest on one thread: with more,
the per-op synchronisation costs more than the work, and on a busy machine spinning OpenMP workers can
make a run ten times slower. ``limit_threads`` sets the limit for a block and restores it afterwards.
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


def auto_threads(values_per_sample: int) -> int | None:
    """1 for small inputs (see :data:`SMALL_INPUT_VALUES`), else ``None`` (torch's default)."""
    return 1 if values_per_sample <= SMALL_INPUT_VALUES else None
