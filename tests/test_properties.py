"""Property-based tests (hypothesis) of the public metric and calibrator functions.

Random shapes (class counts up to 50,000), dtypes (float16/32/64, bfloat16 torch tensors) and edge values:
every call either raises a clear :class:`FailsightInputError` or agrees with a float64 reference computed on
exactly the values passed (the low-precision values widened exactly to float64). Kept fast: modest
``max_examples``, small ``n`` when ``k`` is large.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from failsight._validate import FailsightInputError, FailsightWarning  # noqa: E402
from failsight.reliability import (  # noqa: E402
    TemperatureScaling,
    VectorScaling,
    accuracy,
    brier_score,
    calibration_error,
    ece,
    mce,
    nll,
    reliability_diagram,
)

torch = pytest.importorskip("torch")

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = ("float16", "float32", "float64", "bfloat16")


@st.composite
def predictions(draw, max_k: int = 50_000):
    """``(y, p_passed, p64)``: labels, probabilities in the drawn dtype (numpy, or a bfloat16 tensor) and the
    same values widened exactly to float64."""
    k = draw(st.sampled_from([2, 3, 10, 257, 1000, 16_700, max_k]))
    n = draw(st.integers(1, max(1, min(300, 200_000 // k))))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["softmax", "one-hot", "uniform", "peaked"]))
    rng = np.random.default_rng(seed)
    if kind == "softmax":
        z = rng.standard_normal((n, k)) * draw(st.sampled_from([0.5, 4.0, 20.0]))
    elif kind == "one-hot":
        z = np.full((n, k), -1e4)
        z[np.arange(n), rng.integers(0, k, n)] = 0.0
    elif kind == "uniform":
        z = np.zeros((n, k))  # every class tied: argmax is the first, confidence 1/k
    else:
        z = rng.standard_normal((n, k))
        z[np.arange(n), rng.integers(0, k, n)] += np.log(k) + 3
    p64 = np.exp(z - z.max(axis=1, keepdims=True))
    p64 /= p64.sum(axis=1, keepdims=True)
    y = np.where(rng.random(n) < 0.6, p64.argmax(axis=1), rng.integers(0, k, n))
    if dtype == "bfloat16":
        passed = torch.from_numpy(p64).to(torch.bfloat16)
        exact = passed.float().numpy().astype(np.float64)
    else:
        passed = p64.astype(dtype)
        exact = passed.astype(np.float64)
    return y, passed, exact, dtype


def _ref_top_label(y, p, n_bins, norm="l1"):
    """The definition in float64: right-closed uniform bins, first argmax."""
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf, side="left")
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    gap = np.abs(np.bincount(b, hit, n_bins) - np.bincount(b, conf, n_bins))
    m = cnt > 0
    if norm == "l1":
        return float(gap[m].sum() / len(y))
    if norm == "l2":
        return float(np.sqrt(np.sum(gap[m] ** 2 / cnt[m]) / len(y)))
    return float(np.max(gap[m] / cnt[m]))


def _within_tolerance(exact: np.ndarray, dtype: str) -> bool:
    """Whether check_probs accepts these rows: sums within 1e-3, or 2u + k s for a coarser storage dtype."""
    k = exact.shape[1]
    atol = {"bfloat16": max(1e-3, 2 * 2.0**-8), "float16": max(1e-3, 2 * 2.0**-11 + k * 2.0**-25)}.get(dtype, 1e-3)
    return bool(np.abs(exact.sum(axis=1) - 1).max() <= atol)


def test_low_precision_softmax_rows_are_accepted():
    """What the storage-aware tolerance is for: a correctly normalised float64 softmax stored in float16 or
    bfloat16 is a valid probability matrix, however many classes (float16's entries then fall below its
    normal range and round to its subnormal grid)."""
    rng = np.random.default_rng(0)
    for k in (10, 1000, 50_000):
        z = rng.standard_normal((4, k))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = p.argmax(axis=1)
        for passed in (p.astype(np.float16), torch.from_numpy(p).to(torch.bfloat16),
                       torch.from_numpy(p).to(torch.float16)):
            assert 0.0 <= ece(y, passed, n_bins=4) <= 1.0


# Tolerances: the reference and failsight both sum at most n <= 300 float64 terms in [0, 1] into per-bin
# sums; each differs from the exact sum by <= n u (u = 2**-53) relative, and the ECE is a weighted sum of
# differences of such means: |ours - ref| <= ~4 n u < 1e-12.
ATOL = 1e-12


@SETTINGS
@given(predictions(), st.sampled_from([1, 2, 15, 100, 1000]), st.sampled_from(["l1", "l2", "max"]))
def test_binned_metrics_agree_with_float64_reference_or_refuse(pred, n_bins, norm):
    y, passed, exact, dtype = pred
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailsightWarning)  # n_bins > n: a noisy estimate, still a number
        if not _within_tolerance(exact, dtype):
            with pytest.raises(FailsightInputError, match="sum to 1"):
                ece(y, passed, n_bins=n_bins, norm=norm)
            return
        got = ece(y, passed, n_bins=n_bins, norm=norm)
        assert got == pytest.approx(_ref_top_label(y, exact, n_bins, norm), rel=0, abs=ATOL)
        if norm == "max":
            assert mce(y, passed, n_bins=n_bins) == pytest.approx(got, abs=ATOL)
        if norm == "l1":
            assert calibration_error(y, passed, n_bins=n_bins).value == pytest.approx(got, abs=ATOL)
            diag = reliability_diagram(y, passed, n_bins=n_bins)
            assert int(diag.count.sum()) == len(y) and diag.ece == pytest.approx(got, abs=ATOL)
    assert accuracy(y, passed) == pytest.approx(float(np.mean(exact.argmax(axis=1) == y)), abs=0)


@SETTINGS
@given(predictions(max_k=2000))
def test_brier_and_nll_agree_with_float64_reference(pred):
    y, passed, exact, dtype = pred
    if not _within_tolerance(exact, dtype):
        with pytest.raises(FailsightInputError):
            brier_score(y, passed)
        return
    onehot = np.zeros_like(exact)
    onehot[np.arange(len(y)), y] = 1.0
    half = 0.5 if exact.shape[1] == 2 else 1.0
    # float64 sums of n*k squares <= 2: rounding <= n k u, far below 1e-9
    assert brier_score(y, passed) == pytest.approx(half * np.mean(np.sum((exact - onehot) ** 2, axis=1)), abs=1e-9)
    v = nll(y, passed, eps=1e-7)
    # nll clips from below only (at eps), in float64: the same float64 reference up to log/mean rounding
    ref = -np.mean(np.log(np.clip(exact[np.arange(len(y)), y], 1e-7, 1.0)))
    assert v == pytest.approx(ref, rel=1e-12, abs=1e-12)


BAD = st.sampled_from(["nan", "inf", "negative", "above-one", "unnormalised", "label-out-of-range",
                       "negative-label", "float-label", "length", "complex", "3-d", "empty"])


@SETTINGS
@given(predictions(max_k=1000), BAD, st.sampled_from(["ece", "calibration_error", "brier", "nll", "accuracy",
                                                      "diagram", "temperature"]))
def test_bad_input_is_a_clear_error_never_a_number_or_traceback(pred, bad, fn):
    y, _, exact, _ = pred
    p = exact.copy()
    y = y.copy()
    k = p.shape[1]
    if bad == "nan":
        p[0, 0] = np.nan
    elif bad == "inf":
        p[0, -1] = np.inf
    elif bad == "negative":
        p[0, 0] = -0.25
    elif bad == "above-one":
        p[0, 0] = 1.5
    elif bad == "unnormalised":
        p[0] *= 1.01 if p[0].sum() > 0.5 else 2.0
        p = np.minimum(p, 1.0)
        if abs(p[0].sum() - 1) <= 1e-3:  # a one-hot row clipped back to 1: make it sum to 0 instead
            p[0] = 0.0
    elif bad == "label-out-of-range":
        y[0] = k
    elif bad == "negative-label":
        y[0] = -1
    elif bad == "float-label":
        y = y.astype(np.float64)
        y[0] = 0.5
    elif bad == "length":
        y = np.r_[y, 0]
    elif bad == "complex":
        p = p.astype(np.complex128)
    elif bad == "3-d":
        p = p[:, :, None]
    elif bad == "empty":
        p, y = p[:0], y[:0]
    call = {"ece": lambda: ece(y, p), "calibration_error": lambda: calibration_error(y, p, kind="classwise"),
            "brier": lambda: brier_score(y, p), "nll": lambda: nll(y, p), "accuracy": lambda: accuracy(y, p),
            "diagram": lambda: reliability_diagram(y, p),
            "temperature": lambda: TemperatureScaling(input="probs").fit(p, y)}[fn]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FailsightWarning)
        with pytest.raises(FailsightInputError):
            call()


@settings(SETTINGS, max_examples=12)
@given(st.sampled_from([2, 5, 50, 5000, 50_000]), st.integers(0, 2**32 - 1), st.sampled_from(DTYPES))
def test_calibrators_return_probabilities_matching_float64_input(k, seed, dtype):
    rng = np.random.default_rng(seed)
    n = max(8, min(200, 100_000 // k))
    z64 = rng.standard_normal((n, k)) * 3
    y = np.where(rng.random(n) < 0.5, z64.argmax(axis=1), rng.integers(0, k, n))
    if dtype == "bfloat16":
        z = torch.from_numpy(z64).to(torch.bfloat16)
        zx = z.float().numpy().astype(np.float64)
    else:
        z = z64.astype(dtype)
        zx = z.astype(np.float64)
    for cal in (TemperatureScaling(input="logits"), VectorScaling(input="logits")):
        if isinstance(cal, VectorScaling) and k > 5:
            continue  # 2k parameters on a few random-label samples: no optimum to speak of
        a = cal.fit(z, y).predict_proba(z)
        b = type(cal)(**cal.get_params()).fit(zx, y).predict_proba(zx)
        assert a.dtype == np.float64 and a.shape == (n, k)
        # a softmax in float64: each row sums to 1 within k roundings of values <= 1
        assert np.all(a >= 0) and np.abs(a.sum(axis=1) - 1).max() <= (k + 1) * 2.0**-52
        # the same values passed in a low-precision dtype or widened to float64 are the same float64 problem
        # once converted (the widening is exact), so the fit is the same computation: bit-identical
        np.testing.assert_array_equal(a, b)
