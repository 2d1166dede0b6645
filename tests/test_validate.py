import numpy as np
import pytest

from failsight._validate import (
    FailsightInputError,
    check_labels,
    check_labels_probs,
    check_logits,
    check_probs,
)
from failsight.types import Interval, Result, to_jsonable


def test_binary_probs_become_two_columns():
    p = check_probs(np.array([0.2, 0.9]))
    np.testing.assert_allclose(p, [[0.8, 0.2], [0.1, 0.9]])


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.array([[0.5, 0.6]]), "sum to 1"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.array([[2.0, -1.0]]), "logits"),
        (np.zeros((0, 3)), "empty"),
        (np.ones((3, 1)), "at least 2"),
        (np.ones((2, 2, 2)) / 2, "1-D or 2-D"),
    ],
)
def test_bad_probs_raise_clear_errors(probs, match):
    with pytest.raises(FailsightInputError, match=match):
        check_probs(probs)


def test_labels_out_of_range_and_mismatch():
    p = np.full((3, 2), 0.5)
    with pytest.raises(FailsightInputError, match="only 2 classes"):
        check_labels_probs([0, 1, 2], p)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        check_labels_probs([0, 1], p)
    with pytest.raises(FailsightInputError, match="non-integer"):
        check_labels([0.5, 1.0])
    with pytest.raises(FailsightInputError, match="negative"):
        check_labels([-1, 0])


def test_logits_binary_and_torch_tensor():
    torch = pytest.importorskip("torch")
    z = check_logits(torch.tensor([0.0, 2.0]))
    np.testing.assert_allclose(z, [[0, 0], [0, 2]])


def test_to_jsonable_handles_numpy_and_nonfinite():
    out = to_jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": Interval(0.1, 0.2)})
    assert out == {"a": 1.5, "b": [1, 2], "c": None, "d": {"low": 0.1, "high": 0.2, "level": 0.95}}
    assert isinstance(Interval(0, 1), Result)


# ---------------------------------------------------------------------- issue 11: silent wrong numbers, tracebacks


def test_complex_input_is_refused_not_truncated():
    from failsight.reliability import ece

    p = np.full((4, 2), 0.5)
    with pytest.raises(FailsightInputError, match="complex"):
        check_probs(p.astype(complex))
    with pytest.raises(FailsightInputError, match="complex"):
        ece([0, 1, 0, 1], p + 0.1j)
    with pytest.raises(FailsightInputError, match="complex"):
        check_logits(np.ones((2, 3), dtype=np.complex64))


def test_huge_unsigned_and_float_labels_are_named_as_they_are():
    with pytest.raises(FailsightInputError, match="18446744073709551615") as e:
        check_labels(np.array([0, 1, 2**64 - 1], dtype=np.uint64))
    assert "negative" not in str(e.value)
    with pytest.raises(FailsightInputError, match="far outside"):
        check_labels(np.array([0.0, 1e19]))
    # in-range unsigned labels are fine
    np.testing.assert_array_equal(check_labels(np.array([0, 3], dtype=np.uint64)), [0, 3])


def test_low_precision_torch_tensors():
    torch = pytest.importorskip("torch")
    from failsight.reliability import ece, nll

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 10)) * 3
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 10, 300)
    pb = torch.tensor(p).bfloat16()
    # bfloat16 rows are off by up to u = 2**-8 after storage: accepted (tolerance 2u), not a traceback
    assert float(np.abs(pb.float().sum(1).numpy() - 1).max()) > 1e-3
    got = ece(y, pb)
    # the value is that of the bfloat16 values themselves (exactly widened): the definition in float64
    q = pb.float().numpy().astype(np.float64)
    conf, hit = q.max(1), q.argmax(1) == y
    b = np.minimum((conf * 15).astype(int) - (conf * 15 == np.floor(conf * 15)) * (conf > 0), 14)
    ref = sum(abs(hit[b == i].mean() - conf[b == i].mean()) * (b == i).mean() for i in range(15) if (b == i).any())
    assert got == pytest.approx(ref, abs=1e-12)  # float64 sums of 300 terms: ~1e-14
    assert np.isfinite(nll(y, pb))
    assert check_probs(torch.tensor(p).half()).shape == (300, 10)
    # a bfloat16 row that is really unnormalised is still refused
    bad = pb.clone()
    bad[0] *= 1.1
    with pytest.raises(FailsightInputError, match="sum to 1"):
        ece(y, bad)
    # labels as a torch tensor of any integer dtype
    assert ece(torch.tensor(y, dtype=torch.int16), p) == pytest.approx(ece(y, p))


def _sel(y, p, **kw):
    from failsight.reliability import select_threshold

    return select_threshold(y, p, **kw)


def _nll(y, p, **kw):
    from failsight.reliability import nll

    return nll(y, p, **kw)


def _compare(y, p, **kw):
    from failsight.slices import compare

    return compare(y, p, p, y % 2, **kw)


def _ood(y, p, **kw):
    from failsight.robustness.ood import ood_metrics

    return ood_metrics(p[:, 0], p[:, 1], **kw)


@pytest.mark.parametrize(("fn", "kwargs", "match"), [
    (_sel, {"max_risk": "abc"}, "max_risk must be a number"),
    (_sel, {"max_risk": None}, "max_risk must be a number"),
    (_sel, {"max_risk": float("nan")}, "max_risk must be finite"),
    (_nll, {"eps": "x"}, "eps must be a number"),
    (_compare, {"alpha": "x"}, "alpha must be a number"),
    (_ood, {"tpr": "95%"}, "95% is 0.95"),
    (_ood, {"tpr": 95}, r"tpr must lie in \(0, 1\]"),
])
def test_bad_scalar_arguments_raise_clear_errors(fn, kwargs, match):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    with pytest.raises(FailsightInputError, match=match):
        fn(y, p, **kwargs)


def test_probabilities_declared_as_logits_are_read_as_probabilities():
    from failsight._validate import FailsightWarning, resolve_prediction_kind
    from failsight.reliability import analyze

    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4) * 0.3, 400)
    y = np.array([rng.choice(4, p=r) for r in p])  # calibrated by construction
    with pytest.warns(FailsightWarning, match="reading them as probabilities"):
        a = analyze(y, p, is_logits=True, n_boot=20)
    b = analyze(y, p, is_logits=False, n_boot=20)
    assert a.input_kind == "probs" and a.metric("ece").value == pytest.approx(b.metric("ece").value)
    # real logits and ambiguous 1-D values follow the declaration
    assert resolve_prediction_kind(rng.normal(size=(5, 4)), True) is True
    assert resolve_prediction_kind(np.array([0.2, 0.7]), True) is True
    assert resolve_prediction_kind(p, None) is False
