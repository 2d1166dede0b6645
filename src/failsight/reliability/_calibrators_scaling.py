"""Logit-space calibrators: temperature, vector and matrix scaling, Dirichlet calibration."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from failsight._validate import FailsightInputError, check_int
from failsight.reliability._calibrators_base import (
    BaseCalibrator,
    softmax,
    to_log_probs,
    to_logit_space,
)

# ---------------------------------------------------------------------------------------------------
# temperature scaling

_BETA_MIN = 1e-6  # inverse temperature bounds: T in [1e-6, 1e6]
_BETA_MAX = 1e6
_SUBSAMPLE_ROWS = 4096


def _taylor_root(g: float, ks: tuple[float, ...], beta: float) -> tuple[float, float] | None:
    """Root ``delta`` of the Taylor polynomial of NLL' around ``beta``; returns ``(delta, remainder)``.

    ``NLL'(beta + d) ~ g + K2 d + K3 d^2 / 2! + ... + K6 d^5 / 5!``; the size of the last term, divided by
    ``K2``, estimates how far the polynomial root is from the true one. ``None`` when the root is not
    within 20 % of ``beta`` (outside the region where the series is trusted).
    """
    coef = np.array([g, *(kk / math.factorial(m) for m, kk in enumerate(ks, start=1))])
    dcoef = coef[1:] * np.arange(1, len(coef))
    delta = -g / ks[0]
    for _ in range(30):  # scalar Newton on the polynomial, from its linearisation
        if abs(delta) > 0.2 * beta:
            return None
        pv = np.polyval(coef[::-1], delta)
        dv = np.polyval(dcoef[::-1], delta)
        if not dv > 0:
            return None
        step = pv / dv
        delta -= step
        if abs(step) <= 1e-15 * (abs(delta) + beta):
            break
    else:  # pragma: no cover - the polynomial is monotone near its root
        return None
    return delta, abs(coef[-1] * delta ** (len(coef) - 1)) / ks[0]


def _solve_beta(z: np.ndarray, y: np.ndarray, beta: float, row_step: int, rtol: float,
                max_iter: int = 200) -> tuple[float, int]:
    """Minimise NLL(beta) over rows ``0, row_step, ...``; returns ``(beta, n_passes)``.

    Each pass gives NLL' and its next five derivatives at ``beta``. NLL is convex, so NLL' is increasing:
    every pass tightens a bracket ``[lo, hi]``. Near the root the step is the root of the degree-5 Taylor
    polynomial (a Householder step of order 5: the error goes from e to O(e^6)), accepted without a
    further pass once the series remainder is below ``rtol * beta``; far from it, a Newton step in
    ``log(beta)`` (clipped), and a geometric bisection whenever a step leaves the bracket.
    """
    from failsight.reliability._calibrators_numba import ts_cumulants

    lo, hi = _BETA_MIN, _BETA_MAX
    for it in range(1, max_iter + 1):
        g, *ks = ts_cumulants(z, y, beta, row_step)
        if g > 0:
            hi = beta
        elif g < 0:
            lo = beta
        else:
            return beta, it
        if abs(beta * g) <= 1e-13 or not ks[0] > 1e-300:
            # dNLL/dlog(beta) below 1e-13 nats: stationary for every practical purpose (also the case of
            # perfectly separated labels, where the NLL only approaches its infimum as T -> 0)
            return beta, it
        root = _taylor_root(g, tuple(ks), beta)
        if root is not None:
            delta, remainder = root
            new = beta + delta
            done = remainder <= rtol * beta or abs(delta) <= rtol * beta
        else:  # Newton in u = log(beta): dNLL/du = beta g, d2NLL/du2 = beta^2 K2 + beta g
            curv = beta * beta * ks[0] + beta * g
            du = -beta * g / curv if curv > 0 else -np.sign(g) * 1.0
            new = beta * float(np.exp(np.clip(du, -1.5, 1.5)))
            done = False
        if not lo < new < hi:
            new, done = float(np.sqrt(lo * hi)), False
        if done:
            return new, it
        beta = new
    return beta, max_iter  # pragma: no cover - converges long before


class TemperatureScaling(BaseCalibrator):
    """Temperature scaling (Guo et al. 2017): ``softmax(z / T)`` with one scalar ``T > 0``.

    Fitted by an exact 1-D convex solve of the calibration-set NLL in the inverse temperature
    ``beta = 1 / T``: one fused numba pass (float64) gives NLL' and its next five analytic derivatives,
    the step is the root of that Taylor polynomial (a safeguarded order-5 Householder step inside a
    shrinking bracket), and a strided subsample supplies the starting point, so a fit usually costs one
    or two passes over the data. It reaches the NLL optimum to ~1e-10 relative or better, where the
    widely copied ``LBFGS(lr=0.01)`` recipe stops short. ``T`` is bounded to [1e-6, 1e6] (an optimum
    outside gives a warning); when the NLL is flat to 1e-13 nats per e-fold of ``T`` (e.g. perfectly
    separated labels, whose NLL only approaches 0 as ``T -> 0``) the fit stops there.

    Preserves the arg-max of every row (dividing all logits of a row by the same ``T > 0``).

    Parameters
    ----------
    input : {"auto", "logits", "probs"}
        Kind of scores passed to ``fit``/``predict_proba``; probabilities are used through ``log(p)``.

    Attributes
    ----------
    temperature_ : float
        The fitted temperature ``T`` itself (not ``1 / T``; netcal stores the weight ``1 / T``).
    n_iter_ : int
        Passes over the full calibration set (subsample passes not counted).
    """

    preserves_argmax = True

    def __init__(self, input: str = "auto"):
        self.input = input

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        z = np.ascontiguousarray(to_logit_space(x, self.input_kind_))
        n = z.shape[0]
        beta = 1.0
        step = max(1, n // _SUBSAMPLE_ROWS)
        if step > 1:  # cheap start: solve on every step-th row, then polish on all rows
            beta, _ = _solve_beta(z, y, beta, step, rtol=1e-6)
        beta, self.n_iter_ = _solve_beta(z, y, beta, 1, rtol=1e-12)
        if beta <= _BETA_MIN * 1.0001 or beta >= _BETA_MAX * 0.9999:
            warnings.warn(
                f"the NLL-optimal temperature lies at the bound (T = {1 / beta:.3g}): the scores carry "
                "(almost) no information about the labels, or are anti-correlated with them.",
                RuntimeWarning, stacklevel=3,
            )
        self.temperature_ = float(1.0 / beta)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = to_logit_space(x, self.input_kind_)
        return softmax(np.asarray(z, dtype=np.float64) / self.temperature_)


# ---------------------------------------------------------------------------------------------------
# multinomial logistic family: vector scaling, matrix scaling (ODIR), Dirichlet calibration


def _nll_and_grad_scores(S: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of softmax(S) and its gradient w.r.t. S ``(n, k)`` (S is overwritten)."""
    n = S.shape[0]
    rows = np.arange(n)
    S -= S.max(axis=1, keepdims=True)
    sy = S[rows, y].copy()
    np.exp(S, out=S)
    tot = S.sum(axis=1)
    nll = float(np.mean(np.log(tot) - sy))
    S /= tot[:, None]
    S[rows, y] -= 1.0
    S /= n
    return nll, S


