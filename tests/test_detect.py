import numpy as np
import pytest
from scipy import stats

from failsight._validate import FailsightInputError
from failsight.robustness.detect import METHODS, MIN_SAMPLES, ShiftTest, detect_shift


def _naive_mmd2(x, y):
    z = np.concatenate([x, y])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    med = np.median(d2[~np.eye(len(z), dtype=bool)])
    k = np.exp(-d2 / med)
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


@pytest.mark.parametrize(("method", "kw"), [("bbsd", {}), ("mmd", {"n_permutations": 199}),
                                           ("classifier", {}), ("classifier", {"classifier_statistic": "accuracy"})])
def test_null_false_positive_rate_is_calibrated(method, kw):
    # 200 trials of two samples from the same 3-D Gaussian: the FPR at alpha = 0.05 must lie in a
    # binomial band around 0.05 (sd ~ 0.015); exact-level tests may be slightly conservative.
    rng = np.random.default_rng(123)
    trials = 200
    rejections = 0
    for t in range(trials):
        x = rng.normal(size=(60, 3))
        y = rng.normal(size=(40, 3))
        res = detect_shift(x, y, method, alpha=0.05, seed=t, **kw)
        rejections += res.is_shift
    fpr = rejections / trials
    assert 0.01 <= fpr <= 0.095, fpr


@pytest.mark.parametrize("method", METHODS)
def test_power_on_a_clear_shift(method):
    rng = np.random.default_rng(7)
    hits = 0
    for t in range(10):
        x = rng.normal(size=(100, 3))
        y = rng.normal(size=(100, 3))
        y[:, 0] += 1.5
        res = detect_shift(x, y, method, n_permutations=199, seed=t)
        hits += res.is_shift
        assert res.p_value <= 0.05
    assert hits == 10


def _softmax_like(rng, n, k=10):
    """Confident softmax outputs of a k-class model (dependent dimensions on the simplex)."""
    y = rng.integers(0, k, n)
    z = rng.normal(0.0, 1.5, (n, k))
    z[np.arange(n), y] += 6.0
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def test_bbsd_default_size_holds_at_ten_new_samples():
    # the default (KS + Bonferroni over 10 dependent softmax dimensions) keeps its size near alpha even for
    # 10 new samples: 600 null trials, binomial sd ~0.009 at 0.045
    rng = np.random.default_rng(11)
    trials = 600
    hits = sum(detect_shift(_softmax_like(rng, 100), _softmax_like(rng, 10)).is_shift for _ in range(trials))
    assert 0.02 <= hits / trials <= 0.08, hits / trials


def test_bbsd_matches_per_dimension_ks_with_bonferroni():
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(4), size=80)
    y = rng.dirichlet(np.r_[2.0, 1.0, 1.0, 1.0], size=50)
    res = detect_shift(x, y, "bbsd", alpha=0.1)
    p = np.array([stats.ks_2samp(x[:, j], y[:, j]).pvalue for j in range(4)])
    d = np.array([stats.ks_2samp(x[:, j], y[:, j]).statistic for j in range(4)])
    np.testing.assert_allclose(res.details["p_values"], p)
    assert res.p_value == pytest.approx(min(1.0, 4 * p.min()))
    assert res.statistic == pytest.approx(d.max())
    assert res.details["per_dimension_threshold"] == pytest.approx(0.1 / 4)
    assert res.is_shift == bool(p.min() <= 0.1 / 4)
    assert res.threshold == 0.1


def test_mmd_statistic_is_unbiased_mmd2_and_p_value_counts_observed():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 2))
    y = rng.normal(0.5, 1.0, size=(17, 2))
    res = detect_shift(x, y, "mmd", n_permutations=99, seed=3)
    assert res.statistic == pytest.approx(_naive_mmd2(x, y), rel=1e-10, abs=1e-12)
    # (1 + #{T_b >= T}) / (1 + B): a multiple of 1/100, never below 1/100
    k = res.p_value * 100
    assert k == pytest.approx(round(k)) and round(k) >= 1
    # reproducible with the seed, different permutations with another seed
    assert detect_shift(x, y, "mmd", n_permutations=99, seed=3).p_value == res.p_value
    far = detect_shift(x, y + 10, "mmd", n_permutations=99, seed=0)
    assert far.p_value == pytest.approx(1 / 100)


def test_mmd_of_identical_samples_never_rejects():
    x = np.zeros((10, 2))
    res = detect_shift(x, x.copy(), "mmd", n_permutations=50)
    assert res.p_value == 1.0 and not res.is_shift


