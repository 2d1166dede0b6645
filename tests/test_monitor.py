"""failsight.monitor: estimators by their definitions, intervals and false alarms at the promised rates,
alerts under shift, persistence (reopen, late labels, bad input leaves the store unchanged), the model
adapter path, no torch with probabilities, the CLI and the page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from failsight._validate import FailsightInputError
from failsight.monitor import ATC, ESTIMATORS, DoC, MeanConfidence, Monitor
from failsight.monitor.estimators import CalibratedConfidence, features

K = 5


def calibrated(n: int, rng: np.random.Generator, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, K)`` and labels drawn from them: a perfectly calibrated model (so confidence-based
    estimates are unbiased). ``scale`` sets how sharp (and accurate) the model is."""
    z = rng.normal(size=(n, K)) * scale
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (rng.random((n, 1)) > p.cumsum(1)).sum(1)
    return p, np.minimum(y, K - 1)


@pytest.fixture(scope="module")
def ref():
    return calibrated(2000, np.random.default_rng(0))


def _mon(ref, **kw):
    kw.setdefault("calibrator", "temperature")
    return Monitor(reference=ref, **kw)


# ------------------------------------------------------------------------------------------ estimators


def test_estimators_follow_their_definitions():
    rng = np.random.default_rng(1)
    p, y = calibrated(400, rng)
    # ties on purpose: many rows share the same probabilities
    p = np.round(p, 2)
    p /= p.sum(1, keepdims=True)
    f = features(p, p)
    correct = f.pred == y
    acc = correct.mean()
    atc = ATC(score="msp").fit(f, correct)
    # on its own reference ATC reproduces the accuracy exactly, ties included
    assert atc.point(f) == pytest.approx(acc, abs=1e-12)
    # ... and on a window it is the share above the threshold (+ the tie weight at it), by brute force
    pw, _ = calibrated(300, rng, scale=1.5)
    fw = features(pw, pw)
    t, wt = atc.threshold_, atc.tie_weight_
    expect = np.mean(fw.cal_conf > t) + wt * np.mean(fw.cal_conf == t)
    assert atc.point(fw) == pytest.approx(expect, abs=1e-12)
    assert (f.cal_conf > t).mean() <= acc <= (f.cal_conf >= t).mean()
    # DoC: reference accuracy minus the drop of the mean confidence
    doc = DoC().fit(f, correct)
    assert doc.point(fw) == pytest.approx(acc - (f.conf.mean() - fw.conf.mean()), abs=1e-12)
    assert MeanConfidence().fit(f, correct).point(fw) == pytest.approx(pw.max(1).mean())
    q = np.clip(pw * 0.9 + 0.02, 0, 1)
    q /= q.sum(1, keepdims=True)
    fq = features(pw, q)
    cbpe = CalibratedConfidence().fit(features(p, p), correct)
    assert cbpe.point(fq) == pytest.approx(q[np.arange(len(q)), pw.argmax(1)].mean())
    # negative entropy (ATC-NE) by hand
    ne = (p * np.log(np.where(p > 0, p, 1))).sum(1)
    np.testing.assert_allclose(f.neg_entropy, ne)
    assert set(ESTIMATORS) == {"mean_confidence", "calibrated_confidence", "atc", "doc"}


def test_no_shift_estimates_unbiased_and_intervals_cover(ref):
    """A calibrated model, windows from the reference distribution: every estimator is unbiased, and its 90%
    interval covers the window's true accuracy in at least 90% of windows up to sampling noise: over 120
    windows the coverage's sd is <= 0.03 at a true rate of 0.9, so >= 0.82 fails by chance < 1 in 300."""
    mon = _mon(ref)
    rng = np.random.default_rng(2)
    err = {n: [] for n in ESTIMATORS}
    cover = {n: [] for n in ESTIMATORS}
    for _ in range(120):
        p, y = calibrated(400, rng)
        w = mon.evaluate(probs=p)
        acc = float((p.argmax(1) == y).mean())
        for n, e in w.estimated_accuracy.items():
            err[n].append(e.value - acc)
            cover[n].append(e.low <= acc <= e.high)
    for n in ESTIMATORS:
        # per-window error sd ~ sqrt(acc(1-acc)/400) ~ 0.02, so the mean over 120 has sd ~ 0.002 (+ the
        # reference fit's error, sd ~ 0.01 at m=2000): |bias| < 0.03 is > 3 sd
        assert abs(np.mean(err[n])) < 0.03, (n, np.mean(err[n]))
        assert np.mean(cover[n]) >= 0.82, (n, np.mean(cover[n]))


