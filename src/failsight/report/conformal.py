"""Report section for conformal prediction sets (:class:`failsight.reliability.ConformalAnalysis`): coverage
against the guarantee, the set-size histogram, coverage per class, per slice and under each shift."""

from __future__ import annotations

from typing import Any

import numpy as np

from failsight.report.html import Section, fmt_ci, fmt_num
from failsight.report.plots import COLORS, new_figure, set_margins

__all__ = ["conformal_section", "set_size_histogram_figure", "shift_coverage_figure"]


def set_size_histogram_figure(hist: Any, title: str = "") -> Any:
    """Bar chart of ``hist[j]`` = number of prediction sets of size ``j`` (0 = empty)."""
    h = np.asarray(hist, dtype=float)
    last = int(np.flatnonzero(h)[-1]) if h.any() else 1
    h = h[:max(last + 1, 2)]
    fig, ax = new_figure(4.6, 3.0)
    share = h / max(h.sum(), 1)
    ax.bar(np.arange(len(h)), share, color=COLORS["blue"], width=0.8)
    if h[0] > 0:
        ax.bar([0], [share[0]], color=COLORS["red"], width=0.8, label="empty set")
        ax.legend(frameon=False)
    ax.set_xlabel("set size (classes)")
    ax.set_ylabel("share of test inputs")
    ax.set_xticks(np.arange(len(h)))
    if title:
        ax.set_title(title)
    return fig


def shift_coverage_figure(shift_coverage: dict[str, tuple[float, float]], clean: float, target: float) -> Any:
    """Horizontal bars: coverage of the calibrated sets under each shift, with the clean coverage and the target."""
    names = sorted(shift_coverage, key=lambda k: shift_coverage[k][0])
    covs = [shift_coverage[k][0] for k in names]
    height = 0.9 + 0.2 * len(names)
    fig, ax = new_figure(5.6, height)
    set_margins(fig, left=1.9, bottom=0.5, top=0.3)
    colors = [COLORS["red"] if c < target else COLORS["blue"] for c in covs]
    ax.barh(np.arange(len(names)), covs, color=colors, height=0.7)
    ax.axvline(target, color=COLORS["ink"], ls="--", lw=1, label=f"promised {target:.0%}")
    ax.axvline(clean, color=COLORS["green"], lw=1, label=f"clean {clean:.1%}")
    ax.set_yticks(np.arange(len(names)), names, fontsize=7.5)
    ax.set_xlim(min(0.5, min(covs) - 0.05) if covs else 0.5, 1.0)
    ax.set_xlabel("coverage")
    ax.legend(frameon=False, loc="lower right", fontsize=8)
    return fig


def conformal_section(c: Any, class_names: Any = None) -> Section:
    """Section for a :class:`~failsight.reliability.ConformalAnalysis`."""
    target = 1 - c.alpha
    sec = Section("Prediction sets with a coverage guarantee", "conformal", intro=(
        f"Conformal prediction turns the model's probabilities into a set of plausible classes per input, calibrated "
        f"so that the true class is in the set for at least {target:.0%} of future inputs like the calibration data "
        f"(split conformal, {c.method.upper()} score, threshold = the ⌈(n+1)(1−α)⌉-th smallest of n = "
        f"{c.n_calibration} calibration scores). Large sets flag inputs the model is unsure about; a set of one class "
        "is a confident answer. The guarantee is marginal: per class, per slice and under shift it can fail, "
        "which the tables below check."))
    ok = c.coverage_ci.high >= target
    sec.key("coverage", fmt_ci(c.coverage, c.coverage_ci, pct=True, digits=3),
            hint=f"guarantee [{c.guarantee.low:.1%}, {c.guarantee.high:.1%}]", tone="good" if ok else "bad")
    sec.key("mean set size", fmt_num(c.mean_size, 3))
    sec.key("single-class sets", fmt_num(c.singleton_rate, 3, pct=True))
    if c.empty_rate > 0:
        sec.key("empty sets", fmt_num(c.empty_rate, 3, pct=True), hint="randomised sets can be empty")
    figs = [set_size_histogram_figure(c.size_histogram, "set sizes on the test split")]
    sec.figure(figs[0], caption="Share of test inputs per prediction-set size.")
    names = list(class_names) if class_names is not None else None
    rows = []
    for j, (cov, size) in enumerate(zip(c.class_coverage, c.class_mean_size, strict=True)):
        if not np.isfinite(cov):
            continue
        label = names[j] if names and j < len(names) else str(j)
        rows.append([label, fmt_num(cov, 3, pct=True), fmt_num(size, 3)])
    worst = sorted(range(len(rows)), key=lambda i: float(rows[i][1].rstrip("%") or 0))[:1]
    sec.table(["class", "coverage", "mean set size"], rows, highlight=worst,
              caption=f"Coverage within each true class (promised marginally, ≥ {target:.0%} on average over classes "
                      "weighted by frequency; class-conditional sets promise it per class).")
    by = sorted(c.coverage_by_size.items())
    sec.table(["set size", "coverage"], [[k, fmt_num(v, 3, pct=True)] for k, v in by],
              caption="Coverage by set size: small sets should rarely miss; a low value for size 1 means "
                      "confident mistakes.")
    if c.slices is not None:
        s = c.slices
        rows = [[r.slicing, str(r.slice), r.n, fmt_ci(r.value, r.ci, pct=True, digits=3),
                 "too small" if r.too_small else ("below promise" if r.ci is not None and r.ci.high < target else "")]
                for r in s.rows if r.slicing != "class"]
        if rows:
            sec.table(["slicing", "slice", "n", "coverage", ""], rows,
                      caption="Coverage per slice (Wilson intervals): a set can cover 90% overall and much less on "
                              "one group.")
    if c.shift_coverage:
        sec.figure(shift_coverage_figure(c.shift_coverage, c.coverage, target),
                   caption="Coverage of the same sets on shifted test images (the robustness step's shifts): the "
                           "guarantee assumes test data like the calibration data, and breaks under shift.")
        rows = [[k, fmt_num(v[0], 3, pct=True), fmt_num(v[1], 3)]
                for k, v in sorted(c.shift_coverage.items(), key=lambda kv: kv[1][0])]
        sec.table(["shift", "coverage", "mean set size"], rows,
                  caption="Coverage and set size under each shift, worst first.")
    if c.k_reg is not None:
        sec.note(f"RAPS regularisation: k_reg = {c.k_reg}, λ = {c.lam:g} (tuned on a held-out 20% of the "
                 "calibration data unless given).")
    return sec
