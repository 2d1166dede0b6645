"""Calibration metrics: agreement with reference libraries, the correctness traps, bootstrap, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from failsight._validate import FailsightInputError, FailsightWarning
from failsight.reliability import _binning
from failsight.reliability.metrics import (
    NLL_EPS,
    CalibrationError,
    ReliabilityDiagram,
    accuracy,
    bootstrap_ci,
    bootstrap_distribution,
    brier_score,
    calibration_error,
    ece,
    mce,
    nll,
    nll_zero_count,
    percentile_interval,
    reliability_diagram,
)


def _make(n: int, k: int, seed: int = 0, scale: float = 2.0, dtype=np.float64):
    """Over-confident softmax predictions: labels drawn from a flatter version of the predictions."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = np.exp(0.5 * np.log(p))
    q /= q.sum(axis=1, keepdims=True)
    y = (q.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return y, p.astype(dtype)


def _reference_top_label(y, p, n_bins):
    """Plain float64 numpy computation of the right-closed top-label ECE (the definition)."""
    conf = p.max(axis=1).astype(np.float64)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.searchsorted(edges[1:-1], conf, side="left")
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    sc = np.bincount(b, weights=conf, minlength=n_bins)
    sh = np.bincount(b, weights=hit, minlength=n_bins)
    m = cnt > 0
    return float(np.sum(np.abs(sh[m] / cnt[m] - sc[m] / cnt[m]) * cnt[m]) / len(y))


# --------------------------------------------------------------------------------------------------
# numerical agreement with reference libraries
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_agrees_with_torchmetrics(norm):
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    y, p = _make(4000, 6, seed=1, dtype=np.float32)
    ours = ece(y, p, n_bins=15, norm=norm)
    # torchmetrics' bins are left-closed, ours right-closed: they agree when no confidence lies on an edge,
    # checked here, not assumed
    conf = p.max(axis=1).astype(np.float64)
    hit = p.argmax(axis=1) == y
    assert np.min(np.abs(conf[:, None] - np.linspace(0, 1, 16)[None, :])) > 1e-6
    ref = float(tmf.multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=6,
                                                  n_bins=15, norm=norm))
    # torchmetrics casts confidences to float32 and sums each bin sequentially in float32: a bin's sums of
    # n_b terms in [0, 1] are off by <= n_b u relative (u = 2**-24), so its mean accuracy and confidence by
    # <= n_b u each, its gap by <= 2 n_b u; weighted by n_b / n (rounded by u) and summed over <= 15 bins
    # (15 more roundings of a value <= 1), the ECE is off by <= 2 u max_b n_b + 16 u <= 2 n u + 16 u (the
    # L2 and max norms by no more). Ours sums in float64 (error ~1e-12 here).
    u32 = float(np.finfo(np.float32).eps) / 2
    assert ours == pytest.approx(ref, rel=0, abs=(2 * len(y) + 16) * u32)
    # the same binning core at float64 (torchmetrics' own compute step, fed float64): within float64 rounding,
    # ~4 n u64 by the same argument, so any difference in the binning rule itself would show
    ce_compute = getattr(pytest.importorskip("torchmetrics.functional.classification.calibration_error"),
                         "_ce_compute", None)
    if ce_compute is not None:
        ref64 = float(ce_compute(torch.from_numpy(conf), torch.from_numpy(hit.astype(np.float64)), 15, norm=norm))
        assert ours == pytest.approx(ref64, rel=0, abs=4 * len(y) * np.finfo(np.float64).eps)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_agrees_with_netcal_ece_and_mce(strategy):
    netcal = pytest.importorskip("netcal.metrics")
    # n - 1 = 1001 is not divisible by 3 or 5: no quantile edge falls exactly on a sample, where netcal's
    # left-closed bins and our right-closed bins would differ
    y, p = _make(1002, 4, seed=2)
    equal = strategy == "uniform"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_ece = netcal.ECE(bins=15, equal_intervals=equal).measure(p, y)
        ref_mce = netcal.MCE(bins=15, equal_intervals=equal).measure(p, y)
    assert ece(y, p, 15, strategy=strategy) == pytest.approx(ref_ece, abs=1e-9)
    assert mce(y, p, 15, strategy=strategy) == pytest.approx(ref_mce, abs=1e-9)


