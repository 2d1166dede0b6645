"""Post-hoc calibrators: scikit-learn estimators that map a classifier's scores to calibrated probabilities.

Every calibrator has ``fit(X, y)``, ``predict_proba(X) -> (n, k)``, ``predict(X)``, ``get_params``, pickles,
and exposes its fitted parameters with a trailing underscore. ``X`` is ``(n, k)`` logits or probabilities,
or ``(n,)`` for binary problems (``P(class 1)`` or the logit of class 1); ``y`` is ``(n,)`` integer labels in
``0..k-1``. The constructor argument ``input="auto"|"logits"|"probs"`` says which: ``"auto"`` reads the
scores as probabilities when every entry lies in [0, 1] and (for 2-D input) every row sums to 1 within
1e-3, and as logits otherwise (pass ``input="logits"`` for 1-D logits that happen to lie in [0, 1]). The
kind detected at fit time is stored in ``input_kind_``; ``predict_proba`` expects the same kind.
Logit-space methods use ``log p`` when given probabilities; probability-space methods ``softmax`` logits.

=====================  ============  ======================================================
calibrator             space         keeps the arg-max of every row?
=====================  ============  ======================================================
TemperatureScaling     logits        always (one positive temperature for all classes)
VectorScaling          logits        not in general (per-class scale and bias)
MatrixScaling (ODIR)   logits        not in general
DirichletCalibration   log-probs     not in general
PlattScaling           probs (OvR)   not in general (the intercept moves the 0.5 threshold)
IsotonicCalibration    probs (OvR)   not in general (moves 0.5; step-like maps create ties)
HistogramBinning       probs (OvR)   not in general
BetaCalibration        probs (OvR)   not in general (binary: monotone in p, but 0.5 moves)
=====================  ============  ======================================================

The class attribute ``preserves_argmax`` is ``True`` only where it is guaranteed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from failsight.reliability._calibrators_base import BaseCalibrator, to_prob_space
from failsight.reliability._calibrators_ovr import (
    BetaCalibration,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
)
from failsight.reliability._calibrators_scaling import (
    DirichletCalibration,
    MatrixScaling,
    TemperatureScaling,
    VectorScaling,
)


class Uncalibrated(BaseCalibrator):
    """Identity "calibrator": returns the probabilities unchanged (``softmax`` of logits).

    The baseline row of :func:`~failsight.reliability.compare.compare_calibrators`; fitting only records
    the input kind and class count. Preserves the arg-max.
    """

    preserves_argmax = True
    _min_samples = 1

    def __init__(self, input: str = "auto"):
        self.input = input

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        pass

    def _predict_proba(self, x: np.ndarray) -> Any:
        return np.array(to_prob_space(x, self.input_kind_), dtype=np.float64, copy=True)


#: name -> class of every calibrator, in the order ``compare_calibrators`` reports them.
CALIBRATORS: dict[str, type[BaseCalibrator]] = {
    "temperature": TemperatureScaling,
    "vector": VectorScaling,
    "matrix": MatrixScaling,
    "dirichlet": DirichletCalibration,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
    "histogram": HistogramBinning,
    "beta": BetaCalibration,
}

#: The calibrators :func:`~failsight.reliability.compare.compare_calibrators` runs by default: none was
#: clearly worse than the uncalibrated model on held-out data (NLL by > 0.05 nats, accuracy by > 1 point) on
#: the problems of ``benchmarks/calibration_real.py`` (MNIST LR and MLP at 10 classes, MNIST pairs LR and
#: MLP at 100 classes, shapes x colours at 100/110 classes). Dirichlet calibration is left out above
#: ``compare.MAX_CLASSES_DIRICHLET`` = 50 classes (too slow on over-confident 100-class logits, never chosen
#: there), matrix scaling above 128. The others stay available by name: isotonic regression gave true
#: classes probability 0 on every problem (infinite NLL); histogram binning cost 1 point of accuracy and
#: 0.22 nats at 100 classes; Platt and beta (one-vs-rest, renormalised) stay opt-in.
DEFAULT_CALIBRATORS: tuple[str, ...] = ("temperature", "vector", "matrix", "dirichlet")

__all__ = [
    "CALIBRATORS",
    "DEFAULT_CALIBRATORS",
    "BaseCalibrator",
    "BetaCalibration",
    "DirichletCalibration",
    "HistogramBinning",
    "IsotonicCalibration",
    "MatrixScaling",
    "PlattScaling",
    "TemperatureScaling",
    "Uncalibrated",
    "VectorScaling",
]
