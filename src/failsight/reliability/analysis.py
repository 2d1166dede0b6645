"""One-call reliability analysis of a classifier's predictions (composes the reliability modules).

:func:`analyze` takes test labels and probabilities (or logits), optionally a held-out calibration
split, and returns a :class:`ReliabilityAnalysis`: calibration metrics with bootstrap intervals, the
reliability diagram before and after the best post-hoc calibrator, the calibrator comparison, the
risk-coverage curve of every confidence score, misclassification detection, and a confidence threshold
with a guaranteed selective risk (or the reason none exists, as text, so a report still renders).
No metric is computed here: every number comes from :mod:`metrics`, :mod:`scores`, :mod:`compare` and
:mod:`selective`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.special import softmax

from failsight._stats import clopper_pearson
from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_fraction,
    check_int,
    check_labels,
    check_logits,
    check_probs,
    resolve_prediction_kind,
)
from failsight.reliability import metrics as _metrics
from failsight.reliability import scores as _scores
from failsight.reliability import selective as _selective
from failsight.types import Interval, Result

__all__ = ["MetricRow", "ReliabilityAnalysis", "ScoreRow", "ThresholdOnTest", "analyze"]


@dataclasses.dataclass(frozen=True)
class MetricRow(Result):
    """One metric on the test split: ``value`` with a bootstrap/exact interval ``ci`` (or ``None``)."""

    name: str
    key: str
    value: float
    ci: Interval | None
    lower_is_better: bool
    description: str


@dataclasses.dataclass(frozen=True)
class ScoreRow(Result):
    """How well one confidence score ranks the test predictions (errors should score low)."""

    score: str
    auroc: float
    aupr_error: float
    fpr_at_95_tpr: float
    aurc: float
    eaurc: float


@dataclasses.dataclass(frozen=True)
class ThresholdOnTest(Result):
    """The selected threshold applied to the test split (an independent check when it was selected
    on a calibration split)."""

    coverage: float
    risk: float
    n_accepted: int
    n_errors_accepted: int
    independent: bool


@dataclasses.dataclass(frozen=True)
class ReliabilityAnalysis(Result):
    """Everything :func:`analyze` found; render it with :func:`failsight.report.sections.reliability_section`.

    Attributes:
        n_test, n_cal, n_classes: sizes (``n_cal`` 0 without a calibration split).
        input_kind: "logits" or "probs" (what the predictions were).
        metrics: metrics of the uncalibrated test predictions with intervals at ``confidence``.
        metrics_calibrated: the same after ``after_calibrator`` (``None`` without a calibration split).
        best_calibrator: the comparison's choice, made on the calibration split only (see its ``best_rule``:
            lowest cross-validated NLL; "uncalibrated" when none helped, ``None`` without a calibration split).
        after_calibrator: the calibrator of ``metrics_calibrated`` / ``diagram_after``: the best one, or
            when none helped the runner-up by the same rule, shown for comparison.
        comparison: the :func:`~failsight.reliability.compare.compare_calibrators` result (or ``None``).
        diagram_before / diagram_after: reliability-diagram data (bin edges, confidence, accuracy, count).
        scores: ranking quality of each confidence score on the test split.
        risk_coverage: risk-coverage curve of ``score`` on the test split (uncalibrated predictions).
        misclassification: misclassification detection of ``score`` on the test split.
        threshold: the guaranteed-risk threshold (``None`` when it could not be met; see ``threshold_reason``).
        threshold_split: "calibration" or "test" (where the threshold was selected).
        threshold_on_test: the threshold applied to the test split.
        test_confidence / test_correct: ``(n_test,)`` confidence score and correctness (not in JSON).
        notes: plain-text remarks for the reader (what was skipped and why).
    """

    n_test: int
    n_cal: int
    n_classes: int
    input_kind: str
    n_bins: int
    confidence: float
    max_risk: float
    score: str
    seed: int
    metrics: tuple[MetricRow, ...]
    metrics_calibrated: tuple[MetricRow, ...] | None
    best_calibrator: str | None
    after_calibrator: str | None
    comparison: Any
    diagram_before: Any
    diagram_after: Any
    scores: tuple[ScoreRow, ...]
    risk_coverage: Any
    misclassification: Any
    threshold: Any
    threshold_reason: str | None
    threshold_split: str
    threshold_on_test: ThresholdOnTest | None
    notes: tuple[str, ...]
    test_confidence: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    test_correct: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})

    @property
    def accuracy(self) -> float:
        """Test accuracy of the (uncalibrated) predictions."""
        return self.metric("accuracy").value

    def metric(self, key: str, calibrated: bool = False) -> MetricRow:
        """The metric row with this ``key`` (ece, mce, classwise_ece, brier, nll, accuracy)."""
        rows = self.metrics_calibrated if calibrated else self.metrics
        for r in rows or ():
            if r.key == key:
                return r
        raise KeyError(key)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _read(x: Any, is_logits: bool | None, name: str) -> tuple[np.ndarray | None, np.ndarray, str]:
    """Return ``(logits or None, probs float64 (n, k), kind)``."""
    arr = as_float_array(x, name, ndim=(1, 2))
    is_logits = resolve_prediction_kind(arr, is_logits, name)
    if is_logits:
        z = check_logits(arr, name=name).astype(np.float64)
        return z, softmax(z, axis=1), "logits"
    p = check_probs(arr, name=name, allow_float32=False)
    return None, p / p.sum(axis=1, keepdims=True), "probs"


def _metric_rows(y: np.ndarray, p: np.ndarray, n_bins: int, confidence: float, n_boot: int,
                 seed: int) -> tuple[MetricRow, ...]:
    ci_kw = {"ci": confidence, "n_boot": n_boot, "seed": seed}
    ece = _metrics.calibration_error(y, p, n_bins=n_bins, norm="l1", kind="top-label", **ci_kw)
    mce = _metrics.calibration_error(y, p, n_bins=n_bins, norm="max", kind="top-label", **ci_kw)
    cw = _metrics.calibration_error(y, p, n_bins=n_bins, norm="l1", kind="classwise", **ci_kw)
    n = len(y)
    n_ok = round(float(_metrics.accuracy(y, p)) * n)
    return (
        MetricRow("ECE (top-label, L1)", "ece", float(ece.value), ece.ci, True,
                  f"expected calibration error, {n_bins} equal-width bins"),
        MetricRow("MCE (top-label, max)", "mce", float(mce.value), mce.ci, True,
                  "largest calibration gap of any bin"),
        MetricRow("class-wise ECE", "classwise_ece", float(cw.value), cw.ci, True,
                  "calibration error averaged over the per-class probabilities"),
        MetricRow("Brier score", "brier", float(_metrics.brier_score(y, p)), None, True,
                  "mean squared error of the probability vector"),
        MetricRow("NLL", "nll", float(_metrics.nll(y, p)), None, True, "negative log-likelihood (nats)"),
        MetricRow("accuracy", "accuracy", n_ok / n, clopper_pearson(n_ok, n, confidence), False,
                  "top-1 accuracy (exact Clopper-Pearson interval)"),
    )


def _score_rows(y: np.ndarray, p: np.ndarray, z: np.ndarray | None, notes: list[str]) -> tuple[ScoreRow, ...]:
    rows = []
    skipped = []
    for name in _scores.SCORES:
        try:
            s = np.asarray(_scores.confidence_score(name, probs=p, logits=z), dtype=np.float64)
        except FailsightInputError:
            skipped.append(name)
            continue
        if not np.isfinite(s).all():
            skipped.append(name)
            continue
        rc = _selective.risk_coverage(y, p, scores=s)
        md = _selective.misclassification_metrics(y, p, scores=s, tpr_level=0.95)
        rows.append(ScoreRow(name, md.auroc, md.aupr_error, md.fpr_at_tpr, rc.aurc, rc.eaurc))
    if skipped:
        notes.append(f"confidence scores not computed from these inputs: {', '.join(skipped)} "
                     "(they need logits; pass logits instead of probabilities to include them).")
    return tuple(rows)


# --------------------------------------------------------------------------------------------------
# analyze
# --------------------------------------------------------------------------------------------------


def analyze(
    y_test: Any,
    test_probs_or_logits: Any,
    *,
    y_cal: Any = None,
    cal: Any = None,
    is_logits: bool | None = None,
    max_risk: float = 0.02,
    confidence: float = 0.95,
    n_bins: int = 15,
    score: str = "msp",
    n_boot: int = 1000,
    calibrators: Any = None,
    seed: int = 0,
) -> ReliabilityAnalysis:
    """Analyse the reliability of predictions on a test split (and fix calibration if a calibration
    split is given).

    Args:
        y_test: ``(n,)`` integer labels of the test split.
        test_probs_or_logits: ``(n, k)`` probabilities or logits of the test split (``(n,)`` for binary).
        y_cal, cal: optional labels ``(m,)`` and predictions ``(m, k)`` of a held-out calibration split,
            same kind as the test predictions; calibrators are fitted there and the threshold is
            selected there (then checked on the test split).
        is_logits: whether the predictions are logits; ``None`` guesses (rows in [0, 1] that sum to one
            are probabilities).
        max_risk, confidence: requirement for the selective threshold: selective risk at most
            ``max_risk`` with probability ``confidence`` (also the level of all intervals).
        n_bins: bins of the binned calibration metrics and diagrams.
        score: confidence score for the risk-coverage curve and threshold (see ``scores.SCORES``).
        n_boot: bootstrap resamples for the metric intervals.
        calibrators: passed to ``compare_calibrators`` (``None``: all of them).
        seed: seed of the bootstrap and of anything random in the calibrators.

    Returns:
        :class:`ReliabilityAnalysis`. An unmeetable threshold requirement is reported in
        ``threshold_reason``, not raised; invalid input raises :class:`FailsightInputError`.
    """
    max_risk = check_fraction(max_risk, "max_risk")
    confidence = check_fraction(confidence, "confidence")
    n_bins = check_int(n_bins, "n_bins")
    n_boot = check_int(n_boot, "n_boot")
    seed = check_int(seed, "seed", minimum=0)
    if score not in _scores.SCORES:
        raise FailsightInputError(f"unknown score {score!r}; choose one of {', '.join(_scores.SCORES)}.")
    z_test, p_test, kind = _read(test_probs_or_logits, is_logits, "test predictions")
    y = check_labels(y_test, n_classes=p_test.shape[1], name="y_test")
    check_consistent_length(y, p_test, names=("y_test", "test predictions"))
    k = p_test.shape[1]
    has_cal = y_cal is not None or cal is not None
    if has_cal:
        if y_cal is None or cal is None:
            raise FailsightInputError("pass both y_cal and cal (calibration labels and predictions), or neither.")
        z_cal, p_cal, _ = _read(cal, kind == "logits", "calibration predictions")
        if p_cal.shape[1] != k:
            raise FailsightInputError(
                f"calibration predictions have {p_cal.shape[1]} classes but test predictions have {k}; "
                "they must come from the same model."
            )
        yc = check_labels(y_cal, n_classes=k, name="y_cal")
        check_consistent_length(yc, p_cal, names=("y_cal", "calibration predictions"))
    notes: list[str] = []

    metrics = _metric_rows(y, p_test, n_bins, confidence, n_boot, seed)
    diagram_before = _metrics.reliability_diagram(y, p_test, n_bins=n_bins, strategy="uniform")

    comparison = None
    best = None
    after = None
    metrics_cal = None
    diagram_after = None
    if has_cal:
        from failsight.reliability.compare import compare_calibrators

        x_cal = z_cal if z_cal is not None else p_cal
        x_test = z_test if z_test is not None else p_test
        comparison = compare_calibrators(yc, x_cal, y, x_test, calibrators=calibrators, n_bins=n_bins,
                                         ci=confidence, n_boot=n_boot, seed=seed)
        best = comparison.best
        after = best
        if best == "uncalibrated":
            # nothing beat the model: show the runner-up by the same rule (calibration split only), and say so
            ok = [r for r in comparison.rows if r.name != "uncalibrated" and r.error is None
                  and r.cv_nll is not None and np.isfinite(r.cv_nll)]
            after = min(ok, key=lambda r: r.cv_nll).name if ok else None
            notes.append("no calibrator beat the model as it is on the calibration split "
                         f"({getattr(comparison, 'best_rule', 'lowest cross-validated NLL')}), so the model is best "
                         "left as it is" + (f"; the 'after' column and diagram show {after}, the runner-up, for "
                                            "comparison." if after else "."))
        if comparison.zero_prob:
            notes.append("calibrators that gave some true class a probability of exactly 0 (infinite NLL, never "
                         f"chosen): {', '.join(comparison.zero_prob)}.")
        if after is not None:
            p_after = check_probs(comparison.fitted[after].predict_proba(x_test),
                                  name="calibrated probabilities", allow_float32=False)
            metrics_cal = _metric_rows(y, p_after, n_bins, confidence, n_boot, seed)
            diagram_after = _metrics.reliability_diagram(y, p_after, n_bins=n_bins, strategy="uniform")
    else:
        notes.append("no calibration split given: calibrators were not fitted and the threshold was "
                     "selected on the test split itself (no independent check).")

    score_rows = _score_rows(y, p_test, z_test, notes)
    conf_test = np.asarray(_scores.confidence_score(score, probs=p_test, logits=z_test), dtype=np.float64)
    rc = _selective.risk_coverage(y, p_test, scores=conf_test)
    rc = dataclasses.replace(rc, score=score)
    md = dataclasses.replace(_selective.misclassification_metrics(y, p_test, scores=conf_test), score=score)
    correct = p_test.argmax(axis=1) == y

    threshold = None
    reason = None
    on_test = None
    split = "calibration" if has_cal else "test"
    try:
        if has_cal:
            conf_cal = np.asarray(_scores.confidence_score(score, probs=p_cal, logits=z_cal), dtype=np.float64)
            threshold = _selective.select_threshold(yc, p_cal, scores=conf_cal, max_risk=max_risk,
                                                    confidence=confidence)
        else:
            threshold = _selective.select_threshold(y, p_test, scores=conf_test, max_risk=max_risk,
                                                    confidence=confidence)
        threshold = dataclasses.replace(threshold, score=score)
    except FailsightInputError as exc:
        reason = str(exc)
    if threshold is not None:
        acc = threshold.apply(conf_test)
        n_acc = int(acc.sum())
        n_err = int((~correct & acc).sum())
        on_test = ThresholdOnTest(n_acc / len(y), n_err / n_acc if n_acc else float("nan"), n_acc, n_err,
                                  independent=has_cal)

    return ReliabilityAnalysis(
        n_test=len(y), n_cal=len(yc) if has_cal else 0, n_classes=k, input_kind=kind, n_bins=n_bins,
        confidence=confidence, max_risk=max_risk, score=score, seed=seed,
        metrics=metrics, metrics_calibrated=metrics_cal, best_calibrator=best, after_calibrator=after,
        comparison=comparison,
        diagram_before=diagram_before, diagram_after=diagram_after, scores=score_rows, risk_coverage=rc,
        misclassification=md, threshold=threshold, threshold_reason=reason, threshold_split=split,
        threshold_on_test=on_test, notes=tuple(notes), test_confidence=conf_test, test_correct=correct,
    )
