"""The deployment monitor: one window of predictions at a time, no labels needed.

numpy core: with ``probs=``/``logits=`` windows and a reference given as scores this module never imports
torch; the model adapter (:func:`failsight.models.as_model`) is imported only when raw inputs are given.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_fraction,
    check_int,
    check_labels,
    looks_like_probs,
    to_numpy,
)
from failsight.monitor.estimators import (
    ESTIMATORS,
    AccuracyEstimate,
    AccuracyEstimator,
    Features,
    features,
    sampling_se,
)
from failsight.types import Result

__all__ = ["DEFAULT_ESTIMATOR", "KEEP_WINDOWS", "MIN_WINDOW", "SIMULATED_ESTIMATOR", "Alert", "Drift", "Monitor",
           "MonitorConfig", "SelectiveWindow", "WindowResult"]

#: Fewest samples a window may hold (the drift tests and the estimates need a handful).
MIN_WINDOW = 10
#: Fewest labelled reference samples.
MIN_REFERENCE = 50
#: Default estimator, chosen by ``benchmarks/monitor.py`` (lowest MAE over the tuning windows) among the
#: per-sample estimators, which work from saved probabilities alone. With a model and raw image reference
#: inputs the monitor simulates shifts of the reference and the default is :data:`SIMULATED_ESTIMATOR`.
DEFAULT_ESTIMATOR = "atc"
#: The estimator learnt from simulated shifts (:mod:`failsight.monitor.simulate`).
SIMULATED_ESTIMATOR = "shift_regression"
#: Largest image (H x W pixels) for which the monitor simulates shifts without being asked (``simulate=None``):
#: up to CIFAR-sized images that takes seconds to a minute on a CPU; larger ones need ``simulate=True``.
AUTO_SIMULATE_PIXELS = 64 * 64
#: Windows a :class:`Monitor` keeps in memory by default (results, and without a store the predictions that
#: late labels need): a few MB at most, whatever the number of windows seen.
KEEP_WINDOWS = 1000
#: Calibrators the reference is compared on when ``calibrator="auto"`` (fast, and cover both families).
AUTO_CALIBRATORS = ("temperature", "vector", "dirichlet", "isotonic", "histogram")


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drift(Result):
    """Shift tests of one window against the reference.

    ``p_values``: per detector (``"bbsd"``: per-class KS tests on the softmax outputs, Bonferroni;
    ``"predicted_classes"``: chi-square test of the predicted-class counts); ``p_value``: the two combined
    (Bonferroni: ``min(1, 2 min p)``); ``is_shift``: ``p_value <= threshold``, the share of the alert
    level given to drift."""

    p_values: dict[str, float]
    p_value: float
    threshold: float
    is_shift: bool


@dataclasses.dataclass(frozen=True)
class SelectiveWindow(Result):
    """The requirement's confidence threshold applied to one window.

    ``threshold``: the confidence threshold selected on the reference for ``max_risk``
    (:func:`failsight.reliability.select_threshold`); ``coverage``: share of the window at or above it
    (``reference_coverage`` on the reference; ``coverage_p_value``: one-sided test that coverage dropped);
    ``estimated_risk``: estimated error rate of the accepted samples (``None`` when none is accepted) with
    its interval ``risk_low``/``risk_high``; ``true_risk`` once labels are attached."""

    threshold: float
    max_risk: float
    coverage: float
    reference_coverage: float
    coverage_p_value: float
    n_accepted: int
    estimated_risk: float | None
    risk_low: float | None
    risk_high: float | None
    risk_p_value: float | None
    true_risk: float | None = None


@dataclasses.dataclass(frozen=True)
class Alert(Result):
    """A rule that fired on a window: ``rule`` ("accuracy", "drift", "coverage", "selective_risk") and
    the ``message`` in words."""

    rule: str
    message: str


@dataclasses.dataclass(frozen=True)
class WindowResult(Result):
    """Everything the monitor concluded on one window.

    ``estimated_accuracy`` maps every estimator name to its :class:`AccuracyEstimate`; ``estimator`` names
    the default one (``accuracy`` is its estimate). ``drift``, ``selective`` (``None`` without a
    ``max_risk``) and ``alerts`` as their classes say. ``true_accuracy`` (and ``n_labelled``) once labels
    are attached with :meth:`Monitor.add_labels`."""

    window_id: int
    name: str
    created_at: str
    n: int
    estimator: str
    estimated_accuracy: dict[str, AccuracyEstimate]
    mean_confidence: float
    shift_signal: float
    drift: Drift
    selective: SelectiveWindow | None
    alerts: tuple[Alert, ...]
    true_accuracy: float | None = None
    n_labelled: int = 0
    drift_excess: float = 0.0

    @property
    def accuracy(self) -> AccuracyEstimate:
        """The default estimator's estimate."""
        return self.estimated_accuracy[self.estimator]

    @property
    def is_alert(self) -> bool:
        """Whether any rule fired."""
        return bool(self.alerts)

    def summary(self) -> str:
        """One line: window, estimate, drift and alerts."""
        a = self.accuracy
        true = "" if self.true_accuracy is None else f", true {self.true_accuracy:.3f}"
        alerts = "; ".join(x.message for x in self.alerts) or "no alert"
        return (f"window {self.window_id} ({self.name}, n={self.n}): estimated accuracy {a}{true} ({self.estimator}); "
                f"drift p={self.drift.p_value:.3g}; {alerts}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowResult:
        """Rebuild from :meth:`to_dict` output (as stored in the run store)."""
        nan = float("nan")

        def num(v: Any) -> float:
            return nan if v is None else float(v)

        est = {k: AccuracyEstimate(v["estimator"], num(v["value"]), num(v["low"]), num(v["high"]),
                                   float(v["level"]), num(v.get("se")))
               for k, v in d["estimated_accuracy"].items()}
        dr = d["drift"]
        drift = Drift({k: num(v) for k, v in dr["p_values"].items()}, num(dr["p_value"]), float(dr["threshold"]),
                      bool(dr["is_shift"]))
        sel = None if d.get("selective") is None else SelectiveWindow(**d["selective"])
        return cls(int(d["window_id"]), d["name"], d["created_at"], int(d["n"]), d["estimator"], est,
                   num(d["mean_confidence"]), num(d["shift_signal"]), drift, sel,
                   tuple(Alert(**a) for a in d["alerts"]), d.get("true_accuracy"), int(d.get("n_labelled") or 0),
                   num(d.get("drift_excess", 0.0)))


@dataclasses.dataclass(frozen=True)
class MonitorConfig(Result):
    """The monitor's settings (stored with it; a reopened monitor keeps them)."""

    alpha: float
    level: float
    estimator: str
    max_risk: float | None
    min_accuracy: float
    accuracy_tolerance: float
    selective_confidence: float
    calibrator: str
    seed: int
    shift_slack: dict[str, list[float]]
    shift_table: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _detect_module() -> Any:
    """:mod:`failsight.robustness.detect` without importing the robustness package (which imports torch).

    ``detect`` itself needs only numpy/scipy/sklearn. When the package is already imported the normal
    module is used; otherwise the file is loaded under its full name and registered in ``sys.modules``,
    so a later ``import failsight.robustness`` reuses the same module object (same classes)."""
    name = "failsight.robustness.detect"
    if name in sys.modules:
        return sys.modules[name]
    if "failsight.robustness" in sys.modules:
        import failsight.robustness.detect as mod

        return mod
    path = Path(__file__).resolve().parents[1] / "robustness" / "detect.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _as_probs(scores: Any, name: str, kind: str = "auto") -> np.ndarray:
    """``(n, k)`` float64 probabilities from probabilities or logits (``kind`` "auto"/"probs"/"logits")."""
    arr = as_float_array(scores, name, ndim=2, allow_float32=False)
    if arr.shape[1] < 2:
        raise FailsightInputError(f"{name} has {arr.shape[1]} column; need one column per class (at least 2).")
    if kind == "logits" or (kind == "auto" and not looks_like_probs(arr)):
        return _softmax(arr)
    if arr.min() < 0 or arr.max() > 1 or not looks_like_probs(arr):
        raise FailsightInputError(
            f"{name} is not a probability matrix (entries in [0, 1], rows summing to 1); pass logits with logits=.")
    return arr / arr.sum(axis=1, keepdims=True)


def fingerprint(probs: np.ndarray, y: np.ndarray) -> str:
    """Identity of a reference set: sha256 of its labels and its probabilities rounded to 6 decimals
    (so the same model on the same data matches across machines)."""
    h = hashlib.sha256(b"failsight-monitor-reference-v1")
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(np.round(probs, 6), dtype=np.float64).tobytes())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _coverage_drop_p(k: int, n: int, k_ref: int, m: int) -> float:
    """One-sided p-value that the window's acceptance rate ``k/n`` is below the reference's ``k_ref/m``:
    Fisher's exact test (conditional on the total accepted; valid at the boundary, e.g. a reference that
    accepts everything, where the normal approximation is not)."""
    return float(stats.fisher_exact([[k, n - k], [k_ref, m - k_ref]], alternative="less").pvalue)


