"""scikit-learn's bundled handwritten digits as small images (no download).

1,797 real 8×8 grey-scale images of the digits 0-9, shipped inside the scikit-learn package. They are the
default data for ``failsight demo`` and the tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from failsight._validate import FailsightInputError, check_fraction, check_int
from failsight.types import Result

#: Class names of the digits data set, index = label.
DIGIT_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """Return the digits as images.

    Returns
    -------
    x : float32 array ``(1797, 1, 8, 8)`` with values in [0, 1] (raw pixel counts 0..16 divided by 16).
    y : int64 array ``(1797,)`` of labels 0..9.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return np.ascontiguousarray(x), y


@dataclasses.dataclass(frozen=True)
class DigitsSplits(Result):
    """Stratified train / calibration / test splits of the digits images.

    ``x_*`` are float32 ``(n, 1, 8, 8)``, ``y_*`` int64 ``(n,)``; ``idx_*`` index into
    :func:`load_digits_images` so the split can be reproduced or joined with other data.
    """

    x_train: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    y_train: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    x_cal: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    y_cal: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    x_test: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    y_test: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    idx_train: np.ndarray
    idx_cal: np.ndarray
    idx_test: np.ndarray
    seed: int
    classes: tuple[str, ...] = DIGIT_CLASSES

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples per split."""
        return {"train": len(self.y_train), "cal": len(self.y_cal), "test": len(self.y_test)}


def _stratified_take(y: np.ndarray, frac: float, rng: np.random.Generator, pool: np.ndarray) -> np.ndarray:
    """Pick ``round(frac * len(pool))`` indices from ``pool`` with per-class shares matching ``y[pool]``."""
    n_take = round(frac * len(pool))
    classes, counts = np.unique(y[pool], return_counts=True)
    # largest-remainder allocation so the total is exactly n_take
    exact = counts * (n_take / len(pool))
    alloc = np.floor(exact).astype(np.int64)
    rest = n_take - int(alloc.sum())
    if rest > 0:
        alloc[np.argsort(-(exact - alloc), kind="stable")[:rest]] += 1
    picked = []
    for c, k in zip(classes, alloc, strict=True):  # loop over classes (10), not samples
        members = pool[y[pool] == c]
        picked.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(picked))


def split_digits(seed: int = 0, cal_size: float = 0.2, test_size: float = 0.3) -> DigitsSplits:
    """Split the digits into stratified train / calibration / test parts.

    ``cal_size`` and ``test_size`` are fractions of all 1,797 images; the rest is training data.
    The same ``seed`` always gives the same split.
    """
    seed = check_int(seed, "seed", minimum=0)
    cal_size = check_fraction(cal_size, "cal_size", open_low=False)
    test_size = check_fraction(test_size, "test_size")
    if cal_size + test_size >= 0.95:
        raise FailsightInputError(
            f"cal_size + test_size = {cal_size + test_size:.3g} leaves too little training data; "
            "keep their sum below 0.95 (e.g. cal_size=0.2, test_size=0.3)."
        )
    x, y = load_digits_images()
    rng = np.random.default_rng(seed)
    all_idx = np.arange(len(y))
    idx_test = _stratified_take(y, test_size, rng, all_idx)
    rest = np.setdiff1d(all_idx, idx_test, assume_unique=True)
    idx_cal = (_stratified_take(y, cal_size / (1.0 - test_size), rng, rest) if cal_size > 0
               else np.empty(0, dtype=np.int64))
    idx_train = np.setdiff1d(rest, idx_cal, assume_unique=True)
    return DigitsSplits(
        x_train=x[idx_train], y_train=y[idx_train],
        x_cal=x[idx_cal], y_cal=y[idx_cal],
        x_test=x[idx_test], y_test=y[idx_test],
        idx_train=idx_train, idx_cal=idx_cal, idx_test=idx_test, seed=seed,
    )