def test_agrees_with_sklearn_brier_and_log_loss():
    from sklearn.metrics import brier_score_loss, log_loss

    y, p = _make(3000, 5, seed=3)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p, labels=range(5)), abs=1e-12)
    assert nll(y, p) == pytest.approx(log_loss(y, p, labels=range(5)), abs=1e-12)
    rng = np.random.default_rng(3)
    yb = (rng.random(500) < 0.3).astype(int)
    pb = rng.uniform(0.01, 0.99, 500)
    assert brier_score(yb, pb) == pytest.approx(brier_score_loss(yb, pb), abs=1e-12)
    assert brier_score(yb, np.stack([1 - pb, pb], 1)) == pytest.approx(brier_score_loss(yb, pb), abs=1e-12)
    assert brier_score(yb, pb, scale_by_half=False) == pytest.approx(2 * brier_score_loss(yb, pb), abs=1e-12)
    assert nll(yb, pb) == pytest.approx(log_loss(yb, pb), abs=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_agrees_with_sklearn_calibration_curve(strategy):
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(4)
    pb = rng.uniform(0, 1, 2000)
    pb[:40] = np.linspace(0, 1, 11).repeat(4)[:40]  # values exactly on uniform edges, 0 and 1
    yb = (rng.random(2000) < pb ** 1.5).astype(int)
    diag = reliability_diagram(yb, pb, n_bins=10, strategy=strategy, class_index=1)
    prob_true, prob_pred = calibration_curve(yb, pb, n_bins=10, strategy=strategy)
    keep = diag.count > 0
    np.testing.assert_allclose(diag.accuracy[keep], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(diag.confidence[keep], prob_pred, rtol=0, atol=1e-12)


def test_agrees_with_uncertainty_calibration():
    cu = pytest.importorskip("calibration.utils")
    y, p = _make(3000, 4, seed=5)
    bins = cu.get_equal_prob_bins
    assert ece(y, p, 15) == pytest.approx(cu.get_ece(p, y, num_bins=15), abs=1e-12)
    for norm, pw in (("l1", 1), ("l2", 2)):
        ours = calibration_error(y, p, 15, norm=norm, kind="marginal").value
        assert ours == pytest.approx(cu._get_ce(p, y, pw, False, 15, bins, mode="marginal"), abs=1e-12)
    # debiased L2 (Kumar et al. 2019), top-label and marginal
    ours = calibration_error(y, p, 15, norm="l2", debiased=True).value
    assert ours == pytest.approx(cu._get_ce(p, y, 2, True, 15, bins, mode="top-label"), abs=1e-12)
    ours = calibration_error(y, p, 15, norm="l2", kind="marginal", debiased=True).value
    assert ours == pytest.approx(cu._get_ce(p, y, 2, True, 15, bins, mode="marginal"), abs=1e-12)


def test_debiased_l1_is_the_expectation_of_kumars_resampling():
    y, p = _make(3000, 4, seed=6)
    ours = calibration_error(y, p, 15, norm="l1", debiased=True).value
    assert ours < ece(y, p, 15)
    # Kumar et al.'s estimator: 2 * plug-in - mean over draws of the plug-in with each bin's accuracy
    # replaced by a normal draw N(acc_b, acc_b (1 - acc_b) / n_b). Ours is its exact expectation.
    d = reliability_diagram(y, p, 15)
    keep = d.count > 0
    w, acc, conf = d.count[keep] / len(y), d.accuracy[keep], d.confidence[keep]
    sd = np.sqrt(acc * (1 - acc) / d.count[keep])
    rng = np.random.default_rng(0)
    draws = np.concatenate([np.abs(rng.normal(acc, sd, (250_000, len(w))) - conf) @ w for _ in range(4)])
    # Monte-Carlo error of the mean of 1e6 i.i.d. draws: s.e. = sd(draw) / 1000 (~1e-5); 5.3 s.e. fails with
    # probability < 1.2e-7 (normal approximation, exact enough for a mean of 1e6 bounded draws)
    se = draws.std(ddof=1) / np.sqrt(len(draws))
    assert ours == pytest.approx(2 * d.ece - draws.mean(), abs=5.3 * se)
    cu = pytest.importorskip("calibration.utils")
    # the reference needs every bin non-empty: dropping the upper edges of empty bins leaves the bins unchanged
    upper = [e for e, c in zip(d.bin_edges[1:], d.count, strict=True) if c > 0]
    data = list(zip(p.max(axis=1), (p.argmax(axis=1) == y).astype(float), strict=True))
    np.random.seed(0)  # noqa: NPY002 - the reference draws from numpy's global generator
    ref = cu.normal_debiased_ce(cu.bin(data, upper), power=1, resamples=5000)
    # the reference averages 5000 draws of the same per-draw distribution: s.e. = sd(draw) / sqrt(5000)
    # (~1.5e-4; ours is exact); 5.3 s.e. fails with probability < 1.2e-7
    assert ours == pytest.approx(ref, abs=5.3 * draws.std(ddof=1) / np.sqrt(5000))


# --------------------------------------------------------------------------------------------------
# correctness traps
# --------------------------------------------------------------------------------------------------


def test_confidence_one_is_in_the_last_bin_and_zero_in_the_first():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.95, 0.05]])
    y = np.array([0, 0, 1, 0])
    diag = reliability_diagram(y, p, n_bins=4)
    assert diag.count.tolist() == [0, 1, 0, 3]  # 1.0 -> last bin (no phantom bin), 0.5 = e_2 -> bin 1
    per_class = reliability_diagram(y, p, n_bins=4, class_index=1)
    assert per_class.count[0] == 2  # probability 0 (and 0.05) -> first bin
    assert per_class.count[-1] == 1
    assert len(diag.bin_edges) == 5


