"""Reliability pillar: confidence scores, calibration metrics, post-hoc calibrators, selective prediction,
conformal prediction sets.

numpy/scipy/scikit-learn only: importing this package never imports torch.

Metric functions take labels first, probabilities second: ``metric(y_true (n,), y_prob (n, k) or (n,))``.
"""

from failsight.reliability.analysis import ReliabilityAnalysis, analyze
from failsight.reliability.calibrators import (
    CALIBRATORS,
    BetaCalibration,
    DirichletCalibration,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    PlattScaling,
    TemperatureScaling,
    Uncalibrated,
    VectorScaling,
)
from failsight.reliability.compare import CalibratorComparison, compare_calibrators
from failsight.reliability.conformal import (
    ConformalAnalysis,
    ConformalClassifier,
    conformal_analysis,
    coverage,
    set_sizes,
)
from failsight.reliability.metrics import (
    CalibrationError,
    ReliabilityDiagram,
    accuracy,
    brier_score,
    calibration_error,
    ece,
    mce,
    nll,
    reliability_diagram,
)
from failsight.reliability.scores import (
    SCORES,
    confidence_score,
    doctor,
    energy,
    entropy,
    margin,
    max_logit,
    msp,
    ratio,
)
from failsight.reliability.selective import (
    MisclassificationDetection,
    RiskCoverage,
    SelectiveThreshold,
    aurc,
    eaurc,
    misclassification_metrics,
    risk_coverage,
    select_threshold,
)

__all__ = [
    "CALIBRATORS",
    "SCORES",
    "BetaCalibration",
    "CalibrationError",
    "CalibratorComparison",
    "ConformalAnalysis",
    "ConformalClassifier",
    "DirichletCalibration",
    "HistogramBinning",
    "IsotonicCalibration",
    "MatrixScaling",
    "MisclassificationDetection",
    "PlattScaling",
    "ReliabilityAnalysis",
    "ReliabilityDiagram",
    "RiskCoverage",
    "SelectiveThreshold",
    "TemperatureScaling",
    "Uncalibrated",
    "VectorScaling",
    "accuracy",
    "analyze",
    "aurc",
    "brier_score",
    "calibration_error",
    "compare_calibrators",
    "confidence_score",
    "conformal_analysis",
    "coverage",
    "doctor",
    "eaurc",
    "ece",
    "energy",
    "entropy",
    "margin",
    "max_logit",
    "mce",
    "misclassification_metrics",
    "msp",
    "nll",
    "ratio",
    "reliability_diagram",
    "risk_coverage",
    "select_threshold",
    "set_sizes",
]
