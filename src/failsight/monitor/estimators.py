"""Accuracy without labels: estimators fitted on a labelled reference set, applied to unlabelled windows.

Every estimator turns a window's predicted probabilities into one number, the estimated accuracy of the
model's predictions on that window, with an interval. All share one interface::

    est = ATC().fit(ref, correct_ref)        # ref: Features of the reference set, correct_ref (m,) bool
    e = est.estimate(window_features, level=0.9)
    e.value, e.low, e.high

The four estimators (definitions from the papers, implemented here on numpy):

- ``mean_confidence``: the mean maximum softmax probability; the naive baseline (right only when the
  model is calibrated on the window's distribution).
- ``calibrated_confidence`` (CBPE-style, as NannyML's confidence-based performance estimation): the mean
  of the *calibrated* probability of the predicted class, the calibrator fitted on the reference set
  (the one :func:`failsight.reliability.compare_calibrators` picks). Assumes the calibration map still
  holds on the window, which fails under shift into regions the reference never covered.
- ``atc``: average thresholded confidence (Garg et al., ICLR 2022, "Leveraging unlabeled data to predict
  out-of-distribution performance"): on the reference, learn the score threshold ``t`` for which the
  share of samples scoring above ``t`` equals the reference accuracy; the estimate on a window is the share
  of its samples above ``t``. The score is the negative entropy of the calibrated probabilities (ATC-NE,
  the paper's better variant; ``score="msp"`` gives ATC-MC). Ties at ``t`` count fractionally so the
  reference is matched exactly.
- ``doc``: difference of confidences (Guillory et al., ICCV 2021, "Predicting with confidence on unseen
  distributions"): reference accuracy minus the drop of the mean confidence from reference to window,
  ``acc_ref - (mean conf_ref - mean conf_window)``.

A fifth, window-level estimator lives in :mod:`failsight.monitor.simulate`: ``shift_regression`` learns the map
from label-free window statistics to accuracy on simulated shifts of the reference, and is the monitor's
default where it has the model and reference images (``benchmarks/monitor.py``, fourth pass: MAE 1.05 points
over MNIST's shifted windows against ATC's 11.49).

Intervals. The window's true accuracy is a mean of ``n`` Bernoulli outcomes; given the calibrated
probabilities ``q_i`` its sampling variance around the expected value is ``sum q_i (1 - q_i) / n^2``
(Poisson-binomial). The estimator's own fit on ``m`` reference samples adds ``Var(correct - s) / m``
(``s`` the estimator's per-sample score on the reference). Under shift every estimator is biased by an
amount no window statistic reveals exactly; the half-width therefore adds ``shift_slack`` times the
shift signal ``|mean conf_window - mean conf_ref| + |atc - doc|`` (how far the window's confidences moved
and how much two estimators built on different assumptions disagree; both are 0 in expectation under no
shift) and ``drift_slack`` times the drift excess: how far the largest per-class Kolmogorov-Smirnov
distance between the window's and the reference's softmax outputs exceeds its 99.9% / k null quantile
(0 under no shift with probability >= 0.99; large when the outputs moved, even where the confidences did
not - the case in which every label-free estimate is least trustworthy). The two slacks per estimator
are the pair with the narrowest intervals that cover the true accuracy on >= 90% of the tuning windows of
``benchmarks/monitor.py`` and on >= 90% of the shifted ones among them (first run: a weak MNIST CNN and the digits pooled: 8 of
the 15 corruptions, two of three label-shift strengths, half of the no-shift windows). On the held-out windows
(the other 7 corruptions, the third label shift, the other no-shift windows) ATC's intervals covered 0.953
of all windows and 0.887 of the shifted ones; the tuning put no weight on the drift excess for ATC. Re-run
with a well-trained MNIST CNN added to the pool, the tuning gives 2.9 / 0.2 for ATC, next to the defaults
3.0 / 0, which cover 0.935-0.990 of all windows per case (``benchmarks/README.md``, third pass).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
from scipy import stats

from failsight._validate import FailsightInputError, check_fraction
from failsight.types import Result

__all__ = [
    "ATC",
    "ESTIMATORS",
    "AccuracyEstimate",
    "AccuracyEstimator",
    "CalibratedConfidence",
    "DoC",
    "Features",
    "MeanConfidence",
    "features",
]


@dataclasses.dataclass(frozen=True)
class AccuracyEstimate(Result):
    """Estimated accuracy of one window by one estimator: ``value`` in [0, 1] and the interval
    ``[low, high]`` at ``level``; ``se`` is the standard error of the sampling part (without the shift
    slack), which the monitor's accuracy alert uses."""

    estimator: str
    value: float
    low: float
    high: float
    level: float
    se: float = float("nan")

    def covers(self, accuracy: float) -> bool:
        """Whether the interval contains ``accuracy``."""
        return self.low <= accuracy <= self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclasses.dataclass(frozen=True)