def _fit_linear_softmax(F: np.ndarray, y: np.ndarray, full_matrix: bool, reg_offdiag: float,
                        reg_intercept: float, reg_l2: float, max_iter: int, tol: float) -> tuple[
                            np.ndarray, np.ndarray, Any]:
    """Fit ``softmax(F @ W.T + b)`` (full W) or ``softmax(F * w + b)`` (diagonal) by L-BFGS-B.

    Objective: mean NLL + ``reg_offdiag / (k (k-1)) * sum_{i != j} W_ij^2`` + ``reg_intercept / k *
    sum b^2`` (ODIR, Kull et al. 2019) + ``reg_l2 * sum W^2``. Starts from the identity map (W = I,
    b = 0), deterministic. Each parameter is rescaled by ``1 / sqrt(1 + its penalty curvature)`` so that
    strong regularisation does not make the problem ill-conditioned for L-BFGS. Returns
    ``(W (k, k) or w (k,), b (k,), scipy result)``.
    """
    k = F.shape[1]
    off = ~np.eye(k, dtype=bool)
    c_off = reg_offdiag / (k * (k - 1)) if full_matrix else 0.0
    c_b = reg_intercept / k
    # penalty = sum(pen_w * W^2) + sum(pen_b * b^2); the variables seen by L-BFGS are params / scale
    pen_w = np.where(off, c_off + reg_l2, reg_l2) if full_matrix else np.full(k, reg_l2)
    pen_b = np.full(k, c_b)
    pen = np.concatenate([pen_w.ravel(), pen_b])
    scale = 1.0 / np.sqrt(1.0 + 2.0 * pen)

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        theta = v * scale
        b = theta[-k:]
        if full_matrix:
            W = theta[:-k].reshape(k, k)
            S = F @ W.T
        else:
            W = theta[:-k]
            S = F * W
        S += b
        loss, G = _nll_and_grad_scores(S, y)
        gW = G.T @ F if full_matrix else np.einsum("ij,ij->j", G, F)
        grad = np.concatenate([gW.ravel(), G.sum(axis=0)]) + 2.0 * pen * theta
        loss += float(np.sum(pen * theta * theta))
        return loss, grad * scale

    w0 = np.eye(k).ravel() if full_matrix else np.ones(k)
    v0 = np.concatenate([w0, np.zeros(k)]) / scale
    # L-BFGS-B's internal BLAS calls are tiny: with threads they were measured ~7x slower on shared cores,
    # and a single thread also makes the fit bit-reproducible.
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(fun, v0, jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "maxfun": 2 * max_iter, "ftol": tol, "gtol": tol * 1e2})
    theta = res.x * scale
    b = theta[-k:].copy()
    W = theta[:-k].reshape(k, k).copy() if full_matrix else theta[:-k].copy()
    return W, b, res


def _check_reg(value: Any, name: str) -> float:
    v = float(value)
    if not (np.isfinite(v) and v >= 0):
        raise FailsightInputError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


