import numpy as np
import pytest
from scipy import stats

from failsight._validate import FailsightInputError
from failsight.robustness.label_shift import BBSEResult, bbse_estimate, resample_to_priors, reweight_probs


def _labels(seed=0, n=1000, k=4):
    return np.random.default_rng(seed).integers(0, k, n)


# ------------------------------------------------------------------------------------------------
# resampling
# ------------------------------------------------------------------------------------------------
def test_resample_hits_priors_exactly_without_replacement():
    y = _labels()
    priors = np.array([0.5, 0.25, 0.15, 0.10])
    idx = resample_to_priors(y, priors, n=400)
    assert len(idx) == 400 and len(np.unique(idx)) == 400
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=4), [200, 100, 60, 40])


def test_resample_default_n_is_largest_that_fits():
    y = np.repeat(np.arange(3), [100, 50, 10])
    idx = resample_to_priors(y, [0.2, 0.3, 0.5])
    counts = np.bincount(y[idx], minlength=3)
    assert np.all(counts <= [100, 50, 10])
    assert len(idx) == 20  # the 10 samples of class 2 limit the size: 10 / 0.5
    with pytest.raises(FailsightInputError, match="replace=True"):
        resample_to_priors(y, [0.2, 0.3, 0.5], n=100)
    idx = resample_to_priors(y, [0.2, 0.3, 0.5], n=100, replace=True)
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=3), [20, 30, 50])


def test_resample_dirichlet_is_seeded():
    y = _labels()
    a = resample_to_priors(y, dirichlet_alpha=0.5, n=300, replace=True, seed=4)
    b = resample_to_priors(y, dirichlet_alpha=0.5, n=300, replace=True, seed=4)
    c = resample_to_priors(y, dirichlet_alpha=0.5, n=300, replace=True, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.bincount(y[a], minlength=4), np.bincount(y[c], minlength=4))
    # realised priors are the Dirichlet draw rounded to counts
    p = np.random.default_rng(4).dirichlet(np.full(4, 0.5))
    assert np.abs(np.bincount(y[a], minlength=4) / 300 - p).max() <= 1 / 300 + 1e-12


def test_resample_zero_prior_classes_are_dropped():
    y = _labels()
    idx = resample_to_priors(y, [0.0, 0.5, 0.5, 0.0], n=100)
    assert set(np.unique(y[idx])) == {1, 2}


def test_resample_errors():
    y = _labels(k=3)
    with pytest.raises(FailsightInputError, match="exactly one"):
        resample_to_priors(y)
    with pytest.raises(FailsightInputError, match="exactly one"):
        resample_to_priors(y, [0.3, 0.3, 0.4], dirichlet_alpha=1.0)
    with pytest.raises(FailsightInputError, match="sums to"):
        resample_to_priors(y, [0.3, 0.3, 0.3])
    with pytest.raises(FailsightInputError, match="3 classes"):
        resample_to_priors(y, [0.5, 0.5])
    with pytest.raises(FailsightInputError, match="no samples"):
        resample_to_priors(y, [0.25, 0.25, 0.25, 0.25], n_classes=4)
    with pytest.raises(FailsightInputError, match="dirichlet_alpha"):
        resample_to_priors(y, dirichlet_alpha=-1.0)


