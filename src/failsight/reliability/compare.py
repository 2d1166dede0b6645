"""``compare_calibrators``: fit post-hoc calibrators on a calibration split, choose one there, score all on a test split.

The choice (:data:`BEST_RULE`) uses the calibration split only: each calibrator's cross-validated NLL
there, so the test split is an honest report of the chosen calibrator and permuting, or changing, the
test labels cannot change which calibrator is chosen.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone

from failsight._validate import (
    FailsightInputError,
    check_consistent_length,
    check_fraction,
    check_int,
    check_labels,
)
from failsight.reliability import metrics as _metrics
from failsight.reliability._calibrators_base import fold_ids, read_scores
from failsight.reliability.calibrators import CALIBRATORS, DEFAULT_CALIBRATORS, Uncalibrated
from failsight.types import Interval, Result

__all__ = ["BEST_RULE", "DEFAULT_CALIBRATORS", "CalibratorComparison", "CalibratorRow", "compare_calibrators"]

#: How :attr:`CalibratorComparison.best` is chosen (also stored in the result).
BEST_RULE = (
    "lowest cross-validated NLL on the calibration split (each calibrator refitted on cv-1 folds, scored "
    "on the held-out fold, regularisation fixed at the value it chose on the whole split; 'uncalibrated' "
    "scored as it is; ties go to the calibrator listed first); a calibrator that gives some held-out row "
    "a true-class probability of 0 has infinite NLL and is not chosen. The test split is never used."
)

#: Matrix scaling and Dirichlet calibration have k^2 + k parameters; above this many classes they are
#: left out of the default set (their fit time grows with k^2).
MAX_CLASSES_FULL_MATRIX = 128
#: Dirichlet calibration leaves the default set above this many classes: on an over-confident 100-class MLP
#: (log-probabilities down to -370) its regularised fit took 13 s CPU (matrix scaling, the same family on
#: logits: 4 s), its cross-validated NLL was the worst of the default set, and it was never chosen at 100
#: classes (benchmarks/calibration_real.py). At 10 classes it fits in < 1 s. Not measured in between.
MAX_CLASSES_DIRICHLET = 50


@dataclasses.dataclass(frozen=True)
class CalibratorRow(Result):
    """Test-split metrics of one calibrator (``None`` everywhere but ``error`` when it failed).

    Attributes:
        name: calibrator name (``"uncalibrated"`` for the baseline row).
        ece: top-label L1 ECE with ``n_bins`` equal-width bins; ``ece_ci`` its bootstrap interval.
        mce: maximum calibration error (largest bin gap), same bins.
        brier, nll, accuracy: Brier score, negative log-likelihood (nats; ``inf`` when some test row's
            true class got probability 0), top-1 accuracy.
        zero_prob_rows: test rows whose true class got probability exactly 0.
        cv_nll: cross-validated NLL on the calibration split (what :data:`BEST_RULE` ranks; ``inf`` when
            some held-out row got probability 0 for its true class, ``None`` when the CV failed).
        cv_zero_prob_rows: calibration rows given probability 0 for their true class when held out.
        fit_time_s: wall time of ``fit`` on the calibration split (the cross-validation not included).
        preserves_argmax: whether the method guarantees unchanged predictions (then accuracy is unchanged).
        warnings: warnings raised while fitting (e.g. no convergence).
        error: ``"ExceptionType: message"`` when fitting or predicting failed.
    """

    name: str
    ece: float | None
    ece_ci: Interval | None
    mce: float | None
    brier: float | None
    nll: float | None
    accuracy: float | None
    fit_time_s: float | None
    preserves_argmax: bool
    warnings: tuple[str, ...] = ()
    error: str | None = None
    zero_prob_rows: int | None = None
    cv_nll: float | None = None
    cv_zero_prob_rows: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the calibrator was fitted and scored."""
        return self.error is None


