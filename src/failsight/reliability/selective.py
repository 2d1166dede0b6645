"""Selective prediction: risk-coverage curves, misclassification detection, guaranteed-risk thresholds.

A *selective classifier* predicts only when its confidence score is at least a threshold and abstains
otherwise. Its *coverage* is the fraction of samples accepted and its *selective risk* the error rate on
the accepted ones. This module

- traces the risk-coverage curve of any confidence score and summarises it with AURC / E-AURC
  (:func:`risk_coverage`, :func:`aurc`, :func:`eaurc`);
- measures how well a score separates errors from correct predictions (:func:`misclassification_metrics`);
- turns a requirement ("selective risk at most ``max_risk`` with probability ``confidence``") into a
  threshold with the SGR algorithm of Geifman & El-Yaniv (2017) (:func:`select_threshold`).

Every function takes labels first, then probabilities ``(n, k)`` (or ``(n,)`` for binary). The confidence
score is the maximum probability by default; ``score=`` picks another one from
:func:`failsight.reliability.scores.confidence_score` (``logits=`` where the score needs them) and
``scores=`` passes your own ``(n,)`` score, oriented so that higher means more confident. Which
predictions are errors is read from ``y_pred`` if given, else from the argmax of ``y_prob`` / ``logits``.

Ties in the score are handled exactly: a threshold ``t`` accepts every sample with ``score >= t``, so
tied samples are always accepted or rejected together and curves have one point per distinct score.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import stats

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_fraction,
    check_labels,
    check_logits,
    check_probs,
)
from failsight.types import Result

__all__ = [
    "MisclassificationDetection",
    "RiskCoverage",
    "SelectiveThreshold",
    "aurc",
    "binomial_upper_bound",
    "eaurc",
    "misclassification_metrics",
    "risk_coverage",
    "select_threshold",
]


# --------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RiskCoverage(Result):
    """Risk-coverage curve of a confidence score, one point per distinct score value.

    Points are ordered by threshold from high to low, i.e. by increasing coverage; the last point is
    full coverage (risk = overall error rate).

    Attributes:
        coverage: ``(m,)`` fraction of samples with ``score >= thresholds[j]``.
        risk: ``(m,)`` error rate among those samples (selective risk).
        thresholds: ``(m,)`` the distinct score values, decreasing.
        aurc: area under the risk-coverage curve (Geifman et al. 2019: the mean over ``i = 1..n`` of
            the risk of the ``i`` most confident samples; tied samples contribute their expected value
            over random tie-breaking).
        eaurc: excess AURC, ``aurc`` minus the AURC of the oracle ordering (all correct predictions
            first) with the same error rate; 0 for a perfect score, always >= 0.
        aurc_oracle: the AURC of that oracle ordering (computed exactly on the ``n`` samples, not with
            the continuous approximation ``r + (1 - r) log(1 - r)``).
        error_rate: overall error rate (risk at full coverage).
        n: number of samples.
        n_errors: number of misclassified samples.
        score: name of the confidence score used (``"custom"`` for ``scores=``).
    """

    coverage: np.ndarray
    risk: np.ndarray
    thresholds: np.ndarray
    aurc: float
    eaurc: float
    aurc_oracle: float
    error_rate: float
    n: int
    n_errors: int
    score: str = "msp"

    def risk_at(self, coverage: float) -> float:
        """Selective risk at the smallest curve point whose coverage is at least ``coverage`` (in (0, 1])."""
        c = check_fraction(coverage, "coverage", open_low=True, open_high=False)
        j = int(np.searchsorted(self.coverage, c - 1e-12, side="left"))
        return float(self.risk[min(j, len(self.risk) - 1)])


@dataclasses.dataclass(frozen=True, eq=False)
class MisclassificationDetection(Result):
    """How well a confidence score separates misclassified from correctly classified samples.

    Errors are the *positive* class and the detector flags a sample as an error when its confidence is
    low (detector score ``-confidence``), following Hendrycks & Gimpel (2017).

    Attributes:
        auroc: area under the ROC curve of error detection (equal to the AUROC of separating correct
            from wrong with the confidence itself). 0.5 = chance, 1 = perfect.
        aupr_error: average precision with errors positive and ``-confidence`` as the detector score
            ("AUPR-Error"/"AUPR-Out"); the chance level is the error rate.
        aupr_success: average precision with correct predictions positive and the confidence as score
            ("AUPR-Success"/"AUPR-In").
        fpr_at_tpr: share of *correct* predictions flagged as errors at the highest confidence
            threshold that still flags at least ``tpr_level`` of the errors (FPR@95%TPR for 0.95).
        tpr_level: the TPR level of ``fpr_at_tpr``.
        error_rate: fraction of misclassified samples.
        n: number of samples.
        n_errors: number of misclassified samples.
        score: name of the confidence score used.

    All metrics are NaN when the samples hold only errors or only correct predictions (undefined).
    """

    auroc: float
    aupr_error: float
    aupr_success: float
    fpr_at_tpr: float
    tpr_level: float
    error_rate: float
    n: int
    n_errors: int
    score: str = "msp"


@dataclasses.dataclass(frozen=True, eq=False)
class SelectiveThreshold(Result):
    """A confidence threshold with a guaranteed selective risk (SGR, Geifman & El-Yaniv 2017).

    Accept a sample when its confidence score is ``>= threshold`` (see :meth:`apply`). With probability
    at least ``confidence`` over the draw of the calibration data, the selective risk of this rule on
    the same distribution is at most ``risk_bound`` (which is ``<= max_risk``).

    Attributes:
        threshold: the score threshold (a score value of the calibration data).
        coverage: fraction of the calibration samples accepted.
        risk: empirical selective risk (error rate of the accepted calibration samples).
        risk_bound: the guaranteed upper bound on the selective risk (binomial-tail inversion).
        max_risk: the requested maximum selective risk.
        confidence: the requested probability of the guarantee (``1 - delta``).
        n_accepted: number of accepted calibration samples.
        n_errors_accepted: number of errors among them.
        n: number of calibration samples.
        n_steps: number of bound evaluations of the search (``delta`` is split over them).
        delta_per_step: ``(1 - confidence) / n_steps``, the confidence spent on each bound.
        score: name of the confidence score the threshold applies to.
    """

    threshold: float
    coverage: float
    risk: float
    risk_bound: float
    max_risk: float
    confidence: float
    n_accepted: int
    n_errors_accepted: int
    n: int
    n_steps: int
    delta_per_step: float
    score: str = "msp"

    def apply(self, scores: Any) -> np.ndarray:
        """Boolean mask ``(n,)`` of the samples accepted by the threshold (``scores >= threshold``).

        ``scores`` must be the same kind of confidence score the threshold was selected with
        (``self.score``), oriented higher = more confident.
        """
        s = as_float_array(scores, "scores", ndim=1, allow_float32=False)
        return s >= self.threshold


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _confidence_from_registry(score: str, probs: np.ndarray | None, logits: np.ndarray | None) -> np.ndarray:
    """Compute a named confidence score, higher = more confident; ``(n,)`` float64."""
    try:
        from failsight.reliability.scores import confidence_score
    except ImportError:
        confidence_score = None
    if confidence_score is None:
        if score == "msp" and probs is not None:
            return probs.max(axis=1).astype(np.float64)
        raise FailsightInputError(
            f"score={score!r} needs failsight.reliability.scores, which is not available; "
            "pass score='msp' with y_prob, or your own confidence via scores=."
        )
    out = confidence_score(score, probs=probs, logits=logits)
    return np.asarray(out, dtype=np.float64)


def _prepare(
    y_true: Any,
    y_prob: Any,
    scores: Any,
    score: str,
    logits: Any,
    y_pred: Any,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Validate inputs; return ``(errors (n,) bool, confidence (n,) float64, score name)``."""
    probs = check_probs(y_prob) if y_prob is not None else None
    z = check_logits(logits) if logits is not None else None
    if probs is not None and z is not None and probs.shape != z.shape:
        raise FailsightInputError(
            f"y_prob has shape {probs.shape} but logits has shape {z.shape}; they must describe the same "
            "samples and classes."
        )
    n_classes = probs.shape[1] if probs is not None else (z.shape[1] if z is not None else None)
    if y_pred is not None:
        pred = check_labels(y_pred, n_classes=n_classes, name="y_pred")
    elif probs is not None:
        pred = probs.argmax(axis=1)
    elif z is not None:
        pred = z.argmax(axis=1)
    else:
        raise FailsightInputError(
            "cannot tell which predictions are wrong: pass y_prob (n, k), logits= (n, k) or y_pred= (n,) "
            "predicted labels alongside y_true."
        )
    y = check_labels(y_true, n_classes=n_classes)

    if scores is not None:
        conf = as_float_array(scores, "scores", ndim=1, allow_float32=False)
        name = "custom"
    else:
        if not isinstance(score, str):
            raise FailsightInputError(f"score must be the name of a confidence score, got {score!r}.")
        if probs is None and z is None:
            raise FailsightInputError(
                f"score={score!r} is computed from y_prob or logits=; pass one of them, or pass your own "
                "confidence values as scores=."
            )
        conf = _confidence_from_registry(score, probs, z)
        name = score
    names = ["y_true", "y_pred" if y_pred is not None else ("y_prob" if probs is not None else "logits"),
             "scores" if scores is not None else f"score {name!r}"]
    check_consistent_length(y, pred, conf, names=tuple(names))
    if not np.isfinite(conf).all():
        raise FailsightInputError(
            f"the confidence score {name!r} has NaN/inf values; check the inputs (e.g. probabilities of "
            "exactly 0 for the log-based scores)."
        )
    return pred != y, conf, name