# ------------------------------------------------------------------------------------------------
# BBSE
# ------------------------------------------------------------------------------------------------
def _source(seed=0, n=3000, k=3):
    """Labels, hard predictions and probabilities from a noisy classifier on Gaussian classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    means = np.eye(k) * 2.0
    x = means[y] + rng.normal(size=(n, k))
    logp = stats.multivariate_normal.logpdf(x[:, None, :] - means[None], cov=np.eye(k))
    probs = np.exp(logp - logp.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return y, probs.argmax(1), probs


@pytest.mark.parametrize("soft", [False, True])
def test_bbse_recovers_weights_exactly_on_replicated_target(soft):
    # target = every class-j sample repeated r_j times: the class-conditional prediction distribution is
    # exactly the source one, so C w = mu holds exactly and BBSE must return w ∝ r.
    y, hard, probs = _source()
    reps = np.array([3, 1, 2])
    idx = np.concatenate([np.repeat(np.flatnonzero(y == c), reps[c]) for c in range(3)])
    pv = probs if soft else hard
    res = bbse_estimate(y, pv, pv[idx], soft=soft)
    src = np.bincount(y) / len(y)
    true_q = reps * src / (reps * src).sum()
    np.testing.assert_allclose(res.target_priors, true_q, atol=1e-10)
    np.testing.assert_allclose(res.weights, true_q / src, atol=1e-10)
    assert res.weights @ res.source_priors == pytest.approx(1.0)
    assert isinstance(res, BBSEResult) and res.condition_number < 10


def test_bbse_no_shift_gives_unit_weights_and_estimates_new_priors():
    y, hard, _ = _source(seed=1, n=4000)
    res = bbse_estimate(y, hard, hard)
    np.testing.assert_allclose(res.weights, 1.0, atol=1e-10)
    # independent target sample with different priors
    yt, ht, _ = _source(seed=2, n=20000)
    idx = resample_to_priors(yt, [0.7, 0.2, 0.1], seed=0)
    res = bbse_estimate(y, hard, ht[idx])
    # BBSE solves q = R^{-1} mu with R[i, j] = P(pred i | class j) from the source and mu the target's
    # prediction frequencies. To first order q_hat - q = R^{-1} (R_tgt - R_src) q, where column j of each
    # empirical R is a multinomial mean over that class's samples (n_j source, m_j target, independent):
    # Cov(q_hat) = R^{-1} [sum_j q_j^2 (diag r_j - r_j r_j^T) (1/m_j + 1/n_j)] R^{-T}. A 5.3-sigma band per
    # class fails with probability < 1.2e-7 each under the (n_j ~ 1300, m_j >= 950) normal approximation;
    # the band is ~0.04-0.05 here (the old fixed 0.03 was ~3.3 sigma), far below the 0.37 error of a
    # biased estimator that returned the source priors.
    q = np.array([0.7, 0.2, 0.1])
    n_src = np.bincount(y, minlength=3)
    m_tgt = np.bincount(yt[idx], minlength=3)
    r = np.stack([np.bincount(hard[y == j], minlength=3) / n_src[j] for j in range(3)], axis=1)
    inner = sum(q[j] ** 2 * (np.diag(r[:, j]) - np.outer(r[:, j], r[:, j])) * (1 / m_tgt[j] + 1 / n_src[j])
                for j in range(3))
    r_inv = np.linalg.inv(r)
    sd = np.sqrt(np.diag(r_inv @ inner @ r_inv.T))
    assert np.all(np.abs(res.target_priors - q) <= 5.3 * sd), (res.target_priors, 5.3 * sd)


def test_bbse_clips_negative_weights_and_renormalises():
    y, hard, _ = _source(seed=3)
    # a target sample with (almost) no class-2 predictions drives the class-2 weight negative
    target = hard[(hard != 2) & (y != 2)]
    res = bbse_estimate(y, hard, target)
    assert res.raw_weights[2] < 0
    assert res.weights[2] == 0 and np.all(res.weights >= 0)
    assert res.target_priors.sum() == pytest.approx(1.0)


def test_bbse_errors():
    y, hard, probs = _source()
    with pytest.raises(FailsightInputError, match="no samples"):
        bbse_estimate(y[y != 1], hard[y != 1], hard, n_classes=3)
    with pytest.raises(FailsightInputError, match="soft=True"):
        bbse_estimate(y, hard, hard, soft=True)
    with pytest.raises(FailsightInputError, match="different numbers"):
        bbse_estimate(y[:10], hard, hard)
    with pytest.raises(FailsightInputError, match="columns"):
        bbse_estimate(y, probs, probs[:, :2] / probs[:, :2].sum(1, keepdims=True))


# ------------------------------------------------------------------------------------------------
# re-weighting
# ------------------------------------------------------------------------------------------------
def test_reweight_is_bayes_rule_for_new_priors():
    # p_src(y | x) ∝ p_y N(x; m_y); under priors q the posterior is ∝ q_y N(x; m_y)
    rng = np.random.default_rng(0)
    means = np.array([-1.0, 0.0, 1.5])
    x = rng.normal(size=200)
    lik = stats.norm.pdf(x[:, None], loc=means[None])
    p = np.array([0.2, 0.5, 0.3])
    q = np.array([0.6, 0.1, 0.3])
    post_p = lik * p / (lik * p).sum(1, keepdims=True)
    post_q = lik * q / (lik * q).sum(1, keepdims=True)
    np.testing.assert_allclose(reweight_probs(post_p, q / p), post_q, atol=1e-12)
    np.testing.assert_allclose(reweight_probs(post_p, np.ones(3)), post_p, atol=1e-12)


def test_reweight_with_bbse_improves_accuracy_under_label_shift():
    y, hard, _ = _source(seed=5, n=3000)
    yt, _, pt = _source(seed=6, n=20000)
    idx = resample_to_priors(yt, [0.8, 0.15, 0.05], seed=1)
    res = bbse_estimate(y, hard, pt[idx])
    fixed = reweight_probs(pt[idx], res)
    assert np.allclose(fixed.sum(1), 1.0)
    assert (fixed.argmax(1) == yt[idx]).mean() > (pt[idx].argmax(1) == yt[idx]).mean() + 0.02


def test_reweight_edge_cases():
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    out = reweight_probs(p, [0.0, 1.0, 1.0])
    np.testing.assert_allclose(out[0], [0.0, 0.5, 0.5])  # mass only on a zero-weight class
    np.testing.assert_allclose(out[1], [0.0, 0.375, 0.625])
    with pytest.raises(FailsightInputError, match="3 classes"):
        reweight_probs(p, [1.0, 1.0])
    with pytest.raises(FailsightInputError, match=">= 0"):
        reweight_probs(p, [1.0, -1.0, 1.0])
