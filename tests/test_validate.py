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
