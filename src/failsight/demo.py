"""``failsight demo``: train a small CNN on the bundled digits, audit it with every pillar, write one report.

Everything runs on the CPU from data shipped with scikit-learn (no download) or generated here. The
steps live in library functions; this module only wires them together and hands the report and the
JSON results to the report layer for writing.

Steps (``steps=``): the audit's ``reliability`` (calibration, calibrators, selective prediction),
``robustness`` (corruptions and cue shifts, shift and OOD detection), ``adversarial`` (APGD-CE robust accuracy
over an ε grid), ``defuse`` (regions of the real CNN to
label, plus a planted bug found and fixed with an oracle labeller) and ``slices`` (class, ink and width
slices against a half-width baseline), then ``study`` (the shapes × colours ablation study, ``demo`` preset).
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
#: Steps of the demo, in report order: the five audit steps, then the shapes × colours study.
DEMO_STEPS = ("reliability", "robustness", "adversarial", "defuse", "slices", "study")


@dataclasses.dataclass(frozen=True)
class DemoResult(Result):
    """Where the demo wrote its files, its headline numbers and each step's result and time.

    ``audit`` is the :class:`~failsight.auditing.AuditResult` of the digits CNN (``analysis`` its reliability
    part, kept for callers of earlier versions); ``defuse`` the planted-bug run; ``study`` the shapes × colours
    study; ``run_id`` the run's id in the run store (``None`` when not recorded)."""

    out_dir: str
    report_path: str
    results_path: str
    test_accuracy: float
    seconds: float
    training_seconds: float
    step_seconds: dict[str, float]
    run_id: Any = None
    db: str | None = None
    audit: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    analysis: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    history: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
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


def digit_groups(x: Any, x_reference: Any) -> dict[str, Any]:
    """Two natural slicings of digit images ``(n, 1, s, s)`` (8×8 digits, 28×28 MNIST): ``ink`` (total intensity: light / medium /
    heavy strokes) and ``width`` (columns holding ink: narrow / medium / wide), cut at the terciles of
    ``x_reference`` (the training images), so slices mean the same on every split."""
    import numpy as np

    def feats(a: Any) -> tuple[Any, Any]:
        a = np.asarray(a, dtype=np.float32)
        a = a.reshape(len(a), -1, a.shape[-2], a.shape[-1]).sum(axis=1)
        return a.sum(axis=(1, 2)), (a.max(axis=1) > 0.25).sum(axis=1)

    ink, wid = feats(x)
    ink_r, wid_r = feats(x_reference)
    out = {}
    for name, v, ref, labels in (("ink", ink, ink_r, ("light", "medium", "heavy")),
                                 ("width", wid, wid_r, ("narrow", "medium", "wide"))):
        cuts = np.quantile(ref, [1 / 3, 2 / 3])
        out[name] = np.asarray(labels)[np.searchsorted(cuts, v, side="right")]
    return out


