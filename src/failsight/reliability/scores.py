"""Confidence scores: one number per prediction saying how much to trust it.

Each score returns ``(n,)`` float64 in its *natural* orientation (entropy: higher = less certain;
energy: the free energy, lower = more confident). :func:`confidence_score` looks a score up in the
:data:`SCORES` registry and orients it so that **higher = more confident** for every score, which is
what selective prediction and OOD detection consume.

Scores defined on probabilities accept ``probs (n, k)`` (or ``(n,)`` = P(class 1)) or, instead,
``logits (n, k)``, which are turned into probabilities with a numerically stable softmax. Scores defined
on logits (``energy``, ``max_logit``) need logits: probabilities do not determine them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from scipy.special import entr, logsumexp, softmax

from failsight._validate import FailsightInputError, check_logits, check_probs

__all__ = [
    "SCORES",
    "ScoreSpec",
    "confidence_score",
    "doctor",
    "energy",
    "entropy",
    "margin",
    "max_logit",
    "msp",
    "ratio",
]


def _probs(probs: Any, logits: Any) -> np.ndarray:
    """Validated ``(n, k)`` probabilities from ``probs``, or the softmax of ``logits`` when probs is None."""
    if probs is not None:
        return check_probs(probs)
    if logits is not None:
        z = check_logits(logits).astype(np.float64, copy=False)
        return softmax(z, axis=1)
    raise FailsightInputError("pass probs=(n, k) probabilities or logits=(n, k) logits.")


def _top2(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and second-largest entry of each row, float64 ``(n,)`` each."""
    k = p.shape[1]
    part = np.partition(p, k - 2, axis=1)[:, k - 2:]
    first = part.max(axis=1).astype(np.float64)
    second = part.min(axis=1).astype(np.float64)
    return first, second


def msp(probs: Any = None, *, logits: Any = None) -> np.ndarray:
    """Maximum softmax probability ``max_j p_ij`` (Hendrycks & Gimpel 2017); ``(n,)``, higher = more confident."""
    return _probs(probs, logits).max(axis=1).astype(np.float64)


def margin(probs: Any = None, *, logits: Any = None) -> np.ndarray:
    """Margin ``p_(1) - p_(2)`` between the two largest probabilities; ``(n,)``, higher = more confident."""
    first, second = _top2(_probs(probs, logits))
    return first - second


def ratio(probs: Any = None, *, logits: Any = None) -> np.ndarray:
    """Ratio ``p_(2) / p_(1)`` of the second-largest to the largest probability; ``(n,)`` in [0, 1],
    higher = LESS confident (1 means a tie between the top two)."""
    first, second = _top2(_probs(probs, logits))
    return second / first  # first >= 1/k > 0 for rows summing to one


def entropy(probs: Any = None, *, logits: Any = None) -> np.ndarray:
    """Predictive entropy ``-sum_j p_ij log p_ij`` in nats (``0 log 0 = 0``); ``(n,)``, higher = less confident."""
    p = _probs(probs, logits).astype(np.float64, copy=False)
    return entr(p).sum(axis=1)


def energy(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Free energy ``E(x) = -T logsumexp(z / T)`` of logits ``z (n, k)`` (Liu et al. 2020); ``(n,)``.

    Sign: this is the energy itself, so LOWER = more confident / more in-distribution. The OOD score of
    Liu et al. is ``-E(x)``, which is what ``confidence_score("energy", ...)`` returns.
    """
    z = check_logits(logits).astype(np.float64, copy=False)
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise FailsightInputError(f"temperature must be a positive finite number, got {temperature!r}.")
    return -t * logsumexp(z / t, axis=1)


def max_logit(logits: Any) -> np.ndarray:
    """Maximum logit ``max_j z_ij`` (Hendrycks et al. 2022); ``(n,)``, higher = more confident."""
    return check_logits(logits).max(axis=1).astype(np.float64)


def doctor(probs: Any = None, *, logits: Any = None, variant: Literal["alpha", "beta"] = "alpha") -> np.ndarray:
    """DOCTOR discriminator (Granese et al. 2021); ``(n,)``, higher = LESS confident (reject above a threshold).

    ``variant="alpha"`` (D_alpha, Gini based): ``g / (1 - g)`` with ``g = 1 - sum_j p_ij**2`` the Gini
    impurity of the prediction. ``variant="beta"`` (D_beta): ``(1 - max_j p_ij) / max_j p_ij``. The paper
    optionally applies a temperature to the logits first; pass tempered ``logits`` for that.
    """
    p = _probs(probs, logits)
    if variant == "alpha":
        s2 = np.einsum("ij,ij->i", p, p, dtype=np.float64)  # >= 1/k > 0
        return (1.0 - s2) / s2
    if variant == "beta":
        top = p.max(axis=1).astype(np.float64)
        return (1.0 - top) / top
    raise FailsightInputError(f"variant must be 'alpha' (Gini) or 'beta', got {variant!r}.")


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """A registered score: ``fn``, the input it is defined on, and its orientation."""

    fn: Callable[..., np.ndarray]
    input: Literal["probs", "logits"]
    higher_is_confident: bool
    description: str = ""


#: Registry of confidence scores by name.
SCORES: dict[str, ScoreSpec] = {
    "msp": ScoreSpec(msp, "probs", True, "maximum softmax probability"),
    "margin": ScoreSpec(margin, "probs", True, "p(1) - p(2)"),
    "ratio": ScoreSpec(ratio, "probs", False, "p(2) / p(1)"),
    "entropy": ScoreSpec(entropy, "probs", False, "predictive entropy"),
    "doctor": ScoreSpec(doctor, "probs", False, "DOCTOR D_alpha (Gini impurity ratio)"),
    "energy": ScoreSpec(energy, "logits", False, "free energy -logsumexp(z)"),
    "max_logit": ScoreSpec(max_logit, "logits", True, "maximum logit"),
}


def confidence_score(name: str, probs: Any = None, logits: Any = None) -> np.ndarray:
    """Score ``name`` from :data:`SCORES`, oriented so that HIGHER = MORE CONFIDENT; ``(n,)`` float64.

    Probability scores use ``probs`` when given, else the softmax of ``logits``; logit scores
    (``energy``, ``max_logit``) need ``logits`` and raise :class:`FailsightInputError` without them.
    Scores whose natural orientation is the opposite (``ratio``, ``entropy``, ``doctor``, ``energy``)
    are negated.
    """
    if name not in SCORES:
        raise FailsightInputError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}.")
    spec = SCORES[name]
    if spec.input == "logits":
        if logits is None:
            raise FailsightInputError(
                f"the {name!r} score is defined on logits, which probabilities do not determine; pass "
                "logits=(n, k), or use a probability score such as 'msp'."
            )
        s = spec.fn(logits)
    else:
        if probs is None and logits is None:
            raise FailsightInputError(f"the {name!r} score needs probs=(n, k) or logits=(n, k).")
        s = spec.fn(probs, logits=logits if probs is None else None)
    s = np.asarray(s, dtype=np.float64)
    return s if spec.higher_is_confident else -s
