"""``failsight demo``: train a small CNN on the bundled digits, run every pillar, write one report.

Everything runs on the CPU from data shipped with scikit-learn (no download) or generated here. The
steps live in library functions; this module only wires them together and hands the report and the
JSON results to the report layer for writing.

Steps (``steps=``): ``reliability`` (calibration, calibrators, selective prediction on the digits CNN),
``robustness`` (corruptions and cue shifts, shift and OOD detection), ``defuse`` (a planted bug found
and fixed with an oracle labeller) and ``study`` (the shapes × colours ablation study, ``demo`` preset).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from failsight import __version__
from failsight._validate import FailsightInputError, check_int
from failsight.types import Result

__all__ = ["DEMO_STEPS", "DemoResult", "run_demo"]

REPORT_NAME = "report.html"
RESULTS_NAME = "results.json"
#: Steps of the demo, in report order.
DEMO_STEPS = ("reliability", "robustness", "defuse", "study")


@dataclasses.dataclass(frozen=True)
class DemoResult(Result):
    """Where the demo wrote its files, its headline numbers and each step's result and time."""

    out_dir: str
    report_path: str
    results_path: str
    test_accuracy: float
    seconds: float
    training_seconds: float
    step_seconds: dict[str, float]
    analysis: Any = dataclasses.field(repr=False, metadata={"exclude_json": True})
    history: Any = dataclasses.field(repr=False, metadata={"exclude_json": True})
    robustness: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    defuse: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    study: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})


def _check_steps(steps: Any) -> tuple[str, ...]:
    steps = tuple(steps)
    unknown = [s for s in steps if s not in DEMO_STEPS]
    if unknown or "reliability" not in steps:
        raise FailsightInputError(
            f"demo steps must include 'reliability' and come from {', '.join(DEMO_STEPS)}; got {', '.join(steps)}."
        )
    return tuple(s for s in DEMO_STEPS if s in steps)