def run_demo(
    out_dir: str | Path = "failsight-demo",
    *,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    steps: Any = DEMO_STEPS,
    epochs: int | None = None,
    width: int | None = None,
    mnist: str | Path | None = None,
    mnist_train: int | None = None,
    max_risk: float = 0.02,
    confidence: float = 0.95,
    n_boot: int = 1000,
    calibrators: Any = None,
    robustness_kwargs: dict[str, Any] | None = None,
    audit_defuse_kwargs: dict[str, Any] | None = None,
    defuse_kwargs: dict[str, Any] | None = None,
    study_kwargs: dict[str, Any] | None = None,
    db: str | None = None,
    record: bool = True,
) -> DemoResult:
    """Audit a small CNN on the bundled digits with every pillar and write ``<out_dir>/report.html``,
    ``<out_dir>/results.json`` and ``<out_dir>/regions/`` (the Defuse regions to label).

    Loads the digits, splits them (stratified train / calibration / test, fixed ``seed``), trains a
    :class:`~failsight.models.SmallCNN` (``epochs``, ``width``) and a half-width baseline, then runs
    :func:`failsight.audit` on the CNN (reliability, robustness, Defuse on the real model, per-slice accuracy by
    class, ink and width against the baseline), a Defuse run on a planted bug (found, labelled by an oracle,
    fixed) and the shapes × colours study (``steps`` picks among :data:`DEMO_STEPS`). ``*_kwargs`` pass options
    to a step (tests use them for small runs). The run is recorded in ``db`` (default ``failsight-runs.db``
    beside ``out_dir``) unless ``record`` is false. Refuses to overwrite existing outputs unless ``force``
    (checked before any work). Uses every core (:func:`failsight._threads.auto_threads`;
    ``FAILSIGHT_NUM_THREADS=1`` keeps it on one thread, e.g. on a busy shared machine).

    ``mnist``: a folder with the four MNIST IDX files the user has (``train-images-idx3-ubyte[.gz]``...): the
    same demo on real 28×28 digits (55k train / 5k calibration / 10k test, or ``mnist_train`` training images),
    a width-16 CNN trained for 2 epochs by default, the generator trained by budget, and the planted bug a
    sub-style of 4 read as 9. Default ``epochs``/``width``: 30/32 on the digits.
    """
    from failsight._threads import auto_threads, limit_threads

    with limit_threads(auto_threads()):
        from failsight.auditing import audit
        from failsight.auditing.core import default_store
        from failsight.auditing.report import audit_report
        from failsight.datasets.digits import split_digits
        from failsight.models.cnn import SmallCNN, train_classifier
        from failsight.report.html import check_writable

        t0 = time.perf_counter()
        seed = check_int(seed, "seed", minimum=0)
        steps = _check_steps(steps)
        out = Path(out_dir)
        report_path, results_path = out / REPORT_NAME, out / RESULTS_NAME
        check_writable([report_path, results_path], force)
        timings: dict[str, float] = {}

        if mnist is None:
            data = split_digits(seed=seed, cal_size=0.25, test_size=0.25)
            epochs = 30 if epochs is None else epochs
            width = 32 if width is None else width
        else:
            from failsight.datasets.mnist import split_mnist

            data = split_mnist(mnist, n_train=mnist_train, seed=seed)
            epochs = 2 if epochs is None else epochs
            width = 16 if width is None else width
        epochs, width = check_int(epochs, "epochs"), check_int(width, "width")
        size = int(data.x_train.shape[-1])
        model = SmallCNN(in_channels=1, n_classes=10, image_size=size, width=width, seed=seed)
        history = train_classifier(model, data.x_train, data.y_train, epochs=epochs, seed=seed, progress=progress)
        baseline = None
        if "slices" in steps:  # "yesterday's model": half the width, same data and recipe
            baseline = SmallCNN(in_channels=1, n_classes=10, image_size=size, width=max(4, width // 2),
                                seed=seed + 1)
            train_classifier(baseline, data.x_train, data.y_train, epochs=epochs, seed=seed + 1, progress=progress)
        timings["training"] = time.perf_counter() - t0

        t = time.perf_counter()
        res = audit(model, (data.x_test, data.y_test), calibration=(data.x_cal, data.y_cal),
                    train=(data.x_train, data.y_train), groups=digit_groups(data.x_test, data.x_train),
                    baseline=baseline, steps=[s for s in steps if s != "study"], seed=seed, max_risk=max_risk,
                    confidence=confidence, n_boot=n_boot, calibrators=calibrators,
                    robustness_options=robustness_kwargs,
                    defuse_options=audit_defuse_kwargs, progress=progress)
        timings.update({s.step: s.seconds for s in res.steps if s.ran})
        timings["audit"] = time.perf_counter() - t

        sizes = data.sizes
        data_name = "scikit-learn's bundled 8×8 digits (1,797 real images, 10 classes)" if mnist is None else \
            f"MNIST from {mnist} ({sum(sizes.values()):,} real 28×28 images, 10 classes)"
        report = audit_report(
            res, title="failsight demo: a small CNN on handwritten digits" + ("" if mnist is None else " (MNIST)"),
            labeler_note=("Nobody labelled these regions: the demo exports them to regions/labels.csv for you. "
                          "The planted-bug section below shows the full loop with an oracle labeller."))
        report.subtitle = (f"Where, why and how this classifier fails. Data: {data_name}, split into training, "
                           "calibration and test parts; the partial-failure study uses generated shapes × colours "
                           "images.")
        report.meta = {"data": f"{'digits 8×8' if mnist is None else 'MNIST 28×28'} · train {sizes['train']} / cal "
                               f"{sizes['cal']} / test {sizes['test']}",
                       "model": f"SmallCNN (width {width}), {epochs} epochs, {history.seconds:.0f} s",
                       "baseline": f"SmallCNN (width {max(4, width // 2)})" if baseline is not None else "none",
                       "seed": seed}
        extra: dict[str, Any] = {
            "failsight_version": __version__,
            "demo": {"seed": seed, "steps": steps, "epochs": epochs, "width": width, "max_risk": max_risk,
                     "confidence": confidence, "n_boot": n_boot},
            "data": {"name": "sklearn digits" if mnist is None else f"MNIST ({mnist})", "sizes": sizes, "split": data},
            "training": history,
        }

        dfs = None
        if "defuse" in steps:
            from failsight.defuse.planted import run_planted_bug
            from failsight.defuse.report import defuse_section

            t = time.perf_counter()
            planted_opts: dict[str, Any] = {} if mnist is None else {
                "true": 4, "wrong": 9, "cnn_epochs": epochs, "cnn_width": width, "vae_epochs": None,
                "share": (0.10, 0.30)}
            dfs = run_planted_bug(data, seed=seed, progress=progress, **{**planted_opts, **(defuse_kwargs or {})})
            report.add(_planted_notes(defuse_section(
                dfs.result, title="Defuse on a planted bug: found, labelled, fixed", section_id="defuse-planted",
                labeler_note="Regions were labelled by an oracle (an ensemble of CNNs trained on the correct labels), "
                "standing in for a person."), dfs))
            extra["defuse_planted"] = dfs
            timings["defuse_planted"] = time.perf_counter() - t

        std = None
        if "study" in steps:
            from failsight.study import run_study
            from failsight.study.report import study_section

            t = time.perf_counter()
            opts = {"grid": "demo", **(study_kwargs or {})}
            std = run_study(opts.pop("grid"), progress=progress, **opts)
            report.add(study_section(std))
            extra["study"] = std
            timings["study"] = time.perf_counter() - t

        extra["timings"] = timings
        paths = res.write(out, force=force, report=report, extra=extra)
        run = None
        store = db or default_store(out)
        if record:
            run = res.record(store, name=f"demo seed {seed}", report_path=str(paths["report"].resolve()))
        return DemoResult(
            out_dir=str(out), report_path=str(report_path), results_path=str(results_path),
            test_accuracy=res.reliability.accuracy, seconds=time.perf_counter() - t0, training_seconds=history.seconds,
            step_seconds=timings, run_id=None if run is None else run.id, db=store if record else None, audit=res,
            analysis=res.reliability, history=history, robustness=res.robustness, defuse=dfs, study=std,
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
        ["bug", "found as", "purity", "sub-style acc. (test)", "rest acc. (test)"],
        [[f"{run.true} → {run.wrong}", rank, fmt_num(run.region_purity, 3, pct=True),
          f"{fmt_num(run.sub_before, 3, pct=True)} → {fmt_num(run.sub_after, 3, pct=True)} (n={run.n_sub_test})",
          f"{fmt_num(run.rest_before, 3, pct=True)} → {fmt_num(run.rest_after, 3, pct=True)}"]],
        caption="Ground truth of the planted bug: accuracy on the real test images of the relabelled sub-style "
                "(never seen by Defuse) and on all other test images, before and after the correction.")
    c = run.check
    if c is not None:
        changed = [r for r in c.rows if r.verdict in ("improved", "regressed")]
        verdict = ("PARTIAL FAILURE: the fix regressed " + ", ".join(f"{r.slicing} = {r.slice}" for r in c.regressed)
                   if c.partial_failure else "no slice regressed significantly")
        section.heading("Verification, slice by slice")
        section.text(f"Corrected vs buggy model on the real test set (exact McNemar, Holm-corrected): {verdict}.")
        if changed:
            section.table(["slice", "n", "buggy → corrected", "change (pts)", "p (adjusted)", "verdict"],
                          [[f"{r.slicing} = {r.slice}", r.n, f"{r.baseline:.1%} → {r.candidate:.1%}",
                            f"{r.delta * 100:+.1f}", f"{r.p_adjusted:.2g}", r.verdict] for r in changed],
                          caption="Slices whose accuracy changed significantly after the correction.")
    return section
