"""HTML page of a monitor: estimated (and true) accuracy over windows with intervals, drift p-values,
coverage at the requirement's threshold, alerts. Reads results only (a :class:`~failsight.monitor.Monitor`
or a stored one via :func:`load_monitor_history`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from markupsafe import Markup

from failsight.monitor.core import MonitorConfig, WindowResult
from failsight.report.html import Report, Section, fmt_num

__all__ = ["monitor_report"]


def _acc_figure(windows: Sequence[WindowResult], cfg: MonitorConfig, reference_accuracy: float | None) -> Any:
    from failsight.report.plots import new_figure

    fig, ax = new_figure(6.4, 3.4)
    x = np.array([w.window_id for w in windows])
    est = np.array([w.accuracy.value for w in windows])
    lo = np.array([w.accuracy.low for w in windows])
    hi = np.array([w.accuracy.high for w in windows])
    ax.fill_between(x, lo, hi, color="#0072B2", alpha=0.18, step="mid", linewidth=0,
                    label=f"{cfg.level:.0%} interval")
    ax.plot(x, est, "o-", color="#0072B2", ms=3.5, lw=1.3, label=f"estimated ({cfg.estimator})")
    known = [(w.window_id, w.true_accuracy) for w in windows if w.true_accuracy is not None]
    if known:
        kx, ky = zip(*known, strict=True)
        ax.plot(kx, ky, "D", color="#D55E00", ms=4.5, label="true (labels)")
    ax.axhline(cfg.min_accuracy, color="#b91c1c", lw=1, ls="--", label=f"floor {cfg.min_accuracy:.3f}")
    if reference_accuracy is not None:
        ax.axhline(reference_accuracy, color="#6b7280", lw=0.8, ls=":", label="reference")
    alert_x = [w.window_id for w in windows if w.alerts]
    if alert_x:
        ax.plot(alert_x, [ax.get_ylim()[0]] * len(alert_x), "^", color="#b91c1c", ms=5, clip_on=False,
                label="alert")
    ax.set_xlabel("window")
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower left", ncols=2, frameon=False)
    return fig


def _drift_figure(windows: Sequence[WindowResult]) -> Any:
    from failsight.report.plots import new_figure

    fig, ax = new_figure(6.4, 3.0)
    x = np.array([w.window_id for w in windows])
    names = list(dict.fromkeys(k for w in windows for k in w.drift.p_values))
    markers = ["o", "s", "^"]
    for j, name in enumerate(names):
        p = np.array([max(w.drift.p_values.get(name, np.nan), 1e-300) for w in windows])
        ax.plot(x, p, markers[j % 3] + "-", ms=3, lw=1, label=name)
    ax.axhline(windows[-1].drift.threshold, color="#b91c1c", ls="--", lw=1, label="alert level")
    ax.set_yscale("log")
    ax.set_xlabel("window")
    ax.set_ylabel("p-value")
    ax.legend(loc="lower left", frameon=False, ncols=3)
    return fig


def _coverage_figure(windows: Sequence[WindowResult]) -> Any:
    from failsight.report.plots import new_figure

    fig, ax = new_figure(6.4, 3.0)
    ws = [w for w in windows if w.selective is not None]
    x = np.array([w.window_id for w in ws])
    ax.plot(x, [w.selective.coverage for w in ws], "o-", ms=3, lw=1.2, color="#009E73", label="coverage")
    ax.axhline(ws[-1].selective.reference_coverage, color="#6b7280", ls=":", lw=0.9, label="reference coverage")
    risk = [np.nan if w.selective.estimated_risk is None else w.selective.estimated_risk for w in ws]
    ax.plot(x, risk, "s-", ms=3, lw=1, color="#CC79A7", label="estimated risk")
    ax.axhline(ws[-1].selective.max_risk, color="#b91c1c", ls="--", lw=1, label="max risk")
    ax.set_xlabel("window")
    ax.set_ylabel("share")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="center left", frameon=False, ncols=2)
    return fig


def _ci(e: Any) -> Markup:
    return Markup('{} <span class="ci">[{}, {}]</span>').format(fmt_num(e.value, 3), fmt_num(e.low, 3),
                                                                fmt_num(e.high, 3))


def monitor_report(windows: Sequence[WindowResult], config: MonitorConfig, *, name: str = "default",
                   reference_accuracy: float | None = None, n_reference: int | None = None,
                   model_name: str = "", fingerprint: str = "", created: str | None = None) -> Report:
    """The monitor's HTML report (:class:`~failsight.report.Report`; ``.write(path)`` writes it)."""
    windows = list(windows)
    report = Report(title="failsight monitor", subtitle=f"Monitor {name!r}: {len(windows)} window(s)",
                    meta={"model": model_name or "–", "reference": f"{n_reference or '–'} samples, "
                          f"{fingerprint[:12] or '–'}", "estimator": config.estimator,
                          "alpha": config.alpha, "max risk": "–" if config.max_risk is None else config.max_risk},
                    created=created)
    over = Section("Overview", "overview", intro=(
        "Each window of predictions is scored without labels: the accuracy is estimated (the default estimator "
        f"is {config.estimator}; intervals at {config.level:.0%}), drift from the reference is tested and, with a "
        "requirement, the coverage and estimated error rate at its confidence threshold are checked. Alert rules "
        f"share the false-alarm level alpha = {config.alpha:g}: under no shift a window raises any alert with "
        "probability at most alpha."))
    n_alert = sum(1 for w in windows if w.alerts)
    labelled = [w for w in windows if w.true_accuracy is not None]
    over.key("windows", str(len(windows)))
    over.key("windows with alerts", str(n_alert), tone="bad" if n_alert else "good")
    if windows:
        over.key("latest estimate", f"{windows[-1].accuracy.value:.3f}",
                 hint=f"[{windows[-1].accuracy.low:.3f}, {windows[-1].accuracy.high:.3f}]",
                 tone="bad" if windows[-1].accuracy.value < config.min_accuracy else "neutral")
    if labelled:
        err = np.mean([abs(w.accuracy.value - w.true_accuracy) for w in labelled])  # type: ignore[operator]
        over.key("labelled windows", str(len(labelled)), hint=f"mean |estimate - true| = {err:.3f}")
    report.add(over)
    if not windows:
        over.text("No window recorded yet: run `failsight monitor --db ... batch.npz`.", kind="note")
        return report

    acc = Section("Accuracy over windows", "accuracy", intro=(
        "Estimated accuracy of the default estimator with its interval, the true accuracy where labels arrived, "
        f"and the floor ({config.min_accuracy:.3f}) below which the accuracy alert fires."))
    acc.figure(_acc_figure(windows, config, reference_accuracy),
               alt="estimated and true accuracy per window with intervals")
    names = list(windows[0].estimated_accuracy)
    rows = []
    for w in windows:
        true = "–" if w.true_accuracy is None else fmt_num(w.true_accuracy, 3)
        rows.append([str(w.window_id), w.name, str(w.n), *[_ci(w.estimated_accuracy[n]) for n in names], true])
    acc.table(["window", "name", "n", *names, "true"], rows,
              caption="Every estimator on every window (value [interval]).")
    report.add(acc)

    dr = Section("Drift", "drift", intro=(
        "p-values of the shift tests of each window against the reference: bbsd (per-class Kolmogorov-Smirnov "
        "tests on the softmax outputs, Bonferroni) and predicted_classes (chi-square test of the predicted-class "
        "mix, sensitive to label shift). Below the dashed line the drift alert fires."))
    dr.figure(_drift_figure(windows), alt="drift p-values per window on a log scale")
    report.add(dr)

    if any(w.selective is not None for w in windows):
        sel = Section("Requirement", "requirement", intro=(
            f"The requirement: at most {config.max_risk:g} errors among the predictions acted on. The confidence "
            "threshold chosen on the reference guarantees it there; on each window the share of predictions at or "
            "above it (coverage) and their estimated error rate are checked."))
        sel.figure(_coverage_figure(windows), alt="coverage and estimated risk at the threshold per window")
        srows = []
        for w in windows:
            s = w.selective
            if s is None:
                continue
            risk = "–" if s.estimated_risk is None else Markup('{} <span class="ci">[{}, {}]</span>').format(
                fmt_num(s.estimated_risk, 3), fmt_num(s.risk_low, 3), fmt_num(s.risk_high, 3))
            srows.append([str(w.window_id), fmt_num(s.threshold, 4), fmt_num(s.coverage, 3),
                          fmt_num(s.reference_coverage, 3), risk, "–" if s.true_risk is None else fmt_num(s.true_risk, 3)])
        sel.table(["window", "threshold", "coverage", "reference coverage", "estimated risk", "true risk"], srows)
        report.add(sel)

    al = Section("Alerts", "alerts", intro="Every alert, newest first.")
    items = [(w, a) for w in reversed(windows) for a in w.alerts]
    if items:
        al.html(Markup("<ul>{}</ul>").format(Markup("").join(
            Markup("<li><strong>window {} ({})</strong>, {}: {}</li>").format(w.window_id, w.name, a.rule, a.message)
            for w, a in items[:200])))
        if len(items) > 200:
            al.note(f"{len(items) - 200} older alerts not shown.")
    else:
        al.text("No alert fired.", kind="note")
    report.add(al)
    return report