def test_classifier_separable_and_details():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 2))
    y = rng.normal(size=(40, 2)) + 8.0
    for clf in ("logistic", "gbm"):
        res = detect_shift(x, y, "classifier", classifier=clf)
        assert res.statistic == 1.0 and res.details["auc"] == 1.0 and res.details["accuracy"] == 1.0
        assert res.p_value < 1e-8 and res.is_shift
        assert res.details["chance_accuracy"] == pytest.approx(30 / 50)
    # exact p-values: perfect separation of 30 ref + 20 new held out has probability 1 / C(50, 20) under H0,
    # for the rank (AUC) test and for the hypergeometric accuracy test alike
    from math import comb

    for stat in ("auc", "accuracy"):
        res = detect_shift(x, y, "classifier", classifier_statistic=stat)
        assert res.p_value == pytest.approx(1 / comb(50, 20), rel=1e-6)
        assert res.details["statistic"] == stat


def test_classifier_auc_p_value_is_mann_whitney_on_held_out_scores():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 2))
    y = rng.normal(size=(80, 2)) + 0.4
    res = detect_shift(x, y, "classifier", seed=2)
    assert 0.5 < res.statistic < 1.0 and res.statistic == res.details["auc"]
    assert res.details["n_test"] == 80
    acc = detect_shift(x, y, "classifier", seed=2, classifier_statistic="accuracy")
    assert acc.statistic == res.details["accuracy"]  # same split and classifier


def test_result_follows_alibi_convention_and_serialises():
    rng = np.random.default_rng(0)
    res = detect_shift(rng.normal(size=(30, 2)), rng.normal(size=(30, 2)), "bbsd")
    assert isinstance(res, ShiftTest)
    a = res.as_alibi()
    assert set(a) == {"is_drift", "p_val", "threshold", "distance"}
    assert a["p_val"] == res.p_val == res.p_value and res.distance == res.statistic
    assert res.is_drift == res.is_shift
    d = res.to_dict()
    assert d["method"] == "bbsd" and isinstance(d["details"]["p_values"], list)
    assert res.to_json()


def test_accepts_torch_tensors_and_1d():
    import torch

    rng = np.random.default_rng(0)
    res = detect_shift(torch.tensor(rng.normal(size=50)), rng.normal(size=50) + 3, "bbsd")
    assert res.is_shift and res.n_reference == 50


@pytest.mark.parametrize("method", METHODS)
def test_too_few_samples_is_a_clear_error(method):
    need = MIN_SAMPLES[method]
    x = np.random.default_rng(0).normal(size=(need - 1, 2))
    with pytest.raises(FailsightInputError, match="too few samples"):
        detect_shift(x, np.ones((50, 2)), method)


def test_bad_inputs():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(FailsightInputError, match="unknown method"):
        detect_shift(x, x, "ks")
    with pytest.raises(FailsightInputError, match="same kind"):
        detect_shift(x, x[:, :2], "mmd")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FailsightInputError, match="NaN"):
        detect_shift(x, bad)
    with pytest.raises(FailsightInputError, match="alpha"):
        detect_shift(x, x, alpha=1.5)
    with pytest.raises(FailsightInputError, match="classifier"):
        detect_shift(x, x, "classifier", classifier="svm")
    with pytest.raises(FailsightInputError, match="classifier_statistic"):
        detect_shift(x, x, "classifier", classifier_statistic="f1")


def test_bbsd_permutation_is_exact_at_tiny_n_and_matches_scipy_ks():
    from scipy import stats

    from failsight.robustness.detect import _max_ks_permutations

    rng = np.random.default_rng(0)
    # dependent, softmax-like outputs: Bonferroni is conservative here, the permutation version is not
    def draw(n):
        return rng.dirichlet(np.full(10, 0.3), size=n)

    ref = draw(200)
    pooled = np.concatenate([ref, draw(10)])
    obs, _ = _max_ks_permutations(pooled, 200, rng, 5)
    want = stats.ks_2samp(pooled[:200], pooled[200:], axis=0).statistic.max()
    assert obs == pytest.approx(want, abs=1e-12)

    rejections = 0
    trials = 200
    for t in range(trials):
        new = draw(10)
        rejections += detect_shift(ref, new, "bbsd", bbsd_correction="permutation", n_permutations=199,
                                   seed=t).is_shift
    assert 0.02 <= rejections / trials <= 0.09  # exact level 0.05; band ~ 2 binomial SDs over 200 trials
    shifted = rng.dirichlet(np.r_[np.full(5, 2.0), np.full(5, 0.1)], size=50)
    assert detect_shift(ref, shifted, "bbsd", bbsd_correction="permutation").is_shift


def test_bbsd_correction_must_be_known():
    x = np.random.default_rng(0).random((30, 3))
    with pytest.raises(FailsightInputError, match="bbsd_correction"):
        detect_shift(x, x, "bbsd", bbsd_correction="holm")