def test_bins_are_right_closed():
    for n_bins in (3, 7, 10, 15):
        edges = np.linspace(0, 1, n_bins + 1)
        inner = edges[1:-1]
        vals = np.concatenate([inner, np.nextafter(inner, 2)])
        p = np.stack([1 - vals, vals], axis=1)
        y = np.ones(len(vals), dtype=int)
        diag = reliability_diagram(y, p, n_bins=n_bins, class_index=1)
        expected = np.zeros(n_bins, dtype=int)
        np.add.at(expected, np.arange(n_bins - 1), 1)  # value == e_b goes to bin b - 1
        np.add.at(expected, np.arange(1, n_bins), 1)  # the next float up goes to bin b
        assert diag.count.tolist() == expected.tolist()


def test_fast_bin_assignment_equals_searchsorted_at_every_edge():
    # the kernels compute the bin as int(x * B) corrected against the edges; check values on and next to
    # every edge for many bin counts, through the fused top-label pass and the per-class pass
    for n_bins in range(1, 130):
        edges = np.linspace(0, 1, n_bins + 1)
        near = [edges]
        for direction in (2.0, -1.0):
            x = edges.copy()
            for _ in range(2):
                x = np.nextafter(x, direction)
                near.append(x)
        v = np.unique(np.clip(np.concatenate(near), 0, 1))
        expected = np.bincount(np.searchsorted(edges[1:-1], v, side="left"), minlength=n_bins)
        p = np.stack([1 - v, v], axis=1)
        y = np.ones(len(v), dtype=int)
        assert reliability_diagram(y, p, n_bins, class_index=1).count.tolist() == expected.tolist()
        top = v[v >= 0.5]
        pt = np.stack([1 - top, top], axis=1)
        expected_top = np.bincount(np.searchsorted(edges[1:-1], top, side="left"), minlength=n_bins)
        if len(top) >= n_bins:
            assert reliability_diagram(np.ones(len(top), dtype=int), pt, n_bins).count.tolist() == \
                expected_top.tolist()


def test_n_bins_means_n_bins():
    y, p = _make(500, 3, seed=7)
    for strategy in ("uniform", "quantile"):
        diag = reliability_diagram(y, p, n_bins=15, strategy=strategy)
        assert diag.confidence.shape == diag.accuracy.shape == diag.count.shape == (15,)
        assert diag.bin_edges.shape == (16,) and diag.count.sum() == 500
    assert calibration_error(y, p, n_bins=15).n_bins == 15


