"""Tests for failsight.reliability.selective (risk-coverage, misclassification detection, SGR)."""

from __future__ import annotations

import itertools
import math
import sys
import types

import numpy as np
import pytest
from scipy import optimize, stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from failsight._validate import FailsightInputError
from failsight.reliability.selective import (
    MisclassificationDetection,
    RiskCoverage,
    SelectiveThreshold,
    aurc,
    binomial_upper_bound,
    eaurc,
    misclassification_metrics,
    risk_coverage,
    select_threshold,
)


def _random_probs(rng: np.random.Generator, n: int, k: int, decimals: int | None = None, scale: float = 2.0):
    logits = rng.normal(size=(n, k)) * scale
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if decimals is not None:  # coarse probabilities -> many tied confidences
        p = np.round(p, decimals)
        p[:, -1] = 1 - p[:, :-1].sum(axis=1)
        p = np.clip(p, 0, 1)
        p /= p.sum(axis=1, keepdims=True)
    # labels drawn from p itself: a calibrated model whose confidence is informative about errors
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1).clip(0, k - 1)
    return y, p


def _geifman_aurc(conf: np.ndarray, err: np.ndarray) -> float:
    """Brute-force AURC of one fixed ordering: mean over i of errors in top-i / i."""
    order = np.argsort(-conf, kind="stable")
    return float(np.mean([err[order[:i]].mean() for i in range(1, len(err) + 1)]))


