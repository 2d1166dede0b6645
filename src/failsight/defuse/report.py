"""Turn a :class:`~failsight.defuse.DefuseResult` into a report :class:`~failsight.report.Section`."""

from __future__ import annotations

import base64
from typing import Any

from failsight.defuse.core import DefuseResult
from failsight.defuse.labelers import grid_png_bytes
from failsight.report.html import Figure, Section, fmt_num

__all__ = ["defuse_section"]

_INTRO = (
    "Defuse (Slack, Rauschmayr, Kenthapadi 2021) looks for inputs the classifier gets wrong that the test set "
    "never contained: it perturbs correctly classified images in a generative model's latent space, keeps "
    "the decoded images whose prediction changes, and groups them into misclassification regions — each "
    "one kind of bug. One label per region is enough to fine-tune the model on samples from it."
)


def _pct(x: float | None) -> str:
    return fmt_num(x, 3, pct=True)


def defuse_section(result: DefuseResult, *, max_regions: int = 8, title: str = "Defuse: errors beyond the test set",
                   section_id: str = "defuse", labeler_note: str | None = None) -> Section:
    """Build the report section: headline numbers, the ranked regions (grid, dominant pair, error rate,
    label), and — when a correction was run — the before/after tables. ``labeler_note`` says who labelled
    the regions (e.g. "labels came from an oracle model, not a person")."""
    names = result.class_names
    found = result.search
    sec = Section(title, section_id, intro=_INTRO)
    sec.key("errors found", f"{found.n_found:,}", f"of {found.n_tried:,} samples from {found.n_seeds_used} seeds")
    fold = len(result.regions) if result.fold is None else result.fold
    sec.key("regions", f"{fold} of {len(result.regions)}" if fold < len(result.regions) else str(len(result.regions)),
            "worth a label first (above the fold), of those that passed the size and error-rate filters")
    corr = result.correction
    if corr is not None:
        sec.key("region accuracy", f"{_pct(corr.region_accuracy_before)} → {_pct(corr.region_accuracy_after)}",
                "held-out samples of the labelled regions", tone="good" if
                corr.region_accuracy_after > corr.region_accuracy_before else "warn")
        if corr.test_accuracy_before is not None:
            drop = corr.test_accuracy_after - corr.test_accuracy_before
            sec.key("test accuracy", f"{_pct(corr.test_accuracy_before)} → {_pct(corr.test_accuracy_after)}",
                    "real test images", tone="good" if drop >= -0.01 else "bad")
    if labeler_note:
        sec.text(labeler_note, kind="note")
    for note in result.notes:
        sec.text(note, kind="warning")
    if not result.regions:
        sec.text("No misclassification region was found.", kind="warning")
        return sec

    def pair(p: tuple[int, int]) -> str:
        a, b = (names[i] if i < len(names) else str(i) for i in p)
        return f"{a} → {b}"

    def label_of(rid: int) -> str:
        if result.labels is None:
            return "–"
        lab = result.labels.get(rid)
        return "discard" if lab is None else names[lab]

    def real_of(r: Any) -> str:
        k, n = getattr(r, "real_failures", None), getattr(r, "real_seeds", None)
        return "–" if k is None else f"{k} / {n}" + (" *" if getattr(r, "real_backed", False) else "")

    shown = result.regions[:max_regions]
    rows = [[f"{r.id}" + ("" if r.id not in result.below_fold else " (below fold)"), pair(r.dominant_pair), r.size, _pct(r.error_rate), _pct(r.purity), _pct(r.directionality),
             real_of(r), fmt_num(r.score, 3), label_of(r.id)] for r in shown]
    sec.heading("Misclassification regions")
    sec.table(["region", "seed → predicted", "errors", "error rate", "purity", "one-sided", "real failures", "score",
               "label"], rows,
              caption="error rate: share of samples drawn from the region the classifier gets wrong; purity: share of "
                      "its errors with the dominant pair; one-sided: share of the two classes' mutual confusion "
                      "that goes this way (low = an ambiguous class boundary); real failures: labelled seeds of the "
                      "seed class inside the region that the classifier predicts this way, of all such seeds there "
                      "(* = significantly more than its error rate elsewhere: the failure shows on real images).")
    figs = [Figure("data:image/png;base64," + base64.b64encode(grid_png_bytes(r)).decode("ascii"),
                   caption=f"region {r.id}: {pair(r.dominant_pair)}, {_pct(r.error_rate)} misclassified",
                   alt=f"grid of images sampled from region {r.id}") for r in shown]
    for i in range(0, len(figs), 4):
        sec.figures(figs[i:i + 4])
    if len(result.regions) > max_regions:
        sec.note(f"{len(result.regions) - max_regions} lower-ranked regions are not shown.")
    if result.below_fold:
        reasons = sorted(set(result.below_fold.values()), key=len)[:1]
        sec.note(f"The fold: regions {', '.join(str(r.id) for r in result.regions[:fold]) or 'none'} are worth a "
                 f"label first; {len(result.below_fold)} more are below the fold (a region is below it when other "
                 f"regions are seen failing on real images and it is not, when its score is under a tenth of the top "
                 f"region's - little evidence, often a boundary two classes share - or when it ranks beyond the "
                 f"first five; e.g. {reasons[0] if reasons else ''}).")

    if corr is not None:
        sec.heading("Correction: before and after")
        sec.table(["evaluated on", "before", "after", "change"],
                  [[r["what"], _pct(r["before"]), _pct(r["after"]), fmt_num(100 * r["change"], 3) + " pts"]
                   for r in corr.table()],
                  caption=f"fine-tuned copy, mixing weight λ = {corr.lam:g} picked on validation data "
                          f"(tolerance {corr.tolerance:g}{'' if corr.tolerance_met else ', not met'}); "
                          f"{getattr(corr, 'n_train_relabelled', 0)} training images relabelled (their nearest "
                          f"validation images carry a region's label), {corr.n_train_dropped} left out")
        sec.table(["region", "label", "held-out samples", "before", "after"],
                  [[o.region_id, o.label_name, o.n_holdout, _pct(o.accuracy_before), _pct(o.accuracy_after)]
                   for o in corr.regions])
        sec.table(["class", "n", "before", "after", "change"],
                  [[c["name"], c["n"], _pct(c["before"]), _pct(c["after"]), fmt_num(100 * c["change"], 3) + " pts"]
                   for c in corr.per_class],
                  caption=f"per-class accuracy on the {corr.per_class_split} set")
        if corr.discarded:
            sec.note(f"regions discarded by the labeller: {', '.join(map(str, corr.discarded))}.")
    sec.note(f"search: {found.n_samples} samples per seed, radius {found.radius:g} ({found.spread} spread), "
             f"seed {found.seed}.")
    return sec
