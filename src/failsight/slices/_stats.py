"""Vectorised statistics for per-slice analysis: proportion intervals, paired tests, corrections.

Every function works on whole arrays of slices at once (counts ``k`` and sizes ``n`` of shape ``(S,)``
or any broadcastable shape), so a report over hundreds of slices, or a simulation over thousands of
replicates, costs a handful of numpy/scipy calls. numpy/scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from failsight._stats import clopper_pearson_interval
from failsight._validate import FailsightInputError

#: Interval methods for a proportion (accuracy) accepted by :func:`proportion_interval`.
PROPORTION_METHODS = ("wilson", "clopper-pearson", "bootstrap")
#: Multiple-testing corrections accepted by :func:`adjust_pvalues`.
CORRECTIONS = ("holm", "bonferroni", "bh", "none")

_METHOD_ALIASES = {
    "wilson": "wilson",
    "clopper-pearson": "clopper-pearson",
    "clopper_pearson": "clopper-pearson",
    "exact": "clopper-pearson",
    "bootstrap": "bootstrap",
}


def normalise_method(method: str) -> str:
    """Map an interval-method name (``wilson``, ``exact``/``clopper-pearson``, ``bootstrap``) to canonical."""
    key = str(method).lower()
    if key not in _METHOD_ALIASES:
        raise FailsightInputError(
            f"unknown interval method {method!r}; use one of 'wilson', 'clopper-pearson' (alias 'exact') "
            "or 'bootstrap'."
        )
    return _METHOD_ALIASES[key]


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


def wilson_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``k`` successes out of ``n`` (arrays of the same shape); ``n >= 1``."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = _z(level)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def bootstrap_proportion_interval(k: np.ndarray, n: np.ndarray, level: float, n_boot: int,
                                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of a proportion.

    Resampling ``n`` 0/1 outcomes with replacement and taking the mean is distributed exactly as
    ``Binomial(n, k/n) / n``, so the bootstrap is drawn from that binomial directly: ``(n_boot, S)``
    numbers instead of ``n_boot * n`` resampled indices.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.int64)
    draws = rng.binomial(n, k / n, size=(n_boot, *n.shape)) / n
    a = (1.0 - level) / 2.0
    return np.quantile(draws, a, axis=0), np.quantile(draws, 1.0 - a, axis=0)


def proportion_interval(k: np.ndarray, n: np.ndarray, level: float, method: str, *, n_boot: int = 2000,
                        rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interval for proportions ``k / n`` by ``method`` (see :data:`PROPORTION_METHODS`)."""
    method = normalise_method(method)
    if method == "wilson":
        return wilson_interval(k, n, level)
    if method == "clopper-pearson":
        return clopper_pearson_interval(k, n, level)
    return bootstrap_proportion_interval(k, n, level, n_boot, rng or np.random.default_rng(0))


# ----------------------------------------------------------------------------- paired comparison