# ------------------------------------------------------------------------------------------------
# risk-coverage
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_risk_coverage_matches_brute_force(seed, decimals):
    rng = np.random.default_rng(seed)
    y, p = _random_probs(rng, 80, 4, decimals)
    conf = p.max(axis=1)
    err = (p.argmax(axis=1) != y).astype(float)
    rc = risk_coverage(y, p)
    assert isinstance(rc, RiskCoverage)
    distinct = np.unique(conf)[::-1]
    np.testing.assert_array_equal(rc.thresholds, distinct)
    brute_cov = np.array([(conf >= t).mean() for t in distinct])
    brute_risk = np.array([err[conf >= t].mean() for t in distinct])
    np.testing.assert_allclose(rc.coverage, brute_cov, rtol=0, atol=1e-15)
    np.testing.assert_allclose(rc.risk, brute_risk, rtol=0, atol=1e-15)
    assert rc.coverage[-1] == 1.0 and np.all(np.diff(rc.coverage) > 0)
    assert rc.n == 80 and rc.n_errors == int(err.sum())
    assert rc.risk[-1] == pytest.approx(err.mean())
    if decimals is None:
        assert len(np.unique(conf)) == 80
        assert rc.aurc == pytest.approx(_geifman_aurc(conf, err), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_aurc_with_ties_is_mean_over_all_tie_breakings(seed):
    rng = np.random.default_rng(seed)
    conf = rng.choice([0.2, 0.5, 0.9], size=9)
    err = rng.random(9) < 0.4
    err[0] = True
    # every ordering consistent with the scores, each equally likely
    groups = [np.flatnonzero(conf == v) for v in sorted(set(conf), reverse=True)]
    values = []
    for perm in itertools.product(*[itertools.permutations(g) for g in groups]):
        order = np.concatenate(perm)
        e = err[order].astype(float)
        values.append(np.mean(np.cumsum(e) / np.arange(1, 10)))
    y_true, y_pred = err.astype(int), np.zeros(9, dtype=int)
    rc = risk_coverage(y_true, scores=conf, y_pred=y_pred)
    assert rc.aurc == pytest.approx(np.mean(values), abs=1e-12)
    # and it does not depend on the input order
    perm = rng.permutation(9)
    assert aurc(y_true[perm], scores=conf[perm], y_pred=y_pred) == pytest.approx(rc.aurc, abs=1e-14)


def test_eaurc_zero_for_perfect_ordering_and_nonnegative():
    rng = np.random.default_rng(5)
    n = 500
    err = rng.random(n) < 0.3
    conf = np.where(err, rng.random(n) * 0.4, 0.6 + rng.random(n) * 0.4)  # every error below every success
    conf[:50] = np.where(err[:50], 0.1, 0.9)  # ties inside each side keep the ordering perfect
    y_true, y_pred = err.astype(int), np.zeros(n, dtype=int)
    rc = risk_coverage(y_true, scores=conf, y_pred=y_pred)
    assert rc.eaurc == 0.0
    assert rc.aurc == pytest.approx(rc.aurc_oracle, abs=1e-15)
    # oracle AURC matches the continuous formula r + (1 - r) ln(1 - r) up to O(log n / n)
    r = err.mean()
    assert rc.aurc_oracle == pytest.approx(r + (1 - r) * math.log(1 - r), abs=5 * math.log(n) / n)
    # the worst ordering (errors first) and random orderings are worse
    worst = risk_coverage(y_true, scores=-conf, y_pred=y_pred)
    assert worst.eaurc > 0.3
    for seed in range(20):
        c = np.random.default_rng(seed).random(n)
        assert eaurc(y_true, scores=c, y_pred=y_pred) >= 0.0
    # a constant score: every rank has the overall error rate in expectation
    flat = risk_coverage(y_true, scores=np.ones(n), y_pred=y_pred)
    assert flat.aurc == pytest.approx(r, abs=1e-14) and flat.thresholds.shape == (1,)


def test_risk_coverage_result_is_jsonable_and_risk_at():
    rng = np.random.default_rng(0)
    y, p = _random_probs(rng, 100, 3)
    rc = risk_coverage(y, p)
    d = rc.to_dict()
    assert len(d["coverage"]) == len(rc.thresholds) and d["score"] == "msp"
    rc.to_json()
    assert rc.risk_at(1.0) == pytest.approx(rc.error_rate)
    j = np.searchsorted(rc.coverage, 0.5)
    assert rc.risk_at(0.5) == rc.risk[j]


# ------------------------------------------------------------------------------------------------
# misclassification detection
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_misclassification_metrics_match_sklearn(seed, decimals):
    rng = np.random.default_rng(seed)
    y, p = _random_probs(rng, 400, 5, decimals)
    conf = p.max(axis=1)
    err = (p.argmax(axis=1) != y).astype(int)
    m = misclassification_metrics(y, p)
    assert isinstance(m, MisclassificationDetection)
    assert m.auroc == pytest.approx(roc_auc_score(err, -conf), abs=1e-12)
    assert m.aupr_error == pytest.approx(average_precision_score(err, -conf), abs=1e-12)
    assert m.aupr_success == pytest.approx(average_precision_score(1 - err, conf), abs=1e-12)
    fpr, tpr, _ = roc_curve(err, -conf, drop_intermediate=False)
    assert m.fpr_at_tpr == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    m90 = misclassification_metrics(y, p, tpr_level=0.9)
    assert m90.fpr_at_tpr == pytest.approx(fpr[np.argmax(tpr >= 0.9)], abs=1e-12)
    assert m.n_errors == err.sum() and m.error_rate == pytest.approx(err.mean())


def test_misclassification_metrics_degenerate_cases_are_nan():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = misclassification_metrics(y, p)  # no errors
    assert m.n_errors == 0 and math.isnan(m.auroc) and math.isnan(m.aupr_error)
    m.to_json()  # NaN -> null


# ------------------------------------------------------------------------------------------------
# binomial bound
# ------------------------------------------------------------------------------------------------


def test_binomial_upper_bound_inverts_the_binomial_tail():
    delta = 0.01
    for e, m in [(0, 10), (0, 1000), (3, 50), (40, 1000), (49, 50)]:
        b = float(binomial_upper_bound(e, m, delta))
        root = optimize.brentq(lambda q, e=e, m=m: stats.binom.cdf(e, m, q) - delta, 1e-12, 1 - 1e-12)
        assert b == pytest.approx(root, abs=1e-9)
    assert float(binomial_upper_bound(0, 200, delta)) == pytest.approx(1 - delta ** (1 / 200))
    assert float(binomial_upper_bound(7, 7, delta)) == 1.0
    vec = binomial_upper_bound(np.array([0, 1, 2]), np.array([10, 10, 10]), delta)
    assert vec.shape == (3,) and np.all(np.diff(vec) > 0)


# ------------------------------------------------------------------------------------------------
# select_threshold (SGR)
# ------------------------------------------------------------------------------------------------


def test_select_threshold_fields_and_local_optimality():
    rng = np.random.default_rng(3)
    y, p = _random_probs(rng, 3000, 10, scale=4.0)
    res = select_threshold(y, p, max_risk=0.1, confidence=0.9)
    assert isinstance(res, SelectiveThreshold)
    conf = p.max(axis=1)
    err = p.argmax(axis=1) != y
    acc = res.apply(conf)
    assert acc.sum() == res.n_accepted and res.coverage == pytest.approx(acc.mean())
    assert res.risk == pytest.approx(err[acc].mean()) and res.n_errors_accepted == err[acc].sum()
    assert res.risk_bound <= res.max_risk and res.risk <= res.risk_bound
    m = len(np.unique(conf))
    assert res.n_steps == math.ceil(math.log2(m + 1))
    assert res.delta_per_step == pytest.approx(0.1 / res.n_steps)
    assert res.risk_bound == pytest.approx(
        float(binomial_upper_bound(res.n_errors_accepted, res.n_accepted, res.delta_per_step)))
    # the next candidate (one more distinct score accepted) violates the bound
    rc = risk_coverage(y, p)
    j = int(np.flatnonzero(rc.thresholds == res.threshold)[0])
    assert j == m - 1 or binomial_upper_bound(
        round(rc.risk[j + 1] * rc.coverage[j + 1] * rc.n), round(rc.coverage[j + 1] * rc.n),
        res.delta_per_step) > 0.1
    assert res.to_dict()["threshold"] == res.threshold


def test_select_threshold_with_ties_accepts_whole_groups():
    rng = np.random.default_rng(1)
    y, p = _random_probs(rng, 2000, 3, decimals=1)
    res = select_threshold(y, p, max_risk=0.2, confidence=0.95)
    conf = p.max(axis=1)
    assert res.threshold in set(conf)
    assert res.apply(conf).sum() == res.n_accepted == (conf >= res.threshold).sum()


def test_select_threshold_full_coverage_when_easy():
    rng = np.random.default_rng(0)
    n = 5000
    y_true = (rng.random(n) < 0.01).astype(int)  # 1% errors everywhere
    res = select_threshold(y_true, scores=rng.random(n), y_pred=np.zeros(n, int), max_risk=0.2)
    assert res.coverage == 1.0


def _sgr_simulation(n_draws: int, n: int, max_risk: float, confidence: float, seed: int):
    """score ~ U(0,1), P(error | s) = a (1 - s)^2, so the true selective risk of threshold t is
    a (1 - t)^2 / 3 and the oracle coverage for max_risk is sqrt(3 max_risk / a)."""
    a = 0.6
    rng = np.random.default_rng(seed)
    s = rng.random((n_draws, n))
    err = rng.random((n_draws, n)) < a * (1 - s) ** 2
    y_pred = np.zeros(n, dtype=int)
    t = np.array([select_threshold(err[d].astype(int), scores=s[d], y_pred=y_pred, max_risk=max_risk,
                                   confidence=confidence).threshold for d in range(n_draws)])
    true_risk = a * (1 - t) ** 2 / 3
    true_cov = 1 - t
    # naive baseline: largest coverage whose *empirical* risk is <= max_risk (no bound), vectorised
    order = np.argsort(-s, axis=1)
    e_sorted = np.take_along_axis(err, order, axis=1)
    emp = np.cumsum(e_sorted, axis=1) / np.arange(1, n + 1)
    last_ok = n - 1 - np.argmax((emp <= max_risk)[:, ::-1], axis=1)
    t_naive = np.take_along_axis(s, order, axis=1)[np.arange(n_draws), last_ok]
    naive_risk = a * (1 - t_naive) ** 2 / 3
    oracle_cov = math.sqrt(3 * max_risk / a)
    return true_risk, true_cov, naive_risk, oracle_cov


def test_select_threshold_guarantee_holds_by_simulation():
    max_risk, confidence, n_draws = 0.05, 0.9, 400
    true_risk, true_cov, naive_risk, oracle_cov = _sgr_simulation(n_draws, 2000, max_risk, confidence, 0)
    violation = np.mean(true_risk > max_risk)
    # Allowed: 1 - confidence = 0.10, plus 0.03 slack (2 binomial SDs of a 0.10 rate over 400 draws).
    assert violation <= (1 - confidence) + 0.03
    # The test has power: picking the threshold by the empirical risk alone violates it very often.
    assert np.mean(naive_risk > max_risk) > 0.3
    # The bound is not vacuous: coverage close to the oracle coverage 0.5.
    assert np.median(true_cov) >= 0.75 * oracle_cov
    assert np.all(true_cov <= oracle_cov + 0.1)


def test_select_threshold_raises_when_requirement_unreachable():
    rng = np.random.default_rng(0)
    y, p = _random_probs(rng, 200, 3)
    m = len(np.unique(p.max(axis=1)))
    delta_k = 0.05 / math.ceil(math.log2(m + 1))
    need = math.ceil(math.log(delta_k) / math.log(1 - 0.001))
    with pytest.raises(FailsightInputError, match=r"no threshold meets max_risk=0\.001") as exc:
        select_threshold(y, p, max_risk=0.001, confidence=0.95)
    msg = str(exc.value)
    assert f"at least {need} accepted samples" in msg
    assert "Raise max_risk" in msg and "lower confidence" in msg
    # even a perfect classifier cannot certify 0.001 with 200 samples
    with pytest.raises(FailsightInputError, match="at least"):
        select_threshold(p.argmax(axis=1), p, max_risk=0.001, confidence=0.95)


# ------------------------------------------------------------------------------------------------
# inputs and the score registry
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(0)
    y, p = _random_probs(rng, 50, 3)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        risk_coverage(y, p, scores=np.ones(49))
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        risk_coverage(y[:40], p)
    with pytest.raises(FailsightInputError, match="NaN"):
        risk_coverage(y, p, scores=np.full(50, np.nan))
    with pytest.raises(FailsightInputError, match="cannot tell which predictions are wrong"):
        risk_coverage(y, scores=np.ones(50))
    with pytest.raises(FailsightInputError, match="max_risk"):
        select_threshold(y, p, max_risk=1.5)
    with pytest.raises(FailsightInputError, match="max_risk"):
        select_threshold(y, p, max_risk=0.0)
    with pytest.raises(FailsightInputError, match="confidence"):
        select_threshold(y, p, max_risk=0.1, confidence=1.0)
    with pytest.raises(FailsightInputError, match="label"):
        risk_coverage(np.full(50, 7), p)
    with pytest.raises(FailsightInputError, match="sum to 1"):
        misclassification_metrics(y, p * 2 / 3)
    with pytest.raises(FailsightInputError, match="tpr_level"):
        misclassification_metrics(y, p, tpr_level=0)
    res = select_threshold(y, p, max_risk=0.6)
    with pytest.raises(FailsightInputError, match="1-D"):
        res.apply(p)


def test_binary_and_logits_inputs():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2)) * 2
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (rng.random(300) < p[:, 1]).astype(int)
    a = risk_coverage(y, p)
    b = risk_coverage(y, p[:, 1])  # binary (n,) = P(class 1)
    np.testing.assert_allclose(a.risk, b.risk)
    assert a.aurc == pytest.approx(b.aurc)
    c = risk_coverage(y, scores=p.max(axis=1), logits=z)  # predictions from the argmax of logits
    assert c.aurc == pytest.approx(a.aurc) and c.score == "custom"


