"""Turn the pillars' results into ranked findings and a flat table of metrics.

A finding is one sentence and a ``severity``: roughly the share of predictions at stake, so findings from
different pillars can be ranked on one scale (worst first). The rules:

* calibration: the ECE itself (the mean gap between confidence and accuracy);
* selective prediction: the share of inputs that must be refused to meet the risk requirement, halved (it is
  the price of a guarantee, not an error); 0.1 when no threshold meets it (often a matter of sample size);
* robustness: the worst accuracy drop under a shift; the worst overconfidence (accuracy drop minus
  confidence drop) when it is another condition; OOD detection by how far the best AUROC is below 0.95;
* Defuse: a region's error rate × 0.15 — regions are generated inputs whose prevalence in real data is unknown,
  so a 100%-error region weighs like a 15-point drop;
* slices: the worst slice's gap to overall; a slice that regressed significantly against the baseline (or
  after a Defuse fix) by 1.5 × its drop, since it is the failure an aggregate number hides.
* conformal sets (reliability): the coverage shortfall below the promised 1 − α — overall (only when even the
  interval's upper end falls short), on the worst slice (same rule), and under the worst shift (the shortfall
  itself: the guarantee does not hold off the calibration distribution);
* adversarial: 0.3 × the accuracy drop averaged over the ε curve (worst-case inputs are rare unless someone
  attacks, so a 100-point collapse weighs like a 30-point shift drop); 0.05 for each failed sanity check (the
  curve is then not a trustworthy bound).

A finding that reports a fix the audit applied (the calibrated ECE, the Defuse fine-tune's before/after) is
marked ``fix``: it is never dropped and :meth:`AuditResult.summary` shows it whatever its rank, while its
severity (the accuracy the fix cost, the ECE it started from) keeps ranking it among the rest.

Findings below 0.005 severity are dropped, except that every step that ran keeps its most severe one. The
list is ordered worst first, except that no pillar takes more than two of the first five places while
another pillar has findings left: the summary should show where *each* pillar hurts most.
"""

from __future__ import annotations

import math
from typing import Any

from failsight.auditing.core import AuditResult, Finding

__all__ = ["collect_findings", "collect_metrics"]

_MIN_SEVERITY = 0.005


def _pts(x: float) -> str:
    return f"{abs(x) * 100:.0f}"


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------------------------------ reliability


#: How a finding names each built-in calibrator (``compare_calibrators`` names); others read "the <name> calibrator".
CALIBRATOR_PHRASES = {
    "temperature": "temperature scaling",
    "vector": "vector scaling",
    "matrix": "matrix scaling",
    "dirichlet": "Dirichlet calibration",
    "platt": "Platt scaling",
    "isotonic": "isotonic regression",
    "histogram": "histogram binning",
    "beta": "beta calibration",
}


def calibrator_phrase(name: str) -> str:
    """Words for calibrator ``name`` in a sentence: ``"dirichlet"`` -> ``"Dirichlet calibration"``."""
    return CALIBRATOR_PHRASES.get(name, f"the {name} calibrator")


def _reliability(a: Any, margins: bool = False) -> list[Finding]:
    out = []
    ece = a.metric("ece")
    # "fix applied" only when a calibrator was chosen; "no calibrator improves on it" is a finding, not a fix
    fixed = a.metrics_calibrated is not None and a.best_calibrator not in (None, "uncalibrated")
    acc = a.accuracy
    conf = float(a.test_confidence.mean()) if a.test_confidence is not None and len(a.test_confidence) else math.nan
    side = "over-confident" if conf > acc else "under-confident"
    ci = f" [{ece.ci.low:.3f}, {ece.ci.high:.3f}]" if ece.ci is not None else ""
    text = (f"{side}: ECE {ece.value:.3f}{ci} (mean confidence {conf:.1%} vs accuracy {acc:.1%})")
    if a.metrics_calibrated is not None and a.best_calibrator not in (None, "uncalibrated"):
        after = a.metric("ece", calibrated=True).value
        text += f"; {calibrator_phrase(a.best_calibrator)} brings it to {after:.3f}"
    elif a.metrics_calibrated is not None:
        text += "; no calibrator improves on it"
    if margins and fixed:
        # decision margins have no probabilities to be calibrated or not: the model is what calibration made
        after = a.metric("ece", calibrated=True).value
        text = (f"the model gives decision margins, not probabilities: calibrated with "
                f"{calibrator_phrase(a.best_calibrator)}, its "
                f"ECE is {after:.3f} (softmax of the raw margins: {ece.value:.3f}, not meaningful)")
        out.append(Finding("reliability", after, text, fix=True))
    elif margins:
        out.append(Finding("reliability", ece.value, "the model gives decision margins, not probabilities, and no "
                                                     "calibrator improves on softmax(margins): its ECE "
                                                     f"{ece.value:.3f} says little; calibrate it on more data",
                           fix=False))
    else:
        out.append(Finding("reliability", ece.value, text, fix=fixed))
    if a.threshold is not None:
        t = a.threshold
        out.append(Finding("reliability", 0.5 * (1 - t.coverage),
                           f"to keep the error on answered inputs ≤ {a.max_risk:.1%} (at {a.confidence:.0%} "
                           f"confidence), answer only when {a.score} ≥ {t.threshold:.3g}: {t.coverage:.1%} of inputs "
                           f"answered, risk bound {t.risk_bound:.2%}"))
    else:
        why = (a.threshold_reason or "see the report").split(". ")[0].split(" (")[0]
        out.append(Finding("reliability", 0.1, f"no confidence threshold guarantees an error ≤ {a.max_risk:.1%} on "
                                               f"answered inputs: {why}"))
    return out


