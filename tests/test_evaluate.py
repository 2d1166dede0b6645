import json

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from failsight._validate import FailsightInputError
from failsight.datasets.digits import load_digits_images
from failsight.reliability.metrics import accuracy, brier_score, ece, nll
from failsight.robustness.evaluate import RobustnessResult, corrupted, evaluate

SHIFTS = ("gaussian_noise", "contrast", "pixelate")
SEV = (1, 3, 5)


@pytest.fixture(scope="module")
def data():
    x, y = load_digits_images()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    train, test = idx[:900], idx[900:1200]
    # closed-form linear models (fast); multiclass LDA's predict_proba is the softmax of coef_ x + intercept_
    lr = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[train].reshape(900, -1), y[train])
    weak = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[train[:60]].reshape(60, -1),
                                                                           y[train[:60]])
    return x[test], y[test], lr, weak


def _as_torch(lr):
    lin = torch.nn.Linear(64, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(lr.coef_).float())
        lin.bias.copy_(torch.from_numpy(lr.intercept_).float())
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def test_rows_use_reliability_metrics_on_corrupted_data(data):
    x, y, lr, _ = data
    res = evaluate(lr, x, y, shifts=SHIFTS, severities=SEV, seed=3, progress=False)
    assert isinstance(res, RobustnessResult)
    assert len(res.rows) == 1 + len(SHIFTS) * len(SEV)
    assert res.clean.shift == "clean" and res.clean.severity == 0
    for name, s in [("clean", 0), ("contrast", 3), ("gaussian_noise", 5)]:
        xc = x if name == "clean" else corrupted(x, name, s, seed=3)
        p = lr.predict_proba(xc.reshape(len(xc), -1))
        row = res.clean if name == "clean" else res.row(name, s)
        assert row.accuracy == pytest.approx(accuracy(y, p))
        assert row.error == pytest.approx(1 - accuracy(y, p))
        assert row.ece == pytest.approx(ece(y, p))
        assert row.brier == pytest.approx(brier_score(y, p))
        assert row.nll == pytest.approx(nll(y, p))
        assert row.mean_confidence == pytest.approx(p.max(1).mean())
    assert res.row("contrast", 5).family == "digital" and res.families["gaussian_noise"] == "noise"
    # stronger corruption hurts more. No training randomness here: the model is closed-form LDA on a fixed
    # split and the corruptions are seeded, so these are fixed numbers up to float rounding (severity 5 is
    # 23-71 points below severity 1; clean accuracy 0.967, 20 samples above 0.9), far beyond what rounding
    # of a few near-tied arg-maxes could move.
    acc = res.matrix("accuracy")
    assert acc.shape == (3, 3) and np.all(acc[:, 2] <= acc[:, 0] + 0.02)
    assert res.clean_accuracy > 0.9


def test_overconfidence_is_accuracy_drop_minus_confidence_drop(data):
    x, y, lr, _ = data
    res = evaluate(lr, x, y, shifts=SHIFTS, severities=SEV, progress=False)
    c = res.clean
    assert (c.accuracy_drop, c.confidence_drop, c.overconfidence) == (0.0, 0.0, 0.0)
    for r in res.rows[1:]:
        assert r.accuracy_drop == pytest.approx(c.accuracy - r.accuracy)
        assert r.confidence_drop == pytest.approx(c.mean_confidence - r.mean_confidence)
        assert r.overconfidence == pytest.approx(r.accuracy_drop - r.confidence_drop)
    assert res.mean_overconfidence == pytest.approx(np.mean([r.overconfidence for r in res.rows[1:]]))
    assert res.overconfidence_by_shift["contrast"] == pytest.approx(res.matrix("overconfidence")[1].mean())
    assert np.isnan(res.mce) and res.ce == {}


def test_ce_and_mce_follow_imagenet_c_definitions(data):
    x, y, lr, weak = data
    res = evaluate(lr, x, y, shifts=SHIFTS, severities=SEV, baseline=weak, progress=False)
    base = evaluate(weak, x, y, shifts=SHIFTS, severities=SEV, progress=False)
    err, berr = res.matrix("error"), base.matrix("error")
    np.testing.assert_allclose(res.matrix("baseline_error"), berr)
    for i, name in enumerate(SHIFTS):
        assert res.ce[name] == pytest.approx(err[i].sum() / berr[i].sum())
        assert res.relative_ce[name] == pytest.approx(
            (err[i] - res.clean_error).sum() / (berr[i] - base.clean_error).sum())
    assert res.mce == pytest.approx(np.mean([res.ce[s] for s in SHIFTS]))
    assert res.relative_mce == pytest.approx(np.mean([res.relative_ce[s] for s in SHIFTS]))
    assert res.mean_error == pytest.approx(err.mean())
    # a baseline given as an earlier result gives the same numbers
    again = evaluate(lr, x, y, shifts=SHIFTS, severities=SEV, baseline=base, progress=False)
    assert again.ce == res.ce and again.relative_mce == res.relative_mce
    # the model against itself: CE = 1 everywhere
    self_res = evaluate(lr, x, y, shifts=SHIFTS, severities=SEV, baseline=lr, progress=False)
    assert self_res.mce == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in self_res.ce.values())


