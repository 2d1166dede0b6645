"""``compare_calibrators``: fit post-hoc calibrators on a calibration split, score them on a test split."""

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
from failsight.reliability._calibrators_base import read_scores
from failsight.reliability.calibrators import CALIBRATORS, Uncalibrated
from failsight.types import Interval, Result

__all__ = ["BEST_RULE", "CalibratorComparison", "CalibratorRow", "compare_calibrators"]

#: How :attr:`CalibratorComparison.best` is chosen (also stored in the result).
BEST_RULE = (
    "lowest test ECE among the calibrators whose test NLL is not worse than the uncalibrated NLL "
    "(ties: lower NLL); 'uncalibrated' when no calibrator qualifies"
)

#: Matrix scaling and Dirichlet calibration have k^2 + k parameters; above this many classes they are
#: left out of the default set (their fit time dominates everything else).
MAX_CLASSES_FULL_MATRIX = 100


@dataclasses.dataclass(frozen=True)
class CalibratorRow(Result):
    """Test-split metrics of one calibrator (``None`` everywhere but ``error`` when it failed).

    Attributes:
        name: calibrator name (``"uncalibrated"`` for the baseline row).
        ece: top-label L1 ECE with ``n_bins`` equal-width bins; ``ece_ci`` its bootstrap interval.
        mce: maximum calibration error (largest bin gap), same bins.
        brier, nll, accuracy: Brier score, negative log-likelihood (nats), top-1 accuracy.
        fit_time_s: wall time of ``fit`` on the calibration split.
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

    @property
    def ok(self) -> bool:
        """Whether the calibrator was fitted and scored."""
        return self.error is None


@dataclasses.dataclass(frozen=True)
class CalibratorComparison(Result):
    """Result of :func:`compare_calibrators`: one row per calibrator, the best one, the fitted models.

    ``fitted`` maps every successfully fitted name (including ``"uncalibrated"``) to its fitted
    estimator; it is left out of ``to_dict()`` / JSON.
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
        names = [n for n in CALIBRATORS
                 if not (n in ("matrix", "dirichlet") and k > MAX_CLASSES_FULL_MATRIX)]
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
        warnings=caught,
    )


def _pick_best(rows: Sequence[CalibratorRow]) -> str:
    base = next(r for r in rows if r.name == "uncalibrated")
    assert base.nll is not None and base.ece is not None
    best = base
    for r in rows:
        if not r.ok or r is base or r.nll is None or r.ece is None:
            continue
        if not np.isfinite(r.nll) or r.nll > base.nll + 1e-12:
            continue
        if (r.ece, r.nll) < (best.ece, best.nll):  # type: ignore[operator]
            best = r
    return best.name


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
) -> CalibratorComparison:
    """Fit each calibrator on the calibration split and report its metrics on the test split.

    Args:
        y_cal, X_cal: calibration labels ``(m,)`` and scores ``(m, k)`` (logits or probabilities; ``(m,)``
            for binary), the split the calibrators are fitted on.
        y_test, X_test: test labels ``(n,)`` and scores ``(n, k)`` of the same kind, where they are scored.
        calibrators: ``None`` for all of :data:`~failsight.reliability.calibrators.CALIBRATORS` (matrix
            scaling and Dirichlet only up to 100 classes), a list of names (``"temperature"``, ...) and/or
            unfitted estimators, or a dict name -> estimator. Estimators are cloned, never fitted in place.
            An ``"uncalibrated"`` row is always included.
        n_bins: equal-width bins of ECE and MCE.
        ci: level of the bootstrap interval of the ECE (``None``: no interval).
        n_boot, seed: bootstrap resamples and seed.
        input: ``"auto"`` (detect, as the calibrators do), ``"logits"`` or ``"probs"``, for both splits.

    Returns:
        A :class:`CalibratorComparison`. A calibrator that fails to fit or predict is reported with its
        ``error`` instead of raising; ``best`` follows :data:`BEST_RULE`.

    Raises:
        FailsightInputError: inconsistent or invalid inputs (shapes, classes, kinds, labels, NaN).
    """
    n_bins = check_int(n_bins, "n_bins")
    n_boot = check_int(n_boot, "n_boot")
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
            except Exception as exc:  # reported, not raised: one broken calibrator must not stop the rest
                if name == "uncalibrated":
                    raise
                row = CalibratorRow(name, None, None, None, None, None, None, None, preserves,
                                    error=f"{type(exc).__name__}: {exc}")
            else:
                fitted[name] = est
        rows.append(row)

    return CalibratorComparison(
        rows=tuple(rows), best=_pick_best(rows), best_rule=BEST_RULE, n_cal=len(yc), n_test=len(yt),
        n_classes=k, input_kind=kind, n_bins=n_bins, ci=ci, n_boot=n_boot, seed=seed, fitted=fitted,
    )