def test_named_scores_use_the_registry(monkeypatch):
    calls = []

    def confidence_score(name, probs=None, logits=None):
        calls.append((name, probs is not None, logits is not None))
        srt = np.sort(probs, axis=1)
        return srt[:, -1] - srt[:, -2]

    fake = types.ModuleType("failsight.reliability.scores")
    fake.confidence_score = confidence_score
    monkeypatch.setitem(sys.modules, "failsight.reliability.scores", fake)
    rng = np.random.default_rng(0)
    y, p = _random_probs(rng, 200, 4)
    srt = np.sort(p, axis=1)
    rc = risk_coverage(y, p, score="margin")
    ref = risk_coverage(y, p, scores=srt[:, -1] - srt[:, -2])
    assert calls == [("margin", True, False)] and rc.score == "margin"
    assert rc.aurc == pytest.approx(ref.aurc)


def test_real_registry_msp_agrees_with_max_probability():
    pytest.importorskip("failsight.reliability.scores")
    rng = np.random.default_rng(0)
    y, p = _random_probs(rng, 200, 4)
    assert risk_coverage(y, p).aurc == pytest.approx(risk_coverage(y, p, scores=p.max(axis=1)).aurc)
    for name in ["margin", "entropy", "doctor"]:
        assert 0 <= risk_coverage(y, p, score=name).aurc <= 1
    z = np.log(np.clip(p, 1e-12, None))
    rc = risk_coverage(y, logits=z, score="max_logit")
    assert rc.score == "max_logit"
    assert rc.aurc == pytest.approx(risk_coverage(y, logits=z, scores=z.max(axis=1)).aurc)
    with pytest.raises(FailsightInputError, match="logits"):
        risk_coverage(y, p, score="energy")


def test_select_threshold_skips_hopeless_small_prefixes():
    # 449 samples, errors only among the 12 least confident: the 411+ most confident are error-free.
    # Plain SGR probes the middle first (225 samples: even zero errors bound at ~0.023 > 0.02) and then
    # walks towards ever smaller prefixes; the label-independent pre-filter must avoid that.
    n = 449
    scores = np.linspace(1.0, 0.1, n)
    y_true = np.zeros(n, dtype=int)
    y_pred = np.zeros(n, dtype=int)
    y_pred[-12:] = 1
    sel = select_threshold(y_true, scores=scores, y_pred=y_pred, max_risk=0.02, confidence=0.95)
    assert sel.risk_bound <= 0.02
    assert sel.coverage > 0.8
    assert sel.n_errors_accepted <= sel.n_accepted * 0.02
