"""The robustness pillar in one call: shifts, calibration under shift, shift detection, OOD detection.

``analyze_robustness(model, x, y, ...)`` runs, on one labelled test set of images:

1. :func:`~failsight.robustness.evaluate.evaluate` over the ImageNet-C corruptions and the cue shifts at
   the given severities (accuracy, ECE, Brier, NLL, mean confidence, overconfidence; CE / mCE against a
   ``baseline``). The model outputs evaluate computes are recorded on the way, so nothing runs twice.
2. accuracy-vs-confidence curves per shift family (Ovadia et al. 2019): accuracy on the samples whose
   confidence is at least τ, for each severity — the overconfidence-under-shift picture.
3. shift detection from unlabelled data: every detector of :func:`~failsight.robustness.detect.detect_shift`
   on a held-out in-distribution reference against samples of the shifted test set (each image corrupted by
   a random member of a family, at each severity), against a label-shifted sample
   (:func:`~failsight.robustness.label_shift.resample_to_priors`) and, as a false-alarm check, against
   an unshifted sample; detection rate over a few trials and sample sizes.
4. OOD detection when ``x_ood`` is given: MSP, max logit, energy, entropy and Mahalanobis on penultimate
   features, each judged by AUROC, AUPR and FPR@95%TPR.
5. a small sample grid per shift (one image at every severity) for the report.

The result is a frozen :class:`RobustnessAnalysis`; :func:`failsight.robustness.report.robustness_section`
turns it into a report section. Defaults are sized so that the digits CNN on ~450 test images with all
corruptions and cue shifts at severities 1, 3, 5 takes seconds on two cores; the knobs
(``detection_sizes``, ``n_trials``, ``reference_size``, ``n_permutations``) trade time for precision.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from failsight._threads import limit_threads
from failsight._validate import (
    FailsightInputError,
    check_consistent_length,
    check_fraction,
    check_int,
    check_labels,
)
from failsight.engine import make_executor, task_rng
from failsight.robustness.evaluate import (
    CORRUPT_ROWS,
    CURVE_THRESHOLDS,
    ConditionStats,
    RobustnessResult,
    _build_result,
    _check_baseline,
    _eval_mode,
    _Runner,
    _sweep_conditions,
    _to_probs,
)
from failsight.types import Result

__all__ = [
    "DEFAULT_DETECTION_SIZES",
    "DETECTION_FAMILIES",
    "DETECTORS",
    "ConfidenceCurves",
    "DetectionCell",
    "RobustnessAnalysis",
    "analyze_robustness",
    "default_shifts",
    "synthetic_ood_images",
]

#: Detectors run by the analysis (all methods of :func:`~failsight.robustness.detect.detect_shift`).
DETECTORS: tuple[str, ...] = ("bbsd", "mmd", "classifier")
#: Shift families tested for detection by default (the ImageNet-C families).
DETECTION_FAMILIES: tuple[str, ...] = ("noise", "blur", "weather", "digital")
#: Default sizes of the unlabelled new samples handed to the detectors.
DEFAULT_DETECTION_SIZES: tuple[int, ...] = (10, 50, 200)
_DETECTOR_NAMES = {"bbsd": "BBSD", "mmd": "MMD", "classifier": "the classifier test"}
_OOD_NAMES = {"msp": "MSP", "max_logit": "the max logit", "energy": "the energy score", "entropy": "entropy",
              "mahalanobis": "the Mahalanobis score"}
#: Test images whose inputs are kept for the sample grids (the first correctly classified one is shown).
_N_SAMPLE_CANDIDATES = 8
#: The shifted pools handed to the detectors hold at most this many test images (bounds feature memory).
_MAX_POOL = 2000
_MIN_DETECTION_SIZE = 10  # the classifier two-sample test needs 10 samples per group


# --------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConfidenceCurves(Result):
    """Accuracy on the samples whose confidence (max probability) is at least τ, per family and severity.

    ``thresholds`` ``(t,)``; ``families`` ``(f,)`` with the shifts pooled in each (``members``);
    ``severities`` ``(s,)``. ``accuracy`` ``(f, s, t)`` (NaN where no sample reaches τ) and ``fraction``
    ``(f, s, t)``, the share of samples with confidence ≥ τ; ``clean_accuracy`` / ``clean_fraction`` ``(t,)``
    the same on the unshifted test set.
    """

    thresholds: np.ndarray
    families: tuple[str, ...]
    severities: tuple[int, ...]
    members: dict[str, tuple[str, ...]]
    accuracy: np.ndarray
    fraction: np.ndarray
    clean_accuracy: np.ndarray
    clean_fraction: np.ndarray


@dataclasses.dataclass(frozen=True)
class DetectionCell(Result):
    """Detection rate of one ``detector`` against one shift at one new-sample ``size`` over ``n_trials``.

    ``shift`` is ``"no shift"`` (``kind="none"``: the rate is the false-alarm rate), a family name
    (``kind="family"``: each new image corrupted by a random member of the family at ``severity``) or
    ``"label shift"`` (``kind="label"``: the test set resampled to Dirichlet-drawn class priors, without
    replacement). ``n_new`` is the mean size actually used (label shift can supply fewer images than asked);
    ``detection_rate`` the share of trials with ``p_value <= alpha``; ``p_values`` one per trial
    (NaN where too few images were available).
    """

    detector: str
    shift: str
    kind: str
    severity: int
    size: int
    n_new: float
    n_trials: int
    detection_rate: float
    median_p_value: float
    mean_statistic: float
    p_values: tuple[float, ...]

    @property
    def label(self) -> str:
        """Short name of the shifted condition, e.g. ``"noise s3"``, ``"label shift"``."""
        return f"{self.shift} s{self.severity}" if self.kind == "family" else self.shift


@dataclasses.dataclass(frozen=True)
class RobustnessAnalysis(Result):
    """Everything :func:`analyze_robustness` measured (read by the report; ``to_dict()`` for JSON).

    ``evaluation``: the :class:`~failsight.robustness.evaluate.RobustnessResult` table over shift ×
    severity. ``curves``: :class:`ConfidenceCurves`. ``detection``: one :class:`DetectionCell` per detector
    × condition × size; ``detection_settings`` how they were run (reference, representations, α, ...).
    ``ood``: OOD score name → :class:`~failsight.robustness.ood.OODMetrics` (empty without ``x_ood``).
    ``mce_imagenet_c`` / ``relative_mce_imagenet_c``: mCE over the 15 ImageNet-C corruptions that were
    evaluated (NaN without a baseline). ``samples`` (not in JSON): shift → ``(1 + n_severities, C, H, W)``
    float32, the clean image then the same image at each severity; ``ood_samples`` a few OOD inputs.
    ``seconds``: wall time per stage. ``notes``: what was adapted or skipped, in words.
    """

    evaluation: RobustnessResult
    curves: ConfidenceCurves
    detection: tuple[DetectionCell, ...]
    detection_settings: dict[str, Any]
    ood: dict[str, Any]
    ood_settings: dict[str, Any]
    mce_imagenet_c: float
    relative_mce_imagenet_c: float
    n_test: int
    n_reference: int
    n_ood: int
    image_shape: tuple[int, int, int]
    seed: int
    seconds: dict[str, float]
    notes: tuple[str, ...]
    sample_index: int
    samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False,
                                                       metadata={"exclude_json": True})
    ood_samples: np.ndarray | None = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})

    # convenience -------------------------------------------------------------------------------------
    @property
    def shifts(self) -> tuple[str, ...]:
        """Evaluated shifts, in table order."""
        return self.evaluation.shifts

    @property
    def severities(self) -> tuple[int, ...]:
        """Evaluated severities."""
        return self.evaluation.severities

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the unshifted test set."""
        return self.evaluation.clean_accuracy

    @property
    def detection_sizes(self) -> tuple[int, ...]:
        """New-sample sizes of the detection table."""
        return tuple(sorted({c.size for c in self.detection}))

    def detection_cell(self, detector: str, shift: str, severity: int = 0, size: int | None = None) -> DetectionCell:
        """The cell for ``detector`` against ``shift`` (family name, ``"label shift"`` or ``"no shift"``) at
        ``severity`` (families only) and ``size`` (default: the largest)."""
        size = max(self.detection_sizes) if size is None and self.detection else size
        for c in self.detection:
            if (c.detector == detector and c.shift == shift and c.size == size
                    and (c.kind != "family" or c.severity == severity)):
                return c
        raise FailsightInputError(
            f"no detection result for {detector!r} against {shift!r} (severity {severity}, size {size}); "
            f"detectors {sorted({c.detector for c in self.detection})}, shifts "
            f"{sorted({c.shift for c in self.detection})}, sizes {list(self.detection_sizes)}."
        )

    def findings(self) -> list[str]:
        """The worst findings as plain-language sentences (used by the report's summary)."""
        return _findings(self)

    def summary(self) -> str:
        """One paragraph: :meth:`findings` joined."""
        return " ".join(self.findings())


