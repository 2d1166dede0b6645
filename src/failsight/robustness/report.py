"""Report section of the robustness pillar, built from a :class:`~failsight.robustness.analysis.RobustnessAnalysis`.

:func:`robustness_section` reads the analysis only (no model, no data) and returns a
:class:`~failsight.report.html.Section`: headline numbers, a plain-language summary of the worst findings,
heatmaps of accuracy and ECE over shift × severity, the overconfidence-under-shift picture and the
accuracy-vs-confidence curves per shift family, sample grids of every shift, the shift-detection table, the
OOD table and CE / mCE against a baseline. The figure helpers live here (matplotlib, Agg canvas, no pyplot).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from markupsafe import Markup

from failsight._validate import FailsightInputError
from failsight.report.html import Figure, Section, fmt_num
from failsight.report.plots import COLORS, new_figure, set_margins

__all__ = [
    "accuracy_confidence_curves_figure",
    "overconfidence_figure",
    "robustness_section",
    "sample_grid_figure",
    "shift_heatmap_figure",
]

_DETECTOR_NAMES = {"bbsd": "BBSD", "mmd": "MMD", "classifier": "classifier"}
_OOD_NAMES = {"msp": "max probability (MSP)", "max_logit": "max logit", "energy": "energy",
              "entropy": "entropy", "mahalanobis": "Mahalanobis (features)"}
_FAMILY_COLORS = [COLORS["blue"], COLORS["orange"], COLORS["green"], COLORS["red"], COLORS["purple"],
                  COLORS["sky"], COLORS["grey"], COLORS["yellow"]]


def _family_colors(families: Any) -> dict[str, str]:
    return {f: _FAMILY_COLORS[i % len(_FAMILY_COLORS)] for i, f in enumerate(dict.fromkeys(families))}


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------
def shift_heatmap_figure(values: Any, shifts: Any, severities: Any, families: Any, *, title: str,
                         clean: float | None = None, pct: bool = True, vmin: float = 0.0,
                         vmax: float | None = None, cmap: str = "viridis", width: float = 3.9) -> Any:
    """Heatmap of one metric ``values`` ``(n_shifts, n_severities)`` with the value written in each cell,
    shift names on the left, severities on top, family names on the right and a rule between families.

    ``families`` ``(n_shifts,)`` gives each row's family (rows of one family should be adjacent);
    ``clean`` (the unshifted value) goes into the title. ``pct`` writes values as percentages.
    """
    v = np.asarray(values, dtype=np.float64)
    shifts, families, sev = list(shifts), list(families), list(severities)
    if v.shape != (len(shifts), len(sev)) or len(families) != len(shifts):
        raise FailsightInputError(
            f"heatmap needs values of shape (n_shifts, n_severities) = ({len(shifts)}, {len(sev)}) and one "
            f"family per shift; got values {v.shape} and {len(families)} families."
        )
    n = len(shifts)
    row_h = 0.2
    height = 1.0 + row_h * n
    fig, ax = new_figure(width, height)
    set_margins(fig, left=1.35, right=0.75, top=0.75, bottom=0.12)
    top = vmax if vmax is not None else (float(np.nanmax(v)) if np.isfinite(v).any() else 1.0)
    top = max(top, vmin + 1e-9)
    im = ax.imshow(v, aspect="auto", cmap=cmap, vmin=vmin, vmax=top, interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(len(sev)), [f"s{s}" for s in sev])
    ax.xaxis.tick_top()
    ax.set_yticks(range(n), shifts, fontsize=7.5)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    norm = im.norm
    cm = im.get_cmap()
    for i in range(n):  # one text per cell (a few hundred at most)
        for j in range(len(sev)):
            val = v[i, j]
            if not np.isfinite(val):
                continue
            r, g, b, _ = cm(norm(val))
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.55
            ax.text(j, i, f"{100 * val:.0f}" if pct else f"{val:.2f}", ha="center", va="center", fontsize=7,
                    color=COLORS["ink"] if light else "white")
    # family rules and labels
    bounds = [0] + [i for i in range(1, n) if families[i] != families[i - 1]] + [n]
    for a, b in itertools.pairwise(bounds):
        if a > 0:
            ax.axhline(a - 0.5, color="white", lw=2.2)
        ax.text(len(sev) - 0.5 + 0.12, (a + b - 1) / 2, families[a], ha="left", va="center", fontsize=7.5,
                color=COLORS["grey"], clip_on=False)
    if clean is None:
        head = title
    else:
        head = f"{title} (clean {100 * clean:.0f})" if pct else f"{title} (clean {clean:.2f})"
    ax.set_title(head, pad=18 if n > 0 else 6)
    return fig


def overconfidence_figure(evaluation: Any, *, width: float = 5.4, height: float = 4.2) -> Any:
    """Mean confidence (x) against accuracy (y) per shift family: one line per family from the clean point
    through the severities (mean over the family's shifts). Points below the diagonal are overconfident:
    the model claims more confidence than it has accuracy. Axes zoom to the data (same range on both)."""
    ev = evaluation
    colors = _family_colors(ev.families.values())
    c0 = (ev.clean.mean_confidence, ev.clean.accuracy)
    lines = {}
    for fam in colors:
        xs, ys = [c0[0]], [c0[1]]
        for s in ev.severities:
            rows = [r for r in ev.rows[1:] if r.family == fam and r.severity == s]
            xs.append(float(np.mean([r.mean_confidence for r in rows])))
            ys.append(float(np.mean([r.accuracy for r in rows])))
        lines[fam] = (xs, ys)
    lo = min([c0[0], c0[1]] + [v for xs, ys in lines.values() for v in (*xs, *ys)])
    lo = float(np.clip(np.floor((lo - 0.05) * 10) / 10, 0.0, 0.9))
    fig, ax = new_figure(width, height)
    set_margins(fig, left=0.62, bottom=0.5, right=1.55, top=0.4)
    ax.plot([lo, 1], [lo, 1], ls="--", lw=1, color=COLORS["grey"], label="calibrated")
    ax.fill_between([lo, 1], [lo, lo], [lo, 1], color="#dc2626", alpha=0.06, lw=0)
    ax.text(0.98, 0.03, "overconfident", transform=ax.transAxes, ha="right", va="bottom", color="#b91c1c",
            fontsize=8)
    ax.text(0.03, 0.97, "underconfident", transform=ax.transAxes, ha="left", va="top", color=COLORS["grey"],
            fontsize=8)
    for fam, (xs, ys) in lines.items():
        ax.plot(xs, ys, "-", color=colors[fam], lw=1.6, label=fam, zorder=3)
        ax.scatter(xs[1:], ys[1:], s=[14 + 10 * k for k in range(len(xs) - 1)], color=colors[fam], zorder=4)
    ax.scatter([c0[0]], [c0[1]], s=60, marker="*", color=COLORS["ink"], zorder=5, label="clean")
    ax.set_xlim(lo, 1.005)
    ax.set_ylim(lo, 1.005)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("Confidence vs accuracy as severity grows")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8)
    return fig


def accuracy_confidence_curves_figure(curves: Any, *, panel: float = 2.05) -> Any:
    """Small multiples, one panel per shift family: accuracy on the samples with confidence ≥ τ against τ,
    one line per severity (darker = stronger) and the clean curve dashed (Ovadia et al. 2019)."""
    import matplotlib

    fams = list(curves.families)
    f = max(len(fams), 1)
    ncols = min(4, f)
    nrows = math.ceil(f / ncols)
    fig, axes = new_figure(panel * ncols + 0.3, panel * nrows * 0.92 + 0.7, nrows=nrows, ncols=ncols,
                           sharex=True, sharey=True)
    set_margins(fig, left=0.55, right=0.1, top=0.45, bottom=0.5, hspace=0.35, wspace=0.12)
    axes = np.atleast_1d(axes).ravel()
    t = np.asarray(curves.thresholds)
    sev = list(curves.severities)
    shades = matplotlib.colormaps["Reds"](np.linspace(0.45, 0.95, max(len(sev), 1)))
    acc = np.asarray(curves.accuracy, dtype=np.float64)
    for i, ax in enumerate(axes):
        if i >= len(fams):
            ax.set_visible(False)
            continue
        ax.plot(t, curves.clean_accuracy, ls="--", color=COLORS["ink"], lw=1.2, label="clean")
        for j, s in enumerate(sev):
            ax.plot(t, acc[i, j], color=shades[j], lw=1.5, label=f"s{s}")
        ax.set_title(fams[i], fontsize=9, pad=3)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(float(t[0]), float(t[-1]))
        ax.tick_params(labelsize=7.5)
        if i % ncols == 0:
            ax.set_ylabel("accuracy | conf ≥ τ", fontsize=8)
        if i >= (nrows - 1) * ncols or i + ncols >= len(fams):
            ax.set_xlabel("confidence threshold τ", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=len(labels), frameon=False, fontsize=7.5,
               bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Accuracy of the confident predictions", x=0.02, ha="left", fontsize=10, y=0.995)
    return fig


def _bare_figure(width: float, height: float) -> Any:
    """An empty figure (inches) on an Agg canvas, for image panels placed with ``add_axes``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _mosaic(images: np.ndarray, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile ``(rows, cols, C, H, W)`` into one ``(rows*(H+pad), cols*(W+pad), 3)`` or 2-D grey array."""
    rep = max(1, 32 // max(images.shape[-2:]))  # upsample tiny images so the 1-pixel gap stays thin
    if rep > 1:
        images = images.repeat(rep, axis=-2).repeat(rep, axis=-1)
    r, c, ch, h, w = images.shape
    canvas = np.full((r, c, ch, h + pad, w + pad), fill, dtype=np.float32)
    canvas[:, :, :, :h, :w] = images
    out = canvas.transpose(0, 3, 1, 4, 2).reshape(r * (h + pad), c * (w + pad), ch)
    return out[..., 0] if ch == 1 else out


def sample_grid_figure(samples: dict[str, np.ndarray], severities: Any, *, max_rows: int = 14,
                       tile: float = 0.36) -> Any:
    """Grid of example images: one row per shift (clean, then each severity), in blocks of ``max_rows``
    rows placed side by side. ``samples`` maps shift name → ``(1 + n_severities, C, H, W)`` in [0, 1]."""
    names = list(samples)
    if not names:
        raise FailsightInputError("no sample images to draw.")
    stacks = np.stack([np.asarray(samples[k], dtype=np.float32) for k in names])  # (n, cols, C, H, W)
    n, cols, ch, h, w = stacks.shape
    blocks = math.ceil(n / max_rows)
    rows = math.ceil(n / blocks)
    label_w = 1.15
    width = blocks * (label_w + cols * tile) + 0.1
    height = rows * tile + 0.45
    fig = _bare_figure(width, height)
    headers = ["clean"] + [f"s{s}" for s in severities]
    for b in range(blocks):
        part = stacks[b * rows:(b + 1) * rows]
        if len(part) < rows:  # pad the last block with blank rows
            part = np.concatenate([part, np.ones((rows - len(part), cols, ch, h, w), np.float32)])
        left = (b * (label_w + cols * tile) + label_w) / width
        ax = fig.add_axes((left, 0.05 / height, cols * tile / width, rows * tile / height))
        img = _mosaic(part)
        ax.imshow(img, cmap="gray" if ch == 1 else None, vmin=0, vmax=1, interpolation="nearest",
                  extent=(0, cols, rows, 0))
        ax.set_xticks(np.arange(cols) + 0.5, headers, fontsize=7.5)
        ax.xaxis.tick_top()
        ax.set_yticks(np.arange(min(rows, n - b * rows)) + 0.5, names[b * rows:(b + 1) * rows], fontsize=7.5)
        ax.tick_params(length=0)
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


def _image_strip_figure(images: np.ndarray, title: str, tile: float = 0.45) -> Any:
    imgs = np.asarray(images, dtype=np.float32)
    k, ch = imgs.shape[0], imgs.shape[1]
    fig = _bare_figure(k * tile + 0.2, tile + 0.45)
    ax = fig.add_axes((0.1 / (k * tile + 0.2), 0.05 / (tile + 0.45), k * tile / (k * tile + 0.2),
                       tile / (tile + 0.45)))
    ax.imshow(_mosaic(imgs[None]), cmap="gray" if ch == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8.5, pad=3)
    return fig


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _pct(v: float, digits: int = 0) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.{digits}f}%"


def _pval(p: float) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


def _detection_table(a: Any) -> tuple[list[str], list[list[Any]], list[int]]:
    dets = [d for d in ("bbsd", "mmd", "classifier") if any(c.detector == d for c in a.detection)]
    sizes = list(a.detection_sizes)
    conds: list[tuple[str, str, int]] = list(dict.fromkeys((c.shift, c.kind, c.severity) for c in a.detection))
    cell = {(c.detector, c.shift, c.severity if c.kind == "family" else 0, c.size): c for c in a.detection}
    columns = ["shift"] + [f"{_DETECTOR_NAMES[d]} n={s}" for d in dets for s in sizes]
    rows, hl = [], []
    for i, (shift, kind, sev) in enumerate(conds):
        label = f"{shift} s{sev}" if kind == "family" else shift
        if kind == "label":
            n_new = max((c.n_new for c in a.detection if c.kind == "label"), default=0)
            label += f" (only ~{n_new:.0f} images for n={max(sizes)})" if n_new < max(sizes) else ""
        row: list[Any] = [label]
        for d in dets:
            for s in sizes:
                c = cell.get((d, shift, sev if kind == "family" else 0, s))
                if c is None or not np.isfinite(c.detection_rate):
                    row.append("–")
                else:
                    row.append(Markup('{} <span class="desc">p̃ {}</span>').format(
                        _pct(c.detection_rate), _pval(c.median_p_value)))
        rows.append(row)
        if kind == "none":
            hl.append(i)
    return columns, rows, hl


def _worst_rows(ev: Any, k: int = 10) -> list[list[Any]]:
    rows = sorted(ev.rows[1:], key=lambda r: -r.accuracy_drop)[:k]
    return [[r.shift, r.family, r.severity, _pct(r.accuracy, 1), _signed(-100 * r.accuracy_drop),
             _pct(r.mean_confidence, 1), fmt_num(r.ece, 3), _signed(100 * r.overconfidence)] for r in rows]


def _signed(v: float) -> str:
    return f"{v:+.0f}".replace("-", "−")


# --------------------------------------------------------------------------------------------------
# the section
# --------------------------------------------------------------------------------------------------
def robustness_section(analysis: Any, *, title: str = "Robustness: does it still work when the world shifts?",
                       section_id: str = "robustness") -> Section:
    """Section for a :class:`~failsight.robustness.analysis.RobustnessAnalysis`."""
    a = analysis
    ev = a.evaluation
    c, h, w = a.image_shape
    n_cond = len(ev.rows) - 1
    sec = Section(title, section_id, intro=(
        f"The model on {a.n_test:,} labelled test images ({c}×{h}×{w}) under {len(ev.shifts)} shifts at "
        f"severities {', '.join(map(str, ev.severities))} ({n_cond} conditions): how accuracy and calibration "
        "degrade, whether the shift can be detected from unlabelled inputs, and whether out-of-distribution "
        "inputs can be told apart. Corruptions are seeded (seed "
        f"{a.seed}), so the numbers are reproducible."
    ))
    rows = ev.rows[1:]
    if rows:
        worst = min(rows, key=lambda r: r.accuracy)
        mean_acc = float(np.mean([r.accuracy for r in rows]))
        sec.key("clean accuracy", _pct(ev.clean_accuracy, 1), hint=f"mean confidence {_pct(ev.clean.mean_confidence, 1)}")
        sec.key("mean accuracy under shift", _pct(mean_acc, 1), hint=f"over {n_cond} conditions",
                tone="bad" if ev.clean_accuracy - mean_acc > 0.2 else "warn" if ev.clean_accuracy - mean_acc > 0.05
                else "good")
        sec.key("worst condition", _pct(worst.accuracy, 1), hint=f"{worst.shift} s{worst.severity}",
                tone="bad" if worst.accuracy_drop > 0.2 else "warn")
        sec.key("mean overconfidence", f"{100 * ev.mean_overconfidence:+.1f} pts",
                hint="accuracy drop − confidence drop", tone="bad" if ev.mean_overconfidence > 0.05 else "neutral")
    if not math.isnan(a.mce_imagenet_c):
        sec.key("mCE", _pct(a.mce_imagenet_c, 1), hint=f"relative mCE {_pct(a.relative_mce_imagenet_c, 1)}",
                tone="good" if a.mce_imagenet_c < 1 else "bad")
    if a.ood:
        best = max(a.ood, key=lambda k: a.ood[k].auroc)
        sec.key("OOD AUROC", fmt_num(a.ood[best].auroc, 3), hint=f"best score: {_OOD_NAMES.get(best, best)}",
                tone="good" if a.ood[best].auroc >= 0.9 else "warn")

    sec.text(a.summary())

    # accuracy and calibration under shift -------------------------------------------------------------
    if rows:
        sec.heading("Accuracy and calibration under shift")
        fams = [ev.families[s] for s in ev.shifts]
        order = sorted(range(len(ev.shifts)), key=lambda i: list(dict.fromkeys(fams)).index(fams[i]))
        shifts = [ev.shifts[i] for i in order]
        fams = [fams[i] for i in order]
        acc = ev.matrix("accuracy")[order]
        ece = ev.matrix("ece")[order]
        sec.figures([
            Figure.from_matplotlib(
                shift_heatmap_figure(acc, shifts, ev.severities, fams, title="Accuracy %", clean=ev.clean_accuracy,
                                     vmin=0.0, vmax=1.0, cmap="viridis"),
                caption="Accuracy (%) per shift and severity; families separated by white rules.", fmt="png"),
            Figure.from_matplotlib(
                shift_heatmap_figure(ece, shifts, ev.severities, fams, title="ECE", clean=ev.clean.ece, pct=False,
                                     vmin=0.0, vmax=max(0.1, float(np.nanmax(ece))), cmap="magma_r"),
                caption="Expected calibration error (15 equal-width bins) per shift and severity: how far "
                        "confidence is from accuracy. Darker = worse.", fmt="png"),
        ])
        sec.figures([
            Figure.from_matplotlib(
                overconfidence_figure(ev),
                caption="Each line follows a shift family from the clean data (star) through the severities "
                        "(larger dots = stronger), averaging its shifts. Below the diagonal the model is more "
                        "confident than accurate: overconfidence under shift."),
            Figure.from_matplotlib(
                accuracy_confidence_curves_figure(a.curves),
                caption="Accuracy among the predictions whose confidence is at least τ, per family (members "
                        "pooled). A robustly calibrated model keeps high accuracy at high τ under shift; curves "
                        "that sag at the right mean confident mistakes."),
        ])
        sec.table(["shift", "family", "severity", "accuracy", "Δ acc (pts)", "mean confidence", "ECE",
                   "overconfidence (pts)"], _worst_rows(ev),
                  caption="The ten conditions with the largest accuracy drop. Overconfidence = accuracy drop − "
                          "confidence drop.")

    if ev.ce:
        sec.heading("Corruption error against the baseline")
        ce_rows = []
        for s in ev.shifts:
            err = float(np.mean([ev.row(s, v).error for v in ev.severities]))
            berr = float(np.mean([ev.row(s, v).baseline_error for v in ev.severities]))
            ce_rows.append([s, ev.families[s], _pct(err, 1), _pct(berr, 1), _pct(ev.ce[s], 1),
                            _pct(ev.relative_ce[s], 1)])
        sec.table(["shift", "family", "error", "baseline error", "CE", "relative CE"], ce_rows,
                  caption=f"ImageNet-C definitions: CE = Σ_s error / Σ_s baseline error; relative CE subtracts the "
                          f"clean errors ({_pct(ev.clean_error, 1)} vs {_pct(ev.baseline_clean_error, 1)}). "
                          f"mCE over the ImageNet-C corruptions: {_pct(a.mce_imagenet_c, 1)} (relative "
                          f"{_pct(a.relative_mce_imagenet_c, 1)}); below 100% = more robust than the baseline.")

    if a.samples:
        sec.heading("What the shifts look like")
        sec.figure(Figure.from_matplotlib(
            sample_grid_figure(a.samples, ev.severities),
            caption=f"Test image #{a.sample_index} under every shift: clean, then each severity.", fmt="png"))

    # detection --------------------------------------------------------------------------------------------
    sec.heading("Detecting the shift from unlabelled inputs")
    if a.detection:
        ds = a.detection_settings
        cols, drows, hl = _detection_table(a)
        rep = ds.get("representation", {})
        sec.table(cols, drows, highlight=hl, caption=(
            f"Share of {ds.get('n_trials')} trials in which each detector flags a shift at α = {ds.get('alpha')} "
            f"(p̃: median p-value), for new samples of n unlabelled images against {ds.get('reference_size')} "
            f"reference images ({ds.get('reference')}). Highlighted: no shift, i.e. the false-alarm rate "
            f"({ds.get('n_null_trials', ds.get('n_trials'))} trials; it should stay near α). "
            f"BBSD: per-class KS tests with Bonferroni on {rep.get('bbsd', 'softmax outputs')}; MMD (RBF kernel, "
            f"permutation test) and the classifier two-sample test on {rep.get('mmd', '?')}. Each family row "
            "corrupts every new image with a random member of the family; label shift resamples to "
            "Dirichlet-drawn class priors."))
        sec.note(f"Detection rates come from few trials ({ds.get('n_trials')} per shifted row) that redraw samples "
                 "from the same reference and test images, so they are coarse and correlated; "
                 "benchmarks/shift_detection.py measures false-alarm rates and power on fresh samples.")
    else:
        sec.text("Shift detection was not run (see the notes).", kind="note")

    # OOD ----------------------------------------------------------------------------------------------------
    if a.ood:
        sec.heading("Out-of-distribution inputs")
        best = max(a.ood, key=lambda k: a.ood[k].auroc)
        names = list(a.ood)
        orows = [[_OOD_NAMES.get(k, k), a.ood[k].auroc, a.ood[k].aupr_in, a.ood[k].aupr_out,
                  _pct(a.ood[k].fpr_at_95_tpr, 1)] for k in names]
        sec.table(["score", "AUROC ↑", "AUPR-In ↑", "AUPR-Out ↑", "FPR@95%TPR ↓"], orows,
                  highlight=[names.index(best)],
                  caption=f"How well each score separates {a.ood_settings.get('n_in', '?')} in-distribution test "
                          f"images from {a.n_ood} OOD images (in-distribution = positive). "
                          + (f"Mahalanobis: {a.ood_settings['mahalanobis']}." if "mahalanobis" in a.ood_settings
                             else ""))
        if a.ood_samples is not None and len(a.ood_samples):
            sec.figure(Figure.from_matplotlib(_image_strip_figure(a.ood_samples, "OOD examples"),
                                              caption="Some of the OOD inputs.", fmt="png"))
    for n in a.notes:
        sec.note(n)
    return sec
