"""Report for a comparison of two recorded runs (reads a :class:`~failsight.runs.RunComparison` only)."""

from __future__ import annotations

from failsight.report.html import Report, Section, fmt_num
from failsight.report.slices import slices_section
from failsight.runs.store import RunComparison

__all__ = ["comparison_report", "metrics_section", "runs_section"]


def runs_section(cmp: RunComparison) -> Section:
    """Who is compared: the two runs' identity side by side."""
    a, b = cmp.a, cmp.b
    sec = Section("Runs", "runs", intro=(
        f"Run {b.label} (candidate) against run {a.label} (baseline). Model and data are identified by "
        "their hashes, so a renamed file is still the same model or data."))
    sec.key("model", "same" if cmp.same_model else "different", tone="neutral")
    sec.key("data", "same" if cmp.same_data else "different", tone="neutral" if cmp.same_data else "warn",
            hint="" if cmp.same_data else "metric deltas mix model and data changes")
    fields = [("id", "id"), ("recorded (UTC)", "created_at"), ("name", "name"), ("model", "model_name"),
              ("model id", "model_id"), ("data", "data_name"), ("data id", "data_id"),
              ("failsight", "failsight_version"), ("report", "report_path")]
    rows = [[label, str(getattr(a, f) or "–"), str(getattr(b, f) or "–")] for label, f in fields]
    rows[1][1:] = [a.created_at[:19].replace("T", " "), b.created_at[:19].replace("T", " ")]
    sec.table(["", "baseline (a)", "candidate (b)"], rows)
    return sec


def metrics_section(cmp: RunComparison) -> Section:
    """Every metric of the two runs side by side with the delta and which run is better."""
    sec = Section("Metrics", "metrics", intro=(
        "Every recorded metric side by side; delta = candidate - baseline. Which run is better follows the "
        "metric's direction (accuracy, coverage, AUROC: higher; ECE, Brier, NLL, error, risk, FPR: lower); "
        "metrics of unknown direction get none."))
    sec.key("worse in candidate", str(len(cmp.worse)), tone="bad" if cmp.worse else "good")
    sec.key("better in candidate", str(len(cmp.better)), tone="good" if cmp.better else "neutral")
    for line in cmp.summary():
        sec.text(line, kind="warning" if line.startswith(("PARTIAL FAILURE", "worse", "different data")) else "text")
    name = {"a": "baseline", "b": "candidate"}
    rows = [[r.metric, fmt_num(r.a), fmt_num(r.b), "–" if r.delta is None else f"{r.delta:+.4g}",
             name.get(r.better or "", "–")] for r in cmp.metrics]
    sec.table(["metric", "baseline", "candidate", "delta", "better"], rows)
    return sec


def comparison_report(cmp: RunComparison) -> Report:
    """The whole comparison report: runs, metrics and the per-slice verdicts (or why there are none)."""
    report = Report(title="failsight run comparison",
                    subtitle=f"{cmp.b.label} against {cmp.a.label}",
                    meta={"baseline": cmp.a.label, "candidate": cmp.b.label,
                          "data": cmp.b.data_name if cmp.same_data else f"{cmp.a.data_name} / {cmp.b.data_name}"})
    report.add(runs_section(cmp)).add(metrics_section(cmp))
    if cmp.slices is not None and cmp.slice_report is not None:
        sec = slices_section(cmp.slice_report, cmp.slices, title="Per-slice comparison", section_id="slices")
        if cmp.slices_note:
            sec.note(cmp.slices_note)
        report.add(sec)
    else:
        report.add(Section("Per-slice comparison", "slices", status="skipped")
                   .note(cmp.slices_note or "no per-slice comparison was possible."))
    return report