def test_false_alarms_at_most_alpha_under_no_shift(ref):
    """All rules together (accuracy, drift, coverage, selective risk) fire on at most alpha of no-shift
    windows (Bonferroni). 300 independent windows: the alarm count is Binomial(300, r) with r <= 0.05, so
    P(count >= 37) <= 5.1e-7 (exact binomial tail at r = 0.05): a false failure has probability < 1e-6 on
    any random stream. It still has teeth: 4 rules each at 0.05 without the correction alarm on up to ~19%
    of windows, and at r = 0.15 the count reaches 37 with probability 0.92."""
    mon = _mon(ref, max_risk=0.1, alpha=0.05)
    rng = np.random.default_rng(3)
    alarms = [bool(mon.evaluate(probs=calibrated(400, rng)[0]).alerts) for _ in range(300)]
    assert sum(alarms) <= 36, sum(alarms)


def test_alerts_fire_under_shift_in_words(ref):
    mon = _mon(ref, max_risk=0.1)
    rng = np.random.default_rng(4)
    p, _ = calibrated(500, rng, scale=1.0)  # much harder inputs: accuracy and confidence collapse
    w = mon.update(probs=p)
    rules = {a.rule for a in w.alerts}
    assert {"accuracy", "drift", "coverage"} <= rules, w.alerts
    msg = next(a.message for a in w.alerts if a.rule == "accuracy")
    assert "below the floor" in msg and f"{mon.config.min_accuracy:.3f}" in msg
    assert w.accuracy.value < mon.reference_accuracy - 0.1
    assert w.drift.is_shift and w.drift.p_value < 1e-6
    # label shift only: predicted-class mix changes, the chi-square test sees it
    p2, _ = calibrated(4000, rng)
    keep = np.flatnonzero(p2.argmax(1) <= 1)[:400]
    w2 = mon.update(probs=p2[keep])
    assert w2.drift.p_values["predicted_classes"] < 1e-6 and any(a.rule == "drift" for a in w2.alerts)
    assert "drift" in w2.summary()


def test_bad_input_is_refused_clearly(ref):
    mon = _mon(ref)
    p, _ = calibrated(50, np.random.default_rng(5))
    cases = [
        ({"probs": p[:, :3]}, "3 columns but the reference has 5 classes"),
        ({"probs": p[:0]}, "empty"),
        ({"probs": np.where(p > 0.5, np.nan, p)}, "NaN"),
        ({"probs": p[:5]}, "at least 10"),
        ({"probs": p * 2}, "probability matrix"),
        ({"probs": p, "logits": p}, "exactly one"),
        ({}, "exactly one"),
    ]
    for kw, match in cases:
        with pytest.raises(FailsightInputError, match=match):
            mon.update(**kw)
    with pytest.raises(FailsightInputError, match="no model"):
        mon.update(np.zeros((20, 3)))
    assert mon.windows == []
    with pytest.raises(FailsightInputError, match="no window 7"):
        mon.add_labels(7, np.zeros(50, int))
    with pytest.raises(FailsightInputError, match="at least 50"):
        Monitor(reference=(ref[0][:20], ref[1][:20]))
    with pytest.raises(FailsightInputError, match="samples but"):
        Monitor(reference=(ref[0], ref[1][:-1]))
    with pytest.raises(FailsightInputError, match="unknown estimator"):
        Monitor(reference=ref, estimator="magic", calibrator="none")


