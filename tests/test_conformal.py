"""Conformal prediction sets: the coverage guarantee over many random splits, class-conditional coverage,
agreement with MAPIE where the definitions coincide, a brute-force re-derivation of APS/RAPS, per-slice and
under-shift coverage, bad input."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.reliability import ConformalClassifier, conformal_analysis, coverage, set_sizes
from failsight.reliability.conformal import conformal_order_statistic, min_calibration_size


def _synthetic(rng: np.random.Generator, n: int, k: int = 10, hard: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A miscalibrated model's probabilities and labels: y ~ Categorical(softmax(z)), the model reports
    softmax(1.7 z) (over-confident), classes in ``hard`` get noisier logits. Continuous scores, no ties."""
    z = rng.normal(size=(n, k)) * 1.5
    z[:, 0] += 1.0
    true = np.exp(z - z.max(1, keepdims=True))
    true /= true.sum(1, keepdims=True)
    y = (true.cumsum(1) > rng.random((n, 1))).argmax(1)
    for c in hard:
        z[y == c] += rng.normal(size=(int((y == c).sum()), k)) * 2.0
    p = np.exp(1.7 * (z - z.max(1, keepdims=True)))
    return p / p.sum(1, keepdims=True), y


def _band_check(covs: np.ndarray, n_cal: int, alpha: float, m_test: int) -> None:
    """The mean of ``R`` independent split coverages against its exact expectation.

    With continuous scores, the coverage given the calibration set is Beta(r, n+1-r), r = ⌈(n+1)(1−α)⌉, so its
    mean is r/(n+1) ∈ [1−α, 1−α+1/(n+1)] (the finite-sample band). One split's empirical coverage on m test points
    has variance Var(C) + E[C(1−C)]/m; the mean of R independent splits has that over R. We allow 4.5 standard
    deviations (a false failure has probability < 1e-5 under the normal approximation, which is accurate for R ≥ 100
    averages of bounded variables)."""
    r = conformal_order_statistic(n_cal, alpha)
    a, b = r, n_cal + 1 - r
    mean = a / (a + b)
    var_c = a * b / ((a + b) ** 2 * (a + b + 1))
    e_c1c = a * b / ((a + b) * (a + b + 1))
    sd = math.sqrt((var_c + e_c1c / m_test) / len(covs))
    assert 1 - alpha <= mean <= 1 - alpha + 1 / (n_cal + 1)
    assert abs(covs.mean() - mean) <= 4.5 * sd, (covs.mean(), mean, sd)


@pytest.mark.parametrize("method,params", [("lac", {}), ("aps", {"randomized": True}),
                                           ("raps", {"randomized": True, "k_reg": 1, "lam": 0.05})])
def test_marginal_coverage_in_finite_sample_band(method: str, params: dict) -> None:
    rng = np.random.default_rng(1)
    n_cal, m, alpha, reps = 150, 300, 0.1, 150
    covs = np.empty(reps)
    for i in range(reps):  # fresh exchangeable data each split: the R coverages are independent
        p, y = _synthetic(rng, n_cal + m)
        cc = ConformalClassifier(method, alpha, seed=i, **params).fit(p[:n_cal], y[:n_cal])
        covs[i] = coverage(y[n_cal:], cc.predict_sets(p[n_cal:]))
    _band_check(covs, n_cal, alpha, m)


