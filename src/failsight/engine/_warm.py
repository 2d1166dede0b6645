"""Imported once by the local executor's forkserver (see ``executors._PRELOAD``): loads the JIT-compiled corruption
kernels (numba JPEG and pixelate) from numba's cache, so that every forked worker starts with them in memory.

Without it each worker loaded them on its first JPEG or pixelate condition (about 0.5-3 s per worker on the
development machine, 2.8 s under load), once per worker and per sweep, since worker processes end with their
executor while the forkserver lives as long as the driver process. Failures are ignored: warming is an
optimisation, and a worker that needs a kernel compiles or loads it itself.
"""

from __future__ import annotations


def warm() -> None:
    """Run each numba corruption kernel once on a tiny image (1- and 3-channel)."""
    try:
        import numpy as np

        from failsight.robustness.shifts import corrupt

        for c in (1, 3):
            x = np.full((1, c, 16, 16), 0.5, dtype=np.float32)
            for name in ("jpeg_compression", "pixelate"):
                corrupt(x, name, 3, seed=0)
    except Exception:  # pragma: no cover - optional speed-up only
        pass


warm()
