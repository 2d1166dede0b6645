"""Conformal prediction sets: which classes are still plausible, with a coverage guarantee.

:class:`ConformalClassifier` turns any classifier's probabilities (or logits) into prediction sets
``C(x) ⊆ {0..k-1}`` such that, for exchangeable calibration and test data,

    1 − α  ≤  P(y ∈ C(x))  ≤  1 − α + 1/(n + 1)

(the upper bound needs continuous scores: ``lac`` on real-valued probabilities, ``aps``/``raps`` with
``randomized=True``). Split conformal, three non-conformity scores (higher = less plausible):

* ``"lac"`` (Sadinle, Lei & Wasserman 2019, *least ambiguous classifier*): ``s(x, y) = 1 − p_y``. Smallest
  average sets; coverage is marginal, so hard inputs are under-covered and easy ones over-covered.
* ``"aps"`` (Romano, Sesia & Candès 2020, *adaptive prediction sets*): the probability mass of the classes
  ranked above ``y`` plus ``p_y`` (times ``u ~ U(0, 1)`` when ``randomized``). Sets grow with the input's
  difficulty.
* ``"raps"`` (Angelopoulos, Bates, Malik & Jordan 2021): APS plus ``lam · max(0, rank(y) − k_reg)``, which
  penalises long tails of tiny probabilities and gives smaller, still adaptive sets.

The threshold ``quantile_`` is the exact ⌈(n+1)(1−α)⌉-th smallest of the ``n`` calibration scores (an order
statistic, not an interpolated quantile; ``(n+1)(1−α)`` is rounded to 9 decimals before the ceiling so that
``α = 0.1, n = 99`` gives 90, not 91, in floating point). A set is ``{y : s(x, y) ≤ quantile_}``. This is the
order statistic of split conformal prediction, and MAPIE 1.6 computes the same one
(``np.quantile(s, ⌈(n+1)(1−α)⌉/n, method="lower")``; the test suite checks it on a grid of ``(n, α)``). Its
earlier form ``np.quantile(s, (n+1)(1−α)/n, method="higher")``, the off-by-one reported in MAPIE PR #973, returned
one order statistic too high for many ``(n, α)`` (about one cell in five for n ≤ 200): conservative sets, never
anti-conservative. We are on the exact side. Where the two libraries'
definitions coincide the sets are identical (``lac``; randomised ``aps`` given the same uniforms); see
``benchmarks/conformal.py``.

For ``aps``/``raps`` with ``randomized=False`` the set also keeps the class whose score first exceeds the
threshold (Romano et al.'s non-randomised APS; RAPS without zero sets; MAPIE's ``include_last_label=True``), so it
always holds the top class. It is a superset of ``{y : s(x, y) ≤ quantile_}``: coverage ≥ 1 − α, often well above
(conservative). ``randomized=True`` gives coverage inside the band, at the price of occasional empty sets.

``class_conditional=True`` calibrates one threshold per class on that class's calibration samples
(Mondrian conformal), which guarantees ``P(y ∈ C(x) | y = c) ≥ 1 − α`` for every class ``c`` at the price of
larger sets for hard classes.

Ties: a class's rank is ``1 + #{classes with strictly larger probability}`` and the mass "above" it sums
those classes only, so tied classes get equal scores and enter or leave a set together.

Sets can be empty (``lac``, or randomised ``aps``/``raps``: ``s(x, y) > quantile_`` for every ``y``): the input
looks less typical than all but an α share of the calibration data. ``set_sizes`` counts them; the guarantee
accounts for them.

numpy only (no torch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from failsight._stats import clopper_pearson
from failsight._validate import (
    PROB_SUM_ATOL,
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_fraction,
    check_labels,
    check_probs,
    looks_like_probs,
    to_numpy,
)
from failsight.types import Interval, Result

__all__ = [
    "CONFORMAL_METHODS",
    "ConformalAnalysis",
    "ConformalClassifier",
    "conformal_analysis",
    "conformal_order_statistic",
    "coverage",
    "min_calibration_size",
    "set_sizes",
]

#: Non-conformity scores :class:`ConformalClassifier` knows.
CONFORMAL_METHODS = ("lac", "aps", "raps")

#: RAPS penalties tried when ``lam="auto"`` (the grid of Angelopoulos et al. 2021 and MAPIE).
RAPS_LAMBDA_GRID = (0.001, 0.01, 0.1, 0.2, 0.5)

#: Rows per block in ``predict_sets`` (bounds the working memory to a few blocks of ``(rows, k)`` floats).
_BLOCK_ROWS = 8192


# ==================================================================================== order statistic


def conformal_order_statistic(n: int, alpha: float) -> int:
    """The rank ``⌈(n+1)(1−α)⌉`` (1-based) of the calibration score used as the conformal threshold.

    ``(n+1)(1−α)`` is rounded to 9 decimals before the ceiling, so that an exact integer in real arithmetic
    (``n = 99, α = 0.1`` → 90) is not pushed one up by floating-point error. May exceed ``n`` when ``n`` is
    too small for ``α`` (see :func:`min_calibration_size`).
    """
    return math.ceil(round((n + 1) * (1.0 - alpha), 9))


def min_calibration_size(alpha: float) -> int:
    """The smallest ``n`` with ``⌈(n+1)(1−α)⌉ ≤ n``: fewer calibration scores cannot give a finite threshold.

    That is ``n ≥ (1−α)/α``, e.g. 9 for α = 0.1, 19 for α = 0.05, 99 for α = 0.01.
    """
    alpha = check_fraction(alpha, "alpha")
    n = max(1, math.floor((1.0 - alpha) / alpha) - 1)
    while conformal_order_statistic(n, alpha) > n:
        n += 1
    return n


def _kth_smallest(s: np.ndarray, k: int) -> float:
    """The ``k``-th smallest (1-based) of ``s`` in O(n) (``np.partition``)."""
    return float(np.partition(s, k - 1)[k - 1])


# ==================================================================================== scores


def _softmax(z: np.ndarray) -> np.ndarray:
    out = np.array(z, dtype=np.float64, copy=True)
    out -= out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _read(x: Any, kind: str, name: str) -> np.ndarray:
    """Validated probabilities ``(n, k)`` from probabilities or logits (float32 kept, 1-D = binary).

    A 2-D float array is checked in three passes (min, max, row sums) rather than the generic helpers' six: NaN
    and ±inf show up in the min or max, and the same min/max/sums decide "auto" and validate probabilities with
    the tolerance and messages of :func:`failsight._validate.check_probs`."""
    if kind not in ("auto", "probs", "logits"):
        raise FailsightInputError(f"input must be 'auto', 'probs' or 'logits', got {kind!r}.")
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.dtype not in (np.float32, np.float64) or arr.size == 0:
        arr = as_float_array(arr, name, ndim=(1, 2))
        if kind == "auto":
            kind = "probs" if looks_like_probs(arr) else "logits"
        if kind == "probs":
            return check_probs(arr, name=name)
    else:
        mn, mx = float(arr.min()), float(arr.max())
        if not (np.isfinite(mn) and np.isfinite(mx)):
            bad = int((~np.isfinite(arr)).sum())
            raise FailsightInputError(f"{name} contains {bad} NaN/inf value(s); remove or impute them before calling.")
        if arr.shape[1] < 2:
            raise FailsightInputError(f"{name} has {arr.shape[1]} column; need at least 2 classes.")
        in_range = mn >= 0 and mx <= 1
        if kind != "logits" and in_range:
            dev = np.abs(arr.sum(axis=1, dtype=np.float64) - 1.0)
            worst = float(dev.max())
            if worst <= PROB_SUM_ATOL:
                return arr
            if kind == "probs":
                i = int(dev.argmax())
                raise FailsightInputError(
                    f"rows of {name} must sum to 1 (tolerance {PROB_SUM_ATOL:g}); row {i} deviates by {worst:.6g}. "
                    "Normalise with p / p.sum(axis=1, keepdims=True) or apply a softmax to logits.")
        elif kind == "probs":
            return check_probs(arr, name=name)  # raises with the values-outside-[0, 1] message
    if arr.ndim == 1:
        arr = np.stack([np.zeros_like(arr), arr], axis=1)
    if arr.shape[1] < 2:
        raise FailsightInputError(f"{name} has {arr.shape[1]} column; need at least 2 classes.")
    return _softmax(arr)


def _true_label_scores(p: np.ndarray, y: np.ndarray, method: str, u: np.ndarray | None, k_reg: int,
                       lam: float) -> np.ndarray:
    """Non-conformity score of each row's true label, float64 ``(n,)``; O(n·k), no sort."""
    py = p[np.arange(len(y)), y].astype(np.float64)
    if method == "lac":
        return 1.0 - py
    above = p > py[:, None]
    before = np.where(above, p, 0).sum(axis=1, dtype=np.float64)
    s = before + (py if u is None else u * py)
    if method == "raps":
        rank = above.sum(axis=1) + 1
        s += lam * np.maximum(rank - k_reg, 0)
    return s


