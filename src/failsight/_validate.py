"""Input checking at the library boundary.

Every public function funnels its array inputs through these helpers so that bad input (wrong shapes,
NaN/inf, probabilities that do not sum to one, labels out of range) fails early with a message that
names the problem *and* the fix. Nothing here imports torch; tensors are converted through their
``detach().cpu().numpy()`` methods when present.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Rows of a probability matrix may deviate from summing to one by at most this much.
PROB_SUM_ATOL = 1e-3


class FailsightInputError(ValueError):
    """Raised for invalid user input; the message says what is wrong and how to fix it."""


class FailsightWarning(UserWarning):
    """Issued for valid input whose result deserves caution (e.g. an estimate from very few samples)."""


def to_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` as a numpy array, accepting numpy arrays, torch tensors, lists and scalars."""
    if x is None:
        raise FailsightInputError(f"{name} is None; pass an array.")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise FailsightInputError(f"{name} could not be converted to an array: {exc}") from exc


def as_float_array(x: Any, name: str = "array", ndim: int | tuple[int, ...] | None = None,
                   allow_float32: bool = True) -> np.ndarray:
    """Convert to a finite floating array (float32 kept when ``allow_float32``, else float64)."""
    arr = to_numpy(x, name)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise FailsightInputError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise FailsightInputError(f"{name} must be {want}, got shape {arr.shape}.")
    if arr.size == 0:
        raise FailsightInputError(f"{name} is empty (shape {arr.shape}); pass at least one sample.")
    if not (allow_float32 and arr.dtype == np.float32):
        arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise FailsightInputError(
            f"{name} contains {bad} NaN/inf value(s); remove or impute them before calling."
        )
    return arr


def check_labels(y: Any, n_classes: int | None = None, name: str = "y_true") -> np.ndarray:
    """Validate integer class labels ``(n,)`` in ``[0, n_classes)``; returns int64 array."""
    arr = to_numpy(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FailsightInputError(
            f"{name} must be a 1-D array of integer class labels, got shape {arr.shape}. "
            "If you have one-hot labels, pass labels.argmax(axis=1)."
        )
    if arr.size == 0:
        raise FailsightInputError(f"{name} is empty; pass at least one sample.")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FailsightInputError(f"{name} contains NaN/inf; labels must be integers.")
        if not np.all(arr == np.round(arr)):
            raise FailsightInputError(
                f"{name} holds non-integer values; labels must be class indices 0..k-1."
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise FailsightInputError(
            f"{name} must hold integer class indices, got dtype {arr.dtype}. "
            "Map string labels to 0..k-1 first (e.g. sklearn.preprocessing.LabelEncoder)."
        )
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise FailsightInputError(f"{name} has negative label {lo}; labels must be in 0..k-1.")
    if n_classes is not None and hi >= n_classes:
        raise FailsightInputError(
            f"{name} has label {hi} but the predictions have only {n_classes} classes "
            f"(valid labels 0..{n_classes - 1}); check that labels and columns use the same encoding."
        )
    return arr


def check_probs(y_prob: Any, name: str = "y_prob", atol: float = PROB_SUM_ATOL,
                allow_float32: bool = True) -> np.ndarray:
    """Validate probabilities; returns ``(n, k)`` (a binary ``(n,)`` input becomes ``(n, 2)``).

    Entries must lie in [0, 1] and every row must sum to 1 within ``atol`` (default 1e-3, loose
    enough for float32 softmax outputs, tight enough to catch logits or unnormalised scores).
    """
    p = as_float_array(y_prob, name, ndim=(1, 2), allow_float32=allow_float32)
    if p.ndim == 1:
        if p.min() < 0 or p.max() > 1:
            raise FailsightInputError(
                f"{name} is 1-D, so it is read as P(class 1) and must lie in [0, 1]; got values in "
                f"[{p.min():.4g}, {p.max():.4g}]. Pass logits to a function that takes logits, or apply a sigmoid."
            )
        return np.stack([1 - p, p], axis=1)
    if p.shape[1] < 2:
        raise FailsightInputError(f"{name} has {p.shape[1]} column; need at least 2 classes.")
    if p.min() < 0 or p.max() > 1:
        raise FailsightInputError(
            f"{name} has values outside [0, 1] (min {p.min():.4g}, max {p.max():.4g}): these look like "
            "logits. Apply a softmax first, or pass them as `logits=`."
        )
    sums = p.sum(axis=1, dtype=np.float64)
    worst = float(np.abs(sums - 1).max())
    if worst > atol:
        i = int(np.abs(sums - 1).argmax())
        raise FailsightInputError(
            f"rows of {name} must sum to 1 (tolerance {atol:g}); row {i} sums to {sums[i]:.6g}. "
            "Normalise with p / p.sum(axis=1, keepdims=True) or apply a softmax to logits."
        )
    return p


def looks_like_probs(x: np.ndarray) -> bool:
    """Whether a numeric array reads as probabilities rather than logits: entries in [0, 1] and (2-D)
    rows summing to 1 within :data:`PROB_SUM_ATOL`. The one heuristic behind every ``input="auto"``."""
    if x.min() < 0 or x.max() > 1:
        return False
    if x.ndim == 1:
        return True
    return bool(np.all(np.abs(x.sum(axis=1, dtype=np.float64) - 1.0) <= PROB_SUM_ATOL))


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Validate a finite ``(n, k)`` logit matrix (binary ``(n,)`` becomes ``(n, 2)`` as [0, z])."""
    z = as_float_array(logits, name, ndim=(1, 2))
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.shape[1] < 2:
        raise FailsightInputError(f"{name} has {z.shape[1]} column; need at least 2 classes.")
    return z


def check_consistent_length(*arrays: np.ndarray, names: tuple[str, ...] | None = None) -> int:
    """Check that all arrays have the same number of rows; returns it."""
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        names = names or tuple(f"arg{i}" for i in range(len(arrays)))
        desc = ", ".join(f"{n}: {length}" for n, length in zip(names, lengths, strict=True))
        raise FailsightInputError(f"inputs have different numbers of samples ({desc}); they must match.")
    return lengths[0]


def check_labels_probs(y_true: Any, y_prob: Any, atol: float = PROB_SUM_ATOL) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels, probabilities) pair: ``(n,)`` ints and ``(n, k)`` probabilities."""
    p = check_probs(y_prob, atol=atol)
    y = check_labels(y_true, n_classes=p.shape[1])
    check_consistent_length(y, p, names=("y_true", "y_prob"))
    return y, p


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer parameter ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise FailsightInputError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise FailsightInputError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_fraction(value: Any, name: str, open_low: bool = True, open_high: bool = True) -> float:
    """Validate a float in (0, 1) (ends open or closed as asked)."""
    v = float(value)
    lo_ok = v > 0 if open_low else v >= 0
    hi_ok = v < 1 if open_high else v <= 1
    if not (lo_ok and hi_ok and np.isfinite(v)):
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise FailsightInputError(f"{name} must lie in {lo}0, 1{hi}, got {value!r}.")
    return v
