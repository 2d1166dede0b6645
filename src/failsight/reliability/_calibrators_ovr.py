"""Probability-space calibrators, binary and one-vs-rest: Platt, isotonic, histogram binning, beta.

For two classes one binary map is fitted to ``P(class 1)`` and the output is ``[1 - q, q]``. For
``k > 2`` classes one binary map per class is fitted to ``(p_j, y == j)`` (one-vs-rest) and the ``k``
outputs are renormalised to sum to one (rows where all outputs are 0 become uniform). A class with no
positive (or no negative) calibration example gets the constant ``(n_pos + 1) / (n + 2)`` (Laplace) and
is listed in ``constant_classes_``, with a warning. None of these preserves the arg-max in general:
per-class maps differ, and isotonic / histogram maps are step functions that create ties.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np
from scipy.special import expit
from sklearn.isotonic import isotonic_regression

from failsight._validate import FailsightInputError, check_int
from failsight.reliability._calibrators_base import EPS, BaseCalibrator, logistic_newton, to_prob_space


class _Constant(NamedTuple):
    """Binary map of a class without positive (or negative) calibration examples."""

    value: float


def _log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


class _OneVsRestCalibrator(BaseCalibrator):
    """Fits ``_fit_binary(p, t) -> params`` per class and maps with ``_map_binary(params, p) -> q``."""

    #: whether binary problems with a single label present are an error (parametric fits diverge)
    _needs_both_labels: ClassVar[bool] = True

    def _fit_binary(self, p: np.ndarray, t: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _map_binary(self, params: Any, p: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_params(self) -> None:
        """Validate hyper-parameters before fitting (subclasses override)."""

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self._check_params()
        P = to_prob_space(x, self.input_kind_)
        k = P.shape[1]
        cols = [1] if k == 2 else list(range(k))
        n = len(y)
        params: list[Any] = []
        constant: list[int] = []
        for j in cols:
            t = (y == j).astype(np.float64)
            n_pos = int(t.sum())
            if n_pos in (0, n):
                if k == 2:
                    raise FailsightInputError(
                        f"y contains only class {int(y[0])}; {type(self).__name__} needs calibration "
                        "examples of both classes."
                    )
                constant.append(j)
                params.append(_Constant((n_pos + 1.0) / (n + 2.0)))
                continue
            params.append(self._fit_binary(P[:, j], t))
        if constant:
            warnings.warn(
                f"classes {constant} have no positive (or no negative) calibration example; "
                f"{type(self).__name__} maps them to a constant. Use a larger calibration split.",
                RuntimeWarning, stacklevel=3,
            )
        self.calibrators_ = params
        self.constant_classes_ = constant

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        P = to_prob_space(x, self.input_kind_)
        n, k = P.shape

        def one(j: int, params: Any) -> np.ndarray:
            if isinstance(params, _Constant):
                return np.full(n, params.value)
            return np.clip(self._map_binary(params, P[:, j]), 0.0, 1.0)

        if k == 2:
            q = one(1, self.calibrators_[0])
            return np.stack([1.0 - q, q], axis=1)
        Q = np.stack([one(j, prm) for j, prm in enumerate(self.calibrators_)], axis=1)
        tot = Q.sum(axis=1, keepdims=True)
        zero = tot[:, 0] <= 0
        Q[zero] = 1.0 / k
        tot[zero] = 1.0
        return Q / tot


class PlattScaling(_OneVsRestCalibrator):
    """Platt scaling: ``q = sigmoid(a * s + c)`` on the log-odds ``s = log(p / (1 - p))``.

    For binary logits ``[0, z]`` the log-odds is ``z`` itself, so this is classic Platt scaling of the
    decision value. ``C`` is the inverse L2 strength on the slope as in scikit-learn's
    ``LogisticRegression(C=...)`` (sum of log-losses + ``||a||^2 / (2 C)``; the intercept is free);
    ``C=None`` is unregularised. Fitted by damped Newton (exact). One-vs-rest for ``k > 2``, renormalised.
    Does not preserve the arg-max in general (the intercept moves the binary 0.5 threshold; OvR maps
    differ per class).

    Attributes: ``coef_`` ``(m,)`` slopes, ``intercept_`` ``(m,)`` (``m = 1`` for binary, else ``k``;
    NaN for constant classes), ``calibrators_``, ``constant_classes_``.
    """

    def __init__(self, input: str = "auto", C: float | None = None):
        self.input = input
        self.C = C

    def _check_params(self) -> None:
        if self.C is not None and not (float(self.C) > 0):
            raise FailsightInputError(f"C must be > 0 (or None for no regularisation), got {self.C!r}.")

    def _fit_binary(self, p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
        l2 = 0.0 if self.C is None or np.isinf(float(self.C)) else 1.0 / float(self.C)
        w, c, _ = logistic_newton(_log_odds(p)[:, None], t, l2=l2)
        return float(w[0]), c

    def _map_binary(self, params: tuple[float, float], p: np.ndarray) -> np.ndarray:
        return expit(params[0] * _log_odds(p) + params[1])

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        super()._fit(x, y)
        self.coef_ = np.array([np.nan if isinstance(prm, _Constant) else prm[0] for prm in self.calibrators_])
        self.intercept_ = np.array([np.nan if isinstance(prm, _Constant) else prm[1] for prm in self.calibrators_])


class BetaCalibration(_OneVsRestCalibrator):
    """Beta calibration (Kull et al. 2017): ``q = sigmoid(a ln p - b ln(1 - p) + c)`` with ``a, b >= 0``.

    Maximum likelihood under the constraints, solved exactly: the unconstrained logistic fit on the
    features ``[ln p, -ln(1 - p)]`` is kept when ``a, b >= 0``, otherwise the best feasible fit on the
    faces ``a = 0`` / ``b = 0`` / ``a = b = 0``. The map is then monotone non-decreasing in ``p``.
    Probabilities are clipped to [eps, 1 - eps]. One-vs-rest for ``k > 2``, renormalised. The arg-max is
    not preserved in general (the binary map is monotone in ``p`` but need not fix 0.5).

    Attributes: ``coef_`` ``(m, 2)`` = ``[a, b]`` per binary map, ``intercept_`` ``(m,)``,
    ``calibrators_``, ``constant_classes_``.
    """

    def __init__(self, input: str = "auto"):
        self.input = input

    @staticmethod
    def _features(p: np.ndarray) -> np.ndarray:
        q = np.clip(p, EPS, 1.0 - EPS)
        return np.stack([np.log(q), -np.log1p(-q)], axis=1)

    def _fit_binary(self, p: np.ndarray, t: np.ndarray) -> tuple[float, float, float]:
        F = self._features(p)
        best = None
        for fixed in ((), (0,), (1,), (0, 1)):
            w, c, loss = logistic_newton(F, t, fixed_zero=fixed)
            if np.all(w >= 0) and (best is None or loss < best[1]):
                best = ((float(w[0]), float(w[1]), c), loss)
            if not fixed and np.all(w >= 0):
                break  # unconstrained optimum is feasible
        assert best is not None  # the face a = b = 0 is always feasible
        return best[0]

    def _map_binary(self, params: tuple[float, float, float], p: np.ndarray) -> np.ndarray:
        a, b, c = params
        return expit(self._features(p) @ np.array([a, b]) + c)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        super()._fit(x, y)
        self.coef_ = np.array([[np.nan, np.nan] if isinstance(prm, _Constant) else prm[:2]
                               for prm in self.calibrators_])
        self.intercept_ = np.array([np.nan if isinstance(prm, _Constant) else prm[2] for prm in self.calibrators_])


class IsotonicCalibration(_OneVsRestCalibrator):
    """Isotonic regression calibration (Zadrozny & Elkan 2002): monotone non-decreasing ``p -> q``.

    Pool-adjacent-violators on the calibration points (tied scores are pooled first, weighted by their
    count), linear interpolation between the fitted points, constant beyond them (scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)``, which the tests check against).
    One-vs-rest for ``k > 2``, renormalised; no arg-max guarantee (step-like maps create ties).

    Attributes: ``calibrators_`` (per binary map: ``(x_thresholds, y_values)``), ``constant_classes_``.
    """

    _min_samples = 2

    def __init__(self, input: str = "auto"):
        self.input = input

    def _fit_binary(self, p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xs, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
        ys = np.bincount(inv, weights=t, minlength=len(xs)) / counts
        fitted = isotonic_regression(ys, sample_weight=counts.astype(np.float64), y_min=0.0, y_max=1.0,
                                     increasing=True)
        return xs, np.asarray(fitted, dtype=np.float64)

    def _map_binary(self, params: tuple[np.ndarray, np.ndarray], p: np.ndarray) -> np.ndarray:
        xs, ys = params
        return np.interp(p, xs, ys)


class HistogramBinning(_OneVsRestCalibrator):
    """Histogram binning (Zadrozny & Elkan 2001): ``q`` = fraction of positives in the bin of ``p``.

    ``n_bins`` bins of equal width on [0, 1] (``strategy="uniform"``) or of equal mass
    (``"quantile"``, edges at the calibration quantiles, outer edges 0 and 1). Bins are right-closed
    ``(a, b]`` with 0 in the first bin, as in the ECE of Guo et al. 2017. An empty bin maps to its
    midpoint. Needs at least ``n_bins`` calibration samples. One-vs-rest for ``k > 2``, renormalised;
    no arg-max guarantee.

    Floor: a bin's value is the posterior mean of its positive rate under a Beta prior centred on the
    bin's mean predicted probability ``c_b`` with ``prior_strength`` pseudo-samples (an m-estimate,
    Cestnik 1990): ``(n_pos + a c_b) / (n_b + a)``. A bin without positives then keeps a probability
    ``a c_b / (n_b + a) > 0`` instead of 0, which would make the NLL of any test row landing there
    infinite; large bins are barely changed. ``prior_strength=0`` gives the raw frequencies.

    Attributes: ``calibrators_`` (per binary map: ``(bin_edges (n_bins + 1,), bin_values (n_bins,))``),
    ``constant_classes_``.
    """

    def __init__(self, input: str = "auto", n_bins: int = 15, strategy: str = "uniform",
                 prior_strength: float = 1.0):
        self.input = input
        self.n_bins = n_bins
        self.strategy = strategy
        self.prior_strength = prior_strength

    def _check_params(self) -> None:
        check_int(self.n_bins, "n_bins")
        a = float(self.prior_strength)
        if not (np.isfinite(a) and a >= 0):
            raise FailsightInputError(f"prior_strength must be a finite number >= 0, got {self.prior_strength!r}.")
        if self.strategy not in ("uniform", "quantile"):
            raise FailsightInputError(f"strategy must be 'uniform' or 'quantile', got {self.strategy!r}.")

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        n_bins = check_int(self.n_bins, "n_bins")
        if len(y) < n_bins:
            raise FailsightInputError(
                f"HistogramBinning with n_bins={n_bins} needs at least {n_bins} calibration samples, got "
                f"{len(y)}; lower n_bins or use a larger calibration split."
            )
        super()._fit(x, y)

    def _fit_binary(self, p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_bins = int(self.n_bins)
        if self.strategy == "uniform":
            edges = np.linspace(0.0, 1.0, n_bins + 1)
        else:
            edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
            edges[0], edges[-1] = 0.0, 1.0
            edges = np.maximum.accumulate(edges)
        idx = self._bin_index(edges, p)
        counts = np.bincount(idx, minlength=n_bins)
        pos = np.bincount(idx, weights=t, minlength=n_bins)
        conf = np.bincount(idx, weights=p, minlength=n_bins) / np.maximum(counts, 1)
        a = float(self.prior_strength)
        mid = 0.5 * (edges[:-1] + edges[1:])
        values = np.where(counts > 0, (pos + a * conf) / np.maximum(counts + a, 1e-300), mid)
        return edges, values

    @staticmethod
    def _bin_index(edges: np.ndarray, p: np.ndarray) -> np.ndarray:
        # right-closed bins (a, b]; 0 falls in the first bin, 1 in the last
        idx = np.searchsorted(edges[1:-1], p, side="left")
        return idx

    def _map_binary(self, params: tuple[np.ndarray, np.ndarray], p: np.ndarray) -> np.ndarray:
        edges, values = params
        return values[self._bin_index(edges, p)]
