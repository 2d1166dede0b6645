"""Per-slice evaluation, paired comparison of two models, and per-slice learning curves.

Aggregate accuracy hides *partial failures*: a change that helps most of the data can quietly break one
slice (a class, a colour, a shift family, a user group). The three entry points here make slices
first-class:

* :func:`evaluate` — per-slice accuracy (or any metric) with exact, Wilson or bootstrap intervals, the
  worst slice and each slice's gap to the overall value;
* :func:`compare` — a baseline against a candidate on the *same* samples: paired per-slice deltas,
  exact McNemar (or paired bootstrap) tests, multiple-testing correction, a verdict per slice and a
  ``partial_failure`` flag;
* :func:`learning_curves` — per-slice accuracy per epoch or checkpoint.

``groups`` is either one array of labels ``(n,)`` or a dict ``{slicing name: (n,) labels}`` for several
slicings at once (class, colour, shape, ...). Predictions may be labels ``(n,)`` or probabilities
``(n, k)`` (argmax taken). numpy/scipy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_fraction, check_int, check_labels, to_numpy
from failsight.slices._groups import Slicing, as_slicings, correctness, epoch_predictions
from failsight.slices._stats import (
    adjust_pvalues,
    mcnemar_one_sided,
    normalise_method,
    paired_bootstrap,
    paired_delta_interval,
    proportion_interval,
    wilson_interval,
)
from failsight.types import Interval, Result

__all__ = [
    "VERDICTS",
    "Comparison",
    "ComparisonRow",
    "LearningCurves",
    "SliceReport",
    "SliceRow",
    "compare",
    "evaluate",
    "learning_curves",
]

#: Possible per-slice verdicts of :func:`compare`.
VERDICTS = ("improved", "regressed", "no significant change", "too small")

#: Default minimum slice size: smaller slices are reported and flagged, but get no interval or test.
DEFAULT_MIN_SIZE = 20

_NAMED_METRICS = {"accuracy": True, "error": False, "coverage": True}  # name -> greater is better


# ============================================================================ evaluate


@dataclasses.dataclass(frozen=True)
class SliceRow(Result):
    """One slice of one slicing: its size, metric value, interval and gap to the overall value.

    ``ci`` is ``None`` and ``too_small`` is ``True`` when ``n < min_size``: the slice is reported but
    its value is too noisy for an interval (and it is not a candidate for the worst slice).
    """

    slicing: str
    slice: Any
    n: int
    value: float
    ci: Interval | None
    gap: float
    too_small: bool


@dataclasses.dataclass(frozen=True)
class SliceReport(Result):
    """Result of :func:`evaluate`.

    ``rows`` holds every slice of every slicing (in slicing order, labels sorted); ``worst`` maps each
    slicing to its worst slice among those with ``n >= min_size`` (``None`` if there is none);
    ``gap = value - overall`` (negative = below overall for accuracy).
    """

    metric: str
    greater_is_better: bool
    method: str
    level: float
    min_size: int
    n: int
    overall: float
    overall_ci: Interval | None
    rows: tuple[SliceRow, ...]
    worst: dict[str, SliceRow | None]

    @property
    def slicings(self) -> tuple[str, ...]:
        """Names of the slicings, in the order given."""
        return tuple(dict.fromkeys(r.slicing for r in self.rows))

    def for_slicing(self, name: str) -> tuple[SliceRow, ...]:
        """Rows of one slicing."""
        rows = tuple(r for r in self.rows if r.slicing == name)
        if not rows:
            raise FailsightInputError(f"no slicing named {name!r}; available: {list(self.slicings)}.")
        return rows

    @property
    def too_small(self) -> tuple[SliceRow, ...]:
        """Slices flagged as too small for an interval."""
        return tuple(r for r in self.rows if r.too_small)

    def table(self) -> list[dict[str, Any]]:
        """Flat rows (``ci_low``/``ci_high`` instead of an Interval) for tables and reports."""
        out = []
        for r in self.rows:
            d = {"slicing": r.slicing, "slice": r.slice, "n": r.n, self.metric: r.value,
                 "ci_low": r.ci.low if r.ci else None, "ci_high": r.ci.high if r.ci else None,
                 "gap": r.gap, "too_small": r.too_small}
            out.append(d)
        return out


def _check_level(ci: float) -> float:
    return check_fraction(ci, "ci")


def _split_indices(sl: Slicing) -> list[np.ndarray]:
    order = np.argsort(sl.codes, kind="stable")
    return np.split(order, np.cumsum(sl.counts)[:-1])


def _call_metric(metric: Callable[..., Any], y: np.ndarray, yp: np.ndarray, where: str) -> float:
    try:
        v = metric(y, yp)
    except Exception as exc:
        raise FailsightInputError(f"metric {getattr(metric, '__name__', metric)!r} failed on {where}: {exc}") from exc
    try:
        return float(v)
    except (TypeError, ValueError) as exc:
        raise FailsightInputError(
            f"metric must return one number, got {type(v).__name__} on {where}."
        ) from exc


def _callable_values(metric: Callable[..., Any], y: np.ndarray, yp: np.ndarray, idx_list: list[np.ndarray],
                     names: list[str], eligible: np.ndarray, level: float, n_boot: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Metric value and percentile-bootstrap interval per index set (replicate loop; metric is opaque)."""
    s = len(idx_list)
    val = np.empty(s)
    low = np.full(s, np.nan)
    high = np.full(s, np.nan)
    a = (1.0 - level) / 2.0
    for j, idx in enumerate(idx_list):
        val[j] = _call_metric(metric, y[idx], yp[idx], names[j])
        if not eligible[j]:
            continue
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        boot = np.array([_call_metric(metric, y[idx[r]], yp[idx[r]], names[j]) for r in draws])
        if np.isfinite(boot).any():
            low[j], high[j] = np.nanquantile(boot, [a, 1.0 - a])
    return val, low, high


