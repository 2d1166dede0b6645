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
    fold_ids,
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

#: Per-parameter penalty strengths tried by ``reg_lambda="cv"``, strongest first: the off-diagonal entries of
#: matrix / Dirichlet (``reg_lambda = c * k * (k - 1)`` in ODIR's form) or the spread of vector scaling's
#: scales (``reg_lambda = c * k``) are penalised by ``c * entry^2`` each. Tuned on MNIST-based 10- and
#: 100-class problems (``benchmarks/calibration_real.py``): the optimum was c ~ 1 at 100 classes.
CV_GRID: tuple[float, ...] = (1e2, 1e1, 1e0, 1e-1, 1e-2, 1e-3)
#: Tried (weakest first) only when the strongest value of :data:`CV_GRID` had the lowest held-out NLL.
CV_GRID_STRONG: tuple[float, ...] = (1e3, 1e4, 1e5)
#: With ``reg_mu=None`` each intercept is penalised by ``MU_RATIO`` times the per-entry strength above:
#: intercepts (class priors) need far less shrinkage than the k^2 couplings (measured: 0.01 nats better
#: held-out NLL at 100 classes than tying them, as ``reg_mu = reg_lambda`` would).
MU_RATIO = 1e-4
#: Folds of the cross-validation that chooses the regularisation.
CV_FOLDS = 3
#: The regularisation path stops (weaker values are not tried) once the held-out NLL of one fold is this many
#: nats per row above its value at the best strength so far: the held-out NLL rises steeply past its minimum
#: (overfitting k^2 parameters), so such a value and every weaker one lose.
CV_ABORT = 0.01
#: Relative objective tolerance of the fits inside the cross-validation (the final fit uses ``tol``).
CV_TOL = 1e-7
#: A fit that stops early (iteration limit, line search) warns only when the largest gradient entry of the
#: mean objective is above this: below it the objective is within ~1e-7 nats of its optimum for any
#: curvature the calibration fits show, far below what changes an ECE, NLL or accuracy digit.
GRAD_WARN = 1e-4