def test_torch_module_and_callables_agree(data):
    x, y, lr, _ = data
    ref = evaluate(lr, x, y, shifts=("contrast",), severities=(2, 4), progress=False)
    module = _as_torch(lr)
    via_torch = evaluate(module, torch.from_numpy(x), torch.from_numpy(y), shifts=("contrast",),
                         severities=(2, 4), batch_size=64, progress=False)
    assert via_torch.output_kind == "logits" and ref.output_kind == "probabilities"

    def probs_fn(xb):
        return lr.predict_proba(xb.reshape(len(xb), -1))

    def logits_fn(xb):
        return module(torch.from_numpy(xb))

    via_probs = evaluate(probs_fn, x, y, shifts=("contrast",), severities=(2, 4), progress=False)
    via_logits = evaluate(logits_fn, x, y, shifts=("contrast",), severities=(2, 4), batch_size=50,
                          progress=False)
    assert via_probs.output_kind == "probabilities" and via_logits.output_kind == "logits"
    # via_probs calls the same float64 predict_proba as ref: identical numbers. The torch paths compute the
    # logits in float32: |fl(w.x + b) - (w.x + b)| <= g * (sum_j |w_j x_j| + |b|) with g = (n + 2) u / (1 -
    # (n + 2) u), n = 64 terms, u = 2^-24 (Higham's dot-product bound, plus rounding w, b and x to float32).
    # A sample's arg-max can only differ where its float64 top-2 gap is below twice that bound, so the
    # accuracies agree within (number of such samples) / n; log-softmax moves by at most twice the largest
    # logit error, so the NLLs agree within that plus float32 rounding of the log-sum-exp (~1e-6).
    np.testing.assert_array_equal(via_probs.matrix("accuracy"), ref.matrix("accuracy"))
    np.testing.assert_array_equal(via_probs.matrix("nll"), ref.matrix("nll"))
    u = 2.0**-24
    g = 66 * u / (1 - 66 * u)
    acc_tol, nll_tol = [], []
    for sev in (2, 4):
        xc = corrupted(x, "contrast", sev).reshape(len(x), -1).astype(np.float64)
        z = xc @ lr.coef_.T + lr.intercept_
        err = g * (np.abs(xc) @ np.abs(lr.coef_).T + np.abs(lr.intercept_))  # (n, k) per-logit bound
        top2 = np.sort(z, axis=1)[:, -2:]
        acc_tol.append(np.count_nonzero(top2[:, 1] - top2[:, 0] <= 2 * err.max(axis=1)) / len(x))
        nll_tol.append(2 * err.max() + 1e-6)
    for other in (via_torch, via_logits):
        assert np.all(np.abs(other.matrix("accuracy") - ref.matrix("accuracy")) <= np.array(acc_tol) + 1e-12)
        assert np.all(np.abs(other.matrix("nll") - ref.matrix("nll")) <= np.array(nll_tol))


def test_seeded_and_serialisable(data):
    x, y, lr, _ = data
    a = evaluate(lr, x, y, shifts=("gaussian_noise",), severities=(5,), seed=1, progress=False)
    b = evaluate(lr, x, y, shifts=("gaussian_noise",), severities=(5,), seed=1, progress=False)
    assert a.table() == b.table()
    d = json.loads(a.to_json())
    assert d["rows"][0]["shift"] == "clean" and d["mce"] is None
    assert len(a.table()) == 2 and a.table()[1]["severity"] == 5


def test_default_shifts_are_the_15_imagenet_c_corruptions(data):
    from failsight.robustness.shifts import CORRUPTIONS

    x, y, lr, _ = data
    res = evaluate(lr, x[:40], y[:40], severities=3, progress=False)
    assert res.shifts == tuple(CORRUPTIONS) and len(res.shifts) == 15 and res.severities == (3,)
    assert res.matrix("ece").shape == (15, 1)
    assert set(res.families.values()) == {"noise", "blur", "weather", "digital"}


def test_bad_input_is_explained(data):
    x, y, lr, _ = data
    with pytest.raises(FailsightInputError, match="valid names"):
        evaluate(lr, x, y, shifts=("gaussian_nose",), progress=False)
    with pytest.raises(FailsightInputError, match=r"1\.\.5"):
        evaluate(lr, x, y, shifts=("contrast",), severities=(0, 3), progress=False)
    with pytest.raises(FailsightInputError, match=r"\[0, 1\]"):
        evaluate(lr, x * 255, y, shifts=("contrast",), progress=False)
    with pytest.raises(FailsightInputError, match="channels-last"):
        evaluate(lr, x.transpose(0, 2, 3, 1), y, shifts=("contrast",), progress=False)
    with pytest.raises(FailsightInputError, match="at least 8x8"):
        evaluate(lr, x[:, :, :4, :4], y, shifts=("contrast",), progress=False)
    with pytest.raises(FailsightInputError, match="different numbers"):
        evaluate(lr, x, y[:10], shifts=("contrast",), progress=False)
    with pytest.raises(FailsightInputError, match="callable"):
        evaluate("model", x, y, shifts=("contrast",), progress=False)
    base = evaluate(lr, x, y, shifts=("contrast",), severities=(1,), progress=False)
    with pytest.raises(FailsightInputError, match="baseline"):
        evaluate(lr, x, y, shifts=("contrast",), severities=(1, 2), baseline=base, progress=False)
    with pytest.raises(FailsightInputError, match="no row"):
        base.row("contrast", 4)