def test_coverage_over_random_splits_of_real_digits() -> None:
    """Random calibration/test splits of one real dataset (digits, logistic regression): exchangeable, so the mean
    coverage over splits is r/(n+1) too. The splits share data, so they are not independent; the Beta/binomial
    standard deviation of a single split (not divided by R) is a safe bound for their mean."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, rest = perm[:500], perm[500:]
    p = LogisticRegression(max_iter=3000).fit(x[tr] / 16, y[tr]).predict_proba(x[rest] / 16)
    yr = y[rest]
    n_cal, alpha = 400, 0.1
    for method in ("lac", "aps"):
        covs = []
        for s in range(40):
            idx = np.random.default_rng(s).permutation(len(yr))
            cc = ConformalClassifier(method, alpha, randomized=True, seed=s).fit(p[idx[:n_cal]], yr[idx[:n_cal]])
            covs.append(coverage(yr[idx[n_cal:]], cc.predict_sets(p[idx[n_cal:]])))
        r = conformal_order_statistic(n_cal, alpha)
        m = len(yr) - n_cal
        c = r / (n_cal + 1)
        sd = math.sqrt(c * (1 - c) / (n_cal + 2) + c * (1 - c) / m)
        assert abs(np.mean(covs) - c) <= 3 * sd


def test_class_conditional_coverage_per_class() -> None:
    """With exactly n_c calibration samples per class, coverage within each class is Beta(r_c, n_c+1-r_c); the mean
    over independent replications lies in each class's band. Marginal LAC under-covers the hard class."""
    rng = np.random.default_rng(2)
    k, n_c, alpha, reps, m = 4, 60, 0.1, 120, 400
    per_class = np.zeros((reps, k))
    marginal_hard = np.zeros(reps)
    for i in range(reps):
        p, y = _synthetic(rng, 6000, k=k, hard=(3,))
        cal = np.concatenate([np.flatnonzero(y == c)[:n_c] for c in range(k)])
        test = np.setdiff1d(np.arange(len(y)), cal)[:m * k]
        cc = ConformalClassifier("lac", alpha, class_conditional=True).fit(p[cal], y[cal])
        assert cc.quantile_.shape == (k,)
        sets = cc.predict_sets(p[test])
        marg = ConformalClassifier("lac", alpha).fit(p[cal], y[cal]).predict_sets(p[test])
        for c in range(k):
            sel = y[test] == c
            per_class[i, c] = sets[sel, c].mean()
        marginal_hard[i] = marg[y[test] == 3, 3].mean()
    r = conformal_order_statistic(n_c, alpha)
    for c in range(k):
        # test counts per class vary; the smallest class count bounds the binomial part of the variance
        _band_check(per_class[:, c], n_c, alpha, m_test=50)
        assert r / (n_c + 1) >= 1 - alpha
    # the stratified calibration set is balanced, so marginal LAC's threshold is set by the easy classes and the
    # noisy class falls clearly below 1 - α (a gap of many standard deviations of its mean over 120 replications)
    assert marginal_hard.mean() < 1 - alpha - 0.03


def test_order_statistic_and_min_size() -> None:
    assert conformal_order_statistic(99, 0.1) == 90  # (n+1)(1−α) = 90 exactly, not 91 from float error
    assert conformal_order_statistic(100, 0.1) == 91
    assert [min_calibration_size(a) for a in (0.1, 0.05, 0.01, 0.5)] == [9, 19, 99, 1]
    for a in (0.1, 0.05, 0.2, 0.3, 0.01):
        n = min_calibration_size(a)
        assert conformal_order_statistic(n, a) <= n < conformal_order_statistic(n - 1, a) + 1 or n == 1
    # the threshold is that order statistic of the calibration scores, exactly
    rng = np.random.default_rng(0)
    p, y = _synthetic(rng, 37)
    cc = ConformalClassifier("lac", 0.2).fit(p, y)
    s = np.sort(1 - p[np.arange(37), y])
    assert cc.quantile_ == s[conformal_order_statistic(37, 0.2) - 1]


def test_order_statistic_matches_mapie_and_the_pr973_side() -> None:
    """MAPIE's installed quantile is the same order statistic as ours for every (n, α) of a grid. Its pre-#973 form
    (np.quantile at (n+1)(1−α)/n, method='higher') is never below ours and one above for some cells."""
    mapie_utils = pytest.importorskip("mapie.utils")
    higher = 0
    for n in range(10, 160):
        scores = np.arange(1, n + 1, dtype=float)[::-1].copy()  # score value = its rank
        for alpha in (0.01, 0.05, 0.1, 0.2, 0.3):
            r = conformal_order_statistic(n, alpha)
            if r > n:
                continue
            got = float(mapie_utils._compute_classification_quantile(scores[:, None], np.array([alpha]))[0])
            assert got == r, (n, alpha, got, r)
            old = float(np.quantile(scores, min((n + 1) * (1 - alpha) / n, 1.0), method="higher"))
            assert old >= r
            higher += old > r
    assert higher > 0


class _Identity:
    """A prefit 'estimator' whose predict_proba returns its input (MAPIE on precomputed probabilities)."""

    def __init__(self, k: int) -> None:
        self.classes_ = np.arange(k)
        self.n_features_in_ = k

    def fit(self, x, y=None):
        return self

    def predict_proba(self, x):
        return np.asarray(x)

    def predict(self, x):
        return np.asarray(x).argmax(1)

    def get_params(self, deep: bool = True) -> dict:
        return {}

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags

        t = Tags(estimator_type="classifier", target_tags=None)
        t.classifier_tags = ClassifierTags()
        return t


def _digits_probs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm] / 16, y[perm]
    p = LogisticRegression(max_iter=3000).fit(x[:600], y[:600]).predict_proba(x[600:])
    return p[:500], y[600:1100], p[500:], y[1100:]


