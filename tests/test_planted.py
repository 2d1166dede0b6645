"""failsight.defuse.planted: the planted sub-style is a coherent part of one class, and the oracle votes."""

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.datasets.digits import load_digits_images
from failsight.defuse.planted import OracleEnsemble, substyle_mask


def test_substyle_mask_is_a_share_of_one_class_closest_to_the_wrong_class():
    x, y = load_digits_images()
    mask, share = substyle_mask(x, y, 1, 8)
    assert set(np.unique(y[mask])) == {1}
    assert 0.15 <= share <= 0.30
    assert mask.sum() == pytest.approx(share * (y == 1).sum())
    # the planted part of class 1 looks more like an 8 than the rest of class 1 does
    flat = x.reshape(len(x), -1)
    m8 = flat[y == 8].mean(0)
    d_sub = ((flat[mask] - m8) ** 2).sum(1).mean()
    d_rest = ((flat[(y == 1) & ~mask] - m8) ** 2).sum(1).mean()
    assert d_sub < d_rest
    # deterministic
    assert np.array_equal(mask, substyle_mask(x, y, 1, 8)[0])


def test_substyle_mask_errors():
    x, y = load_digits_images()
    with pytest.raises(FailsightInputError, match="pick another pair"):
        substyle_mask(x, y, 1, 8, share=(0.9, 0.95))
    with pytest.raises(FailsightInputError, match="need images"):
        substyle_mask(x[y != 8], y[y != 8], 1, 8)


class _Region:
    def __init__(self, images, predicted):
        self._images, self.predicted_label = images, predicted

    def sample(self, n, seed=None):
        return self._images[:n]


def test_oracle_votes_and_discards():
    x, y = load_digits_images()
    oracle = OracleEnsemble(x[:1200], y[:1200], n_models=1, epochs=8, seed=0, n_votes=40)
    threes = x[1200:][y[1200:] == 3][:40]
    assert oracle.region_label(_Region(threes, predicted=5)) == 3        # a real bug: relabel as 3
    assert oracle.region_label(_Region(threes, predicted=3)) == "discard"  # the model already says 3
    mixed = np.concatenate([x[1200:][y[1200:] == 0][:20], x[1200:][y[1200:] == 6][:20]])
    assert oracle.region_label(_Region(mixed, predicted=9)) == "discard"  # ambiguous: no clear majority of confident votes
