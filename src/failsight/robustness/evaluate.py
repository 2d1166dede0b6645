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

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
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
# running the model (picklable: it travels to the sweep's workers)
# --------------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _to_probs(out: np.ndarray, kind: str) -> np.ndarray:
    """float64 probabilities ``(b, k)`` from raw outputs: softmax of logits, renormalised probabilities."""
    out = np.asarray(out, dtype=np.float64)
    if kind == "logits":
        return _softmax(out)
    c = np.clip(out, 0.0, 1.0)
    return c / c.sum(axis=1, keepdims=True)


class _Runner:
    """Maps image batches ``(b, c, h, w)`` to raw outputs ``(b, k)`` (and penultimate features ``(b, d)``) for a
    torch module, an object with ``predict_proba`` (fed flattened images) or a callable.

    ``output_kind`` ("logits" / "probabilities") is decided once on the driver (:meth:`decide`) and then
    travels with the runner, so every worker converts outputs the same way. Features are read from the input
    of the module's last ``nn.Linear`` through a forward pre-hook registered for the duration of one call.
    """

    def __init__(self, model: Any, batch_size: int, *, features: bool = False) -> None:
        self.model = model
        self.batch_size = batch_size
        self.kind = "callable"
        self.output_kind: str | None = None
        self.has_features = False
        try:
            from torch import nn

            if isinstance(model, nn.Module):
                self.kind = "torch"
                self.has_features = features and any(isinstance(m, nn.Linear) for m in model.modules())
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        if self.kind == "callable":
            if hasattr(model, "predict_proba"):
                self.kind = "proba"
            elif not callable(model):
                raise FailsightInputError(
                    f"model must be a torch.nn.Module, an object with predict_proba, or a callable mapping a batch "
                    f"of images to logits or probabilities; got {type(model).__name__}."
                )

    # --- one batch ---------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray, captured: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        if self.kind == "torch":
            import torch

            p = next(self.model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
            captured.clear()
            with torch.no_grad():
                out = self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            out = out.detach().float().cpu().numpy()
            feats = captured[-1].reshape(len(x), -1).numpy() if captured else None
            return out, feats
        if self.kind == "proba":
            out = self.model.predict_proba(x.reshape(len(x), -1))
        else:
            out = self.model(x)
        out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        return out, None

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw outputs ``(n, k)`` float64 and features ``(n, d)`` float32 (None without) of ``x``, in batches."""
        captured: list[Any] = []
        handle = None
        if self.has_features:
            from torch import nn

            layer = [m for m in self.model.modules() if isinstance(m, nn.Linear)][-1]
            try:
                handle = layer.register_forward_pre_hook(
                    lambda _m, inp: captured.append(inp[0].detach().float().cpu()))
            except (RuntimeError, AttributeError):  # scripted modules may refuse hooks
                self.has_features = False
        outs, feats = [], []
        try:
            for i in range(0, len(x), self.batch_size):  # loop over batches, not samples
                xb = np.ascontiguousarray(x[i:i + self.batch_size], dtype=np.float32)
                try:
                    o, f = self._forward(xb, captured)
                except FailsightInputError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise FailsightInputError(
                        f"the model failed on a batch of images of shape {tuple(xb.shape)} ({first}); check that "
                        "the images match what the model expects (channels, size, value range and normalisation)."
                    ) from exc
                outs.append(o)
                feats.append(f)
        finally:
            if handle is not None:
                handle.remove()
        out = np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, 2))
        if out.ndim != 2 or len(out) != len(x) or out.shape[1] < 2:
            raise FailsightInputError(
                f"the model returned shape {out.shape} for {len(x)} images; it must return logits or "
                "probabilities of shape (n, k) with k >= 2."
            )
        if not np.isfinite(out).all():
            raise FailsightInputError("the model returned NaN/inf outputs; check the model and the inputs.")
        f_all = np.concatenate(feats).astype(np.float32) if feats and all(f is not None for f in feats) else None
        if f_all is None:
            self.has_features = False
        return out, f_all

    def decide(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Run on a first clean batch on the driver: fixes ``output_kind`` and checks the outputs."""
        out, feats = self.predict(x)
        if self.kind == "proba":
            self.output_kind = "probabilities"
        elif self.kind == "torch":
            self.output_kind = "logits"
        else:
            self.output_kind = "probabilities" if looks_like_probs(out) else "logits"
        return out, feats

    def probs(self, out: np.ndarray) -> np.ndarray:
        return _to_probs(out, self.output_kind or "logits")


# --------------------------------------------------------------------------------------------------
# the mergeable per-condition state
# --------------------------------------------------------------------------------------------------
#: Confidence thresholds τ of the accuracy-vs-confidence curves (counted per condition).
CURVE_THRESHOLDS: np.ndarray = np.round(np.r_[np.arange(0.0, 0.951, 0.05), 0.99], 2)
#: Uniform bins of the per-condition ECE (as ``reliability.metrics.ece``'s default).
N_BINS = 15
#: Rows per corruption chunk: the chunk index is part of the corruption seed's key, so a condition's
#: corrupted images do not depend on the batch size, the worker count or the backend.
CORRUPT_ROWS = 512


@dataclasses.dataclass(frozen=True, eq=False)
class ConditionStats:
    """Sufficient statistics of one model on one condition; merges by summing (see :meth:`merge`).

    ``n`` samples, ``hits`` correct top-1 predictions (int); ``bins`` top-label :class:`BinCounts` on
    :data:`N_BINS` uniform bins; ``brier`` / ``nll`` / ``conf`` float64 sums of the per-sample Brier score,
    negative log-likelihood and max probability; ``curve_n`` / ``curve_hits`` ``(t,)`` int64: samples with
    confidence ≥ τ and the correct ones among them, per τ of :data:`CURVE_THRESHOLDS`.
    """

    n: int
    hits: int
    bins: Any
    brier: float
    nll: float
    conf: float
    curve_n: np.ndarray
    curve_hits: np.ndarray
    n_classes: int = 0

    @classmethod
    def empty(cls) -> ConditionStats:
        from failsight.reliability._binning import BinCounts, uniform_edges

        t = len(CURVE_THRESHOLDS)
        return cls(0, 0, BinCounts.empty(uniform_edges(N_BINS)), 0.0, 0.0, 0.0, np.zeros(t, np.int64),
                   np.zeros(t, np.int64))

    @classmethod
    def of(cls, y: np.ndarray, probs: np.ndarray) -> ConditionStats:
        """Statistics of labels ``y (b,)`` and float64 probabilities ``probs (b, k)``."""
        from failsight.reliability._binning import top_label_counts

        k = probs.shape[1]
        if len(y) and int(y.max()) >= k:
            raise FailsightInputError(
                f"y has label {int(y.max())} but the model gives only {k} class scores; labels and model "
                "outputs must use the same classes."
            )
        conf = probs.max(axis=1)
        correct = probs.argmax(axis=1) == y
        d = probs.copy()
        d[np.arange(len(y)), y] -= 1.0
        eps = float(np.finfo(np.float64).eps)
        py = probs[np.arange(len(y)), y]
        above = conf[:, None] >= CURVE_THRESHOLDS[None, :]
        return cls(
            n=len(y), hits=int(correct.sum()), bins=top_label_counts(y, probs, N_BINS, "uniform"),
            brier=float(np.einsum("ij,ij->", d, d)), nll=float(-np.log(np.clip(py, eps, 1.0 - eps)).sum()),
            conf=float(conf.sum()), curve_n=above.sum(axis=0).astype(np.int64),
            curve_hits=(above & correct[:, None]).sum(axis=0).astype(np.int64), n_classes=k,
        )

    def merge(self, other: ConditionStats) -> ConditionStats:
        """Statistics of both sets of samples (a new object; associative, :meth:`empty` is the identity)."""
        return ConditionStats(self.n + other.n, self.hits + other.hits, self.bins.merge(other.bins),
                              self.brier + other.brier, self.nll + other.nll, self.conf + other.conf,
                              self.curve_n + other.curve_n, self.curve_hits + other.curve_hits,
                              max(self.n_classes, other.n_classes))

    def metrics(self) -> dict[str, float]:
        """accuracy, ece, brier, nll, mean_confidence (NaN for an empty state)."""
        from failsight.reliability.metrics import _error_from_counts

        if self.n == 0:
            return dict.fromkeys(("accuracy", "ece", "brier", "nll", "mean_confidence"), math.nan)
        half = 2.0 if self.n_classes == 2 else 1.0  # brier_score's "auto" halving for binary problems
        return {"accuracy": self.hits / self.n, "ece": _error_from_counts(self.bins, "top-label", "l1", False)[0],
                "brier": self.brier / self.n / half, "nll": self.nll / self.n, "mean_confidence": self.conf / self.n}


# --------------------------------------------------------------------------------------------------
# the condition task
# --------------------------------------------------------------------------------------------------
def corrupt_rows(x: np.ndarray, name: str, severity: int, seed: int, start: int = 0) -> np.ndarray:
    """``x`` (rows ``start ...`` of a test set, ``start`` a multiple of :data:`CORRUPT_ROWS`) corrupted the way the
    sweep corrupts it: chunk by chunk of :data:`CORRUPT_ROWS` rows, each chunk seeded from
    ``(seed, name, severity, chunk index)``. float32 ``(n, c, h, w)``."""
    from failsight.engine import task_seed
    from failsight.robustness.shifts import corrupt

    if start % CORRUPT_ROWS:
        raise FailsightInputError(f"start must be a multiple of {CORRUPT_ROWS}, got {start}.")
    out = np.empty(x.shape, np.float32)
    for i in range(0, len(x), CORRUPT_ROWS):  # chunks of rows, each one vectorised
        chunk = (start + i) // CORRUPT_ROWS
        xb = np.ascontiguousarray(x[i:i + CORRUPT_ROWS], dtype=np.float32)
        out[i:i + CORRUPT_ROWS] = _to_numpy_images(corrupt(xb, name, severity,
                                                           seed=task_seed(seed, "corrupt", (name, severity, chunk))))
    return out


def corrupted(x: Any, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The images :func:`evaluate` measures for shift ``name`` at ``severity`` with ``seed`` (float32)."""
    return corrupt_rows(_check_images(x), name, severity, seed)


@dataclasses.dataclass(frozen=True, eq=False)
class ConditionPartial:
    """What one condition task returns: ``stats`` (one :class:`ConditionStats` per model: the model, then the
    baseline) and the per-sample arrays later steps need: ``samples`` (the first few inputs, for the report),
    ``pool_soft`` / ``pool_rep`` (probabilities and representation of the detection pool rows, when asked)
    and, for the clean condition, ``raw`` / ``features`` of every row."""

    stats: tuple[ConditionStats, ...]
    samples: np.ndarray | None = None
    pool_soft: np.ndarray | None = None
    pool_rep: np.ndarray | None = None
    raw: np.ndarray | None = None
    features: np.ndarray | None = None


def _run_condition(context: dict[str, Any], key: tuple[Any, ...], params: dict[str, Any]) -> ConditionPartial:
    """One (shift, severity) condition, chunk by chunk: corrupt, forward, accumulate; never the whole set."""
    name, sev = key
    x, y = context["x"], context["y"]
    runners: list[_Runner] = context["runners"]
    keep_pool = params.get("pool", False)
    keep_all = params.get("keep_all", False)
    pool = context.get("pool")
    n_keep = int(context.get("n_samples", 0))
    stats = [ConditionStats.empty() for _ in runners]
    samples = None
    soft_parts: list[np.ndarray] = []
    rep_parts: list[np.ndarray] = []
    raw_parts: list[np.ndarray] = []
    feat_parts: list[np.ndarray] = []
    for start in range(0, len(y), CORRUPT_ROWS):  # chunks of rows; each chunk is vectorised
        stop = min(start + CORRUPT_ROWS, len(y))
        xb = np.array(x[start:stop], dtype=np.float32)  # a writable copy of one chunk (x may be memory-mapped)
        if name != "clean":
            xb = corrupt_rows(xb, name, sev, context["seed"], start)
        yb = np.asarray(y[start:stop])
        for i, r in enumerate(runners):
            raw, feats = r.predict(xb)
            probs = r.probs(raw)
            stats[i] = stats[i].merge(ConditionStats.of(yb, probs))
            if i:
                continue
            if start == 0 and n_keep:
                samples = xb[:n_keep].copy()
            if keep_all:
                raw_parts.append(raw)
                if feats is not None:
                    feat_parts.append(feats)
            if keep_pool and pool is not None:
                lo, hi = np.searchsorted(pool, [start, stop])
                rows = pool[lo:hi] - start
                soft_parts.append(probs[rows])
                rep_parts.append(feats[rows] if feats is not None else raw[rows])
    return ConditionPartial(
        stats=tuple(stats), samples=samples,
        pool_soft=np.concatenate(soft_parts) if soft_parts else None,
        pool_rep=np.concatenate(rep_parts) if rep_parts else None,
        raw=np.concatenate(raw_parts) if raw_parts else None,
        features=np.concatenate(feat_parts) if feat_parts and len(feat_parts) == len(raw_parts) else None,
    )


def _merge_condition(a: ConditionPartial | None, b: ConditionPartial) -> ConditionPartial:
    if a is None:
        return ConditionPartial(stats=b.stats)
    return ConditionPartial(stats=tuple(s.merge(t) for s, t in zip(a.stats, b.stats, strict=True)))


def _finalize_condition(p: ConditionPartial | None) -> list[dict[str, float]]:
    return [] if p is None else [s.metrics() for s in p.stats]


def _register() -> None:
    from failsight.engine import TaskKind, register_task_kind

    register_task_kind(TaskKind("robustness.condition", run=_run_condition, init=lambda: None,
                                merge=_merge_condition, finalize=_finalize_condition, mergeable=True))


_register()


def _sweep_conditions(runners: list[_Runner], xa: np.ndarray, ya: np.ndarray, conditions: list[tuple[str, int]],
                      seed: int, *, executor: Any = None, workers: int | None = None, backend: str = "local",
                      ray_address: str | None = None, progress: bool = True, pool: np.ndarray | None = None,
                      pool_keys: set[tuple[str, int]] | None = None, n_samples: int = 0,
                      ) -> list[ConditionPartial]:
    """Run the condition tasks (the clean condition ``("clean", 0)`` keeps every row's outputs)."""
    from failsight.engine import Plan, run_sweep

    pool_keys = pool_keys or set()
    plan = Plan.build("robustness.condition", conditions,
                      per_key=lambda k: {"pool": k in pool_keys, "keep_all": k == ("clean", 0)})
    context = {"x": xa, "y": ya, "runners": runners, "seed": seed, "pool": pool, "n_samples": n_samples}
    return run_sweep(plan, context, executor=executor, workers=workers, backend=backend, ray_address=ray_address,
                     progress=progress, label="robustness", work=float(xa.size) * len(plan) * len(runners),
                     describe=lambda s: "clean" if s.key[0] == "clean" else f"{s.key[0]} s{s.key[1]}")


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
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


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _check_baseline(baseline: Any, names: tuple[str, ...], sev: tuple[int, ...], n: int) -> RobustnessResult | None:
    if not isinstance(baseline, RobustnessResult):
        return None
    covered = {(r.shift, r.severity) for r in baseline.rows[1:]}
    missing = [(s, v) for s in names for v in sev if (s, v) not in covered]
    if missing or baseline.n_samples != n:
        raise FailsightInputError(
            "the baseline result does not cover this evaluation (it needs the same data and every "
            f"shift × severity; missing {missing[:3]}{'...' if len(missing) > 3 else ''}). "
            "Re-run evaluate on the baseline model with the same arguments, or pass the model itself."
        )
    return baseline


def _build_result(names: tuple[str, ...], sev: tuple[int, ...], measured: list[list[dict[str, float]]],
                  base_result: RobustnessResult | None, n: int, seed: int, output_kind: str) -> RobustnessResult:
    """The table from per-condition metrics ``measured`` (clean first, then shifts × severities; one dict per
    model: the model, then the baseline model when one was run)."""
    from failsight.robustness.shifts import shift_family

    clean = measured[0]
    results = {(name, s): measured[1 + i * len(sev) + j] for i, name in enumerate(names) for j, s in enumerate(sev)}
    c = clean[0]
    clean_err = 1.0 - c["accuracy"]
    if base_result is not None:
        base_clean_err = base_result.clean_error
        base_err = {(r.shift, r.severity): r.error for r in base_result.rows[1:]}
    elif len(clean) > 1:
        base_clean_err = 1.0 - clean[1]["accuracy"]
        base_err = {k: 1.0 - v[1]["accuracy"] for k, v in results.items()}
    else:
        base_clean_err = math.nan
        base_err = {}

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
        n_samples=n, seed=seed, output_kind=output_kind,
        baseline_clean_error=base_clean_err,
    )


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
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> RobustnessResult:
    """Measure accuracy and calibration of ``model`` on ``x`` under every shift × severity.

    Each condition is one task of the sweep engine (:mod:`failsight.engine`): it corrupts the test set chunk
    by chunk (:data:`CORRUPT_ROWS` rows, seeded from the condition and the chunk), runs the model and returns
    mergeable sums (hits, calibration-bin sums, Brier/NLL/confidence sums), so memory does not grow with the
    number of conditions and the table is identical for any ``workers`` and ``backend``.

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
    seed : seed of the random corruptions; the same seed gives the same table (see :func:`corrupted`).
    batch_size : images per forward pass.
    progress : show progress on stderr (a bar in a terminal, log lines otherwise).
    workers : worker processes (default: every usable core; 1 runs in this process).
    backend : ``"local"`` or ``"ray"`` (``ray_address`` or ``RAY_ADDRESS``; without one a local cluster).

    Returns
    -------
    RobustnessResult: the clean row and one row per condition, CE / mCE (relative too) against the
    baseline, and overconfidence under shift.
    """
    xa = _check_images(x)
    ya = check_labels(y, name="y")
    check_consistent_length(xa, ya, names=("x", "y"))
    seed = check_int(seed, "seed", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    names, sev = _check_shift_list(shifts, severities)
    base_result = _check_baseline(baseline, names, sev, len(ya))
    runners = [_Runner(model, batch_size)]
    if baseline is not None and base_result is None:
        runners.append(_Runner(baseline, batch_size))
    first = xa[:CORRUPT_ROWS]
    with _eval_mode(model), _eval_mode(baseline):
        for r in runners:
            ConditionStats.of(ya[:CORRUPT_ROWS], r.probs(r.decide(first)[0]))  # checks outputs and labels first
    conditions = [("clean", 0)] + [(s, v) for s in names for v in sev]
    with _eval_mode(model), _eval_mode(baseline):
        partials = _sweep_conditions(runners, xa, ya, conditions, seed, workers=workers, backend=backend,
                                     ray_address=ray_address, progress=progress)
    return _build_result(names, sev, [_finalize_condition(p) for p in partials], base_result, len(ya), seed,
                         runners[0].output_kind or "logits")


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """A torch module in eval mode for the duration (its training flag restored afterwards)."""
    was = getattr(model, "training", None) if hasattr(model, "eval") and hasattr(model, "train") else None
    if was is not None:
        model.eval()
    try:
        yield
    finally:
        if was is not None:
            model.train(was)


def _to_numpy_images(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
