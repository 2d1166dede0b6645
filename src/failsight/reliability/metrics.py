"""Calibration metrics: ECE / MCE / RMS calibration error (top-label, class-wise, marginal, debiased,
with bootstrap intervals), Brier score, NLL, accuracy and reliability-diagram data.

All binned quantities come from :mod:`failsight.reliability._binning` (one binning core): ``n_bins``
bins, **right-closed** (Guo et al. 2017: bin ``b`` is ``(e_b, e_(b+1)]``, the first bin also holds 0, so a
confidence of 1.0 is in the last bin), equal-width (``strategy="uniform"``) or equal-mass
(``strategy="quantile"``, edges as scikit-learn's ``calibration_curve``), sums in float64.

With per-bin weight ``w_b = n_b / n``, accuracy ``acc_b`` and mean confidence ``conf_b``:

* ``norm="l1"`` (ECE): ``sum_b w_b |acc_b - conf_b|``
* ``norm="l2"`` (RMS calibration error): ``sqrt(sum_b w_b (acc_b - conf_b)**2)`` -- the form of
  torchmetrics (``norm="l2"``) and of Kumar et al. 2019 (``p=2``).
* ``norm="max"`` (MCE): ``max_b |acc_b - conf_b|`` over non-empty bins.

How the references differ (the tests check agreement where the definitions coincide):

* torchmetrics ``multiclass_calibration_error``: left-closed bins ``[e_b, e_(b+1))`` via
  ``torch.bucketize(right=True)``, so a confidence of exactly 1.0 goes to an extra (B+1)-th bin
  (torchmetrics issue 3510) and values on an inner edge go one bin up; sums in float32 (about 2e-4 off
  at 1M samples). Identical to failsight when no confidence lies on an edge, to float32 precision.
* netcal ``ECE`` / ``MCE``: ``numpy.histogramdd`` bins (left-closed, last bin closed), confidences
  clipped to ``[eps, 1 - eps]``; when the labels take at most two values netcal measures the calibration
  of P(class 1), not the top label (use ``reliability_diagram(..., class_index=1)`` for that view).
* scikit-learn ``calibration_curve``: the same right-closed rule and the same quantile edges; it bins the
  probability of one class, as ``reliability_diagram(..., class_index=c)`` does.
* uncertainty-calibration (Kumar et al.): ``get_ece`` uses right-closed bins with edges ``i / B``.

Kinds: ``"top-label"`` bins the max probability against the correctness of the argmax;
``"classwise"`` (Kull et al. 2019) bins each ``p[:, j]`` against ``y == j`` and averages the per-class
errors; ``"marginal"`` (Kumar et al. 2019) combines the per-class errors as ``(mean_j CE_j**p)**(1/p)``
(``max_j`` for ``norm="max"``). For ``norm="l1"`` the two class-wise kinds coincide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from scipy.special import erf

from failsight._validate import (
    FailsightInputError,
    check_consistent_length,
    check_fraction,
    check_int,
    check_labels_probs,
    check_probs,
    to_numpy,
)
from failsight.reliability import _binning
from failsight.types import Interval, Result

Norm = Literal["l1", "l2", "max"]
Strategy = Literal["uniform", "quantile"]
Kind = Literal["top-label", "classwise", "marginal"]

NORMS = ("l1", "l2", "max")
KINDS = ("top-label", "classwise", "marginal")

__all__ = [
    "CalibrationError",
    "ReliabilityDiagram",
    "accuracy",
    "bootstrap_ci",
    "bootstrap_distribution",
    "brier_score",
    "calibration_error",
    "ece",
    "mce",
    "nll",
    "nll_zero_count",
    "percentile_interval",
    "reliability_diagram",
]


# ----------------------------------------------------------------------------------------------------
# result types
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CalibrationError(Result):
    """A calibration error estimate; ``float(result)`` gives ``value``.

    ``ci`` is the confidence interval (``None`` unless requested) built by ``ci_method`` around
    ``ci_estimate`` (the debiased estimate; see :func:`calibration_error`); ``per_class`` holds the
    per-class errors for ``kind="classwise"``/``"marginal"``.
    """

    value: float
    ci: Interval | None
    kind: str
    norm: str
    strategy: str
    n_bins: int
    debiased: bool
    n_samples: int
    n_boot: int | None = None
    per_class: tuple[float, ...] | None = None
    ci_estimate: float | None = None
    ci_method: str | None = None

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        ci = f" {self.ci.level:.0%} CI {self.ci}" if self.ci is not None else ""
        return f"{self.value:.4g}{ci}"


@dataclasses.dataclass(frozen=True, eq=False)
class ReliabilityDiagram(Result):
    """Reliability-diagram data for ``B`` bins.

    ``bin_edges (B+1,)``; ``confidence (B,)`` mean predicted probability per bin; ``accuracy (B,)``
    observed frequency per bin (empty bins: NaN in both); ``count (B,)`` int64; ``ece`` the L1 error
    of these bins. ``class_index`` is ``None`` for the top-label diagram, else the class whose
    probability was binned.
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float
    n_bins: int
    strategy: str
    class_index: int | None = None

    @property
    def gap(self) -> np.ndarray:
        """``accuracy - confidence`` per bin ``(B,)`` (NaN for empty bins)."""
        return self.accuracy - self.confidence


