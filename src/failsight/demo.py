"""``failsight demo``: train a small CNN on the bundled digits, analyse it, write the report.

Everything runs on the CPU from data shipped with scikit-learn (no download). The steps live in
library functions; this module only wires them together and hands the report and the JSON results
to the report layer for writing.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from failsight import __version__
from failsight._validate import check_int
from failsight.types import Result

__all__ = ["DemoResult", "run_demo"]

REPORT_NAME = "report.html"
RESULTS_NAME = "results.json"


@dataclasses.dataclass(frozen=True)
class DemoResult(Result):
    """Where the demo wrote its files and its headline numbers."""

    out_dir: str
    report_path: str
    results_path: str
    test_accuracy: float
    seconds: float
    training_seconds: float
    analysis: Any = dataclasses.field(repr=False, metadata={"exclude_json": True})
    history: Any = dataclasses.field(repr=False, metadata={"exclude_json": True})
    robustness: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    robustness_seconds: float = 0.0


def run_demo(
    out_dir: str | Path = "failsight-demo",
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    epochs: int = 30,
    width: int = 32,
    max_risk: float = 0.02,
    confidence: float = 0.95,
    n_boot: int = 1000,
    calibrators: Any = None,
    robustness: bool = True,
    robustness_kwargs: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the demo and write ``<out_dir>/report.html`` and ``<out_dir>/results.json``.

    Loads the digits, splits them (stratified train / calibration / test, fixed ``seed``), trains a
    :class:`~failsight.models.SmallCNN` (``epochs``, ``width``; the defaults take ~15 s on one core),
    runs :func:`~failsight.reliability.analysis.analyze` on the test logits with the calibration split,
    and writes the report. Refuses to overwrite existing outputs unless ``force`` (checked before any
    work). Smaller ``epochs``/``width``/``n_boot`` make a quick smoke run for tests.
    """
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, predict_logits, train_classifier
    from failsight.reliability.analysis import analyze
    from failsight.report.html import Report, check_writable, write_json
    from failsight.report.sections import reliability_section

    t0 = time.perf_counter()
    seed = check_int(seed, "seed", minimum=0)
    out = Path(out_dir)
    report_path, results_path = out / REPORT_NAME, out / RESULTS_NAME
    check_writable([report_path, results_path], force)

    data = split_digits(seed=seed, cal_size=0.25, test_size=0.25)
    model = SmallCNN(in_channels=1, n_classes=10, image_size=8, width=width, seed=seed)
    history = train_classifier(model, data.x_train, data.y_train, epochs=epochs, seed=seed, progress=progress,
                               num_threads=1)  # tiny model: one thread is fastest, and robust on busy machines
    logits_cal = predict_logits(model, data.x_cal)
    logits_test = predict_logits(model, data.x_test)
    analysis = analyze(data.y_test, logits_test, y_cal=data.y_cal, cal=logits_cal, is_logits=True,
                       max_risk=max_risk, confidence=confidence, n_boot=n_boot, calibrators=calibrators,
                       seed=seed)

    rob = None
    t_rob = time.perf_counter()
    if robustness:
        from failsight.robustness.analysis import analyze_robustness, synthetic_ood_images

        # OOD: generated shapes (grey, 8x8) and uniform noise; reference: the calibration split
        x_ood = synthetic_ood_images(len(data.y_test), image_size=8, channels=1, seed=seed)
        rob = analyze_robustness(model, data.x_test, data.y_test, severities=(1, 3, 5), x_reference=data.x_cal,
                                 y_reference=data.y_cal, x_ood=x_ood, seed=seed, num_threads=1, progress=progress,
                                 **(robustness_kwargs or {}))
    robustness_seconds = time.perf_counter() - t_rob

    sizes = data.sizes
    report = Report(
        title="failsight demo: a small CNN on handwritten digits",
        subtitle=("Where, why and how this classifier fails. Data: scikit-learn's bundled 8×8 digits "
                  "(1,797 real images, 10 classes), split into training, calibration and test parts."),
        meta={"data": f"digits 8×8 · train {sizes['train']} / cal {sizes['cal']} / test {sizes['test']}",
              "model": f"SmallCNN (width {width}), {epochs} epochs, {history.seconds:.0f} s",
              "seed": seed},
    )
    report.add(reliability_section(analysis))
    if rob is not None:
        from failsight.robustness.report import robustness_section

        report.add(robustness_section(rob))
    results = {
        "failsight_version": __version__,
        "demo": {"seed": seed, "epochs": epochs, "width": width, "max_risk": max_risk,
                 "confidence": confidence, "n_boot": n_boot},
        "data": {"name": "sklearn digits", "sizes": sizes, "split": data},
        "training": history,
        "reliability": analysis,
        "robustness": rob,
    }
    report.write(report_path, force=force)
    write_json(results_path, results, force=force)
    return DemoResult(
        out_dir=str(out), report_path=str(report_path), results_path=str(results_path),
        test_accuracy=analysis.accuracy, seconds=time.perf_counter() - t0, training_seconds=history.seconds,
        analysis=analysis, history=history, robustness=rob, robustness_seconds=robustness_seconds,
    )
