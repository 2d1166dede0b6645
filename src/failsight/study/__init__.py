"""failsight.study: controlled studies of partial failures (imports torch when a study runs).

The shapes × colours study trains a compositional network and its ablations over several seeds and
reports per-slice learning curves, a results table and paired verdicts against the baseline::

    from failsight.study import run_study
    from failsight.study.report import study_section

    result = run_study("small")          # or "default", or a StudyConfig
    print(result.summary())
    section = study_section(result)      # for failsight.report.Report
"""

from failsight.study.shapes_colors import (
    METRICS,
    PRESETS,
    VARIANTS,
    AblationComparison,
    RunResult,
    SeedData,
    StudyConfig,
    StudyResult,
    TableRow,
    TaskVerdict,
    VariantCurves,
    run_study,
)

__all__ = [
    "METRICS",
    "PRESETS",
    "VARIANTS",
    "AblationComparison",
    "RunResult",
    "SeedData",
    "StudyConfig",
    "StudyResult",
    "TableRow",
    "TaskVerdict",
    "VariantCurves",
    "run_study",
]