# ----------------------------------------------------------------------------------------------------
# option checks
# ----------------------------------------------------------------------------------------------------


def _check_norm(norm: Any) -> str:
    if norm not in NORMS:
        raise FailsightInputError(
            f"norm must be 'l1' (ECE), 'l2' (RMS calibration error) or 'max' (MCE), got {norm!r}."
        )
    return str(norm)


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise FailsightInputError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}.")
    return str(kind)


def _check_level(level: Any, name: str = "ci") -> float:
    if isinstance(level, bool):
        raise FailsightInputError(f"{name} must be a confidence level in (0, 1) such as 0.95, got {level!r}.")
    try:
        return check_fraction(level, name)
    except (TypeError, ValueError) as exc:
        raise FailsightInputError(
            f"{name} must be a confidence level in (0, 1) such as 0.95, got {level!r}."
        ) from exc


# ----------------------------------------------------------------------------------------------------
# the error formulas (vectorised over leading axes: resamples, columns)
# ----------------------------------------------------------------------------------------------------


def _column_errors(count: np.ndarray, sum_value: np.ndarray, sum_hit: np.ndarray, n: int, norm: str,
                   debiased: bool) -> np.ndarray:
    """Per-column calibration error ``(..., m)`` from per-bin sums ``(..., m, B)`` of ``n`` samples."""
    count = np.asarray(count, dtype=np.float64)
    nonempty = count > 0
    safe = np.where(nonempty, count, 1.0)
    conf = np.where(nonempty, sum_value / safe, 0.0)
    acc = np.where(nonempty, sum_hit / safe, 0.0)
    gap = acc - conf
    w = count / n
    if norm == "max":
        return np.where(nonempty, np.abs(gap), 0.0).max(axis=-1)
    if norm == "l1":
        if not debiased:
            return (w * np.abs(gap)).sum(axis=-1)
        # 2 * plug-in - E|N(gap, var)|, var = acc (1 - acc) / n_b: the normal-resampling bias correction
        # of Kumar et al. 2019 (their code averages 1000 draws; this is its exact expectation).
        sd = np.sqrt(acc * (1.0 - acc) / safe)
        pos = sd > 0
        sds = np.where(pos, sd, 1.0)
        expected = np.where(
            pos,
            sds * np.sqrt(2.0 / np.pi) * np.exp(-0.5 * (gap / sds) ** 2) + gap * erf(gap / (sds * np.sqrt(2.0))),
            np.abs(gap),
        )
        return np.maximum((w * (2.0 * np.abs(gap) - expected)).sum(axis=-1), 0.0)
    sq = gap**2
    if debiased:
        # Kumar et al. 2019: subtract the sampling variance acc (1 - acc) / (n_b - 1) of each bin's accuracy.
        # Bins with one sample have no variance estimate (acc (1 - acc) = 0) and keep their plug-in term.
        sq = sq - np.where(count >= 2, acc * (1.0 - acc) / np.maximum(count - 1.0, 1.0), 0.0)
    return np.sqrt(np.maximum((w * sq).sum(axis=-1), 0.0))