def _groups(conf: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by confidence (descending) and aggregate ties.

    Returns ``thresholds (m,)`` decreasing distinct scores, ``accepted (m,)`` number of samples with
    score >= each threshold, ``cum_err (m,)`` errors among them, ``size (m,)`` samples at each value.
    """
    order = np.argsort(-conf, kind="stable")
    s = conf[order]
    e = errors[order].astype(np.int64)
    last = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # index of each tie group's last member
    accepted = last + 1
    cum_err = np.cumsum(e)[last]
    size = np.diff(np.concatenate(([0], accepted)))
    return s[last], accepted, cum_err, size


def _mean_risk_by_rank(accepted: np.ndarray, cum_err: np.ndarray, size: np.ndarray) -> float:
    """Mean over ranks ``i = 1..n`` of (expected) errors among the top ``i`` divided by ``i``.

    Within a tie group the expected error count grows linearly (the expectation over random tie
    breaking), which makes the AURC of tied scores exact and independent of the input order.
    """
    n = int(accepted[-1])
    start = accepted - size  # samples strictly above each group
    group_err = np.diff(np.concatenate(([0], cum_err)))  # errors inside each group
    err_before = cum_err - group_err  # errors strictly above each group
    g = np.repeat(np.arange(len(size)), size)
    i = np.arange(1, n + 1, dtype=np.float64)
    expected_err = err_before[g] + (i - start[g]) * (group_err[g] / size[g])
    return float(np.mean(expected_err / i))


def _oracle_aurc(n: int, n_errors: int) -> float:
    """AURC of the ordering that ranks every correct prediction above every error."""
    n_correct = n - n_errors
    i = np.arange(1, n + 1, dtype=np.float64)
    return float(np.mean(np.maximum(i - n_correct, 0.0) / i))


# --------------------------------------------------------------------------------------------------
# risk-coverage
# --------------------------------------------------------------------------------------------------


def risk_coverage(
    y_true: Any,
    y_prob: Any = None,
    *,
    scores: Any = None,
    score: str = "msp",
    logits: Any = None,
    y_pred: Any = None,
) -> RiskCoverage:
    """Risk-coverage curve, AURC and E-AURC of a confidence score.

    The threshold sweeps the distinct score values from high to low; at each one the samples with
    ``score >= threshold`` are accepted.

    Args:
        y_true: ``(n,)`` integer labels.
        y_prob: ``(n, k)`` probabilities (or ``(n,)`` P(class 1) for binary); the argmax is the prediction.
        scores: optional ``(n,)`` confidence, higher = more confident; overrides ``score``.
        score: name of a confidence score (msp, margin, ratio, entropy, energy, max_logit, doctor).
        logits: optional ``(n, k)`` logits, for scores that need them (energy, max_logit).
        y_pred: optional ``(n,)`` predicted labels (instead of the argmax of ``y_prob``/``logits``).

    Returns:
        :class:`RiskCoverage` with ``coverage``, ``risk``, ``thresholds`` of shape ``(m,)`` (``m``
        distinct scores, coverage increasing), ``aurc``, ``eaurc``, ``n``.
    """
    errors, conf, name = _prepare(y_true, y_prob, scores, score, logits, y_pred)
    n = errors.size
    thresholds, accepted, cum_err, size = _groups(conf, errors)
    n_errors = int(cum_err[-1])
    value = _mean_risk_by_rank(accepted, cum_err, size)
    oracle = _oracle_aurc(n, n_errors)
    return RiskCoverage(
        coverage=accepted / n,
        risk=cum_err / accepted,
        thresholds=thresholds,
        aurc=value,
        eaurc=max(value - oracle, 0.0),  # >= 0 exactly; clip float round-off only
        aurc_oracle=oracle,
        error_rate=n_errors / n,
        n=n,
        n_errors=n_errors,
        score=name,
    )


def aurc(y_true: Any, y_prob: Any = None, **kwargs: Any) -> float:
    """Area under the risk-coverage curve (lower is better); arguments as :func:`risk_coverage`."""
    return risk_coverage(y_true, y_prob, **kwargs).aurc


def eaurc(y_true: Any, y_prob: Any = None, **kwargs: Any) -> float:
    """Excess AURC over the oracle ordering (0 = perfect ranking); arguments as :func:`risk_coverage`."""
    return risk_coverage(y_true, y_prob, **kwargs).eaurc


# --------------------------------------------------------------------------------------------------
# misclassification detection
# --------------------------------------------------------------------------------------------------


def misclassification_metrics(
    y_true: Any,
    y_prob: Any = None,
    *,
    scores: Any = None,
    score: str = "msp",
    logits: Any = None,
    y_pred: Any = None,
    tpr_level: float = 0.95,
) -> MisclassificationDetection:
    """AUROC, AUPR and FPR@TPR of detecting misclassifications by low confidence.

    Errors are the positive class, detected by ``-confidence``: ``auroc`` equals
    ``sklearn.metrics.roc_auc_score(errors, -conf)``, ``aupr_error`` equals
    ``average_precision_score(errors, -conf)`` and ``aupr_success`` equals
    ``average_precision_score(~errors, conf)``. ``fpr_at_tpr`` is the false-positive rate (correct
    predictions flagged) at the first ROC point whose TPR (errors flagged) reaches ``tpr_level``.
    Arguments as :func:`risk_coverage`; metrics are NaN when there are no errors or no correct predictions.
    """
    level = check_fraction(tpr_level, "tpr_level", open_low=True, open_high=False)
    errors, conf, name = _prepare(y_true, y_prob, scores, score, logits, y_pred)
    n = errors.size
    n_err = int(errors.sum())
    n_ok = n - n_err
    if n_err == 0 or n_ok == 0:
        nan = float("nan")
        return MisclassificationDetection(nan, nan, nan, nan, level, n_err / n, n, n_err, name)

    # Walk thresholds from low confidence (most error-like) up: flagged = conf <= t.
    _, flagged, tp, _ = _groups(-conf, errors)  # on -conf: "accepted" = flagged as error
    fp = flagged - tp
    tpr = np.concatenate(([0.0], tp / n_err))
    fpr = np.concatenate(([0.0], fp / n_ok))
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    aupr_error = float(np.sum(np.diff(tpr) * (tp / flagged)))

    # Success detection: flagged as correct = conf >= t, walking thresholds from high to low.
    _, acc, err_acc, _ = _groups(conf, errors)
    tp_ok = acc - err_acc
    aupr_success = float(np.sum(np.diff(np.concatenate(([0.0], tp_ok / n_ok))) * (tp_ok / acc)))

    j = int(np.searchsorted(tpr, level - 1e-12, side="left"))
    fpr_at = float(fpr[min(j, len(fpr) - 1)])
    return MisclassificationDetection(auroc, aupr_error, aupr_success, fpr_at, level, n_err / n, n, n_err, name)


# --------------------------------------------------------------------------------------------------
# guaranteed-risk threshold (SGR)
# --------------------------------------------------------------------------------------------------


def binomial_upper_bound(n_errors: Any, n_trials: Any, delta: float) -> np.ndarray:
    """Exact (Clopper-Pearson) one-sided upper bound on an error probability.

    The largest ``b`` with ``P(Binomial(n_trials, b) <= n_errors) >= delta``, i.e. the binomial-tail
    inversion of Geifman & El-Yaniv (2017, eq. 4): ``beta.ppf(1 - delta, e + 1, n - e)``, and 1 when
    ``e == n``. With zero errors it is ``1 - delta ** (1 / n_trials)``. Broadcasts over arrays.
    """
    e = np.asarray(n_errors, dtype=np.float64)
    m = np.asarray(n_trials, dtype=np.float64)
    full = e >= m
    with np.errstate(invalid="ignore", divide="ignore"):
        b = stats.beta.ppf(1.0 - delta, e + 1.0, np.where(full, 1.0, m - e))
    return np.where(full, 1.0, b)


def _min_samples_zero_errors(max_risk: float, delta: float) -> int:
    """Smallest ``n`` with ``1 - delta ** (1/n) <= max_risk`` (bound at zero errors)."""
    return math.ceil(math.log(delta) / math.log1p(-max_risk) - 1e-9)


def select_threshold(
    y_true: Any,
    y_prob: Any = None,
    *,
    scores: Any = None,
    score: str = "msp",
    logits: Any = None,
    y_pred: Any = None,
    max_risk: float,
    confidence: float = 0.95,
) -> SelectiveThreshold:
    """Largest-coverage threshold whose selective risk is at most ``max_risk`` w.p. >= ``confidence``.

    Implements SGR (Selection with Guaranteed Risk, Geifman & El-Yaniv 2017, Algorithm 1) on a held-out
    calibration set: the ``m`` distinct score values are candidate thresholds (sorted once; accepted
    counts and error counts from cumulative sums), a binary search over them evaluates the exact
    binomial-tail bound on the selective risk of ``k = ceil(log2(m + 1))`` candidates, each at
    ``delta / k`` with ``delta = 1 - confidence`` (a union bound over the search), and returns the
    evaluated candidate with the largest coverage whose bound is ``<= max_risk``. ``k`` is the paper's
    ``ceil(log2 m)`` except when ``m`` is a power of two, where it counts the one extra evaluation this
    search needs so that the returned threshold is always one whose bound was checked.

    Before the search, candidates that accept too few samples to meet ``max_risk`` *even with zero
    errors* (``1 - (delta/k0)^(1/n_accepted) > max_risk`` with ``k0`` the step count for all ``m``
    candidates) are dropped. That filter looks only at the scores, never at the labels, so the
    guarantee is unchanged; it stops the binary search from probing a small, hopeless prefix first and
    then walking the wrong way (plain SGR assumes the bound grows with coverage, which fails for small
    prefixes where the bound is dominated by the sample count).

    Args:
        y_true: ``(n,)`` labels of calibration data the model was not trained on.
        y_prob: ``(n, k)`` probabilities (or see ``scores``/``logits``/``y_pred`` as in :func:`risk_coverage`).
        max_risk: target selective risk in (0, 1).
        confidence: probability in (0, 1) with which the guarantee must hold.

    Returns:
        :class:`SelectiveThreshold` (``threshold``, ``coverage``, ``risk``, ``risk_bound``, ...);
        ``.apply(scores)`` gives the accepted mask for new data.

    Raises:
        FailsightInputError: when no evaluated threshold meets the requirement with the data given.
    """
    r_star = check_fraction(max_risk, "max_risk")
    conf_level = check_fraction(confidence, "confidence")
    errors, conf, name = _prepare(y_true, y_prob, scores, score, logits, y_pred)
    n = errors.size
    thresholds, accepted, cum_err, _ = _groups(conf, errors)
    delta = 1.0 - conf_level
    # Label-independent pre-filter: keep candidates that could pass with zero errors at delta / k0.
    k0 = max(1, math.ceil(math.log2(thresholds.size + 1)))
    keep = accepted >= _min_samples_zero_errors(r_star, delta / k0)
    if not keep.any():
        need = _min_samples_zero_errors(r_star, delta / k0)
        raise FailsightInputError(
            f"no threshold meets max_risk={r_star:g} with confidence {conf_level:g} on these {n} samples: "
            f"even with zero errors the bound 1 - delta'^(1/n) <= {r_star:g} (delta' = {delta / k0:.3g}) "
            f"needs at least {need} accepted samples. Raise max_risk, lower confidence, or use a larger "
            f"calibration set."
        )
    thresholds, accepted, cum_err = thresholds[keep], accepted[keep], cum_err[keep]
    m = thresholds.size
    k = max(1, math.ceil(math.log2(m + 1)))
    delta_k = delta / k

    # Candidates j = 0..m-1 by increasing coverage. Find the largest j whose bound is <= max_risk,
    # assuming (as SGR does) that the bound grows with coverage.
    lo, hi = 0, m - 1
    best = -1
    best_bound = math.inf
    lowest = math.inf
    steps = 0
    while lo <= hi and steps < k:
        mid = (lo + hi + 1) // 2
        b = float(binomial_upper_bound(cum_err[mid], accepted[mid], delta_k))
        steps += 1
        lowest = min(lowest, b)
        if b <= r_star:
            best, best_bound = mid, b
            lo = mid + 1
        else:
            hi = mid - 1

    if best < 0:
        need = _min_samples_zero_errors(r_star, delta_k)
        raise FailsightInputError(
            f"no threshold meets max_risk={r_star:g} with confidence {conf_level:g} on these {n} samples "
            f"(the lowest risk bound the search reached is {lowest:.4g}). Even with zero errors the bound "
            f"1 - delta'^(1/n) <= {r_star:g} (delta' = {delta_k:.3g}) needs at least {need} accepted "
            f"samples. Raise max_risk, lower confidence, or use a larger calibration set."
        )
    n_acc = int(accepted[best])
    n_err = int(cum_err[best])
    return SelectiveThreshold(
        threshold=float(thresholds[best]),
        coverage=n_acc / n,
        risk=n_err / n_acc,
        risk_bound=best_bound,
        max_risk=r_star,
        confidence=conf_level,
        n_accepted=n_acc,
        n_errors_accepted=n_err,
        n=n,
        n_steps=k,
        delta_per_step=delta_k,
        score=name,
    )
