"""The audit report: a summary (ranked findings, what ran and what was skipped, the inputs), then one
section per pillar, each rendered by the pillar's own section builder."""

from __future__ import annotations

from markupsafe import Markup

from failsight.auditing.core import AuditResult
from failsight.report.html import Report, Section, fmt_num

__all__ = ["audit_report", "summary_section"]

_TITLES = {"reliability": "Reliability", "robustness": "Robustness under shift",
           "adversarial": "Worst-case (adversarial) robustness",
           "defuse": "Defuse: errors beyond the test set", "slices": "Per-slice results"}
_TONE = {"reliability": "reliability", "robustness": "robustness", "defuse": "defuse", "slices": "slices",
         "adversarial": "adversarial"}


def summary_section(res: AuditResult, n: int = 5) -> Section:
    """Headline numbers, the ``n`` most severe findings (worst first), the steps' status and the inputs."""
    sec = Section("Audit summary", "summary", intro=(
        "The findings that matter most, worst first, across every pillar that ran. Severity is roughly the "
        "share of predictions at stake (an ECE, an accuracy drop, a slice's regression); each finding links to "
        "its section below."))
    m = res.metrics
    if m.get("reliability.accuracy") is not None:
        sec.key("test accuracy", fmt_num(m["reliability.accuracy"], 3, pct=True))
    if m.get("reliability.ece") is not None:
        tone = "bad" if m["reliability.ece"] > 0.05 else "neutral"
        sec.key("ECE", fmt_num(m["reliability.ece"], 3), tone=tone)
    if m.get("robustness.worst_shift_accuracy") is not None:
        sec.key("worst shift accuracy", fmt_num(m["robustness.worst_shift_accuracy"], 3, pct=True))
    if res.conformal is not None:
        sec.key(f"{1 - res.conformal.alpha:.0%} set coverage", fmt_num(res.conformal.coverage, 3, pct=True),
                hint=f"mean size {res.conformal.mean_size:.2f}")
    if res.adversarial is not None:
        e, a = res.adversarial.worst
        sec.key(f"robust accuracy ε={e:g}", fmt_num(a, 3, pct=True), tone="bad" if a < 0.5 else "neutral")
    if m.get("defuse.n_regions") is not None:
        sec.key("Defuse regions", f"{int(m['defuse.n_regions'])}")
    items = Markup("").join(
        Markup('<li><a href="#{}">{}</a>: {}</li>').format(_TONE[f.pillar], f.pillar, f.text)
        for f in res.findings[:n])
    items += Markup("").join(  # a fix's before/after is always shown, whatever its rank
        Markup('<li class="fix"><a href="#{}">{}</a> (fix applied): {}</li>').format(_TONE[f.pillar], f.pillar, f.text)
        for f in res.findings[n:] if f.fix)
    if items:
        sec.html(Markup('<ol class="findings">{}</ol>').format(items))
    else:
        sec.text("No finding stands out.")
    skipped = any(s.status == "skipped" for s in res.steps)
    rows = []
    for s in res.steps:
        row = [s.step, s.status, f"{s.seconds:.1f} s" if s.ran else ""]
        rows.append([*row, s.reason or ""] if skipped else row)
    sec.table(["step", "status", "time", *(["why not"] if skipped else [])], rows,
              caption="What ran. A skipped step says which input or model capability it lacked.")
    model = res.model
    inputs = [["model", Markup("{}<br><small>{}, outputs {}, {} classes · id {}</small>").format(
        model.get("name", ""), model.get("kind", ""), model.get("output", ""), model.get("n_classes", "?"),
        str(model.get("fingerprint", ""))[:8])]]
    for split, d in res.data.items():
        shape = "×".join(str(s) for s in d.get("shape", []))
        inputs.append([split, Markup("{}<br><small>{} samples, {} {} · id {}</small>").format(
            d.get("name", ""), d.get("n", "?"), d.get("kind", ""), shape, str(d.get("fingerprint", ""))[:8])])
    sec.table(["input", "what"], inputs, caption="The model and data audited; 'id' starts their content hash (the "
              "run history's identity, in results.json in full).")
    for note in res.notes:
        sec.note(note)
    for split, d in res.data.items():
        for note in d.get("notes", []):
            sec.note(f"{split}: {note}")
    return sec


def _skipped(step: str, reason: str | None, status: str) -> Section:
    sec = Section(_TITLES[step], _TONE[step], status="skipped")
    sec.text("Not requested (--steps)." if status == "not requested" else f"Skipped: {reason}")
    return sec


def audit_report(res: AuditResult, *, title: str | None = None, labeler_note: str | None = None) -> Report:
    """The full audit report (a :class:`~failsight.report.html.Report`, not yet written)."""
    from failsight.report.sections import reliability_section

    model = res.model.get("name", "model")
    test = res.data.get("test", {})
    report = Report(
        title=title or f"failsight audit: {model}",
        subtitle=(f"Where, why and how {model} fails on {test.get('name', 'the test set')}"
                  f" ({test.get('n', '?')} samples)."),
        meta={"model": f"{model} ({res.model.get('kind', '')})", "test data": str(test.get("name", "")),
              "seed": res.config.get("seed", 0), "time": f"{res.seconds:.0f} s"},
    )
    report.add(summary_section(res))
    for s in res.steps:
        if not s.ran:
            if s.status == "skipped":
                report.add(_skipped(s.step, s.reason, s.status))
            continue
        if s.step == "reliability":
            report.add(reliability_section(res.reliability))
            if res.conformal is not None:
                from failsight.report.conformal import conformal_section

                report.add(conformal_section(res.conformal, _class_names(res)))
        elif s.step == "robustness":
            from failsight.robustness.report import robustness_section

            report.add(robustness_section(res.robustness))
        elif s.step == "adversarial":
            from failsight.report.adversarial import adversarial_section

            sec = adversarial_section(res.adversarial, _class_names(res))
            sec.note("Kept cheap by default: a subset of the test images and few attack steps "
                     "(adversarial_options={'n': ..., 'steps': ..., 'restarts': ...} for a fuller evaluation).")
            report.add(sec)
        elif s.step == "defuse":
            from failsight.defuse.report import defuse_section

            note = labeler_note
            if note is None and res.defuse.labels is None:
                note = ("No labels yet: fill in regions/labels.csv (a class or 'discard' per region; the grids are "
                        "beside it) and rerun the audit with --labels to fine-tune and verify the fix.")
            report.add(defuse_section(res.defuse, labeler_note=note))
        elif s.step == "slices":
            from failsight.report.slices import slices_section

            report.add(slices_section(res.slices, res.comparison))
            if res.defuse_check is not None:
                report.add(_defuse_check_section(res))
    return report


def _class_names(res: AuditResult) -> list[str] | None:
    names = res.data.get("test", {}).get("class_names") or None
    return list(names) if names else None


def _defuse_check_section(res: AuditResult) -> Section:
    from failsight.report.slices import slices_section

    sec = slices_section(res.slices, res.defuse_check, title="Verifying the Defuse fix, slice by slice",
                         section_id="defuse-check")
    sec.intro = ("The Defuse-corrected model against the original on the real test set, slice by slice (exact "
                 "McNemar, Holm-corrected): a fix that quietly breaks a slice is flagged here. " + sec.intro)
    return sec