def mcnemar_one_sided(lost: np.ndarray, gained: np.ndarray,
                      mid_p: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact one-sided McNemar p-values on the discordant pairs.

    ``lost`` counts samples the baseline got right and the candidate wrong, ``gained`` the reverse. Under
    "no change" each discordant pair is a fair coin, so ``lost ~ Binomial(lost + gained, 1/2)``.

    Returns ``(p_worse, p_better)``: ``p_worse = P(X >= lost)`` (evidence the candidate is worse),
    ``p_better = P(X >= gained)``. With ``mid_p`` only half the probability of the observed count is
    included (Lancaster's mid-p; less conservative, close to nominal size). Twice the smaller one, capped
    at 1, is the usual two-sided exact McNemar p-value (``scipy.stats.binomtest(gained, lost + gained)``).
    """
    lost = np.asarray(lost, dtype=np.float64)
    gained = np.asarray(gained, dtype=np.float64)
    m = lost + gained
    if mid_p:
        p_worse = stats.binom.sf(lost, m, 0.5) + 0.5 * stats.binom.pmf(lost, m, 0.5)
        p_better = stats.binom.sf(gained, m, 0.5) + 0.5 * stats.binom.pmf(gained, m, 0.5)
    else:
        p_worse = stats.binom.sf(lost - 1, m, 0.5)
        p_better = stats.binom.sf(gained - 1, m, 0.5)
    return np.clip(p_worse, 0.0, 1.0), np.clip(p_better, 0.0, 1.0)


def paired_delta_interval(lost: np.ndarray, gained: np.ndarray, n: np.ndarray,
                          level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Bonett-Price adjusted Wald interval for a paired difference of proportions.

    ``delta = (gained - lost) / n`` is candidate minus baseline accuracy. Bonett & Price (2012) add one
    to each discordant cell and two to ``n``, which keeps coverage close to nominal even for small or
    zero discordant counts (the plain Wald interval collapses to a point there).
    """
    lost = np.asarray(lost, dtype=np.float64)
    gained = np.asarray(gained, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = _z(level)
    p12 = (lost + 1.0) / (n + 2.0)
    p21 = (gained + 1.0) / (n + 2.0)
    d = p21 - p12
    se = np.sqrt(np.maximum(p12 + p21 - d * d, 0.0) / (n + 2.0))
    return np.clip(d - z * se, -1.0, 1.0), np.clip(d + z * se, -1.0, 1.0)


def paired_bootstrap(lost: np.ndarray, gained: np.ndarray, n: np.ndarray, level: float, n_boot: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Paired bootstrap of the accuracy difference, per slice.

    Each sample's paired outcome is one of lost (-1), tie (0) or gained (+1); resampling the ``n`` pairs
    of a slice with replacement gives multinomial counts of the three, so the bootstrap is drawn as
    ``Multinomial(n, (lost, tie, gained) / n)`` directly (exact, and vectorised over replicates).

    Returns ``(low, high, p_worse, p_better)``: the percentile interval of delta and the one-sided
    bootstrap p-values ``P*(delta* >= 0)`` (evidence of a drop) and ``P*(delta* <= 0)``, ties at zero
    counted half, with the usual ``(count + 1) / (n_boot + 1)`` guard so no p-value is exactly 0.
    """
    lost = np.atleast_1d(np.asarray(lost, dtype=np.int64))
    gained = np.atleast_1d(np.asarray(gained, dtype=np.int64))
    n = np.atleast_1d(np.asarray(n, dtype=np.int64))
    s = lost.shape[0]
    a = (1.0 - level) / 2.0
    low = np.empty(s)
    high = np.empty(s)
    p_worse = np.empty(s)
    p_better = np.empty(s)
    for j in range(s):  # loop over slices; each slice's replicates are one vectorised draw
        pv = np.array([lost[j], n[j] - lost[j] - gained[j], gained[j]], dtype=np.float64) / n[j]
        counts = rng.multinomial(n[j], pv, size=n_boot)
        d = (counts[:, 2] - counts[:, 0]) / n[j]
        low[j], high[j] = np.quantile(d, [a, 1.0 - a])
        ge = np.count_nonzero(d > 0) + 0.5 * np.count_nonzero(d == 0)
        le = np.count_nonzero(d < 0) + 0.5 * np.count_nonzero(d == 0)
        p_worse[j] = (ge + 1.0) / (n_boot + 1.0)
        p_better[j] = (le + 1.0) / (n_boot + 1.0)
    return low, high, p_worse, p_better


# ----------------------------------------------------------------------------- multiple testing


def adjust_pvalues(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust a family of p-values along the last axis (``holm``, ``bonferroni``, ``bh`` or ``none``).

    Holm and Bonferroni control the family-wise error rate under any dependence; ``bh``
    (Benjamini-Hochberg) controls the false discovery rate, which equals the family-wise rate when all
    null hypotheses are true. Works on ``(..., m)`` arrays so simulations adjust many families at once.
    """
    method = str(method).lower()
    if method not in CORRECTIONS:
        raise FailsightInputError(
            f"unknown correction {method!r}; use one of {', '.join(repr(c) for c in CORRECTIONS)}."
        )
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    if m == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, axis=-1, kind="stable")
    ps = np.take_along_axis(p, order, axis=-1)
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adj_sorted = np.maximum.accumulate(np.minimum(ps * (m - rank + 1.0), 1.0), axis=-1)
    else:  # bh
        raw = ps * m / rank
        adj_sorted = np.minimum(np.minimum.accumulate(raw[..., ::-1], axis=-1)[..., ::-1], 1.0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adj_sorted, axis=-1)
    return out
