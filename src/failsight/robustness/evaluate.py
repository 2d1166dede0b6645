"""Accuracy *and* calibration of a model under a suite of shifts with severities.

``evaluate(model, x, y, shifts=..., severities=(1, ..., 5))`` corrupts the labelled images with every
shift at every severity, runs the model and measures accuracy, ECE, Brier score, NLL and mean confidence
with the reliability pillar's metrics. With a ``baseline`` model it adds the ImageNet-C corruption errors
(Hendrycks & Dietterich 2019):

- ``CE_c = Σ_s err_{s,c} / Σ_s err^base_{s,c}`` and ``mCE = mean_c CE_c``;
- relative ``CE_c = Σ_s (err_{s,c} − err_clean) / Σ_s (err^base_{s,c} − err^base_clean)`` and its mean.

(Ratios: 1.0 means "as bad as the baseline"; the paper prints them as percentages.)

*Overconfidence under shift* per condition is ``(acc_clean − acc) − (conf_clean − conf)``: how much more
the accuracy fell than the confidence did. Positive values mean the model keeps claiming confidence it no
longer has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_int,
    check_labels,
    looks_like_probs,
)
from failsight.types import Result

#: Metrics measured per condition (the columns of :meth:`RobustnessResult.matrix`).
METRICS: tuple[str, ...] = ("accuracy", "error", "ece", "brier", "nll", "mean_confidence",
                            "accuracy_drop", "confidence_drop", "overconfidence")


# --------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RobustnessRow(Result):
    """Metrics of the model on one condition (``shift="clean"``, ``severity=0`` for the clean data).

    ``accuracy_drop`` / ``confidence_drop`` are clean minus shifted values; ``overconfidence`` is
    ``accuracy_drop - confidence_drop``. ``baseline_error`` is the baseline model's error (NaN without one).
    """

    shift: str
    family: str
    severity: int
    accuracy: float
    error: float
    ece: float
    brier: float
    nll: float
    mean_confidence: float
    accuracy_drop: float
    confidence_drop: float
    overconfidence: float
    baseline_error: float = math.nan


@dataclasses.dataclass(frozen=True)
class RobustnessResult(Result):
    """Table of metrics per shift × severity plus the clean row, and corruption-error summaries.

    ``rows``: the clean row first, then one row per (shift, severity) in the order given.
    ``ce`` / ``relative_ce``: per-shift corruption errors relative to the baseline (empty without one);
    ``mce`` / ``relative_mce`` their means (NaN without a baseline). ``mean_error``: mean error over all
    shifted conditions (the unnormalised mCE). ``mean_overconfidence``: mean over all shifted conditions;
    ``overconfidence_by_shift``: mean over severities per shift.
    """

    rows: tuple[RobustnessRow, ...]
    shifts: tuple[str, ...]
    severities: tuple[int, ...]
    families: dict[str, str]
    clean_accuracy: float
    clean_error: float
    mean_error: float
    mean_overconfidence: float
    overconfidence_by_shift: dict[str, float]
    ce: dict[str, float]
    relative_ce: dict[str, float]
    mce: float
    relative_mce: float
    n_samples: int
    seed: int
    output_kind: str
    baseline_clean_error: float = math.nan

    @property
    def clean(self) -> RobustnessRow:
        """The row for the unshifted data."""
        return self.rows[0]

    def row(self, shift: str, severity: int) -> RobustnessRow:
        """The row for one ``(shift, severity)`` condition."""
        for r in self.rows[1:]:
            if r.shift == shift and r.severity == severity:
                return r
        raise FailsightInputError(
            f"no row for shift {shift!r} at severity {severity}; shifts are {list(self.shifts)} and "
            f"severities {list(self.severities)}."
        )

    def matrix(self, metric: str) -> np.ndarray:
        """``(n_shifts, n_severities)`` array of ``metric`` (e.g. for a heatmap); rows follow ``shifts``."""
        if metric not in METRICS and metric != "baseline_error":
            raise FailsightInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
        out = np.full((len(self.shifts), len(self.severities)), np.nan)
        si = {s: i for i, s in enumerate(self.shifts)}
        vi = {v: j for j, v in enumerate(self.severities)}
        for r in self.rows[1:]:
            out[si[r.shift], vi[r.severity]] = getattr(r, metric)
        return out

    def table(self) -> list[dict[str, Any]]:
        """The rows as a list of plain dicts (e.g. for ``pandas.DataFrame(result.table())``)."""
        return [r.to_dict() for r in self.rows]


# --------------------------------------------------------------------------------------------------
# model adapter (the proper adapters come later; this one is private)
# --------------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Predictor:
    """Maps images ``(n, c, h, w)`` to float64 probabilities ``(n, k)`` for a torch module or a callable.

    Whether the model returns logits or probabilities is decided once, on the clean data, and then kept.
    """

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.kind: str | None = None
        self._is_torch = False
        try:
            from torch import nn

            self._is_torch = isinstance(model, nn.Module)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        if not self._is_torch and not callable(model) and not hasattr(model, "predict_proba"):
            raise FailsightInputError(
                f"model must be a torch.nn.Module, an object with predict_proba, or a callable mapping a batch "
                f"of images to logits or probabilities; got {type(model).__name__}."
            )

    def _raw(self, x: np.ndarray) -> np.ndarray:
        if self._is_torch:
            from failsight.models.cnn import predict_logits

            self.kind = "logits"
            return np.asarray(predict_logits(self.model, x, batch_size=self.batch_size), dtype=np.float64)
        outs = []
        for i in range(0, len(x), self.batch_size):  # loop over batches, not samples
            xb = x[i:i + self.batch_size]
            if hasattr(self.model, "predict_proba"):
                ob = self.model.predict_proba(xb.reshape(len(xb), -1))
                self.kind = "probabilities"
            else:
                ob = self.model(xb)
            ob = ob.detach().cpu().numpy() if hasattr(ob, "detach") else np.asarray(ob)
            outs.append(ob)
        out = np.concatenate(outs).astype(np.float64)
        if out.ndim != 2 or len(out) != len(x) or out.shape[1] < 2:
            raise FailsightInputError(
                f"the model returned shape {out.shape} for {len(x)} images; it must return logits or "
                "probabilities of shape (n, k) with k >= 2."
            )
        if not np.isfinite(out).all():
            raise FailsightInputError("the model returned NaN/inf outputs; check the model and the inputs.")
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._raw(x)
        if self.kind is None:
            self.kind = "probabilities" if looks_like_probs(out) else "logits"
        if self.kind == "logits":
            return _softmax(out)
        return np.clip(out, 0.0, 1.0) / np.clip(out, 0.0, 1.0).sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def _metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from failsight.reliability.metrics import accuracy, brier_score, ece, nll

    return {
        "accuracy": float(accuracy(y, probs)),
        "ece": float(ece(y, probs)),
        "brier": float(brier_score(y, probs)),
        "nll": float(nll(y, probs)),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def _default_shifts() -> tuple[str, ...]:
    from failsight.robustness.shifts import CORRUPTIONS

    return tuple(CORRUPTIONS)


def _check_images(x: Any) -> np.ndarray:
    arr = as_float_array(x, "x", ndim=4)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise FailsightInputError(
            f"x must hold images with values in [0, 1], got values in [{arr.min():.4g}, {arr.max():.4g}]; "
            "scale them (e.g. x / 255) before evaluating."
        )
    if arr.shape[1] not in (1, 3):
        raise FailsightInputError(
            f"x must be (n, c, h, w) with c = 1 or 3 channels, got shape {arr.shape}; "
            "transpose channels-last images with x.transpose(0, 3, 1, 2)."
        )
    from failsight.robustness.shifts import MIN_SIZE

    if min(arr.shape[2:]) < MIN_SIZE:
        raise FailsightInputError(
            f"images must be at least {MIN_SIZE}x{MIN_SIZE} pixels for the shifts, got {arr.shape[2]}x"
            f"{arr.shape[3]}; upsample them first."
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_shift_list(shifts: Any, severities: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    from failsight.robustness.shifts import list_shifts

    valid = set(list_shifts())
    names = _default_shifts() if shifts is None else ((shifts,) if isinstance(shifts, str) else tuple(shifts))
    if not names:
        raise FailsightInputError("shifts is empty; pass at least one shift name (see list_shifts()).")
    unknown = [s for s in names if s not in valid]
    if unknown:
        raise FailsightInputError(
            f"unknown shift(s) {unknown}; valid names are: {', '.join(sorted(valid))}."
        )
    if len(set(names)) != len(names):
        raise FailsightInputError(f"shifts lists a name twice: {list(names)}; give each shift once.")
    sev = (severities,) if isinstance(severities, (int, np.integer)) else tuple(severities)
    if not sev:
        raise FailsightInputError("severities is empty; pass e.g. (1, 2, 3, 4, 5).")
    for s in sev:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= 5:
            raise FailsightInputError(f"severities must be integers in 1..5, got {list(sev)}.")
    if len(set(sev)) != len(sev):
        raise FailsightInputError(f"severities lists a value twice: {list(sev)}.")
    return names, tuple(int(s) for s in sev)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]robustness[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=True, disable=not enabled,
    )


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def evaluate(
    model: Any,
    x: Any,
    y: Any,
    shifts: Sequence[str] | str | None = None,
    severities: Sequence[int] | int = (1, 2, 3, 4, 5),
    *,
    baseline: Any = None,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = True,
) -> RobustnessResult:
    """Measure accuracy and calibration of ``model`` on ``x`` under every shift × severity.

    Parameters
    ----------
    model : a torch ``nn.Module`` returning logits, an object with ``predict_proba`` (fed flattened
        images), or a callable mapping a numpy batch ``(b, c, h, w)`` to logits or probabilities ``(b, k)``.
    x : images ``(n, c, h, w)`` in [0, 1] with 1 or 3 channels (numpy or torch).
    y : labels ``(n,)``.
    shifts : shift names from :func:`failsight.robustness.shifts.list_shifts` (default: the 15 ImageNet-C
        corruptions, over which mCE is defined).
    severities : integers in 1..5.
    baseline : a second model evaluated the same way (for CE / mCE), or the :class:`RobustnessResult` of an
        earlier ``evaluate`` call with the same shifts, severities and data.
    seed : seed of the random corruptions; the same seed gives the same table.
    batch_size : images per forward pass.
    progress : show a progress bar on stderr.

    Returns
    -------
    RobustnessResult: the clean row and one row per condition, CE / mCE (relative too) against the
    baseline, and overconfidence under shift.
    """
    from failsight.robustness.shifts import corrupt

    xa = _check_images(x)
    ya = check_labels(y, name="y")
    check_consistent_length(xa, ya, names=("x", "y"))
    seed = check_int(seed, "seed", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    names, sev = _check_shift_list(shifts, severities)

    predictors: list[_Predictor] = [_Predictor(model, batch_size)]
    base_result: RobustnessResult | None = None
    if isinstance(baseline, RobustnessResult):
        base_result = baseline
        covered = {(r.shift, r.severity) for r in baseline.rows[1:]}
        missing = [(s, v) for s in names for v in sev if (s, v) not in covered]
        if missing or baseline.n_samples != len(ya):
            raise FailsightInputError(
                "the baseline result does not cover this evaluation (it needs the same data and every "
                f"shift × severity; missing {missing[:3]}{'...' if len(missing) > 3 else ''}). "
                "Re-run evaluate on the baseline model with the same arguments, or pass the model itself."
            )
    elif baseline is not None:
        predictors.append(_Predictor(baseline, batch_size))

    def measure(xc: np.ndarray) -> list[dict[str, float]]:
        out = []
        for pred in predictors:
            probs = pred(xc)
            if probs.shape[1] <= int(ya.max()):
                raise FailsightInputError(
                    f"y has label {int(ya.max())} but the model gives only {probs.shape[1]} class scores; "
                    "labels and model outputs must use the same classes."
                )
            out.append(_metrics(ya, probs))
        return out

    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with _progress(progress) as bar:
        task = bar.add_task("evaluate", total=1 + len(names) * len(sev), info="clean")
        clean = measure(xa)
        bar.update(task, advance=1)
        for name in names:  # loop over conditions; each is one vectorised corruption + forward pass
            for s in sev:
                bar.update(task, info=f"{name} s{s}")
                xc = np.asarray(_to_numpy_images(corrupt(xa, name, s, seed=seed)), dtype=np.float32)
                results[(name, s)] = measure(xc)
                bar.update(task, advance=1)

    c = clean[0]
    clean_err = 1.0 - c["accuracy"]
    if base_result is not None:
        base_clean_err = base_result.clean_error
        base_err = {(r.shift, r.severity): r.error for r in base_result.rows[1:]}
    elif len(predictors) > 1:
        base_clean_err = 1.0 - clean[1]["accuracy"]
        base_err = {k: 1.0 - v[1]["accuracy"] for k, v in results.items()}
    else:
        base_clean_err = math.nan
        base_err = {}

    from failsight.robustness.shifts import shift_family

    families = {name: shift_family(name) for name in names}
    rows = [RobustnessRow(shift="clean", family="clean", severity=0, accuracy=c["accuracy"], error=clean_err,
                          ece=c["ece"], brier=c["brier"], nll=c["nll"], mean_confidence=c["mean_confidence"],
                          accuracy_drop=0.0, confidence_drop=0.0, overconfidence=0.0,
                          baseline_error=base_clean_err)]
    for (name, s), ms in results.items():
        m = ms[0]
        acc_drop = c["accuracy"] - m["accuracy"]
        conf_drop = c["mean_confidence"] - m["mean_confidence"]
        rows.append(RobustnessRow(
            shift=name, family=families[name], severity=s, accuracy=m["accuracy"], error=1.0 - m["accuracy"],
            ece=m["ece"], brier=m["brier"], nll=m["nll"], mean_confidence=m["mean_confidence"],
            accuracy_drop=acc_drop, confidence_drop=conf_drop, overconfidence=acc_drop - conf_drop,
            baseline_error=base_err.get((name, s), math.nan),
        ))

    ce: dict[str, float] = {}
    rel: dict[str, float] = {}
    if base_err:
        for name in names:
            err = np.array([1.0 - results[(name, s)][0]["accuracy"] for s in sev])
            berr = np.array([base_err[(name, s)] for s in sev])
            ce[name] = _ratio(err.sum(), berr.sum())
            rel[name] = _ratio((err - clean_err).sum(), (berr - base_clean_err).sum())
    oc_by_shift = {name: float(np.mean([r.overconfidence for r in rows[1:] if r.shift == name]))
                   for name in names}
    return RobustnessResult(
        rows=tuple(rows), shifts=names, severities=sev, families=families,
        clean_accuracy=c["accuracy"], clean_error=clean_err,
        mean_error=float(np.mean([r.error for r in rows[1:]])),
        mean_overconfidence=float(np.mean([r.overconfidence for r in rows[1:]])),
        overconfidence_by_shift=oc_by_shift, ce=ce, relative_ce=rel,
        mce=float(np.mean(list(ce.values()))) if ce else math.nan,
        relative_mce=float(np.mean(list(rel.values()))) if rel else math.nan,
        n_samples=len(ya), seed=seed, output_kind=predictors[0].kind or "logits",
        baseline_clean_error=base_clean_err,
    )


def _to_numpy_images(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

