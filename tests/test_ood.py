import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.covariance import EmpiricalCovariance

from failsight._validate import FailsightInputError
from failsight.robustness.ood import Mahalanobis, OODMetrics, ood_metrics, penultimate_features


def _sklearn_reference(s_in, s_out):
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    return (skm.roc_auc_score(y, s), skm.average_precision_score(y, s),
            skm.average_precision_score(1 - y, -s), fpr[np.searchsorted(tpr, 0.95, side="left")])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rounding", [None, 1, 0])  # 0 / 1 decimals create many ties
def test_ood_metrics_agree_with_sklearn(seed, rounding):
    rng = np.random.default_rng(seed)
    s_in = rng.normal(1.0, 1.0, 300 + 37 * seed)
    s_out = rng.normal(0.0, 1.5, 200)
    if rounding is not None:
        s_in, s_out = np.round(s_in, rounding), np.round(s_out, rounding)
    res = ood_metrics(s_in, s_out)
    ref = _sklearn_reference(s_in, s_out)
    np.testing.assert_allclose([res.auroc, res.aupr_in, res.aupr_out, res.fpr_at_95_tpr], ref, atol=1e-12)
    assert (res.n_in, res.n_out) == (len(s_in), len(s_out))


def test_ood_metrics_extremes():
    perfect = ood_metrics(np.arange(10, 20), np.arange(10))
    assert perfect == OODMetrics(1.0, 1.0, 1.0, 0.0, 10, 10)
    flipped = ood_metrics(np.arange(10), np.arange(10, 20))
    assert flipped.auroc == 0.0 and flipped.fpr_at_95_tpr == 1.0
    tied = ood_metrics(np.ones(5), np.ones(7))
    assert tied.auroc == 0.5 and tied.aupr_in == pytest.approx(5 / 12)
    assert tied.to_dict()["auroc"] == 0.5


def test_ood_metrics_bad_input():
    with pytest.raises(FailsightInputError, match="empty"):
        ood_metrics(np.array([]), np.ones(3))
    with pytest.raises(FailsightInputError, match="NaN"):
        ood_metrics(np.array([1.0, np.nan]), np.ones(3))
    with pytest.raises(FailsightInputError, match="1-D"):
        ood_metrics(np.ones((3, 2)), np.ones(3))


def _gaussian_classes(seed=0, n=600, d=5, k=3):
    a = np.random.default_rng(99).normal(size=(d, d))  # the same class-conditional shape for every seed
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) @ a + 3.0 * np.eye(k, d)[y]
    return x, y


def test_mahalanobis_matches_sklearn_covariance():
    x, y = _gaussian_classes()
    det = Mahalanobis(reg=0.0).fit(x, y)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(det.means_, means, atol=1e-12)
    ec = EmpiricalCovariance(assume_centered=True).fit(x - means[y])
    np.testing.assert_allclose(det.covariance_, ec.covariance_, atol=1e-10)
    xt = np.random.default_rng(1).normal(size=(20, 5))
    ref = np.stack([ec.mahalanobis(xt - m) for m in means], axis=1)
    np.testing.assert_allclose(det.distances(xt), ref, rtol=1e-8)
    np.testing.assert_allclose(det.score(xt), -ref.min(1), rtol=1e-8)
    np.testing.assert_array_equal(det.predict(xt), ref.argmin(1))


def test_mahalanobis_separates_far_samples_and_handles_singular_features():
    x, y = _gaussian_classes(seed=2)
    x = np.c_[x, np.zeros(len(x))]  # a dead feature (as after ReLU): covariance is singular
    det = Mahalanobis().fit(x, y)
    x_in, _ = _gaussian_classes(seed=4, n=200)
    x_in = np.c_[x_in, np.zeros(len(x_in))]
    x_out = x_in + np.r_[np.full(5, 10.0), 0.0]  # the same cloud moved far away
    m = ood_metrics(det.score(x_in), det.score(x_out))
    assert m.auroc > 0.99
    # a sample that switches the dead feature on is maximally out-of-distribution, but still finite
    odd = x_in[:5].copy()
    odd[:, -1] = 1.0
    assert np.all(det.score(odd) < det.score(x_in).min()) and np.all(np.isfinite(det.score(odd)))
    assert det.get_params() == {"reg": 1e-6}


def test_mahalanobis_errors():
    x, y = _gaussian_classes()
    with pytest.raises(FailsightInputError, match="not fitted"):
        Mahalanobis().score(x)
    det = Mahalanobis().fit(x, y)
    with pytest.raises(FailsightInputError, match="fitted on 5"):
        det.score(x[:, :3])
    with pytest.raises(FailsightInputError, match="different numbers"):
        Mahalanobis().fit(x, y[:10])


def test_penultimate_features_takes_input_of_last_linear():
    import torch
    from torch import nn

    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
    model = nn.Sequential(body, nn.Linear(8, 3))
    model.train()
    x = np.random.default_rng(0).random((10, 1, 4, 4)).astype(np.float32)
    feats = penultimate_features(model, x, batch_size=3)
    with torch.no_grad():
        expected = body(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    assert model.training  # mode restored
    with pytest.raises(FailsightInputError, match=r"nn\.Module"):
        penultimate_features(lambda z: z, x)


def test_ood_scores_come_from_reliability_scores_oriented_in_distribution_high():
    from scipy.special import logsumexp, softmax

    from failsight.robustness.ood import ood_score

    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 4)) * 3
    p = softmax(z, axis=1)
    np.testing.assert_allclose(ood_score("msp", logits=z), p.max(1))
    np.testing.assert_allclose(ood_score("msp", probs=p), p.max(1))
    np.testing.assert_allclose(ood_score("max_logit", logits=z), z.max(1))
    np.testing.assert_allclose(ood_score("energy", logits=z), logsumexp(z, axis=1))
    np.testing.assert_allclose(ood_score("energy", logits=z, temperature=2.0), 2 * logsumexp(z / 2, axis=1))
    np.testing.assert_allclose(ood_score("entropy", probs=p), (p * np.log(p)).sum(1), atol=1e-12)
    # confident (in-distribution-like) logits score higher than flat (OOD-like) ones for every score
    conf, flat = np.array([[8.0, 0.0, 0.0, 0.0]]), np.array([[0.5, 0.4, 0.3, 0.2]])
    for name in ("msp", "max_logit", "energy", "entropy"):
        assert ood_score(name, logits=conf)[0] > ood_score(name, logits=flat)[0]
    with pytest.raises(FailsightInputError, match="logits"):
        ood_score("energy", probs=p)
    with pytest.raises(FailsightInputError, match="unknown OOD score"):
        ood_score("odin", logits=z)
