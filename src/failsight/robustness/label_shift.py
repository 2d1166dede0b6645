"""Label shift: resample to target class priors, estimate target priors with BBSE, re-weight predictions.

Under label shift ``p(x | y)`` stays fixed while the class priors ``p(y)`` change. Black-box shift
estimation (BBSE; Lipton, Wang & Smola 2018) recovers the importance weights ``w_y = q(y) / p(y)`` from a
model's predictions alone: with the joint confusion matrix ``C[i, j] = P_source(ŷ = i, y = j)`` measured on
labelled source data and the prediction frequencies ``μ[i] = P_target(ŷ = i)`` on unlabelled target data,
``μ = C w``. The weights then correct the model's probabilities by Bayes' rule:
``p_target(y | x) ∝ w_y p_source(y | x)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_int,
    check_labels,
    check_probs,
)
from failsight.types import Result


# --------------------------------------------------------------------------------------------------
# resampling to target priors
# --------------------------------------------------------------------------------------------------
def _check_priors(priors: Any, k: int, name: str = "priors") -> np.ndarray:
    p = as_float_array(priors, name, ndim=1, allow_float32=False)
    if len(p) != k:
        raise FailsightInputError(f"{name} has {len(p)} entries but there are {k} classes; give one per class.")
    if p.min() < 0:
        raise FailsightInputError(f"{name} has a negative entry ({p.min():.4g}); priors must be >= 0.")
    total = float(p.sum())
    if total <= 0:
        raise FailsightInputError(f"{name} sums to 0; give at least one positive class prior.")
    if abs(total - 1.0) > 1e-6:
        raise FailsightInputError(
            f"{name} sums to {total:.6g}, not 1; normalise with priors / priors.sum()."
        )
    return p / total


def _allocate(n: int, priors: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``n * priors`` (largest remainder)."""
    exact = n * priors
    counts = np.floor(exact).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


def resample_to_priors(y: Any, priors: Any = None, *, dirichlet_alpha: float | Any = None,
                       n: int | None = None, n_classes: int | None = None, replace: bool = False,
                       seed: int = 0) -> np.ndarray:
    """Indices that resample a labelled set ``y`` ``(N,)`` so its class frequencies follow target priors.

    Give either ``priors`` ``(k,)`` (summing to 1) or ``dirichlet_alpha`` (a scalar concentration, or one
    per class): the priors are then drawn from ``Dirichlet(alpha)`` with ``seed`` — small alpha gives
    strong shift, large alpha priors near uniform. Class counts are ``n * priors`` rounded by largest
    remainder, so the returned sample matches the priors as closely as integers allow.

    ``replace=False`` (default) samples each class without replacement; then ``n`` defaults to the
    largest size every class can supply. ``replace=True`` draws with replacement (``n`` defaults to N).

    Returns int64 indices ``(n,)`` into ``y``, shuffled. The realised priors are
    ``np.bincount(y[idx], minlength=k) / n``.
    """
    y = check_labels(y, name="y")
    k = int(y.max()) + 1 if n_classes is None else check_int(n_classes, "n_classes", minimum=2)
    if n_classes is not None and int(y.max()) >= k:
        raise FailsightInputError(f"y has label {int(y.max())} but n_classes={k}; labels must be < n_classes.")
    seed = check_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)
    if (priors is None) == (dirichlet_alpha is None):
        raise FailsightInputError("give exactly one of `priors` (target class priors) or `dirichlet_alpha`.")
    if priors is not None:
        p = _check_priors(priors, k)
    else:
        a = as_float_array(dirichlet_alpha, "dirichlet_alpha", ndim=(0, 1), allow_float32=False)
        a = np.full(k, float(a)) if a.ndim == 0 else a
        if len(a) != k or a.min() <= 0:
            raise FailsightInputError(
                f"dirichlet_alpha must be a positive scalar or {k} positive values, got {dirichlet_alpha!r}."
            )
        p = rng.dirichlet(a)
    available = np.bincount(y, minlength=k)
    missing = np.flatnonzero((p > 0) & (available == 0))
    if len(missing):
        raise FailsightInputError(
            f"classes {missing.tolist()} have a positive target prior but no samples in y; "
            "set their prior to 0 or add samples of those classes."
        )
    if n is None:
        if replace:
            n = len(y)
        else:
            pos = p > 0
            n = int(np.floor((available[pos] / p[pos]).min()))
            while n > 0 and np.any(_allocate(n, p) > available):  # rounding may overshoot by one
                n -= 1
    n = check_int(n, "n")
    counts = _allocate(n, p)
    if not replace and np.any(counts > available):
        c = int(np.argmax(counts - available))
        raise FailsightInputError(
            f"class {c} needs {counts[c]} samples but y has only {available[c]}; pass replace=True, "
            "a smaller n, or leave n=None to get the largest sample that fits without replacement."
        )
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(available)])
    parts = []
    for c in np.flatnonzero(counts):  # loop over classes, not samples
        members = order[starts[c]:starts[c + 1]]
        parts.append(rng.choice(members, size=int(counts[c]), replace=replace))
    idx = np.concatenate(parts)
    return rng.permutation(idx).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# BBSE
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BBSEResult(Result):
    """Black-box shift estimate.

    ``weights`` ``(k,)`` are the importance weights ``q(y) / p(y)`` (clipped to >= 0 and renormalised so
    that ``sum(weights * source_priors) == 1``); ``target_priors = weights * source_priors``.
    ``confusion`` is the joint ``C[i, j] = P(ŷ = i, y = j)`` on the labelled source data and
    ``target_pred_freq`` the target prediction frequencies ``μ``; ``raw_weights`` the unclipped solution of
    ``C w = μ``. ``condition_number`` of ``C``: large values mean the estimate is unstable.
    """

    weights: np.ndarray
    target_priors: np.ndarray
    source_priors: np.ndarray
    raw_weights: np.ndarray
    confusion: np.ndarray
    target_pred_freq: np.ndarray
    condition_number: float
    n_source: int
    n_target: int
    soft: bool