def test_float32_input_accumulates_in_float64():
    rng = np.random.default_rng(8)
    p = rng.random((1_000_000, 10), dtype=np.float32) ** 4
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, 10, 1_000_000)
    ref = _reference_top_label(y, p, 15)
    assert ece(y, p, 15) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert calibration_error(y, p, 15, strategy="uniform").value == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_debiased_survives_empty_and_single_sample_bins():
    y = np.array([0, 1, 0, 0, 1])
    p = np.array([[0.95, 0.05], [0.62, 0.38], [0.97, 0.03], [0.55, 0.45], [0.51, 0.49]])
    # 5 bins: two empty, one with a single sample, two with two samples
    assert reliability_diagram(y, p, 5).count.tolist() == [0, 0, 2, 1, 2]
    for norm in ("l1", "l2"):
        for kind in ("top-label", "classwise", "marginal"):
            r = calibration_error(y, p, n_bins=5, norm=norm, debiased=True, kind=kind)
            assert np.isfinite(r.value) and r.value >= 0
        r = calibration_error(y, p, n_bins=5, norm=norm, debiased=True, ci=0.9, n_boot=50)
        assert np.isfinite(r.ci.low) and np.isfinite(r.ci.high)
    # one sample per bin: no variance estimate exists -> the plug-in value is kept
    y1 = np.array([0, 0, 1])
    p1 = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.3, 0.2], [0.9, 0.05, 0.05]])
    assert reliability_diagram(y1, p1, 3).count.tolist() == [1, 1, 1]
    for norm in ("l1", "l2"):
        assert calibration_error(y1, p1, 3, norm=norm, debiased=True).value == pytest.approx(
            calibration_error(y1, p1, 3, norm=norm).value, abs=1e-15)
    cu = pytest.importorskip("calibration.utils")
    with pytest.raises(ValueError):  # the reference crashes on the same input
        cu._get_ce(p, y, 1, True, 5, cu.get_equal_prob_bins, mode="top-label")


def test_numba_and_numpy_backends_give_identical_results(monkeypatch):
    y, p = _make(70_000, 5, seed=9, dtype=np.float32)  # more than two accumulation chunks

    def run():
        return (
            ece(y, p), ece(y, p, norm="l2"), mce(y, p, strategy="quantile"),
            calibration_error(y, p, kind="classwise", norm="l2").value,
            calibration_error(y, p, kind="marginal", strategy="quantile", debiased=True).value,
            calibration_error(y[:3000], p[:3000], ci=0.9, n_boot=40, seed=5).ci,
            calibration_error(y[:500], p[:500], kind="classwise", ci=0.9, n_boot=20, seed=1).ci,
            np.nan_to_num(reliability_diagram(y, p, 12).confidence, nan=-1.0).tolist(), accuracy(y, p),
        )

    fast = run()
    monkeypatch.setattr(_binning, "USE_NUMBA", False)
    slow = run()
    assert fast == slow  # bitwise: both backends sum in the same order


def test_ties_and_long_rows_follow_numpy_argmax(monkeypatch):
    # rows of 40 classes (the kernels' long-row path) with ties for the max: the first argmax counts
    rng = np.random.default_rng(22)
    p = np.full((3000, 40), 1.0 / 40) + (rng.random((3000, 40)) < 0.05) * 0.01
    p[:, :4] += rng.integers(0, 2, (3000, 4)) * 0.02
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, 6, 3000)
    ref = (p.argmax(axis=1) == y).mean()
    fast = (accuracy(y, p), ece(y, p), ece(y, p.astype(np.float32)))
    assert fast[0] == ref
    monkeypatch.setattr(_binning, "USE_NUMBA", False)
    assert (accuracy(y, p), ece(y, p), ece(y, p.astype(np.float32))) == fast


def test_thread_split_does_not_change_results(monkeypatch):
    y, p = _make(40_000, 5, seed=20, dtype=np.float32)

    def run():
        return (ece(y, p), ece(y, p, strategy="quantile"), calibration_error(y, p, kind="classwise").value,
                calibration_error(y[:2000], p[:2000], ci=0.9, n_boot=30, seed=2).ci,
                calibration_error(y[:500], p[:500], kind="marginal", ci=0.9, n_boot=10).ci)

    monkeypatch.setattr(_binning, "MAX_THREADS", 1)
    one = run()
    monkeypatch.setattr(_binning, "MAX_THREADS", 3)
    monkeypatch.setattr(_binning, "PARALLEL_MIN_WORK", 1)
    assert run() == one


def test_works_without_numba_installed(tmp_path):
    y, p = _make(3000, 4, seed=21)
    code = (
        "import sys, numpy as np; sys.modules['numba'] = None\n"
        "from failsight.reliability import _binning, metrics\n"
        "assert not _binning.HAVE_NUMBA and not _binning.USE_NUMBA\n"
        "d = np.load(sys.argv[1]); y, p = d['y'], d['p']\n"
        "print(repr(metrics.ece(y, p)), repr(metrics.calibration_error(y, p, ci=0.9, n_boot=20).ci.low))\n"
    )
    path = tmp_path / "d.npz"
    np.savez(path, y=y, p=p)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    value, low = (float(v) for v in out.stdout.split())
    assert value == ece(y, p)
    assert low == calibration_error(y, p, ci=0.9, n_boot=20).ci.low


# --------------------------------------------------------------------------------------------------
# kinds, norms, results
# --------------------------------------------------------------------------------------------------


