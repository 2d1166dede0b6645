"""Accuracy under shift learnt from simulated shifts of the reference set (the ``shift_regression`` estimator).

Every per-sample estimator (mean confidence, CBPE, ATC, DoC) reads only the confidences, and a model that
stays confident on inputs it gets wrong (fog, frost, snow on MNIST: 30-40% accurate at 95% confidence) fools
all of them. The outputs still *move*: the per-class softmax distributions and the mix of predicted classes
drift. This module learns, per model, how such window statistics map to accuracy, from windows whose
accuracy is known because they are built from the labelled reference set (the meta-dataset regression of
Deng & Zheng, CVPR 2021, "Are labels always necessary for classifier accuracy evaluation?"):

1. the reference is split in two halves (seeded): **A** is what every window is compared with, **B** is where
   the simulated windows come from (so a simulated no-shift window is as independent of A as a deployed one);
2. windows of ``window`` images of B: no shift, label shift (class priors from Dirichlet(alpha)) and every
   corruption of the default suite at five severities (:func:`failsight.robustness.corrupt`); their true
   accuracy is known;
3. :func:`window_stats` turns each window's softmax outputs (against A) into a few label-free numbers;
4. :class:`ShiftRegression` fits gradient-boosted trees from the statistics to the accuracy, and a second model
   of its error, from *leave-one-family-out* residuals on the corruption windows (the error to expect on a
   kind of shift the simulation did not contain) and cross-validated residuals on the others.

Only :func:`simulate_shifts` runs the model (on raw reference inputs); the rest is numpy/scikit-learn.
The monitor stores the table of simulated windows (a few hundred rows) and refits from it when reopened.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from failsight._validate import FailsightInputError, check_int
from failsight.monitor.estimators import AccuracyEstimate, _z

__all__ = ["STAT_NAMES", "ShiftRegression", "ShiftTable", "WindowStats", "simulate_reference", "simulate_shifts",
           "split_reference"]

#: Names of the window statistics, in the order :class:`WindowStats` returns them.
STAT_NAMES = (
    "mean_conf", "conf_q10", "conf_q25", "conf_median", "share_conf_below_0.5", "share_conf_below_0.9",
    "mean_norm_entropy", "mean_margin", "atc_share", "ks_excess_classes", "ks_excess_conf", "tv_pred_classes",
)
_KS_C = 1.36  # 95% quantile of the Kolmogorov distribution: the null scale removed from the KS distances


def split_reference(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the comparison half A and the simulation half B of a reference of ``m`` samples."""
    perm = np.random.default_rng([seed, 0x5E1F]).permutation(m)
    return np.sort(perm[: m // 2]), np.sort(perm[m // 2:])


class WindowStats:
    """Label-free statistics of a window's softmax outputs against a comparison set.

    ``probs_a`` ``(m, k)``, ``y_a`` ``(m,)``: the comparison half of the reference (the labels fix the ATC
    threshold on the maximum probability). Calling it on a window's probabilities ``(n, k)`` returns
    ``(len(STAT_NAMES),)``; the KS distances have their null scale ``1.36 sqrt((n + m) / (n m))`` subtracted, so
    windows of other sizes than the simulated ones read alike.
    """

    def __init__(self, probs_a: np.ndarray, y_a: np.ndarray) -> None:
        self.probs_a = np.asarray(probs_a, dtype=np.float64)
        self.k = self.probs_a.shape[1]
        conf = self.probs_a.max(axis=1)
        acc = float((self.probs_a.argmax(axis=1) == y_a).mean())
        s = np.sort(conf)
        n_above = round(acc * len(s))
        self.threshold = -np.inf if n_above >= len(s) else float(s[len(s) - n_above - 1])
        self.conf_a = conf
        self.pred_hist_a = np.bincount(self.probs_a.argmax(axis=1), minlength=self.k) / len(conf)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        n, m = len(p), len(self.probs_a)
        top2 = np.sort(p, axis=1)[:, -2:]
        conf, margin = top2[:, 1], top2[:, 1] - top2[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1) / math.log(self.k)
        null = _KS_C * math.sqrt((n + m) / (n * m))
        ks_cls = max(float(stats.ks_2samp(p[:, c], self.probs_a[:, c]).statistic) for c in range(self.k))
        ks_conf = float(stats.ks_2samp(conf, self.conf_a).statistic)
        hist = np.bincount(p.argmax(axis=1), minlength=self.k) / n
        q10, q25, q50 = np.quantile(conf, [0.1, 0.25, 0.5])
        return np.array([
            conf.mean(), q10, q25, q50, (conf < 0.5).mean(), (conf < 0.9).mean(), ent.mean(), margin.mean(),
            (conf > self.threshold).mean(), ks_cls - null, ks_conf - null, 0.5 * np.abs(hist - self.pred_hist_a).sum(),
        ])


@dataclasses.dataclass
class ShiftTable:
    """Simulated windows: statistics ``(N, len(STAT_NAMES))``, true accuracy ``(N,)``, and per window the
    shift family (``"none"``, ``"label"`` or a corruption family), shift name and severity (0 for none)."""

    stats: np.ndarray
    accuracy: np.ndarray
    family: np.ndarray
    shift: np.ndarray
    severity: np.ndarray
    window: int
    reference: str = ""  # labels_fingerprint of the reference it was built from

    def __len__(self) -> int:
        return len(self.accuracy)

    def subset(self, mask: np.ndarray) -> ShiftTable:
        return ShiftTable(self.stats[mask], self.accuracy[mask], self.family[mask], self.shift[mask],
                          self.severity[mask], self.window, self.reference)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with the monitor)."""
        return {"stat_names": list(STAT_NAMES), "stats": np.round(self.stats, 8).tolist(),
                "accuracy": self.accuracy.tolist(), "family": self.family.tolist(), "shift": self.shift.tolist(),
                "severity": self.severity.tolist(), "window": self.window, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShiftTable:
        if list(d.get("stat_names", [])) != list(STAT_NAMES):
            raise FailsightInputError(
                "the stored table of simulated shifts was made by another version of failsight (different window "
                "statistics); open the monitor with estimator='atc', or create it again from the reference inputs.")
        return cls(np.asarray(d["stats"], dtype=np.float64).reshape(len(d["accuracy"]), len(STAT_NAMES)),
                   np.asarray(d["accuracy"], dtype=np.float64), np.asarray(d["family"], dtype=str),
                   np.asarray(d["shift"], dtype=str), np.asarray(d["severity"], dtype=np.int64), int(d["window"]),
                   str(d.get("reference", "")))


def simulate_shifts(predict: Callable[[np.ndarray], np.ndarray], x_b: np.ndarray, y_b: np.ndarray,
                    probs_b: np.ndarray, stats_fn: WindowStats, *, window: int = 500, per_condition: int = 2,
                    severities: Sequence[int] = (1, 2, 3, 4, 5), shifts: Sequence[str] | None = None,
                    label_alphas: Sequence[float] = (10.0, 1.0, 0.3), n_label: int = 6, n_null: int = 30,
                    seed: int = 0, progress: bool = True) -> ShiftTable:
    """Windows with known accuracy built from the simulation half ``x_b`` ``(n, C, H, W)`` in [0, 1], ``y_b``
    ``(n,)`` (``probs_b`` ``(n, k)``: the model's outputs on it): ``n_null`` without shift, ``n_label`` per
    Dirichlet ``label_alphas``, ``per_condition`` per corruption (``shifts``: default the ``imagenet_c`` suite
    for the images' channel count) x ``severities``. Windows hold ``min(window, n // 2)`` images (so plain
    windows drawn without replacement still differ). ``predict`` maps images to softmax probabilities ``(n, k)``; it runs on one
    window at a time, so memory is bounded by a window. Seeded: the same inputs and seed give the same table."""
    from failsight.progress import progress_bar
    from failsight.robustness.label_shift import resample_to_priors
    from failsight.robustness.shifts import corrupt, list_shifts, shift_family

    x_b = np.asarray(x_b)
    if x_b.ndim != 4 or x_b.shape[1] not in (1, 3):
        raise FailsightInputError(
            f"simulated shifts need images (N, C, H, W) with C = 1 or 3, got shape {x_b.shape}; pass simulate=False "
            "for other inputs (the monitor then uses the per-sample estimators).")
    n = len(y_b)
    # at most half of B per window, so that windows drawn without replacement still differ
    w = min(check_int(window, "window", minimum=50), n // 2)
    per_condition = check_int(per_condition, "per_condition", minimum=1)
    names = list(shifts) if shifts is not None else list_shifts(suite="imagenet_c", channels=int(x_b.shape[1]))
    rng = np.random.default_rng([seed, 0x51A7])
    rows, acc, fam, name, sev = [], [], [], [], []

    def add(p: np.ndarray, y: np.ndarray, f: str, s: str, level: int) -> None:
        rows.append(stats_fn(p))
        acc.append(float((p.argmax(axis=1) == y).mean()))
        fam.append(f)
        name.append(s)
        sev.append(level)

    for _ in range(n_null):
        idx = rng.choice(n, w, replace=False)
        add(probs_b[idx], y_b[idx], "none", "none", 0)
    for a in label_alphas:
        for _ in range(n_label):
            idx = resample_to_priors(y_b, dirichlet_alpha=float(a), n=w, replace=True,
                                     n_classes=probs_b.shape[1], seed=int(rng.integers(2**31)))
            add(probs_b[idx], y_b[idx], "label", f"dirichlet_{a:g}", 0)
    total = len(names) * len(severities) * per_condition
    with progress_bar("simulated shifts", enabled=progress) as bar:
        task = bar.add_task("simulated shifts", total=total)
        for s in names:
            for level in severities:
                for _ in range(per_condition):
                    idx = rng.choice(n, w, replace=False)
                    xs = corrupt(np.ascontiguousarray(x_b[idx], dtype=np.float32), s, int(level),
                                 seed=int(rng.integers(2**31)))
                    add(np.asarray(predict(xs), dtype=np.float64), y_b[idx], shift_family(s), s, int(level))
                    bar.update(task, advance=1, info=f"{s} {level}")
    return ShiftTable(np.array(rows), np.array(acc), np.array(fam, dtype=str), np.array(name, dtype=str),
                      np.array(sev, dtype=np.int64), w)


def simulate_reference(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray,
                       probs: np.ndarray | None = None, *, seed: int = 0, progress: bool = True,
                       **options: Any) -> ShiftTable:
    """The table the :class:`~failsight.monitor.Monitor` learns ``shift_regression`` from, for a labelled
    reference of raw images ``x`` ``(m, C, H, W)`` in [0, 1] and ``y`` ``(m,)``: split it with
    :func:`split_reference` (``seed``), compare with half A, simulate on half B (:func:`simulate_shifts`,
    ``options``). ``predict`` maps images to probabilities ``(n, k)``; ``probs`` are its outputs on ``x`` if
    already known. Build it where the model runs and pass it as ``Monitor(..., simulate=table)`` to monitor
    saved probabilities elsewhere (same reference, same ``seed``)."""
    y = np.asarray(y)
    p = np.asarray(predict(x) if probs is None else probs, dtype=np.float64)
    if len(p) != len(y) or len(y) < 200:
        raise FailsightInputError(
            f"simulated shifts need at least 200 labelled reference images with one label each, got {len(p)} "
            f"outputs and {len(y)} labels.")
    a, b = split_reference(len(y), seed)
    table = simulate_shifts(predict, np.asarray(x)[b], y[b], p[b], WindowStats(p[a], y[a]), seed=seed,
                            progress=progress, **options)
    table.reference = labels_fingerprint(y)
    return table


def labels_fingerprint(y: np.ndarray) -> str:
    """Identity of the reference a table was built from: sha256 of its labels in order (the split into halves
    follows from their number and the seed)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(y, dtype=np.int64).tobytes()).hexdigest()


def _gbr(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=1.0,
                                     min_samples_leaf=3, random_state=seed)


class ShiftRegression:
    """Accuracy from window statistics, learnt on a :class:`ShiftTable` (see the module docstring).

    ``fit(table)``; ``estimate(stats, level, se_sampling)`` gives the value and an interval whose half-width
    is ``z(level) * sqrt(sigma(stats)^2 + se_sampling^2)``: ``sigma`` is a second model of the point model's
    absolute error (``sqrt(pi/2)`` times the predicted mean absolute residual, normal errors), fitted on
    leave-one-family-out residuals of the corruption windows and 5-fold residuals of the no-shift and
    label-shift windows.
    """

    name = "shift_regression"

    def __init__(self, seed: int = 0) -> None:
        self.seed = check_int(seed, "seed", minimum=0)

    def __repr__(self) -> str:
        return f"ShiftRegression(seed={self.seed})"

    def fit(self, table: ShiftTable) -> ShiftRegression:
        if len(table) < 20:
            raise FailsightInputError(f"need at least 20 simulated windows to fit shift_regression, got {len(table)}.")
        x, y = table.stats, table.accuracy
        self.model_ = _gbr(self.seed).fit(x, y)
        resid = self.out_of_family_residuals(table)
        self.error_model_ = _gbr(self.seed).fit(x, np.abs(resid))
        self.table_ = table
        return self

    def out_of_family_residuals(self, table: ShiftTable) -> np.ndarray:
        """Residuals ``(N,)`` of models that did not see the window: leave one corruption family out for the
        corruption windows, 5-fold for the no-shift and label-shift windows."""
        x, y = table.stats, table.accuracy
        pred = np.empty(len(y))
        other = np.isin(table.family, ("none", "label"))
        for f in np.unique(table.family[~other]):
            te = table.family == f
            pred[te] = _gbr(self.seed).fit(x[~te], y[~te]).predict(x[te])
        idx = np.flatnonzero(other)
        folds = np.random.default_rng([self.seed, 5]).permutation(len(idx)) % 5
        for k in range(5):
            te = np.zeros(len(y), dtype=bool)
            te[idx[folds == k]] = True
            if te.any():
                pred[te] = _gbr(self.seed).fit(x[~te], y[~te]).predict(x[te])
        return y - pred

    def point(self, stats_row: np.ndarray) -> float:
        return float(np.clip(self.model_.predict(np.asarray(stats_row, dtype=np.float64)[None])[0], 0.0, 1.0))

    def estimate(self, stats_row: np.ndarray, level: float = 0.9, se_sampling: float = 0.0) -> AccuracyEstimate:
        """Estimate and interval for a window with statistics ``stats_row`` ``(len(STAT_NAMES),)``."""
        if not hasattr(self, "model_"):
            raise FailsightInputError("shift_regression is not fitted; call fit(table) first.")
        row = np.asarray(stats_row, dtype=np.float64)[None]
        value = float(np.clip(self.model_.predict(row)[0], 0.0, 1.0))
        sigma = math.sqrt(math.pi / 2) * max(0.0, float(self.error_model_.predict(row)[0]))
        # the simulated windows' residuals hold their own sampling noise, drawn from half the reference (less
        # varied than a deployed window): add the window's sampling error rather than take the larger one
        se = math.sqrt(sigma**2 + float(se_sampling) ** 2)
        half = _z(level) * se
        return AccuracyEstimate(self.name, value, max(0.0, value - half), min(1.0, value + half), level, se)
