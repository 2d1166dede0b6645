"""Digits data, splits, the small CNN and its training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from failsight._validate import FailsightInputError
from failsight.datasets.digits import load_digits_images, split_digits
from failsight.models import SmallCNN, TrainingHistory, predict_logits, train_classifier


def test_load_digits_images_shapes_and_range():
    x, y = load_digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_split_is_stratified_disjoint_and_reproducible():
    s = split_digits(seed=3, cal_size=0.2, test_size=0.3)
    _, y = load_digits_images()
    idx = np.concatenate([s.idx_train, s.idx_cal, s.idx_test])
    assert len(idx) == 1797 and len(np.unique(idx)) == 1797  # disjoint and complete
    assert s.sizes["test"] == round(0.3 * 1797)
    assert abs(s.sizes["cal"] - 0.2 * 1797) <= 1
    overall = np.bincount(y, minlength=10) / len(y)
    for part in (s.y_train, s.y_cal, s.y_test):  # each class share within one sample of the overall share
        assert np.all(np.abs(np.bincount(part, minlength=10) - overall * len(part)) <= 1.0 + 1e-9)
    np.testing.assert_array_equal(s.y_test, y[s.idx_test])
    again = split_digits(seed=3, cal_size=0.2, test_size=0.3)
    np.testing.assert_array_equal(s.idx_test, again.idx_test)
    np.testing.assert_array_equal(s.idx_cal, again.idx_cal)
    other = split_digits(seed=4, cal_size=0.2, test_size=0.3)
    assert not np.array_equal(s.idx_test, other.idx_test)
    assert "x_train" not in s.to_dict() and s.to_dict()["seed"] == 3


def test_split_rejects_bad_fractions():
    with pytest.raises(FailsightInputError, match="too little training data"):
        split_digits(cal_size=0.5, test_size=0.5)
    with pytest.raises(FailsightInputError, match="test_size"):
        split_digits(test_size=1.5)


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 28), (3, 32), (1, 64), (3, 13)])
def test_small_cnn_shapes(channels, size):
    m = SmallCNN(in_channels=channels, n_classes=7, image_size=size, width=4, seed=0)
    out = m(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 7)


def test_small_cnn_seeded_init_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = SmallCNN(width=8, seed=1), SmallCNN(width=8, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = SmallCNN(width=8, seed=2)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_training_learns_and_is_deterministic():
    s = split_digits(seed=0)
    hists, logits = [], []
    threads = torch.get_num_threads()
    for _ in range(2):
        m = SmallCNN(width=8, seed=0)
        h = train_classifier(m, s.x_train, s.y_train, epochs=4, batch_size=64, lr=5e-3, seed=0,
                             x_val=s.x_cal, y_val=s.y_cal, progress=False, num_threads=1)
        hists.append(h)
        logits.append(predict_logits(m, s.x_test))
        assert not m.training  # left in eval mode
        assert torch.get_num_threads() == threads  # restored
    h = hists[0]
    assert isinstance(h, TrainingHistory) and h.epochs == 4 and len(h.val_accuracy) == 4
    # "it learns" is a training outcome, so the thresholds sit where every seed clears them with a wide
    # margin, not at seed 0's value. Measured over seeds 0-29 (same data and settings): test accuracy 0.69-0.86
    # (mean 0.82, sd 0.04; the old threshold 0.8 failed 6 of 30 seeds), so 0.5 (5x chance) is 8 sd below the
    # mean and 0.19 below the lowest seed; the final training loss was at most 0.67x the first epoch's.
    assert h.train_loss[-1] < h.train_loss[0]
    acc = (logits[0].argmax(1) == s.y_test).mean()
    assert acc > 0.5, acc  # chance is 0.1
    np.testing.assert_array_equal(logits[0], logits[1])  # same seed, same weights on CPU
    assert h.train_loss == hists[1].train_loss
    assert logits[0].shape == (len(s.y_test), 10) and logits[0].dtype == np.float32
    assert h.to_dict()["epochs"] == 4


def test_predict_logits_batches_and_restores_mode():
    m = SmallCNN(width=4, seed=0)
    x = np.random.default_rng(0).random((37, 1, 8, 8), dtype=np.float32)
    m.train()
    full = predict_logits(m, x, batch_size=1024)
    assert m.training
    np.testing.assert_allclose(predict_logits(m, x, batch_size=5), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_logits(m, torch.from_numpy(x[:, 0])), full, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    m = SmallCNN(width=4, seed=0)
    x = np.zeros((10, 1, 8, 8), np.float32)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        train_classifier(m, x, np.zeros(9, int), epochs=1, progress=False)
    with pytest.raises(FailsightInputError, match="only 10 outputs"):
        train_classifier(m, x, np.full(10, 12), epochs=1, progress=False)
    with pytest.raises(FailsightInputError, match="channel"):
        train_classifier(m, np.zeros((10, 3, 8, 8)), np.zeros(10, int), epochs=1, progress=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(FailsightInputError, match="NaN"):
        train_classifier(m, bad, np.zeros(10, int), epochs=1, progress=False)
    with pytest.raises(FailsightInputError, match=r"nn\.Module"):
        predict_logits(lambda z: z, x)
    with pytest.raises(FailsightInputError, match="x_val"):
        train_classifier(m, x, np.zeros(10, int), epochs=1, x_val=x, progress=False)
