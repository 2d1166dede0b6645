"""failsight.monitor.simulate: window statistics, the regression on simulated shifts, and the monitor that
learns it from a model and raw reference images (default estimator, stored table, reopen, tables built
elsewhere, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.monitor import Monitor
from failsight.monitor.simulate import (
    STAT_NAMES,
    ShiftRegression,
    ShiftTable,
    WindowStats,
    simulate_reference,
    split_reference,
)

SIM = {"shifts": ["gaussian_noise", "defocus_blur", "fog", "contrast"], "severities": (1, 3, 5), "per_condition": 1,
       "n_null": 12, "n_label": 3}


def _probs(n: int, rng: np.random.Generator, scale: float = 3.0, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p, p.argmax(1)


def test_split_reference_is_a_seeded_partition():
    a, b = split_reference(101, 3)
    assert len(a) == 50 and len(b) == 51
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(101))
    assert np.array_equal(split_reference(101, 3)[0], a) and not np.array_equal(split_reference(101, 4)[0], a)


def test_window_stats_definitions():
    rng = np.random.default_rng(0)
    pa, ya = _probs(1000, rng)
    ws = WindowStats(pa, ya)
    s = ws(pa)
    assert s.shape == (len(STAT_NAMES),)
    d = dict(zip(STAT_NAMES, s, strict=True))
    conf = pa.max(1)
    assert d["mean_conf"] == pytest.approx(conf.mean())
    assert d["conf_median"] == pytest.approx(np.median(conf))
    assert d["share_conf_below_0.5"] == pytest.approx((conf < 0.5).mean())
    # the comparison set against itself: KS distances 0 minus the null scale, same class mix
    null = 1.36 * np.sqrt(2 / 1000)
    assert d["ks_excess_classes"] == pytest.approx(-null) and d["ks_excess_conf"] == pytest.approx(-null)
    assert d["tv_pred_classes"] == 0.0
    # labels all correct: ATC's threshold leaves every sample above it
    assert d["atc_share"] == 1.0
    # a flatter window: lower confidence, a positive KS excess
    pw, _ = _probs(500, rng, scale=1.0)
    dw = dict(zip(STAT_NAMES, ws(pw), strict=True))
    assert dw["mean_conf"] < d["mean_conf"] and dw["ks_excess_conf"] > 0.1


def _table(rng: np.random.Generator, n: int = 200) -> ShiftTable:
    stats = rng.normal(size=(n, len(STAT_NAMES)))
    acc = 0.5 + 0.1 * np.tanh(stats[:, 0]) + 0.05 * stats[:, 1].clip(-1, 1)
    fam = np.array(["none", "label", "noise", "blur", "weather"])[np.arange(n) % 5]
    return ShiftTable(stats, acc, fam, fam.copy(), np.zeros(n, dtype=np.int64), 500)


def test_shift_regression_learns_the_map_and_its_error():
    rng = np.random.default_rng(1)
    table = _table(rng)
    reg = ShiftRegression(seed=0).fit(table)
    test = _table(np.random.default_rng(2), 100)
    pred = np.array([reg.point(s) for s in test.stats])
    assert np.abs(pred - test.accuracy).mean() < 0.25 * np.abs(test.accuracy - test.accuracy.mean()).mean()
    e = reg.estimate(test.stats[0], level=0.9, se_sampling=0.01)
    assert e.low <= e.value <= e.high and e.se >= 0.01
    assert reg.estimate(test.stats[0], level=0.99).high - reg.estimate(test.stats[0], level=0.99).low > \
        reg.estimate(test.stats[0], level=0.5).high - reg.estimate(test.stats[0], level=0.5).low
    r = reg.out_of_family_residuals(table)
    assert r.shape == (len(table),) and np.isfinite(r).all()
    # deterministic for a seed
    again = ShiftRegression(seed=0).fit(table)
    assert again.point(test.stats[3]) == reg.point(test.stats[3])
    # round trip of the stored form
    back = ShiftTable.from_dict(table.to_dict())
    assert np.allclose(back.stats, table.stats) and list(back.family) == list(table.family)
    with pytest.raises(FailsightInputError, match="another version"):
        ShiftTable.from_dict({**table.to_dict(), "stat_names": ["x"]})
    with pytest.raises(FailsightInputError, match="at least 20"):
        ShiftRegression().fit(table.subset(np.arange(len(table)) < 10))


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.linear_model import LogisticRegression

    from failsight.datasets.digits import split_digits

    s = split_digits(seed=0, cal_size=0.3, test_size=0.3)
    clf = LogisticRegression(max_iter=300).fit(s.x_train.reshape(len(s.x_train), -1), s.y_train)

    def model(x):
        return clf.predict_proba(np.asarray(x).reshape(len(x), -1))

    return model, s


def test_monitor_learns_from_simulated_shifts_and_keeps_the_table(digits_model, tmp_path):
    from failsight.robustness import corrupt

    model, s = digits_model
    db = tmp_path / "m.db"
    mon = Monitor(model, reference=(s.x_cal, s.y_cal), store=db, simulate=SIM, progress=False, calibrator="temperature")
    assert mon.config.estimator == "shift_regression"
    table = ShiftTable.from_dict(mon.config.shift_table)
    assert len(table) == 12 + 3 * 3 + 4 * 3 and set(table.family) >= {"none", "label", "noise", "weather"}
    # window size: at most half of the simulation half
    assert table.window == len(split_reference(len(s.y_cal), 0)[1]) // 2
    fog = corrupt(s.x_test, "fog", 5, seed=1)
    w = mon.update(fog)
    true = float((model(fog).argmax(1) == s.y_test).mean())
    est = w.estimated_accuracy["shift_regression"]
    assert w.estimator == "shift_regression" and w.accuracy is est
    assert set(w.estimated_accuracy) == {"mean_confidence", "calibrated_confidence", "atc", "doc", "shift_regression"}
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0
    mon.add_labels(w.window_id, s.y_test)
    mon.close()
    # reopened: the stored table gives the same estimator, and the window keeps its true accuracy
    again = Monitor(store=db)
    assert again.config.estimator == "shift_regression"
    assert again.evaluate(probs=model(fog)).accuracy.value == pytest.approx(est.value, abs=1e-12)
    assert again.windows[-1].true_accuracy == pytest.approx(true)
    with pytest.raises(FailsightInputError, match="leave simulate out"):
        Monitor(store=db, simulate=True)
    again.close()


def test_table_built_elsewhere_and_errors(digits_model):
    model, s = digits_model
    p = model(s.x_cal)
    table = simulate_reference(model, s.x_cal, s.y_cal, seed=0, progress=False, **SIM)
    same = simulate_reference(model, s.x_cal, s.y_cal, p, seed=0, progress=False, **SIM)
    assert np.array_equal(table.stats, same.stats) and np.array_equal(table.accuracy, same.accuracy)
    # probabilities only + the table from where the model runs = the monitor built with the model
    with_model = Monitor(model, reference=(s.x_cal, s.y_cal), simulate=SIM, progress=False, calibrator="none")
    from_probs = Monitor(reference=(p, s.y_cal), simulate=table, calibrator="none")
    q = model(s.x_test)
    assert from_probs.evaluate(probs=q).accuracy.value == pytest.approx(with_model.evaluate(probs=q).accuracy.value)
    # what cannot be simulated falls back to ATC, or says why where it was asked for
    assert Monitor(reference=(p, s.y_cal), calibrator="none").config.estimator == "atc"
    assert Monitor(model, reference=(s.x_cal, s.y_cal), simulate=False, calibrator="none").config.estimator == "atc"
    with pytest.raises(FailsightInputError, match="simulated shifts of the reference"):
        Monitor(reference=(p, s.y_cal), estimator="shift_regression", calibrator="none")
    with pytest.raises(FailsightInputError, match="needs a model"):
        Monitor(reference=(p, s.y_cal), simulate=True, calibrator="none")
    with pytest.raises(FailsightInputError, match="another reference"):
        Monitor(reference=(p[1:], s.y_cal[1:]), simulate=table, calibrator="none")
    with pytest.raises(FailsightInputError, match="unknown simulate option"):
        Monitor(model, reference=(s.x_cal, s.y_cal), simulate={"windows": 3}, calibrator="none")
    flat = s.x_cal.reshape(len(s.x_cal), -1)
    with pytest.raises(FailsightInputError, match="at least 200 reference images"):
        Monitor(lambda x: model(np.asarray(x).reshape(-1, 1, 8, 8)), reference=(flat, s.y_cal), simulate=True,
                calibrator="none")


def test_large_images_are_not_simulated_unasked():
    rng = np.random.default_rng(0)
    x = rng.random((220, 1, 80, 80), dtype=np.float32)
    y = np.arange(220) % 3

    def model(xs):
        m = np.asarray(xs).reshape(len(xs), -1)[:, :3]
        return m / m.sum(1, keepdims=True)

    with pytest.warns(UserWarning, match="not simulated"):
        mon = Monitor(model, reference=(x, y), calibrator="none")
    assert mon.config.estimator == "atc" and mon.config.shift_table is None
