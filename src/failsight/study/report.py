"""Report section for the shapes × colours study (reads a :class:`StudyResult` only)."""

from __future__ import annotations

from typing import Any

import numpy as np
from markupsafe import Markup

from failsight.report.html import Section, fmt_ci, fmt_num
from failsight.report.plots import COLORS, new_figure
from failsight.study.shapes_colors import (
    COMPARED_TASKS,
    METRIC_LABELS,
    METRICS,
    TASK_LABELS,
    VARIANT_LABELS,
    StudyResult,
    VariantCurves,
)

__all__ = ["learning_curves_figure", "shape_bias_figure", "study_section"]

#: Curves drawn per variant: metric -> (label, colour, line style).
_CURVE_STYLE: dict[str, tuple[str, str, str]] = {
    "shape_acc": ("shape task", COLORS["blue"], "-"),
    "color_acc": ("colour task", COLORS["orange"], "-"),
    "object_acc": ("object task", COLORS["green"], "--"),
    "zero_shot_acc": ("zero-shot combinations", COLORS["red"], ":"),
}
_VARIANT_COLORS = [COLORS["ink"], COLORS["blue"], COLORS["orange"], COLORS["purple"]]
_VERDICT_TONE = {"improved": "good", "regressed": "bad"}


def learning_curves_figure(curves: tuple[VariantCurves, ...] | list[VariantCurves], *, n_seeds: int = 1,
                           metrics: tuple[str, ...] = tuple(_CURVE_STYLE), width_per_panel: float = 3.1,
                           height: float = 3.2) -> Any:
    """One panel per variant: test accuracy of each task per epoch (mean over seeds; band = range over
    seeds). Returns a matplotlib figure."""
    curves = list(curves)
    k = len(curves)
    fig, axes = new_figure(width_per_panel * k + 0.4, height, nrows=1, ncols=k, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, c in zip(axes, curves, strict=True):
        for m in metrics:
            label, color, ls = _CURVE_STYLE.get(m, (METRIC_LABELS.get(m, m), COLORS["grey"], "-"))
            ax.plot(c.epochs, c.mean[m], color=color, ls=ls, lw=1.8, label=label, marker="o", ms=2.5)
            if n_seeds > 1:
                ax.fill_between(c.epochs, c.low[m], c.high[m], color=color, alpha=0.15, lw=0)
        ax.set_title(VARIANT_LABELS.get(c.variant, c.variant))
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False, fontsize=8)
    return fig