# ------------------------------------------------------------------------------------------ robustness


def _robustness(r: Any) -> list[Finding]:
    out = []
    rows = r.evaluation.rows[1:]
    if rows:
        worst = max(rows, key=lambda x: x.accuracy_drop)
        conf = (f"confidence rises {_pts(worst.confidence_drop)}" if worst.confidence_drop < 0
                else f"confidence drops {_pts(worst.confidence_drop)}")
        out.append(Finding("robustness", worst.accuracy_drop,
                           f"accuracy drops {_pts(worst.accuracy_drop)} points under {worst.shift} s{worst.severity} "
                           f"({r.evaluation.clean_accuracy:.0%} → {worst.accuracy:.0%}) while {conf}"))
        over = max(rows, key=lambda x: x.overconfidence)
        if (over.shift, over.severity) != (worst.shift, worst.severity) and over.overconfidence > 0.05:
            out.append(Finding("robustness", over.overconfidence,
                               f"most over-confident under {over.shift} s{over.severity}: {over.accuracy:.0%} accurate "
                               f"at {over.mean_confidence:.0%} mean confidence (ECE {over.ece:.2f})"))
    if r.ood:
        best_name, best = max(r.ood.items(), key=lambda kv: kv[1].auroc)
        if best.auroc < 0.95:
            out.append(Finding("robustness", 0.95 - best.auroc,
                               f"out-of-distribution inputs are hard to tell apart: best score {best_name} has AUROC "
                               f"{best.auroc:.2f} and accepts {best.fpr_at_95_tpr:.0%} of them at 95% TPR"))
        else:
            out.append(Finding("robustness", 0.0, f"OOD detection works: {best_name} AUROC {best.auroc:.3f}"))
    return out


# ------------------------------------------------------------------------------------------ defuse


def _defuse(d: Any) -> list[Finding]:
    names = d.class_names

    def nm(i: int) -> str:
        return names[i] if i < len(names) else str(i)

    out = []
    for r in d.regions[:3]:
        a, b = r.dominant_pair
        out.append(Finding("defuse", 0.15 * r.error_rate,
                           f"region #{r.id}: {nm(a)} → {nm(b)}, {r.error_rate:.0%} error rate on generated samples "
                           f"({r.size} found errors)"))
    c = d.correction
    if c is not None:
        text = (f"Defuse fix: labelled-region accuracy {c.region_accuracy_before:.0%} → {c.region_accuracy_after:.0%}")
        if c.test_accuracy_before is not None:
            text += f"; test accuracy {c.test_accuracy_before:.1%} → {c.test_accuracy_after:.1%}"
        drop = (c.test_accuracy_before - c.test_accuracy_after) if c.test_accuracy_before is not None else 0.0
        # ranked by the test accuracy it cost (a regression keeps its rank); shown whatever its rank (fix=True)
        out.append(Finding("defuse", max(drop, 0.0), text, fix=True))
    if not d.regions:
        out.append(Finding("defuse", 0.0, f"no misclassification region found ({d.search.n_found} errors in "
                                          f"{d.search.n_tried} generated samples)"))
    return out


# ------------------------------------------------------------------------------------------ slices