def _sorted_scores(vals: np.ndarray, u: np.ndarray | None, method: str, k_reg: int, lam: float) -> np.ndarray:
    """Scores of the classes of each row in descending-probability order; ``vals`` ``(m, M)`` sorted descending
    (the top ``M`` classes of each row, or all of them)."""
    v = vals.astype(np.float64, copy=False)
    csum = np.cumsum(v, axis=1)
    before = csum - v
    m, width = v.shape
    pos = np.broadcast_to(np.arange(width), (m, width))
    tie = np.zeros((m, width), dtype=bool)
    tie[:, 1:] = v[:, 1:] == v[:, :-1]
    if tie.any():  # tied classes take the mass/rank of the first of their group
        start = np.maximum.accumulate(np.where(tie, 0, pos), axis=1)
        before = np.take_along_axis(before, start, axis=1)
        pos = start
    s = before + (v if u is None else u[:, None] * v)
    if method == "raps":
        s += lam * np.maximum(pos + 1 - k_reg, 0)
    return s


# ==================================================================================== estimator


class ConformalClassifier(BaseEstimator):
    """Split-conformal prediction sets from a classifier's probabilities or logits (see the module docstring).
    A scikit-learn estimator (``get_params``/``set_params``/``clone``, pickles).

    Parameters
    ----------
    method : ``"lac"``, ``"aps"`` or ``"raps"``.
    alpha : miscoverage level in (0, 1): sets contain the true class for at least ``1 − alpha`` of inputs.
    class_conditional : one threshold per class (coverage ≥ 1 − α within every class).
    randomized : ``aps``/``raps`` only: draw ``u ~ U(0, 1)`` per sample so that coverage is exactly in the
        finite-sample band (otherwise sets keep the crossing class: never empty, coverage ≥ 1 − α and often
        conservative). Ignored by ``lac`` (its scores are already continuous).
    seed : seeds ``u`` and RAPS's tuning split; sets are reproducible for a given seed and row order.
    k_reg, lam : RAPS's regularisation. ``"auto"`` (default) follows Angelopoulos et al. (2021, App. E):
        ``tune_fraction`` of the calibration data (seeded) is set aside; ``k_reg`` is the ⌈(m+1)(1−α)⌉-th
        smallest rank of the true class on it, and ``lam`` the value of :data:`RAPS_LAMBDA_GRID` giving the
        smallest mean set size on it (ties: the smaller ``lam``); the remaining calibration data gives the
        threshold, so the guarantee is untouched. Pass numbers (e.g. ``k_reg=1, lam=0.01``) to use all the
        data for the threshold.
    tune_fraction : share of the calibration data used to tune RAPS when ``k_reg`` or ``lam`` is ``"auto"``.
    input : ``"auto"`` (probabilities when rows lie in [0, 1] and sum to 1, logits otherwise), ``"probs"``
        or ``"logits"`` (softmax taken).

    Attributes
    ----------
    quantile_ : float threshold, or float64 ``(k,)`` per class with ``class_conditional``.
    n_calibration_ : calibration samples behind the threshold (per class ``(k,)`` with ``class_conditional``).
    k_reg_, lam_ : RAPS regularisation in use (``None`` for other methods).
    n_classes_ : number of classes.
    """

    def __init__(self, method: str = "lac", alpha: float = 0.1, *, class_conditional: bool = False,
                 randomized: bool = False, seed: int = 0, k_reg: int | str = "auto", lam: float | str = "auto",
                 tune_fraction: float = 0.2, input: str = "auto") -> None:
        self.method = method
        self.alpha = alpha
        self.class_conditional = class_conditional
        self.randomized = randomized
        self.seed = seed
        self.k_reg = k_reg
        self.lam = lam
        self.tune_fraction = tune_fraction
        self.input = input

    def _check_params(self) -> tuple[str, float]:
        method = str(self.method).lower()
        if method not in CONFORMAL_METHODS:
            raise FailsightInputError(f"method must be one of {CONFORMAL_METHODS}, got {self.method!r}.")
        alpha = check_fraction(self.alpha, "alpha")
        if method == "raps":
            if not (self.k_reg == "auto" or (isinstance(self.k_reg, (int, np.integer)) and self.k_reg >= 0)):
                raise FailsightInputError(f"k_reg must be 'auto' or an integer >= 0, got {self.k_reg!r}.")
            if not (self.lam == "auto" or (np.isscalar(self.lam) and float(self.lam) >= 0)):
                raise FailsightInputError(f"lam must be 'auto' or a number >= 0, got {self.lam!r}.")
        return method, alpha

    def _u(self, n: int, stream: int) -> np.ndarray | None:
        if not self.randomized or self.method == "lac":
            return None
        return np.random.default_rng([int(self.seed), stream]).random(n)

    # ------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any) -> ConformalClassifier:
        """Calibrate on held-out scores ``X`` ``(n, k)`` (probabilities or logits; ``(n,)`` binary) and labels
        ``y`` ``(n,)``. The data must not have been used to train the model."""
        method, alpha = self._check_params()
        p = _read(X, self.input, "X")
        y = check_labels(y, n_classes=p.shape[1], name="y")
        check_consistent_length(p, y, names=("X", "y"))
        k = p.shape[1]
        n = len(y)
        self.n_classes_ = k
        self.k_reg_ = self.lam_ = None
        u = self._u(n, 0)
        idx = np.arange(n)
        if method == "raps":
            k_reg, lam = self.k_reg, self.lam
            if k_reg == "auto" or lam == "auto":
                frac = check_fraction(self.tune_fraction, "tune_fraction")
                perm = np.random.default_rng([int(self.seed), 2]).permutation(n)
                n_tune = round(frac * n)
                tune, idx = np.sort(perm[:n_tune]), np.sort(perm[n_tune:])
                if n_tune < min_calibration_size(alpha) or len(idx) < 1:
                    raise FailsightInputError(
                        f"RAPS with k_reg/lam='auto' sets aside tune_fraction={frac:g} of the {n} calibration "
                        f"samples to tune them, {n_tune} here, fewer than the {min_calibration_size(alpha)} that "
                        f"alpha={alpha:g} needs; pass more calibration data or explicit k_reg and lam "
                        "(e.g. k_reg=1, lam=0.01).")
                k_reg, lam = self._tune_raps(p[tune], y[tune], alpha, k_reg, lam)
            self.k_reg_, self.lam_ = int(k_reg), float(lam)
        full = len(idx) == n  # no tuning split: score the array itself (a fancy-index copy costs more than the score)
        s = _true_label_scores(p if full else p[idx], y if full else y[idx], method,
                               None if u is None else u[idx], self.k_reg_ or 0, self.lam_ or 0.0)
        yc = y[idx]
        need = min_calibration_size(alpha)
        if self.class_conditional:
            counts = np.bincount(yc, minlength=k)
            short = np.flatnonzero(counts < need)
            if len(short):
                shown = ", ".join(f"class {c}: {counts[c]}" for c in short[:8]) + (" ..." if len(short) > 8 else "")
                raise FailsightInputError(
                    f"class-conditional conformal needs at least {need} calibration samples of every class for "
                    f"alpha={alpha:g} (⌈(n+1)(1−α)⌉ ≤ n), but {shown}"
                    f"{' (after setting aside the RAPS tuning share)' if len(idx) < n else ''}. Pass more "
                    "calibration data, raise alpha, or use class_conditional=False.")
            order = np.argsort(yc, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(counts)])
            ss = s[order]
            q = np.array([_kth_smallest(ss[bounds[c]:bounds[c + 1]], conformal_order_statistic(int(counts[c]), alpha))
                          for c in range(k)])
            self.quantile_ = q
            self.n_calibration_ = counts
        else:
            if len(s) < need:
                raise FailsightInputError(
                    f"{len(s)} calibration samples are too few for alpha={alpha:g}: the threshold is the "
                    f"⌈(n+1)(1−α)⌉-th smallest score, which exists only for n ≥ {need}"
                    f"{' (after setting aside the RAPS tuning share)' if len(s) < n else ''}. Pass at least {need} "
                    f"calibration samples (more gives coverage closer to 1−α: at most 1−α+1/(n+1)), or raise alpha "
                    f"to at least {1 / (len(s) + 1):.3g}.")
            self.quantile_ = _kth_smallest(s, conformal_order_statistic(len(s), alpha))
            self.n_calibration_ = len(s)
        self.calibration_scores_ = s
        return self

    def _tune_raps(self, p: np.ndarray, y: np.ndarray, alpha: float, k_reg: Any, lam: Any) -> tuple[int, float]:
        m = len(y)
        py = p[np.arange(m), y]
        above = p > py[:, None]
        rank = above.sum(axis=1) + 1
        if k_reg == "auto":
            k_reg = int(np.sort(rank)[min(conformal_order_statistic(m, alpha), m) - 1])
        if lam != "auto":
            return int(k_reg), float(lam)
        u = self._u(m, 3)
        base = np.where(above, p, 0).sum(axis=1, dtype=np.float64) + (py if u is None else u * py)
        pen = np.maximum(rank - k_reg, 0)
        vals = np.sort(p, axis=1)[:, ::-1]  # sorted once for every candidate
        best, best_size = RAPS_LAMBDA_GRID[0], np.inf
        for cand in RAPS_LAMBDA_GRID:
            q = _kth_smallest(base + cand * pen, conformal_order_statistic(m, alpha))
            size = float(_set_length(vals, u, "raps", k_reg, cand, q).mean())  # ties aside, the set sizes
            if size < best_size:
                best, best_size = cand, size
        return int(k_reg), float(best)

    # ------------------------------------------------------------------------------------- predict
    def predict_sets(self, X: Any) -> np.ndarray:
        """Prediction sets, bool ``(n, k)``: ``sets[i, j]`` says class ``j`` is in the set of input ``i``."""
        if not hasattr(self, "quantile_"):
            raise FailsightInputError("this ConformalClassifier is not fitted yet; call fit(X_cal, y_cal) first.")
        p = _read(X, self.input, "X")
        if p.shape[1] != self.n_classes_:
            raise FailsightInputError(f"X has {p.shape[1]} classes but the conformal sets were calibrated on "
                                      f"{self.n_classes_}; pass scores of the same model.")
        method = str(self.method).lower()
        u = self._u(len(p), 1)
        return self._sets(p, self.quantile_, method, u, self.k_reg_ or 0, self.lam_ or 0.0)

    def predict(self, X: Any) -> np.ndarray:
        """Alias of :meth:`predict_sets`."""
        return self.predict_sets(X)

    @staticmethod
    def _sets(p: np.ndarray, q: Any, method: str, u: np.ndarray | None, k_reg: int, lam: float) -> np.ndarray:
        """Sets for probabilities ``p`` ``(n, k)`` at threshold(s) ``q``; ``u`` ``None`` = non-randomised."""
        n, k = p.shape
        q_arr = np.asarray(q, dtype=np.float64)
        if method == "lac":  # {j : 1 − p_j ≤ q} = {j : p_j ≥ t}, t found once per threshold in p's dtype
            return p >= _lac_threshold(q_arr, p.dtype)
        if q_arr.ndim:
            return _sets_per_class(p, q_arr, method, u, k_reg, lam)
        # APS/RAPS scores grow with the rank, so a set is the top-c classes of its row (c from the sorted values),
        # and ``p >= p_(c)`` puts it back in column order with tied classes together. Most sets are short: the
        # top 32 values (np.partition) decide most rows; the rest are sorted fully.
        out = np.empty((n, k), dtype=bool)
        width = k if k <= 64 else 32
        for a in range(0, n, _BLOCK_ROWS):
            b = min(n, a + _BLOCK_ROWS)
            blk = p[a:b]
            ub = None if u is None else u[a:b]
            v = np.empty(b - a, dtype=p.dtype)
            todo = np.arange(b - a)
            if width < k:
                vals = np.sort(np.partition(blk, k - width, axis=1)[:, k - width:], axis=1)[:, ::-1]
                c = _set_length(vals, ub, method, k_reg, lam, float(q_arr))
                ok = c < width  # the set ends inside the top `width` (the crossing class included)
                v[ok] = _cut_value(vals[ok], c[ok])
                todo = todo[~ok]
            if len(todo):
                vals = np.sort(blk[todo], axis=1)[:, ::-1]
                c = _set_length(vals, None if ub is None else ub[todo], method, k_reg, lam, float(q_arr))
                v[todo] = _cut_value(vals, c)
            np.greater_equal(blk, v[:, None], out=out[a:b])
        return out