class Features:
    """Per-sample quantities of a set of predictions that the estimators read, each ``(n,)``.

    ``pred``: predicted class (arg-max of the model's probabilities); ``conf``: the model's probability of
    it; ``cal_conf``: the calibrated probability of that same class; ``neg_entropy``: negative entropy of
    the calibrated probabilities (higher = more confident).
    """

    pred: np.ndarray
    conf: np.ndarray
    cal_conf: np.ndarray
    neg_entropy: np.ndarray

    def __len__(self) -> int:
        return len(self.pred)

    def subset(self, mask: np.ndarray) -> Features:
        """The features of the samples where ``mask`` is true."""
        return Features(self.pred[mask], self.conf[mask], self.cal_conf[mask], self.neg_entropy[mask])


def features(probs: np.ndarray, cal_probs: np.ndarray) -> Features:
    """:class:`Features` from the model's probabilities ``(n, k)`` and calibrated probabilities ``(n, k)``."""
    pred = probs.argmax(axis=1)
    rows = np.arange(len(pred))
    conf = probs[rows, pred]
    cal_conf = cal_probs[rows, pred]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(cal_probs > 0, cal_probs * np.log(cal_probs), 0.0)
    return Features(pred, conf, cal_conf, plogp.sum(axis=1))


def sampling_se(q: np.ndarray) -> float:
    """Standard error of a window's accuracy as a mean of Bernoulli outcomes with probabilities ``q`` ``(n,)``
    (Poisson-binomial): ``sqrt(sum q (1 - q)) / n``."""
    return math.sqrt(float(np.sum(q * (1.0 - q)))) / len(q)


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2.0))


