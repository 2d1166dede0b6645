"""Shared machinery of the post-hoc calibrators: input reading, softmax helpers, the estimator base class.

Every calibrator accepts either logits or probabilities (``input="auto"|"logits"|"probs"``) and works
internally in one of two spaces:

- *logit space* (temperature, vector, matrix scaling): logits as given, or ``log(p)`` when given
  probabilities (clipped at float64 machine epsilon, the same floor netcal and scikit-learn use);
- *probability space* (Platt, isotonic, histogram binning, beta): probabilities as given, or
  ``softmax(logits)`` when given logits.

Dirichlet calibration always works on log-probabilities (``log_softmax`` of logits).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_labels,
    check_logits,
    check_probs,
    looks_like_probs,
)

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs (float64 machine epsilon).
EPS = float(np.finfo(np.float64).eps)

_INPUT_KINDS = ("auto", "logits", "probs")


def read_scores(X: Any, kind: str, name: str = "X") -> tuple[np.ndarray, str]:
    """Validate calibrator input; returns ``(array (n, k), kind)`` with kind ``"logits"`` or ``"probs"``.

    A 1-D input is binary: probabilities of class 1 become ``[1 - p, p]``, logits ``z`` become ``[0, z]``.
    Logits keep a float32 dtype (the temperature-scaling kernel reads it directly); everything else is
    float64.
    """
    if kind not in _INPUT_KINDS:
        raise FailsightInputError(f"input must be one of {_INPUT_KINDS}, got {kind!r}.")
    arr = as_float_array(X, name, ndim=(1, 2))
    if kind == "auto":
        kind = "probs" if looks_like_probs(arr) else "logits"
    if kind == "probs":
        return check_probs(arr, name=name, allow_float32=False), kind
    if arr.ndim == 2 and arr.shape[1] >= 2:  # already validated: skip a second finiteness pass
        return arr, kind
    return check_logits(arr, name=name), kind


def softmax(s: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(n, k)`` scores in float64 (a new array)."""
    out = np.array(s, dtype=np.float64, copy=True)
    out -= out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def log_softmax(s: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``(n, k)`` scores in float64 (a new array)."""
    out = np.array(s, dtype=np.float64, copy=True)
    out -= out.max(axis=1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def to_logit_space(x: np.ndarray, kind: str) -> np.ndarray:
    """Logits as given (float32 kept), or ``log(clip(p, EPS))`` for probabilities."""
    if kind == "logits":
        return x
    return np.log(np.clip(x, EPS, None, dtype=np.float64))


def to_log_probs(x: np.ndarray, kind: str) -> np.ndarray:
    """``log_softmax`` of logits, or ``log(clip(p, EPS))`` of probabilities; float64 ``(n, k)``."""
    if kind == "logits":
        return log_softmax(x)
    return np.log(np.clip(x, EPS, None, dtype=np.float64))


def to_prob_space(x: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities as given, or ``softmax(logits)``; float64 ``(n, k)``."""
    if kind == "probs":
        return np.asarray(x, dtype=np.float64)
    return softmax(x)


def fold_ids(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold ``0..n_folds-1`` of each row ``(n,)``, stratified by label: the rows of each class, in a random
    order drawn from ``seed``, are dealt round-robin (classes one after another), so every fold holds each
    class in proportion and fold sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # classes grouped, random order inside each
    folds = np.empty(len(y), dtype=np.int64)
    folds[order] = np.arange(len(y)) % n_folds
    return folds


class BaseCalibrator(BaseEstimator):
    """Base class: validates inputs, records the input kind and class count, dispatches to ``_fit``.

    Subclasses implement ``_fit(X, y)`` and ``_predict_proba(X)`` where ``X`` is the validated
    ``(n, k)`` array in the kind recorded in ``input_kind_`` and ``y`` are int64 labels.
    """

    #: Whether the method never changes the arg-max of a row (checked by the tests).
    preserves_argmax: ClassVar[bool] = False
    #: Smallest number of calibration samples the method accepts.
    _min_samples: ClassVar[int] = 2

    def fit(self, X: Any, y: Any) -> BaseCalibrator:
        """Fit on calibration scores ``X`` ``(n, k)`` (or ``(n,)`` binary) and labels ``y`` ``(n,)``."""
        x, kind = read_scores(X, self.input, "X")
        k = x.shape[1]
        y = check_labels(y, n_classes=k, name="y")
        check_consistent_length(x, y, names=("X", "y"))
        if len(y) < self._min_samples:
            raise FailsightInputError(
                f"{type(self).__name__} needs at least {self._min_samples} calibration samples, got "
                f"{len(y)}; use a larger calibration split."
            )
        self.input_kind_ = kind
        self.n_classes_ = k
        self.classes_ = np.arange(k)
        try:
            self._fit(x, y)
        except BaseException:
            for attr in ("input_kind_", "n_classes_", "classes_"):  # do not look fitted after a failure
                self.__dict__.pop(attr, None)
            raise
        return self

    def _read_predict_input(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "input_kind_")
        if self.input == "auto":
            x, kind = read_scores(X, "auto", "X")
            if kind != self.input_kind_:
                raise FailsightInputError(
                    f"{type(self).__name__} was fitted on {self.input_kind_} (detected by input='auto') but X "
                    f"at predict time looks like {kind}. Pass the same kind of scores as at fit time, or "
                    "set input='logits' / input='probs' explicitly."
                )
        else:
            x, kind = read_scores(X, self.input_kind_, "X")
        if x.shape[1] != self.n_classes_:
            raise FailsightInputError(
                f"X has {x.shape[1]} classes but {type(self).__name__} was fitted on {self.n_classes_}; "
                "pass scores for the same classes, in the same column order, as at fit time."
            )
        return x

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities ``(n, k)`` float64 for scores ``X`` ``(n, k)`` (or ``(n,)`` binary)."""
        return self._predict_proba(self._read_predict_input(X))

    def predict(self, X: Any) -> np.ndarray:
        """Arg-max class ``(n,)`` of the calibrated probabilities."""
        return self.predict_proba(X).argmax(axis=1)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def logistic_newton(F: np.ndarray, t: np.ndarray, l2: float = 0.0, fixed_zero: tuple[int, ...] = (),
                    max_iter: int = 100, tol: float = 1e-10) -> tuple[np.ndarray, float, float]:
    """Binary logistic regression with intercept by damped Newton; few features only.

    Minimises ``sum_i logloss(t_i, F_i @ w + c) + l2 / 2 * ||w||^2`` (the intercept is not penalised,
    as in scikit-learn, where ``l2 = 1 / C``). ``F`` is ``(n, d)``, ``t`` is ``(n,)`` in {0, 1}.
    Coefficients listed in ``fixed_zero`` are held at 0. Returns ``(w (d,), c, loss)``.
    """
    n, d = F.shape
    free = np.array([j for j in range(d) if j not in fixed_zero], dtype=np.int64)
    A = np.empty((n, len(free) + 1))
    A[:, :-1] = F[:, free]
    A[:, -1] = 1.0
    pen = np.full(len(free) + 1, float(l2))
    pen[-1] = 0.0
    theta = np.zeros(len(free) + 1)
    tpos = t.astype(np.float64)

    def loss_of(th: np.ndarray) -> float:
        eta = A @ th
        # logloss = log(1 + exp(eta)) - t * eta, computed stably
        return float(np.sum(np.logaddexp(0.0, eta) - tpos * eta) + 0.5 * np.sum(pen * th * th))

    loss = loss_of(theta)
    for _ in range(max_iter):
        eta = A @ theta
        p = expit(eta)
        grad = A.T @ (p - tpos) + pen * theta
        wgt = p * (1.0 - p)
        H = (A * wgt[:, None]).T @ A + np.diag(pen) + 1e-12 * np.eye(len(theta))
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:  # pragma: no cover - singular only for degenerate data
            step = np.linalg.lstsq(H, grad, rcond=None)[0]
        lam = 1.0
        while True:
            cand = theta - lam * step
            new_loss = loss_of(cand)
            if new_loss <= loss + 1e-4 * lam * float(grad @ -step) or lam < 1e-10:
                break
            lam *= 0.5
        if new_loss > loss:  # no further progress possible in floating point
            break
        theta, loss = cand, new_loss
        if np.max(np.abs(lam * step)) <= tol * (1.0 + np.max(np.abs(theta))):
            break
    w = np.zeros(d)
    w[free] = theta[:-1]
    return w, float(theta[-1]), loss
