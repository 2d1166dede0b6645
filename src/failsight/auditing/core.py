"""``failsight.audit``: every pillar over one model and its data, in one result.

The audit composes the pillars; it holds no analysis of its own. It wraps the model in an adapter
(:func:`failsight.models.adapters.as_model`), reads the data (:func:`failsight.datasets.io.load_data`), runs
each requested step whose inputs are present, and records for each step whether it ran and, when not,
why — a step never disappears silently. Findings from every pillar are ranked into a short list
(:mod:`failsight.auditing.findings`).

Nothing here writes files or prints; :meth:`AuditResult.write` (and ``to_html`` / ``to_json``) are the
explicit writers, used by the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_fraction, check_int
from failsight.types import Result, to_jsonable

__all__ = ["AUDIT_STEPS", "AuditResult", "Finding", "StepStatus", "audit", "default_store"]

#: Steps of an audit, in report order.
AUDIT_STEPS = ("reliability", "robustness", "adversarial", "defuse", "slices")
REPORT_NAME = "report.html"
RESULTS_NAME = "results.json"
REGIONS_DIR = "regions"
STORE_NAME = "failsight-runs.db"


def default_store(out_dir: str | Path) -> str:
    """Where audits are recorded by default: ``$FAILSIGHT_DB`` if set, else ``failsight-runs.db`` in the parent
    of the output folder (so the runs of several output folders side by side share one history)."""
    import os

    return os.environ.get("FAILSIGHT_DB") or str(Path(out_dir).resolve().parent / STORE_NAME)


@dataclasses.dataclass(frozen=True)
class StepStatus(Result):
    """Whether one audit step ran: ``status`` is ``"ran"``, ``"skipped"`` (the inputs it needs were not
    given, or the model cannot do it; ``reason`` says which) or ``"not requested"``."""

    step: str
    status: str
    seconds: float = 0.0
    reason: str | None = None

    @property
    def ran(self) -> bool:
        return self.status == "ran"


@dataclasses.dataclass(frozen=True)
class Finding(Result):
    """One thing the audit found, in a sentence. ``severity`` ranks findings across pillars: roughly the
    share of predictions at stake (an ECE, an accuracy drop, a slice's regression), see
    :mod:`failsight.auditing.findings` for each rule. ``fix``: the finding reports the before/after of a fix
    the audit applied (a calibrator, a Defuse fine-tune); the summary always shows it, whatever its rank."""

    pillar: str
    severity: float
    text: str
    fix: bool = False


@dataclasses.dataclass(frozen=True)
class AuditResult(Result):
    """Everything one :func:`audit` produced.

    ``model``: the adapter's description (kind, name, output, classes, fingerprint). ``data``: one summary per
    split given (source, size, shape, fingerprint). ``steps``: a :class:`StepStatus` per step, in order.
    ``findings``: ranked worst first. ``metrics``: flat ``"pillar.metric" -> value`` (what the run store keeps).
    ``conformal``: prediction sets with a coverage guarantee (part of the reliability step, a
    :class:`~failsight.reliability.ConformalAnalysis`); ``adversarial``: the robust-accuracy-vs-ε curve (a
    :class:`~failsight.robustness.RobustAccuracyCurve`).
    ``reliability`` / ``robustness`` / ``defuse`` / ``slices`` / ``comparison``: the pillars' own results
    (``None`` when the step did not run; ``comparison`` compares against ``baseline``; ``defuse_check`` compares the
    Defuse-corrected model with the original slice by slice). The arrays behind them (test labels,
    predictions, groups), the regions and the corrected model are kept out of JSON.
    """

    model: dict[str, Any]
    data: dict[str, Any]
    config: dict[str, Any]
    steps: tuple[StepStatus, ...]
    findings: tuple[Finding, ...]
    metrics: dict[str, float | None]
    reliability: Any = None
    robustness: Any = None
    defuse: Any = None
    slices: Any = None
    comparison: Any = None
    defuse_check: Any = None
    conformal: Any = None
    adversarial: Any = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    y_test: np.ndarray | None = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    pred_test: np.ndarray | None = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    groups: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False,
                                                             metadata={"exclude_json": True})
    regions: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    generator: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})
    fixed_model: Any = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})

    # ------------------------------------------------------------------------------------- reading
    def step(self, name: str) -> StepStatus:
        """The status of step ``name``."""
        for s in self.steps:
            if s.step == name:
                return s
        raise KeyError(name)

    @property
    def skipped(self) -> tuple[StepStatus, ...]:
        """Steps that were requested but could not run (each with its reason)."""
        return tuple(s for s in self.steps if s.status == "skipped")

    def summary(self, n: int = 5) -> str:
        """A short plain-text summary: the headline numbers, then the ``n`` findings that matter most, worst
        first, then the outcome of every fix the audit applied that ranks below them, then the steps that were
        skipped and why."""
        acc = self.metrics.get("reliability.accuracy")
        head = f"failsight audit of {self.model.get('name', 'the model')}"
        test = self.data.get("test", {})
        if test:
            head += f" on {test.get('name', 'the test set')} ({test.get('n', '?')} samples)"
        if acc is not None:
            head += f": accuracy {acc:.1%}"
        lines = [head + "."]
        lines += [f"{i}. {f.text}" for i, f in enumerate(self.findings[:n], start=1)]
        lines += [f"fix applied: {f.text}" for f in self.findings[n:] if f.fix]
        if not self.findings:
            lines.append("No finding stands out.")
        lines += [f"skipped {s.step}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------- writing
    def to_html(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the self-contained HTML report to ``path`` (refuses to overwrite unless ``force``)."""
        from failsight.auditing.report import audit_report

        return audit_report(self).write(path, force=force)

    def to_json(self, path: str | Path | None = None, *, force: bool = False, **kwargs: Any) -> Any:
        """Without ``path``: the JSON string (like every result). With ``path``: write it there (refuses to
        overwrite unless ``force``) and return the path."""
        if path is None:
            return super().to_json(**kwargs)
        from failsight.report.html import write_json

        return write_json(path, self.to_dict(), force=force)

    def write(self, out_dir: str | Path, *, force: bool = False, report: Any = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write ``report.html``, ``results.json`` and, when Defuse found regions, ``regions/`` (one grid per
        region, ``labels.csv`` to fill in and ``regions.npz`` so a later ``labels=`` run gets the same
        regions back) and ``generator.pt``; plus ``fixed_model.pt`` after a correction. Checks every target
        before writing anything; refuses to overwrite unless ``force``. ``report``: a report built from this
        result with extra sections (default :func:`~failsight.auditing.report.audit_report`); ``extra``: more
        entries for ``results.json`` (the audit itself goes under ``"audit"``)."""
        from failsight._io import check_output_dir
        from failsight.report.html import check_writable

        out = check_output_dir(out_dir, "out_dir")
        paths = {"report": out / REPORT_NAME, "results": out / RESULTS_NAME}
        if self.regions is not None and len(self.regions) and self.defuse is not None and self.defuse.labels is None:
            paths["labels"] = out / REGIONS_DIR / "labels.csv"
            paths["regions"] = out / REGIONS_DIR / "regions.npz"
        if self.generator is not None:
            from failsight.defuse.vae import VAE

            if isinstance(self.generator, VAE):  # a generator the user passed in is theirs to save
                paths["generator"] = out / "generator.pt"
        if self.fixed_model is not None:
            paths["fixed_model"] = out / "fixed_model.pt"
        check_writable(list(paths.values()), force)
        # render everything before the first file is written, so a failure here leaves the folder untouched
        if report is None:
            from failsight.auditing.report import audit_report

            report = audit_report(self)
        html = report.render()
        results_text = json.dumps(to_jsonable(self.to_dict() if extra is None else {**dict(extra), "audit": self.to_dict()}),
                                  indent=2, allow_nan=False) + "\n"
        out.mkdir(parents=True, exist_ok=True)
        # every file is written atomically; the report goes last, so its presence means the folder is complete
        if "labels" in paths:
            from failsight.defuse import FileLabeler, save_regions

            FileLabeler(out / REGIONS_DIR).export(self.regions, self.defuse.class_names, force=force)
            save_regions(self.regions, paths["regions"], overwrite=force)
        if "generator" in paths:
            self.generator.save(paths["generator"], overwrite=force)
        if "fixed_model" in paths:
            import torch

            from failsight._io import atomic_open

            with atomic_open(paths["fixed_model"], "wb", force=force) as fh:
                torch.save(self.fixed_model, fh)
        from failsight._io import atomic_write

        atomic_write(paths["results"], results_text, force=force)
        atomic_write(paths["report"], html, force=force)  # last: a report means a complete folder
        return paths

    def record(self, store: Any, *, name: str | None = None, report_path: str | None = None,
               allow_foreign: bool = False) -> Any:
        """Record this audit in a run store (a :class:`~failsight.runs.RunStore`, a SQLite path or any
        SQLAlchemy URL): model and data identity, config, every metric, and the test predictions with their
        groups so two runs can be compared slice by slice. Returns the stored run record. ``allow_foreign``:
        accept a database that holds other applications' tables (see :class:`~failsight.runs.RunStore`).
        Call it after :meth:`write`, so a recorded run always has its files."""
        from failsight import __version__
        from failsight.runs import RunStore

        own = not isinstance(store, RunStore)
        st = RunStore(store, allow_foreign=allow_foreign) if own else store
        try:
            preds = None
            if self.y_test is not None and self.pred_test is not None:
                preds = {"y": self.y_test, "pred": self.pred_test, "groups": dict(self.groups or {})}
            test = self.data.get("test", {})
            return st.record(model_id=str(self.model.get("fingerprint", "")), model_name=str(self.model.get("name", "")),
                             data_id=str(test.get("fingerprint", "")), data_name=str(test.get("name", "")),
                             config=dict(self.config), metrics=dict(self.metrics), predictions=preds, name=name,
                             report_path=report_path, failsight_version=__version__)
        finally:
            if own:
                st.close()


# ==================================================================================== inputs


def _as_data(src: Any, what: str, *, require_labels: bool = True) -> Any:
    """A :class:`~failsight.datasets.io.LabelledData` from a path, an ``(x, y)`` pair, a dataset or one."""
    from failsight.datasets.io import LabelledData, load_data

    if src is None or isinstance(src, LabelledData):
        return src
    if isinstance(src, tuple) and len(src) == 2:
        return load_data(src[0], src[1], require_labels=require_labels, what=what)
    return load_data(src, require_labels=require_labels, what=what)


def _data_summary(d: Any, name: str) -> dict[str, Any]:
    return {"name": Path(d.path).name if d.path else f"{name} ({d.source})", "source": d.source, "path": d.path,
            "n": len(d.x), "shape": list(d.x.shape[1:]), "kind": d.kind, "fingerprint": d.fingerprint,
            "groups": sorted(d.groups) if d.groups else [], "notes": list(d.notes)}


def _check_steps(steps: Any) -> tuple[str, ...]:
    if steps is None:
        return AUDIT_STEPS
    steps = (steps,) if isinstance(steps, str) else tuple(steps)
    unknown = [s for s in steps if s not in AUDIT_STEPS]
    if unknown or not steps:
        raise FailsightInputError(
            f"unknown audit step(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
            f"{', '.join(AUDIT_STEPS)}."
        )
    return tuple(s for s in AUDIT_STEPS if s in steps)


def _merge_groups(test: Any, groups: Any, y: np.ndarray, class_names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Slicings for the slices step: the true class, then the test file's groups, then ``groups=``."""
    from failsight._validate import check_consistent_length

    names = list(class_names) if class_names is not None else None
    cls = np.asarray([names[i] for i in y]) if names and len(names) > int(y.max()) else y
    out: dict[str, np.ndarray] = {"class": cls}
    for source in (test.groups, groups):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            if isinstance(source, (str, Path)):
                from failsight.slices import load_groups

                source = load_groups(source, n_samples=len(y))
            else:
                source = {"group": np.asarray(source)}
        for k, v in source.items():
            v = np.asarray(v)
            check_consistent_length(y, v, names=("test labels", f"group {k!r}"))
            out[str(k)] = v
    return out


def _torch_module(adapter: Any) -> Any:
    """The ``nn.Module`` behind a torch adapter (scripted or not), else ``None``."""
    if adapter.kind not in ("torch", "torchscript"):
        return None
    return adapter.model


# ==================================================================================== audit


def audit(
    model: Any,
    test: Any,
    *,
    calibration: Any = None,
    train: Any = None,
    groups: Any = None,
    baseline: Any = None,
    ood: Any = None,
    steps: Sequence[str] | str | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    max_risk: float = 0.02,
    confidence: float = 0.95,
    n_boot: int = 1000,
    calibrators: Any = None,
    shifts: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 3, 5),
    generator: Any = None,
    labels: Any = None,
    regions: Any = None,
    reliability_options: Mapping[str, Any] | None = None,
    robustness_options: Mapping[str, Any] | None = None,
    defuse_options: Mapping[str, Any] | None = None,
    slices_options: Mapping[str, Any] | None = None,
    conformal_options: Mapping[str, Any] | None = None,
    adversarial_options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    num_threads: int | str | None = "auto",
    progress: bool = True,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> AuditResult:
    """Audit ``model`` on labelled ``test`` data with every pillar that the inputs allow.

    Parameters
    ----------
    model : a torch ``nn.Module`` (or TorchScript module), an sklearn estimator with ``predict_proba``, any
        callable mapping a batch to logits or probabilities ``(b, k)``, a path to a saved model, or an adapter
        (:func:`failsight.models.adapters.as_model`).
    test : labelled test data: a path (``.npz``, IDX, image folder), ``(x, y)`` arrays, a torch dataset or a
        :class:`~failsight.datasets.io.LabelledData`. Images ``(n, C, H, W)`` in [0, 1] or features ``(n, d)``.
    calibration : held-out labelled data (same forms): fits the calibrators, selects the risk threshold, seeds
        Defuse's search and is the in-distribution reference of the shift and OOD detectors.
    train : the model's training data: Defuse trains its generator on it and fine-tunes on it when ``labels``
        are given. Without it Defuse is skipped.
    groups : extra slicings of the test set: a dict ``{name: (n,) labels}``, an ``(n,)`` array, or a CSV/.npz
        path; the test file's own ``groups`` and the true class are always used.
    baseline : another model (same forms as ``model``) to compare with slice by slice (McNemar, Holm): an
        improvement that hides a regression on some slice is flagged.
    ood : out-of-distribution images for the OOD table (default: generated shapes and noise of the test size).
    steps : subset of :data:`AUDIT_STEPS` (default all). Steps whose inputs are missing are skipped with the
        reason recorded in the result and the report.
    class_names : names of the classes (default: from the data, e.g. an image folder's sub-folders, else indices).
    max_risk, confidence : the selective-prediction requirement (error on answered inputs ≤ ``max_risk`` with
        probability ``confidence``); also the level of intervals.
    generator : a trained Defuse generator (object with ``encode``/``decode``, or a path saved by ``VAE.save``)
        instead of training one on ``train``.
    labels : one label per Defuse region, to correct the model: a ``labels.csv`` path filled in after a first
        audit, a dict ``{region id: class or None}``, or a labeller ``labeler(regions, class_names)``.
    regions : the regions those labels were written for (a ``regions.npz`` from a first audit's output, or a
        region list), so ids match; default: the regions found in this run (same seed → same regions).
    *_options : extra keyword arguments for each pillar's analysis function. ``conformal_options``: ``alpha``
        (default 0.1), ``method`` (``"aps"``), ``randomized`` (True), ``class_conditional``, ``n_shift`` (test images
        per shift for coverage under shift, default 500), ``k_reg``/``lam``. ``adversarial_options``: ``eps``
        (default L∞ 0.01, 0.02, 0.05, 0.1; L2 those times √(pixels)), ``norm``, ``method`` (``"apgd-ce"``), ``steps`` (10), ``restarts``,
        ``n`` (test images attacked, default 500), ``sanity_n`` (100), ``bounds`` ((0, 1)). Defaults keep the audit
        cheap: a subset of the test images and few steps (the report says so).
    num_threads : torch/BLAS threads of this process during the audit; ``"auto"``: see
        :func:`failsight._threads.auto_threads` (the shift sweep's workers set their own).
    workers, backend, ray_address : where the robustness sweep runs (:mod:`failsight.engine`): ``workers``
        local processes (default every core), or ``backend="ray"`` on the cluster at ``ray_address`` /
        ``RAY_ADDRESS`` (a local one without). Results do not depend on them.
    """
    args = dict(locals())  # every argument, passed on to _audit
    from failsight._threads import auto_threads, limit_threads

    test_d = _as_data(args.pop("test"), "test")
    threads = num_threads if num_threads != "auto" else auto_threads(int(np.prod(test_d.x.shape[1:])))
    engine = {k: args.pop(k) for k in ("workers", "backend", "ray_address")}
    args["robustness_options"] = {**engine, **(robustness_options or {})}
    with limit_threads(threads):
        return _audit(test_d=test_d, **{k: v for k, v in args.items() if k != "num_threads"})


def _audit(*, model: Any, test_d: Any, calibration: Any, train: Any, groups: Any, baseline: Any, ood: Any,
           steps: Any, seed: int, class_names: Any, max_risk: float, confidence: float, n_boot: int,
           calibrators: Any, shifts: Any, severities: Sequence[int], generator: Any, labels: Any, regions: Any,
           reliability_options: Any, robustness_options: Any, defuse_options: Any, slices_options: Any,
           conformal_options: Any, adversarial_options: Any, batch_size: int | None, progress: bool) -> AuditResult:
    from failsight.models.adapters import as_model

    t0 = time.perf_counter()
    seed = check_int(seed, "seed", minimum=0)
    max_risk = check_fraction(max_risk, "max_risk")
    steps = _check_steps(steps)
    adapter = as_model(model)
    if labels is not None and "defuse" in steps and adapter.trainable_module is None:
        raise FailsightInputError(
            f"labels fine-tune the model, but a {adapter.kind} model cannot be fine-tuned here; pass the torch "
            "nn.Module itself (saved with torch.save(model, path)) to correct it."
        )
    cal_d = _as_data(calibration, "calibration")
    train_d = _as_data(train, "train")
    ood_d = _as_data(ood, "ood", require_labels=False)
    base = as_model(baseline) if baseline is not None else None
    for name, d in (("calibration", cal_d), ("train", train_d)):
        if d is not None and d.x.shape[1:] != test_d.x.shape[1:]:
            raise FailsightInputError(
                f"{name} inputs have shape {tuple(d.x.shape[1:])} but test inputs {tuple(test_d.x.shape[1:])}; "
                "all splits must share one layout."
            )
    names = tuple(class_names) if class_names is not None else (test_d.class_names or None)
    classes = adapter.describe().get("classes")
    odd_classes = classes is not None and [str(c) for c in classes] != [str(i) for i in range(len(classes))]
    if odd_classes and names is None:
        names = tuple(str(c) for c in classes)

    data = {"test": _data_summary(test_d, "test")}
    for name, d in (("calibration", cal_d), ("train", train_d), ("ood", ood_d)):
        if d is not None:
            data[name] = _data_summary(d, name)
    config = {"steps": list(steps), "seed": seed, "max_risk": max_risk, "confidence": confidence,
              "n_boot": n_boot, "severities": list(severities), "shifts": None if shifts is None else list(shifts),
              "baseline": None, "labels_given": labels is not None}
    status: dict[str, StepStatus] = {}
    notes: list[str] = []
    if odd_classes:
        notes.append(f"The model's classes_ are {list(classes)[:10]}: label i of the data is read as the model's "
                     f"i-th class ({classes[0]!r} for 0); relabel the data if it holds the class values instead.")

    # predictions -------------------------------------------------------------------------------------
    out_test = adapter.predict(test_d.x, batch_size=batch_size, progress=progress)
    out_cal = adapter.predict(cal_d.x, batch_size=batch_size, progress=progress) if cal_d is not None else None
    is_logits = adapter.output == "logits"
    k = out_test.shape[1]
    y_test = test_d.y
    if int(y_test.max()) >= k:
        raise FailsightInputError(
            f"test labels go up to {int(y_test.max())} but the model gives {k} outputs per input; labels must be "
            f"class indices 0..{k - 1} in the model's output order."
        )
    if names is not None and len(names) != k:
        notes.append(f"{len(names)} class names for {k} model outputs: names ignored.")
        names = None
    pred_test = out_test.argmax(axis=1)
    groups_all = _merge_groups(test_d, groups, y_test, names)  # checked before any long step

    # reliability ---------------------------------------------------------------------------------------
    rel = conf = adv = None
    margins = bool(getattr(adapter, "margins", False))
    if "reliability" in steps and margins and cal_d is None:
        status["reliability"] = StepStatus("reliability", "skipped", reason=(
            f"{adapter.name} has no predict_proba: its decision_function margins are not probabilities, so a "
            "calibration error of them would be a made-up number; pass calibration= data (failsight then "
            "calibrates the margins and reports the calibrated model) or wrap the model in "
            "sklearn.calibration.CalibratedClassifierCV"))
    elif "reliability" in steps:
        from failsight.reliability.analysis import analyze

        t = time.perf_counter()
        kw = {"y_cal": None if cal_d is None else cal_d.y, "cal": out_cal, "is_logits": is_logits,
              "max_risk": max_risk, "confidence": confidence, "n_boot": n_boot, "calibrators": calibrators,
              "seed": seed, **dict(reliability_options or {})}
        rel = analyze(y_test, out_test, **kw)
        conf = _run_conformal(y_test, out_test, cal_d, out_cal, groups_all, seed, confidence, conformal_options, notes)
        status["reliability"] = StepStatus("reliability", "ran", time.perf_counter() - t)
        if cal_d is None:
            notes.append("No calibration split: calibrators were not fitted and the risk threshold was chosen on "
                          "the test split itself (optimistic); pass calibration= for an honest threshold.")
        if margins:
            notes.append(f"{adapter.name} gives decision margins, not probabilities: the uncalibrated ECE is that of "
                         "softmax(margins), which has no meaning of its own; read the calibrated numbers.")

    # robustness ----------------------------------------------------------------------------------------
    rob = None
    if "robustness" in steps:
        reason = _robustness_blocker(test_d)
        if reason:
            status["robustness"] = StepStatus("robustness", "skipped", reason=reason)
        else:
            from failsight.robustness.analysis import analyze_robustness, synthetic_ood_images

            t = time.perf_counter()
            c, h, w = test_d.x.shape[1:]
            x_ood = ood_d.x if ood_d is not None else (
                synthetic_ood_images(min(len(y_test), 1000), image_size=h, channels=c, seed=seed) if h == w else None)
            if ood_d is None and x_ood is None:
                notes.append("Robustness: no OOD images given and the generated ones need square images; OOD "
                             "detection was left out (pass ood=).")
            net = _torch_module(adapter)
            kw: dict[str, Any] = {
                "shifts": shifts, "severities": severities, "x_reference": None if cal_d is None else cal_d.x,
                "y_reference": None if cal_d is None else cal_d.y, "x_ood": x_ood,
                "baseline": None if base is None else (_torch_module(base) or _Callable(base, batch_size)),
                "seed": seed, "progress": progress}
            kw.update(robustness_options or {})
            rob = analyze_robustness(net if net is not None else _Callable(adapter, batch_size), test_d.x, y_test,
                                     **kw)
            status["robustness"] = StepStatus("robustness", "ran", time.perf_counter() - t)
    if conf is not None:  # coverage of the calibrated sets under each shift: where the guarantee breaks
        t = time.perf_counter()
        conf = _conformal_under_shift(conf, adapter, test_d, rob, shifts, severities, seed, batch_size,
                                      conformal_options, engine=robustness_options, progress=progress)
        if "reliability" in status:
            s_ = status["reliability"]
            status["reliability"] = dataclasses.replace(s_, seconds=s_.seconds + time.perf_counter() - t)

    # adversarial ---------------------------------------------------------------------------------------
    if "adversarial" in steps:
        reason = _adversarial_blocker(adapter, test_d)
        if reason:
            status["adversarial"] = StepStatus("adversarial", "skipped", reason=reason)
        else:
            t = time.perf_counter()
            adv = _run_adversarial(adapter, test_d, seed, adversarial_options, notes)
            status["adversarial"] = StepStatus("adversarial", "ran", time.perf_counter() - t)

    # defuse ---------------------------------------------------------------------------------------------
    dfs = regs = gen = fixed = check = None
    if "defuse" in steps:
        reason = _defuse_blocker(adapter, test_d, train_d, generator)
        if reason:
            status["defuse"] = StepStatus("defuse", "skipped", reason=reason)
        else:
            t = time.perf_counter()
            dfs, regs, gen, fixed = _run_defuse(
                adapter, test_d, cal_d, train_d, names, generator=generator, labels=labels, regions=regions,
                seed=seed, progress=progress, options=dict(defuse_options or {}))
            status["defuse"] = StepStatus("defuse", "ran", time.perf_counter() - t)
            if dfs.search.n_found == 0:
                notes.append("Defuse found no misclassified samples around the seeds; a larger radius "
                             "(defuse_options={'radius': ...}) searches further from them.")

    # slices ---------------------------------------------------------------------------------------------
    sl = cmp = None
    if "slices" in steps:
        from failsight.slices import compare, evaluate

        t = time.perf_counter()
        opts = dict(slices_options or {})
        sl = evaluate(y_test, pred_test, groups_all, **{k_: v for k_, v in opts.items() if k_ in ("min_size", "ci")})
        if base is not None:
            base_pred = base.predict(test_d.x, batch_size=batch_size, progress=progress).argmax(axis=1)
            cmp = compare(y_test, base_pred, pred_test, groups_all, seed=seed,
                          **{k_: v for k_, v in opts.items() if k_ in ("alpha", "min_size", "mid_p")})
        if fixed is not None:
            fixed_pred = as_model(fixed).predict(test_d.x, batch_size=batch_size).argmax(axis=1)
            check = compare(y_test, pred_test, fixed_pred, groups_all, seed=seed)
        status["slices"] = StepStatus("slices", "ran", time.perf_counter() - t)

    steps_out = tuple(status.get(s, StepStatus(s, "not requested")) for s in AUDIT_STEPS)
    if base is not None:
        config["baseline"] = base.describe()
    partial = AuditResult(model=adapter.describe(), data=data, config=config, steps=steps_out, findings=(),
                          metrics={}, reliability=rel, robustness=rob, defuse=dfs, slices=sl, comparison=cmp,
                          defuse_check=check, conformal=conf, adversarial=adv)
    from failsight.auditing.findings import collect_findings, collect_metrics

    return dataclasses.replace(
        partial, findings=tuple(collect_findings(partial)), metrics=collect_metrics(partial),
        seconds=time.perf_counter() - t0, notes=tuple(notes), y_test=y_test, pred_test=pred_test,
        groups=groups_all, regions=regs, generator=gen, fixed_model=fixed)


class _Callable:
    """A plain callable over numpy batches (so the robustness pillar never mistakes an adapter with
    ``predict_proba`` for an sklearn estimator that wants flattened inputs)."""

    def __init__(self, adapter: Any, batch_size: int | None) -> None:
        self.adapter, self.batch_size = adapter, batch_size

    def __call__(self, x: Any) -> np.ndarray:
        return self.adapter.predict(x, batch_size=self.batch_size)


def _robustness_blocker(test_d: Any) -> str | None:
    if test_d.kind != "images":
        return (f"the test inputs are features {tuple(test_d.x.shape[1:])}, not images; corruptions and image "
                "shifts need images (n, C, H, W).")
    c, h, w = test_d.x.shape[1:]
    if c not in (1, 3) or min(h, w) < 8:
        return f"images of shape {(c, h, w)}: the shifts need 1 or 3 channels and at least 8×8 pixels."
    return None


def _defuse_blocker(adapter: Any, test_d: Any, train_d: Any, generator: Any) -> str | None:
    if _torch_module(adapter) is None:
        return (f"Defuse searches and fine-tunes torch classifiers; this model is a {adapter.kind} model. "
                "Wrap it as a torch nn.Module to debug it with Defuse.")
    if test_d.kind != "images":
        return "Defuse needs image inputs (n, C, H, W) for its generator."
    if train_d is None and generator is None:
        return "no training data given (train=): Defuse trains its generator on the model's training images."
    h, w = test_d.x.shape[2:]
    if generator is None and (h != w or not 8 <= h <= 64):
        return (f"the built-in VAE needs square images between 8×8 and 64×64, got {h}×{w}; pass a generator "
                "(any object with encode/decode) for other sizes.")
    return None


def _run_defuse(adapter: Any, test_d: Any, cal_d: Any, train_d: Any, names: Any, *, generator: Any, labels: Any,
                regions: Any, seed: int, progress: bool, options: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Generator → search (seeds: the calibration split, else the test split) → regions; with ``labels``,
    the correction. Returns ``(DefuseResult, regions, generator, fixed model or None)``."""
    from failsight.defuse import VAE, Defuse, FileLabeler, load_regions

    search_keys = ("n_samples", "radius", "spread", "batch_size")
    region_keys = ("max_components", "min_size", "min_error_rate", "n_check", "n_examples")
    gen_keys = ("latent_dim", "width", "beta", "epochs", "budget", "lr")
    unknown = set(options) - set(search_keys) - set(region_keys) - {f"generator_{k}" for k in gen_keys} \
        - {"correct"}
    if unknown:
        raise FailsightInputError(f"unknown defuse option(s) {sorted(unknown)}; known: search {search_keys}, "
                                  f"regions {region_keys}, generator_<{'|'.join(gen_keys)}>, correct.")
    if isinstance(generator, (str, Path)):
        generator = VAE.load(generator)
    d = Defuse(adapter.model, generator=generator, seed=seed, class_names=names, progress=progress)
    if generator is None:
        d.fit_generator(train_d.x, **{k: options[f"generator_{k}"] for k in gen_keys if f"generator_{k}" in options})
    seeds = cal_d if cal_d is not None else test_d
    found = d.search(seeds.x, seeds.y, **{k: options[k] for k in search_keys if k in options})
    if isinstance(regions, (str, Path)):
        regs = load_regions(regions, d.generator)
    elif regions is not None:
        regs = regions
    else:
        regs = d.find_regions(found, **{k: options[k] for k in region_keys if k in options}) if found.n_found else []
    given = fixed = correction = None
    if labels is not None and regs:
        if isinstance(labels, (str, Path)):
            path = labels
            given = d.label(regs, lambda rs, nm: FileLabeler.read(path, rs, nm))
        elif isinstance(labels, Mapping):
            mapping = dict(labels)
            given = d.label(regs, lambda rs, nm: mapping)
        elif callable(labels):
            given = d.label(regs, labels)
        else:
            raise FailsightInputError("labels must be a labels.csv path, a dict {region id: class or None} or a "
                                      f"labeller callable, got {type(labels).__name__}.")
        if train_d is None or train_d.y is None:
            raise FailsightInputError("correcting with labels needs labelled training data (train=).")
        fixed, correction = d.correct(regs, given, train_d.x, train_d.y, x_val=seeds.x, y_val=seeds.y,
                                      x_test=test_d.x, y_test=test_d.y, **dict(options.get("correct", {})))
    return d.result(found, regs, given, correction), regs, d.generator, fixed


# ==================================================================================== conformal and adversarial

_CONFORMAL_KEYS = ("alpha", "method", "randomized", "class_conditional", "k_reg", "lam", "tune_fraction", "n_shift")
_ADVERSARIAL_KEYS = ("eps", "norm", "method", "steps", "restarts", "step_size", "n", "sanity", "sanity_n", "bounds",
                     "batch_size", "large_eps")


def _run_conformal(y_test: np.ndarray, out_test: np.ndarray, cal_d: Any, out_cal: Any, groups: dict[str, np.ndarray],
                   seed: int, confidence: float, options: Any, notes: list[str]) -> Any:
    """Conformal prediction sets calibrated on the calibration split (else on a seeded half of the test split),
    evaluated on the test split, per slice (every slicing of the slices step)."""
    from failsight.reliability.conformal import conformal_analysis

    opts = dict(options or {})
    unknown = set(opts) - set(_CONFORMAL_KEYS)
    if unknown:
        raise FailsightInputError(f"unknown conformal option(s) {sorted(unknown)}; known: {_CONFORMAL_KEYS}.")
    opts.pop("n_shift", None)
    kw = {"method": "aps", "alpha": 0.1, "randomized": True, **opts}
    if cal_d is not None:
        y_cal, s_cal, y_t, s_t, g = cal_d.y, out_cal, y_test, out_test, groups
    else:
        perm = np.random.default_rng([seed, 16]).permutation(len(y_test))
        half = len(y_test) // 2
        ci, ti = np.sort(perm[:half]), np.sort(perm[half:])
        y_cal, s_cal, y_t, s_t = y_test[ci], out_test[ci], y_test[ti], out_test[ti]
        g = {k: v[ti] for k, v in groups.items()}
        notes.append(f"Conformal sets: no calibration split, so they were calibrated on a random half of the test "
                     f"split ({half} samples) and evaluated on the other half; pass calibration= to use all of it.")
    try:
        return conformal_analysis(y_cal, s_cal, y_t, s_t, groups=g, seed=seed, confidence=confidence, **kw)
    except FailsightInputError as exc:
        notes.append(f"Conformal sets left out: {exc}")
        return None


def _conformal_shift_task(context: dict[str, Any], key: tuple[Any, ...], params: dict[str, Any]) -> np.ndarray:
    """One engine task of :func:`_conformal_under_shift`: the subset corrupted by ``key = (shift, severity)`` and
    the model's outputs on it ``(n_shift, k)`` (small: the sets are built on the driver)."""
    from failsight.robustness.shifts import corrupt

    name, s = key
    x = np.array(context["x"])  # a writable copy: workers memory-map the subset read-only
    xs = corrupt(x, name, int(s), seed=context["seed"])
    return np.asarray(context["adapter"].predict(xs, batch_size=context["batch_size"]))


def _register_conformal_task() -> None:
    from failsight.engine import TaskKind, register_task_kind

    register_task_kind(TaskKind("audit.conformal_shift", run=_conformal_shift_task, mergeable=False))


_register_conformal_task()


def _conformal_under_shift(conf: Any, adapter: Any, test_d: Any, rob: Any, shifts: Any, severities: Any, seed: int,
                           batch_size: int | None, options: Any, engine: Mapping[str, Any] | None = None,
                           progress: bool = False) -> Any:
    """Coverage and mean set size of the calibrated sets on shifted test images (the shifts the robustness step
    evaluated, at each severity; a seeded subset of ``n_shift`` test images). One engine task per condition
    (``engine``: the robustness step's ``workers`` / ``backend`` / ``ray_address``), each on one thread like the
    shift sweep, so the numbers do not depend on the worker count."""
    if rob is None or _robustness_blocker(test_d) is not None:
        return conf
    from failsight.engine import Plan, run_sweep
    from failsight.reliability.conformal import ConformalClassifier

    opts = dict(options or {})
    n_shift = check_int(opts.pop("n_shift", 500), "n_shift")
    cc = ConformalClassifier(conf.method, conf.alpha, class_conditional=conf.class_conditional,
                             randomized=opts.get("randomized", True), seed=seed)
    cc.quantile_, cc.n_classes_ = conf.quantile, len(conf.class_coverage)
    cc.k_reg_, cc.lam_ = conf.k_reg, conf.lam
    idx = np.sort(np.random.default_rng([seed, 17]).permutation(len(test_d.y))[:n_shift])
    x, y = np.ascontiguousarray(test_d.x[idx]), test_d.y[idx]
    sev = tuple(rob.severities) if getattr(rob, "severities", None) else tuple(severities)
    keys = [(name, int(s)) for name in rob.shifts for s in sev]
    eng = {k: v for k, v in dict(engine or {}).items() if k in ("workers", "backend", "ray_address")}
    outs = run_sweep(Plan.build("audit.conformal_shift", keys), {"x": x, "seed": seed, "adapter": adapter,
                                                                  "batch_size": batch_size},
                     progress=progress, label="conformal under shift", work=float(x.size) * len(keys),
                     describe=lambda sp: f"{sp.key[0]} s{sp.key[1]}", **eng)
    out: dict[str, tuple[float, float]] = {}
    for (name, s), raw in zip(keys, outs, strict=True):
        sets = cc.predict_sets(raw)
        out[f"{name} s{s}"] = (float(sets[np.arange(len(y)), y].mean()), float(sets.sum(axis=1).mean()))
    return dataclasses.replace(conf, shift_coverage=out)


def _adversarial_blocker(adapter: Any, test_d: Any) -> str | None:
    if _torch_module(adapter) is None:
        return (f"attacks need input gradients, and this is a {adapter.kind} model; wrap it as a torch nn.Module "
                "(or TorchScript module) to measure its worst case.")
    if test_d.kind != "images":
        return "the adversarial step attacks images (n, C, H, W) in [0, 1]; the test inputs are features."
    return None


def _run_adversarial(adapter: Any, test_d: Any, seed: int, options: Any, notes: list[str]) -> Any:
    """The robust-accuracy curve on a seeded subset of the test images (cheap defaults, see :func:`audit`)."""
    from failsight.robustness.adversarial import robust_accuracy

    opts = dict(options or {})
    unknown = set(opts) - set(_ADVERSARIAL_KEYS)
    if unknown:
        raise FailsightInputError(f"unknown adversarial option(s) {sorted(unknown)}; known: {_ADVERSARIAL_KEYS}.")
    n = check_int(opts.pop("n", 500), "n")
    kw = {"eps": (0.01, 0.02, 0.05, 0.1), "method": "apgd-ce", "norm": "linf", "steps": 10, "sanity_n": 100, **opts}
    if "eps" not in opts and str(kw["norm"]).lower() == "l2":  # the L2 size of changing every pixel by the L∞ ε
        d = math.sqrt(int(np.prod(test_d.x.shape[1:])))
        kw["eps"] = tuple(round(e * d, 4) for e in kw["eps"])
    idx = np.sort(np.random.default_rng([seed, 18]).permutation(len(test_d.y))[:n])
    if len(idx) < len(test_d.y):
        notes.append(f"Adversarial: {len(idx)} of {len(test_d.y)} test images attacked ({kw['method']}, "
                     f"{kw['steps']} steps) to keep the audit quick; adversarial_options={{'n': ..., 'steps': ...}} "
                     "for a stronger, fuller evaluation.")
    return robust_accuracy(adapter.model, test_d.x[idx], test_d.y[idx], seed=seed, warn=False, **kw)