def run_demo(
    out_dir: str | Path = "failsight-demo",
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    steps: Any = DEMO_STEPS,
    epochs: int = 30,
    width: int = 32,
    max_risk: float = 0.02,
    confidence: float = 0.95,
    n_boot: int = 1000,
    calibrators: Any = None,
    robustness_kwargs: dict[str, Any] | None = None,
    defuse_kwargs: dict[str, Any] | None = None,
    study_kwargs: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the demo and write ``<out_dir>/report.html`` and ``<out_dir>/results.json``.

    Loads the digits, splits them (stratified train / calibration / test, fixed ``seed``), trains a
    :class:`~failsight.models.SmallCNN` (``epochs``, ``width``), then runs each of ``steps``
    (see :data:`DEMO_STEPS`); ``*_kwargs`` pass options to a step (tests use them for small runs).
    Refuses to overwrite existing outputs unless ``force`` (checked before any work).
    """
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, predict_logits, train_classifier
    from failsight.reliability.analysis import analyze
    from failsight.report.html import Report, check_writable, write_json
    from failsight.report.sections import reliability_section

    t0 = time.perf_counter()
    seed = check_int(seed, "seed", minimum=0)
    steps = _check_steps(steps)
    out = Path(out_dir)
    report_path, results_path = out / REPORT_NAME, out / RESULTS_NAME
    check_writable([report_path, results_path], force)
    timings: dict[str, float] = {}

    data = split_digits(seed=seed, cal_size=0.25, test_size=0.25)
    model = SmallCNN(in_channels=1, n_classes=10, image_size=8, width=width, seed=seed)
    history = train_classifier(model, data.x_train, data.y_train, epochs=epochs, seed=seed, progress=progress,
                               num_threads=1)  # tiny model: one thread is fastest, and robust on busy machines
    timings["training"] = time.perf_counter() - t0

    t = time.perf_counter()
    logits_cal = predict_logits(model, data.x_cal)
    logits_test = predict_logits(model, data.x_test)
    analysis = analyze(data.y_test, logits_test, y_cal=data.y_cal, cal=logits_cal, is_logits=True,
                       max_risk=max_risk, confidence=confidence, n_boot=n_boot, calibrators=calibrators,
                       seed=seed)
    timings["reliability"] = time.perf_counter() - t

    sizes = data.sizes
    report = Report(
        title="failsight demo: a small CNN on handwritten digits",
        subtitle=("Where, why and how this classifier fails. Data: scikit-learn's bundled 8×8 digits "
                  "(1,797 real images, 10 classes), split into training, calibration and test parts; "
                  "the partial-failure study uses generated shapes × colours images."),
        meta={"data": f"digits 8×8 · train {sizes['train']} / cal {sizes['cal']} / test {sizes['test']}",
              "model": f"SmallCNN (width {width}), {epochs} epochs, {history.seconds:.0f} s",
              "seed": seed},
    )
    report.add(reliability_section(analysis))
    results: dict[str, Any] = {
        "failsight_version": __version__,
        "demo": {"seed": seed, "steps": steps, "epochs": epochs, "width": width, "max_risk": max_risk,
                 "confidence": confidence, "n_boot": n_boot},
        "data": {"name": "sklearn digits", "sizes": sizes, "split": data},
        "training": history,
        "reliability": analysis,
    }

    rob = None
    if "robustness" in steps:
        from failsight.robustness.analysis import analyze_robustness, synthetic_ood_images
        from failsight.robustness.report import robustness_section

        t = time.perf_counter()
        # OOD: generated shapes (grey, 8x8) and uniform noise; reference: the calibration split
        x_ood = synthetic_ood_images(len(data.y_test), image_size=8, channels=1, seed=seed)
        rob = analyze_robustness(model, data.x_test, data.y_test, severities=(1, 3, 5), x_reference=data.x_cal,
                                 y_reference=data.y_cal, x_ood=x_ood, seed=seed, num_threads=1, progress=progress,
                                 **(robustness_kwargs or {}))
        report.add(robustness_section(rob))
        results["robustness"] = rob
        timings["robustness"] = time.perf_counter() - t

    dfs = None
    if "defuse" in steps:
        from failsight.defuse.planted import run_planted_bug
        from failsight.defuse.report import defuse_section

        t = time.perf_counter()
        dfs = run_planted_bug(data, seed=seed, progress=progress, **(defuse_kwargs or {}))
        report.add(_planted_notes(defuse_section(
            dfs.result, labeler_note="Regions were labelled by an oracle (an ensemble of 3 CNNs trained on the "
            "correct labels), standing in for a person."), dfs))
        results["defuse"] = dfs
        timings["defuse"] = time.perf_counter() - t

    std = None
    if "study" in steps:
        from failsight.study import run_study
        from failsight.study.report import study_section

        t = time.perf_counter()
        opts = {"grid": "demo", **(study_kwargs or {})}
        std = run_study(opts.pop("grid"), progress=progress, **opts)
        report.add(study_section(std))
        results["study"] = std
        timings["study"] = time.perf_counter() - t

    results["timings"] = timings
    report.write(report_path, force=force)
    write_json(results_path, results, force=force)
    return DemoResult(
        out_dir=str(out), report_path=str(report_path), results_path=str(results_path),
        test_accuracy=analysis.accuracy, seconds=time.perf_counter() - t0, training_seconds=history.seconds,
        step_seconds=timings, analysis=analysis, history=history, robustness=rob, defuse=dfs, study=std,
    )


def _planted_notes(section: Any, run: Any) -> Any:
    """Add the planted bug's ground truth to the Defuse section: was it found, was it fixed."""
    from failsight.report.html import fmt_num

    section.intro = (
        f"Demo setup: a planted bug. {run.share_of_class:.0%} of the training images of class {run.true} (one "
        f"k-means sub-style) were relabelled as {run.wrong} before training a second CNN, which learned the bug. "
        "Defuse did not see which images were changed. " + section.intro)
    rank = f"#{run.planted_rank}" if run.planted_rank is not None else "not found"
    section.table(
        ["planted bug", "found as region", "region purity", "sub-style test acc. before → after",
         "rest of test before → after"],
        [[f"{run.true} → {run.wrong}", rank, fmt_num(run.region_purity, 3, pct=True),
          f"{fmt_num(run.sub_before, 3, pct=True)} → {fmt_num(run.sub_after, 3, pct=True)} (n={run.n_sub_test})",
          f"{fmt_num(run.rest_before, 3, pct=True)} → {fmt_num(run.rest_after, 3, pct=True)}"]],
        caption="Ground truth of the planted bug: accuracy on the real test images of the relabelled sub-style "
                "(never seen by Defuse) and on all other test images, before and after the correction.")
    return section