def _nll_and_grad_scores(S: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of softmax(S) and its gradient w.r.t. S ``(n, k)`` float64 (S is overwritten)."""
    from failsight.reliability._calibrators_numba import softmax_nll_grad

    return float(softmax_nll_grad(S, y)), S


def _scores(F: np.ndarray, theta: np.ndarray, full_matrix: bool) -> np.ndarray:
    k = F.shape[1]
    b = theta[-k:]
    S = F @ theta[:-k].reshape(k, k).T if full_matrix else F * theta[:-k]
    S += b
    return S


def _heldout_nll(F: np.ndarray, y: np.ndarray, theta: np.ndarray, full_matrix: bool) -> float:
    """Summed NLL of ``softmax(scores)`` on rows ``F`` ``(m, k)`` with labels ``y``."""
    S = _scores(F, theta, full_matrix)
    return _nll_and_grad_scores(S, y)[0] * len(y)


def _fit_linear_softmax(F: np.ndarray, y: np.ndarray, full_matrix: bool, reg_offdiag: float,
                        reg_intercept: float, reg_l2: float, reg_spread: float, max_iter: int, tol: float,
                        theta0: np.ndarray | None = None) -> tuple[np.ndarray, Any, float]:
    """Fit ``softmax(F @ W.T + b)`` (full W) or ``softmax(F * w + b)`` (diagonal) by L-BFGS-B.

    Objective: mean NLL + ``reg_offdiag / (k (k-1)) * sum_{i != j} W_ij^2`` + ``reg_intercept / k *
    sum b^2`` (ODIR, Kull et al. 2019) + ``reg_l2 * sum W^2`` + ``reg_spread / k * sum_j (w_j - mean w)^2``
    (vector scaling only: shrinks the per-class scales towards one temperature). Starts from ``theta0``
    (the calibrators pass the temperature-scaling solution) or the identity map (W = I, b = 0); deterministic. Each parameter is rescaled by ``1 / sqrt(1 + its
    penalty curvature)`` so that strong regularisation does not make the problem ill-conditioned for
    L-BFGS. Returns ``(theta = [W.ravel(), b], scipy result, largest |gradient| entry at the end)``.
    """
    k = F.shape[1]
    off = ~np.eye(k, dtype=bool)
    c_off = reg_offdiag / (k * (k - 1)) if full_matrix else 0.0
    c_b = reg_intercept / k
    c_s = reg_spread / k if not full_matrix else 0.0
    # penalty = sum(pen_w * W^2) + sum(pen_b * b^2) [+ c_s |w - mean w|^2]; L-BFGS sees params / scale
    pen_w = np.where(off, c_off + reg_l2, reg_l2) if full_matrix else np.full(k, reg_l2)
    pen = np.concatenate([pen_w.ravel(), np.full(k, c_b)])
    curv = 2.0 * pen
    if c_s:
        curv[:-k] += 2.0 * c_s
    # diagonal preconditioner: each parameter is divided by the square root of its curvature, the penalty's
    # plus the NLL Hessian's diagonal at the identity map (mean p_i (1 - p_i) F_j^2 for W_ij): logits of
    # different scales and strong penalties then no longer make L-BFGS crawl.
    P = softmax(F)
    P *= 1.0 - P
    if full_matrix:
        hw = (P.T @ (F * F)).ravel() / len(y)
    else:
        hw = np.einsum("ij,ij->j", P, F * F) / len(y)
    hb = P.mean(axis=0)
    curv += np.concatenate([hw, hb])
    scale = 1.0 / np.sqrt(np.maximum(curv, 1e-12 + 1e-6 * curv.max()))

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        S = _scores(F, theta, full_matrix)
        loss, G = _nll_and_grad_scores(S, y)
        gW = G.T @ F if full_matrix else np.einsum("ij,ij->j", G, F)
        grad = np.concatenate([gW.ravel(), G.sum(axis=0)]) + 2.0 * pen * theta
        loss += float(np.sum(pen * theta * theta))
        if c_s:
            d = theta[:-k] - theta[:-k].mean()
            loss += c_s * float(d @ d)
            grad[:-k] += 2.0 * c_s * d
        return loss, grad

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = objective(v * scale)
        return loss, grad * scale

    if theta0 is None:
        w0 = np.eye(k).ravel() if full_matrix else np.ones(k)
        theta0 = np.concatenate([w0, np.zeros(k)])
    res = minimize(fun, theta0 / scale, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "maxfun": 2 * max_iter, "ftol": tol, "gtol": tol * 1e2,
                            "maxcor": 20})
    theta = res.x * scale
    g_max = float(np.abs(res.jac / scale).max()) if res.jac is not None else float("inf")
    return theta, res, g_max


def _check_reg(value: Any, name: str) -> float:
    v = float(value)
    if not (np.isfinite(v) and v >= 0):
        raise FailsightInputError(f"{name} must be a finite number >= 0 or 'cv', got {value!r}.")
    return v


class _LinearSoftmaxCalibrator(BaseCalibrator):
    """Shared fit/predict of vector scaling, matrix scaling and Dirichlet calibration (see ``_REG_DOC``)."""

    _full_matrix = True
    _use_log_probs = False
    _spread = False  # vector scaling: reg_lambda shrinks the per-class scales to their mean

    def _features(self, x: np.ndarray) -> np.ndarray:
        if self._use_log_probs:
            return to_log_probs(x, self.input_kind_)
        return np.asarray(to_logit_space(x, self.input_kind_), dtype=np.float64)

    def _norm(self, k: int) -> float:
        """``reg_lambda`` of a per-entry strength of 1 (``k`` for vector scaling, ``k (k - 1)`` for ODIR)."""
        return float(k) if self._spread else float(k * max(k - 1, 1))

    def _regs(self, lam: float, k: int) -> tuple[float, float, float, float]:
        """``(offdiag, intercept, l2, spread)`` strengths for ``reg_lambda = lam``."""
        if self.reg_mu is None:
            mu = MU_RATIO * lam / self._norm(k) * k
        else:
            mu = _check_reg(self.reg_mu, "reg_mu")
        l2 = _check_reg(getattr(self, "reg_l2", 0.0), "reg_l2")
        if self._spread:
            return 0.0, mu, l2, lam
        return lam, mu, l2, 0.0

    def _fit_one(self, F: np.ndarray, y: np.ndarray, lam: float, max_iter: int, tol: float,
                 theta0: np.ndarray | None = None) -> tuple[np.ndarray, Any, float]:
        return _fit_linear_softmax(F, y, self._full_matrix, *self._regs(lam, F.shape[1]), max_iter, tol, theta0)

    def _ts_start(self, F: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Starting point: temperature scaling, ``W = I / T``, ``b = 0`` (``softmax(log p / T)`` is
        ``softmax(z / T)`` too, so this is temperature scaling for Dirichlet as well). From the identity
        (the uncalibrated model) an over-confident model's fit crawled along that one direction."""
        k = F.shape[1]
        z = np.ascontiguousarray(F, dtype=np.float64)
        beta, _ = _solve_beta(z, y, 1.0, max(1, len(y) // _SUBSAMPLE_ROWS), rtol=1e-6)
        beta = float(np.clip(beta, 1e-3, 1e3))
        w0 = (beta * np.eye(k)).ravel() if self._full_matrix else np.full(k, beta)
        return np.concatenate([w0, np.zeros(k)])

    def _cv_select(self, F: np.ndarray, y: np.ndarray, max_iter: int,
                   tol: float) -> tuple[float, dict[float, float], np.ndarray | None]:
        n_folds = check_int(self.cv, "cv", minimum=2)
        if len(y) < 2 * n_folds:
            raise FailsightInputError(
                f"{type(self).__name__}(reg_lambda='cv') needs at least {2 * n_folds} calibration samples for "
                f"{n_folds}-fold cross-validation, got {len(y)}; pass a fixed reg_lambda or a smaller cv."
            )
        folds = fold_ids(y, n_folds, check_int(self.random_state, "random_state", minimum=0))
        norm = self._norm(F.shape[1])
        # held-out NLL is needed to ~1e-4 nats to rank grid values: a looser tolerance than the final fit
        # (measured on mnist10-lr and pairs100-lr, all three calibrators: CV_TOL = 1e-7 against 1e-10 chose the
        # same value, held-out NLLs within 2e-4 nats, 1.1-1.9x less CPU time)
        tol_cv, iter_cv = max(tol, CV_TOL), min(max_iter, 300)
        splits = [(folds != f, folds == f) for f in range(n_folds)]
        sizes = np.array([te.sum() for _, te in splits], dtype=np.float64)
        curve: dict[float, float] = {}
        state: dict[str, Any] = {"best": np.inf, "lam": CV_GRID[0] * norm, "theta": None,
                                 "fold": np.full(n_folds, np.inf)}

        def walk(grid: tuple[float, ...], thetas: list[np.ndarray | None]) -> list[np.ndarray | None]:
            """Try ``grid`` in order (warm starts along it); stop once past the minimum. Returns the fold fits
            at the first value (the warm start of a walk the other way)."""
            first: list[np.ndarray | None] = list(thetas)
            rises, prev = 0, np.inf
            for i, c in enumerate(grid):
                lam = c * norm
                fold_nll = np.full(n_folds, np.nan)
                new = list(thetas)
                for f, (tr, te) in enumerate(splits):
                    new[f], _, _ = self._fit_one(F[tr], y[tr], lam, iter_cv, tol_cv, thetas[f])
                    fold_nll[f] = _heldout_nll(F[te], y[te], new[f], self._full_matrix) / sizes[f]
                    if fold_nll[f] > state["fold"][f] + CV_ABORT:
                        break  # this fold alone is clearly worse than at the best value: stop the walk here
                if np.isnan(fold_nll).any():
                    break
                thetas = new
                if i == 0:
                    first = list(new)
                curve[lam] = float(fold_nll @ sizes / len(y))
                if curve[lam] < state["best"]:
                    state.update(best=curve[lam], lam=lam, theta=np.mean(thetas, axis=0), fold=fold_nll)
                rises = rises + 1 if curve[lam] > prev else 0
                prev = curve[lam]
                if rises >= 2 or curve[lam] > state["best"] + CV_ABORT:  # past the minimum
                    break
            return first

        start = self._ts_start(F, y)
        at_first = walk(CV_GRID, [start] * n_folds)
        if state["lam"] == CV_GRID[0] * norm:  # the strongest value won: look further on the strong side
            walk(CV_GRID_STRONG, at_first)
        return state["lam"], dict(sorted(curve.items(), reverse=True)), state["theta"]

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        max_iter = check_int(self.max_iter, "max_iter")
        tol = _check_reg(self.tol, "tol")
        F = self._features(x)
        # One BLAS thread: the (n, k) @ (k, k) products of a fit are small, and OpenBLAS's threads spin-wait;
        # on 2 shared cores two threads made a 3,333 x 100 gradient product 60x slower (3 ms -> 200 ms). A
        # single thread also makes the fit bit-reproducible.
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit_features(F, y, max_iter, tol)

    def _fit_features(self, F: np.ndarray, y: np.ndarray, max_iter: int, tol: float) -> None:
        theta0 = None
        if isinstance(self.reg_lambda, str):
            if self.reg_lambda != "cv":
                raise FailsightInputError(f"reg_lambda must be a number >= 0 or 'cv', got {self.reg_lambda!r}.")
            lam, self.cv_nll_, theta0 = self._cv_select(F, y, max_iter, tol)
        else:
            lam = _check_reg(self.reg_lambda, "reg_lambda")
            self.cv_nll_ = None
            theta0 = self._ts_start(F, y)
        theta, res, g_max = self._fit_one(F, y, lam, max_iter, tol, theta0)
        k = F.shape[1]
        self.reg_lambda_ = lam
        # what compare_calibrators' CV refits with: the chosen strength, at the inner CV's tolerance
        self.selected_params_ = {"reg_lambda": lam, "tol": max(tol, CV_TOL)}
        self.intercept_ = theta[-k:].copy()
        self.coef_ = theta[:-k].reshape(k, k).copy() if self._full_matrix else theta[:-k].copy()
        self.n_iter_ = int(res.nit)
        self.converged_ = bool(res.success) or g_max <= GRAD_WARN
        if not self.converged_:
            warnings.warn(f"{type(self).__name__} stopped before its optimum ({res.message}; largest gradient "
                          f"entry {g_max:.2g} > {GRAD_WARN:g}); raise max_iter.", RuntimeWarning, stacklevel=4)

    def _predict_proba(self, x: np.ndarray) -> np.ndarray:
        F = self._features(x)
        with threadpool_limits(limits=1, user_api="blas"):  # see _fit: 1 thread is faster on shared cores
            S = F @ self.coef_.T if self._full_matrix else F * self.coef_
        return softmax(S + self.intercept_)


_REG_DOC = """
    ``reg_lambda="cv"`` (default) chooses the regularisation by stratified ``cv``-fold cross-validation on
    the calibration split only: per-entry strengths :data:`CV_GRID` are tried strongest first, each fitted on
    ``cv - 1`` folds (warm-started from the previous value) and scored by the NLL of the held-out fold;
    the walk stops once the held-out NLL has risen twice (or by 0.01 nats), and the best value is refitted
    on the whole split. A number fixes ``reg_lambda``. ``reg_mu=None`` penalises each intercept by
    :data:`MU_RATIO` times the per-entry strength of ``reg_lambda``. Chosen value: ``reg_lambda_``;
    held-out NLL per value: ``cv_nll_``; ``selected_params_`` refits the chosen model without CV (at the
    cross-validation's tolerance :data:`CV_TOL`). The walk stops early once one fold's held-out NLL is
    :data:`CV_ABORT` above its best; when the strongest value wins, :data:`CV_GRID_STRONG` is tried. A fit
    that stops early warns only when the objective's largest gradient entry exceeds :data:`GRAD_WARN`
    (only then is it not at its optimum to a tolerance that matters for the metrics).

"""


class VectorScaling(_LinearSoftmaxCalibrator):
    """Vector scaling (Guo et al. 2017): ``softmax(z * w + b)`` with per-class ``w``, ``b`` ``(k,)``.

    Regularised as the scalar-to-vector analogue of ODIR: ``reg_lambda / k * sum_j (w_j - mean w)^2``
    pulls the per-class scales towards one common temperature (``reg_lambda -> inf``: temperature scaling
    with a bias) and ``reg_mu / k * sum_j b_j^2`` the biases to 0 (``reg_mu=None``: same as
    ``reg_lambda``). ``reg_lambda=0, reg_mu=0`` is the unregularised maximum-likelihood fit.
    Fitted by L-BFGS-B on the full-batch mean NLL with analytic gradients, from the temperature-scaling
    solution ``w = 1 / T`` (deterministic). Probabilities are used through ``log(p)``. Does not preserve the arg-max in general
    (per-class weights and biases can reorder classes).
    {reg}
    Attributes: ``coef_`` ``(k,)``, ``intercept_`` ``(k,)``, ``reg_lambda_``, ``cv_nll_``, ``n_iter_``,
    ``converged_``.
    """

    _full_matrix = False
    _spread = True

    def __init__(self, input: str = "auto", reg_lambda: float | str = "cv", reg_mu: float | None = None,
                 cv: int = CV_FOLDS, random_state: int = 0, max_iter: int = 1000, tol: float = 1e-10):
        self.input = input
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.cv = cv
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol


class MatrixScaling(_LinearSoftmaxCalibrator):
    """Matrix scaling with ODIR (Kull et al. 2019): ``softmax(z @ W.T + b)``, ``W`` ``(k, k)``.

    Objective: mean NLL + ``reg_lambda / (k (k-1)) * sum_{i != j} W_ij^2`` (off-diagonal) +
    ``reg_mu / k * sum_j b_j^2`` (intercept); ``reg_mu=None`` uses ``reg_lambda``. With a large
    ``reg_lambda`` and ``reg_mu=0`` it approaches unregularised vector scaling. Fitted by L-BFGS-B
    (analytic gradients, temperature-scaling start ``W = I / T``, deterministic). Probabilities are used
    through ``log(p)`` (then it equals :class:`DirichletCalibration` without its L2 term). Does not preserve the arg-max in general.
    {reg}
    Attributes: ``coef_`` ``(k, k)``, ``intercept_`` ``(k,)``, ``reg_lambda_``, ``cv_nll_``, ``n_iter_``,
    ``converged_``.
    """

    def __init__(self, input: str = "auto", reg_lambda: float | str = "cv", reg_mu: float | None = None,
                 cv: int = CV_FOLDS, random_state: int = 0, max_iter: int = 1000, tol: float = 1e-10):
        self.input = input
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.cv = cv
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol


class DirichletCalibration(_LinearSoftmaxCalibrator):
    """Dirichlet calibration (Kull et al. 2019): ``softmax(W @ log p + b)``.

    Works on log-probabilities (``log_softmax`` of logits, or ``log p``). Regularisation: ODIR
    (``reg_lambda`` off-diagonal, ``reg_mu`` intercept, both scaled as in the paper) and/or
    ``reg_l2 * sum W^2`` on the whole matrix (the intercept is not L2-penalised, so ``reg_l2``
    corresponds to scikit-learn's multinomial ``LogisticRegression(C = 1 / (2 n reg_l2))`` on ``log p``).
    Fitted by L-BFGS-B (analytic gradients, temperature-scaling start ``W = I / T``, deterministic). Does not
    preserve the arg-max in general.
    {reg}
    Attributes: ``coef_`` ``(k, k)``, ``intercept_`` ``(k,)``, ``reg_lambda_``, ``cv_nll_``, ``n_iter_``,
    ``converged_``.
    """

    _use_log_probs = True

    def __init__(self, input: str = "auto", reg_lambda: float | str = "cv", reg_mu: float | None = None,
                 reg_l2: float = 0.0, cv: int = CV_FOLDS, random_state: int = 0, max_iter: int = 1000,
                 tol: float = 1e-10):
        self.input = input
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.reg_l2 = reg_l2
        self.cv = cv
        self.random_state = random_state
        self.max_iter = max_iter
        self.tol = tol


for _cls in (VectorScaling, MatrixScaling, DirichletCalibration):
    _cls.__doc__ = (_cls.__doc__ or "").replace("    {reg}\n", _REG_DOC.lstrip("\n"))
