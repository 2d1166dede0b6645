"""Turn analysis results into report sections (one function per pillar result).

Each function takes a result dataclass and returns a :class:`~failsight.report.html.Section`; it reads
the result only (no model, no data), so a report can be rebuilt from saved results. Later pillars add
their own ``*_section`` functions here or in their own module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from markupsafe import Markup

from failsight.report.html import Figure, Section, fmt_ci, fmt_num
from failsight.report.plots import (
    confidence_histogram_figure,
    reliability_diagram_figure,
    risk_coverage_figure,
)

__all__ = ["reliability_section", "skipped_section"]

_SCORE_NAMES = {
    "msp": "max probability (MSP)", "margin": "margin p1 − p2", "ratio": "ratio p2 / p1",
    "entropy": "entropy", "energy": "energy", "max_logit": "max logit", "doctor": "DOCTOR (Gini)",
}


def skipped_section(title: str, section_id: str, reason: str, status: str = "skipped") -> Section:
    """A section that says a step did not run and why (so nothing disappears silently)."""
    return Section(title, section_id, status=status).text(reason, kind="warning")


def _diagram_fig(d: Any, title: str) -> Any:
    ece = getattr(d, "ece", None)
    return reliability_diagram_figure(d.bin_edges, d.confidence, d.accuracy, d.count, title=title,
                                      ece=None if ece is None else float(ece))


def _fmt_seconds(t: float | None) -> str:
    if t is None:
        return "–"
    return f"{t:.1f} s" if t >= 1 else f"{1000 * t:.0f} ms"


def _comparison_rows(comparison: Any) -> tuple[list[str], list[list[Any]], list[int], list[str]]:
    """Columns, rows, the best row index and failure notes of a calibrator comparison."""
    best = comparison.best
    columns = ["calibrator", "CV NLL (cal.)", "ECE", "MCE", "Brier", "NLL", "accuracy", "fit time", "argmax kept"]
    out, hl, failed = [], [], []
    for i, r in enumerate(comparison.rows):
        if r.error is not None:
            failed.append(f"{r.name} failed: {r.error}")
            out.append([r.name, "failed", "–", "–", "–", "–", "–", "–", "–"])
            continue
        if r.name == best:
            hl.append(i)
        warn = " ⚠" if r.warnings else ""
        out.append([
            r.name + (" ★" if r.name == best else "") + warn,
            _fmt_nll(getattr(r, "cv_nll", None)), fmt_ci(r.ece, r.ece_ci), r.mce, r.brier, _fmt_nll(r.nll),
            fmt_num(r.accuracy, pct=True),
            _fmt_seconds(r.fit_time_s), "yes" if r.preserves_argmax else "no",
        ])
        if r.warnings:
            failed.append(f"{r.name} warned while fitting: {'; '.join(r.warnings)}")
        zt, zc = getattr(r, "zero_prob_rows", 0) or 0, getattr(r, "cv_zero_prob_rows", 0) or 0
        if zt or zc:
            failed.append(f"{r.name} gave the true class a probability of exactly 0 on {zt} test and {zc} held-out "
                          "calibration rows: its NLL is infinite and it cannot be chosen.")
    return columns, out, hl, failed


def _fmt_nll(v: float | None) -> Any:
    if v is None:
        return "–"
    return "∞" if v == float("inf") else v


def reliability_section(analysis: Any, *, title: str = "Reliability: can I trust this prediction?",
                        section_id: str = "reliability") -> Section:
    """Section for a :class:`~failsight.reliability.analysis.ReliabilityAnalysis`: headline numbers,
    metric table with intervals (before/after the best calibrator), reliability diagrams, confidence
    histogram, risk-coverage curve with the selected threshold, calibrator comparison and the ranking
    quality of each confidence score."""
    a = analysis
    lvl = f"{a.confidence:.0%}"
    sec = Section(title, section_id, intro=(
        f"How far the model's confidence can be trusted on {a.n_test:,} test samples "
        f"({a.n_classes} classes, {a.input_kind} given). Intervals are {lvl} "
        "(bootstrap for binned metrics, exact for accuracy)."
    ))

    acc = a.metric("accuracy")
    ece = a.metric("ece")
    sec.key("test accuracy", fmt_num(acc.value, pct=True, digits=4),
            hint=f"{lvl} CI {fmt_num(acc.ci.low, pct=True)}–{fmt_num(acc.ci.high, pct=True)}" if acc.ci else "")
    helped = a.best_calibrator not in (None, "uncalibrated")
    if helped:
        after = a.metric("ece", calibrated=True)
        sec.key("ECE", f"{fmt_num(ece.value, 3)} → {fmt_num(after.value, 3)}",
                hint=f"after {a.best_calibrator}", tone="good" if after.value < ece.value else "warn")
    else:
        sec.key("ECE", fmt_num(ece.value, 3),
                hint="no calibrator helped" if a.best_calibrator == "uncalibrated" else "no calibration split")
    sec.key("AURC", fmt_num(a.risk_coverage.aurc, 3), hint=f"E-AURC {fmt_num(a.risk_coverage.eaurc, 3)}")
    sec.key("error detection AUROC", fmt_num(a.misclassification.auroc, 3), hint=f"score: {a.score}")
    if a.threshold is not None:
        t = a.threshold
        sec.key(f"coverage at risk ≤ {a.max_risk:g}", fmt_num(t.coverage, pct=True, digits=3),
                hint=f"threshold {t.threshold:.4g} ({a.threshold_split} split)", tone="good")
    else:
        sec.key(f"risk ≤ {a.max_risk:g}", "not met", hint="see the selective-prediction part", tone="bad")

    # metrics table
    sec.heading("Calibration and accuracy")
    columns = ["metric", "uncalibrated"]
    if a.metrics_calibrated is not None:
        columns.append(f"after {a.after_calibrator}" + ("" if helped else " (not chosen)"))
    rows = []
    for i, m in enumerate(a.metrics):
        pct = m.key == "accuracy"
        row = [Markup('{}<br><span class="desc">{}</span>').format(m.name, m.description),
               fmt_ci(m.value, m.ci, pct=pct)]
        if a.metrics_calibrated is not None:
            mc = a.metrics_calibrated[i]
            row.append(fmt_ci(mc.value, mc.ci, pct=pct))
        rows.append(row)
    sec.table(columns, rows, caption=f"Test split, {a.n_bins} equal-width bins; lower is better except accuracy.")

    figs = [Figure.from_matplotlib(_diagram_fig(a.diagram_before, "Before calibration"),
                                   caption="Reliability diagram of the model as is. Bars: accuracy per "
                                           "confidence bin; shaded: gap to the bin's mean confidence; "
                                           "below: samples per bin.")]
    if a.diagram_after is not None:
        cap = (f"The same after the chosen calibrator ({a.after_calibrator}), fitted on the calibration split."
               if helped else
               f"For comparison: after {a.after_calibrator}, the runner-up on the calibration split. It was not "
               "chosen: no calibrator beat the model as it is (see the comparison below).")
        figs.append(Figure.from_matplotlib(_diagram_fig(a.diagram_after, f"After {a.after_calibrator}"),
                                           caption=cap))
    sec.figures(figs)

    if a.comparison is not None:
        sec.heading("Post-hoc calibrators")
        cols, crow, hl, problems = _comparison_rows(a.comparison)
        rule = getattr(a.comparison, "best_rule", "lowest test ECE")
        sec.table(cols, crow, highlight=hl,
                  caption=f"Each calibrator fitted on the calibration split ({a.n_cal:,} samples) and chosen "
                          f"there; the other columns score it on the test split, which plays no part in the "
                          f"choice. ★ = chosen: {rule} \"argmax kept\": the method guarantees unchanged "
                          "predicted classes.")
        for msg in problems:
            sec.note(msg)

    # selective prediction
    sec.heading("Selective prediction: answer only when confident")
    thr = a.threshold.threshold if a.threshold is not None else None
    chosen = None
    if a.threshold_on_test is not None:
        chosen = (a.threshold_on_test.coverage, a.threshold_on_test.risk)
    rc = a.risk_coverage
    sec.figures([
        Figure.from_matplotlib(
            confidence_histogram_figure(a.test_confidence, a.test_correct, threshold=thr,
                                        xlabel=f"confidence ({_SCORE_NAMES.get(a.score, a.score)})"),
            caption="Confidence of correct and of wrong test predictions (each group scaled to sum to one). "
                    "A good score puts the wrong ones to the left."),
        Figure.from_matplotlib(
            risk_coverage_figure(rc.coverage, rc.risk, aurc=rc.aurc, chosen=chosen,
                                 chosen_bound=a.threshold.risk_bound if a.threshold is not None else None,
                                 max_risk=a.max_risk),
            caption="Error rate among the answered test inputs when answering only the most confident ones. "
                    "Diamond: the selected threshold applied to the test split; bar up to its guaranteed bound."),
    ])
    if a.threshold is not None:
        t = a.threshold
        text = (f"Requirement: selective risk ≤ {a.max_risk:g} with probability ≥ {a.confidence:g}. "
                f"Selected on the {a.threshold_split} split ({t.n:,} samples) with SGR "
                f"(Geifman & El-Yaniv 2017): answer when {a.score} ≥ {t.threshold:.6g}. There it answers "
                f"{t.coverage:.1%} of inputs with {t.n_errors_accepted} error(s) in {t.n_accepted} "
                f"(risk {t.risk:.2%}); the guaranteed bound is {t.risk_bound:.2%}.")
        sec.text(text)
        if a.threshold_on_test is not None:
            ot = a.threshold_on_test
            check = "independent check" if ot.independent else "same data as the selection, not an independent check"
            sec.text(f"On the test split ({check}): answers {ot.coverage:.1%} ({ot.n_accepted:,} inputs) with "
                     f"{ot.n_errors_accepted} error(s), risk {fmt_num(ot.risk, pct=True)}.", kind="note")
    else:
        sec.text(f"No threshold meets the requirement (selective risk ≤ {a.max_risk:g} with probability "
                 f"≥ {a.confidence:g}): {a.threshold_reason}", kind="warning")

    if a.scores:
        srows = []
        best_i = int(np.nanargmin([s.aurc for s in a.scores])) if a.scores else -1
        for s in a.scores:
            srows.append([_SCORE_NAMES.get(s.score, s.score), s.auroc, s.aupr_error, s.fpr_at_95_tpr, s.aurc,
                          s.eaurc])
        sec.table(["confidence score", "AUROC ↑", "AUPR-error ↑", "FPR@95%TPR ↓", "AURC ↓", "E-AURC ↓"], srows,
                  highlight=[best_i],
                  caption="How well each confidence score separates wrong from correct test predictions. "
                          "Highlighted: lowest AURC.")
    for n in a.notes:
        sec.note(n)
    rows_with_ci = [m for m in (*a.metrics, *(a.metrics_calibrated or ())) if m.ci is not None]
    if any(not (m.ci.low <= m.value <= m.ci.high) for m in rows_with_ci):
        sec.note("Some calibration-error estimates lie outside their interval: the plug-in value is biased "
                 "upward (sampling noise inflates every bin's gap), while the interval is a confidence interval "
                 "for the true error, built around the debiased estimate. For a well-calibrated model the "
                 "plug-in value can sit above the whole interval; the interval is the range to read.")
    return sec