# --------------------------------------------------------------------------------------------------
# helpers: defaults, inputs, threads
# --------------------------------------------------------------------------------------------------
def default_shifts(channels: int = 3) -> tuple[str, ...]:
    """All built-in shifts that change a ``channels``-channel image: the 15 + 4 ImageNet-C corruptions and
    the cue shifts (colour-only shifts are left out for 1-channel images, where they are the identity)."""
    from failsight.robustness.shifts import list_shifts

    return tuple(s for suite in ("imagenet_c", "imagenet_c_extra", "cue")
                 for s in list_shifts(suite=suite, channels=channels))


def _images(x: Any, name: str) -> np.ndarray:
    """Validated float32 ``(n, c, h, w)`` in [0, 1]; ``(n, h, w)`` gets a channel axis."""
    from failsight.robustness.evaluate import _check_images

    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim == 3 and arr.dtype != object:
        arr = arr[:, None]
    try:
        return _check_images(arr)
    except FailsightInputError as exc:  # evaluate names the array "x"; say which one it is
        msg = str(exc)
        raise FailsightInputError(msg.replace("x ", f"{name} ", 1) if msg.startswith("x ") else f"{name}: {msg}") \
            from None


def _same_layout(a: np.ndarray, b: np.ndarray, name: str) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise FailsightInputError(
            f"{name} has images of shape {tuple(b.shape[1:])} but x has {tuple(a.shape[1:])}; they must match "
            "(same channels and size, channels first)."
        )


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    if sizes is None:
        return ()
    vals = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
    out = []
    for s in vals:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < _MIN_DETECTION_SIZE:
            raise FailsightInputError(
                f"detection_sizes must be integers >= {_MIN_DETECTION_SIZE} (the classifier test needs "
                f"{_MIN_DETECTION_SIZE} samples per group), got {list(vals)}; pass () to skip shift detection."
            )
        out.append(int(s))
    return tuple(sorted(set(out)))


