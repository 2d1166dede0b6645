"""Input checking at the library boundary.

Every public function funnels its array inputs through these helpers so that bad input (wrong shapes,
NaN/inf, probabilities that do not sum to one, labels out of range) fails early with a message that
names the problem *and* the fix. Nothing here imports torch; tensors are converted through their
``detach().cpu().numpy()`` methods when present.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Rows of a probability matrix may deviate from summing to one by at most this much. Row sums are
#: computed in float64 (float32 entries widen exactly), so float rounding adds ~k * 1e-16 for k classes:
#: the same tolerance holds for float16/32/64 and any class count.
PROB_SUM_ATOL = 1e-3

#: torch dtypes numpy has no equivalent of, with their unit roundoff (half the machine epsilon); every value
#: of each is exactly a float32, which is what :func:`to_numpy` turns them into.
_TORCH_WIDEN = {"torch.bfloat16": 2.0**-8, "torch.float8_e4m3fn": 2.0**-4, "torch.float8_e5m2": 2.0**-3,
                "torch.float8_e4m3fnuz": 2.0**-4, "torch.float8_e5m2fnuz": 2.0**-3}


def _storage_roundoff(x: Any) -> tuple[float, float]:
    """``(u, s)`` of the dtype ``x`` was stored in: unit roundoff and half the subnormal spacing (the absolute
    error of storing a value too small for a normal number); ``(0, 0)`` for float32/64 and non-floats (their
    storage errors, <= 6e-8 relative, are far inside :data:`PROB_SUM_ATOL`)."""
    dt = str(getattr(x, "dtype", None))
    if dt in _TORCH_WIDEN:
        return _TORCH_WIDEN[dt], 0.0  # bfloat16/float8 subnormals are < 1e-38 (e5m2: 2**-17, negligible)
    if dt in ("torch.float16", "float16"):
        return 2.0**-11, 2.0**-25
    return 0.0, 0.0


class FailsightInputError(ValueError):
    """Raised for invalid user input; the message says what is wrong and how to fix it."""


class FailsightWarning(UserWarning):
    """Issued for valid input whose result deserves caution (e.g. an estimate from very few samples)."""


def to_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Return ``x`` as a numpy array, accepting numpy arrays, torch tensors, lists and scalars."""
    if x is None:
        raise FailsightInputError(f"{name} is None; pass an array.")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) in _TORCH_WIDEN:  # no numpy dtype: widen exactly to float32
            x = x.float()
        try:
            x = x.numpy()
        except (TypeError, RuntimeError) as exc:
            raise FailsightInputError(
                f"{name} is a torch tensor of dtype {x.dtype}, which numpy cannot hold ({exc}); convert it "
                "first, e.g. tensor.float() or tensor.long()."
            ) from exc
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise FailsightInputError(f"{name} could not be converted to an array: {exc}") from exc


def as_float_array(x: Any, name: str = "array", ndim: int | tuple[int, ...] | None = None,
                   allow_float32: bool = True) -> np.ndarray:
    """Convert to a finite floating array (float32 kept when ``allow_float32``, else float64)."""
    arr = to_numpy(x, name)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise FailsightInputError(
            f"{name} holds complex numbers (dtype {arr.dtype}); failsight needs real values. Pass the part "
            "you mean explicitly (x.real, or np.abs(x) for magnitudes)."
        )
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
        if float(np.abs(arr).max()) >= 2.0**63:  # would wrap in int64
            raise FailsightInputError(
                f"{name} has label {float(arr.max() if arr.max() >= 2.0**63 else arr.min()):.6g}, far outside "
                "any class range; labels must be class indices 0..k-1."
            )
    elif np.issubdtype(arr.dtype, np.unsignedinteger):
        if int(arr.max()) > np.iinfo(np.int64).max:  # would wrap to a negative int64
            raise FailsightInputError(
                f"{name} has label {int(arr.max())} (dtype {arr.dtype}), far outside any class range; labels "
                "must be class indices 0..k-1 (a value of 2**64-1 is often -1 stored unsigned)."
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
    enough for float32 softmax outputs, tight enough to catch logits or unnormalised scores). Sums are taken
    in float64, so the tolerance is the same for any class count. Probabilities stored in a coarser dtype
    (float16 arrays or tensors, bfloat16/float8 tensors) get ``max(atol, 2u + k s)`` for that dtype's unit
    roundoff ``u`` and half subnormal spacing ``s``: storing an entry moves it by <= u relative or <= s
    absolute (for values below the normal range: many-class softmax outputs), so a normalised row's sum by
    <= u + k s, and the factor 2 on u covers the rounding of the softmax that produced it.
    """
    u, sub = _storage_roundoff(y_prob)
    p = as_float_array(y_prob, name, ndim=(1, 2), allow_float32=allow_float32)
    atol = max(atol, 2 * u + (p.shape[1] if p.ndim == 2 else 2) * sub)
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


def resolve_prediction_kind(x: np.ndarray, is_logits: bool | None, name: str = "predictions") -> bool:
    """Whether ``x`` holds logits: detected with :func:`looks_like_probs` when ``is_logits`` is None. Declared
    logits that are plainly probabilities ((n, k >= 2), every entry in [0, 1], rows summing to 1 within
    :data:`PROB_SUM_ATOL` -- which real logits essentially never are) are read as probabilities with a
    :class:`FailsightWarning`: a softmax of probabilities would flatten them and give wrong numbers. 1-D
    values in [0, 1] are ambiguous (small binary margins) and follow the declaration."""
    if is_logits is None:
        return not looks_like_probs(x)
    if is_logits and x.ndim == 2 and x.shape[1] >= 2 and looks_like_probs(x):
        import warnings

        warnings.warn(
            f"{name} were given as logits but every row is a probability distribution (values in [0, 1] "
            "summing to 1); reading them as probabilities. Save probabilities under 'probs' (or pass "
            "is_logits=False) to silence this.", FailsightWarning, stacklevel=3)
        return False
    return bool(is_logits)


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


def check_float(value: Any, name: str) -> float:
    """A finite real number given as a Python/numpy int or float (not a string, None, bool or complex)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        hint = ""
        if isinstance(value, str):
            hint = " (a number, not a string" + (": 95% is 0.95" if value.strip().endswith("%") else "") + ")"
        raise FailsightInputError(f"{name} must be a number{hint}, got {value!r}.")
    v = float(value)
    if not np.isfinite(v):
        raise FailsightInputError(f"{name} must be finite, got {value!r}.")
    return v


def check_fraction(value: Any, name: str, open_low: bool = True, open_high: bool = True) -> float:
    """Validate a float in (0, 1) (ends open or closed as asked)."""
    v = check_float(value, name)
    lo_ok = v > 0 if open_low else v >= 0
    hi_ok = v < 1 if open_high else v <= 1
    if not (lo_ok and hi_ok and np.isfinite(v)):
        lo = "(" if open_low else "["
        hi = ")" if open_high else "]"
        raise FailsightInputError(f"{name} must lie in {lo}0, 1{hi}, got {value!r}.")
    return v
