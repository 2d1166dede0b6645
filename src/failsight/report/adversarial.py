"""Report section for worst-case robustness (:class:`failsight.robustness.RobustAccuracyCurve`): the
robust-accuracy-vs-ε curve with intervals, the sanity checks and a grid of adversarial examples."""

from __future__ import annotations

from typing import Any

import numpy as np

from failsight.report.html import Section, fmt_ci, fmt_num
from failsight.report.plots import COLORS, new_figure

__all__ = ["adversarial_examples_figure", "adversarial_section", "eps_curve_figure"]


def eps_curve_figure(curve: Any) -> Any:
    """Robust accuracy vs ε with the exact interval band, FGSM and the independent check runs as markers."""
    eps = np.asarray(curve.eps, dtype=float)
    acc = np.asarray(curve.accuracy, dtype=float)
    lo = np.array([c.low for c in curve.ci])
    hi = np.array([c.high for c in curve.ci])
    fig, ax = new_figure(5.0, 3.4)
    ax.fill_between(eps, lo, hi, color=COLORS["blue"], alpha=0.18, lw=0)
    ax.plot(eps, acc, "o-", color=COLORS["blue"], label=f"{curve.method.upper()} ({curve.steps} steps)")
    if curve.fgsm_accuracy:
        ax.plot(eps, curve.fgsm_accuracy, "s--", color=COLORS["orange"], ms=4,
                label=f"FGSM (check, n={curve.sanity_n})")
    if curve.check_accuracy:
        ax.plot(eps, curve.check_accuracy, "x", color=COLORS["ink"], ms=5, label="independent run per ε (check)")
    ax.set_xlabel(f"ε ({'L∞' if curve.norm == 'linf' else 'L2'})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, fontsize=8)
    return fig


def adversarial_examples_figure(ex: dict[str, Any], class_names: Any = None, tile: float = 0.7) -> Any:
    """Two rows: clean images (true class) above their adversarial versions (predicted class)."""
    x, xa = np.asarray(ex["x"], dtype=np.float32), np.asarray(ex["x_adv"], dtype=np.float32)
    k = len(x)
    fig, axes = new_figure(k * tile + 0.3, 2 * tile + 0.8, nrows=2, ncols=max(k, 1))
    axes = np.atleast_2d(axes).reshape(2, -1)
    names = list(class_names) if class_names is not None else None

    def nm(i: int) -> str:
        return names[i] if names and i < len(names) else str(i)

    for j in range(axes.shape[1]):
        for r, imgs, lab in ((0, x, ex["y"]), (1, xa, ex["pred"])):
            ax = axes[r, j]
            ax.set_axis_off()
            if j >= k:
                continue
            img = imgs[j]
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray" if img.shape[0] == 1
                      else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(("true " if r == 0 else "→ ") + nm(int(lab[j])), fontsize=7.5, pad=2)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.85, bottom=0.02, wspace=0.1, hspace=0.35)
    return fig


def adversarial_section(curve: Any, class_names: Any = None) -> Section:
    """Section for a :class:`~failsight.robustness.RobustAccuracyCurve`."""
    nm = "L∞" if curve.norm == "linf" else "L2"
    sec = Section("Worst-case (adversarial) robustness", "adversarial", intro=(
        f"Corruptions measure average-case shift; an attack searches the {nm} ball of radius ε around each test "
        f"image for an input the model gets wrong ({curve.method.upper()}, {curve.steps} steps, {curve.restarts} "
        f"restart(s); inputs kept in the valid range). Robust accuracy is an upper bound on the true worst case: "
        "a stronger attack can only lower it. A sample broken at a smaller ε counts as broken at every larger one."))
    sec.key("clean accuracy", fmt_num(curve.clean_accuracy, 3, pct=True), hint=f"n = {curve.n}")
    e, a = curve.worst
    sec.key(f"at ε = {e:g}", fmt_ci(a, curve.ci[-1], pct=True, digits=3), tone="bad" if a < curve.clean_accuracy / 2
            else "neutral")
    sec.key("sanity checks", "passed" if not curve.warnings else f"{len(curve.warnings)} failed",
            tone="good" if not curve.warnings else "bad")
    sec.figure(eps_curve_figure(curve), caption="Robust accuracy vs ε (exact 95% band). The checks run on a subsample: "
               "FGSM should never beat the multi-step attack, and independent runs per ε should not exceed the curve.")
    rows = [[f"{x:g}", fmt_ci(v, c, pct=True, digits=3),
             fmt_num(curve.fgsm_accuracy[i], 3, pct=True) if curve.fgsm_accuracy else "–"]
            for i, (x, v, c) in enumerate(zip(curve.eps, curve.accuracy, curve.ci, strict=True))]
    sec.table(["ε", "robust accuracy", "FGSM (check subsample)"], rows,
              caption="Accuracy under attack with exact (Clopper-Pearson) intervals.")
    for w in curve.warnings:
        sec.text(w, kind="warning")
    checks = []
    if curve.large_eps is not None:
        checks.append([f"ε = {curve.large_eps:.3g} reaches any input: accuracy must be 0",
                       fmt_num(curve.large_eps_accuracy, 3, pct=True)])
    if curve.fewer_steps_accuracy is not None:
        checks.append([f"a quarter of the steps at ε = {e:g} must not do better",
                       fmt_num(curve.fewer_steps_accuracy, 3, pct=True)])
    if checks:
        sec.table(["sanity check", "accuracy"], checks, caption=f"Checks on {curve.sanity_n} test images.")
    if curve.examples is not None and len(curve.examples.get("x", [])):
        sec.figure(adversarial_examples_figure(curve.examples, class_names), fmt="png",
                   caption=f"Adversarial examples at ε = {curve.examples['eps']:g}: clean test images (top) and the "
                           "attacked versions the model misclassifies (bottom).")
    return sec
