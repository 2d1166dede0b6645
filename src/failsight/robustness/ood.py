"""Out-of-distribution (OOD) detection: scores and the metrics that judge them.

Convention throughout: **higher score = more in-distribution**, and in-distribution samples are the
*positive* class of the metrics (as in the OOD literature: AUROC, AUPR-In, AUPR-Out, FPR at 95 % TPR).

- :func:`ood_score` turns model outputs into an OOD score with the reliability pillar's confidence scores
  (MSP, max logit, energy, entropy), oriented so that higher means in-distribution.
- :class:`Mahalanobis` (Lee et al. 2018) fits class means and one shared covariance on in-distribution
  training features (e.g. the penultimate layer, see :func:`penultimate_features`) and scores a sample by
  minus its smallest Mahalanobis distance to a class mean.
- :func:`ood_metrics` computes AUROC, AUPR-In, AUPR-Out and FPR@95%TPR from one sort of the scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_fraction,
    check_int,
    check_labels,
)
from failsight.types import Result

#: Scores understood by :func:`ood_score`.
OOD_SCORES: tuple[str, ...] = ("msp", "max_logit", "energy", "entropy")


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OODMetrics(Result):
    """Separation of in-distribution (positive) from OOD samples by a score (higher = in-distribution).

    ``auroc``: P(score_in > score_out) + ½ P(tie). ``aupr_in``: average precision with in-distribution as
    positive; ``aupr_out``: with OOD as positive and the score negated. ``fpr_at_95_tpr``: share of OOD
    samples accepted at the highest threshold that keeps at least 95 % of in-distribution samples.
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_95_tpr: float
    n_in: int
    n_out: int