def test_logits_windows_and_labels_in_memory(ref):
    mon = _mon(ref)
    p, y = calibrated(300, np.random.default_rng(6))
    w1 = mon.update(logits=np.log(p), name="as logits")
    w2 = mon.update(probs=p)
    assert w1.accuracy.value == pytest.approx(w2.accuracy.value, abs=1e-9)
    got = mon.add_labels(w1.window_id, y)
    assert got.true_accuracy == pytest.approx((p.argmax(1) == y).mean())
    with pytest.raises(FailsightInputError, match="300 samples but 10 labels"):
        mon.add_labels(w2.window_id, y[:10])
    with pytest.raises(FailsightInputError, match="labels"):
        mon.add_labels(w2.window_id, np.full(300, 9))


def test_memory_is_a_rolling_buffer_without_a_store(ref):
    """Windows and the predictions late labels need are kept for the last keep_windows windows only; labels
    for an older window are refused with the reason and the fix."""
    mon = _mon(ref, keep_windows=3)
    rng = np.random.default_rng(9)
    batches = [calibrated(100, rng) for _ in range(6)]
    for p, _ in batches:
        mon.update(probs=p)
    assert [w.window_id for w in mon.windows] == [4, 5, 6] and len(mon._session_preds) == 3
    assert [w.window_id for w in mon.history()] == [4, 5, 6]
    with pytest.raises(FailsightInputError, match=r"older than the 3 most recent windows.*store="):
        mon.add_labels(2, batches[1][1])
    with pytest.raises(FailsightInputError, match="has no window 9"):
        mon.add_labels(9, batches[1][1])
    got = mon.add_labels(5, batches[4][1])
    assert got.true_accuracy == pytest.approx((batches[4][0].argmax(1) == batches[4][1]).mean())
    assert mon.windows[1].true_accuracy == got.true_accuracy
    with pytest.raises(FailsightInputError, match="keep_windows"):
        _mon(ref, keep_windows=0)


def test_memory_bounded_with_a_store_that_keeps_everything(ref, tmp_path):
    db = str(tmp_path / "m.db")
    rng = np.random.default_rng(10)
    batches = [calibrated(100, rng) for _ in range(5)]
    mon = _mon(ref, store=db, keep_windows=2)
    for p, _ in batches:
        mon.update(probs=p)
    assert [w.window_id for w in mon.windows] == [4, 5] and mon._session_preds == {}
    assert [w.window_id for w in mon.history()] == [1, 2, 3, 4, 5]  # the store has them all
    got = mon.add_labels(1, batches[0][1])  # older than the buffer: read from the store
    assert got.true_accuracy == pytest.approx((batches[0][0].argmax(1) == batches[0][1]).mean())
    assert mon.history()[0].true_accuracy == got.true_accuracy
    assert "window 1" in mon.report().render()  # the page shows every stored window, not only the buffer
    mon.close()
    again = Monitor(store=db, keep_windows=2)  # reopening reads the last 2 windows only
    assert [w.window_id for w in again.windows] == [4, 5]
    assert again.update(probs=batches[0][0]).window_id == 6
    again.close()


# ------------------------------------------------------------------------------------------ persistence


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "monitor.db")
    sys.path.insert(0, str(Path(__file__).parent))
    from _missing import missing_tool
    from _postgres import PostgresUnavailable, start_postgres

    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        missing_tool("PostgreSQL", "postgresql", str(exc))
    request.addfinalizer(server.stop)
    return server.url


def _rows(db: str) -> list:
    from failsight.monitor.store import MonitorStore

    with MonitorStore(db) as st:
        data = st.load("default")
        return [] if data is None else [w.to_dict() for w in data["windows"]]