class _LinearSoftmaxCalibrator(BaseCalibrator):
    """Shared fit/predict of vector scaling, matrix scaling and Dirichlet calibration."""

    _full_matrix = True
    _use_log_probs = False

    def _features(self, x: np.ndarray) -> np.ndarray:
        if self._use_log_probs:
            return to_log_probs(x, self.input_kind_)
        return np.asarray(to_logit_space(x, self.input_kind_), dtype=np.float64)

    def _regs(self) -> tuple[float, float, float]:
        return 0.0, 0.0, 0.0

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        max_iter = check_int(self.max_iter, "max_iter")
        tol = _check_reg(self.tol, "tol")
        reg_off, reg_b, reg_l2 = self._regs()
        W, b, res = _fit_linear_softmax(self._features(x), y, self._full_matrix, reg_off, reg_b, reg_l2,
                                        max_iter, tol)
        self.coef_ = W
        self.intercept_ = b
        self.n_iter_ = int(res.nit)
        self.converged_ = bool(res.success)
        if not res.success:
            warnings.warn(f"{type(self).__name__} did not converge in {max_iter} iterations "
                          f"({res.message}); raise max_iter.", RuntimeWarning, stacklevel=3)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        F = self._features(x)
        S = F @ self.coef_.T if self._full_matrix else F * self.coef_
        return softmax(S + self.intercept_)


class VectorScaling(_LinearSoftmaxCalibrator):
    """Vector scaling (Guo et al. 2017): ``softmax(z * w + b)`` with per-class ``w``, ``b`` ``(k,)``.

    Fitted by L-BFGS-B on the full-batch mean NLL with analytic gradients, from the identity map
    (deterministic). Probabilities are used through ``log(p)``. Does not preserve the arg-max in general
    (per-class weights and biases can reorder classes).

    Attributes: ``coef_`` ``(k,)``, ``intercept_`` ``(k,)``, ``n_iter_``, ``converged_``.
    """

    _full_matrix = False

    def __init__(self, input: str = "auto", max_iter: int = 1000, tol: float = 1e-12):
        self.input = input
        self.max_iter = max_iter
        self.tol = tol


class MatrixScaling(_LinearSoftmaxCalibrator):
    """Matrix scaling with ODIR (Kull et al. 2019): ``softmax(z @ W.T + b)``, ``W`` ``(k, k)``.

    Objective: mean NLL + ``reg_lambda / (k (k-1)) * sum_{i != j} W_ij^2`` (off-diagonal) +
    ``reg_mu / k * sum_j b_j^2`` (intercept); ``reg_mu=None`` uses ``reg_lambda``. With a large
    ``reg_lambda`` and ``reg_mu=0`` it approaches vector scaling. Fitted by L-BFGS-B (analytic gradients,
    identity start, deterministic). Probabilities are used through ``log(p)`` (then it equals
    :class:`DirichletCalibration` without its L2 term). Does not preserve the arg-max in general.

    Attributes: ``coef_`` ``(k, k)``, ``intercept_`` ``(k,)``, ``n_iter_``, ``converged_``.
    """

    def __init__(self, input: str = "auto", reg_lambda: float = 1e-3, reg_mu: float | None = None,
                 max_iter: int = 1000, tol: float = 1e-12):
        self.input = input
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.max_iter = max_iter
        self.tol = tol

    def _regs(self) -> tuple[float, float, float]:
        lam = _check_reg(self.reg_lambda, "reg_lambda")
        mu = lam if self.reg_mu is None else _check_reg(self.reg_mu, "reg_mu")
        return lam, mu, 0.0


class DirichletCalibration(_LinearSoftmaxCalibrator):
    """Dirichlet calibration (Kull et al. 2019): ``softmax(W @ log p + b)``.

    Works on log-probabilities (``log_softmax`` of logits, or ``log p``). Regularisation: ODIR
    (``reg_lambda`` off-diagonal, ``reg_mu`` intercept, both scaled as in the paper) and/or
    ``reg_l2 * sum W^2`` on the whole matrix (the intercept is not L2-penalised, so ``reg_l2``
    corresponds to scikit-learn's multinomial ``LogisticRegression(C = 1 / (2 n reg_l2))`` on ``log p``).
    Fitted by L-BFGS-B (analytic gradients, identity start, deterministic). Does not preserve the arg-max
    in general.

    Attributes: ``coef_`` ``(k, k)``, ``intercept_`` ``(k,)``, ``n_iter_``, ``converged_``.
    """

    _use_log_probs = True

    def __init__(self, input: str = "auto", reg_lambda: float = 1e-3, reg_mu: float | None = None,
                 reg_l2: float = 0.0, max_iter: int = 1000, tol: float = 1e-12):
        self.input = input
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.reg_l2 = reg_l2
        self.max_iter = max_iter
        self.tol = tol

    def _regs(self) -> tuple[float, float, float]:
        lam = _check_reg(self.reg_lambda, "reg_lambda")
        mu = lam if self.reg_mu is None else _check_reg(self.reg_mu, "reg_mu")
        return lam, mu, _check_reg(self.reg_l2, "reg_l2")
