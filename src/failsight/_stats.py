"""Low-level statistics shared by every pillar (numpy/scipy only)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from failsight.types import Interval

__all__ = ["clopper_pearson", "clopper_pearson_interval"]


def clopper_pearson_interval(k: np.ndarray, n: np.ndarray,
                             level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) two-sided interval for ``k`` successes out of ``n`` (any broadcastable shapes,
    ``n >= 1``): ``(low, high)`` arrays, ``low = 0`` at ``k = 0`` and ``high = 1`` at ``k = n``."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(a, k, n - k + 1.0), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - a, k + 1.0, n - k), 1.0)
    return low, high


def clopper_pearson(k: int, n: int, level: float) -> Interval:
    """The exact interval of one proportion ``k / n`` as an :class:`~failsight.types.Interval`."""
    lo, hi = clopper_pearson_interval(k, n, level)
    return Interval(float(lo), float(hi), level)