# --------------------------------------------------------------------------------------------------
# accuracy-vs-confidence curves (from the per-condition curve counts, which sum over family members)
# --------------------------------------------------------------------------------------------------
def _curve_from_counts(n: int, count: np.ndarray, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return acc, count / n


def _confidence_curves(stats: dict[tuple[str, int], Any], families: dict[str, str],
                       severities: tuple[int, ...]) -> ConfidenceCurves:
    """Curves per family × severity from the merged :class:`~failsight.robustness.evaluate.ConditionStats` of
    its members (exact: the statistics are integer counts per threshold)."""
    from failsight.robustness.evaluate import ConditionStats

    fams: dict[str, list[str]] = {}
    for name, fam in families.items():
        fams.setdefault(fam, []).append(name)
    t = CURVE_THRESHOLDS
    acc = np.full((len(fams), len(severities), len(t)), np.nan)
    frac = np.zeros_like(acc)
    for i, members in enumerate(fams.values()):  # loop over families x severities (few), not samples
        for j, s in enumerate(severities):
            merged = ConditionStats.empty()
            for m in members:
                merged = merged.merge(stats[(m, s)])
            acc[i, j], frac[i, j] = _curve_from_counts(merged.n, merged.curve_n, merged.curve_hits)
    c = stats[("clean", 0)]
    clean_acc, clean_frac = _curve_from_counts(c.n, c.curve_n, c.curve_hits)
    return ConfidenceCurves(thresholds=t.copy(), families=tuple(fams), severities=severities,
                            members={f: tuple(m) for f, m in fams.items()}, accuracy=acc, fraction=frac,
                            clean_accuracy=clean_acc, clean_fraction=clean_frac)


# --------------------------------------------------------------------------------------------------
# shift detection: one engine task per (condition, trial), seeded from its key
# --------------------------------------------------------------------------------------------------
def _run_trial(ctx: dict[str, Any], key: tuple[Any, ...], params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One detection trial ``key = (shift, kind, severity, trial)``: p-values and statistics
    ``(n_detectors, n_sizes)`` and the sizes used ``(n_sizes,)``. All draws come from the key's generator."""
    from threadpoolctl import threadpool_limits

    from failsight.engine import task_rng
    from failsight.robustness.detect import detect_shift
    from failsight.robustness.label_shift import resample_to_priors

    shift, kind, sev, _t = key
    rng = task_rng(ctx["seed"], "detection", key)
    ref_soft, ref_rep, soft, rep = ctx["ref_soft"], ctx["ref_rep"], ctx["soft"], ctx["rep"]
    sizes, alpha, n_classes = ctx["sizes"], ctx["alpha"], ctx["n_classes"]
    y_pool = ctx["y_pool"]
    n_pool, n_max = len(y_pool), max(sizes)
    p = np.full((len(DETECTORS), len(sizes)), np.nan)
    stat = np.full_like(p, np.nan)
    n_used = np.zeros(len(sizes))
    ref_idx = rng.choice(len(ref_soft), size=min(ctx["reference_size"], len(ref_soft)), replace=False)
    if kind == "label":
        present = np.flatnonzero(np.bincount(y_pool, minlength=n_classes) > 0)
        priors = np.zeros(n_classes)
        priors[present] = rng.dirichlet(np.full(len(present), ctx["label_alpha"]))
        pos = resample_to_priors(y_pool, priors=priors, n_classes=n_classes, replace=False,
                                 seed=int(rng.integers(2**31)))[:n_max]
    else:
        pos = rng.choice(n_pool, size=min(n_max, n_pool), replace=False)
    if kind == "family":
        slots = np.array([ctx["slot"][(m, sev)] for m in ctx["families"][shift]])
        slot = slots[rng.integers(0, len(slots), size=len(pos))]
    else:
        slot = np.zeros(len(pos), dtype=np.int64)
    new_soft = np.asarray(soft[slot, pos])
    new_rep = np.asarray(rep[slot, pos])
    rs, rr = np.asarray(ref_soft[ref_idx]), np.asarray(ref_rep[ref_idx])
    # the tests work on small matrices: BLAS/OpenMP threads only add overhead (10x on a busy machine)
    with threadpool_limits(1):
        for si, size in enumerate(sizes):
            m = min(size, len(pos))
            n_used[si] = m
            if m < _MIN_DETECTION_SIZE:
                continue
            runs = (
                detect_shift(rs, new_soft[:m], "bbsd", alpha=alpha),
                detect_shift(rr, new_rep[:m], "mmd", alpha=alpha, n_permutations=ctx["n_permutations"],
                             seed=int(rng.integers(2**31))),
                detect_shift(rr, new_rep[:m], "classifier", alpha=alpha, seed=int(rng.integers(2**31))),
            )
            for di, r in enumerate(runs):
                p[di, si] = r.p_value
                stat[di, si] = r.statistic
    return {"p": p, "stat": stat, "n_used": n_used}


def _register() -> None:
    from failsight.engine import TaskKind, register_task_kind

    register_task_kind(TaskKind("robustness.detection_trial", run=_run_trial, mergeable=False,
                                requires=("detection pool outputs",)))


_register()


def _run_detection(ctx: dict[str, Any], families: dict[str, tuple[str, ...]], severities: tuple[int, ...],
                   n_trials: int, n_null_trials: int, *, executor: Any, progress: bool) -> list[DetectionCell]:
    """Detection cells from one task per (condition, trial); the context holds the reference and pool arrays."""
    from failsight.engine import Plan, TaskSpec, run_sweep

    conditions: list[tuple[str, str, int]] = [("no shift", "none", 0)]
    conditions += [(fam, "family", s) for fam in families for s in severities]
    conditions.append(("label shift", "label", 0))
    trials = [n_null_trials if kind == "none" else n_trials for _, kind, _ in conditions]
    specs = tuple(TaskSpec("robustness.detection_trial", (shift, kind, sev, t))
                  for t in range(max(trials)) for ci, (shift, kind, sev) in enumerate(conditions) if t < trials[ci])
    plan = Plan(specs)
    out = run_sweep(plan, ctx, executor=executor, progress=progress, label="shift detection",
                    describe=lambda s: f"trial {s.key[3] + 1}: {s.key[0]}" + (f" s{s.key[2]}" if s.key[1] == "family"
                                                                              else ""))
    by_key = {s.key: o for s, o in zip(specs, out, strict=True)}
    sizes, alpha = ctx["sizes"], ctx["alpha"]
    cells = []
    for ci, (shift, kind, sev) in enumerate(conditions):
        k = trials[ci]
        part = [by_key[(shift, kind, sev, t)] for t in range(k)]
        p = np.stack([q["p"] for q in part], axis=-1)  # (n_det, n_sizes, k)
        stat = np.stack([q["stat"] for q in part], axis=-1)
        n_used = np.stack([q["n_used"] for q in part], axis=-1)  # (n_sizes, k)
        for di, det in enumerate(DETECTORS):
            for si, size in enumerate(sizes):
                pv = p[di, si]
                ok = np.isfinite(pv)
                cells.append(DetectionCell(
                    detector=det, shift=shift, kind=kind, severity=sev, size=size,
                    n_new=float(n_used[si].mean()), n_trials=k,
                    detection_rate=float(np.mean(pv[ok] <= alpha)) if ok.any() else math.nan,
                    median_p_value=float(np.median(pv[ok])) if ok.any() else math.nan,
                    mean_statistic=float(np.mean(stat[di, si][ok])) if ok.any() else math.nan,
                    p_values=tuple(float(v) for v in pv),
                ))
    return cells


# --------------------------------------------------------------------------------------------------
# OOD images for the demo
# --------------------------------------------------------------------------------------------------
def synthetic_ood_images(n: int, *, image_size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``n`` out-of-distribution images ``(n, channels, image_size, image_size)`` float32 in [0, 1]: half
    procedurally drawn shapes (:func:`failsight.datasets.shapes.make_shapes`, converted to grey scale when
    ``channels == 1`` and stretched to full brightness), half uniform noise. Deterministic given ``seed``."""
    from failsight.datasets.shapes import make_shapes

    n = check_int(n, "n", minimum=2)
    size = check_int(image_size, "image_size", minimum=8)
    if channels not in (1, 3):
        raise FailsightInputError(f"channels must be 1 or 3, got {channels!r}.")
    seed = check_int(seed, "seed", minimum=0)
    n_shapes = n // 2
    shapes = make_shapes(n_shapes, image_size=size, seed=seed).images  # (m, 3, s, s)
    if channels == 1:
        shapes = shapes.mean(axis=1, keepdims=True)
        peak = shapes.reshape(n_shapes, -1).max(axis=1)
        shapes = shapes / np.maximum(peak, 1e-6)[:, None, None, None]
    noise = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n - n_shapes, channels, size, size))
    return np.clip(np.concatenate([shapes, noise]), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------------
def analyze_robustness(
    model: Any,
    x: Any,
    y: Any,
    *,
    shifts: Sequence[str] | str | None = None,
    severities: Sequence[int] | int = (1, 3, 5),
    x_reference: Any = None,
    y_reference: Any = None,
    x_ood: Any = None,
    baseline: Any = None,
    detection_sizes: Sequence[int] | None = DEFAULT_DETECTION_SIZES,
    detection_families: Sequence[str] | None = None,
    n_trials: int = 5,
    n_null_trials: int | None = None,
    reference_size: int | None = 200,
    n_permutations: int = 100,
    alpha: float = 0.05,
    label_shift_alpha: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
    num_threads: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> RobustnessAnalysis:
    """Robustness of ``model`` on labelled images: shifts, calibration under shift, detection, OOD.

    Parameters
    ----------
    model : a torch ``nn.Module`` returning logits (penultimate features are read from the input of its last
        ``nn.Linear``), an object with ``predict_proba`` (fed flattened images) or a callable mapping a numpy
        batch ``(b, c, h, w)`` to logits or probabilities ``(b, k)``.
    x : test images ``(n, c, h, w)`` (or ``(n, h, w)``) in [0, 1], c = 1 or 3, h, w >= 8.
    y : labels ``(n,)``.
    shifts : shift names (default :func:`default_shifts` for the channel count: all corruptions and cue shifts).
    severities : integers in 1..5.
    x_reference : held-out in-distribution images (same layout as ``x``), e.g. a calibration split: the
        reference sample of the shift detectors and the fitting data of the Mahalanobis OOD detector.
        Without it, a random half of ``x`` serves as reference and the other half as the pool shifts are
        drawn from (the evaluation table still uses all of ``x``).
    y_reference : labels of ``x_reference`` ``(m,)``, for Mahalanobis class means (default: the model's
        predictions on ``x_reference``).
    x_ood : out-of-distribution images (same layout) for the OOD detection table; None skips it.
    baseline : a baseline model or its ``RobustnessResult`` for CE / mCE (see ``evaluate``).
    detection_sizes : sizes of the unlabelled new samples (each >= 10; sizes larger than the pool are
        dropped); ``()`` or None skips shift detection.
    detection_families : shift families tested for detection (default: the ImageNet-C families among the
        evaluated shifts); each new image gets a random member of the family.
    n_trials : trials per detection cell (detection rate = share of trials that flag a shift).
    n_null_trials : trials of the no-shift row, whose rate estimates the false-alarm rate (default
        ``max(n_trials, 20)``: a rate near ``alpha`` needs more trials than a detection rate near 1).
    reference_size : reference images per trial, drawn from the reference set (None: all of it).
    n_permutations : permutations of the MMD test.
    alpha : significance level of the detectors.
    label_shift_alpha : concentration of the Dirichlet the label-shift priors are drawn from (smaller = stronger).
    seed : seeds the corruptions, the reference split, the detection trials; same seed, same result.
    batch_size : images per forward pass.
    num_threads : limit torch and BLAS threads of this process during the call (restored afterwards); worker
        processes follow ``FAILSIGHT_NUM_THREADS`` or ``cores // workers``. None leaves the settings alone (the
        detection tests always run single-threaded: their matrices are small).
    progress : show progress on stderr (a bar in a terminal, log lines otherwise).
    workers : worker processes of the sweep (default: every usable core; small sweeps run in this process);
        each worker uses ``cores // workers`` torch/BLAS threads. Results do not depend on it.
    backend : ``"local"`` or ``"ray"``; ``ray_address`` (or ``RAY_ADDRESS``) names the cluster, without one
        ``ray.init()`` starts a local cluster. Results do not depend on it.

    Every shift × severity is one task of :mod:`failsight.engine` (corrupt chunk by chunk, run the model,
    return sums and the detection pool rows' outputs), and every detection trial another task, seeded from its
    key ``(condition, trial)``; peak memory does not grow with the number of conditions.

    Returns
    -------
    RobustnessAnalysis
    """
    from failsight.robustness.evaluate import _check_shift_list
    from failsight.robustness.shifts import CORRUPTIONS, shift_family

    t_start = time.perf_counter()
    xa = _images(x, "x")
    ya = check_labels(y, name="y")
    check_consistent_length(xa, ya, names=("x", "y"))
    n, channels = len(ya), xa.shape[1]
    seed = check_int(seed, "seed", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    n_trials = check_int(n_trials, "n_trials")
    n_null_trials = max(n_trials, 20) if n_null_trials is None else check_int(n_null_trials, "n_null_trials")
    n_permutations = check_int(n_permutations, "n_permutations")
    alpha = check_fraction(alpha, "alpha")
    try:
        label_alpha = float(label_shift_alpha)
    except (TypeError, ValueError):
        label_alpha = math.nan
    if not (math.isfinite(label_alpha) and label_alpha > 0):
        raise FailsightInputError(f"label_shift_alpha must be a positive number, got {label_shift_alpha!r}.")
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads")
    if reference_size is not None:
        reference_size = check_int(reference_size, "reference_size", minimum=_MIN_DETECTION_SIZE)
    names, sev = _check_shift_list(default_shifts(channels) if shifts is None else shifts, severities)
    families = {s: shift_family(s) for s in names}
    sizes = _check_sizes(detection_sizes)
    present_fams = list(dict.fromkeys(families.values()))
    if detection_families is None:
        det_fams = tuple(f for f in DETECTION_FAMILIES if f in present_fams)
    else:
        det_fams = (detection_families,) if isinstance(detection_families, str) else tuple(detection_families)
        unknown = [f for f in det_fams if f not in present_fams]
        if unknown:
            raise FailsightInputError(
                f"detection_families {unknown} are not among the evaluated shifts' families "
                f"({', '.join(present_fams)}); pick from those or add their shifts to `shifts`."
            )
    xr = yr = xo = None
    if x_reference is not None:
        xr = _images(x_reference, "x_reference")
        _same_layout(xa, xr, "x_reference")
        if y_reference is not None:
            yr = check_labels(y_reference, name="y_reference")
            check_consistent_length(xr, yr, names=("x_reference", "y_reference"))
    elif y_reference is not None:
        raise FailsightInputError("y_reference was given without x_reference; pass both or neither.")
    if x_ood is not None:
        xo = _images(x_ood, "x_ood")
        _same_layout(xa, xo, "x_ood")

    notes: list[str] = []
    rng = task_rng(seed, "reference split", ())
    # reference / pool split (decided up front: the condition tasks keep the pool rows' outputs)
    if xr is None:
        perm = rng.permutation(n)
        ref_rows, rest = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
    else:
        ref_rows, rest = np.empty(0, dtype=np.int64), np.arange(n)
    pool = np.sort(rng.choice(rest, size=_MAX_POOL, replace=False)) if len(rest) > _MAX_POOL else rest
    n_ref_total = len(xr) if xr is not None else len(ref_rows)
    if sizes and len(rest) > _MAX_POOL:
        notes.append(f"Shift detection draws its new samples from a random subset of {_MAX_POOL} of the "
                     f"{len(rest)} test images (bounds the memory for their features).")
    if sizes:
        kept = tuple(s for s in sizes if s <= len(pool))
        if len(kept) < len(sizes):
            dropped = [s for s in sizes if s > len(pool)]
            notes.append(f"Detection sample sizes {dropped} exceed the {len(pool)} test images available as "
                         "the shifted pool and were left out.")
        sizes = kept
        if n_ref_total < _MIN_DETECTION_SIZE:
            notes.append(f"Shift detection skipped: the reference set has {n_ref_total} images, fewer than "
                         f"{_MIN_DETECTION_SIZE}. Pass a larger x_reference.")
            sizes = ()
        elif not sizes:
            notes.append(f"Shift detection skipped: the pool of {len(pool)} test images is smaller than every "
                         "detection sample size; pass more test images or smaller detection_sizes.")
    conditions = [("clean", 0)] + [(s, v) for s in names for v in sev]
    det_members = {f: tuple(s for s in names if families[s] == f) for f in det_fams} if sizes else {}
    pool_keys = {("clean", 0)} | {(m, v) for members in det_members.values() for m in members for v in sev}

    base_result = _check_baseline(baseline, names, sev, n)
    runner = _Runner(model, batch_size, features=True)
    runners = [runner]
    if baseline is not None and base_result is None:
        runners.append(_Runner(baseline, batch_size))
    seconds: dict[str, float] = {}
    work = float(xa.size) * len(conditions) * len(runners)
    executor = make_executor(workers, backend, ray_address=ray_address, n_tasks=len(conditions), work=work)
    try:
        with _eval_mode(model), _eval_mode(baseline), limit_threads(num_threads):
            # 1. evaluation table: one engine task per condition ------------------------------------------
            t0 = time.perf_counter()
            for r in runners:  # decide logits/probabilities and check outputs and labels before the sweep
                ConditionStats.of(ya[:CORRUPT_ROWS], r.probs(r.decide(xa[:CORRUPT_ROWS])[0]))
            kind = runner.output_kind or "logits"
            # the reference pass runs here, before the sweep starts its workers: this process's peak memory
            # then never coincides with theirs
            ref_pre = runner.predict(xr) if xr is not None else None
            partials = _sweep_conditions(runners, xa, ya, conditions, seed, executor=executor, progress=progress,
                                         pool=pool, pool_keys=pool_keys, n_samples=_N_SAMPLE_CANDIDATES)
            evaluation = _build_result(names, sev, [[s.metrics() for s in p.stats] for p in partials], base_result,
                                       n, seed, kind)
            seconds["evaluate"] = time.perf_counter() - t0
            stats = {c: p.stats[0] for c, p in zip(conditions, partials, strict=True)}
            curves = _confidence_curves(stats, families, sev)
            clean = partials[0]
            raw0, clean_feats = clean.raw, clean.features
            n_classes = raw0.shape[1]

            # sample grids: the first correctly classified candidate image
            n_cand = min(n, _N_SAMPLE_CANDIDATES)
            clean_ok = np.flatnonzero(_to_probs(raw0[:n_cand], kind).argmax(1) == ya[:n_cand])
            sample_index = int(clean_ok[0]) if len(clean_ok) else 0
            samples = {name: np.stack([clean.samples[sample_index]]
                                      + [partials[1 + i * len(sev) + j].samples[sample_index]
                                         for j in range(len(sev))])
                       for i, name in enumerate(names)}

            # reference outputs / features ---------------------------------------------------------------
            use_feats = runner.has_features and clean_feats is not None
            if ref_pre is not None:
                ref_raw, ref_feats = ref_pre
            else:
                ref_raw = raw0[ref_rows]
                ref_feats = clean_feats[ref_rows] if clean_feats is not None else None
            use_feats = use_feats and ref_feats is not None
            ref_probs = _to_probs(ref_raw, kind)
            rep_name = (f"penultimate features ({clean_feats.shape[1]}-d)" if use_feats
                        else ("logits" if kind == "logits" else "probabilities"))

            # 2. shift detection: one engine task per (condition, trial) ----------------------------------
            t0 = time.perf_counter()
            cells: list[DetectionCell] = []
            ref_size = n_ref_total if reference_size is None else min(reference_size, n_ref_total)
            if sizes:
                det_keys = sorted(pool_keys - {("clean", 0)}, key=conditions.index)
                slot = {("clean", 0): 0} | {c: i + 1 for i, c in enumerate(det_keys)}
                by_key = dict(zip(conditions, partials, strict=True))
                soft = np.stack([by_key[c].pool_soft for c in slot])
                if use_feats:
                    rep = np.stack([by_key[c].pool_rep for c in slot])
                    ref_rep = ref_feats
                else:  # the representation is the raw output; the clean pool rows come from the clean outputs
                    rep = np.stack([raw0[pool] if c == ("clean", 0) else by_key[c].pool_rep for c in slot])
                    ref_rep = ref_raw
                del partials, by_key
                ctx = {"seed": seed, "ref_soft": ref_probs, "ref_rep": ref_rep, "soft": soft, "rep": rep,
                       "slot": slot, "families": det_members, "y_pool": ya[pool], "n_classes": n_classes,
                       "sizes": sizes, "alpha": alpha, "reference_size": ref_size,
                       "n_permutations": n_permutations, "label_alpha": label_alpha}
                cells = _run_detection(ctx, det_members, sev, n_trials, n_null_trials, executor=executor,
                                       progress=progress)
            seconds["detection"] = time.perf_counter() - t0
            executor.close()  # the last engine stage: idle workers would add their memory to the OOD pass's
            det_settings = {
                "alpha": alpha, "n_trials": n_trials, "n_null_trials": n_null_trials, "sizes": list(sizes),
                "reference": "x_reference" if xr is not None else "random half of x",
                "n_reference": n_ref_total, "reference_size": ref_size,
                "pool_size": len(pool), "families": {f: list(m) for f, m in det_members.items()},
                "representation": {"bbsd": "softmax outputs", "mmd": rep_name, "classifier": rep_name},
                "n_permutations": n_permutations, "label_shift": f"priors ~ Dirichlet({label_alpha:g}), "
                                                                "resampled without replacement",
                "seeds": "each trial seeded from (seed, condition, trial)",
            }

            # 3. OOD detection ------------------------------------------------------------------------------
            t0 = time.perf_counter()
            ood: dict[str, Any] = {}
            ood_settings: dict[str, Any] = {}
            ood_samples = None
            if xo is not None:
                id_rows = rest  # never used to fit anything
                ood, ood_settings = _ood(runner, xo, raw0[id_rows], clean_feats[id_rows] if use_feats else None,
                                         ref_feats if use_feats else None,
                                         yr if xr is not None else ya[ref_rows],
                                         ref_probs, kind, notes)
                ood_samples = xo[np.unique(np.linspace(0, len(xo) - 1, 8).astype(np.int64))].copy()
            seconds["ood"] = time.perf_counter() - t0
    finally:
        executor.close()

    mce_ic = rmce_ic = math.nan
    common = [c for c in CORRUPTIONS if c in evaluation.ce]
    if common:
        mce_ic = float(np.mean([evaluation.ce[c] for c in common]))
        rmce_ic = float(np.mean([evaluation.relative_ce[c] for c in common]))
        if len(common) < len(CORRUPTIONS):
            notes.append(f"mCE is averaged over the {len(common)} of the 15 ImageNet-C corruptions that were "
                         "evaluated; it is comparable only with mCEs over the same set.")
    if shifts is None and channels == 1:
        notes.append("Colour-only shifts (saturate, hue rotation, channel permutation, desaturation) were left out: "
                     "they do not change 1-channel images.")
    if sizes and not use_feats:
        notes.append(f"MMD and the classifier test ran on the model's {rep_name}: no penultimate features "
                     "(they are read from the input of the last nn.Linear of a torch module through a forward hook; "
                     "TorchScript modules and other models do not offer one).")
    seconds["total"] = time.perf_counter() - t_start
    return RobustnessAnalysis(
        evaluation=evaluation, curves=curves, detection=tuple(cells), detection_settings=det_settings,
        ood=ood, ood_settings=ood_settings, mce_imagenet_c=mce_ic, relative_mce_imagenet_c=rmce_ic,
        n_test=n, n_reference=n_ref_total, n_ood=0 if xo is None else len(xo),
        image_shape=(int(xa.shape[1]), int(xa.shape[2]), int(xa.shape[3])), seed=seed, seconds=seconds,
        notes=tuple(notes), sample_index=sample_index, samples=samples, ood_samples=ood_samples,
    )


def _ood(tap: Any, xo: np.ndarray, raw_in: np.ndarray, feats_in: np.ndarray | None,
         ref_feats: np.ndarray | None, ref_labels: np.ndarray | None, ref_probs: np.ndarray, kind: str,
         notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """OOD metrics of every applicable score: in-distribution = ``raw_in`` rows, OOD = ``xo``."""
    from failsight.robustness.ood import Mahalanobis, ood_metrics, ood_score

    raw_out, feats_out = tap.predict(xo)
    results: dict[str, Any] = {}
    names = ["msp", "max_logit", "energy", "entropy"] if kind == "logits" else ["msp", "entropy"]
    for name in names:
        kw_in = {"logits": raw_in} if kind == "logits" else {"probs": _to_probs(raw_in, kind)}
        kw_out = {"logits": raw_out} if kind == "logits" else {"probs": _to_probs(raw_out, kind)}
        results[name] = ood_metrics(ood_score(name, **kw_in), ood_score(name, **kw_out))
    settings: dict[str, Any] = {"n_in": len(raw_in), "n_out": len(xo), "scores": list(names)}
    if kind != "logits":
        notes.append("Max-logit and energy OOD scores need logits; the model returns probabilities.")
    if feats_in is not None and ref_feats is not None and feats_out is not None:
        labels_src = "labels"
        if ref_labels is None:
            ref_labels = ref_probs.argmax(axis=1)
            labels_src = "the model's predictions (no y_reference given)"
        try:
            maha = Mahalanobis().fit(ref_feats.astype(np.float64), ref_labels)
            results["mahalanobis"] = ood_metrics(maha.score(feats_in), maha.score(feats_out))
            settings["mahalanobis"] = (f"class means and shared covariance of {ref_feats.shape[1]}-d penultimate "
                                       f"features of {len(ref_feats)} reference images, classes from {labels_src}")
        except FailsightInputError as exc:
            notes.append(f"Mahalanobis OOD score skipped: {exc}")
    else:
        notes.append("Mahalanobis OOD score skipped: it needs penultimate features of a torch module.")
    return results, settings


# --------------------------------------------------------------------------------------------------
# findings in words
# --------------------------------------------------------------------------------------------------
def _pts(v: float) -> str:
    return f"{100 * v:.0f}"


def _findings(a: RobustnessAnalysis) -> list[str]:
    ev = a.evaluation
    rows = ev.rows[1:]
    out = [f"On {a.n_test:,} clean test images the model is {ev.clean_accuracy:.1%} accurate "
           f"at mean confidence {ev.clean.mean_confidence:.1%}."]
    if not rows:
        return out
    worst = max(rows, key=lambda r: r.accuracy_drop)
    if worst.accuracy_drop > 0.02:
        if worst.confidence_drop < 0:
            conf_txt = f"while mean confidence rises {_pts(-worst.confidence_drop)} points"
        else:
            only = "only " if worst.confidence_drop < worst.accuracy_drop / 2 else ""
            conf_txt = f"while mean confidence drops {only}{_pts(worst.confidence_drop)} points"
        out.append(f"Accuracy drops {_pts(worst.accuracy_drop)} points under {worst.shift} s{worst.severity} "
                   f"({ev.clean_accuracy:.0%} → {worst.accuracy:.0%}) {conf_txt}.")
    over = max(rows, key=lambda r: r.overconfidence)
    if over.overconfidence > 0.05 and (over.shift, over.severity) != (worst.shift, worst.severity):
        out.append(f"The most overconfident condition is {over.shift} s{over.severity}: {over.accuracy:.0%} "
                   f"accurate at {over.mean_confidence:.0%} mean confidence (ECE {over.ece:.2f}).")
    elif over.overconfidence <= 0.05:
        out.append("Confidence falls about as fast as accuracy under every shift (no condition is overconfident "
                   "by more than 5 points).")
    fam_drop: dict[str, list[float]] = {}
    for r in rows:
        fam_drop.setdefault(r.family, []).append(r.accuracy_drop)
    if len(fam_drop) > 1:
        ranked = sorted(fam_drop, key=lambda f: -np.mean(fam_drop[f]))
        hard, mild = np.mean(fam_drop[ranked[0]]), np.mean(fam_drop[ranked[-1]])
        out.append(f"Hardest shift family: {ranked[0]} (mean accuracy drop {_pts(hard)} "
                   f"point{'' if _pts(hard) == '1' else 's'}); mildest: {ranked[-1]} "
                   f"({_pts(mild)} point{'' if _pts(mild) == '1' else 's'}).")
    top = max(ev.severities)
    calm = [s for s in ev.shifts if ev.row(s, top).accuracy_drop <= 0.02]
    if calm:
        listed = ", ".join(calm[:6]) + (f" and {len(calm) - 6} more" if len(calm) > 6 else "")
        out.append(f"Barely affected even at severity {top} (≤ 2 points): {listed}.")
    if not math.isnan(a.mce_imagenet_c):
        out.append(f"mCE {a.mce_imagenet_c:.0%} of the baseline's (relative mCE {a.relative_mce_imagenet_c:.0%}).")
    if a.detection:
        size = max(a.detection_sizes)
        shifted = [c for c in a.detection if c.size == size and c.kind != "none"]
        by_cond: dict[str, list[DetectionCell]] = {}
        for c in shifted:
            by_cond.setdefault(c.label, []).append(c)
        best = {k: max((c.detection_rate for c in v if not math.isnan(c.detection_rate)), default=math.nan)
                for k, v in by_cond.items()}
        caught = [k for k, v in best.items() if v >= 0.8]
        missed = [k for k, v in best.items() if v <= 0.5]
        txt = (f"With {size} unlabelled images, at least one detector flags {len(caught)} of {len(best)} shifted "
               f"conditions in ≥ 80% of trials")
        txt += f"; missed (≤ 50%): {', '.join(missed[:6])}." if missed else "."
        out.append(txt)
        from scipy.stats import binom

        level = a.detection_settings.get("alpha", 0.05)
        fa = [c for c in a.detection if c.size == size and c.kind == "none" and not math.isnan(c.detection_rate)]
        # mention false alarms only when they are clearly above alpha (one-sided binomial test at 1%)
        loud = [c for c in fa if binom.sf(round(c.detection_rate * c.n_trials) - 1, c.n_trials, level) < 0.01]
        if loud:
            alarms = " and ".join(f"{_DETECTOR_NAMES.get(c.detector, c.detector)} in {c.detection_rate:.0%}"
                                  for c in loud)
            out.append(f"Without any shift, false alarms were raised by {alarms} of {loud[0].n_trials} trials "
                       f"(α = {level:g}): the reference and the test images may differ in distribution.")
    if a.ood:
        best_name = max(a.ood, key=lambda k: a.ood[k].auroc)
        b = a.ood[best_name]
        txt = (f"OOD inputs are best separated by {_OOD_NAMES.get(best_name, best_name)} (AUROC {b.auroc:.3f}, "
               f"FPR@95%TPR {b.fpr_at_95_tpr:.0%})")
        if "msp" in a.ood and best_name != "msp":
            txt += f"; MSP reaches AUROC {a.ood['msp'].auroc:.3f}"
        out.append(txt + ".")
    return out
