import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from failsight._validate import FailsightInputError
from failsight.slices import (
    VERDICTS,
    adjust_pvalues,
    compare,
    evaluate,
    learning_curves,
    load_groups,
)
from failsight.slices._stats import mcnemar_one_sided, paired_delta_interval
from failsight.slices.core import _paired_verdicts

# ----------------------------------------------------------------------------- helpers


def _labels_with_accuracy(correct: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random labels ``(n,)`` and predictions that are right exactly where ``correct``."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, len(correct))
    pred = np.where(correct, y, (y + 1) % k)
    return y, pred


def _cells(acc_b: np.ndarray, acc_c: np.ndarray, rho: float) -> np.ndarray:
    """Cell probabilities (both right, lost, gained, both wrong) per slice ``(S, 4)``.

    The candidate copies the baseline's outcome with probability ``rho``, else draws its own with
    probability ``q`` of being right, chosen so the candidate's accuracy is ``acc_c``. With
    ``acc_c == acc_b`` lost and gained are equally likely: the two models are exchangeable ("nothing
    changed", e.g. a retrain with another seed).
    """
    q = (acc_c - rho * acc_b) / (1 - rho)
    assert ((q >= 0) & (q <= 1)).all()
    both = rho * acc_b + (1 - rho) * acc_b * q
    lost = (1 - rho) * acc_b * (1 - q)
    gained = (1 - rho) * (1 - acc_b) * q
    return np.stack([both, lost, gained, 1 - both - lost - gained], axis=-1)


def _sample_pairs(rng, reps: int, cells: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness of baseline and candidate ``(reps, S*m)`` drawn from ``cells``."""
    s = cells.shape[0]
    u = rng.random((reps, s, m))
    cum = np.cumsum(cells, axis=-1)[None, :, None, :]
    cell = (u[..., None] > cum).sum(-1)  # 0 both right, 1 lost, 2 gained, 3 both wrong
    cb = (cell == 0) | (cell == 1)
    cc = (cell == 0) | (cell == 2)
    return cb.reshape(reps, s * m), cc.reshape(reps, s * m)


def _with_overall(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a, a.sum(axis=-1, keepdims=True)], axis=-1)


# ----------------------------------------------------------------------------- evaluate


def test_intervals_match_scipy_binomtest():
    # slices with known counts, including k = 0 and k = n
    sizes = [25, 40, 60, 33, 200]
    hits = [0, 40, 45, 17, 150]
    g = np.repeat(np.arange(5), sizes)
    correct = np.concatenate([np.arange(n) < k for n, k in zip(sizes, hits, strict=True)])
    y, pred = _labels_with_accuracy(correct)
    for method, sp_method in (("wilson", "wilson"), ("clopper-pearson", "exact"), ("exact", "exact")):
        for level in (0.9, 0.95):
            rep = evaluate(y, pred, g, method=method, ci=level)
            for row, n, k in zip(rep.rows, sizes, hits, strict=True):
                ref = stats.binomtest(k, n).proportion_ci(confidence_level=level, method=sp_method)
                assert row.n == n and row.value == pytest.approx(k / n)
                assert row.ci.low == pytest.approx(ref.low, abs=1e-9)
                assert row.ci.high == pytest.approx(ref.high, abs=1e-9)
            ref = stats.binomtest(sum(hits), sum(sizes)).proportion_ci(confidence_level=level, method=sp_method)
            assert rep.overall_ci.low == pytest.approx(ref.low) and rep.overall_ci.high == pytest.approx(ref.high)


def test_bootstrap_intervals_are_seeded_and_close_to_wilson():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 4, 8000)
    correct = rng.random(8000) < np.array([0.6, 0.7, 0.8, 0.9])[g]
    y, pred = _labels_with_accuracy(correct)
    b1 = evaluate(y, pred, g, method="bootstrap", n_boot=4000, seed=3)
    b2 = evaluate(y, pred, g, method="bootstrap", n_boot=4000, seed=3)
    w = evaluate(y, pred, g)
    assert b1.to_dict() == b2.to_dict()
    # The bootstrap draws B = 4000 replicates of Binomial(n, p_hat) / n per slice, so its percentile interval
    # estimates the exact binomial quantiles q(a), q(1 - a) (a = 0.025), computed here with scipy. Monte-Carlo
    # error: the empirical a-quantile lies in [q(a - e), q(a + e)] unless the count of replicates below one of
    # those points, Binomial(B, a -/+ e), crosses a * B; with e = 5.3 sqrt(a (1 - a) / B) that is a 5.3-sigma
    # event (normal approximation of a count with mean 100: p < 1.2e-7 each, < 1e-6 over the 8 bounds).
    # np.quantile interpolates between adjacent replicates: one lattice step 1/n more.
    a, n_boot = 0.025, 4000
    e = 5.3 * np.sqrt(a * (1 - a) / n_boot)
    for rb, rw in zip(b1.rows, w.rows, strict=True):
        n, p_hat = rb.n, rb.value
        for got, q in ((rb.ci.low, a), (rb.ci.high, 1 - a)):
            lo_q, mid_q, hi_q = (stats.binom.ppf([q - e, q, q + e], n, p_hat) / n).tolist()
            assert lo_q - 1 / n <= got <= hi_q + 1 / n  # a band of ~+-3e-3 at n ~ 2000
            # deterministic part: Wilson and the exact binomial quantile are both second-order accurate, so
            # they differ by the skewness term ~z^2 |1 - 2p| / (2n) plus one lattice step: within (z^2 + 2) / n
            wilson = rw.ci.low if q == a else rw.ci.high
            assert abs(wilson - mid_q) <= (1.96**2 + 2) / n


def test_worst_slice_gaps_and_several_slicings():
    sizes = {"a": 100, "b": 100, "c": 100}
    acc = {"a": 0.9, "b": 0.5, "c": 0.7}
    colour = np.repeat(list(sizes), list(sizes.values()))
    correct = np.concatenate([np.arange(n) < acc[k] * n for k, n in sizes.items()])
    y, pred = _labels_with_accuracy(correct)
    rep = evaluate(y, pred, {"colour": colour, "class": y})
    assert rep.slicings == ("colour", "class")
    assert rep.overall == pytest.approx(0.7)
    rows = {r.slice: r for r in rep.for_slicing("colour")}
    assert rows["b"].gap == pytest.approx(-0.2) and rows["a"].gap == pytest.approx(0.2)
    assert rep.worst["colour"].slice == "b"
    assert {r.slice for r in rep.for_slicing("class")} == set(np.unique(y).tolist())
    err = evaluate(y, pred, {"colour": colour}, metric="error")
    assert err.worst["colour"].slice == "b" and err.worst["colour"].value == pytest.approx(0.5)
    lo, hi = err.worst["colour"].ci
    wl, wh = rows["b"].ci
    assert lo == pytest.approx(1 - wh) and hi == pytest.approx(1 - wl)
    json.loads(rep.to_json())
    assert len(rep.table()) == len(rep.rows)


def test_small_slices_are_reported_and_flagged_not_hidden():
    g = np.array(["big"] * 100 + ["tiny"] * 5)
    correct = np.r_[np.arange(100) < 90, np.zeros(5, bool)]
    y, pred = _labels_with_accuracy(correct)
    rep = evaluate(y, pred, g, min_size=20)
    tiny = next(r for r in rep.rows if r.slice == "tiny")
    assert tiny.too_small and tiny.ci is None and tiny.n == 5 and tiny.value == 0.0
    assert rep.too_small == (tiny,)
    assert rep.worst["group"].slice == "big"  # the tiny slice is not a worst-slice candidate
    everything_small = evaluate(y, pred, g, min_size=1000)
    assert everything_small.worst["group"] is None and everything_small.overall_ci is None


def test_probabilities_are_argmaxed():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    g = rng.integers(0, 3, 300)
    a = evaluate(y, p, g)
    b = evaluate(y, p.argmax(axis=1), g)
    assert a.to_dict() == b.to_dict()
    binary = evaluate(y % 2, p[:, 0], g)  # 1-D probabilities of class 1
    assert binary.overall == pytest.approx(np.mean((p[:, 0] > 0.5) == (y % 2)))


def test_callable_metric_gets_the_raw_predictions():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 400)
    y = rng.integers(0, 3, 400)
    g = np.repeat([0, 1], 200)

    def brier(yt, pp):
        return float(np.mean(np.sum((pp - np.eye(3)[yt]) ** 2, axis=1)))

    rep = evaluate(y, p, g, metric=brier, greater_is_better=False, n_boot=200)
    assert rep.metric == "brier" and rep.method == "bootstrap" and not rep.greater_is_better
    for r in rep.rows:
        idx = g == r.slice
        assert r.value == pytest.approx(brier(y[idx], p[idx]))
        assert r.ci.low < r.value < r.ci.high
    assert rep.worst["group"].value == max(r.value for r in rep.rows)
    with pytest.raises(FailsightInputError, match="bootstrap"):
        evaluate(y, p, g, metric=brier, method="wilson")


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        (np.zeros(9), "has 9 labels but there are 10"),
        (np.r_[np.zeros(9), np.nan], "NaN"),
        (np.array(["a"] * 9 + [None], dtype=object), "missing"),
        ({}, "empty dict"),
        ({"colour": np.zeros(11)}, r"groups\['colour'\] has 11"),
        (np.zeros((10, 2)), "1-D"),
        (None, "None"),
    ],
)
def test_bad_groups_raise_clear_errors(groups, match):
    y = np.arange(10) % 2
    with pytest.raises(FailsightInputError, match=match):
        evaluate(y, y, groups)


def test_bad_predictions_and_options():
    y = np.arange(10) % 2
    with pytest.raises(FailsightInputError, match="9 predictions"):
        evaluate(y, y[:9], y)
    with pytest.raises(FailsightInputError, match="NaN"):
        evaluate(y, np.full((10, 2), np.nan), y)
    with pytest.raises(FailsightInputError, match="empty"):
        evaluate([], [], [])
    with pytest.raises(FailsightInputError, match="unknown metric"):
        evaluate(y, y, y, metric="f7")
    with pytest.raises(FailsightInputError, match="unknown interval method"):
        evaluate(y, y, y, method="jeffreys")


def test_slices_imports_without_torch():
    code = "import sys, failsight.slices; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- statistics


def test_mcnemar_matches_scipy_binomtest():
    for lost, gained in [(0, 0), (3, 0), (10, 25), (40, 41), (7, 1), (100, 70)]:
        pw, pb = mcnemar_one_sided(lost, gained)
        m = lost + gained
        if m:
            assert pw == pytest.approx(stats.binomtest(lost, m, 0.5, alternative="greater").pvalue)
            assert pb == pytest.approx(stats.binomtest(gained, m, 0.5, alternative="greater").pvalue)
            two = stats.binomtest(gained, m, 0.5).pvalue
            assert min(1.0, 2 * min(pw, pb)) == pytest.approx(two)
        else:
            assert pw == 1.0 and pb == 1.0
        # mid-p: half the probability of the observed count
        mw, _ = mcnemar_one_sided(lost, gained, mid_p=True)
        assert mw == pytest.approx(pw - 0.5 * stats.binom.pmf(lost, m, 0.5))


def test_compare_p_values_are_mcnemar():
    rng = np.random.default_rng(5)
    g = np.repeat([0, 1, 2], 150)
    y = rng.integers(0, 3, 450)
    base = np.where(rng.random(450) < 0.75, y, (y + 1) % 3)
    cand = np.where(rng.random(450) < np.array([0.6, 0.75, 0.85])[g], y, (y + 2) % 3)
    cmp = compare(y, base, cand, g)
    for r in (*cmp.rows, cmp.overall):
        idx = g == r.slice if r.slicing == "group" else np.ones(450, bool)
        lost = int(((base == y) & (cand != y))[idx].sum())
        gained = int(((base != y) & (cand == y))[idx].sum())
        assert (r.lost, r.gained) == (lost, gained)
        two = stats.binomtest(gained, lost + gained).pvalue
        assert min(1.0, 2 * r.p_value) == pytest.approx(two)
        assert r.delta == pytest.approx((cand == y)[idx].mean() - (base == y)[idx].mean())


def test_adjustments_match_references():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), stats.false_discovery_control(p, method="bh"))
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(5 * p, 1))
    # Holm by hand: sorted 0.005*5, 0.01*4, 0.03*3, 0.04*2, 0.2*1, then running max
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.04, 0.09, 0.09, 0.025, 0.2])
    batch = np.random.default_rng(0).random((50, 6))
    np.testing.assert_allclose(adjust_pvalues(batch, "bh"), stats.false_discovery_control(batch, axis=-1))
    with pytest.raises(FailsightInputError, match="unknown correction"):
        adjust_pvalues(p, "sidak")


def test_paired_interval_coverage():
    """Bonett-Price paired interval: coverage near 95% at n = 150 pairs (vectorised simulation)."""
    rng = np.random.default_rng(0)
    for cells in ([0.7, 0.1, 0.05, 0.15], [0.5, 0.2, 0.2, 0.1], [0.85, 0.02, 0.08, 0.05]):
        c = rng.multinomial(150, cells, size=20000)
        lo, hi = paired_delta_interval(c[:, 1], c[:, 2], 150)
        true = cells[2] - cells[1]
        cover = np.mean((lo <= true) & (true <= hi))
        assert 0.935 <= cover <= 0.97, (cells, cover)


# ----------------------------------------------------------------------------- compare


def test_identical_models_never_flag():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 1000)
    pred = np.where(rng.random(1000) < 0.8, y, (y + 1) % 5)
    cmp = compare(y, pred, pred, {"class": y, "g": rng.integers(0, 4, 1000)})
    assert not cmp.partial_failure
    assert all(r.verdict == "no significant change" and r.delta == 0 for r in (*cmp.rows, cmp.overall))


def test_known_partial_failure_is_flagged():
    # 4 slices x 300; baseline 80% everywhere; candidate 20 points worse on slice "d", 8 better elsewhere
    g = np.repeat(list("abcd"), 300)
    base_ok = np.tile(np.arange(300) < 240, 4)
    cand_ok = base_ok.copy()
    for j in range(3):  # slices a, b, c: fix 24 of the 60 baseline errors
        cand_ok[j * 300 + 240: j * 300 + 264] = True
    cand_ok[900:960] = False  # slice d: lose 60 of its 240 correct
    y, base = _labels_with_accuracy(base_ok)
    cand = np.where(cand_ok, y, (y + 2) % 3)
    cmp = compare(y, base, cand, g)
    rows = {r.slice: r for r in cmp.rows}
    assert rows["d"].verdict == "regressed" and rows["d"].delta == pytest.approx(-0.2)
    assert all(rows[s].verdict == "improved" and rows[s].delta == pytest.approx(0.08) for s in "abc")
    assert cmp.overall.delta == pytest.approx(0.01) and cmp.overall.verdict != "regressed"
    assert cmp.partial_failure and cmp.regressed == (rows["d"],)
    assert rows["d"].ci.high < 0 < rows["a"].ci.low
    assert "PARTIAL FAILURE" in cmp.summary() and "'d'" in cmp.summary()
    json.loads(cmp.to_json())
    assert cmp.table()[0]["slicing"] == "overall"
    # all slices worse: a plain regression, not a partial failure
    worse = compare(y, cand, base, g)
    assert worse.overall.delta == pytest.approx(-0.01) and worse.partial_failure  # three slices lost 8 pts
    strong = compare(y, base, np.where(np.tile(np.arange(300) < 150, 4), y, (y + 1) % 3), g)
    assert strong.overall.verdict == "regressed" and not strong.partial_failure


def test_too_small_slices_are_reported_and_left_out_of_the_family():
    rng = np.random.default_rng(2)
    g = np.array(["x"] * 400 + ["y"] * 400 + ["tiny"] * 8)
    y = rng.integers(0, 2, 808)
    base = np.where(rng.random(808) < 0.8, y, 1 - y)
    cand = np.where(rng.random(808) < 0.8, y, 1 - y)
    cmp = compare(y, base, cand, g, min_size=20)
    rows = {r.slice: r for r in cmp.rows}
    assert rows["tiny"].verdict == "too small" and rows["tiny"].ci is None and np.isnan(rows["tiny"].p_adjusted)
    assert rows["tiny"].n == 8
    # Holm over a family of 2: the smaller p-value is doubled
    ps = sorted([rows["x"], rows["y"]], key=lambda r: r.p_value)
    same_dir = (rows["x"].delta < 0) == (rows["y"].delta < 0)
    if same_dir:
        assert ps[0].p_adjusted == pytest.approx(min(1.0, 2 * ps[0].p_value))


def test_compare_bad_input():
    y = np.arange(40) % 2
    with pytest.raises(FailsightInputError, match="unknown test"):
        compare(y, y, y, y, test="t-test")
    with pytest.raises(FailsightInputError, match="unknown correction"):
        compare(y, y, y, y, correction="sidak")
    with pytest.raises(FailsightInputError, match="alpha"):
        compare(y, y, y, y, alpha=1.5)
    with pytest.raises(FailsightInputError, match="pred_candidate has 39"):
        compare(y, y, y[:39], y)
    with pytest.raises(FailsightInputError, match="has 39 labels"):
        compare(y, y, y, y[:39])


NULL_ACC = np.linspace(0.60, 0.90, 5)  # baseline accuracy of the 5 slices
NULL_M = 400  # samples per slice


def test_compare_matches_its_vectorised_core_on_simulated_pairs():
    """The null simulation below runs the verdict core vectorised; here ``compare`` itself decides 300
    simulated pairs and must agree with the core on every verdict and flag."""
    rng = np.random.default_rng(7)
    cells = _cells(NULL_ACC, NULL_ACC, rho=0.5)
    cb, cc = _sample_pairs(rng, 300, cells, NULL_M)
    g = np.repeat(np.arange(5), NULL_M)
    y = np.zeros(5 * NULL_M, dtype=np.int64)
    per = lambda a: _with_overall(a.reshape(300, 5, NULL_M).sum(-1))  # noqa: E731
    kb, kc = per(cb), per(cc)
    lost, gained = per(cb & ~cc), per(~cb & cc)
    m = np.array([NULL_M] * 5 + [5 * NULL_M])
    for mid_p in (False, True):
        pw, pb = mcnemar_one_sided(lost, gained, mid_p=mid_p)
        _, _, adj, code, partial = _paired_verdicts(kb, kc, m, pw, pb, alpha=0.05, correction="holm", min_size=20)
        for r in range(300):
            res = compare(y, (~cb[r]).astype(int), (~cc[r]).astype(int), g, mid_p=mid_p)
            assert res.partial_failure == partial[r]
            assert [VERDICTS.index(x.verdict) for x in (*res.rows, res.overall)] == code[r].tolist()
            np.testing.assert_allclose([x.p_adjusted for x in res.rows], adj[r, :5])


@pytest.mark.parametrize(("mid_p", "correction"), [(False, "holm"), (True, "holm"), (True, "bh")])
def test_false_flag_rate_under_the_null(mid_p, correction):
    """Nothing changed: the candidate is an exchangeable retrain of the baseline.

    Design: 5 slices x 400 samples, baseline accuracies 0.60..0.90; the candidate copies the baseline's
    outcome on a sample with probability 0.5, else draws its own with the same accuracy (so per slice
    P(lost) = P(gained) exactly). 20,000 simulated pairs (Monte-Carlo s.e. of the rate ~0.0012).
    ``compare`` corrects the one-sided "worse" p-values of the 5 slices as one family at alpha=0.05, so
    the probability of calling any slice "regressed" is <= alpha; the flag also needs the aggregate not
    to regress, which removes about a third of those. Measured: exact ~0.027, mid-p ~0.035 (Holm).
    """
    rng = np.random.default_rng(11)
    reps = 20000
    cells = _cells(NULL_ACC, NULL_ACC, rho=0.5)
    c = rng.multinomial(NULL_M, cells, size=(reps, 5))  # (reps, 5, 4) cell counts, same law as _sample_pairs
    kb, kc = _with_overall(c[..., 0] + c[..., 1]), _with_overall(c[..., 0] + c[..., 2])
    lost, gained = _with_overall(c[..., 1]), _with_overall(c[..., 2])
    m = np.array([NULL_M] * 5 + [5 * NULL_M])
    pw, pb = mcnemar_one_sided(lost, gained, mid_p=mid_p)
    _, _, _, code, partial = _paired_verdicts(kb, kc, m, pw, pb, alpha=0.05, correction=correction, min_size=20)
    flag_rate = partial.mean()
    any_regressed = (code[:, :5] == VERDICTS.index("regressed")).any(axis=1).mean()
    # the rates are means of 20,000 i.i.d. indicators (s.e. <= 0.0016): the band [0.02, 0.08] is > 5 s.e. from
    # the measured 0.027-0.035 on either side, so a false failure has probability < 1e-6
    assert 0.02 <= flag_rate <= 0.08, flag_rate
    # the family-wise bound: a rate <= 0.05 exceeds 0.05 + 5.3 s.e. (0.058) with probability < 1.2e-7
    assert any_regressed <= 0.05 + 5.3 * np.sqrt(0.05 * 0.95 / reps)
    # without a correction the same simulation flags far too often: the correction is what keeps the band
    _, _, _, _, raw = _paired_verdicts(kb, kc, m, pw, pb, alpha=0.05, correction="none", min_size=20)
    assert raw.mean() > 0.08


def test_power_to_flag_a_slice_made_worse():
    """One slice made 15 points worse while the other four improve by 5: 5 slices x 400 samples,
    baseline 80% everywhere, independent errors (the hardest case: most discordant pairs). ``compare``
    itself decides 200 simulated pairs; expected power ~0.98 (exact McNemar, Holm, alpha=0.05)."""
    rng = np.random.default_rng(3)
    acc_b = np.full(5, 0.80)
    acc_c = np.array([0.65, 0.85, 0.85, 0.85, 0.85])
    cb, cc = _sample_pairs(rng, 200, _cells(acc_b, acc_c, rho=0.0), 400)
    g = np.repeat(np.arange(5), 400)
    y = np.zeros(2000, dtype=np.int64)
    flags, wrong_slice = 0, 0
    for r in range(200):
        res = compare(y, (~cb[r]).astype(int), (~cc[r]).astype(int), g)
        flags += res.partial_failure
        wrong_slice += any(x.slice != 0 for x in res.regressed)
    # 200 independent replicates: with power 0.98, P(Binomial(200, 0.98) < 180) = 9e-10 (exact), and even at
    # power 0.95 it is 1.2e-3, so a failure means the test lost power
    assert flags / 200 >= 0.9
    # an improved slice (80% -> 85%: P(lost) = 0.12 < P(gained) = 0.17) is called "regressed" only if its
    # one-sided McNemar p-value falls below Holm's level (at most 0.05 / 4 = 0.0125 for a second rejection):
    # summing over its Binomial(400, 0.29) discordant count, that has probability 1.4e-5 per slice, 5.6e-5 for
    # any of the four, so 3 or more of 200 replicates have probability 2.3e-7 (computed exactly with scipy)
    assert wrong_slice <= 2


def _paired_delta_quantiles(lost: int, gained: int, n: int, qs: list[float]) -> list[float]:
    """Exact quantiles of (G - L) / n for (L, T, G) ~ Multinomial(n, (lost, n - lost - gained, gained) / n)."""
    pl, pg = lost / n, gained / n
    l_ = np.arange(n + 1)[:, None]
    d = np.arange(-n, n + 1)
    cond = pg / (1 - pl) if pl < 1 else 0.0  # G | L = l ~ Binomial(n - l, pg / (1 - pl))
    cdf = (stats.binom.pmf(l_, n, pl) * stats.binom.cdf(l_ + d[None, :], n - l_, cond)).sum(axis=0)
    return [float(d[np.searchsorted(cdf, q - 1e-12)]) / n for q in qs]


def test_bootstrap_test_is_seeded_and_agrees_with_mcnemar():
    rng = np.random.default_rng(4)
    g = np.repeat([0, 1, 2], 500)
    y = np.zeros(1500, dtype=np.int64)
    cb, cc = _sample_pairs(rng, 1, _cells(np.full(3, 0.8), np.array([0.7, 0.8, 0.86]), rho=0.3), 500)
    base, cand = (~cb[0]).astype(int), (~cc[0]).astype(int)
    b1 = compare(y, base, cand, g, test="bootstrap", seed=1)
    b2 = compare(y, base, cand, g, test="bootstrap", seed=1)
    mc = compare(y, base, cand, g)
    assert b1.to_dict() == b2.to_dict()
    # The paired bootstrap draws B = 2000 replicates of (lost, tie, gained) ~ Multinomial(n, observed shares)
    # and takes percentiles of delta = (gained - lost) / n. Its exact quantiles Q(q) are computed below
    # (sum over lost of Binomial pmf times the conditional Binomial cdf of gained). Monte-Carlo error as in
    # test_bootstrap_intervals_are_seeded_and_close_to_wilson: the empirical a-quantile lies in
    # [Q(a - e), Q(a + e)], e = 5.3 sqrt(a (1 - a) / B), except with probability < 1.2e-7 per bound (< 1e-6
    # over the 6), plus one lattice step 1/n for np.quantile's interpolation.
    a, n_boot = 0.025, 2000
    e = 5.3 * np.sqrt(a * (1 - a) / n_boot)
    for rb, rm in zip(b1.rows, mc.rows, strict=True):
        assert rb.verdict == rm.verdict
        n = rb.n
        for got, q, bp in ((rb.ci.low, a, rm.ci.low), (rb.ci.high, 1 - a, rm.ci.high)):
            lo_q, mid_q, hi_q = _paired_delta_quantiles(rb.lost, rb.gained, n, [q - e, q, q + e])
            assert lo_q - 1 / n <= got <= hi_q + 1 / n  # a band of ~+-0.01 at n = 500
            # deterministic: Bonett-Price (one pseudo-count per discordant cell) and the exact quantile are
            # both Wald-type to O(1/n): within the skewness term z^2 / n plus one lattice step (observed ~1e-3)
            assert abs(bp - mid_q) <= (1.96**2 + 2) / n
    assert b1.rows[0].verdict == "regressed"


# ----------------------------------------------------------------------------- learning curves


def test_learning_curves_match_evaluate_per_epoch():
    rng = np.random.default_rng(0)
    n, e = 500, 4
    y = rng.integers(0, 3, n)
    colour = rng.choice(["red", "blue"], n)
    preds = np.stack([np.where(rng.random(n) < 0.4 + 0.15 * k, y, (y + 1) % 3) for k in range(e)])
    lc = learning_curves(y, preds, {"colour": colour, "class": y}, epochs=[1, 2, 5, 10])
    assert lc.accuracy.shape == (4, 2 + 3) and lc.overall.shape == (4,)
    for k in range(e):
        rep = evaluate(y, preds[k], {"colour": colour, "class": y})
        np.testing.assert_allclose(lc.accuracy[k], [r.value for r in rep.rows])
        np.testing.assert_allclose(lc.low[k], [r.ci.low for r in rep.rows])
        assert lc.overall[k] == pytest.approx(rep.overall)
    np.testing.assert_allclose(lc.curve("red", slicing="colour"), lc.accuracy[:, 1])  # labels sorted
    assert lc.best_epoch.shape == (5,) and set(lc.best_epoch.tolist()) <= {1, 2, 5, 10}
    np.testing.assert_allclose(lc.gain, lc.accuracy[-1] - lc.accuracy[0])
    assert len(lc.table()) == 4 * 5
    json.loads(lc.to_json())
    # probabilities (E, n, k) and a list of arrays give the same curves
    probs = np.eye(3)[preds] * 0.9 + 0.1 / 3
    lp = learning_curves(y, probs, {"colour": colour, "class": y})
    ll = learning_curves(y, list(preds), {"colour": colour, "class": y})
    np.testing.assert_allclose(lp.accuracy, lc.accuracy)
    np.testing.assert_allclose(ll.accuracy, lc.accuracy)


def test_learning_curves_bad_input():
    y = np.arange(30) % 3
    with pytest.raises(FailsightInputError, match="29 predictions per epoch"):
        learning_curves(y, np.zeros((2, 29), int), y)
    with pytest.raises(FailsightInputError, match=r"preds_per_epoch\[1\] has 29"):
        learning_curves(y, [y, y[:29]], y)
    with pytest.raises(FailsightInputError, match="epochs has 3"):
        learning_curves(y, np.stack([y, y]), y, epochs=[1, 2, 3])
    lc = learning_curves(y, np.stack([y, y]), {"a": y, "b": y % 2})
    with pytest.raises(FailsightInputError, match="slicing="):
        lc.curve(0)
    with pytest.raises(FailsightInputError, match="no slice"):
        lc.curve(7, slicing="a")


# ----------------------------------------------------------------------------- load_groups


def test_load_groups_npz(tmp_path):
    g = np.array([0, 1, 1, 2])
    np.savez(tmp_path / "g.npz", groups=g, other=np.arange(4))
    out = load_groups(tmp_path / "g.npz")
    assert list(out) == ["groups"]
    np.testing.assert_array_equal(out["groups"], g)
    assert list(load_groups(tmp_path / "g.npz", column="other")) == ["other"]
    np.savez(tmp_path / "two.npz", groups=np.stack([g, g * 2], axis=1))
    assert list(load_groups(tmp_path / "two.npz")) == ["groups_0", "groups_1"]
    np.savez(tmp_path / "none.npz", labels=g)
    with pytest.raises(FailsightInputError, match=r"no array 'groups'.*\['labels'\]"):
        load_groups(tmp_path / "none.npz")


def test_load_groups_csv_variants(tmp_path):
    (tmp_path / "plain.csv").write_text("0\n1\n1\n0\n")
    out = load_groups(tmp_path / "plain.csv")
    assert list(out) == ["groups"] and out["groups"].dtype == np.int64
    np.testing.assert_array_equal(out["groups"], [0, 1, 1, 0])

    (tmp_path / "header.csv").write_text("colour\nred\nblue\nred\n")
    out = load_groups(tmp_path / "header.csv")
    assert list(out) == ["colour"] and out["colour"].tolist() == ["red", "blue", "red"]

    (tmp_path / "multi.csv").write_text("id,colour,shape\n0,red,star\n1,blue,circle\n2,red,star\n")
    out = load_groups(tmp_path / "multi.csv")
    assert list(out) == ["id", "colour", "shape"]
    only = load_groups(tmp_path / "multi.csv", column="shape")
    assert list(only) == ["shape"] and only["shape"].tolist() == ["star", "circle", "star"]

    (tmp_path / "noheader.csv").write_text("red\nblue\nred\nblue\n")
    assert load_groups(tmp_path / "noheader.csv")["groups"].tolist() == ["red", "blue", "red", "blue"]
    assert list(load_groups(tmp_path / "noheader.csv", header=True)) == ["red"]

    (tmp_path / "semi.csv").write_text("a;b\n1;x\n2;y\n")
    assert list(load_groups(tmp_path / "semi.csv")) == ["a", "b"]

    # the loaded dict feeds straight into evaluate
    y = np.array([0, 1, 0])
    rep = evaluate(y, y, load_groups(tmp_path / "multi.csv", column=["colour", "shape"]), min_size=1)
    assert rep.slicings == ("colour", "shape")


def test_load_groups_csv_errors(tmp_path):
    (tmp_path / "gap.csv").write_text("colour,shape\nred,star\n,circle\n")
    with pytest.raises(FailsightInputError, match="empty value"):
        load_groups(tmp_path / "gap.csv")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(FailsightInputError, match="line 3 has 1 fields"):
        load_groups(tmp_path / "ragged.csv")
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(FailsightInputError, match=r"no column 'c'.*\['a', 'b'\]"):
        load_groups(tmp_path / "m.csv", column="c")
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_groups(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(FailsightInputError, match="empty"):
        load_groups(tmp_path / "empty.csv")


# ------------------------------------------------------------- issue 11: misread predictions and group files


def test_max_probabilities_with_multiclass_labels_are_refused():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    p = rng.dirichlet(np.ones(10), 200)
    with pytest.raises(FailsightInputError, match=r"max-probabilities.*p.argmax\(axis=1\)"):
        evaluate(y, p.max(axis=1), y % 3)
    with pytest.raises(FailsightInputError, match="only 4 columns"):
        evaluate(y, p[:, :4] / p[:, :4].sum(1, keepdims=True), y % 3)
    # binary P(class 1) with binary labels is still read as such
    yb = (rng.random(200) < 0.5).astype(int)
    rep = evaluate(yb, np.where(yb == 1, 0.8, 0.3), yb, min_size=1)
    assert rep.overall == pytest.approx(1.0)


def test_headerless_groups_csv_with_a_unique_first_label(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("red\nblue\nblue\ngreen\ngreen\n")  # 'red' occurs once: the value heuristic calls it a header
    assert list(load_groups(f)) == ["red"]  # without the sample count the file is ambiguous
    out = load_groups(f, n_samples=5)  # with it, 5 rows for 5 samples: no header
    assert out["groups"].tolist() == ["red", "blue", "blue", "green", "green"]
    g = tmp_path / "h.csv"
    g.write_text("colour\nred\nblue\nblue\ngreen\ngreen\n")
    assert load_groups(g, n_samples=5)["colour"].tolist() == ["red", "blue", "blue", "green", "green"]
    with pytest.raises(FailsightInputError, match=r"has 5 data rows .* but there are 7 samples"):
        load_groups(g, n_samples=7)
    # the audit and load_data pass the sample count
    from failsight.datasets.io import load_data

    d = load_data(np.zeros((5, 2)), np.array([0, 1, 1, 0, 0]), groups=f)
    assert d.groups["group"].tolist() == ["red", "blue", "blue", "green", "green"]


def test_empty_group_value_is_reported_as_empty_not_as_a_length_mismatch(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("colour\nred\n\nblue\nred\n\n")  # line 3 is an empty label; the trailing blank line is layout
    with pytest.raises(FailsightInputError, match=r"1 empty value.*line 3"):
        load_groups(f)
    g = tmp_path / "two.csv"
    g.write_text("colour,shape\nred,star\n\nblue,circle\n")
    with pytest.raises(FailsightInputError, match=r"empty value.*line 3"):
        load_groups(g)