@pytest.mark.filterwarnings("ignore")
def test_identical_to_mapie_where_definitions_coincide() -> None:
    """LAC: identical sets. APS randomized: identical given the same uniforms (MAPIE's score is cumsum − U·p_y,
    ours cumsum_before + u·p_y, so u = 1 − U; MAPIE keeps the last label iff V ≤ U, ours iff u ≤ 1 − V)."""
    mapie_cls = pytest.importorskip("mapie.classification")
    pc, yc, pt, _ = _digits_probs()
    mp = mapie_cls.SplitConformalClassifier(_Identity(10), confidence_level=0.9, conformity_score="lac", prefit=True)
    mp.conformalize(pc, yc)
    ref = mp.predict_set(pt)[1][:, :, 0]
    ours = ConformalClassifier("lac", 0.1).fit(pc, yc)
    assert np.array_equal(ours.predict_sets(pt), ref)

    mp = mapie_cls.SplitConformalClassifier(_Identity(10), confidence_level=0.9, conformity_score="aps", prefit=True,
                                            random_state=0)
    mp.conformalize(pc, yc)
    ref = mp.predict_set(pt, conformity_score_params={"include_last_label": "randomized"})[1][:, :, 0]
    ours = ConformalClassifier("aps", 0.1, randomized=True)
    ours._u = lambda n, stream: 1.0 - np.random.RandomState(0).uniform(size=n)  # MAPIE's draws
    ours.fit(pc, yc)
    assert math.isclose(ours.quantile_, float(mp._mapie_classifier.conformity_score_function_.quantiles_[0]),
                        rel_tol=1e-12)
    assert np.array_equal(ours.predict_sets(pt), ref)


def _brute_sets(p: np.ndarray, q: float, method: str, u: np.ndarray | None, k_reg: int, lam: float) -> np.ndarray:
    """Per-sample, per-class loop straight from the papers' definitions (reference re-derivation): randomised, j is
    in the set iff its score ≤ q; non-randomised, iff the class group ranked just above j scores ≤ q (the top group
    is always in: Romano et al.'s non-randomised APS, RAPS without zero sets)."""
    n, k = p.shape
    out = np.zeros((n, k), dtype=bool)

    def score(i: int, j: int) -> float:
        above = p[i] > p[i, j]
        s = p[i, above].sum() + (p[i, j] if u is None else u[i] * p[i, j])
        if method == "raps":
            s += lam * max(int(above.sum()) + 1 - k_reg, 0)
        return s

    for i in range(n):
        for j in range(k):
            if u is not None:
                out[i, j] = score(i, j) <= q
                continue
            above = np.flatnonzero(p[i] > p[i, j])
            out[i, j] = len(above) == 0 or score(i, int(above[np.argmin(p[i, above])])) <= q
    return out


@pytest.mark.parametrize("method", ["aps", "raps"])
@pytest.mark.parametrize("k", [10, 150])  # 150 > 64 exercises the top-32 fast path and its full-sort fallback
def test_aps_raps_match_brute_force(method: str, k: int) -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, k)) * rng.uniform(0.5, 6, size=(300, 1))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[:5, :3] = p[:5, :3].mean(1, keepdims=True)  # exact ties
    y = rng.integers(0, k, 300)
    for randomized in (False, True):
        cc = ConformalClassifier(method, 0.2, randomized=randomized, k_reg=2, lam=0.02, seed=4).fit(p[:150], y[:150])
        sets = cc.predict_sets(p[150:])
        u = cc._u(150, 1)
        assert np.array_equal(sets, _brute_sets(p[150:], cc.quantile_, method, u, 2, 0.02))
        assert np.array_equal(sets[:0], np.zeros((0, k), bool))
    assert (set_sizes(sets) > 0).any()


def test_tied_classes_enter_together_and_seed_reproducible() -> None:
    p = np.full((50, 4), 0.25)
    y = np.arange(50) % 4
    sets = ConformalClassifier("aps", 0.1).fit(p, y).predict_sets(p[:3])
    assert sets.all()  # all four tied: one score, all in
    rng = np.random.default_rng(0)
    pp, yy = _synthetic(rng, 600)
    a = ConformalClassifier("raps", 0.1, randomized=True, seed=7).fit(pp[:300], yy[:300]).predict_sets(pp[300:])
    b = ConformalClassifier("raps", 0.1, randomized=True, seed=7).fit(pp[:300], yy[:300]).predict_sets(pp[300:])
    c = ConformalClassifier("raps", 0.1, randomized=True, seed=8).fit(pp[:300], yy[:300]).predict_sets(pp[300:])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_raps_auto_tuning_and_logits() -> None:
    rng = np.random.default_rng(5)
    p, y = _synthetic(rng, 2000)
    cc = ConformalClassifier("raps", 0.1).fit(p[:1000], y[:1000])
    assert cc.k_reg_ >= 1 and cc.lam_ in (0.001, 0.01, 0.1, 0.2, 0.5)
    assert cc.n_calibration_ == 800  # 20% set aside for tuning
    logits = np.log(p)
    a = ConformalClassifier("lac", 0.1).fit(p[:1000], y[:1000]).predict_sets(p[1000:])
    b = ConformalClassifier("lac", 0.1).fit(logits[:1000], y[:1000]).predict_sets(logits[1000:])
    # softmax(log p) = p up to rounding (~1e-16); a set flips only if a score lands within that of the threshold
    assert (a != b).sum() <= 2


