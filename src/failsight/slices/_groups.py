"""Input handling shared by :mod:`failsight.slices`: group labels and predictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_labels,
    check_probs,
    to_numpy,
)

#: Name given to the slicing when ``groups`` is a single array rather than a dict.
DEFAULT_SLICING = "group"


@dataclass(frozen=True, eq=False)
class Slicing:
    """One way of cutting the data: ``labels[codes[i]]`` is sample ``i``'s slice."""

    name: str
    labels: tuple[Any, ...]
    codes: np.ndarray  # (n,) int64 in [0, len(labels))
    counts: np.ndarray  # (len(labels),) int64, all >= 1


def _py(v: Any) -> Any:
    """numpy scalar -> plain Python value (so slice labels serialise and compare naturally)."""
    return v.item() if isinstance(v, np.generic) else v


def _one_slicing(name: str, g: Any, n: int) -> Slicing:
    where = f"groups[{name!r}]" if name != DEFAULT_SLICING else "groups"
    arr = to_numpy(g, where)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FailsightInputError(
            f"{where} must be a 1-D array with one group label per sample, got shape {arr.shape}. "
            "Pass several slicings as a dict, e.g. groups={'colour': c, 'shape': s}."
        )
    if arr.size == 0:
        raise FailsightInputError(f"{where} is empty; pass one group label per sample.")
    if len(arr) != n:
        raise FailsightInputError(
            f"{where} has {len(arr)} labels but there are {n} samples; pass exactly one group label per "
            "sample, in the same order as y_true."
        )
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise FailsightInputError(
                f"{where} has {int(bad.sum())} NaN/inf label(s) (first rows {rows}); every sample needs a "
                "group. Give missing ones an explicit label such as 'unknown', or drop those samples."
            )
    elif arr.dtype == object:
        missing = np.array([v is None or (isinstance(v, float) and not np.isfinite(v)) for v in arr])
        if missing.any():
            rows = np.flatnonzero(missing)[:5].tolist()
            raise FailsightInputError(
                f"{where} has {int(missing.sum())} missing label(s) (None/NaN; first rows {rows}); every "
                "sample needs a group. Give missing ones an explicit label such as 'unknown'."
            )
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool or arr.dtype.kind in "US"):
        raise FailsightInputError(f"{where} has unsupported dtype {arr.dtype}; use integer or string labels.")
    try:
        labels, codes = np.unique(arr, return_inverse=True)
    except TypeError:  # mixed types in an object array: compare as strings
        labels, codes = np.unique(arr.astype(str), return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    counts = np.bincount(codes, minlength=len(labels))
    return Slicing(str(name), tuple(_py(v) for v in labels), codes, counts)


def as_slicings(groups: Any, n: int) -> list[Slicing]:
    """Turn ``groups`` (one ``(n,)`` array, or a dict name -> ``(n,)`` array) into slicings."""
    if isinstance(groups, Mapping):
        if len(groups) == 0:
            raise FailsightInputError("groups is an empty dict; pass at least one slicing, e.g. {'class': y}.")
        return [_one_slicing(str(k), v, n) for k, v in groups.items()]
    if groups is None:
        raise FailsightInputError("groups is None; pass one group label per sample, or a dict of such arrays.")
    return [_one_slicing(DEFAULT_SLICING, groups, n)]


def _looks_like_binary_prob(arr: np.ndarray) -> bool:
    return (arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating) and bool(np.isfinite(arr).all())
            and not bool(np.all(arr == np.round(arr))))


def pred_labels(y_pred: Any, name: str = "y_pred") -> np.ndarray:
    """Predicted labels ``(n,)`` from labels ``(n,)`` or probabilities ``(n, k)`` (argmax).

    A 1-D float array with non-integer values is read as P(class 1) of a binary problem.
    """
    arr = to_numpy(y_pred, name)
    if (arr.ndim == 2 and arr.shape[1] > 1) or _looks_like_binary_prob(arr):
        return check_probs(arr, name=name).argmax(axis=1).astype(np.int64)
    return check_labels(arr, name=name)


def correctness(y_true: Any, y_pred: Any, name: str = "y_pred") -> tuple[np.ndarray, np.ndarray]:
    """Validate a label/prediction pair; returns ``(y_true (n,), correct (n,) bool)``."""
    y = check_labels(y_true, name="y_true")
    arr = to_numpy(y_pred, name)
    if _looks_like_binary_prob(arr) and int(y.max()) > 1:
        raise FailsightInputError(
            f"{name} is 1-D with fractional values, so it reads as P(class 1) of a binary problem, but y_true "
            f"has labels up to {int(y.max())}. If these are the max-probabilities p.max(axis=1) of a "
            f"{int(y.max()) + 1}+-class model, pass the full (n, k) probability matrix or the predicted labels "
            "p.argmax(axis=1) instead."
        )
    yp = pred_labels(arr, name)
    if arr.ndim == 2 and arr.shape[1] > 1 and int(y.max()) >= arr.shape[1]:
        raise FailsightInputError(
            f"y_true has label {int(y.max())} but {name} has only {arr.shape[1]} columns (classes "
            f"0..{arr.shape[1] - 1}); check that labels and columns use the same encoding."
        )
    if len(yp) != len(y):
        raise FailsightInputError(
            f"{name} has {len(yp)} predictions but y_true has {len(y)} labels; they must match."
        )
    return y, yp == y


def epoch_predictions(preds: Any, n: int, name: str = "preds_per_epoch") -> np.ndarray:
    """Predicted labels ``(E, n)`` from labels ``(E, n)`` or probabilities ``(E, n, k)`` (or a list)."""
    if isinstance(preds, (list, tuple)):
        if len(preds) == 0:
            raise FailsightInputError(f"{name} is empty; pass one prediction array per epoch/checkpoint.")
        rows = [pred_labels(p, f"{name}[{i}]") for i, p in enumerate(preds)]
        bad = [i for i, r in enumerate(rows) if len(r) != n]
        if bad:
            raise FailsightInputError(
                f"{name}[{bad[0]}] has {len(rows[bad[0]])} predictions but y_true has {n} labels; every "
                "epoch must predict the same samples."
            )
        return np.stack(rows)
    arr = to_numpy(preds, name)
    if arr.ndim == 3:
        e, m, k = arr.shape
        p = check_probs(as_float_array(arr, name).reshape(e * m, k), name=name)
        lab = p.argmax(axis=1).reshape(e, m).astype(np.int64)
    elif arr.ndim == 2:
        e, m = arr.shape
        lab = check_labels(arr.reshape(-1), name=name).reshape(e, m)
    else:
        raise FailsightInputError(
            f"{name} must be (E, n) predicted labels or (E, n, k) probabilities, got shape {arr.shape}."
        )
    if m != n:
        raise FailsightInputError(
            f"{name} has {m} predictions per epoch but y_true has {n} labels (shape {arr.shape}); the "
            "layout is (epochs, samples[, classes])."
        )
    return lab