def _slices(s: Any, cmp: Any, check: Any) -> list[Finding]:
    out = []
    for name, worst in s.worst.items():
        if worst is None or worst.gap >= 0:
            continue
        ci = f" [{worst.ci.low:.0%}, {worst.ci.high:.0%}]" if worst.ci is not None else ""
        out.append(Finding("slices", -worst.gap,
                           f"weakest {name}: {worst.slice} at {worst.value:.1%}{ci} vs {s.overall:.1%} overall "
                           f"(n={worst.n})"))
    for label, c in (("vs baseline", cmp), ("after the Defuse fix", check)):
        if c is None:
            continue
        o = c.overall
        for r in sorted(c.regressed, key=lambda r: r.delta)[:3]:
            pf = "hidden regression: " if c.partial_failure else ""
            out.append(Finding("slices", 1.5 * -r.delta,
                               f"{pf}slice {r.slicing}={r.slice} regressed {_pts(r.delta)} points {label} "
                               f"({r.baseline:.0%} → {r.candidate:.0%}, p_adj={r.p_adjusted:.2g}) while overall "
                               f"went {o.baseline:.1%} → {o.candidate:.1%}"))
        if not c.regressed:
            out.append(Finding("slices", max(-o.delta, 0.0),
                               f"{label}: overall {o.baseline:.1%} → {o.candidate:.1%} ({o.verdict}); no slice "
                               "regressed significantly"))
    return out


# ------------------------------------------------------------------------------------------ conformal, adversarial


def _conformal(c: Any) -> list[Finding]:
    target = 1 - c.alpha
    lo, hi = c.coverage_ci.low, c.coverage_ci.high
    out = [Finding("reliability", max(0.0, target - hi),
                   f"prediction sets ({c.method}, α = {c.alpha:g}) hold the true class for {c.coverage:.1%} "
                   f"[{lo:.1%}, {hi:.1%}] of test inputs (promised ≥ {target:.0%}) with {c.mean_size:.2f} classes on "
                   f"average, {c.singleton_rate:.0%} of them a single class")]
    if c.slices is not None:
        for name, w in c.slices.worst.items():
            if w is None or w.ci is None or w.ci.high >= target:
                continue
            out.append(Finding("reliability", target - w.value,
                               f"prediction sets under-cover {name} {w.slice}: {w.value:.0%} [{w.ci.low:.0%}, "
                               f"{w.ci.high:.0%}] vs {target:.0%} promised (n={w.n}); class-conditional sets "
                               "(conformal_options={'class_conditional': True}) guarantee it per class"))
    if c.shift_coverage:
        name, (cov, size) = min(c.shift_coverage.items(), key=lambda kv: kv[1][0])
        if cov < target:
            out.append(Finding("reliability", target - cov,
                               f"under {name} the {target:.0%} prediction sets cover only {cov:.0%} of inputs "
                               f"(mean size {size:.2f}): the guarantee holds only for data like the calibration split"))
    return out


def _adversarial(a: Any) -> list[Finding]:
    drops = [a.clean_accuracy - v for e, v in zip(a.eps, a.accuracy, strict=True) if e > 0]
    sev = 0.3 * (sum(drops) / len(drops)) if drops else 0.0
    e, acc = a.worst
    ci = a.ci[-1]
    nm = "L∞" if a.norm == "linf" else "L2"
    out = [Finding("adversarial", sev,
                   f"worst case: {a.method.upper()} ({nm}, {a.steps} steps) at ε = {e:g} leaves {acc:.0%} "
                   f"[{ci.low:.0%}, {ci.high:.0%}] accuracy (clean {a.clean_accuracy:.0%}, n={a.n})")]
    broken = [(x, v) for x, v in zip(a.eps, a.accuracy, strict=True) if x > 0 and v < a.clean_accuracy / 2]
    if broken and broken[0][0] != e:
        out[0] = Finding("adversarial", sev, out[0].text + f"; accuracy halves already at ε = {broken[0][0]:g}")
    for w in a.warnings:
        out.append(Finding("adversarial", 0.05, "adversarial evaluation unreliable: " + w.split(":")[0]))
    return out


def collect_findings(result: AuditResult) -> list[Finding]:
    """Findings of every step that ran, most severe first (see the module docstring for the rules)."""
    groups: list[list[Finding]] = []
    if result.reliability is not None:
        groups.append(_reliability(result.reliability, margins=bool(result.model.get("margins"))))
    if getattr(result, "conformal", None) is not None:
        groups.append(_conformal(result.conformal))
    if result.robustness is not None:
        groups.append(_robustness(result.robustness))
    if getattr(result, "adversarial", None) is not None:
        groups.append(_adversarial(result.adversarial))
    if result.defuse is not None:
        groups.append(_defuse(result.defuse))
    if result.slices is not None:
        groups.append(_slices(result.slices, result.comparison, result.defuse_check))
    keep: list[Finding] = []
    for g in groups:
        if not g:
            continue
        top = max(g, key=lambda f: f.severity)
        keep += [f for f in g if f is top or f.fix or f.severity >= _MIN_SEVERITY]
    return _diverse(sorted(keep, key=lambda f: -f.severity))