def shape_bias_figure(curves: tuple[VariantCurves, ...] | list[VariantCurves], *, n_seeds: int = 1,
                      width: float = 4.8, height: float = 3.2) -> Any:
    """Shape bias of the cue-conflict model per epoch, one line per variant (band = range over seeds)."""
    fig, ax = new_figure(width, height)
    for i, c in enumerate(curves):
        color = _VARIANT_COLORS[i % len(_VARIANT_COLORS)]
        ax.plot(c.epochs, c.mean["shape_bias"], color=color, lw=1.8, marker="o", ms=2.5,
                label=VARIANT_LABELS.get(c.variant, c.variant))
        if n_seeds > 1:
            ax.fill_between(c.epochs, c.low["shape_bias"], c.high["shape_bias"], color=color, alpha=0.12,
                            lw=0)
    ax.axhline(0.5, color=COLORS["grey"], ls=":", lw=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("shape bias (1 = follows shape)")
    ax.set_title("Cue conflict: shape vs colour decisions")
    ax.legend(loc="best", frameon=False, fontsize=8)
    ax.set_axisbelow(True)
    return fig


def _pts(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:+.1f}"


def _delta_ci(ci: Any) -> Markup:
    if ci is None:
        return Markup("–")
    return Markup('<span class="ci">[{}, {}]</span>').format(_pts(ci.low), _pts(ci.high))


def study_section(result: StudyResult, *, title: str = "Partial failures: shapes × colours study",
                  section_id: str = "study-shapes-colors") -> Section:
    """Section with the results table, per-variant learning curves (shape vs colour), the shape-bias
    curves and the verdict of each ablation against the baseline (from :func:`failsight.slices.compare`)."""
    cfg = result.config
    k = len(cfg.seeds)
    lvl = f"{cfg.ci:.0%}"
    sd0 = result.seeds[0]
    sec = Section(title, section_id, intro=(
        "A compositional network (CNN encoder → self-attention over spatial tokens → shape, colour and "
        f"object heads) and its ablations, trained for {cfg.epochs} epochs on {cfg.n_train:,} procedural "
        f"{cfg.image_size}×{cfg.image_size} images per seed ({k} seed{'s' if k > 1 else ''}: "
        f"{', '.join(map(str, cfg.seeds))}). {cfg.held_out_per_shape} colour(s) per shape are held out of "
        "training entirely (zero-shot combinations, predicted by composing the shape and colour heads); the "
        "shape bias comes from a second model of the same variant trained where shape and colour agree and "
        "tested where they disagree. The hypothesis under test — shape improves while colour stagnates, and "
        "ablations trade one for the other — is checked, not assumed."
    ))
    base = {m: result.row("baseline", m) for m in METRICS}
    sec.key("baseline shape / colour acc", f"{fmt_num(base['shape_acc'].mean, pct=True, digits=3)} / "
                                          f"{fmt_num(base['color_acc'].mean, pct=True, digits=3)}",
            hint=f"mean over {k} seed(s)")
    sec.key("baseline zero-shot acc", fmt_num(base["zero_shot_acc"].mean, pct=True, digits=3),
            hint=f"{len(sd0.held_out)} unseen combinations per seed")
    n_pf = sum(bool(c.partial_failure or c.task_partial_failures) for c in result.comparisons)
    sec.key("ablations with a partial failure", f"{n_pf} of {len(result.comparisons)}",
            tone="bad" if n_pf else "good")
    sec.key("runtime", f"{result.seconds / 60:.1f} min",
            hint=(f"load {result.load_average['start'][0]:.1f} at start" if result.load_average.get("start")
                  else ""))

    # results table
    sec.heading("Results (last epoch)")
    ci_kind = result.table[0].ci_kind if result.table else ""
    rows = []
    for v in cfg.variants:
        rows.append([VARIANT_LABELS[v], *[fmt_ci(result.row(v, m).mean, result.row(v, m).ci, digits=3)
                                          for m in METRICS]])
    sec.table(["variant", *[METRIC_LABELS[m] for m in METRICS]], rows, highlight=[0],
              caption=f"Mean over seeds with a {lvl} interval ({ci_kind}). Accuracies on an i.i.d. test of "
                      "seen combinations (shape, colour, object heads) and on the held-out combinations "
                      "(zero-shot: composed prediction; last two columns: each head alone). Shape bias: share "
                      "of shape decisions among cue-following decisions on cue-conflict images (0.5 = no "
                      "preference).")

    # learning curves
    sec.heading("Learning curves")
    sec.figure(learning_curves_figure(result.curves, n_seeds=k),
               caption="Test accuracy per epoch of each task, per variant: does shape improve while colour "
                       "stagnates? Lines: mean over seeds; bands: range over seeds.")
    sec.figure(shape_bias_figure(result.curves, n_seeds=k),
               caption="Shape bias of the cue-conflict model per epoch (above 0.5: decisions follow shape "
                       "more often than colour).")

    # verdicts
    sec.heading("Ablations against the baseline")
    sec.text(
        f"slices.compare on the paired test predictions of each ablation and the baseline, pooled over the "
        f"{k} seed(s) (each seed draws its own images, so the pooled pairs are distinct images); slices: "
        f"each task, task × shape and task × colour, exact McNemar tests, Holm-corrected, α = {cfg.alpha:g}. "
        "Seeds: how many per-seed comparisons gave the same significant verdict; Δ over seeds: mean and "
        f"{lvl} t interval of the per-seed deltas (this one includes training variance).", kind="note")
    for c in result.comparisons:
        label = VARIANT_LABELS[c.variant]
        crow = []
        for t in c.tasks:
            tone = _VERDICT_TONE.get(t.verdict)
            verdict = Markup('<strong>{}</strong>').format(t.verdict) if tone else t.verdict
            if t.partial_failure:
                verdict = Markup("{} (slice regressed)").format(verdict)
            crow.append([
                TASK_LABELS[t.task], t.n, fmt_num(t.baseline, pct=True, digits=3),
                fmt_num(t.candidate, pct=True, digits=3),
                Markup("{} {}").format(_pts(t.delta), _delta_ci(t.ci)),
                fmt_num(t.p_adjusted, 3), verdict,
                f"{t.seeds_regressed} ↓ / {t.seeds_improved} ↑ of {len(t.seed_deltas)}",
                Markup("{} {}").format(_pts(float(np.mean(t.seed_deltas))), _delta_ci(t.seed_delta_ci)),
            ])
        sec.table(["task", "n (pooled)", "baseline", label, "Δ pts (pooled) [CI]", "p (Holm)", "verdict",
                   "seeds", "Δ pts over seeds [CI]"], crow,
                  caption=f"{label} vs baseline. Shape bias change: "
                          f"{c.shape_bias_delta_mean:+.3f}"
                          + (f" [{c.shape_bias_delta_ci.low:+.3f}, {c.shape_bias_delta_ci.high:+.3f}]"
                             if c.shape_bias_delta_ci is not None else "") + " (mean over seeds).")
        regressed = [r for r in c.pooled.regressed if r.slicing != "task"]
        if c.partial_failure or c.task_partial_failures:
            names = [TASK_LABELS[t] for t in c.task_partial_failures]
            if names:  # the slices behind each steady task first
                regressed = sorted(regressed, key=lambda r: not any(str(r.slice).startswith(n + " | ")
                                                                    for n in names))
            msg = f"Partial failure: {label} holds or improves "
            msg += (f"on {', '.join(names)} " if names else "in aggregate ")
            msg += "while some slices regress significantly: " + "; ".join(
                f"{r.slice} ({_pts(r.delta)} pts, p={r.p_adjusted:.2g})" for r in regressed[:8])
            if len(regressed) > 8:
                msg += f"; and {len(regressed) - 8} more"
            sec.text(msg + ".", kind="warning")
        elif regressed:
            sec.text(f"Regressed slices ({len(regressed)}): " + "; ".join(
                f"{r.slice} ({_pts(r.delta)} pts)" for r in regressed[:8])
                + ("; …" if len(regressed) > 8 else ""),
                kind="note")
        tasks = {t.task: t for t in c.tasks}
        if {"shape", "color"} <= set(tasks):
            s, co = tasks["shape"], tasks["color"]
            sec.text(f"{label}: shape task {s.verdict} ({_pts(s.delta)} pts), colour task {co.verdict} "
                     f"({_pts(co.delta)} pts).")

    sec.note(f"Each seed draws its own data (zero-shot held-out combinations, e.g. seed {sd0.seed}: "
             + ", ".join(f"{c} {s}" for s, c in sd0.held_out[:4]) + (", …" if len(sd0.held_out) > 4 else "")
             + f"), initialisation and shuffling; {sd0.n_test['test']:,} i.i.d. test, "
             f"{sd0.n_test['zero_shot']:,} zero-shot and {sd0.n_test['cue_conflict']:,} cue-conflict images "
             "per seed.")
    pre = ""
    if sd0.pretrain_loss:
        pre = (f" Reconstruction MSE after pretraining: {sd0.pretrain_loss[-1]:.4f} (seed {sd0.seed}; an "
               f"all-black image scores {sd0.blank_mse:.4f}).")
    sec.note("Frozen embeddings: the encoder is pretrained on image reconstruction with a small decoder "
             f"({cfg.pretrain_epochs} epoch(s), no labels) on each seed's training images, then frozen "
             "(weights and batch-norm statistics); no attention: the self-attention block is removed and "
             "tokens are mean-pooled directly." + pre)
    sec.note(f"Compared tasks: {', '.join(TASK_LABELS[t] for t in COMPARED_TASKS)}. McNemar on pooled pairs "
             "treats each seed's trained models as fixed; the per-seed counts and the interval over seeds "
             "show how stable a verdict is across retraining.")
    return sec