def stored_report(store: Any, name: str | None = None, created: str | None = None) -> Report:
    """The report of monitor ``name`` (default: the only one) read from a run store (path, URL or
    :class:`~failsight.monitor.store.MonitorStore`); nothing is refitted."""
    from failsight._validate import FailsightInputError
    from failsight.monitor.store import MonitorStore

    own = not isinstance(store, MonitorStore)
    st = MonitorStore(store, create=False) if own else store
    try:
        names = st.names()
        if name is None and "default" in names:
            name = "default"
        if name is None:
            if len(names) != 1:
                raise FailsightInputError(
                    f"{st.location} holds {len(names)} monitors ({', '.join(names) or 'none'}); name one with --name.")
            name = names[0]
        data = st.load(name)
        if data is None:
            raise FailsightInputError(f"{st.location} holds no monitor named {name!r} (it has: {', '.join(names)}).")
    finally:
        if own:
            st.close()
    cfg_d = dict(data["config"])
    cfg = MonitorConfig(**cfg_d)
    ref_acc = float((data["reference_probs"].argmax(axis=1) == data["reference_y"]).mean())
    return monitor_report(data["windows"], cfg, name=name, reference_accuracy=ref_acc,
                          n_reference=len(data["reference_y"]), model_name=data["model_name"],
                          fingerprint=data["fingerprint"], created=created)