def _aggregate(errors: np.ndarray, kind: str, norm: str) -> np.ndarray:
    """Combine per-column errors ``(..., m)`` into one value per leading index."""
    if kind == "top-label" or kind == "classwise":
        return errors.mean(axis=-1)
    if norm == "max":
        return errors.max(axis=-1)
    if norm == "l2":
        return np.sqrt((errors**2).mean(axis=-1))
    return errors.mean(axis=-1)


def _error_from_counts(c: _binning.BinCounts, kind: str, norm: str, debiased: bool) -> tuple[float, np.ndarray]:
    per_col = _column_errors(c.count, c.sum_value, c.sum_hit, c.n, norm, debiased)
    return float(_aggregate(per_col, kind, norm)), per_col


# ----------------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------------


def percentile_interval(estimates: Any, level: float = 0.95) -> Interval:
    """Two-sided percentile interval of bootstrap ``estimates (R,)`` at confidence ``level``."""
    level = _check_level(level, "level")
    est = np.asarray(estimates, dtype=np.float64).ravel()
    if est.size == 0:
        raise FailsightInputError("no bootstrap estimates to summarise; pass n_boot >= 2.")
    lo, hi = np.quantile(est, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(lo), float(hi), level)


def bootstrap_distribution(statistic: Callable[..., Any], *arrays: Any, n_boot: int = 1000, seed: int | None = 0,
                           vectorized: bool = False, batch_size: int | None = None) -> np.ndarray:
    """Bootstrap distribution ``(n_boot,)`` of ``statistic(*arrays)``.

    ``arrays`` share their first axis ``n``; each resample draws ``n`` rows with replacement (indices of
    :func:`failsight.reliability._binning.bootstrap_indices`, reproducible from ``seed``: the same
    resamples as :func:`calibration_error` uses). With ``vectorized=True`` the statistic receives a batch
    of resamples, arrays of shape ``(batch, n, ...)``, and must return ``(batch,)``; otherwise it is
    called once per resample with arrays ``(n, ...)`` and must return a scalar.
    """
    if not arrays:
        raise FailsightInputError("bootstrap needs at least one array to resample.")
    arrs = [to_numpy(a, f"arrays[{i}]") for i, a in enumerate(arrays)]
    if any(a.ndim == 0 for a in arrs):
        raise FailsightInputError("bootstrap arrays must have a first axis of samples (got a scalar).")
    n = check_consistent_length(*arrs, names=tuple(f"arrays[{i}]" for i in range(len(arrs))))
    n_boot = check_int(n_boot, "n_boot", minimum=1)
    seed = _binning.resolve_seed(seed)
    if batch_size is None:
        row = sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrs) or 1
        batch_size = max(1, min(n_boot, (1 << 22) // max(1, n * row)))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, batch_size):
        rr = min(batch_size, n_boot - start)
        idx = _binning.bootstrap_indices(n, rr, seed, start)
        if vectorized:
            vals = np.asarray(statistic(*[a[idx] for a in arrs]), dtype=np.float64).reshape(-1)
            if vals.shape != (rr,):
                raise FailsightInputError(
                    f"a vectorized statistic must return one value per resample, shape ({rr},); got {vals.shape}."
                )
            out[start:start + rr] = vals
        else:
            for r in range(rr):
                out[start + r] = float(statistic(*[a[idx[r]] for a in arrs]))
    return out


def bootstrap_ci(statistic: Callable[..., Any], *arrays: Any, n_boot: int = 1000, level: float = 0.95,
                 seed: int | None = 0, vectorized: bool = False, batch_size: int | None = None) -> Interval:
    """Percentile bootstrap interval of ``statistic(*arrays)`` (see :func:`bootstrap_distribution`).

    Example: ``bootstrap_ci(np.mean, correct)`` for an accuracy, or
    ``bootstrap_ci(lambda c: c.mean(axis=1), correct, vectorized=True)`` to resample in batches.
    """
    level = _check_level(level, "level")
    est = bootstrap_distribution(statistic, *arrays, n_boot=n_boot, seed=seed, vectorized=vectorized,
                                 batch_size=batch_size)
    return percentile_interval(est, level)


def _bootstrap_errors(red: _binning.Reduced, kind: str, norm: str, debiased: bool, n_boot: int,
                      seed: int) -> np.ndarray:
    """Calibration error of each resample ``(n_boot,)``: resample the reduced data, bin edges fixed."""
    n, m = red.values.shape
    step = max(1, min(n_boot, (1 << 21) // (m * red.n_bins)))
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, step):
        rr = min(step, n_boot - start)
        cnt, sv, sh = _binning.bootstrap_counts(red, seed, start, rr)
        out[start:start + rr] = _aggregate(_column_errors(cnt, sv, sh, n, norm, debiased), kind, norm)
    return out


# ----------------------------------------------------------------------------------------------------
# calibration error
# ----------------------------------------------------------------------------------------------------


def calibration_error(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: Strategy = "uniform",
                      norm: Norm = "l1", kind: Kind = "top-label", debiased: bool = False,
                      ci: float | None = None, n_boot: int = 1000, seed: int | None = 0,
                      ci_method: Literal["debiased", "percentile"] = "debiased") -> CalibrationError:
    """Binned calibration error of probabilities ``y_prob (n, k)`` (or ``(n,)`` = P(class 1)) for labels ``y_true (n,)``.

    Parameters
    ----------
    n_bins, strategy
        ``n_bins`` right-closed bins, equal-width (``"uniform"``) or equal-mass (``"quantile"``). More bins
        than samples returns the (very noisy) estimate with a ``FailsightWarning``, as reference libraries do.
    norm
        ``"l1"`` (ECE), ``"l2"`` (RMS calibration error ``sqrt(sum_b w_b gap_b**2)``), ``"max"`` (MCE).
    kind
        ``"top-label"``, ``"classwise"`` (mean of per-class errors, Kull et al. 2019) or ``"marginal"``
        (``(mean_j CE_j**p)**(1/p)``, Kumar et al. 2019); see the module docstring.
    debiased
        Bias-corrected estimator of Kumar et al. 2019 (``norm`` "l1" or "l2"). For L2 each bin's squared
        gap loses the sampling variance ``acc_b (1 - acc_b) / (n_b - 1)``; for L1 the plug-in is
        corrected by its expected inflation under a normal model of each bin's accuracy (the exact
        expectation of the resampling in Kumar et al.'s code). Empty bins contribute nothing; bins with
        one sample keep their plug-in term (no variance estimate exists; the reference code drops them).
        The result is clipped at 0.
    ci, n_boot, seed
        ``ci=0.95`` adds a percentile bootstrap interval over ``n_boot`` resamples drawn reproducibly
        from ``seed`` (``None``: fresh entropy). Each sample is reduced once to (bin, value, hit) and the
        reduced data are resampled; bin edges are held at those of the full sample.
    ci_method
        ``"debiased"`` (default; L1 and L2): a confidence interval for the population binned error (the
        error these bins would show on infinite data). The plug-in estimate is biased upward (noise inflates
        every bin's gap), and a percentile bootstrap of it is a spread, not an interval: it misses a small
        true error most of the time. Instead the interval is built around the debiased estimate ``d``
        (stored in ``ci_estimate``). First a test of calibration by consistency resampling (labels redrawn
        as a calibrated model with these scores would get them, ``n_boot`` times): when ``d`` is within the
        ``ci`` quantile of those draws the lower end is 0, otherwise ``d - (q_hi - plug-in)`` (basic
        bootstrap pivoted on the bootstrap world's true error, the plug-in value); upper end ``d + z sd``
        (``sd``: bootstrap standard deviation of the debiased estimator, ``z`` at ``1 - alpha / 2``). Simulated
        coverage of the 95% interval with known true ECE: see ``benchmarks/README.md`` (calibration); the
        plug-in value itself can lie above the interval for a nearly calibrated model. ``"percentile"``: the old percentile interval of the
        chosen estimator (also used for ``norm="max"``, which has no debiased form).

    Returns
    -------
    CalibrationError
        ``value``, ``ci`` and the settings; ``float(result)`` is the value.
    """
    norm = _check_norm(norm)
    kind = _check_kind(kind)
    strategy = _binning.check_strategy(strategy)
    if debiased not in (True, False):
        raise FailsightInputError(f"debiased must be True or False, got {debiased!r}.")
    debiased = bool(debiased)
    if debiased and norm == "max":
        raise FailsightInputError("debiased=True is defined for norm='l1' and norm='l2'; use debiased=False "
                                  "for the MCE (norm='max').")
    level = None if ci is None else _check_level(ci)
    if level is not None:
        n_boot = check_int(n_boot, "n_boot", minimum=2)
        seed = _binning.resolve_seed(seed)
    if ci_method not in ("debiased", "percentile"):
        raise FailsightInputError(f"ci_method must be 'debiased' or 'percentile', got {ci_method!r}.")

    per_class = None
    if kind == "top-label" and level is None:
        counts = _binning.top_label_counts(y_true, y_prob, n_bins, strategy)
        value, _ = _error_from_counts(counts, kind, norm, debiased)
        n = counts.n
        red = None
    else:
        y, p, checked = _binning.prepare(y_true, y_prob)
        nb = _binning.check_n_bins(n_bins, len(y))
        if kind == "top-label":
            red = _binning.top_label_reduced(y, p, nb, strategy, y_prob=y_prob, checked=checked)
        else:
            if not checked:
                p = np.ascontiguousarray(check_probs(p))
            red = _binning.classwise_reduced(y, p, nb, strategy)
        value, per_col = _error_from_counts(_binning.counts_from_reduced(red), kind, norm, debiased)
        if kind != "top-label":
            per_class = tuple(float(v) for v in per_col)
        n = len(y)

    interval = None
    center = None
    if level is not None and red is not None:
        if ci_method == "debiased" and norm != "max":
            interval, center = _debiased_interval(red, kind, norm, level, n_boot, seed)
        else:
            interval = percentile_interval(_bootstrap_errors(red, kind, norm, debiased, n_boot, seed), level)
    return CalibrationError(value=value, ci=interval, kind=kind, norm=norm, strategy=strategy,
                            n_bins=int(n_bins), debiased=debiased, n_samples=int(n),
                            n_boot=n_boot if level is not None else None, per_class=per_class,
                            ci_estimate=center, ci_method=None if level is None else
                            ("debiased" if ci_method == "debiased" and norm != "max" else "percentile"))


def _null_errors(red: _binning.Reduced, kind: str, norm: str, n_draws: int, seed: int) -> np.ndarray:
    """Debiased error ``(n_draws,)`` of *calibrated* labels for the same scores: consistency resampling.

    Each draw keeps the scores and bins and redraws the hits a perfectly calibrated model with these scores
    would get (Bröcker & Smith 2007): each bin's hit count ~ Binomial(n_b, mean score in the bin). That is
    the estimator's distribution at a true error of 0, up to the spread of the scores inside a bin (the exact
    Poisson-binomial count has variance smaller by ``sum_i (p_i - mean p)^2``, under 2 % with 15 bins); the
    columns of class-wise / marginal kinds are drawn independently. Cost ``O(n_draws * m * B)``, not ``O(n)``.
    """
    _, m = red.values.shape
    nb = red.n_bins
    count = np.zeros((m, nb))
    sum_value = np.zeros((m, nb))
    for j in range(m):
        bj = red.bin_index[:, j].astype(np.int64)
        count[j] = np.bincount(bj, minlength=nb)
        sum_value[j] = np.bincount(bj, weights=red.values[:, j], minlength=nb)
    mean = np.clip(sum_value / np.maximum(count, 1.0), 0.0, 1.0)
    rng = np.random.default_rng([seed, 0x5EED])
    out = np.empty(n_draws)
    step = max(1, min(n_draws, (1 << 21) // (m * nb)))
    for start in range(0, n_draws, step):
        r = min(step, n_draws - start)
        sum_hit = rng.binomial(count.astype(np.int64), mean, size=(r, m, nb)).astype(np.float64)
        out[start:start + r] = _aggregate(_column_errors(count, sum_value, sum_hit, red.values.shape[0], norm,
                                                         True), kind, norm)
    return out


def _debiased_interval(red: _binning.Reduced, kind: str, norm: str, level: float, n_boot: int,
                       seed: int) -> tuple[Interval, float]:
    """Interval for the population binned error around the debiased estimate ``d`` (see ``calibration_error``).

    Upper end ``d + z sd`` (``z`` the ``1 - alpha / 2`` normal quantile, ``sd`` the standard deviation of the
    debiased estimator over bootstrap resamples). Lower end:

    1. 0 when the data are consistent with calibration: ``d`` within the ``level`` quantile of the consistency
       resampling (:func:`_null_errors`, the estimator's distribution at a true error of 0 for these
       scores). So at a true error of 0 the interval covers with probability ``level`` by construction.
    2. Otherwise the basic bootstrap with the right pivot, ``d - (q_hi - e)``: in the bootstrap world the
       true error is the plug-in value ``e`` of the sample (not ``d``), so ``q_hi - e`` is how far the
       debiased estimator overshoots.

    The upper end stays two-sided in case 1 (a one-sided ``level`` bound there, as in a flip-flopping
    Feldman & Cousins construction, under-covered small true errors). Coverage by simulation:
    ``benchmarks/calibration_real.py``.
    """
    from scipy.stats import norm as _normal

    counts = _binning.counts_from_reduced(red)
    d, _ = _error_from_counts(counts, kind, norm, True)
    e, _ = _error_from_counts(counts, kind, norm, False)
    boot = _bootstrap_errors(red, kind, norm, True, n_boot, seed)
    null = _null_errors(red, kind, norm, n_boot, seed)
    alpha = 1.0 - level
    high = d + float(_normal.ppf(1.0 - alpha / 2.0)) * float(boot.std(ddof=1))
    if d <= float(np.quantile(null, level)):
        return Interval(0.0, high, level), float(d)
    q_hi = float(np.quantile(boot, 1.0 - alpha / 2.0))
    return Interval(min(max(0.0, d - (q_hi - e)), d), high, level), float(d)


def ece(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: Strategy = "uniform", norm: Norm = "l1") -> float:
    """Top-label expected calibration error of ``y_prob (n, k)`` (or ``(n,)``) for labels ``y_true (n,)``.

    ``norm="l1"`` is the ECE of Guo et al. 2017, ``"l2"`` the RMS calibration error, ``"max"`` the MCE.
    Uniform bins run as one fused pass over the probabilities. See :func:`calibration_error` for the
    class-wise/marginal kinds, the debiased estimator and bootstrap intervals.
    """
    norm = _check_norm(norm)
    counts = _binning.top_label_counts(y_true, y_prob, n_bins, strategy)
    return _error_from_counts(counts, "top-label", norm, False)[0]


def mce(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: Strategy = "uniform") -> float:
    """Top-label maximum calibration error: ``max_b |acc_b - conf_b|`` over non-empty bins."""
    return ece(y_true, y_prob, n_bins=n_bins, strategy=strategy, norm="max")


def reliability_diagram(y_true: Any, y_prob: Any, n_bins: int = 15, strategy: Strategy = "uniform",
                        class_index: int | None = None) -> ReliabilityDiagram:
    """Per-bin confidence, accuracy and count for a reliability diagram.

    Top-label by default. With ``class_index=c`` the probability of class ``c`` is binned against
    ``y_true == c``: for binary problems ``class_index=1`` gives the values of scikit-learn's
    ``calibration_curve(y_true, y_prob[:, 1])`` (which drops empty bins; here they are NaN with count 0).
    """
    strategy = _binning.check_strategy(strategy)
    if class_index is None:
        counts = _binning.top_label_counts(y_true, y_prob, n_bins, strategy)
    else:
        y, p = check_labels_probs(y_true, y_prob)
        k = p.shape[1]
        if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
                or not 0 <= class_index < k:
            raise FailsightInputError(f"class_index must be an integer in 0..{k - 1}, got {class_index!r}.")
        nb = _binning.check_n_bins(n_bins, len(y))
        counts = _binning.counts_from_reduced(_binning.class_reduced(y, p, int(class_index), nb, strategy))
    cnt = counts.count[0]
    nonempty = cnt > 0
    safe = np.where(nonempty, cnt, 1.0)
    conf = np.where(nonempty, counts.sum_value[0] / safe, np.nan)
    acc = np.where(nonempty, counts.sum_hit[0] / safe, np.nan)
    value = _error_from_counts(counts, "top-label", "l1", False)[0]
    return ReliabilityDiagram(bin_edges=counts.edges[0].copy(), confidence=conf, accuracy=acc,
                              count=cnt.astype(np.int64), ece=value, n_bins=int(n_bins), strategy=strategy,
                              class_index=None if class_index is None else int(class_index))


# ----------------------------------------------------------------------------------------------------
# proper scores and accuracy
# ----------------------------------------------------------------------------------------------------


def brier_score(y_true: Any, y_prob: Any, scale_by_half: bool | Literal["auto"] = "auto") -> float:
    """Brier score: mean over samples of ``sum_j (p_ij - [y_i == j])**2`` (float64 accumulation).

    ``scale_by_half="auto"`` follows scikit-learn's ``brier_score_loss``: binary input (``(n,)`` or two
    columns) is halved, giving the familiar ``mean((p_1 - y)**2)`` in [0, 1]; three or more classes are
    not (range [0, 2]). Pass True/False to force either.
    """
    y, p = check_labels_probs(y_true, y_prob)
    if scale_by_half == "auto":
        half = p.shape[1] == 2
    elif scale_by_half in (True, False):
        half = bool(scale_by_half)
    else:
        raise FailsightInputError(f"scale_by_half must be 'auto', True or False, got {scale_by_half!r}.")
    n = len(y)
    total = 0.0
    step = max(1, (1 << 20) // p.shape[1])
    for lo in range(0, n, step):
        d = p[lo:lo + step].astype(np.float64)
        d[np.arange(len(d)), y[lo:lo + step]] -= 1.0
        total += float(np.einsum("ij,ij->", d, d))
    return total / n / (2.0 if half else 1.0)


#: The one probability floor of :func:`nll` when a floor is asked for (``eps="floor"``): 1e-15, the
#: clipping constant scikit-learn's ``log_loss`` used for years; ``-log(1e-15) = 34.5`` nats per sample.
NLL_EPS = 1e-15


def nll(y_true: Any, y_prob: Any, eps: float | Literal["floor"] | None = None) -> float:
    """Negative log-likelihood ``-mean(log p[i, y_i])`` in nats, computed in float64.

    The probability of the true class is widened to float64 (exactly) before the log, so the same numbers
    give the same NLL whatever their dtype. By default (``eps=None``) nothing is clipped: a true-class
    probability of 0 gives ``+inf`` -- the NLL is a proper score and a model that rules out what happened
    has infinite loss (see :func:`nll_zero_count` to count such rows). ``eps="floor"`` clips at
    :data:`NLL_EPS` (1e-15) from below; a number clips at that value. Values above 1 (rows that sum to 1
    within the input tolerance) are clipped to 1.
    """
    y, p = check_labels_probs(y_true, y_prob)
    if eps is None:
        e = 0.0
    elif isinstance(eps, str) and eps == "floor":
        e = NLL_EPS
    else:
        e = check_fraction(eps, "eps", open_low=False)
    py = p[np.arange(len(y)), y].astype(np.float64)
    np.clip(py, e, 1.0, out=py)
    with np.errstate(divide="ignore"):
        return float(-np.log(py).mean()) + 0.0  # + 0.0: a perfect model's NLL is 0.0, not -0.0


def nll_zero_count(y_true: Any, y_prob: Any) -> int:
    """Number of rows whose true-class probability is exactly 0 (each makes :func:`nll` infinite)."""
    y, p = check_labels_probs(y_true, y_prob)
    return int(np.count_nonzero(p[np.arange(len(y)), y] <= 0.0))


def accuracy(y_true: Any, y_prob: Any) -> float:
    """Top-1 accuracy: fraction of samples whose (first) argmax of ``y_prob (n, k)`` equals ``y_true``."""
    y, p, checked = _binning.prepare(y_true, y_prob)
    _, hit = _binning.top_label_reduce(y, p, y_prob, checked)
    return float(hit.mean())