def _set_coverage(y_true: Any, sets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(y (n,), covered (n,) bool)`` for prediction sets ``(n, k)`` (the ``"coverage"`` metric)."""
    s = to_numpy(sets, "y_pred")
    if s.ndim != 2 or not (s.dtype == bool or np.isin(s, (0, 1)).all()):
        raise FailsightInputError(
            f"metric='coverage' needs prediction sets as y_pred: a boolean (n, k) array, got shape {s.shape} and "
            f"dtype {s.dtype}. Build them with failsight.reliability.ConformalClassifier(...).predict_sets(probs)."
        )
    y = check_labels(y_true, n_classes=s.shape[1], name="y_true")
    if len(y) != len(s):
        raise FailsightInputError(f"y_pred has {len(s)} sets but y_true has {len(y)} labels; they must match.")
    return y, s.astype(bool, copy=False)[np.arange(len(y)), y]


def evaluate(
    y_true: Any,
    y_pred: Any,
    groups: Any,
    *,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "accuracy",
    ci: float = 0.95,
    method: str | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    greater_is_better: bool | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> SliceReport:
    """Per-slice metric values with intervals, the worst slice per slicing and gaps to overall.

    Parameters
    ----------
    y_true : int ``(n,)`` labels.
    y_pred : predicted labels ``(n,)`` or probabilities ``(n, k)`` (argmax taken for accuracy/error;
        a callable ``metric`` receives the array as given, sliced by rows).
    groups : ``(n,)`` group labels (int, str or bool), or a dict ``{name: (n,) labels}``.
    metric : ``"accuracy"``, ``"error"``, ``"coverage"`` or a callable ``metric(y_true, y_pred) -> float``.
        ``"coverage"`` takes prediction sets as ``y_pred``: bool ``(n, k)``, ``y_pred[i, j]`` = class ``j`` is in
        the set of sample ``i`` (e.g. :meth:`failsight.reliability.ConformalClassifier.predict_sets`); its
        value per slice is the share of samples whose true class is in their set (binomial intervals apply).
    ci : confidence level of the intervals.
    method : ``"wilson"`` or ``"clopper-pearson"`` (alias ``"exact"``) for accuracy/error, or
        ``"bootstrap"`` (percentile, ``n_boot`` replicates, seeded). Default: Wilson for accuracy/error,
        bootstrap for a callable metric (binomial intervals do not apply to arbitrary metrics).
    min_size : slices with fewer samples are reported with ``too_small=True`` and no interval.
    greater_is_better : direction of a callable metric (default ``True``); decides the worst slice.

    Returns
    -------
    SliceReport
    """
    min_size = check_int(min_size, "min_size", minimum=1)
    level = _check_level(ci)
    n_boot = check_int(n_boot, "n_boot", minimum=10)
    rng = np.random.default_rng(seed)

    if callable(metric):
        metric_name = getattr(metric, "__name__", "metric")
        gib = True if greater_is_better is None else bool(greater_is_better)
        method = "bootstrap" if method is None else normalise_method(method)
        if method != "bootstrap":
            raise FailsightInputError(
                f"method={method!r} gives binomial intervals, which only apply to accuracy/error; use "
                "method='bootstrap' for a custom metric."
            )
        y_arr = correctness(y_true, y_pred)[0]  # validates labels/predictions and their lengths
        yp_arr = to_numpy(y_pred, "y_pred")
        correct = np.zeros(0, dtype=bool)
        n = len(y_arr)
    else:
        key = str(metric).lower()
        if key not in _NAMED_METRICS:
            raise FailsightInputError(
                f"unknown metric {metric!r}; use 'accuracy', 'error', 'coverage' or a callable "
                "metric(y_true, y_pred)."
            )
        metric_name = key
        gib = _NAMED_METRICS[key]
        method = "wilson" if method is None else normalise_method(method)
        y_arr, correct = _set_coverage(y_true, y_pred) if key == "coverage" else correctness(y_true, y_pred)
        yp_arr = y_arr
        n = len(y_arr)

    slicings = as_slicings(groups, n)

    def binomial_values(k: np.ndarray, m: np.ndarray, elig: np.ndarray):
        acc = k / m
        lo = np.full(len(m), np.nan)
        hi = np.full(len(m), np.nan)
        if elig.any():
            lo[elig], hi[elig] = proportion_interval(k[elig], m[elig], level, method, n_boot=n_boot, rng=rng)
        if metric_name == "error":
            return 1.0 - acc, 1.0 - hi, 1.0 - lo
        return acc, lo, hi

    # overall
    all_ok = np.array([n >= min_size])
    if callable(metric):
        ov, olo, ohi = _callable_values(metric, y_arr, yp_arr, [np.arange(n)], ["all samples"], all_ok,
                                        level, n_boot, rng)
    else:
        ov, olo, ohi = binomial_values(np.array([correct.sum()], dtype=np.float64), np.array([n]), all_ok)
    overall = float(ov[0])
    overall_ci = Interval(float(olo[0]), float(ohi[0]), level) if all_ok[0] else None

    rows: list[SliceRow] = []
    worst: dict[str, SliceRow | None] = {}
    for sl in slicings:
        m = sl.counts
        elig = m >= min_size
        if callable(metric):
            names = [f"slice {sl.name}={lab!r}" for lab in sl.labels]
            val, lo, hi = _callable_values(metric, y_arr, yp_arr, _split_indices(sl), names, elig, level,
                                           n_boot, rng)
        else:
            k = np.bincount(sl.codes, weights=correct, minlength=len(sl.labels))
            val, lo, hi = binomial_values(k, m, elig)
        these = [
            SliceRow(sl.name, lab, int(m[j]), float(val[j]),
                     Interval(float(lo[j]), float(hi[j]), level) if elig[j] else None,
                     float(val[j] - overall), not bool(elig[j]))
            for j, lab in enumerate(sl.labels)
        ]
        rows.extend(these)
        cand = [r for r in these if not r.too_small and np.isfinite(r.value)]
        if cand:
            pick = min if gib else max
            worst[sl.name] = pick(cand, key=lambda r: r.value)
        else:
            worst[sl.name] = None
    return SliceReport(metric_name, gib, method, level, min_size, n, overall, overall_ci, tuple(rows), worst)


# ============================================================================ compare


@dataclasses.dataclass(frozen=True)
class ComparisonRow(Result):
    """Paired comparison on one slice (or ``overall``).

    ``delta = candidate - baseline`` accuracy; ``lost``/``gained`` count samples the candidate got
    wrong/right where the baseline was right/wrong (the discordant pairs). ``ci`` is the paired interval
    of delta at the requested level (uncorrected; ``None`` for too-small slices). ``p_value`` is the
    one-sided p-value in the direction of the observed change (for McNemar: twice it, capped at 1, is
    the classic two-sided exact McNemar p-value) and ``p_adjusted`` its multiplicity-corrected value
    within that direction's family; ``verdict`` is one of :data:`VERDICTS`.
    """

    slicing: str
    slice: Any
    n: int
    baseline: float
    candidate: float
    delta: float
    lost: int
    gained: int
    ci: Interval | None
    p_value: float
    p_adjusted: float
    verdict: str


@dataclasses.dataclass(frozen=True)
class Comparison(Result):
    """Result of :func:`compare`: per-slice rows, the overall row and the partial-failure flag."""

    rows: tuple[ComparisonRow, ...]
    overall: ComparisonRow
    partial_failure: bool
    alpha: float
    test: str
    correction: str
    mid_p: bool
    min_size: int
    level: float

    @property
    def regressed(self) -> tuple[ComparisonRow, ...]:
        """Slices that regressed significantly (after correction)."""
        return tuple(r for r in self.rows if r.verdict == "regressed")

    @property
    def improved(self) -> tuple[ComparisonRow, ...]:
        """Slices that improved significantly (after correction)."""
        return tuple(r for r in self.rows if r.verdict == "improved")

    def table(self) -> list[dict[str, Any]]:
        """Flat rows (overall first) with ``ci_low``/``ci_high``, for tables and reports."""
        out = []
        for r in (self.overall, *self.rows):
            d = dataclasses.asdict(r)
            d.pop("ci")
            d["ci_low"] = r.ci.low if r.ci else None
            d["ci_high"] = r.ci.high if r.ci else None
            out.append(d)
        return out

    def summary(self) -> str:
        """One-paragraph plain-text verdict."""
        o = self.overall
        head = (f"overall: {o.baseline:.4f} -> {o.candidate:.4f} ({o.delta * 100:+.2f} pts, {o.verdict}); "
                f"{len(self.improved)} slice(s) improved, {len(self.regressed)} regressed "
                f"({self.correction}-corrected, alpha={self.alpha:g}).")
        if self.partial_failure:
            worst = ", ".join(f"{r.slicing}={r.slice!r} ({r.delta * 100:+.2f} pts, p_adj={r.p_adjusted:.3g})"
                              for r in self.regressed)
            head = "PARTIAL FAILURE: " + head + " Regressed: " + worst + "."
        return head


def _paired_verdicts(kb: np.ndarray, kc: np.ndarray, m: np.ndarray, p_worse: np.ndarray, p_better: np.ndarray,
                     *, alpha: float, correction: str, min_size: int):
    """Verdict logic of :func:`compare`, vectorised over any leading (replicate) axes.

    ``kb``, ``kc`` (correct counts of baseline/candidate), ``p_worse``, ``p_better``: ``(..., S + 1)``
    with the overall entry last; ``m``: ``(S + 1,)`` sizes shared by all replicates. Returns
    ``(delta, p_value, p_adjusted, verdict_code, partial_failure)``; ``verdict_code`` indexes
    :data:`VERDICTS`, ``partial_failure`` is ``(...)``. Each direction's p-values over the slices with
    ``m >= min_size`` form one correction family; the overall entry is not corrected.
    """
    kb, kc = np.asarray(kb, dtype=np.float64), np.asarray(kc, dtype=np.float64)
    p_worse, p_better = np.asarray(p_worse, dtype=np.float64), np.asarray(p_better, dtype=np.float64)
    m = np.asarray(m)
    delta = (kc - kb) / m
    elig = m >= min_size
    fam = np.flatnonzero(elig[:-1])
    adj_worse = p_worse.copy()
    adj_better = p_better.copy()
    adj_worse[..., fam] = adjust_pvalues(p_worse[..., fam], correction)
    adj_better[..., fam] = adjust_pvalues(p_better[..., fam], correction)
    down, up = delta < 0, delta > 0
    p_dir = np.where(down, p_worse, np.where(up, p_better, np.maximum(p_worse, p_better)))
    adj_dir = np.where(down, adj_worse, np.where(up, adj_better, np.maximum(adj_worse, adj_better)))
    adj_dir = np.where(elig, adj_dir, np.nan)
    code = np.full(delta.shape, VERDICTS.index("no significant change"), dtype=np.int64)
    code[down & (adj_worse < alpha)] = VERDICTS.index("regressed")
    code[up & (adj_better < alpha)] = VERDICTS.index("improved")
    code[..., ~elig] = VERDICTS.index("too small")
    regressed = code == VERDICTS.index("regressed")
    partial = regressed[..., :-1].any(axis=-1) & ~regressed[..., -1]
    return delta, p_dir, adj_dir, code, partial


def compare(
    y_true: Any,
    pred_baseline: Any,
    pred_candidate: Any,
    groups: Any,
    alpha: float = 0.05,
    *,
    test: str = "mcnemar",
    correction: str = "holm",
    min_size: int = DEFAULT_MIN_SIZE,
    mid_p: bool = False,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare a candidate model against a baseline on the same samples, slice by slice.

    Per slice the paired outcomes give ``lost`` (baseline right, candidate wrong) and ``gained``
    (baseline wrong, candidate right). Tests:

    * ``test="mcnemar"`` — exact binomial test on the discordant pairs (``lost ~ Bin(lost + gained,
      1/2)`` under no change; ``mid_p=True`` uses the less conservative mid-p), with the Bonett-Price
      paired interval for the delta;
    * ``test="bootstrap"`` — paired bootstrap (``n_boot`` replicates, seeded), percentile interval and
      bootstrap p-values.

    **What alpha controls.** Verdicts are directional claims, and each direction is one family:
    the one-sided "worse" p-values of all slices with ``n >= min_size`` are corrected together
    (``holm`` / ``bonferroni``: family-wise error; ``bh``: false discovery rate, equal to the family-wise
    rate when no slice changed), and so are the "better" p-values. Hence, when no slice truly got worse,
    the probability that *any* slice is called "regressed" is at most ``alpha``, and that bounds the
    false-flag rate of ``partial_failure``. (Two-sided tests with a sign would bound it by ``alpha / 2``
    instead; no correction would let it grow with the number of slices.) The flag also needs the
    aggregate not to regress, and the exact test is conservative (the binomial is discrete), so the
    realised rate sits below ``alpha``. Measured on exchangeable baseline/candidate pairs (5 slices x
    400 samples, accuracies 0.60-0.90, 20,000 simulated pairs, alpha = 0.05, Holm): exact 0.027 / 0.027
    / 0.020 and mid-p 0.034 / 0.035 / 0.032 when the candidate shares 0 / 50 / 80 % of the baseline's
    outcomes; without correction 0.13-0.19. Use ``mid_p=True`` for a rate closer to ``alpha`` when the
    two models agree on most samples. The overall row is tested on its own (uncorrected) at ``alpha``.

    ``partial_failure`` is ``True`` when the aggregate improves or holds (overall verdict is not
    "regressed") while at least one slice is "regressed" after correction.

    Parameters
    ----------
    y_true : int ``(n,)`` labels.
    pred_baseline, pred_candidate : labels ``(n,)`` or probabilities ``(n, k)`` of the two models on the
        same samples in the same order.
    groups : ``(n,)`` group labels, or a dict ``{slicing name: (n,) labels}``; all slices of all
        slicings form the correction family.
    alpha : significance level of the verdicts.
    min_size : slices smaller than this get verdict "too small" (reported, not tested, not in the family).
    ci : level of the per-slice paired intervals of delta (uncorrected).

    Returns
    -------
    Comparison
    """
    alpha = check_fraction(alpha, "alpha")
    level = _check_level(ci)
    min_size = check_int(min_size, "min_size", minimum=1)
    n_boot = check_int(n_boot, "n_boot", minimum=100)
    test = str(test).lower()
    if test not in ("mcnemar", "bootstrap"):
        raise FailsightInputError(f"unknown test {test!r}; use 'mcnemar' or 'bootstrap'.")
    correction = str(correction).lower()
    adjust_pvalues(np.zeros(1), correction)  # validates the name early

    y, cb = correctness(y_true, pred_baseline, "pred_baseline")
    _, cc = correctness(y, pred_candidate, "pred_candidate")
    n = len(y)
    slicings = as_slicings(groups, n)

    # per-slice counts for all slicings, concatenated; the last entry is "overall"
    names: list[tuple[str, Any]] = []
    codes_all, cnt = [], []
    offset = 0
    for sl in slicings:
        names.extend((sl.name, lab) for lab in sl.labels)
        codes_all.append(sl.codes + offset)
        cnt.append(sl.counts)
        offset += len(sl.labels)
    s_total = offset
    codes = np.concatenate(codes_all)
    reps = len(slicings)
    m = np.concatenate([*cnt, [n]]).astype(np.int64)

    def per_slice(flags: np.ndarray) -> np.ndarray:
        w = np.tile(flags.astype(np.float64), reps)
        return np.concatenate([np.bincount(codes, weights=w, minlength=s_total), [flags.sum()]]).astype(np.int64)

    kb, kc = per_slice(cb), per_slice(cc)
    lost, gained = per_slice(cb & ~cc), per_slice(~cb & cc)

    if test == "mcnemar":
        p_worse, p_better = mcnemar_one_sided(lost, gained, mid_p=mid_p)
        lo, hi = paired_delta_interval(lost, gained, m, level)
    else:
        lo, hi, p_worse, p_better = paired_bootstrap(lost, gained, m, level, n_boot, np.random.default_rng(seed))

    delta, p_dir, adj_dir, code, partial = _paired_verdicts(
        kb, kc, m, p_worse, p_better, alpha=alpha, correction=correction, min_size=min_size)
    elig = m >= min_size
    verdict = np.asarray(VERDICTS, dtype=object)[code]

    def row(j: int, slicing: str, lab: Any) -> ComparisonRow:
        ok = bool(elig[j])
        return ComparisonRow(
            slicing, lab, int(m[j]), float(kb[j] / m[j]), float(kc[j] / m[j]), float(delta[j]),
            int(lost[j]), int(gained[j]), Interval(float(lo[j]), float(hi[j]), level) if ok else None,
            float(p_dir[j]), float(adj_dir[j]), str(verdict[j]),
        )

    rows = tuple(row(j, s, lab) for j, (s, lab) in enumerate(names))
    overall = row(s_total, "overall", "all")
    return Comparison(rows, overall, bool(partial[()]), alpha, test, correction, bool(mid_p), min_size, level)


# ============================================================================ learning curves


@dataclasses.dataclass(frozen=True, eq=False)
class LearningCurves(Result):
    """Per-slice accuracy per epoch/checkpoint (result of :func:`learning_curves`).

    Column ``j`` of ``accuracy`` ``(E, S)`` is slice ``slices[j]`` of slicing ``slicings[j]``, with
    ``n[j]`` samples; ``low``/``high`` are Wilson bounds (NaN where ``too_small``); ``overall`` is
    ``(E,)``.
    """

    epochs: np.ndarray
    slicings: tuple[str, ...]
    slices: tuple[Any, ...]
    n: np.ndarray
    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray
    overall: np.ndarray
    too_small: np.ndarray
    level: float

    def columns(self, slicing: str) -> np.ndarray:
        """Column indices of one slicing."""
        cols = np.flatnonzero(np.array([s == slicing for s in self.slicings], dtype=bool))
        if cols.size == 0:
            raise FailsightInputError(
                f"no slicing named {slicing!r}; available: {list(dict.fromkeys(self.slicings))}."
            )
        return cols

    def curve(self, slice: Any, slicing: str | None = None) -> np.ndarray:
        """Accuracy ``(E,)`` of one slice (``slicing`` may be omitted when there is only one)."""
        names = list(dict.fromkeys(self.slicings))
        if slicing is None:
            if len(names) > 1:
                raise FailsightInputError(f"several slicings {names}; say which with slicing=...")
            slicing = names[0]
        for j in self.columns(slicing):
            if self.slices[j] == slice:
                return self.accuracy[:, j]
        labels = [self.slices[j] for j in self.columns(slicing)]
        raise FailsightInputError(f"slicing {slicing!r} has no slice {slice!r}; slices: {labels}.")

    @property
    def best_epoch(self) -> np.ndarray:
        """Epoch value at which each slice peaked ``(S,)`` (first one on ties)."""
        return self.epochs[np.argmax(self.accuracy, axis=0)]

    @property
    def gain(self) -> np.ndarray:
        """Last minus first accuracy per slice ``(S,)``."""
        return self.accuracy[-1] - self.accuracy[0]

    def table(self) -> list[dict[str, Any]]:
        """Long-format rows: one per (epoch, slice)."""
        out = []
        for e_i, e in enumerate(self.epochs.tolist()):
            for j, (s, lab) in enumerate(zip(self.slicings, self.slices, strict=True)):
                lo, hi = self.low[e_i, j], self.high[e_i, j]
                out.append({"epoch": e, "slicing": s, "slice": lab, "n": int(self.n[j]),
                            "accuracy": float(self.accuracy[e_i, j]),
                            "ci_low": None if np.isnan(lo) else float(lo),
                            "ci_high": None if np.isnan(hi) else float(hi)})
        return out


def learning_curves(
    y_true: Any,
    preds_per_epoch: Any,
    groups: Any,
    *,
    epochs: Any = None,
    ci: float = 0.95,
    min_size: int = DEFAULT_MIN_SIZE,
) -> LearningCurves:
    """Per-slice accuracy for each epoch or checkpoint.

    Parameters
    ----------
    y_true : int ``(n,)`` labels.
    preds_per_epoch : predicted labels ``(E, n)``, probabilities ``(E, n, k)``, or a list of ``E``
        arrays of either kind (one per epoch/checkpoint, same samples).
    groups : ``(n,)`` group labels or a dict ``{slicing name: (n,) labels}``.
    epochs : ``(E,)`` epoch numbers or checkpoint steps (default ``0..E-1``).
    ci : level of the Wilson bands; slices with fewer than ``min_size`` samples get no band.

    Returns
    -------
    LearningCurves
    """
    level = _check_level(ci)
    min_size = check_int(min_size, "min_size", minimum=1)
    y = check_labels(y_true, name="y_true")
    n = len(y)
    preds = epoch_predictions(preds_per_epoch, n)
    e = preds.shape[0]
    if epochs is None:
        ep = np.arange(e)
    else:
        ep = to_numpy(epochs, "epochs").reshape(-1)
        if len(ep) != e:
            raise FailsightInputError(f"epochs has {len(ep)} entries but there are {e} prediction arrays.")
    correct = (preds == y[None, :]).astype(np.float64)
    slicings = as_slicings(groups, n)

    acc_cols, n_cols, sl_names, labels = [], [], [], []
    for sl in slicings:
        s = len(sl.labels)
        flat = (sl.codes[None, :] + s * np.arange(e)[:, None]).ravel()
        k = np.bincount(flat, weights=correct.ravel(), minlength=e * s).reshape(e, s)
        acc_cols.append(k)
        n_cols.append(sl.counts)
        sl_names.extend([sl.name] * s)
        labels.extend(sl.labels)
    k_all = np.concatenate(acc_cols, axis=1)
    n_all = np.concatenate(n_cols).astype(np.int64)
    acc = k_all / n_all[None, :]
    small = n_all < min_size
    lo, hi = wilson_interval(k_all, np.broadcast_to(n_all, k_all.shape), level)
    lo[:, small] = np.nan
    hi[:, small] = np.nan
    return LearningCurves(ep, tuple(sl_names), tuple(labels), n_all, acc, lo, hi, correct.mean(axis=1),
                          small, level)