def _average_precision(is_pos: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (sklearn's step-wise definition, ties grouped) of ``scores`` for ``is_pos``."""
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    pos = is_pos[order]
    tp = np.cumsum(pos)
    fp = np.cumsum(~pos)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each group of tied scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def ood_metrics(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> OODMetrics:
    """AUROC, AUPR-In, AUPR-Out and FPR at ``tpr`` (default 95 %) TPR.

    ``scores_in`` ``(n_in,)`` are scores of in-distribution samples, ``scores_out`` ``(n_out,)`` of OOD
    samples; higher score must mean "more in-distribution" (negate distances or entropies first, or use
    :func:`ood_score`). Agrees with ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` /
    ``roc_curve``.
    """
    s_in = as_float_array(scores_in, "scores_in", ndim=1, allow_float32=False)
    s_out = as_float_array(scores_out, "scores_out", ndim=1, allow_float32=False)
    tpr = check_fraction(tpr, "tpr", open_high=False)
    n_in, n_out = len(s_in), len(s_out)
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(n_in, dtype=bool), np.zeros(n_out, dtype=bool)])

    # ROC from one descending sort; thresholds at distinct score values
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    pos = is_in[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(~pos)[last]
    tpr_c = np.r_[0.0, tp / n_in]
    fpr_c = np.r_[0.0, fp / n_out]
    auroc = float(np.sum(np.diff(fpr_c) * (tpr_c[1:] + tpr_c[:-1])) / 2.0)  # trapezoid rule
    i = int(np.searchsorted(tpr_c, float(tpr) - 1e-12, side="left"))
    fpr_at = float(fpr_c[min(i, len(fpr_c) - 1)])

    return OODMetrics(
        auroc=auroc,
        aupr_in=_average_precision(is_in, scores),
        aupr_out=_average_precision(~is_in, -scores),
        fpr_at_95_tpr=fpr_at,
        n_in=n_in,
        n_out=n_out,
    )


# --------------------------------------------------------------------------------------------------
# output-based scores
# --------------------------------------------------------------------------------------------------
def ood_score(name: str, *, probs: Any = None, logits: Any = None, temperature: float = 1.0) -> np.ndarray:
    """OOD score ``(n,)`` from model outputs; higher = more in-distribution.

    ``name`` is one of ``"msp"`` (max softmax probability), ``"max_logit"``, ``"energy"`` (minus the free
    energy, ``T * logsumexp(logits / T)``) or ``"entropy"`` (minus the predictive entropy). Pass
    ``probs`` ``(n, k)`` or ``logits`` ``(n, k)``; ``max_logit`` and ``energy`` need logits. The scores
    come from :func:`failsight.reliability.scores.confidence_score` (higher = more confident).
    """
    if name not in OOD_SCORES:
        raise FailsightInputError(f"unknown OOD score {name!r}; choose one of {', '.join(OOD_SCORES)}.")
    from failsight.reliability import scores as sc

    if name == "energy" and float(temperature) != 1.0:
        if logits is None:
            raise FailsightInputError("the 'energy' score needs logits; pass logits=(n, k).")
        return -np.asarray(sc.energy(logits, temperature=temperature), dtype=np.float64)
    return np.asarray(sc.confidence_score(name, probs=probs, logits=logits), dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Mahalanobis on features
# --------------------------------------------------------------------------------------------------
class Mahalanobis(BaseEstimator):
    """Mahalanobis OOD detector on features (Lee et al. 2018), class-conditional Gaussians, shared covariance.

    ``fit(features, y)`` on in-distribution training features ``(n, d)`` and labels ``(n,)`` estimates the
    class means ``means_`` ``(k, d)`` and the pooled within-class covariance ``covariance_`` ``(d, d)``
    (maximum likelihood, plus ``reg * mean(diag)`` on the diagonal so it stays invertible).
    ``score(features)`` returns ``-min_c (x - μ_c)ᵀ Σ⁻¹ (x - μ_c)`` ``(n,)``: higher = more in-distribution.
    """

    def __init__(self, reg: float = 1e-6) -> None:
        self.reg = reg

    def fit(self, features: Any, y: Any) -> Mahalanobis:
        """Fit class means and the shared covariance on ``features`` ``(n, d)`` with labels ``y`` ``(n,)``."""
        x = as_float_array(features, "features", ndim=2, allow_float32=False)
        labels = check_labels(y, name="y")
        check_consistent_length(x, labels, names=("features", "y"))
        if not (np.isfinite(self.reg) and self.reg >= 0):
            raise FailsightInputError(f"reg must be >= 0, got {self.reg!r}.")
        classes, inv = np.unique(labels, return_inverse=True)
        if len(x) <= len(classes):
            raise FailsightInputError(
                f"need more samples ({len(x)}) than classes ({len(classes)}) to estimate a covariance."
            )
        counts = np.bincount(inv)
        means = np.zeros((len(classes), x.shape[1]))
        np.add.at(means, inv, x)
        means /= counts[:, None]
        centred = x - means[inv]
        cov = centred.T @ centred / len(x)
        scale = float(np.mean(np.diag(cov)))
        cov = cov + (self.reg * (scale if scale > 0 else 1.0)) * np.eye(x.shape[1])
        # Σ⁻¹ = W Wᵀ with W from the eigendecomposition (robust for near-singular Σ)
        evals, evecs = np.linalg.eigh(cov)
        tiny = max(evals.max(), 1e-300) * 1e-12
        evals = np.maximum(evals, tiny)
        self.whitener_ = evecs / np.sqrt(evals)
        self.precision_ = (self.whitener_ @ self.whitener_.T)
        self.classes_ = classes
        self.means_ = means
        self.covariance_ = cov
        self.n_features_in_ = x.shape[1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise FailsightInputError("this Mahalanobis detector is not fitted; call fit(features, y) first.")

    def distances(self, features: Any) -> np.ndarray:
        """Squared Mahalanobis distances ``(n, k)`` of each sample to each class mean."""
        self._check_fitted()
        x = as_float_array(features, "features", ndim=2, allow_float32=False)
        if x.shape[1] != self.n_features_in_:
            raise FailsightInputError(
                f"features have {x.shape[1]} columns but the detector was fitted on {self.n_features_in_}."
            )
        z = x @ self.whitener_
        mz = self.means_ @ self.whitener_
        d2 = (np.einsum("ij,ij->i", z, z)[:, None] + np.einsum("ij,ij->i", mz, mz)[None, :]
              - 2.0 * (z @ mz.T))
        return np.maximum(d2, 0.0)

    def score(self, features: Any) -> np.ndarray:
        """OOD score ``(n,)``: minus the smallest squared Mahalanobis distance (higher = in-distribution)."""
        return -self.distances(features).min(axis=1)

    def predict(self, features: Any) -> np.ndarray:
        """Class of the nearest mean ``(n,)`` (the generative classifier the detector implies)."""
        return self.classes_[self.distances(features).argmin(axis=1)]


def penultimate_features(model: Any, x: Any, batch_size: int = 1024, layer: Any = None) -> np.ndarray:
    """Inputs to the last ``nn.Linear`` layer of a torch ``model`` (or to ``layer``) for ``x``: ``(n, d)``.

    Runs the model in eval mode without gradients, in batches; ``x`` is ``(n, ...)`` as the model expects.
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise FailsightInputError(
            f"penultimate_features needs a torch.nn.Module, got {type(model).__name__}; for other models "
            "compute the features yourself and pass them to Mahalanobis."
        )
    batch_size = check_int(batch_size, "batch_size")
    if layer is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise FailsightInputError("the model has no nn.Linear layer; pass layer=<module whose input to take>.")
        layer = linears[-1]
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach().float().cpu()))
    arr = as_float_array(x, "x")
    xt = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(xt), batch_size):
                model(xt[i:i + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured).reshape(len(xt), -1).numpy()
