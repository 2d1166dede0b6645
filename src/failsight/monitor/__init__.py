"""failsight.monitor: watch a deployed classifier window by window, without labels.

::

    from failsight.monitor import Monitor

    mon = Monitor(model, reference=(x_cal, y_cal), max_risk=0.02, store="monitor.db")  # or reference=(probs, y)
    w = mon.update(x_batch)            # or mon.update(probs=p_batch)
    w.estimated_accuracy               # per estimator: value and interval
    w.drift                            # p-values of the shift tests, is_shift
    w.selective                        # coverage at the requirement's threshold, estimated selective risk
    w.alerts                           # the rules that fired, in words
    mon.add_labels(w.window_id, y)     # late labels: the true accuracy beside the estimate

With a model and the reference as raw images, the monitor first simulates shifts of the reference (label
shift and the corruption suite, seconds to a few minutes) and learns ``shift_regression``, its default
estimator (:mod:`failsight.monitor.simulate`); from saved probabilities alone it uses ATC.

numpy core: given probabilities it never imports torch (the model adapter is used only for raw inputs).
The HTML page is :func:`failsight.monitor.report.monitor_report`; the CLI ``failsight monitor``.
"""

from __future__ import annotations

from typing import Any

_CORE = ("DEFAULT_ESTIMATOR", "KEEP_WINDOWS", "MIN_WINDOW", "SIMULATED_ESTIMATOR", "Alert", "Drift", "Monitor",
         "MonitorConfig", "SelectiveWindow", "WindowResult")
_ESTIMATORS = ("ATC", "ESTIMATORS", "AccuracyEstimate", "AccuracyEstimator", "CalibratedConfidence", "DoC",
               "MeanConfidence")

_SIMULATE = ("ShiftRegression", "ShiftTable", "WindowStats", "simulate_reference", "simulate_shifts")

__all__ = sorted(_CORE + _ESTIMATORS + _SIMULATE)


def __getattr__(name: str) -> Any:  # lazy: `failsight monitor --help` stays fast
    if name in _CORE:
        from failsight.monitor import core

        return getattr(core, name)
    if name in _ESTIMATORS:
        from failsight.monitor import estimators

        return getattr(estimators, name)
    if name in _SIMULATE:
        from failsight.monitor import simulate

        return getattr(simulate, name)
    raise AttributeError(f"module 'failsight.monitor' has no attribute {name!r}")
