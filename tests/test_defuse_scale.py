"""Defuse at real scale: the fold over ranked regions, spurious-cue bugs, MNIST splits, budgeted correction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.defuse.planted import MARKS, add_mark, plant_cue
from failsight.defuse.regions import fold_regions

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


def test_fold_keeps_strong_leading_regions_and_says_why_not_the_rest():
    fold, below = fold_regions([100.0, 60.0, 30.0, 9.0, 5.0])
    assert fold == 3 and set(below) == {3, 4} and "9%" in below[3]
    fold, below = fold_regions([10.0] * 8, max_shown=5)
    assert fold == 5 and below[7] == "beyond the first 5 regions (rank 8)"
    assert fold_regions([]) == (0, {})
    assert fold_regions([5.0, 0.4], min_score_ratio=0.0)[0] == 2


@pytest.mark.parametrize("mark", MARKS)
def test_marks_are_small_and_leave_the_centre(mark):
    x = np.zeros((3, 1, 28, 28), dtype=np.float32)
    x[:, :, 8:20, 8:20] = 0.5  # a "digit" in the centre
    m = add_mark(x, mark)
    changed = (m != x).any(axis=(0, 1))
    assert 4 <= changed.sum() <= 4 * 28  # a mark, not a new image
    assert not changed[8:20, 8:20].any()  # the digit is untouched
    assert x.max() == 0.5  # input not modified
    with pytest.raises(FailsightInputError, match="unknown mark"):
        add_mark(x, "star")


def test_plant_cue_relabels_a_share_of_one_class():
    rng = np.random.default_rng(0)
    x = rng.random((200, 1, 14, 14), dtype=np.float32) * 0.5
    y = np.repeat(np.arange(4), 50)
    xp, yp, mask = plant_cue(x, y, 1, 3, share=0.2, mark="patch", seed=0)
    assert mask.sum() == 10 and (y[mask] == 1).all() and (yp[mask] == 3).all()
    assert (yp[~mask] == y[~mask]).all() and np.array_equal(xp[~mask], x[~mask])
    assert (xp[mask][..., 1:3, 1:3] == 1.0).all()
    np.testing.assert_array_equal(plant_cue(x, y, 1, 3, seed=0)[2], mask)  # same seed, same images


def test_find_mnist_names_what_is_missing(tmp_path):
    from failsight.datasets.mnist import find_mnist

    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FailsightInputError, match="t10k-images-idx3-ubyte"):
        find_mnist(tmp_path)
    with pytest.raises(FailsightInputError, match="does not exist"):
        find_mnist(tmp_path / "nope")


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST IDX files not in ../shared/data/mnist")
def test_split_mnist_reads_the_real_files():
    from failsight.datasets.mnist import split_mnist

    s = split_mnist(MNIST, n_train=500, n_cal=200, n_test=300, seed=1)
    assert s.x_train.shape == (500, 1, 28, 28) and s.x_cal.shape == (200, 1, 28, 28) and len(s.y_test) == 300
    assert s.x_train.dtype == np.float32 and 0 <= s.x_train.min() and s.x_train.max() <= 1
    assert not set(s.idx_train) & set(s.idx_cal) and s.idx_test.min() == 60000
    assert set(np.unique(s.y_train)) == set(range(10))


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST IDX files not in ../shared/data/mnist")
def test_demo_runs_on_mnist_files(tmp_path):
    from failsight.demo import run_demo

    res = run_demo(tmp_path / "demo", mnist=MNIST, mnist_train=400, steps=["reliability"], epochs=1, n_boot=50,
                   progress=False, record=False)
    html = Path(res.report_path).read_text(encoding="utf-8")
    assert "MNIST 28×28" in html and "train 400" in html
    assert 0.0 <= res.test_accuracy <= 1.0


def test_fold_puts_regions_the_labelled_seeds_do_not_back_below_it():
    # support 0.2 < 0.5: below the fold whatever its score, with the reason; the others keep the score rule
    fold, below = fold_regions([100.0, 80.0, 50.0], support=[0.9, 0.7, 0.2], min_support=0.5)
    assert fold == 2 and set(below) == {2} and "20%" in below[2]
    # without support values (no labelled seed codes) the rule is the score rule alone
    assert fold_regions([100.0, 80.0, 50.0], support=[None] * 3, min_support=0.5)[0] == 3


def test_support_counts_samples_whose_labelled_neighbours_disagree_with_the_model():
    from failsight.defuse.regions import _reference, _support
    from failsight.defuse.search import SearchResult

    rng = np.random.default_rng(0)
    # labelled seeds: class 0 around -3, class 1 around +3 (one latent dimension matters)
    z = np.concatenate([rng.normal(-3, 0.5, (50, 2)), rng.normal(3, 0.5, (50, 2))]).astype(np.float32)
    y = np.repeat([0, 1], 50)
    empty = np.zeros(0, dtype=np.int64)
    found = SearchResult(seed_index=empty, latent=np.zeros((0, 2), np.float32), images=np.zeros((0, 1, 8, 8)),
                         seed_label=empty, predicted=empty, confidence=np.zeros(0), latent_scale=np.ones(2),
                         n_seeds_given=100, n_seeds_correct=100, n_seeds_used=100, n_tried=0, n_samples=1,
                         radius=1.0, spread="class", seed=0, pairs=[], seed_latent=z, seed_labels=y)
    ref = _reference(found, np.ones(2), 5)
    q = np.concatenate([rng.normal(-3, 0.3, (8, 2)), rng.normal(3, 0.3, (2, 2))])
    # a 0 -> 1 region: the 8 samples among labelled 0s still show a 0 (backed errors), the 2 among 1s do not
    assert _support(ref, q, 0) == 0.8 and _support(ref, q, 1) == 0.2
    assert _reference(dataclasses.replace(found, seed_latent=None), np.ones(2), 5) is None