def _lac_threshold(q: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The smallest value ``t`` of ``dtype`` with ``1 − float64(t) ≤ q`` (elementwise for per-class ``q``), so that
    ``p >= t`` reproduces the calibration score's arithmetic exactly without a float64 copy of ``p``."""
    dt = np.dtype(dtype)
    t = np.atleast_1d(np.asarray(1.0 - q, dtype=dt)).copy()
    for _ in range(64):  # a few ulps at most
        ok = (1.0 - t.astype(np.float64)) <= q
        lower = np.nextafter(t, np.asarray(-np.inf, dtype=dt))
        lower_ok = (1.0 - lower.astype(np.float64)) <= q
        if not ((~ok).any() or lower_ok.any()):
            break
        t = np.where(~ok, np.nextafter(t, np.asarray(np.inf, dtype=dt)), np.where(lower_ok, lower, t))
    return t.reshape(q.shape)


def _set_length(vals: np.ndarray, u: np.ndarray | None, method: str, k_reg: int, lam: float, q: float) -> np.ndarray:
    """Number of leading classes in the set, per row of descending ``vals`` ``(m, M)``: up to the first whose score
    exceeds ``q``; non-randomised sets also keep that crossing class (Romano et al.'s non-randomised APS, RAPS's
    ``allow_zero_sets=False``), so they are never empty."""
    s = np.cumsum(vals, axis=1, dtype=np.float64)
    if u is not None:
        s -= (1.0 - u)[:, None] * vals
    if method == "raps":
        s += lam * np.maximum(np.arange(1, vals.shape[1] + 1) - k_reg, 0)
    m = vals.shape[1]

    def first_over(sc: np.ndarray) -> np.ndarray:
        over = sc > q
        return np.where(over.any(axis=1), over.argmax(axis=1), m)

    c = first_over(s)
    tie = vals[:, 1:] == vals[:, :-1]
    has = tie.any(axis=1)
    if has.any():  # tied classes share the score of their group's first class: redo the rows a tie could change
        fix = np.flatnonzero(has & (np.where(has, tie.argmax(axis=1), m) <= c))
        if len(fix):
            pos = np.broadcast_to(np.arange(m), (len(fix), m))
            tf = np.zeros((len(fix), m), dtype=bool)
            tf[:, 1:] = tie[fix]
            start = np.maximum.accumulate(np.where(tf, 0, pos), axis=1)
            c[fix] = first_over(np.take_along_axis(s[fix], start, axis=1))
    if u is None:
        c = np.minimum(c + 1, vals.shape[1])
    return c


def _cut_value(vals: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The smallest value kept (``vals[i, c_i − 1]``), or ``+inf`` for an empty set."""
    v = np.full(len(c), np.inf, dtype=vals.dtype)
    nz = c > 0
    v[nz] = vals[np.flatnonzero(nz), c[nz] - 1]
    return v


def _sets_per_class(p: np.ndarray, q: np.ndarray, method: str, u: np.ndarray | None, k_reg: int,
                    lam: float) -> np.ndarray:
    """Class-conditional APS/RAPS: class ``j`` is in the set when its score is ≤ ``q_j`` (randomised), or when the
    score of the class group ranked just above it is (non-randomised: the crossing class is kept)."""
    n, k = p.shape
    out = np.empty((n, k), dtype=bool)
    for a in range(0, n, _BLOCK_ROWS):
        b = min(n, a + _BLOCK_ROWS)
        blk = p[a:b]
        o = np.argsort(-blk, axis=1, kind="stable")
        vals = np.take_along_axis(blk, o, axis=1)
        s = _sorted_scores(vals, None if u is None else u[a:b], method, k_reg, lam)
        if u is None:  # the score of the previous group (−inf for the top group), shared within a tie group
            prev = np.concatenate([np.full((b - a, 1), -np.inf), s[:, :-1]], axis=1)
            tie = np.zeros(vals.shape, dtype=bool)
            tie[:, 1:] = vals[:, 1:] == vals[:, :-1]
            start = np.maximum.accumulate(np.where(tie, 0, np.arange(k)), axis=1)
            s = np.take_along_axis(prev, start, axis=1)
        np.put_along_axis(out[a:b], o, s <= q[o], axis=1)
    return out


# ==================================================================================== set metrics


def _check_sets(sets: Any, name: str = "sets") -> np.ndarray:
    arr = np.asarray(sets.detach().cpu().numpy() if hasattr(sets, "detach") else sets)
    if arr.ndim != 2:
        raise FailsightInputError(f"{name} must be a 2-D (n, k) boolean array of prediction sets, got shape "
                                  f"{arr.shape}.")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise FailsightInputError(f"{name} must be boolean (or 0/1): sets[i, j] says class j is in set i.")
        arr = arr.astype(bool)
    return arr


def coverage(y_true: Any, sets: Any) -> float:
    """Share of samples whose true class is in its prediction set. ``y_true`` ``(n,)``, ``sets`` bool ``(n, k)``."""
    s = _check_sets(sets)
    y = check_labels(y_true, n_classes=s.shape[1])
    check_consistent_length(y, s, names=("y_true", "sets"))
    return float(s[np.arange(len(y)), y].mean())


def set_sizes(sets: Any) -> np.ndarray:
    """Number of classes in each prediction set, int64 ``(n,)`` (0 = empty set)."""
    return _check_sets(sets).sum(axis=1, dtype=np.int64)


# ==================================================================================== analysis


@dataclasses.dataclass(frozen=True)
class ConformalAnalysis(Result):
    """Conformal prediction sets of one model, evaluated on a labelled test split.

    ``coverage`` (with an exact Clopper-Pearson ``coverage_ci``) should lie in ``guarantee`` =
    ``[1 − α, 1 − α + 1/(n_cal + 1)]`` on exchangeable data; ``class_coverage`` ``(k,)`` shows which classes the
    marginal guarantee under-covers; ``size_histogram[j]`` counts test sets of size ``j`` (``0..k``);
    ``shift_coverage``: ``{"shift sN": (coverage, mean size)}`` when shifted predictions were given — where
    the guarantee breaks under shift. ``slices``: per-slice coverage (a :class:`failsight.slices.SliceReport`)
    when groups were given.
    """

    method: str
    alpha: float
    class_conditional: bool
    quantile: Any
    n_calibration: int
    n_test: int
    coverage: float
    coverage_ci: Interval
    guarantee: Interval
    mean_size: float
    empty_rate: float
    singleton_rate: float
    size_histogram: tuple[int, ...]
    class_coverage: tuple[float, ...]
    class_mean_size: tuple[float, ...]
    coverage_by_size: dict[int, float]
    shift_coverage: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    slices: Any = None
    k_reg: int | None = None
    lam: float | None = None

    @property
    def within_guarantee(self) -> bool:
        """Whether the coverage interval overlaps the guarantee band."""
        return self.coverage_ci.high >= self.guarantee.low and self.coverage_ci.low <= self.guarantee.high


def conformal_analysis(
    y_cal: Any,
    cal: Any,
    y_test: Any,
    test: Any,
    *,
    method: str = "aps",
    alpha: float = 0.1,
    class_conditional: bool = False,
    randomized: bool = True,
    seed: int = 0,
    groups: Any = None,
    shifted: dict[str, tuple[Any, Any]] | None = None,
    confidence: float = 0.95,
    **params: Any,
) -> ConformalAnalysis:
    """Calibrate :class:`ConformalClassifier` on ``(y_cal, cal)`` and evaluate its sets on ``(y_test, test)``.

    ``cal``/``test``: probabilities or logits ``(n, k)``. ``groups``: ``(n_test,)`` labels or ``{name: labels}``
    for per-slice coverage (through :func:`failsight.slices.evaluate`). ``shifted``: ``{name: (y, scores)}`` of
    shifted test data, evaluated with the same threshold. ``params``: more :class:`ConformalClassifier` options.
    """
    cc = ConformalClassifier(method, alpha, class_conditional=class_conditional, randomized=randomized, seed=seed,
                             **params).fit(cal, y_cal)
    sets = cc.predict_sets(test)
    y = check_labels(y_test, n_classes=cc.n_classes_, name="y_test")
    check_consistent_length(y, sets, names=("y_test", "test"))
    hit = sets[np.arange(len(y)), y]
    sizes = sets.sum(axis=1)
    k = cc.n_classes_
    n_cal = int(np.min(cc.n_calibration_)) if class_conditional else int(cc.n_calibration_)
    cls_n = np.bincount(y, minlength=k)
    cls_cov = np.bincount(y, weights=hit, minlength=k) / np.maximum(cls_n, 1)
    cls_size = np.bincount(y, weights=sizes, minlength=k) / np.maximum(cls_n, 1)
    cls_cov[cls_n == 0] = np.nan
    cls_size[cls_n == 0] = np.nan
    by_size = {int(s): float(hit[sizes == s].mean()) for s in np.unique(sizes)}
    shift_cov: dict[str, tuple[float, float]] = {}
    for name, (ys, ps) in (shifted or {}).items():
        ss = cc.predict_sets(ps)
        shift_cov[str(name)] = (coverage(ys, ss), float(ss.sum(axis=1).mean()))
    sl = None
    if groups is not None:
        from failsight.slices import evaluate

        sl = evaluate(y, sets, groups, metric="coverage", ci=confidence)
    return ConformalAnalysis(
        method=cc.method, alpha=float(alpha), class_conditional=bool(class_conditional),
        quantile=cc.quantile_, n_calibration=n_cal, n_test=len(y), coverage=float(hit.mean()),
        coverage_ci=clopper_pearson(int(hit.sum()), len(y), confidence),
        guarantee=Interval(1 - alpha, min(1.0, 1 - alpha + 1 / (n_cal + 1)), 1.0),
        mean_size=float(sizes.mean()), empty_rate=float((sizes == 0).mean()), singleton_rate=float((sizes == 1).mean()),
        size_histogram=tuple(int(c) for c in np.bincount(sizes, minlength=k + 1)),
        class_coverage=tuple(float(c) for c in cls_cov), class_mean_size=tuple(float(c) for c in cls_size),
        coverage_by_size=by_size, shift_coverage=shift_cov, slices=sl, k_reg=cc.k_reg_, lam=cc.lam_)