def test_kinds_relate_as_documented():
    y, p = _make(2000, 4, seed=10)
    cw = calibration_error(y, p, kind="classwise", norm="l1")
    mg = calibration_error(y, p, kind="marginal", norm="l1")
    assert cw.value == pytest.approx(mg.value) and len(cw.per_class) == 4
    per = [reliability_diagram(y, p, 15, class_index=j).ece for j in range(4)]
    np.testing.assert_allclose(cw.per_class, per, atol=1e-15)
    mx = calibration_error(y, p, kind="marginal", norm="max")
    assert mx.value == pytest.approx(max(mx.per_class))
    l2 = calibration_error(y, p, kind="marginal", norm="l2")
    assert l2.value == pytest.approx(np.sqrt(np.mean(np.square(l2.per_class))))
    assert mce(y, p) >= ece(y, p, norm="l2") >= ece(y, p)  # max >= RMS >= mean of the same gaps


def test_perfectly_calibrated_bins_give_zero():
    # each bin: confidence equals accuracy exactly
    p = np.array([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    y = np.array([0, 0, 0, 1, 0, 1])
    for norm in ("l1", "l2", "max"):
        assert ece(y, p, 5, norm=norm) == pytest.approx(0.0, abs=1e-15)


def test_results_serialise():
    y, p = _make(300, 3, seed=11)
    r = calibration_error(y, p, ci=0.9, n_boot=50)
    assert isinstance(r, CalibrationError) and float(r) == r.value
    d = json.loads(r.to_json())
    assert d["ci"]["level"] == 0.9 and d["kind"] == "top-label" and d["n_boot"] == 50
    diag = reliability_diagram(y, p, 15)
    assert isinstance(diag, ReliabilityDiagram)
    dd = diag.to_dict()
    assert len(dd["count"]) == 15 and None in dd["confidence"]  # empty bins -> NaN -> null
    assert diag.ece == pytest.approx(ece(y, p, 15))
    np.testing.assert_allclose(diag.gap[diag.count > 0],
                               (diag.accuracy - diag.confidence)[diag.count > 0])


def test_accepts_torch_tensors_and_non_contiguous_arrays():
    torch = pytest.importorskip("torch")
    y, p = _make(800, 4, seed=12)
    ref = ece(y, p)
    assert ece(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(ref, abs=1e-15)
    assert ece(y, np.asfortranarray(p)) == pytest.approx(ref, abs=1e-15)
    rev = p[:, ::-1]
    assert ece(3 - y, rev) == pytest.approx(ref, abs=1e-15)
    assert ece(y.tolist(), p.tolist()) == pytest.approx(ref, abs=1e-15)


def test_accuracy_and_nll_edge_cases():
    from sklearn.metrics import accuracy_score

    y, p = _make(1000, 5, seed=13, dtype=np.float32)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert accuracy([0, 1], [[0.5, 0.5], [0.5, 0.5]]) == 0.5  # ties -> first class, as np.argmax
    assert nll([0], [[0.0, 1.0]]) == np.inf  # a zero true-class probability: infinite loss, not clipped
    assert nll_zero_count([0, 1], [[0.0, 1.0], [0.0, 1.0]]) == 1
    assert nll([0], [[0.0, 1.0]], eps="floor") == pytest.approx(-np.log(NLL_EPS), rel=1e-15)
    assert nll([0], [[0.0, 1.0]], eps=1e-3) == pytest.approx(-np.log(1e-3), rel=1e-15)


def test_nll_is_the_same_for_the_same_numbers_in_any_dtype():
    # float32 values widened to float64 are the same numbers: the NLL (computed in float64, no
    # dtype-dependent clipping) must be bit-identical, also for probabilities far below float32's eps.
    rng = np.random.default_rng(5)
    z = rng.normal(scale=8.0, size=(2000, 10))
    p32 = np.exp(z - z.max(1, keepdims=True)).astype(np.float32)
    p32 /= p32.sum(1, keepdims=True)
    y = rng.integers(0, 10, 2000)
    assert (p32[np.arange(2000), y] < np.finfo(np.float32).eps).any()  # the case that used to differ
    p64 = p32.astype(np.float64)
    assert nll(y, p32) == nll(y, p64)
    ref = -np.mean(np.log(p64[np.arange(2000), y]))
    assert nll(y, p64) == pytest.approx(ref, rel=1e-14)


# --------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------


def test_bootstrap_ci_reproducible_contains_estimate_and_shrinks():
    y, p = _make(20_000, 5, seed=14)
    a = calibration_error(y[:1000], p[:1000], ci=0.95, n_boot=300, seed=3)
    b = calibration_error(y[:1000], p[:1000], ci=0.95, n_boot=300, seed=3)
    c = calibration_error(y[:1000], p[:1000], ci=0.95, n_boot=300, seed=4)
    assert a.ci == b.ci and a.ci != c.ci
    assert a.ci.low <= a.ci_estimate <= a.ci.high and a.ci_method == "debiased"
    big = calibration_error(y, p, ci=0.95, n_boot=300, seed=3)
    assert big.ci.low <= big.ci_estimate <= big.ci.high
    assert (big.ci.high - big.ci.low) < 0.5 * (a.ci.high - a.ci.low)


def test_fast_bootstrap_resamples_exactly_like_the_generic_helper():
    y, p = _make(1500, 4, seed=15)
    fast = calibration_error(y, p, n_bins=10, norm="l2", ci=0.8, n_boot=40, seed=9, ci_method="percentile")
    dist = bootstrap_distribution(lambda yy, pp: ece(yy, pp, 10, norm="l2"), y, p, n_boot=40, seed=9)
    generic = percentile_interval(dist, 0.8)
    assert fast.ci.low == pytest.approx(generic.low, abs=1e-12)
    assert fast.ci.high == pytest.approx(generic.high, abs=1e-12)
    # chunking of resamples does not change them
    again = bootstrap_distribution(lambda yy, pp: ece(yy, pp, 10, norm="l2"), y, p, n_boot=40, seed=9,
                                   batch_size=7)
    np.testing.assert_array_equal(dist, again)


def test_generic_bootstrap_ci_vectorised_and_indices():
    rng = np.random.default_rng(16)
    correct = rng.random(400) < 0.8
    ci1 = bootstrap_ci(np.mean, correct, n_boot=200, seed=1)
    ci2 = bootstrap_ci(lambda c: c.mean(axis=1), correct, n_boot=200, seed=1, vectorized=True)
    assert ci1 == ci2 and ci1.low < correct.mean() < ci1.high
    idx = _binning.bootstrap_indices(50, 300, seed=2)
    assert idx.shape == (300, 50) and idx.min() >= 0 and idx.max() < 50
    np.testing.assert_array_equal(idx[100:], _binning.bootstrap_indices(50, 200, seed=2, start=100))
    counts = np.bincount(_binning.bootstrap_indices(10, 2000, seed=3).ravel(), minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200  # uniform over the samples
    with pytest.raises(FailsightInputError, match="one value per resample"):
        bootstrap_ci(lambda c: c.mean(), correct, n_boot=10, vectorized=True)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "n_bins must be >= 1"),
        ({"n_bins": 2**16 + 1}, "more than 65,536 bins"),
        ({"n_bins": 2.5}, "n_bins must be an integer"),
        ({"strategy": "equal"}, "strategy must be"),
        ({"norm": "l3"}, "norm must be"),
        ({"kind": "top"}, "kind must be"),
        ({"norm": "max", "debiased": True}, "debiased=True is defined"),
        ({"ci": 1.5}, "confidence level"),
        ({"ci": 0.9, "n_boot": 1}, "n_boot must be >= 2"),
        ({"ci": 0.9, "seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_options_raise(kwargs, match):
    y, p = _make(10, 3, seed=17)
    with pytest.raises(FailsightInputError, match=match):
        calibration_error(y, p, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bad_probabilities_raise_through_the_fast_path(dtype):
    y, p = _make(50_000, 4, seed=18, dtype=dtype)
    bad = p.copy()
    bad[40_000, 1] = np.nan
    with pytest.raises(FailsightInputError, match="NaN"):
        ece(y, bad)
    bad = p.copy()
    bad[3, 0] = np.inf
    with pytest.raises(FailsightInputError, match="NaN/inf"):
        accuracy(y, bad)
    bad = p.copy()
    bad[123] = [0.6, 0.6, -0.2, 0.0]
    with pytest.raises(FailsightInputError, match="logits"):
        ece(y, bad)
    bad = p.copy()
    bad[7] *= 1.002
    for fn in (ece, mce, accuracy):
        with pytest.raises(FailsightInputError, match="sum to 1"):
            fn(y, bad)
    with pytest.raises(FailsightInputError, match="sum to 1"):
        calibration_error(y, bad, strategy="quantile")
    ok = p.copy()
    ok[7] *= 1.0009  # within the documented tolerance of 1e-3
    assert np.isfinite(ece(y, ok))


def test_bad_labels_and_shapes_raise():
    y, p = _make(20, 3, seed=19)
    with pytest.raises(FailsightInputError, match="only 3 classes"):
        ece(np.full(20, 3), p)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        ece(y[:-1], p)
    with pytest.raises(FailsightInputError, match="empty"):
        ece([], np.zeros((0, 3)))
    with pytest.raises(FailsightInputError, match="1-D or 2-D"):
        ece(y, p[None])
    with pytest.raises(FailsightInputError, match="class_index"):
        reliability_diagram(y, p, 5, class_index=3)
    with pytest.raises(FailsightInputError, match="scale_by_half"):
        brier_score(y, p, scale_by_half="yes")


# --------------------------------------------------------------------------------------------------
# small batches: more bins than samples (issue 10 item 4)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "n_bins"), [(1, 15), (3, 15), (7, 100), (12, 13)])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_more_bins_than_samples_returns_the_reference_value_with_a_warning(n, n_bins, norm):
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    y, p = _make(n, 4, seed=n)
    with pytest.warns(FailsightWarning, match="more bins than samples"):
        ours = ece(y, p, n_bins=n_bins, norm=norm)
    conf = p.max(axis=1)
    # no sample within float32 rounding of an edge (torchmetrics' bins are left-closed, ours right-closed)
    assert np.min(np.abs(conf[:, None] - np.linspace(0, 1, n_bins + 1)[None, :])) > 1e-6
    ref = float(tmf.multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=4,
                                                  n_bins=n_bins, norm=norm))
    # torchmetrics rounds to float32 and sums there: off by <= (2 n + n_bins + 1) u32, as derived in
    # test_agrees_with_torchmetrics (here every non-empty bin counts toward the final sum)
    assert ours == pytest.approx(ref, rel=0, abs=(2 * n + n_bins + 1) * float(np.finfo(np.float32).eps) / 2)
    assert ours == pytest.approx(_reference_top_label(y, p, n_bins) if norm == "l1" else ours, abs=1e-14)
    with pytest.warns(FailsightWarning):
        full = calibration_error(y, p, n_bins=n_bins, norm=norm, ci=0.9, n_boot=20)
    assert full.value == pytest.approx(ours, abs=1e-14) and full.n_bins == n_bins
    with pytest.warns(FailsightWarning):
        diag = reliability_diagram(y, p, n_bins=n_bins)
    assert diag.count.sum() == n and (diag.count > 0).sum() <= n


def test_more_bins_than_samples_agrees_with_netcal():
    netcal = pytest.importorskip("netcal.metrics")
    y, p = _make(9, 3, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = netcal.ECE(bins=20).measure(p, y)
    with pytest.warns(FailsightWarning):
        ours = ece(y, p, n_bins=20)
    # netcal's bins are left-closed: no confidence lies on an edge here
    assert np.min(np.abs(p.max(axis=1)[:, None] - np.linspace(0, 1, 21)[None, :])) > 1e-9
    assert ours == pytest.approx(ref, rel=0, abs=1e-14)


def test_no_samples_is_refused_not_warned():
    with pytest.raises(FailsightInputError, match="empty"):
        ece(np.zeros(0, dtype=int), np.zeros((0, 3)))
    # as many bins as samples, or fewer: no warning
    y, p = _make(15, 3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ece(y, p, n_bins=15)


# --------------------------------------------------------------------------------------------------
# float32 with many classes (issue 11 item 1): the fused kernels accept every row check_probs accepts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2_000, 20_000, 50_000])
def test_float32_many_classes_equal_float64(k):
    rng = np.random.default_rng(k)
    z = rng.standard_normal((64, k)).astype(np.float32) * 4
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True, dtype=np.float32)
    y = np.where(rng.random(64) < 0.7, p.argmax(axis=1), rng.integers(0, k, 64))
    # rows within check_probs' documented tolerance, some near its edge: scale a few rows by 1 +- 0.9e-3
    p[:4] *= np.float32(1 + 0.9e-3)
    p[4:8] *= np.float32(1 - 0.9e-3)
    p64 = p.astype(np.float64)  # the same values, exactly
    # every binned metric reads the same confidences (max of the row) and sums in float64: equal to rounding
    # of a 64-term float64 sum, and ~1e-2 apart if any row were dropped or zeroed
    assert ece(y, p) == pytest.approx(ece(y, p64), rel=0, abs=1e-13)
    assert ece(y, p) == pytest.approx(_reference_top_label(y, p64, 15), rel=0, abs=1e-13)
    a = calibration_error(y, p, ci=0.9, n_boot=20)
    b = calibration_error(y, p64, ci=0.9, n_boot=20)
    assert a.value == pytest.approx(b.value, abs=1e-13) and a.ci.low == pytest.approx(b.ci.low, abs=1e-13)
    np.testing.assert_array_equal(reliability_diagram(y, p).count, reliability_diagram(y, p64).count)
    # and a row beyond the tolerance is still refused, whatever k
    p[9] *= np.float32(1 + 2e-3)
    with pytest.raises(FailsightInputError, match="must sum to 1"):
        ece(y, p)


def test_ece_interval_covers_a_known_true_ece():
    """Small coverage simulation: confidences c ~ 0.1 + 0.9 Beta(5, 2), correct with probability c - 0.02,
    so every 15-bin gap is -0.02 and the true binned ECE is exactly 0.02 (c >= 0.1 > 0.02, no clipping)."""
    from scipy import stats

    rng = np.random.default_rng(2024)
    sims, hits, pct_hits = 120, 0, 0
    for s in range(sims):
        c = 0.1 + 0.9 * rng.beta(5, 2, 1000)
        y = np.where(rng.random(1000) < c - 0.02, 0, 1)
        p = np.empty((1000, 3))
        p[:, 0], p[:, 1], p[:, 2] = c, (1 - c) / 2, (1 - c) / 2
        r = calibration_error(y, p, ci=0.95, n_boot=200, seed=s)
        hits += r.ci.low <= 0.02 <= r.ci.high
        q = calibration_error(y, p, ci=0.95, n_boot=200, seed=s, ci_method="percentile")
        pct_hits += q.ci.low <= 0.02 <= q.ci.high
    # the benchmark measured ~0.95-0.98 coverage here (500 simulations); fail only when the count is below
    # what a coverage of 0.92 gives with probability 1e-3 (binomial), i.e. clearly under-covering
    assert hits >= stats.binom.ppf(1e-3, sims, 0.92), hits
    # the percentile interval of the biased plug-in misses the small true ECE most of the time
    assert pct_hits < 0.5 * sims, pct_hits


def test_consistency_draws_are_the_estimators_distribution_at_zero_error():
    """``_null_errors`` (per-bin binomial redraws of the hits) against the real thing: the debiased ECE of
    labels drawn from a calibrated model with the same confidences. Same distribution up to the within-bin
    spread of the confidences (< 2 % of the variance with 15 bins), so a two-sample KS test must not reject
    at 1e-3 (600 vs 1000 draws; seeds fixed, so the outcome is deterministic on every machine)."""
    from scipy import stats

    from failsight.reliability import metrics as M

    rng = np.random.default_rng(7)
    c = 0.1 + 0.9 * rng.beta(4, 2, 1500)
    p = np.column_stack([c, 1 - c])
    direct = []
    for _ in range(600):
        y = np.where(rng.random(len(c)) < c, 0, 1)
        direct.append(calibration_error(y, p, n_bins=15, debiased=True).value)
    y = np.where(rng.random(len(c)) < c, 0, 1)
    yy, pp, checked = _binning.prepare(y, p)
    red = _binning.top_label_reduced(yy, pp, 15, "uniform", y_prob=p, checked=checked)
    null = M._null_errors(red, "top-label", "l1", 1000, 3)
    assert stats.ks_2samp(direct, null).pvalue > 1e-3


def test_ece_interval_covers_zero_for_a_calibrated_model_at_its_level():
    """At a true ECE of 0 the interval contains 0 exactly when the consistency test does not reject
    calibration, i.e. with probability ``ci`` by construction (binomial redraws: the test is exact up to the
    within-bin spread). Checked two-sided at the 1e-3 binomial tails of 150 simulations."""
    from scipy import stats

    rng = np.random.default_rng(11)
    sims, hits = 150, 0
    for s in range(sims):
        c = 0.1 + 0.9 * rng.beta(1, 1, 800)
        y = np.where(rng.random(800) < c, 0, 1)
        r = calibration_error(y, np.column_stack([c, 1 - c]), ci=0.95, n_boot=200, seed=s)
        assert r.ci.low <= r.ci_estimate <= r.ci.high
        hits += r.ci.low == 0.0
    assert stats.binom.ppf(1e-3, sims, 0.95) <= hits <= stats.binom.ppf(1 - 1e-3, sims, 0.95), hits
