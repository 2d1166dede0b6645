"""The shapes × colours study: ablations × seeds, per-epoch per-slice metrics, verdicts against the baseline.

For every seed the study draws its own data (:mod:`failsight.datasets.shapes`) and trains each variant of
:class:`~failsight.models.compositional.CompositionalNet` on it:

========================  ===========  ==================
variant                   attention    encoder
========================  ===========  ==================
``baseline``              yes          trained
``frozen``                yes          pretrained on reconstruction, frozen
``no_attention``          no           trained
``frozen_no_attention``   no           pretrained on reconstruction, frozen
========================  ===========  ==================

Tasks logged after every epoch (all accuracies go through :func:`failsight.slices.learning_curves` and,
for the final epoch, :func:`failsight.slices.evaluate`, sliced by shape and by colour):

* ``shape`` / ``color`` / ``object``: the three heads on an i.i.d. test set of *seen* combinations;
* ``zero_shot``: the composed prediction (shape head × colour head) on the held-out combinations of a
  zero-shot split (never seen in training); ``zero_shot_shape`` / ``zero_shot_color`` are the two heads
  alone on those images (diagnostics: which head fails on unseen combinations);
* ``shape_bias``: a second model of the same variant is trained on a cue-consistent task (one class per
  shape, each shape always in its own colour) and tested on cue-conflict images; the shape bias is the
  share of shape decisions among decisions that follow either cue (Geirhos et al., 2019), with a Wilson
  interval from :func:`failsight.slices.evaluate` on those decisions.

Aggregation over seeds: the results table gives, per variant and metric, the mean over seeds with a
Student-t interval over the seeds' values (training variance included; with one seed, the run's own
Wilson interval). Each ablation is compared with the baseline by :func:`failsight.slices.compare` on
**pooled paired predictions**: within a seed both models predict the same test images; seeds draw
different images, so concatenating the seeds' pairs gives independent pairs and one test with
``n_seeds``× the samples. The family of slices is task, task × shape and task × colour over the four tasks
(Holm-corrected). Per-seed comparisons are kept too (how many seeds each verdict held in), and the per-task
deltas get a t interval over seeds, since McNemar on pooled pairs treats the trained models as fixed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from failsight._validate import FailsightInputError, check_fraction, check_int
from failsight.slices import Comparison, LearningCurves, SliceReport, compare, evaluate, learning_curves
from failsight.types import Interval, Result

__all__ = [
    "COMPARED_TASKS",
    "METRICS",
    "METRIC_LABELS",
    "PRESETS",
    "TASK_LABELS",
    "VARIANTS",
    "VARIANT_LABELS",
    "AblationComparison",
    "RunResult",
    "SeedData",
    "StudyConfig",
    "StudyResult",
    "TableRow",
    "TaskVerdict",
    "VariantCurves",
    "run_study",
]

#: Variant id -> switches of :class:`~failsight.models.compositional.CompositionalNet`.
VARIANTS: dict[str, dict[str, bool]] = {
    "baseline": {"attention": True, "frozen_embeddings": False},
    "frozen": {"attention": True, "frozen_embeddings": True},
    "no_attention": {"attention": False, "frozen_embeddings": False},
    "frozen_no_attention": {"attention": False, "frozen_embeddings": True},
}
#: Display names of the variants.
VARIANT_LABELS: dict[str, str] = {
    "baseline": "baseline",
    "frozen": "frozen embeddings",
    "no_attention": "no attention",
    "frozen_no_attention": "frozen + no attention",
}
#: Accuracy tasks (each logged per epoch and per slice).
TASKS: tuple[str, ...] = ("shape", "color", "object", "zero_shot", "zero_shot_shape", "zero_shot_color")
#: Tasks whose paired predictions enter the ablation comparisons.
COMPARED_TASKS: tuple[str, ...] = ("shape", "color", "object", "zero_shot")
TASK_LABELS: dict[str, str] = {
    "shape": "shape task", "color": "colour task", "object": "object task",
    "zero_shot": "zero-shot combinations", "zero_shot_shape": "zero-shot: shape head",
    "zero_shot_color": "zero-shot: colour head",
}
#: Metrics of the results table, in order.
METRICS: tuple[str, ...] = ("shape_acc", "color_acc", "object_acc", "zero_shot_acc", "shape_bias",
                            "zero_shot_shape_acc", "zero_shot_color_acc")
METRIC_LABELS: dict[str, str] = {
    "shape_acc": "shape acc", "color_acc": "colour acc", "object_acc": "object acc",
    "zero_shot_acc": "zero-shot acc", "shape_bias": "shape bias",
    "zero_shot_shape_acc": "zero-shot shape acc", "zero_shot_color_acc": "zero-shot colour acc",
}


# ============================================================================ configuration


@dataclasses.dataclass(frozen=True)
class StudyConfig(Result):
    """Everything that defines a study run (a preset from :data:`PRESETS`, or custom).

    ``n_train`` is the number of training images of the main model (seen combinations only; the
    i.i.d. test gets ``test_fraction`` of the seen images on top, the zero-shot test every image of the
    ``held_out_per_shape`` held-out colours per shape); the cue-conflict model trains on
    ``n_cue_train`` cue-consistent images and is tested on ``n_conflict`` cue-conflict images.
    ``num_threads`` torch threads are used during the study (``None``: leave torch's setting).
    """

    name: str = "custom"
    variants: tuple[str, ...] = tuple(VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 8
    n_train: int = 3000
    image_size: int = 32
    test_fraction: float = 0.2
    held_out_per_shape: int = 1
    n_cue_train: int = 1000
    n_conflict: int = 700
    cue_epochs: int | None = 5
    width: int = 16
    batch_size: int = 128
    lr: float = 3e-3
    pretrain_epochs: int = 2
    pretrain_lr: float = 1e-2
    alpha: float = 0.05
    ci: float = 0.95
    num_threads: int | None = 1

    @property
    def n_runs(self) -> int:
        """Number of (variant, seed) runs."""
        return len(self.variants) * len(self.seeds)


#: Named grids. ``small`` is what CI runs (well under a minute on two cores); ``default`` is the study
#: (12 runs plus 12 cue-conflict runs; a few minutes on two shared cores).
PRESETS: dict[str, StudyConfig] = {
    "small": StudyConfig(name="small", seeds=(0, 1), epochs=4, n_train=800, image_size=24, n_cue_train=300,
                         n_conflict=300, cue_epochs=3, width=8, batch_size=32, pretrain_epochs=1),
    # what `failsight demo` runs: ~35 s on one core, enough training for the shape task to separate from chance
    "demo": StudyConfig(name="demo", seeds=(0, 1), epochs=8, n_train=1500, image_size=24, n_cue_train=600,
                        n_conflict=300, cue_epochs=4, width=12, batch_size=32, pretrain_epochs=2),
    "default": StudyConfig(name="default"),
}


_FIELDS = [f.name for f in dataclasses.fields(StudyConfig)]


def _resolve_config(grid: str | StudyConfig | Mapping[str, Any], overrides: dict[str, Any]) -> StudyConfig:
    if isinstance(grid, StudyConfig):
        cfg = grid
    elif isinstance(grid, Mapping):
        unknown = sorted(set(grid) - set(_FIELDS))
        if unknown:
            raise FailsightInputError(
                f"unknown study setting(s) {unknown}; valid: {_FIELDS}."
            )
        cfg = StudyConfig(**dict(grid))
    elif isinstance(grid, str):
        if grid not in PRESETS:
            raise FailsightInputError(f"unknown grid {grid!r}; use one of {list(PRESETS)} or a StudyConfig.")
        cfg = PRESETS[grid]
    else:
        raise FailsightInputError(
            f"grid must be a preset name {list(PRESETS)}, a StudyConfig or a dict, got {type(grid).__name__}."
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        cfg = dataclasses.replace(cfg, **given)
    return _validate_config(cfg)


def _validate_config(cfg: StudyConfig) -> StudyConfig:
    variants = (cfg.variants,) if isinstance(cfg.variants, str) else tuple(cfg.variants)
    if not variants:
        raise FailsightInputError(f"variants is empty; choose from {list(VARIANTS)}.")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise FailsightInputError(f"unknown variant(s) {unknown}; valid variants: {list(VARIANTS)}.")
    if len(set(variants)) != len(variants):
        raise FailsightInputError(f"variants {list(variants)} contain duplicates; list each once.")
    if "baseline" not in variants:
        raise FailsightInputError(
            "variants must include 'baseline': every ablation is compared against it."
        )
    variants = ("baseline", *[v for v in variants if v != "baseline"])
    seeds = (cfg.seeds,) if isinstance(cfg.seeds, (int, np.integer)) else tuple(cfg.seeds)
    if not seeds:
        raise FailsightInputError("seeds is empty; pass at least one seed, e.g. seeds=(0, 1, 2).")
    seeds = tuple(check_int(s, "seed", minimum=0) for s in seeds)
    if len(set(seeds)) != len(seeds):
        raise FailsightInputError(f"seeds {list(seeds)} contain duplicates; each seed must differ.")
    image_size = check_int(cfg.image_size, "image_size", minimum=8)
    if image_size > 128:
        raise FailsightInputError(f"image_size={image_size} is too large for the study (8..128 pixels).")
    n_train = check_int(cfg.n_train, "n_train", minimum=200)
    per_shape = check_int(cfg.held_out_per_shape, "held_out_per_shape", minimum=1)
    cue_epochs = None if cfg.cue_epochs is None else check_int(cfg.cue_epochs, "cue_epochs")
    threads = None if cfg.num_threads is None else check_int(cfg.num_threads, "num_threads")
    lr, pre_lr = float(cfg.lr), float(cfg.pretrain_lr)
    for name, val in (("lr", lr), ("pretrain_lr", pre_lr)):
        if not (math.isfinite(val) and val > 0):
            raise FailsightInputError(f"{name} must be a positive number, got {val!r}.")
    return dataclasses.replace(
        cfg, variants=variants, seeds=seeds, image_size=image_size, n_train=n_train,
        epochs=check_int(cfg.epochs, "epochs"),
        test_fraction=check_fraction(cfg.test_fraction, "test_fraction"),
        held_out_per_shape=per_shape, n_cue_train=check_int(cfg.n_cue_train, "n_cue_train", minimum=50),
        n_conflict=check_int(cfg.n_conflict, "n_conflict", minimum=50), cue_epochs=cue_epochs,
        width=check_int(cfg.width, "width", minimum=2), batch_size=check_int(cfg.batch_size, "batch_size"),
        lr=lr, pretrain_epochs=check_int(cfg.pretrain_epochs, "pretrain_epochs"), pretrain_lr=pre_lr,
        alpha=check_fraction(cfg.alpha, "alpha"), ci=check_fraction(cfg.ci, "ci"), num_threads=threads,
    )


# ============================================================================ results


@dataclasses.dataclass(frozen=True, eq=False)
class SeedData(Result):
    """What one seed's runs were evaluated on: sizes, held-out combinations, the cue pairing, and (not in
    JSON) the labels and group names of every task, used for the paired comparisons.

    ``pretrain_loss`` is the reconstruction MSE per pretraining epoch of the shared frozen encoder
    (``None`` when no frozen variant ran); ``blank_mse`` the MSE of predicting an all-black image, for scale.
    """

    seed: int
    n_train: int
    n_test: dict[str, int]
    held_out: tuple[tuple[str, str], ...]
    pairing: tuple[tuple[str, str], ...]
    y_true: dict[str, np.ndarray] = dataclasses.field(metadata={"exclude_json": True})
    groups: dict[str, dict[str, np.ndarray]] = dataclasses.field(metadata={"exclude_json": True})
    pretrain_loss: tuple[float, ...] | None = None
    blank_mse: float | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class RunResult(Result):
    """One (variant, seed) run.

    ``final`` maps each metric of :data:`METRICS` to its value after the last epoch; ``reports`` holds
    the :class:`~failsight.slices.SliceReport` of each task at the last epoch (``"shape_bias"``: shape
    decisions among cue-following decisions), ``curves`` the per-slice
    :class:`~failsight.slices.LearningCurves` of each task, ``shape_bias_curve`` ``(E,)`` the shape
    bias per epoch. ``predictions`` (not in JSON) are the last epoch's predicted labels per task.
    """

    variant: str
    seed: int
    final: dict[str, float]
    reports: dict[str, SliceReport]
    curves: dict[str, LearningCurves]
    shape_bias_curve: np.ndarray
    loss: dict[str, list[float]]
    pretrain_loss: list[float] | None
    seconds: float
    trainable_parameters: int
    predictions: dict[str, np.ndarray] = dataclasses.field(metadata={"exclude_json": True})


@dataclasses.dataclass(frozen=True)
class TableRow(Result):
    """Mean and interval over seeds of one metric of one variant; ``values`` per seed.

    ``ci_kind`` is ``"t over seeds"`` (Student-t interval of the seeds' values) or, with one seed,
    ``"wilson (one run)"`` (that run's own interval).
    """

    variant: str
    metric: str
    mean: float
    ci: Interval | None
    values: tuple[float, ...]
    ci_kind: str


@dataclasses.dataclass(frozen=True, eq=False)
class VariantCurves(Result):
    """Learning curves of one variant: per metric, the mean over seeds ``(E,)`` and the range over seeds
    (``low``/``high`` = min/max). ``epochs`` ``(E,)`` start at 1."""

    variant: str
    epochs: np.ndarray
    mean: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TaskVerdict(Result):
    """One task of an ablation's comparison: the pooled-pairs row (``delta``, ``ci``, ``p_adjusted``,
    ``verdict``), per-seed verdict counts, and the delta over seeds (mean and t interval; ``None`` with
    one seed)."""

    task: str
    n: int
    baseline: float
    candidate: float
    delta: float
    ci: Interval | None
    p_adjusted: float
    verdict: str
    seeds_regressed: int
    seeds_improved: int
    seed_deltas: tuple[float, ...]
    seed_delta_ci: Interval | None
    partial_failure: bool


@dataclasses.dataclass(frozen=True, eq=False)
class AblationComparison(Result):
    """An ablation against the baseline.

    ``pooled`` is :func:`failsight.slices.compare` on the pooled paired predictions of all seeds
    (slicings ``task``, ``task × shape``, ``task × colour``); ``per_seed`` the same per seed. ``tasks``
    summarises each task; ``partial_failure`` is the pooled flag (aggregate over tasks holds or improves
    while a slice regresses); ``task_partial_failures`` lists tasks whose own accuracy holds or improves
    while one of their shape/colour slices regresses. ``shape_bias_delta`` is candidate minus baseline
    shape bias per seed, with its mean and t interval over seeds.
    """

    variant: str
    pooled: Comparison
    per_seed: tuple[Comparison, ...]
    tasks: tuple[TaskVerdict, ...]
    partial_failure: bool
    task_partial_failures: tuple[str, ...]
    shape_bias_delta: tuple[float, ...]
    shape_bias_delta_mean: float
    shape_bias_delta_ci: Interval | None

    def summary(self) -> str:
        """Plain-text verdicts, one line per task."""
        lines = [f"{VARIANT_LABELS[self.variant]} vs baseline"
                 + (" — PARTIAL FAILURE" if self.partial_failure or self.task_partial_failures else "")]
        for t in self.tasks:
            lines.append(f"  {TASK_LABELS[t.task]}: {t.baseline:.3f} -> {t.candidate:.3f} "
                         f"({t.delta * 100:+.1f} pts, {t.verdict}; regressed in {t.seeds_regressed}, "
                         f"improved in {t.seeds_improved} of {len(t.seed_deltas)} seeds)")
        lines.append(f"  shape bias: {self.shape_bias_delta_mean:+.3f} (mean change over seeds)")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, eq=False)
class StudyResult(Result):
    """Result of :func:`run_study`: config, per-seed data, runs, results table, curves and verdicts.

    ``seconds`` is the wall time of the whole study; ``load_average`` the system's 1/5/15-minute load
    at its start and end (timings on a shared machine depend on it; ``None`` where unavailable).
    """

    config: StudyConfig
    seeds: tuple[SeedData, ...]
    runs: tuple[RunResult, ...]
    table: tuple[TableRow, ...]
    curves: tuple[VariantCurves, ...]
    comparisons: tuple[AblationComparison, ...]
    seconds: float
    load_average: dict[str, tuple[float, ...] | None]

    def run(self, variant: str, seed: int) -> RunResult:
        """The run of one variant and seed."""
        for r in self.runs:
            if r.variant == variant and r.seed == seed:
                return r
        raise FailsightInputError(
            f"no run for variant {variant!r} and seed {seed}; variants {list(self.config.variants)}, "
            f"seeds {list(self.config.seeds)}."
        )

    def row(self, variant: str, metric: str) -> TableRow:
        """The results-table row of one variant and metric."""
        for r in self.table:
            if r.variant == variant and r.metric == metric:
                return r
        raise FailsightInputError(
            f"no table row for variant {variant!r}, metric {metric!r}; metrics: {list(METRICS)}."
        )

    def comparison(self, variant: str) -> AblationComparison:
        """The comparison of one ablation against the baseline."""
        for c in self.comparisons:
            if c.variant == variant:
                return c
        raise FailsightInputError(
            f"no comparison for {variant!r}; ablations run: {[c.variant for c in self.comparisons]}."
        )

    def table_rows(self) -> list[dict[str, Any]]:
        """One dict per variant: ``{"variant": ..., metric: mean, metric + "_ci": (low, high)}``."""
        out = []
        for v in self.config.variants:
            d: dict[str, Any] = {"variant": v}
            for m in METRICS:
                r = self.row(v, m)
                d[m] = r.mean
                d[f"{m}_ci"] = None if r.ci is None else (r.ci.low, r.ci.high)
            out.append(d)
        return out

    def summary(self) -> str:
        """Plain-text table (mean [CI] per variant and metric) and the verdicts."""
        main = METRICS[:5]
        head = f"{'variant':<24}" + "".join(f"{METRIC_LABELS[m]:>24}" for m in main)
        lines = [head]
        for v in self.config.variants:
            cells = []
            for m in main:
                r = self.row(v, m)
                ci = "" if r.ci is None else f" [{r.ci.low:.3f},{r.ci.high:.3f}]"
                cells.append(f"{r.mean:.3f}{ci}".rjust(24))
            lines.append(f"{VARIANT_LABELS[v]:<24}" + "".join(cells))
        lines.extend(c.summary() for c in self.comparisons)
        return "\n".join(lines)


# ============================================================================ statistics helpers


def _t_interval(values: Sequence[float], level: float,
                bounds: tuple[float, float] = (0.0, 1.0)) -> Interval | None:
    """Student-t interval of the mean of ``values``, clipped to ``bounds`` (the metric's range); ``None``
    for fewer than two finite values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return None
    m = float(v.mean())
    half = float(stats.t.ppf(0.5 + level / 2.0, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return Interval(max(m - half, bounds[0]), min(m + half, bounds[1]), level)


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


# ============================================================================ one seed's data


@dataclasses.dataclass
class _SeedSets:
    train: Any
    test: Any
    unseen: Any
    cue_train: Any
    conflict: Any
    cue_split: Any
    info: SeedData


def _draw_seed(cfg: StudyConfig, seed: int) -> _SeedSets:
    from failsight.datasets.shapes import (
        DEFAULT_COLORS,
        DEFAULT_SHAPES,
        cue_conflict_split,
        make_shapes,
        zero_shot_split,
    )

    ks, kc = len(DEFAULT_SHAPES), len(DEFAULT_COLORS)
    seen_share = 1.0 - cfg.held_out_per_shape / kc
    n_total = math.ceil(cfg.n_train / (seen_share * (1.0 - cfg.test_fraction)))
    data = make_shapes(n_total, image_size=cfg.image_size, seed=seed)
    split = zero_shot_split(data, per_shape=cfg.held_out_per_shape, val=0.0, test=cfg.test_fraction,
                            seed=seed)
    sub = split.subsets(data)
    # cue-conflict task: one class per shape; pair shapes with colours among the *seen* combinations
    rng = np.random.default_rng(seed + 30_011)
    held = {tuple(p) for p in split.held_out.tolist()}
    pairing = None
    for _ in range(1000):
        cand = rng.permutation(kc)[:ks]
        if not any((s, int(c)) in held for s, c in enumerate(cand)):
            pairing = cand
            break
    if pairing is None:  # pragma: no cover - only with almost every combination held out
        raise FailsightInputError(
            "could not pair every shape with a seen colour; hold out fewer combinations."
        )
    train_combos = np.stack([np.arange(ks), pairing], axis=1)
    conflict_combos = np.array([(s, pairing[c]) for s in range(ks) for c in range(ks) if c != s],
                               dtype=np.int64)
    cue_train = make_shapes(cfg.n_cue_train, image_size=cfg.image_size, seed=seed + 10_007,
                            combinations=train_combos)
    conflict = make_shapes(cfg.n_conflict, image_size=cfg.image_size, seed=seed + 20_011,
                           combinations=conflict_combos)
    cue_split = cue_conflict_split(conflict, pairing=pairing.tolist(), seed=seed)
    test, unseen = sub["test"], sub["test_unseen"]
    g_test = {k: v for k, v in test.groups().items() if k != "object"}
    g_unseen = {k: v for k, v in unseen.groups().items() if k != "object"}
    y_true = {
        "shape": test.shape_labels, "color": test.color_labels, "object": test.labels,
        "zero_shot": unseen.labels, "zero_shot_shape": unseen.shape_labels,
        "zero_shot_color": unseen.color_labels,
    }
    groups = {"shape": g_test, "color": g_test, "object": g_test,
              "zero_shot": g_unseen, "zero_shot_shape": g_unseen, "zero_shot_color": g_unseen}
    info = SeedData(
        seed, len(sub["train"]), {"test": len(test), "zero_shot": len(unseen), "cue_conflict": len(conflict)},
        split.held_out_names,
        tuple((data.shape_names[s], data.color_names[c]) for s, c in train_combos.tolist()),
        y_true, groups,
    )
    return _SeedSets(sub["train"], test, unseen, cue_train, conflict, cue_split, info)


# ============================================================================ one run


_HEAD_OF_TASK = {"shape": ("test", "shape"), "color": ("test", "color"), "object": ("test", "object"),
                 "zero_shot": ("unseen", "composed"), "zero_shot_shape": ("unseen", "shape"),
                 "zero_shot_color": ("unseen", "color")}


def _run_one(cfg: StudyConfig, variant: str, sets: _SeedSets, encoder_state: Any) -> RunResult:
    from failsight.datasets.shapes import shape_bias
    from failsight.models.compositional import CompositionalNet, train_compositional

    seed = sets.info.seed
    sw = VARIANTS[variant]
    t0 = time.perf_counter()
    ks, kc = len(sets.train.shape_names), len(sets.train.color_names)
    common = {"image_size": cfg.image_size, "width": cfg.width, "seed": seed, **sw}
    model = CompositionalNet(ks, kc, **common)
    cue = CompositionalNet(ks, kc, n_objects=ks, **common)
    if sw["frozen_embeddings"]:
        model.load_encoder_state(encoder_state)
        cue.load_encoder_state(encoder_state)
    train_kw = {"batch_size": cfg.batch_size, "lr": cfg.lr, "seed": seed, "progress": False}
    hist = train_compositional(model, sets.train, epochs=cfg.epochs,
                               eval_sets={"test": sets.test, "unseen": sets.unseen}, **train_kw)
    cue_hist = train_compositional(cue, sets.cue_train, {"object": sets.cue_train.shape_labels},
                                   epochs=cfg.cue_epochs or cfg.epochs, eval_sets={"conflict": sets.conflict},
                                   **train_kw)

    epochs = np.arange(1, cfg.epochs + 1)
    reports: dict[str, SliceReport] = {}
    curves: dict[str, LearningCurves] = {}
    final: dict[str, float] = {}
    predictions: dict[str, np.ndarray] = {}
    for task, (set_name, head) in _HEAD_OF_TASK.items():
        per_epoch = hist.predictions[set_name][head]
        y, g = sets.info.y_true[task], sets.info.groups[task]
        curves[task] = learning_curves(y, per_epoch, g, epochs=epochs, ci=cfg.ci)
        reports[task] = evaluate(y, per_epoch[-1], g, ci=cfg.ci)
        final[f"{task}_acc"] = reports[task].overall
        predictions[task] = per_epoch[-1]

    # shape bias: per epoch from the cue model's decisions on cue-conflict images
    cue_pred = cue_hist.predictions["conflict"]["object"]  # (E_cue, n_conflict)
    split = sets.cue_split
    follows = [split.follow(p) for p in cue_pred]
    sb_curve = np.array([shape_bias(s, c) for s, c in follows])
    s_last, c_last = follows[-1]
    either = s_last | c_last
    conflict_groups = {k: v[split.test] for k, v in sets.conflict.groups().items() if k != "object"}
    if either.sum() > 0:
        # share of shape decisions among cue-following ones, as an accuracy against the shape label
        reports["shape_bias"] = evaluate(split.shape_label[split.test][either], cue_pred[-1][either],
                                         {k: v[either] for k, v in conflict_groups.items()}, ci=cfg.ci)
    final["shape_bias"] = float(sb_curve[-1])
    predictions["cue_conflict"] = cue_pred[-1]
    return RunResult(
        variant, seed, final, reports, curves, sb_curve, hist.loss,
        None if hist.pretrain is None else hist.pretrain.loss, time.perf_counter() - t0,
        hist.trainable_parameters + cue_hist.trainable_parameters, predictions,
    )


# ============================================================================ aggregation


def _table(cfg: StudyConfig, runs: Sequence[RunResult]) -> tuple[TableRow, ...]:
    rows = []
    for v in cfg.variants:
        mine = [r for r in runs if r.variant == v]
        for m in METRICS:
            vals = tuple(float(r.final[m]) for r in mine)
            if len(mine) >= 2:
                ci, kind = _t_interval(vals, cfg.ci), "t over seeds"
            else:
                task = "shape_bias" if m == "shape_bias" else m[:-4]
                rep = mine[0].reports.get(task)
                ci, kind = (rep.overall_ci if rep is not None else None), "wilson (one run)"
            rows.append(TableRow(v, m, _nanmean(vals), ci, vals, kind))
    return tuple(rows)


def _curves(cfg: StudyConfig, runs: Sequence[RunResult]) -> tuple[VariantCurves, ...]:
    out = []
    ep = np.arange(1, cfg.epochs + 1)
    for v in cfg.variants:
        mine = [r for r in runs if r.variant == v]
        per_metric = {f"{t}_acc": np.stack([r.curves[t].overall for r in mine]) for t in TASKS}
        per_metric["shape_bias"] = np.stack([r.shape_bias_curve for r in mine])
        with np.errstate(all="ignore"):
            mean = {k: np.nanmean(a, axis=0) if np.isfinite(a).any() else np.full(a.shape[1], np.nan)
                    for k, a in per_metric.items()}
            low = {k: np.nanmin(a, axis=0) if np.isfinite(a).any() else np.full(a.shape[1], np.nan)
                   for k, a in per_metric.items()}
            high = {k: np.nanmax(a, axis=0) if np.isfinite(a).any() else np.full(a.shape[1], np.nan)
                    for k, a in per_metric.items()}
        cue_ep = np.arange(1, (cfg.cue_epochs or cfg.epochs) + 1)
        if len(cue_ep) != len(ep):  # shape-bias curve on its own epoch axis: resample onto the main one
            for d in (mean, low, high):
                d["shape_bias"] = np.interp(ep / len(ep), cue_ep / len(cue_ep), d["shape_bias"])
        out.append(VariantCurves(v, ep, mean, low, high))
    return tuple(out)


def _stacked(seeds: Sequence[SeedData], runs: Mapping[tuple[str, int], RunResult], variant: str,
             use: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Concatenate the compared tasks of the given seeds: ``y``, baseline / candidate predictions, groups."""
    ys, pb, pc, task, by_shape, by_color = [], [], [], [], [], []
    for i in use:
        sd = seeds[i]
        for t in COMPARED_TASKS:
            y = sd.y_true[t]
            ys.append(y)
            pb.append(runs["baseline", sd.seed].predictions[t])
            pc.append(runs[variant, sd.seed].predictions[t])
            name = TASK_LABELS[t]
            task.append(np.full(len(y), name))
            by_shape.append(np.char.add(name + " | ", sd.groups[t]["shape"].astype(str)))
            by_color.append(np.char.add(name + " | ", sd.groups[t]["color"].astype(str)))
    groups = {"task": np.concatenate(task), "task × shape": np.concatenate(by_shape),
              "task × colour": np.concatenate(by_color)}
    return np.concatenate(ys), np.concatenate(pb), np.concatenate(pc), groups


def _comparisons(cfg: StudyConfig, seeds: Sequence[SeedData],
                 runs: Sequence[RunResult]) -> tuple[AblationComparison, ...]:
    by_key = {(r.variant, r.seed): r for r in runs}
    out = []
    all_idx = list(range(len(seeds)))
    for v in cfg.variants:
        if v == "baseline":
            continue
        pooled = compare(*_stacked(seeds, by_key, v, all_idx), alpha=cfg.alpha, ci=cfg.ci)
        per_seed = tuple(compare(*_stacked(seeds, by_key, v, [i]), alpha=cfg.alpha, ci=cfg.ci)
                         for i in all_idx)
        regressed_slices = {(r.slicing, str(r.slice)) for r in pooled.regressed}
        tasks = []
        for t in COMPARED_TASKS:
            name = TASK_LABELS[t]
            row = next(r for r in pooled.rows if r.slicing == "task" and r.slice == name)
            seed_rows = [next(r for r in c.rows if r.slicing == "task" and r.slice == name) for c in per_seed]
            deltas = tuple(float(r.delta) for r in seed_rows)
            sub_regressed = any(s in ("task × shape", "task × colour") and lab.startswith(name + " | ")
                                for s, lab in regressed_slices)
            tasks.append(TaskVerdict(
                t, row.n, row.baseline, row.candidate, row.delta, row.ci, row.p_adjusted, row.verdict,
                sum(r.verdict == "regressed" for r in seed_rows),
                sum(r.verdict == "improved" for r in seed_rows),
                deltas, _t_interval(deltas, cfg.ci, (-1.0, 1.0)),
                bool(sub_regressed and row.verdict != "regressed"),
            ))
        sb = tuple(by_key[v, sd.seed].final["shape_bias"] - by_key["baseline", sd.seed].final["shape_bias"]
                   for sd in seeds)
        out.append(AblationComparison(
            v, pooled, per_seed, tuple(tasks), pooled.partial_failure,
            tuple(t.task for t in tasks if t.partial_failure), sb, _nanmean(sb),
            _t_interval(sb, cfg.ci, (-1.0, 1.0)),
        ))
    return tuple(out)


# ============================================================================ runner


_SETS_CACHE: dict[str, Any] = {}


def _seed_sets(cfg: StudyConfig, seed: int) -> _SeedSets:
    """The seed's data, drawn deterministically from ``(cfg, seed)``; the last one is kept per process, so a
    worker drawing it for several variants of one seed draws it once."""
    key = f"{cfg!r}|{seed}"
    if _SETS_CACHE.get("key") != key:
        _SETS_CACHE.clear()
        _SETS_CACHE["sets"] = _draw_seed(cfg, seed)
        _SETS_CACHE["key"] = key
    return _SETS_CACHE["sets"]


def _seed_task(ctx: dict[str, Any], key: tuple[Any, ...], params: dict[str, Any]) -> dict[str, Any]:
    """Engine task ``(seed,)``: draw the seed's data and pretrain the shared frozen encoder (when needed)."""
    from failsight.models.compositional import CompositionalNet, pretrain_encoder, torch_threads

    cfg, (seed,) = ctx["cfg"], key
    with torch_threads(cfg.num_threads):
        sets = _seed_sets(cfg, seed)
        info, state = sets.info, None
        if ctx["need_frozen"]:  # one pretrained encoder per seed, shared by the frozen variants
            ks, kc = len(sets.train.shape_names), len(sets.train.color_names)
            enc = CompositionalNet(ks, kc, image_size=cfg.image_size, width=cfg.width, seed=seed,
                                   frozen_embeddings=True)
            pre = pretrain_encoder(enc, sets.train, epochs=cfg.pretrain_epochs, batch_size=cfg.batch_size,
                                   lr=cfg.pretrain_lr, seed=seed)
            state = enc.encoder_state()
            info = dataclasses.replace(
                sets.info, pretrain_loss=tuple(pre.loss),
                blank_mse=float(np.mean(np.square(sets.train.images, dtype=np.float64))))
    return {"info": info, "state": state}


def _run_task(ctx: dict[str, Any], key: tuple[Any, ...], params: dict[str, Any]) -> RunResult:
    """Engine task ``(seed, variant)``: train and evaluate one variant on the seed's data."""
    from failsight.models.compositional import torch_threads

    cfg, (seed, variant) = ctx["cfg"], key
    with torch_threads(cfg.num_threads):
        return _run_one(cfg, variant, _seed_sets(cfg, seed), ctx["states"][seed])


def _register() -> None:
    from failsight.engine import TaskKind, register_task_kind

    register_task_kind(TaskKind("study.seed", run=_seed_task, mergeable=False))
    register_task_kind(TaskKind("study.run", run=_run_task, mergeable=False, requires=("study.seed",)))


_register()


def _load() -> tuple[float, ...] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def run_study(
    grid: str | StudyConfig | Mapping[str, Any] = "default",
    *,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
    n_train: int | None = None,
    image_size: int | None = None,
    variants: Sequence[str] | None = None,
    progress: bool = True,
    callback: Callable[[RunResult], Any] | None = None,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    **settings: Any,
) -> StudyResult:
    """Run the shapes × colours study: variants × seeds, per-epoch per-slice metrics, verdicts.

    Parameters
    ----------
    grid : a preset name from :data:`PRESETS` (``"small"`` for CI, ``"default"``), a
        :class:`StudyConfig` or a dict of its fields.
    seeds, epochs, n_train, image_size, variants : override the grid's values (``None`` keeps them);
        ``variants`` from :data:`VARIANTS` and must include ``"baseline"``.
    progress : show progress on stderr (a bar in a terminal, log lines otherwise).
    callback : called with each :class:`RunResult` as soon as the run finishes (on the calling process).
    workers, backend, ray_address : where the runs go (:mod:`failsight.engine`): each seed and each
        (seed, variant) is a task; default every local core, ``backend="ray"`` a Ray cluster. Every run is
        seeded from its seed and variant, so results do not depend on them.
    settings : any other :class:`StudyConfig` field (``alpha``, ``lr``, ``num_threads``, ...).

    Returns
    -------
    StudyResult with the results table (mean and interval over seeds per variant × metric), the
    learning curves (shape vs colour and the other tasks per variant), and the verdicts of
    :func:`failsight.slices.compare` of each ablation against the baseline.
    """
    bad = sorted(set(settings) - set(_FIELDS))
    if bad:
        raise FailsightInputError(
            f"unknown study setting(s) {bad}; valid: {_FIELDS}."
        )
    overrides = {"seeds": None if seeds is None else tuple(seeds), "epochs": epochs, "n_train": n_train,
                 "image_size": image_size, "variants": None if variants is None else tuple(variants),
                 **settings}
    cfg = _resolve_config(grid, overrides)
    if callback is not None and not callable(callback):
        raise FailsightInputError("callback must be callable as callback(run_result).")

    from failsight.engine import Plan, make_executor, run_sweep

    t0 = time.perf_counter()
    load0 = _load()
    need_frozen = any(VARIANTS[v]["frozen_embeddings"] for v in cfg.variants)
    # stage 1: one task per seed (data, shared encoder); stage 2: one task per (seed, variant), seed-major
    executor = make_executor(workers, backend, ray_address=ray_address, n_tasks=cfg.n_runs)
    try:
        prep = run_sweep(Plan.build("study.seed", [(s,) for s in cfg.seeds]), {"cfg": cfg, "need_frozen": need_frozen},
                         executor=executor, progress=progress, label="study data",
                         describe=lambda sp: f"seed {sp.key[0]}")
        seed_data = [p["info"] for p in prep]
        states = {s: p["state"] for s, p in zip(cfg.seeds, prep, strict=True)}
        keys = [(seed, v) for seed in cfg.seeds for v in cfg.variants]
        runs = run_sweep(Plan.build("study.run", keys), {"cfg": cfg, "states": states}, executor=executor,
                         progress=progress, label="study",
                         describe=lambda sp: f"seed {sp.key[0]}: {VARIANT_LABELS[sp.key[1]]}",
                         on_result=None if callback is None else (lambda _sp, run: callback(run)))
    finally:
        executor.close()
    table = _table(cfg, runs)
    curves = _curves(cfg, runs)
    comparisons = _comparisons(cfg, seed_data, runs)
    return StudyResult(cfg, tuple(seed_data), tuple(runs), table, curves, comparisons,
                       time.perf_counter() - t0, {"start": load0, "end": _load()})