def _diverse(ranked: list[Finding], head: int = 5, cap: int = 2) -> list[Finding]:
    """``ranked`` (worst first) with at most ``cap`` findings per pillar among the first ``head`` while other
    pillars still have findings; the rest follow in severity order."""
    top: list[Finding] = []
    for f in ranked:
        if len(top) == head:
            break
        if sum(g.pillar == f.pillar for g in top) < cap:
            top.append(f)
    for f in ranked:  # too few pillars to fill the head under the cap: fill it in severity order
        if len(top) == min(head, len(ranked)):
            break
        if f not in top:
            top.append(f)
    top.sort(key=lambda f: -f.severity)
    return top + [f for f in ranked if f not in top]


# ------------------------------------------------------------------------------------------ metrics


def collect_metrics(result: AuditResult) -> dict[str, float | None]:
    """Flat ``"pillar.metric" -> value`` of the headline numbers (what the run store keeps and compares)."""
    m: dict[str, float | None] = {}
    a = result.reliability
    if a is not None:
        for row in a.metrics:
            m[f"reliability.{row.key}"] = _finite(row.value)
        if a.metrics_calibrated is not None:
            for row in a.metrics_calibrated:
                if row.key != "accuracy":
                    m[f"reliability.{row.key}_calibrated"] = _finite(row.value)
        if a.threshold is not None:
            m["reliability.selective_coverage"] = _finite(a.threshold.coverage)
            m["reliability.selective_risk_bound"] = _finite(a.threshold.risk_bound)
        for s in a.scores:
            m[f"reliability.misclassification_auroc.{s.score}"] = _finite(s.auroc)
    r = result.robustness
    if r is not None:
        rows = r.evaluation.rows[1:]
        m["robustness.clean_accuracy"] = _finite(r.evaluation.clean_accuracy)
        if rows:
            m["robustness.mean_shift_accuracy"] = _finite(sum(x.accuracy for x in rows) / len(rows))
            m["robustness.worst_shift_accuracy"] = _finite(min(x.accuracy for x in rows))
            m["robustness.mean_shift_ece"] = _finite(sum(x.ece for x in rows) / len(rows))
            m["robustness.max_overconfidence"] = _finite(max(x.overconfidence for x in rows))
        for name, o in r.ood.items():
            m[f"robustness.ood_auroc.{name}"] = _finite(o.auroc)
        if not math.isnan(r.mce_imagenet_c):
            m["robustness.mce"] = _finite(r.mce_imagenet_c)
    d = result.defuse
    if d is not None:
        m["defuse.errors_found"] = float(d.search.n_found)
        m["defuse.search_error_rate"] = _finite(d.search.error_rate)
        m["defuse.n_regions"] = float(len(d.regions))
        m["defuse.top_region_error_rate"] = _finite(d.regions[0].error_rate) if d.regions else None
        if d.correction is not None:
            m["defuse.region_accuracy_before"] = _finite(d.correction.region_accuracy_before)
            m["defuse.region_accuracy_after"] = _finite(d.correction.region_accuracy_after)
            m["defuse.test_accuracy_after"] = _finite(d.correction.test_accuracy_after)
    s = result.slices
    if s is not None:
        m["slices.overall_accuracy"] = _finite(s.overall)
        for name, worst in s.worst.items():
            m[f"slices.worst_accuracy.{name}"] = None if worst is None else _finite(worst.value)
    cf = getattr(result, "conformal", None)
    if cf is not None:
        m["reliability.conformal_coverage"] = _finite(cf.coverage)
        m["reliability.conformal_mean_size"] = _finite(cf.mean_size)
        if cf.shift_coverage:
            m["reliability.conformal_worst_shift_coverage"] = _finite(min(v[0] for v in cf.shift_coverage.values()))
    adv = getattr(result, "adversarial", None)
    if adv is not None:
        m["adversarial.clean_accuracy"] = _finite(adv.clean_accuracy)
        for e, v in zip(adv.eps, adv.accuracy, strict=True):
            m[f"adversarial.robust_accuracy.eps_{e:g}"] = _finite(v)
        m["adversarial.sanity_warnings"] = float(len(adv.warnings))
    if result.comparison is not None:
        c = result.comparison
        m["comparison.delta"] = _finite(c.overall.delta)
        m["comparison.n_regressed"] = float(len(c.regressed))
        m["comparison.partial_failure"] = float(c.partial_failure)
    return m