@dataclasses.dataclass(frozen=True)
class CalibratorComparison(Result):
    """Result of :func:`compare_calibrators`: one row per calibrator, the best one, the fitted models.

    ``fitted`` maps every successfully fitted name (including ``"uncalibrated"``) to its fitted
    estimator; it is left out of ``to_dict()`` / JSON. ``zero_prob`` names the calibrators that gave some
    row (test or held-out calibration) a true-class probability of 0: their NLL is infinite.
    """

    rows: tuple[CalibratorRow, ...]
    best: str
    best_rule: str
    n_cal: int
    n_test: int
    n_classes: int
    input_kind: str
    n_bins: int
    ci: float | None
    n_boot: int
    seed: int | None
    cv: int = 5
    zero_prob: tuple[str, ...] = ()
    fitted: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False,
                                               metadata={"exclude_json": True})

    def row(self, name: str) -> CalibratorRow:
        """The row of calibrator ``name``."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no calibrator named {name!r}; have {[r.name for r in self.rows]}")

    @property
    def names(self) -> list[str]:
        """Calibrator names in row order."""
        return [r.name for r in self.rows]


def _name_of(est: Any) -> str:
    for name, cls in CALIBRATORS.items():
        if type(est) is cls:
            return name
    return type(est).__name__


def _resolve(calibrators: Any, k: int, kind: str) -> list[tuple[str, Any]]:
    """Turn the ``calibrators`` argument into ``[(name, unfitted estimator), ...]``."""
    if calibrators is None:
        names = [n for n in DEFAULT_CALIBRATORS
                 if not (n in ("matrix", "dirichlet") and k > MAX_CLASSES_FULL_MATRIX)
                 and not (n == "dirichlet" and k > MAX_CLASSES_DIRICHLET)]
        return [(n, CALIBRATORS[n](input=kind)) for n in names]
    if isinstance(calibrators, str):
        calibrators = [calibrators]
    if isinstance(calibrators, Mapping):
        items = list(calibrators.items())
    elif isinstance(calibrators, Sequence):
        items = []
        for c in calibrators:
            items.append((c, c) if isinstance(c, str) else (_name_of(c), c))
    else:
        raise FailsightInputError(
            "calibrators must be None, a list of names / estimators, or a dict name -> estimator; got "
            f"{type(calibrators).__name__}."
        )
    out: list[tuple[str, Any]] = []
    for name, c in items:
        if isinstance(c, str):
            if c == "uncalibrated":
                continue  # always present
            if c not in CALIBRATORS:
                raise FailsightInputError(f"unknown calibrator {c!r}; choose from {sorted(CALIBRATORS)}.")
            c = CALIBRATORS[c](input=kind)
        elif not (hasattr(c, "fit") and hasattr(c, "predict_proba")):
            raise FailsightInputError(f"calibrator {name!r} has no fit/predict_proba; pass an estimator.")
        name = str(name)
        if name == "uncalibrated" or name in (n for n, _ in out):
            raise FailsightInputError(f"calibrator name {name!r} is used twice (or is reserved).")
        out.append((name, c))
    return out


def _score(name: str, q: np.ndarray, y: np.ndarray, n_bins: int, ci: float | None, n_boot: int,
           seed: int | None, fit_time: float, preserves: bool, caught: tuple[str, ...]) -> CalibratorRow:
    if ci is None:
        ece_value = float(_metrics.ece(y, q, n_bins=n_bins))
        ece_ci = None
    else:
        res = _metrics.calibration_error(y, q, n_bins=n_bins, norm="l1", kind="top-label", ci=ci,
                                         n_boot=n_boot, seed=seed)
        ece_value, ece_ci = float(res.value), res.ci
    return CalibratorRow(
        name=name, ece=ece_value, ece_ci=ece_ci, mce=float(_metrics.mce(y, q, n_bins=n_bins)),
        brier=float(_metrics.brier_score(y, q)), nll=float(_metrics.nll(y, q)),
        accuracy=float(_metrics.accuracy(y, q)), fit_time_s=fit_time, preserves_argmax=preserves,
        warnings=caught, zero_prob_rows=_metrics.nll_zero_count(y, q),
    )


def _cv_nll(est: Any, x: np.ndarray, y: np.ndarray, folds: np.ndarray, n_folds: int) -> tuple[float, int]:
    """Cross-validated NLL of a calibrator on ``(x, y)`` and the number of held-out rows given probability 0.

    ``est`` is the calibrator fitted on the whole split; each fold refits a clone with its
    ``selected_params_`` (the regularisation it chose there) so the inner selection is not repeated.
    """
    proto = clone(est)
    chosen = getattr(est, "selected_params_", None)
    if chosen:
        proto.set_params(**chosen)
    total, zeros = 0.0, 0
    for f in range(n_folds):
        held = folds == f
        if not held.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fold fit's warnings repeat the full fit's (reported already)
            q = np.asarray(clone(proto).fit(x[~held], y[~held]).predict_proba(x[held]), dtype=np.float64)
        py = q[np.arange(int(held.sum())), y[held]]
        zeros += int(np.count_nonzero(py <= 0.0))
        with np.errstate(divide="ignore"):
            total += float(-np.log(np.clip(py, 0.0, 1.0)).sum())
    return total / len(y), zeros


def _pick_best(rows: Sequence[CalibratorRow]) -> str:
    """:data:`BEST_RULE`: the lowest finite cross-validated NLL (first listed wins ties)."""
    best, best_nll = "uncalibrated", np.inf
    for r in rows:
        if not r.ok or r.cv_nll is None or not np.isfinite(r.cv_nll):
            continue
        if r.cv_nll < best_nll:
            best, best_nll = r.name, r.cv_nll
    return best


def compare_calibrators(
    y_cal: Any,
    X_cal: Any,
    y_test: Any,
    X_test: Any,
    calibrators: Any = None,
    n_bins: int = 15,
    ci: float | None = 0.95,
    n_boot: int = 1000,
    seed: int | None = 0,
    input: str = "auto",
    cv: int = 5,
) -> CalibratorComparison:
    """Fit each calibrator on the calibration split, choose one there, and report all on the test split.

    Args:
        y_cal, X_cal: calibration labels ``(m,)`` and scores ``(m, k)`` (logits or probabilities; ``(m,)``
            for binary), the split the calibrators are fitted on.
        y_test, X_test: test labels ``(n,)`` and scores ``(n, k)`` of the same kind, where they are scored.
        calibrators: ``None`` for :data:`~failsight.reliability.calibrators.DEFAULT_CALIBRATORS` (matrix
            scaling up to 128 classes, Dirichlet calibration up to 50), a list of names
            (``"temperature"``, ``"isotonic"``, any key of :data:`~failsight.reliability.calibrators.CALIBRATORS`) and/or
            unfitted estimators, or a dict name -> estimator. Estimators are cloned, never fitted in place.
            An ``"uncalibrated"`` row is always included.
        n_bins: equal-width bins of ECE and MCE.
        ci: level of the bootstrap interval of the ECE (``None``: no interval).
        n_boot, seed: bootstrap resamples and seed.
        input: ``"auto"`` (detect, as the calibrators do), ``"logits"`` or ``"probs"``, for both splits.
        cv: folds of the stratified cross-validation on the calibration split that chooses ``best``
            (folds drawn from ``seed``, 0 when ``seed`` is None).

    Returns:
        A :class:`CalibratorComparison`. A calibrator that fails to fit or predict is reported with its
        ``error`` instead of raising; ``best`` follows :data:`BEST_RULE`: the calibrator with the lowest
        cross-validated NLL on the calibration split, never a choice made on the test split.

    Raises:
        FailsightInputError: inconsistent or invalid inputs (shapes, classes, kinds, labels, NaN).
    """
    n_bins = check_int(n_bins, "n_bins")
    n_boot = check_int(n_boot, "n_boot")
    cv = check_int(cv, "cv", minimum=2)
    if ci is not None:
        ci = check_fraction(ci, "ci")
    xc, kind = read_scores(X_cal, input, "X_cal")
    xt, kind_t = read_scores(X_test, input, "X_test")
    if kind_t != kind:
        raise FailsightInputError(
            f"X_cal looks like {kind} but X_test like {kind_t}; pass the same kind of scores for both "
            "splits (or set input='logits' / input='probs')."
        )
    k = xc.shape[1]
    if xt.shape[1] != k:
        raise FailsightInputError(
            f"X_cal has {k} classes but X_test has {xt.shape[1]}; both splits need the same class columns."
        )
    yc = check_labels(y_cal, n_classes=k, name="y_cal")
    yt = check_labels(y_test, n_classes=k, name="y_test")
    check_consistent_length(yc, xc, names=("y_cal", "X_cal"))
    check_consistent_length(yt, xt, names=("y_test", "X_test"))
    todo = [("uncalibrated", Uncalibrated(input=kind)), *_resolve(calibrators, k, kind)]
    if len(yc) < 2 * cv:
        raise FailsightInputError(f"the calibration split has {len(yc)} samples, too few for {cv}-fold "
                                  f"cross-validation; use at least {2 * cv} samples or a smaller cv.")
    folds = fold_ids(yc, cv, 0 if seed is None else check_int(seed, "seed", minimum=0))

    rows: list[CalibratorRow] = []
    fitted: dict[str, Any] = {}
    for name, est in todo:
        est = clone(est)
        preserves = bool(getattr(est, "preserves_argmax", False))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                t0 = time.perf_counter()
                est.fit(xc, yc)
                fit_time = time.perf_counter() - t0
                q = np.asarray(est.predict_proba(xt), dtype=np.float64)
                row = _score(name, q, yt, n_bins, ci, n_boot, seed, fit_time, preserves,
                             tuple(dict.fromkeys(str(w.message) for w in caught)))
                if name == "uncalibrated":
                    qc = np.asarray(est.predict_proba(xc), dtype=np.float64)
                    cv_nll, cv_zero = float(_metrics.nll(yc, qc)), _metrics.nll_zero_count(yc, qc)
                else:
                    cv_nll, cv_zero = _cv_nll(est, xc, yc, folds, cv)
                row = dataclasses.replace(row, cv_nll=cv_nll, cv_zero_prob_rows=cv_zero)
            except Exception as exc:  # reported, not raised: one broken calibrator must not stop the rest
                if name == "uncalibrated":
                    raise
                row = CalibratorRow(name, None, None, None, None, None, None, None, preserves,
                                    error=f"{type(exc).__name__}: {exc}")
            else:
                fitted[name] = est
        rows.append(row)

    zero = tuple(r.name for r in rows if (r.zero_prob_rows or 0) + (r.cv_zero_prob_rows or 0) > 0)
    return CalibratorComparison(
        rows=tuple(rows), best=_pick_best(rows), best_rule=BEST_RULE, n_cal=len(yc), n_test=len(yt),
        n_classes=k, input_kind=kind, n_bins=n_bins, ci=ci, n_boot=n_boot, seed=seed, cv=cv, zero_prob=zero,
        fitted=fitted,
    )