def _chi2_classes(pred_ref: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Two-sample chi-square test of the predicted-class counts (classes unseen in both are dropped)."""
    table = np.stack([np.bincount(pred_ref, minlength=k), np.bincount(pred, minlength=k)]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


# --------------------------------------------------------------------------------------------------
# the monitor
# --------------------------------------------------------------------------------------------------


class Monitor:
    """Watch a deployed classifier window by window: estimated accuracy, drift, the requirement, alerts.

    ``model``: anything :func:`failsight.models.as_model` accepts (torch module, sklearn estimator,
    callable); needed only when windows (and the reference) are raw inputs. Without a model, the
    reference and the windows are the model's saved probabilities (or logits).

    ``reference``: labelled held-out data the model was not trained on: ``(x_cal, y_cal)`` with a model,
    ``(probs_or_logits (m, k), y (m,))`` without. It fits the calibrator (``calibrator="auto"``: the best
    of :data:`AUTO_CALIBRATORS` by cross-validated NLL on the whole reference
    (:func:`failsight.reliability.compare_calibrators`), refitted on all of it; or a name of :data:`failsight.reliability.CALIBRATORS`, or
    ``"none"``), the estimators, the requirement's threshold and the drift tests' reference sample.

    ``max_risk``: the functional requirement, the largest acceptable error rate of the predictions the
    system acts on: the confidence threshold is selected with
    :func:`failsight.reliability.select_threshold` (guarantee at ``selective_confidence``) and each
    window's coverage at it and estimated selective risk are checked. ``min_accuracy``: the accuracy floor
    (default: reference accuracy minus ``accuracy_tolerance``).

    ``alpha``: the false-alarm level: under no shift, the probability that a window raises any alert is
    at most ``alpha`` (Bonferroni over the rules: accuracy, drift and, with ``max_risk``, coverage and
    selective risk). ``level``: confidence of the accuracy intervals. ``estimator``: the default estimator
    (``None``: ``shift_regression`` where shifts were simulated, else ``atc``).

    ``simulate``: learn accuracy under shift from simulated shifts of the reference
    (:mod:`failsight.monitor.simulate`): ``None`` (default) does it when a model is given and the reference
    is at least 200 images ``(N, C, H, W)`` in [0, 1] of at most :data:`AUTO_SIMULATE_PIXELS` pixels (about
    40 s for 3,000 MNIST images on 2 cores, shown as progress unless ``progress=False``; larger images warn
    and skip it); ``False`` never; ``True`` insists (error where impossible); a
    dict passes options to :func:`~failsight.monitor.simulate.simulate_shifts` (``window``,
    ``per_condition``, ``severities``, ``shifts``, ``label_alphas``, ``n_label``, ``n_null``); a
    :class:`~failsight.monitor.simulate.ShiftTable` from :func:`~failsight.monitor.simulate_reference` uses
    one built elsewhere (e.g. where the model runs, to monitor saved probabilities here). The table is stored
    with the monitor.

    ``store``: a run store (SQLite path, database URL or :class:`~failsight.runs.RunStore`) where every
    window is recorded under the monitor ``name``; ``None`` keeps windows in memory only. A monitor reopened
    on the same store and name continues where it was: pass no ``reference`` (it is read from the store), or
    the same reference (checked by its fingerprint); settings left at ``None`` are read back too.

    Memory is bounded: :attr:`windows` holds the most recent ``keep_windows`` results (default
    :data:`KEEP_WINDOWS`; ``None``: all), a rolling buffer. With a store every window stays there
    (:meth:`history` and :meth:`report` read it, and late labels can reach any recorded window); without
    one, the predicted classes that late labels are checked against are kept for those same recent windows
    only (about ``n`` bytes per window), and labels for an older window are refused with that reason.
    """

    def __init__(self, model: Any = None, reference: Any = None, *, max_risk: float | None = None,
                 alpha: float | None = None, level: float | None = None, estimator: str | None = None,
                 min_accuracy: float | None = None, accuracy_tolerance: float | None = None,
                 selective_confidence: float | None = None, calibrator: str | None = None,
                 store: Any = None, name: str = "default", seed: int | None = None,
                 batch_size: int | None = None, keep_windows: int | None = KEEP_WINDOWS,
                 simulate: bool | dict[str, Any] | None = None, progress: bool = True) -> None:
        self.keep_windows = None if keep_windows is None else check_int(keep_windows, "keep_windows")
        self._adapter = None if model is None else self._make_adapter(model)
        self.batch_size = None if batch_size is None else check_int(batch_size, "batch_size")
        self.name = self._check_name(name)
        self._store = None
        stored = None
        if store is not None:
            from failsight.monitor.store import MonitorStore

            self._store = store if isinstance(store, MonitorStore) else MonitorStore(store)
            stored = self._store.load(self.name, last=self.keep_windows)
        given = {"max_risk": max_risk, "alpha": alpha, "level": level, "estimator": estimator,
                 "min_accuracy": min_accuracy, "accuracy_tolerance": accuracy_tolerance,
                 "selective_confidence": selective_confidence, "calibrator": calibrator, "seed": seed}
        if stored is not None:
            cfg = stored["config"]
            clash = [f"{k}={v!r} (stored: {cfg.get(k)!r})" for k, v in given.items()
                     if v is not None and k != "min_accuracy" and cfg.get(k) != v]
            if min_accuracy is not None and abs(float(min_accuracy) - cfg["min_accuracy"]) > 1e-12:
                clash.append(f"min_accuracy={min_accuracy!r} (stored: {cfg['min_accuracy']!r})")
            if clash:
                raise FailsightInputError(
                    f"monitor {self.name!r} in {self._store.location} was created with other settings: "
                    f"{', '.join(clash)}. Leave them out to continue it, or pass another name= for a new monitor.")
            ref_p, ref_y = stored["reference_probs"], stored["reference_y"]
            if reference is not None:
                p, y = self._read_reference(reference)
                if fingerprint(p, y) != stored["fingerprint"]:
                    raise FailsightInputError(
                        f"monitor {self.name!r} in {self._store.location} was built on a different reference set "
                        f"(fingerprint {stored['fingerprint'][:12]}, this one {fingerprint(p, y)[:12]}); pass "
                        "no reference to continue it, or another name= for a new monitor.")
            given = {k: cfg.get(k) for k in given}
            given["min_accuracy"] = cfg["min_accuracy"]
            given["slack"] = cfg.get("shift_slack")  # the stored interval slacks, kept across versions
            given["shift_table"] = cfg.get("shift_table")
        else:
            if reference is None:
                where = f" and {self._store.location} holds no monitor named {self.name!r}" if self._store else ""
                raise FailsightInputError(
                    f"no reference given{where}; pass reference=(x_cal, y_cal) with a model, or "
                    "reference=(probs, y) without one: labelled data the model was not trained on.")
            ref_p, ref_y = self._read_reference(reference)
            given["shift_table"] = self._simulate(reference[0], ref_p, ref_y, simulate, given, progress)
        if stored is not None and simulate not in (None, False):
            raise FailsightInputError(
                f"monitor {self.name!r} is reopened from the store with its stored settings; leave simulate out.")
        self._setup(ref_p, ref_y, given)
        self.windows: list[WindowResult] = []
        self._session_preds: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        if stored is not None:
            self.windows = list(stored["windows"])
        elif self._store is not None:
            self._store.create(self.name, self.fingerprint, self.config.to_dict(), ref_p, ref_y,
                               self.model_name)

    # ---------------------------------------------------------------------------------------- set-up

    @staticmethod
    def _check_name(name: Any) -> str:
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise FailsightInputError(f"name must be a non-empty string of at most 200 characters, got {name!r}.")
        return name.strip()

    @staticmethod
    def _make_adapter(model: Any) -> Any:
        from failsight.models.adapters import as_model

        return as_model(model)

    @property
    def model_name(self) -> str:
        return "saved predictions" if self._adapter is None else str(self._adapter.name)

    def _model_probs(self, x: Any, what: str) -> np.ndarray:
        if self._adapter is None:
            raise FailsightInputError(
                f"{what} are raw inputs but the monitor has no model; pass model= to Monitor, or give the model's "
                "predictions with probs=/logits=.")
        out = self._adapter.predict(x, batch_size=self.batch_size)
        return _as_probs(out, f"the model's output on {what}", "logits" if self._adapter.output == "logits" else "auto")

    def _read_reference(self, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(reference, (tuple, list)) or len(reference) != 2:
            raise FailsightInputError(
                "reference must be a pair (x_cal, y_cal) with a model, or (probs_or_logits, y) without one.")
        x, y = reference
        y = check_labels(y, name="reference labels")
        p = self._model_probs(x, "the reference inputs") if self._adapter is not None else \
            _as_probs(x, "reference probabilities")
        if len(p) != len(y):
            raise FailsightInputError(
                f"the reference has {len(p)} samples but {len(y)} labels; they must match.")
        if len(y) < MIN_REFERENCE:
            raise FailsightInputError(
                f"the reference has {len(y)} samples; the monitor needs at least {MIN_REFERENCE} labelled held-out "
                "samples (a few hundred or more for useful intervals).")
        if y.max() >= p.shape[1]:
            raise FailsightInputError(
                f"reference labels go up to {int(y.max())} but the model gives {p.shape[1]} classes.")
        return p, y

    def _simulate(self, x: Any, p: np.ndarray, y: np.ndarray, simulate: Any, given: dict[str, Any],
                  progress: bool) -> dict[str, Any] | None:
        """The table of simulated shifts of the reference (``None`` where it cannot or should not be built)."""
        from failsight.monitor.simulate import ShiftTable, labels_fingerprint, simulate_reference

        seed = check_int(0 if given["seed"] is None else given["seed"], "seed", minimum=0)
        if isinstance(simulate, ShiftTable):
            if simulate.reference != labels_fingerprint(y):
                raise FailsightInputError(
                    "the table of simulated shifts was built from another reference set; build it with "
                    "simulate_reference on this reference (same labels, same order, same seed).")
            return simulate.to_dict()
        if simulate is False or self._adapter is None:
            if simulate not in (None, False):
                raise FailsightInputError(
                    "simulate needs a model and the reference as raw images (x_cal, y_cal); give model=, pass a "
                    "table from failsight.monitor.simulate_reference, or leave simulate out.")
            return None
        opts = dict(simulate) if isinstance(simulate, dict) else {}
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        is_image = arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.dtype.kind == "f" and min(arr.shape[2:]) >= 8
        if not is_image or len(y) < 200 or not (np.nanmin(arr) >= 0.0 and np.nanmax(arr) <= 1.0):
            if simulate is None:
                return None  # tabular, unnormalised or too few inputs: the per-sample estimators only
            raise FailsightInputError(
                "simulate needs at least 200 reference images (N, C, H, W), C = 1 or 3, float in [0, 1]; got "
                f"shape {arr.shape}, dtype {arr.dtype}. Pass simulate=False for other inputs.")
        if simulate is None and arr.shape[2] * arr.shape[3] > AUTO_SIMULATE_PIXELS:
            import warnings

            from failsight._validate import FailsightWarning

            warnings.warn(
                f"shifts of the reference were not simulated: {arr.shape[2]}x{arr.shape[3]} images take long to "
                "corrupt 150 windows of on a CPU; pass simulate=True (or simulate={'per_condition': 1, 'window': "
                "250}) to learn shift_regression anyway. The monitor uses ATC.", FailsightWarning, stacklevel=3)
            return None
        allowed = {"window", "per_condition", "severities", "shifts", "label_alphas", "n_label", "n_null"}
        unknown = set(opts) - allowed
        if unknown:
            raise FailsightInputError(
                f"unknown simulate option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}.")
        table = simulate_reference(lambda xs: self._model_probs(xs, "simulated windows"), arr, y, p, seed=seed,
                                   progress=progress, **opts)
        return table.to_dict()

    def _fit_calibrator(self, p: np.ndarray, y: np.ndarray, choice: str, seed: int) -> tuple[str, Any]:
        from failsight.reliability import CALIBRATORS, compare_calibrators

        if choice == "none":
            return "none", None
        if choice == "auto":
            rng = np.random.default_rng(seed)
            perm = rng.permutation(len(y))
            b = perm[len(y) // 2:]
            # the choice is compare_calibrators' cross-validated NLL on its calibration split: give it the whole
            # reference (the second half is only its report split and plays no part in the choice)
            cmp = compare_calibrators(y, p, y[b], p[b], calibrators=list(AUTO_CALIBRATORS), ci=None,
                                      seed=seed, input="probs")
            choice = cmp.best
            if choice == "uncalibrated":
                return "none", None
        if choice not in CALIBRATORS:
            raise FailsightInputError(
                f"unknown calibrator {choice!r}; use 'auto', 'none' or one of {', '.join(CALIBRATORS)}.")
        import warnings

        cal = CALIBRATORS[choice](input="probs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cal.fit(p, y)
        return choice, cal

    def _setup(self, p: np.ndarray, y: np.ndarray, given: dict[str, Any]) -> None:
        alpha = check_fraction(0.05 if given["alpha"] is None else given["alpha"], "alpha")
        level = check_fraction(0.9 if given["level"] is None else given["level"], "level")
        table = given.get("shift_table")
        est_name = given["estimator"]
        if est_name is None:
            est_name = SIMULATED_ESTIMATOR if table is not None else DEFAULT_ESTIMATOR
        if est_name == SIMULATED_ESTIMATOR and table is None:
            raise FailsightInputError(
                f"the {SIMULATED_ESTIMATOR} estimator learns from simulated shifts of the reference: give the model "
                "and the reference as raw images (x_cal, y_cal), or choose one of " + ", ".join(ESTIMATORS) + ".")
        if est_name not in ESTIMATORS and est_name != SIMULATED_ESTIMATOR:
            raise FailsightInputError(
                f"unknown estimator {est_name!r}; choose one of {', '.join(ESTIMATORS)} or {SIMULATED_ESTIMATOR}.")
        max_risk = None if given["max_risk"] is None else check_fraction(given["max_risk"], "max_risk")
        tol = 0.05 if given["accuracy_tolerance"] is None else float(given["accuracy_tolerance"])
        if not (0 <= tol < 1):
            raise FailsightInputError(f"accuracy_tolerance must lie in [0, 1), got {tol!r}.")
        sel_conf = check_fraction(0.95 if given["selective_confidence"] is None else given["selective_confidence"],
                                  "selective_confidence")
        seed = check_int(0 if given["seed"] is None else given["seed"], "seed", minimum=0)
        cal_choice = "auto" if given["calibrator"] is None else str(given["calibrator"])

        self.reference_probs, self.reference_y = p, y
        self.n_classes = p.shape[1]
        self.fingerprint = fingerprint(p, y)
        cal_name, self._calibrator = self._fit_calibrator(p, y, cal_choice, seed)
        self._ref_features = self._features(p)
        correct = self._ref_features.pred == y
        self.reference_accuracy = float(correct.mean())
        self.reference_mean_confidence = float(self._ref_features.conf.mean())
        min_acc = given["min_accuracy"]
        min_acc = max(0.0, self.reference_accuracy - tol) if min_acc is None else \
            check_fraction(min_acc, "min_accuracy", open_low=False)
        slack = given.get("slack") or {}
        self.estimators: dict[str, AccuracyEstimator] = {
            n: cls(**dict(zip(("shift_slack", "drift_slack"), slack.get(n) or (None, None), strict=True)))
            .fit(self._ref_features, correct) for n, cls in ESTIMATORS.items()}
        self._shift_regression = self._window_stats = None
        if table is not None:
            from failsight.monitor.simulate import ShiftRegression, ShiftTable, WindowStats, split_reference

            a, _ = split_reference(len(y), seed)
            self._window_stats = WindowStats(p[a], y[a])
            self._shift_regression = ShiftRegression(seed).fit(ShiftTable.from_dict(table))
        self.threshold = None
        if max_risk is not None:
            from failsight.reliability import select_threshold

            self.threshold = select_threshold(y, p, max_risk=max_risk, confidence=sel_conf)
            self._ref_accepted = int(np.count_nonzero(self._ref_features.conf >= self.threshold.threshold))
        self._rules = ["accuracy", "drift"] + (["selective"] if max_risk is not None else [])
        # a stored choice is kept verbatim ("auto" resolves to the name once, at creation)
        self.config = MonitorConfig(alpha=alpha, level=level, estimator=est_name, max_risk=max_risk,
                                    min_accuracy=min_acc, accuracy_tolerance=tol, selective_confidence=sel_conf,
                                    calibrator=cal_choice, seed=seed,
                                    shift_slack={n: [e.shift_slack, e.drift_slack]
                                                 for n, e in self.estimators.items()},
                                    shift_table=table)
        self.calibrator_name = cal_name

    def _features(self, p: np.ndarray) -> Features:
        cal = p if self._calibrator is None else np.asarray(self._calibrator.predict_proba(p), dtype=np.float64)
        return features(p, cal)

    # ---------------------------------------------------------------------------------------- windows

    def _read_window(self, x: Any, probs: Any, logits: Any) -> np.ndarray:
        given = [v is not None for v in (x, probs, logits)]
        if sum(given) != 1:
            raise FailsightInputError(
                "pass exactly one of x (raw inputs, needs the model), probs= or logits= for a window.")
        if x is not None:
            arr = to_numpy(x, "x") if not hasattr(x, "detach") else x
            if hasattr(arr, "__len__") and len(arr) == 0:
                raise FailsightInputError("the window is empty; pass at least one input.")
            p = self._model_probs(x, "the window")
        else:
            what = "probs" if probs is not None else "logits"
            raw = probs if probs is not None else logits
            arr = to_numpy(raw, what)
            if arr.ndim == 2 and arr.shape[0] == 0:
                raise FailsightInputError(f"the window is empty ({what} has shape {arr.shape}); pass at least one row.")
            if arr.ndim == 2 and arr.shape[1] != self.n_classes:
                raise FailsightInputError(
                    f"{what} has {arr.shape[1]} columns but the reference has {self.n_classes} classes; pass the "
                    "same model's outputs, one column per class in the same order.")
            p = _as_probs(raw, what, what)
        if p.shape[1] != self.n_classes:
            raise FailsightInputError(
                f"the window has {p.shape[1]} classes but the reference has {self.n_classes}; pass the same "
                "model's outputs, one column per class in the same order.")
        if len(p) < MIN_WINDOW:
            raise FailsightInputError(
                f"the window has {len(p)} samples; the monitor needs at least {MIN_WINDOW} per window "
                "(a few hundred for useful estimates): pool small batches.")
        return p

    def _drift(self, p: np.ndarray, f: Features, threshold: float) -> tuple[Drift, float]:
        """The drift tests, and the drift excess of the intervals (see :mod:`failsight.monitor.estimators`)."""
        detect = _detect_module()
        bbsd = detect.detect_shift(self.reference_probs, p, "bbsd", alpha=threshold)
        pv = {"bbsd": float(bbsd.p_value),
              "predicted_classes": _chi2_classes(self._ref_features.pred, f.pred, self.n_classes)}
        p_comb = float(min(1.0, len(pv) * min(pv.values())))
        n, m = len(p), len(self.reference_y)
        # asymptotic Kolmogorov quantile at 0.001 / k (Bonferroni over the k classes)
        c = math.sqrt(-math.log(0.001 / self.n_classes / 2) / 2)
        excess = max(0.0, float(bbsd.statistic) - c * math.sqrt((n + m) / (n * m)))
        return Drift(pv, p_comb, threshold, bool(p_comb <= threshold)), excess

    def _selective(self, f: Features, alpha_rule: float, signal: float, excess: float) -> tuple[SelectiveWindow | None, list[Alert]]:
        if self.threshold is None:
            return None, []
        t = self.threshold
        acc = f.conf >= t.threshold
        n, k = len(f), int(acc.sum())
        m = len(self.reference_y)
        p_cov = _coverage_drop_p(k, n, self._ref_accepted, m)
        # the risk of the accepted predictions needs a per-sample estimator (the simulated-shift one estimates
        # whole windows): the chosen one, or ATC
        est = self.estimators.get(self.config.estimator, self.estimators[DEFAULT_ESTIMATOR])
        risk = low = high = p_risk = None
        alerts = []
        a_half = alpha_rule / 2  # coverage and risk share the selective rule's level
        if k > 0:
            e = est.estimate(f.subset(acc), level=self.config.level, shift_signal=signal, drift_excess=excess)
            risk, low, high = 1.0 - e.value, 1.0 - e.high, 1.0 - e.low
            se = e.se if e.se > 0 else 1e-12
            p_risk = float(stats.norm.sf((risk - t.max_risk) / se))  # H0: selective risk <= max_risk
            if p_risk <= a_half:
                alerts.append(Alert("selective_risk", (
                    f"estimated risk of the accepted predictions {risk:.3f} [{low:.3f}, {high:.3f}] is above the "
                    f"requirement max_risk={t.max_risk:g} (p={p_risk:.2g})")))
        if p_cov <= a_half:
            alerts.append(Alert("coverage", (
                f"coverage at the requirement's threshold {t.threshold:.4g} fell to {k / n:.3f} from "
                f"{self._ref_accepted / m:.3f} on the reference (p={p_cov:.2g}): more predictions need a human")))
        sw = SelectiveWindow(threshold=float(t.threshold), max_risk=float(t.max_risk), coverage=k / n,
                             reference_coverage=self._ref_accepted / m, coverage_p_value=p_cov, n_accepted=k,
                             estimated_risk=risk, risk_low=low, risk_high=high, risk_p_value=p_risk)
        return sw, alerts

    def evaluate(self, probs: Any = None, *, logits: Any = None, x: Any = None, name: str | None = None,
                 window_id: int = 0) -> WindowResult:
        """Analyse one window without recording it (see :meth:`update`)."""
        p = self._read_window(x, probs, logits)
        f = self._features(p)
        cfg = self.config
        alpha_rule = cfg.alpha / len(self._rules)
        conf_gap = abs(float(f.conf.mean()) - self.reference_mean_confidence)
        pts = {n: e.point(f) for n, e in self.estimators.items()}
        signal = conf_gap + abs(pts["atc"] - pts["doc"])
        drift, excess = self._drift(p, f, alpha_rule)
        ests = {n: e.estimate(f, cfg.level, signal, excess) for n, e in self.estimators.items()}
        if self._shift_regression is not None:
            ests[SIMULATED_ESTIMATOR] = self._shift_regression.estimate(self._window_stats(p), cfg.level,
                                                                        sampling_se(f.cal_conf))
        alerts: list[Alert] = []
        a = ests[cfg.estimator]
        z = float(stats.norm.isf(alpha_rule))
        if a.value + z * a.se < cfg.min_accuracy:
            alerts.append(Alert("accuracy", (
                f"estimated accuracy {a.value:.3f} [{a.low:.3f}, {a.high:.3f}] ({cfg.estimator}) is below the floor "
                f"{cfg.min_accuracy:.3f} (reference accuracy {self.reference_accuracy:.3f})")))
        if drift.is_shift:
            worst = min(drift.p_values, key=drift.p_values.__getitem__)
            what = {"bbsd": "the softmax outputs", "predicted_classes": "the mix of predicted classes"}[worst]
            alerts.append(Alert("drift", (
                f"the data drifted from the reference: {what} changed (p={drift.p_value:.2g} <= {drift.threshold:.3g})")))
        sel, sel_alerts = self._selective(f, alpha_rule, signal, excess)
        alerts.extend(sel_alerts)
        return WindowResult(window_id=window_id, name=name or f"window {window_id}", created_at=_now(), n=len(p),
                            estimator=cfg.estimator, estimated_accuracy=ests, mean_confidence=float(f.conf.mean()),
                            shift_signal=signal, drift=drift, selective=sel, alerts=tuple(alerts),
                            drift_excess=excess)

    def update(self, x: Any = None, *, probs: Any = None, logits: Any = None, name: str | None = None) -> WindowResult:
        """Analyse the next window and record it.

        Give the window as raw inputs ``x`` (the model runs on them), or as the model's ``probs``
        ``(n, k)`` or ``logits`` ``(n, k)``. Returns its :class:`WindowResult` (also appended to
        :attr:`windows` and written to the store). Bad input raises
        :class:`~failsight.FailsightInputError` and records nothing.
        """
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 255):
            raise FailsightInputError(f"name must be a non-empty string of at most 255 characters, got {name!r}.")
        wid = (self.windows[-1].window_id + 1) if self.windows else 1
        if self._store is not None:
            wid = max(wid, self._store.next_window_id(self.name))
        p = self._read_window(x, probs, logits)
        w = self.evaluate(p, name=name, window_id=wid)
        pred = p.argmax(axis=1).astype(np.min_scalar_type(self.n_classes))
        accepted = None if self.threshold is None else p.max(axis=1) >= self.threshold.threshold
        if self._store is not None:
            self._store.add_window(self.name, w, pred, accepted)
        else:  # no store: keep the compact predictions in memory so late labels can be attached
            self._session_preds[wid] = (pred, accepted)
        self.windows.append(w)
        self._trim()
        return w

    def _trim(self) -> None:
        """Keep the most recent ``keep_windows`` results (and session predictions) in memory."""
        k = self.keep_windows
        if k is None:
            return
        if len(self.windows) > k:
            del self.windows[:len(self.windows) - k]
        while len(self._session_preds) > k:
            del self._session_preds[next(iter(self._session_preds))]

    def add_labels(self, window_id: int, y: Any) -> WindowResult:
        """Attach the true labels ``(n,)`` of window ``window_id`` once they arrive; returns the window with
        ``true_accuracy`` (and the selective ``true_risk``) filled in. Needs the store (it keeps the
        window's predictions) or a window of this session."""
        window_id = check_int(window_id, "window_id")
        idx = next((i for i, w in enumerate(self.windows) if w.window_id == window_id), None)
        w = self.windows[idx] if idx is not None else None
        if w is None and self._store is not None:  # older than the in-memory buffer: the store has it
            w = self._store.window(self.name, window_id)
        if w is None or (self._store is None and window_id not in self._session_preds):
            known = ", ".join(str(v.window_id) for v in self.windows[-5:]) or "none yet"
            if w is not None or (self.windows and 0 < window_id < self.windows[0].window_id):
                raise FailsightInputError(
                    f"window {window_id} of monitor {self.name!r} is older than the {self.keep_windows} most recent "
                    "windows this monitor keeps in memory, and without a store its predictions are gone. Pass "
                    "store= (a SQLite path) to attach labels to any past window, or a larger keep_windows=.")
            raise FailsightInputError(
                f"monitor {self.name!r} has no window {window_id} (last windows: {known}); labels belong to a "
                "recorded window.")
        y = check_labels(y, n_classes=self.n_classes, name="labels")
        if len(y) != w.n:
            raise FailsightInputError(f"window {window_id} has {w.n} samples but {len(y)} labels were given.")
        if self._store is not None:
            pred, accepted = self._store.predictions(self.name, window_id)
        else:
            pred, accepted = self._session_preds[window_id]
        correct = pred == y
        acc = float(correct.mean())
        sel = w.selective
        if sel is not None and accepted is not None:
            true_risk = float(1.0 - correct[accepted].mean()) if accepted.any() else None
            sel = dataclasses.replace(sel, true_risk=true_risk)
        w2 = dataclasses.replace(w, true_accuracy=acc, n_labelled=len(y), selective=sel)
        if self._store is not None:
            self._store.set_labels(self.name, w2, y)
        if idx is not None:
            self.windows[idx] = w2
        return w2

    # ---------------------------------------------------------------------------------------- reading

    def report(self, created: str | None = None) -> Any:
        """The monitor's HTML report (:class:`~failsight.report.Report`; ``.write(path)`` writes it)."""
        from failsight.monitor.report import monitor_report

        return monitor_report(self.history(), self.config, name=self.name, reference_accuracy=self.reference_accuracy,
                              n_reference=len(self.reference_y), model_name=self.model_name,
                              fingerprint=self.fingerprint, created=created)

    def history(self) -> list[WindowResult]:
        """All recorded windows, oldest first: read from the store when there is one, else the in-memory ones
        (the most recent ``keep_windows``)."""
        if self._store is not None:
            return self._store.windows(self.name)
        return list(self.windows)

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f", store={self._store.location!r}" if self._store is not None else ""
        return f"Monitor({self.name!r}, {len(self.windows)} windows{where})"

