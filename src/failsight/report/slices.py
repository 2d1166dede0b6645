"""Report section for per-slice results (:mod:`failsight.slices`): slice table, worst slice, and the
paired comparison of two models with its partial-failure verdict."""

from __future__ import annotations

from typing import Any

from failsight.report.html import Section, fmt_ci, fmt_num

__all__ = ["slices_section"]


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f} pts"


def slices_section(report: Any, comparison: Any = None, *, title: str = "Per-slice results",
                   section_id: str = "slices") -> Section:
    """Section for a :class:`~failsight.slices.SliceReport` and, optionally, a
    :class:`~failsight.slices.Comparison` of a candidate against a baseline on the same samples."""
    sec = Section(title, section_id, intro=(
        "Aggregate accuracy hides partial failures: every slice below gets its own value with an interval. "
        "Slices smaller than the minimum size are listed but get no interval."))
    sec.key("overall", fmt_ci(report.overall, report.overall_ci, pct=True, digits=3))
    for name, worst in report.worst.items():
        if worst is not None:
            sec.key(f"worst {name}", f"{worst.slice}: {fmt_num(worst.value, pct=True, digits=3)}",
                    hint=f"gap {_pts(worst.gap)}", tone="bad" if worst.gap < -0.05 else "neutral")
    rows = [[r.slicing, str(r.slice), r.n, fmt_ci(r.value, r.ci, pct=True, digits=3), _pts(r.gap),
             "too small" if r.too_small else ""] for r in report.rows]
    sec.table(["slicing", "slice", "n", report.metric, "gap to overall", ""], rows,
              caption=f"{report.metric} per slice with a {report.level:.0%} interval ({report.method}).")
    if comparison is not None:
        c = comparison
        sec.heading("Candidate against baseline")
        sec.key("partial failure", "yes" if c.partial_failure else "no",
                tone="bad" if c.partial_failure else "good")
        sec.text(c.summary(), kind="warning" if c.partial_failure else "text")
        rows = [[r.slicing, str(r.slice), r.n, fmt_num(r.baseline, pct=True, digits=3),
                 fmt_num(r.candidate, pct=True, digits=3), _pts(r.delta),
                 "–" if r.ci is None else f"[{_pts(r.ci.low)}, {_pts(r.ci.high)}]",
                 fmt_num(r.p_adjusted, digits=3), r.verdict] for r in (c.overall, *c.rows)]
        sec.table(["slicing", "slice", "n", "baseline", "candidate", "delta", "paired CI", "p (adj.)",
                   "verdict"], rows, highlight=[0],
                  caption=f"Paired per-slice comparison ({c.test}, {c.correction}-corrected, "
                          f"alpha={c.alpha:g}). A partial failure: the aggregate improves or holds while a "
                          "slice regresses significantly.")
    return sec
