"""failsight.slices: per-slice evaluation, paired model comparison and per-slice learning curves.

numpy/scipy only (importing it never imports torch)::

    from failsight.slices import evaluate, compare, learning_curves, load_groups

    report = evaluate(y_true, y_pred, {"class": y_true, "colour": colour})
    cmp = compare(y_true, pred_baseline, pred_candidate, groups, alpha=0.05)
    cmp.partial_failure, [r.verdict for r in cmp.rows]
"""

from failsight.slices._stats import adjust_pvalues
from failsight.slices.core import (
    VERDICTS,
    Comparison,
    ComparisonRow,
    LearningCurves,
    SliceReport,
    SliceRow,
    compare,
    evaluate,
    learning_curves,
)
from failsight.slices.io import load_groups, load_predictions

__all__ = [
    "VERDICTS",
    "Comparison",
    "ComparisonRow",
    "LearningCurves",
    "SliceReport",
    "SliceRow",
    "adjust_pvalues",
    "compare",
    "evaluate",
    "learning_curves",
    "load_groups",
    "load_predictions",
]
