"""The audit's conformal part (reliability step) and adversarial step: results, per-shift coverage, findings,
metrics, report sections; skipped with a reason for models without gradients."""

from __future__ import annotations

import numpy as np
import pytest

import failsight


@pytest.fixture(scope="module")
def digits_cnn():
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, train_classifier

    d = split_digits(seed=0, cal_size=0.25, test_size=0.25)
    m = SmallCNN(width=16, seed=0)
    train_classifier(m, d.x_train, d.y_train, epochs=8, seed=0, progress=False, num_threads=1)
    return d, m


def test_audit_conformal_and_adversarial(digits_cnn, tmp_path) -> None:
    d, m = digits_cnn
    res = failsight.audit(
        m, (d.x_test, d.y_test), calibration=(d.x_cal, d.y_cal), steps=["reliability", "robustness", "adversarial"],
        n_boot=50, calibrators=["temperature"], severities=(3,),
        robustness_options={"shifts": ["contrast", "gaussian_noise"], "detection_sizes": (20,), "n_trials": 1,
                            "n_null_trials": 2},
        conformal_options={"n_shift": 200}, adversarial_options={"n": 120, "eps": (0.02, 0.1), "steps": 5,
                                                                  "sanity_n": 40},
        progress=False)
    assert res.step("adversarial").ran and res.step("reliability").ran
    c = res.conformal
    assert c is not None and c.n_calibration == len(d.y_cal) and c.n_test == len(d.y_test)
    assert set(c.shift_coverage) == {"contrast s3", "gaussian_noise s3"}
    assert c.slices is not None and c.slices.metric == "coverage"
    a = res.adversarial
    assert a.n == 120 and a.eps == (0.02, 0.1) and a.accuracy[1] <= a.accuracy[0] <= a.clean_accuracy
    assert res.metrics["reliability.conformal_coverage"] == pytest.approx(c.coverage)
    assert res.metrics["adversarial.robust_accuracy.eps_0.1"] == pytest.approx(a.accuracy[1])
    texts = [f.text for f in res.findings]
    assert any(t.startswith("prediction sets") for t in texts)
    assert any(t.startswith("worst case") for t in texts)
    assert any("test images attacked" in n for n in res.notes)
    data = res.to_dict()
    assert data["adversarial"]["eps"] == [0.02, 0.1] and "examples" not in data["adversarial"]
    html = res.to_html(tmp_path / "r.html").read_text()
    assert 'id="conformal"' in html and 'id="adversarial"' in html and "set size" in html


def test_adversarial_skipped_without_gradients_and_conformal_without_calibration() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(int)
    lr = LogisticRegression().fit(x, y)
    res = failsight.audit(lr, (x, y), steps=["reliability", "adversarial"], n_boot=50, progress=False)
    st = res.step("adversarial")
    assert st.status == "skipped" and "input gradients" in st.reason
    assert res.conformal is not None and res.conformal.n_calibration == 200  # a seeded half of the test split
    assert any("random half of the test" in n for n in res.notes)
    with pytest.raises(failsight._validate.FailsightInputError, match="unknown conformal option"):
        failsight.audit(lr, (x, y), steps=["reliability"], conformal_options={"alpa": 0.1}, progress=False)