class AccuracyEstimator:
    """Base class: ``fit(reference features, correct)`` then ``estimate(window features, level)``.

    Subclasses implement :meth:`_fit` and :meth:`_scores` (per-sample scores whose mean plus
    :attr:`offset_` is the estimate). ``shift_slack`` scales the shift term of the interval (see the
    module docstring); ``None`` uses the class default tuned by ``benchmarks/monitor.py``.
    """

    name: ClassVar[str] = ""
    default_shift_slack: ClassVar[float] = 1.0
    default_drift_slack: ClassVar[float] = 1.0

    def __init__(self, shift_slack: float | None = None, drift_slack: float | None = None) -> None:
        self.shift_slack = self.default_shift_slack if shift_slack is None else float(shift_slack)
        self.drift_slack = self.default_drift_slack if drift_slack is None else float(drift_slack)
        for what, v in (("shift_slack", self.shift_slack), ("drift_slack", self.drift_slack)):
            if not (math.isfinite(v) and v >= 0):
                raise FailsightInputError(f"{what} must be a finite number >= 0, got {v!r}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shift_slack={self.shift_slack:g}, drift_slack={self.drift_slack:g})"

    # -- subclass hooks -------------------------------------------------------------------------------
    def _fit(self, ref: Features, correct: np.ndarray) -> None:
        """Learn what the estimator needs from the reference (default: nothing)."""

    def _scores(self, f: Features) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public -----------------------------------------------------------------------------------------
    def fit(self, ref: Features, correct: Any) -> AccuracyEstimator:
        """Fit on the reference set's :class:`Features` and its correctness ``(m,)`` (bool)."""
        correct = np.asarray(correct, dtype=bool)
        if len(correct) != len(ref) or len(ref) < 2:
            raise FailsightInputError(
                f"{self.name}: need at least 2 reference samples with one correctness flag each, got "
                f"{len(ref)} samples and {len(correct)} flags.")
        self.offset_ = 0.0
        self.reference_accuracy_ = float(correct.mean())
        self.reference_mean_conf_ = float(ref.conf.mean())
        self._fit(ref, correct)
        s = self._scores(ref)
        self.offset_ = self.reference_accuracy_ - float(s.mean()) if self._matches_reference() else 0.0
        resid = correct - (s + self.offset_)
        self.reference_var_ = float(resid.var()) / len(correct)
        return self

    def _matches_reference(self) -> bool:
        """Whether the estimate is anchored to the reference accuracy (DoC, ATC) or not (confidences)."""
        return False

    def point(self, f: Features) -> float:
        """The point estimate for a window (``nan`` for an empty one)."""
        if len(f) == 0:
            return float("nan")
        return float(np.clip(self._scores(f).mean() + self.offset_, 0.0, 1.0))

    def estimate(self, f: Features, level: float = 0.9, shift_signal: float = 0.0,
                 drift_excess: float = 0.0) -> AccuracyEstimate:
        """Estimate and interval at ``level`` for a window with :class:`Features` ``f``.

        ``shift_signal`` and ``drift_excess`` (>= 0) widen the interval by ``shift_slack * shift_signal +
        drift_slack * drift_excess`` (see the module docstring; the :class:`~failsight.monitor.Monitor`
        computes both)."""
        if not hasattr(self, "offset_"):
            raise FailsightInputError(f"the {self.name} estimator is not fitted; call fit(reference, correct) first.")
        level = check_fraction(level, "level")
        value = self.point(f)
        if not math.isfinite(value):
            return AccuracyEstimate(self.name, value, float("nan"), float("nan"), level)
        q = f.cal_conf
        se = math.sqrt(sampling_se(q) ** 2 + self.reference_var_)
        half = _z(level) * se + self.shift_slack * max(0.0, shift_signal) + self.drift_slack * max(0.0, drift_excess)
        return AccuracyEstimate(self.name, value, max(0.0, value - half), min(1.0, value + half), level, se)


class MeanConfidence(AccuracyEstimator):
    """Mean maximum softmax probability (naive baseline)."""

    name = "mean_confidence"
    default_shift_slack = 2.9
    default_drift_slack = 0.0

    def _scores(self, f: Features) -> np.ndarray:
        return f.conf


class CalibratedConfidence(AccuracyEstimator):
    """Mean calibrated probability of the predicted class (CBPE-style)."""

    name = "calibrated_confidence"
    default_shift_slack = 2.9
    default_drift_slack = 0.2

    def _scores(self, f: Features) -> np.ndarray:
        return f.cal_conf


class DoC(AccuracyEstimator):
    """Difference of confidences: ``acc_ref - (mean conf_ref - mean conf_window)`` (Guillory et al. 2021)."""

    name = "doc"
    default_shift_slack = 2.9
    default_drift_slack = 0.0

    def _matches_reference(self) -> bool:
        return True

    def _scores(self, f: Features) -> np.ndarray:
        return f.conf


class ATC(AccuracyEstimator):
    """Average thresholded confidence (Garg et al. 2022): share of the window scoring above the threshold
    learnt on the reference. ``score``: ``"neg_entropy"`` (ATC-NE, default) or ``"msp"`` (ATC-MC), both
    of the calibrated probabilities."""

    name = "atc"
    default_shift_slack = 3.0
    default_drift_slack = 0.0

    def __init__(self, score: str = "neg_entropy", shift_slack: float | None = None,
                 drift_slack: float | None = None) -> None:
        if score not in ("neg_entropy", "msp"):
            raise FailsightInputError(f"unknown ATC score {score!r}; use 'neg_entropy' or 'msp'.")
        self.score = score
        super().__init__(shift_slack, drift_slack)

    def __repr__(self) -> str:
        return f"ATC(score={self.score!r}, shift_slack={self.shift_slack:g}, drift_slack={self.drift_slack:g})"

    def _raw(self, f: Features) -> np.ndarray:
        return f.neg_entropy if self.score == "neg_entropy" else f.cal_conf

    def _fit(self, ref: Features, correct: np.ndarray) -> None:
        s = np.sort(self._raw(ref))
        m = len(s)
        n_above = round(self.reference_accuracy_ * m)  # this many reference samples must score above t
        if n_above >= m:
            self.threshold_, self.tie_weight_ = -np.inf, 0.0
            return
        t = float(s[m - n_above - 1])
        above = np.count_nonzero(s > t)
        ties = np.count_nonzero(s == t)
        self.threshold_ = t
        # ties at t count with the weight that reproduces the reference accuracy exactly
        self.tie_weight_ = float(np.clip((self.reference_accuracy_ * m - above) / ties, 0.0, 1.0))

    def _scores(self, f: Features) -> np.ndarray:
        s = self._raw(f)
        return (s > self.threshold_) + self.tie_weight_ * (s == self.threshold_)


#: Registry of the estimators by name.
ESTIMATORS: dict[str, type[AccuracyEstimator]] = {
    cls.name: cls for cls in (MeanConfidence, CalibratedConfidence, ATC, DoC)
}