def test_store_reopen_continue_labels_and_bad_input_unchanged(ref, db):
    rng = np.random.default_rng(7)
    mon = _mon(ref, store=db, max_risk=0.1)
    batches = [calibrated(300, rng) for _ in range(3)]
    for i, (p, _) in enumerate(batches[:2]):
        mon.update(probs=p, name=f"day {i}")
    first_fp = mon.fingerprint
    mon.close()

    again = Monitor(store=db)  # reference, settings and windows come from the store
    assert again.fingerprint == first_fp and again.config.max_risk == 0.1
    assert [w.name for w in again.windows] == ["day 0", "day 1"]
    w3 = again.update(probs=batches[2][0])
    assert w3.window_id == 3
    before = _rows(db)
    # bad input of every kind: the stored monitor is unchanged
    for bad in ({"probs": batches[0][0][:, :2]}, {"probs": np.full((30, K), np.nan)}, {"probs": batches[0][0][:0]}):
        with pytest.raises(FailsightInputError):
            again.update(**bad)
    for wid, y in ((99, batches[0][1]), (1, batches[0][1][:5]), (1, np.full(300, K))):
        with pytest.raises(FailsightInputError):
            again.add_labels(wid, y)
    assert _rows(db) == before
    with pytest.raises(FailsightInputError, match="different reference"):
        Monitor(reference=calibrated(300, rng), store=db, calibrator="temperature")
    with pytest.raises(FailsightInputError, match=r"other settings.*max_risk"):
        Monitor(store=db, max_risk=0.2)
    # late labels: true accuracy (and selective risk) stored beside the estimate
    p1, y1 = batches[0]
    labelled = again.add_labels(1, y1)
    assert labelled.true_accuracy == pytest.approx((p1.argmax(1) == y1).mean())
    acc_mask = p1.max(1) >= again.threshold.threshold
    assert labelled.selective.true_risk == pytest.approx(1 - (p1.argmax(1) == y1)[acc_mask].mean())
    again.close()
    third = Monitor(store=db)
    assert third.windows[0].true_accuracy == pytest.approx(labelled.true_accuracy)
    assert third.windows[0].estimated_accuracy == labelled.estimated_accuracy
    assert third.windows[2].to_dict() == w3.to_dict()
    third.close()


