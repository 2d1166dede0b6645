"""The shared Clopper-Pearson interval agrees with scipy's exact binomial interval."""

import numpy as np
import pytest
from scipy import stats

from failsight._stats import clopper_pearson, clopper_pearson_interval


@pytest.mark.parametrize("k,n,level", [(0, 10, 0.95), (10, 10, 0.95), (3, 17, 0.9), (512, 1000, 0.99), (1, 1, 0.8)])
def test_clopper_pearson_matches_scipy_exact(k, n, level):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    iv = clopper_pearson(k, n, level)
    # both invert the same beta quantiles; only floating-point rounding separates them
    assert iv.low == pytest.approx(ref.low, abs=1e-12)
    assert iv.high == pytest.approx(ref.high, abs=1e-12)
    assert iv.level == level


def test_clopper_pearson_interval_is_vectorised():
    k = np.array([0, 5, 20])
    lo, hi = clopper_pearson_interval(k, 20, 0.95)
    for i, ki in enumerate(k):
        one = clopper_pearson(int(ki), 20, 0.95)
        assert (lo[i], hi[i]) == (one.low, one.high)
    assert lo[0] == 0.0 and hi[2] == 1.0
