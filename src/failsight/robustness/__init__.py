"""Robustness pillar: image corruptions and cue shifts with severities, accuracy and calibration under
each, shift detection from unlabelled data, label shift (BBSE), OOD detection, and worst-case (adversarial)
robustness: FGSM/PGD/APGD-CE attacks and the robust-accuracy-vs-ε curve. Uses torch."""

from failsight.robustness.adversarial import (
    AttackResult,
    RobustAccuracyCurve,
    attack,
    robust_accuracy,
)
from failsight.robustness.analysis import RobustnessAnalysis, analyze_robustness
from failsight.robustness.detect import ShiftTest, detect_shift
from failsight.robustness.evaluate import RobustnessResult, RobustnessRow, evaluate
from failsight.robustness.io import load_labelled_images, load_model
from failsight.robustness.label_shift import BBSEResult, bbse_estimate, resample_to_priors, reweight_probs
from failsight.robustness.ood import Mahalanobis, OODMetrics, ood_metrics, ood_score, penultimate_features
from failsight.robustness.shifts import corrupt, list_shifts, register_shift

__all__ = [
    "AttackResult",
    "BBSEResult",
    "Mahalanobis",
    "OODMetrics",
    "RobustAccuracyCurve",
    "RobustnessAnalysis",
    "RobustnessResult",
    "RobustnessRow",
    "ShiftTest",
    "analyze_robustness",
    "attack",
    "bbse_estimate",
    "corrupt",
    "detect_shift",
    "evaluate",
    "list_shifts",
    "load_labelled_images",
    "load_model",
    "ood_metrics",
    "ood_score",
    "penultimate_features",
    "register_shift",
    "resample_to_priors",
    "reweight_probs",
    "robust_accuracy",
]