def test_monitor_imports_no_torch_with_probabilities(tmp_path):
    code = ("import sys, numpy as np\n"
            "from failsight.monitor import Monitor\n"
            "rng = np.random.default_rng(0)\n"
            "p = rng.dirichlet(np.ones(4) * 0.3, size=400); y = p.argmax(1)\n"
            f"m = Monitor(reference=(p, y), max_risk=0.1, calibrator='temperature', store={str(tmp_path / 'm.db')!r})\n"
            "w = m.update(probs=p[:100]); m.report().render()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            # the shift tests were loaded without the robustness package; importing it later reuses them
            "import failsight.robustness as rob\n"
            "assert rob.ShiftTest is sys.modules['failsight.robustness.detect'].ShiftTest\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_model_adapter_path_sklearn(tmp_path):
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    x, y = make_classification(n_samples=1600, n_features=8, n_informative=5, n_classes=3, random_state=0)
    clf = LogisticRegression(max_iter=500).fit(x[:600], y[:600])
    mon = Monitor(clf, reference=(x[600:1200], y[600:1200]), store=tmp_path / "m.db", calibrator="temperature")
    w = mon.update(x[1200:1600], name="batch")
    direct = mon.evaluate(probs=clf.predict_proba(x[1200:1600]))
    assert w.accuracy.value == pytest.approx(direct.accuracy.value)
    w = mon.add_labels(w.window_id, y[1200:1600])
    assert w.true_accuracy == pytest.approx(clf.score(x[1200:1600], y[1200:1600]))
    mon.close()


# ------------------------------------------------------------------------------------------ CLI and page


def test_cli_record_labels_report(ref, tmp_path):
    from failsight.cli import app

    rng = np.random.default_rng(8)
    np.savez(tmp_path / "cal.npz", probs=ref[0], labels=ref[1])
    paths = []
    for i, scale in enumerate([3.0, 3.0, 1.0]):
        p, y = calibrated(300, rng, scale=scale)
        kw = {"probs": p}
        if i == 0:
            kw["labels"] = y
        np.savez(tmp_path / f"batch_{i}.npz", **kw)
        paths.append(str(tmp_path / f"batch_{i}.npz"))
    np.savez(tmp_path / "late.npz", labels=y)
    db = str(tmp_path / "monitor.db")
    runner = CliRunner()
    r = runner.invoke(app, ["monitor", "--probs", "--reference", str(tmp_path / "cal.npz"), "--db", db,
                            "--max-risk", "0.1", *paths])
    assert r.exit_code == 1, r.output  # the last batch is shifted: an alert
    lines = [s for s in r.output.splitlines() if s.startswith("window")]
    assert [s.split(" (")[1].split(",")[0] for s in lines] == ["batch_0.npz", "batch_1.npz", "batch_2.npz"]
    assert "true" in lines[0] and "below the floor" in lines[2]
    r = runner.invoke(app, ["monitor", "labels", "--db", db, "--window", "3", str(tmp_path / "late.npz")])
    assert r.exit_code == 0 and "true" in r.output, r.output
    before = _rows(db)
    r = runner.invoke(app, ["monitor", "--probs", "--db", db, str(tmp_path / "cal.npz"), str(tmp_path / "nope.npz")])
    assert r.exit_code == 2 and "nope.npz does not exist" in r.output
    np.savez(tmp_path / "bad.npz", probs=np.ones((40, 3)) / 3)
    r = runner.invoke(app, ["monitor", "--probs", "--db", db, str(tmp_path / "bad.npz")])
    assert r.exit_code == 2 and "classes" in r.output, r.output
    # a bad file after good ones: all or nothing, no window recorded
    np.savez(tmp_path / "badlab.npz", probs=ref[0][:40], labels=ref[1][:39])
    r = runner.invoke(app, ["monitor", "--probs", "--db", db, paths[0], str(tmp_path / "badlab.npz")])
    assert r.exit_code == 2 and "badlab.npz" in r.output and "No window was recorded" in r.output, r.output
    assert _rows(db) == before
    r = runner.invoke(app, ["monitor", "report", "--db", db, "--out", str(tmp_path / "mon")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "mon" / "report.html").read_text()
    for text in ("Accuracy over windows", "Drift", "Requirement", "Alerts", "below the floor", "batch_2.npz"):
        assert text in html
    assert html.count("data:image/svg+xml") >= 3
    r = runner.invoke(app, ["monitor", "report", "--db", db, "--out", str(tmp_path / "mon")])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["monitor", "report", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no monitor store" in r.output


def test_window_result_round_trips_json(ref):
    from failsight.monitor import WindowResult

    mon = _mon(ref, max_risk=0.1)
    w = mon.update(probs=calibrated(200, np.random.default_rng(9))[0])
    again = WindowResult.from_dict(json.loads(w.to_json()))
    assert again.to_dict() == w.to_dict()


def test_cli_raw_inputs_through_a_torch_model(tmp_path):
    """--model: reference and windows are images run through the model (a torch.save'd module)."""
    import torch

    from failsight.cli import app
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN

    d = split_digits(seed=0)
    model = SmallCNN(width=4, seed=0).eval()
    torch.save(model, tmp_path / "m.pt")
    np.savez(tmp_path / "cal.npz", x=d.x_cal, y=d.y_cal)
    np.savez(tmp_path / "b1.npz", x=d.x_test[:200])
    np.savez(tmp_path / "b2.npz", x=d.x_test[200:400], y=d.y_test[200:400])
    db = str(tmp_path / "monitor.db")
    r = CliRunner().invoke(app, ["monitor", "--model", str(tmp_path / "m.pt"), "--reference", str(tmp_path / "cal.npz"),
                                 "--db", db, str(tmp_path / "b1.npz"), str(tmp_path / "b2.npz")])
    assert r.exit_code in (0, 1), r.output
    rows = _rows(db)
    assert [w["name"] for w in rows] == ["b1.npz", "b2.npz"] and rows[0]["n"] == 200
    with torch.no_grad():
        pred = model(torch.from_numpy(d.x_test[200:400])).argmax(1).numpy()
    assert rows[1]["true_accuracy"] == pytest.approx((pred == d.y_test[200:400]).mean())
    # a model and image inputs: the monitor learnt shift_regression from simulated shifts; --no-simulate skips it
    with Monitor(store=db) as mon:
        assert mon.config.estimator == "shift_regression" and mon.config.shift_table is not None
    r = CliRunner().invoke(app, ["monitor", "--model", str(tmp_path / "m.pt"), "--reference", str(tmp_path / "cal.npz"),
                                 "--db", db, "--name", "plain", "--no-simulate", str(tmp_path / "b1.npz")])
    assert r.exit_code in (0, 1), r.output
    with Monitor(store=db, name="plain") as mon:
        assert mon.config.estimator == "atc" and mon.config.shift_table is None