def _pred_matrix(pred: Any, k: int, name: str, soft: bool) -> np.ndarray:
    """Predictions as an ``(n, k)`` matrix: one-hot of hard labels or (``soft``) the probabilities."""
    arr = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred)
    if arr.ndim == 2 and arr.shape[1] > 1:
        p = check_probs(arr, name=name, allow_float32=False)
        if p.shape[1] != k:
            raise FailsightInputError(f"{name} has {p.shape[1]} columns but there are {k} classes.")
        if soft:
            return p
        labels = p.argmax(axis=1)
    else:
        if soft:
            raise FailsightInputError(
                f"soft=True needs predicted probabilities (n, k) for {name}, got hard labels; "
                "pass probabilities or use soft=False."
            )
        labels = check_labels(arr, n_classes=k, name=name)
    return np.eye(k)[labels]


def bbse_estimate(y_val: Any, pred_val: Any, pred_target: Any, *, n_classes: int | None = None,
                  soft: bool = False) -> BBSEResult:
    """Estimate target class priors and importance weights from unlabelled target predictions (BBSE).

    Parameters
    ----------
    y_val : ``(n,)`` true labels of a labelled source (validation) set.
    pred_val : the model's predictions on it: hard labels ``(n,)`` or probabilities ``(n, k)`` (argmax'ed
        unless ``soft``).
    pred_target : predictions on the unlabelled target data, same kind, ``(m,)`` or ``(m, k)``.
    n_classes : number of classes (inferred from probabilities or the largest label otherwise).
    soft : use expected (probability-weighted) confusion and prediction frequencies — BBSE-soft.

    Returns
    -------
    BBSEResult with ``weights`` ``(k,)`` and ``target_priors`` ``(k,)``.
    """
    y = check_labels(y_val, name="y_val")
    k = n_classes
    for pr in (pred_val, pred_target):
        a = np.asarray(pr.detach().cpu().numpy() if hasattr(pr, "detach") else pr)
        if a.ndim == 2 and a.shape[1] > 1:
            if k is not None and a.shape[1] != k:
                raise FailsightInputError(f"predictions have {a.shape[1]} columns but n_classes={k}.")
            k = a.shape[1]
    if k is None:
        k = int(max(y.max(), np.max(pred_val), np.max(pred_target))) + 1
    k = check_int(k, "n_classes", minimum=2)
    y = check_labels(y, n_classes=k, name="y_val")
    pv = _pred_matrix(pred_val, k, "pred_val", soft)
    pt = _pred_matrix(pred_target, k, "pred_target", soft)
    check_consistent_length(y, pv, names=("y_val", "pred_val"))
    n = len(y)
    counts = np.bincount(y, minlength=k)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0).tolist()
        raise FailsightInputError(
            f"classes {missing} have no samples in y_val, so their weights cannot be estimated; "
            "use a labelled source set that contains every class."
        )
    source_priors = counts / n
    confusion = (pv.T @ np.eye(k)[y]) / n  # C[i, j] = P(ŷ = i, y = j)
    mu = pt.mean(axis=0)
    raw, *_ = np.linalg.lstsq(confusion, mu, rcond=None)
    w = np.clip(raw, 0.0, None)
    mass = float(w @ source_priors)
    if mass <= 0:
        raise FailsightInputError(
            "BBSE found no class with positive weight (the confusion matrix is degenerate); the model's "
            "predictions carry too little information about the labels to estimate the target priors."
        )
    w = w / mass
    sv = np.linalg.svd(confusion, compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    return BBSEResult(
        weights=w, target_priors=w * source_priors, source_priors=source_priors, raw_weights=raw,
        confusion=confusion, target_pred_freq=mu, condition_number=cond, n_source=n, n_target=len(pt),
        soft=bool(soft),
    )


def reweight_probs(probs: Any, weights: Any) -> np.ndarray:
    """Correct probabilities ``(n, k)`` for label shift: ``p'(y | x) ∝ weights[y] * probs[:, y]``.

    ``weights`` ``(k,)`` are importance weights ``q(y) / p(y)`` (e.g. ``bbse_estimate(...).weights``) or a
    :class:`BBSEResult`. Rows whose probability mass lies only on zero-weight classes become uniform over
    the positive-weight classes. Returns float64 ``(n, k)`` rows summing to 1.
    """
    p = check_probs(probs, name="probs", allow_float32=False)
    if isinstance(weights, BBSEResult):
        weights = weights.weights
    w = as_float_array(weights, "weights", ndim=1, allow_float32=False)
    if len(w) != p.shape[1]:
        raise FailsightInputError(f"weights has {len(w)} entries but probs has {p.shape[1]} classes.")
    if w.min() < 0 or w.max() <= 0:
        raise FailsightInputError("weights must be >= 0 with at least one positive entry.")
    out = p * w
    s = out.sum(axis=1, keepdims=True)
    fallback = (w > 0) / np.count_nonzero(w > 0)
    zero = s[:, 0] <= 0
    out = np.divide(out, s, out=np.zeros_like(out), where=s > 0)
    if zero.any():
        out[zero] = fallback
    return out