def test_per_slice_coverage_and_under_shift() -> None:
    from failsight.slices import evaluate

    rng = np.random.default_rng(6)
    p, y = _synthetic(rng, 4000, k=5, hard=(4,))
    cc = ConformalClassifier("lac", 0.1).fit(p[:2000], y[:2000])
    sets = cc.predict_sets(p[2000:])
    yt = y[2000:]
    rep = evaluate(yt, sets, {"class": yt}, metric="coverage")
    assert rep.metric == "coverage"
    assert math.isclose(rep.overall, coverage(yt, sets))
    for row in rep.rows:
        assert math.isclose(row.value, sets[yt == row.slice, row.slice].mean())
    assert rep.worst["class"].slice == 4  # the noisy class is the under-covered slice

    # a shift that flattens the probabilities of half the inputs: coverage of the calibrated sets drops
    z = np.log(p[2000:])
    shifted = np.exp(0.3 * z + rng.normal(size=z.shape) * 2)
    shifted /= shifted.sum(1, keepdims=True)
    res = conformal_analysis(y[:2000], p[:2000], yt, p[2000:], method="lac", groups={"class": yt},
                             shifted={"noise s3": (yt, shifted)})
    # the test coverage of split conformal with n = 2000 calibration points is Beta(r, n + 1 - r) given the
    # calibration set, then a binomial mean over m = 2000 test points (see _band_check): its sd is
    # sqrt(Var(C) + E[C(1 - C)] / m) ~ 0.0095, and 5.3 sd (~0.05) fails with probability < 1.2e-7
    r = conformal_order_statistic(2000, 0.1)
    a, b = r, 2000 + 1 - r
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)) + a * b / ((a + b) * (a + b + 1)) / 2000)
    assert abs(res.coverage - a / (a + b)) <= 5.3 * sd, (res.coverage, sd)
    # the shift costs coverage: observed 0.907 -> 0.816 on this seeded stream; on any other stream each
    # coverage moves with sd < 0.01 (above), the drop with sd < 0.012 even uncorrelated, so a threshold of
    # 0.03 sits 5 sd below the observed 0.091 drop while still ruling out "the shift changes nothing"
    assert res.shift_coverage["noise s3"][0] < res.coverage - 0.03
    assert sum(res.size_histogram) == 2000 and res.slices.worst["class"].slice == 4
    d = res.to_dict()
    assert d["guarantee"]["low"] == pytest.approx(0.9)


def test_bad_input() -> None:
    rng = np.random.default_rng(7)
    p, y = _synthetic(rng, 30)
    for a in (0, 1, 1.5, -0.1):
        with pytest.raises(FailsightInputError, match="alpha must lie in"):
            ConformalClassifier("lac", a).fit(p, y)
    with pytest.raises(FailsightInputError, match=r"n ≥ 99.*at least 99"):
        ConformalClassifier("lac", 0.01).fit(p, y)
    with pytest.raises(FailsightInputError, match="every class"):
        ConformalClassifier("lac", 0.1, class_conditional=True).fit(p, y)
    with pytest.raises(FailsightInputError, match="method must be"):
        ConformalClassifier("thr", 0.1).fit(p, y)
    with pytest.raises(FailsightInputError, match="not fitted"):
        ConformalClassifier().predict_sets(p)
    cc = ConformalClassifier("lac", 0.2).fit(p, y)
    with pytest.raises(FailsightInputError, match="classes"):
        cc.predict_sets(p[:, :5] / p[:, :5].sum(1, keepdims=True))
    with pytest.raises(FailsightInputError, match="NaN"):
        cc.predict_sets(np.full((2, 10), np.nan))
    with pytest.raises(FailsightInputError, match="coverage"):
        from failsight.slices import evaluate

        evaluate(y, y, y, metric="coverage")


def test_numpy_only_import() -> None:
    import subprocess

    code = ("import sys; import failsight.reliability.conformal as c; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
