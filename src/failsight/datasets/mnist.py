"""MNIST from the original IDX files a user already has (nothing is downloaded): train / calibration / test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from failsight._validate import FailsightInputError, check_int
from failsight.datasets.digits import DIGIT_CLASSES, DigitsSplits
from failsight.datasets.io import read_idx

__all__ = ["MNIST_FILES", "find_mnist", "split_mnist"]

#: The four files of the MNIST distribution (each may also be gzip-compressed with a ``.gz`` suffix).
MNIST_FILES: dict[str, str] = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                               "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def find_mnist(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Paths of the four MNIST IDX files in ``folder`` (``.gz`` or not; ``.`` before ``idx`` also accepted,
    e.g. ``train-images.idx3-ubyte``); raises with the list of what is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise FailsightInputError(f"MNIST folder {root} does not exist; pass the folder holding the four IDX files "
                                  f"({', '.join(MNIST_FILES.values())}, optionally .gz).")
    found, missing = {}, []
    for key, name in MNIST_FILES.items():
        cands = [root / f"{n}{ext}" for n in (name, name.replace("-idx", ".idx")) for ext in ("", ".gz")]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if missing:
        raise FailsightInputError(f"{root} lacks the MNIST file(s) {', '.join(missing)} (or .gz); it holds "
                                  f"{', '.join(sorted(p.name for p in root.iterdir())[:8]) or 'nothing'}.")
    return found


def split_mnist(folder: str | os.PathLike[str], *, n_train: int | None = None, n_cal: int = 5000,
                n_test: int | None = None, seed: int = 0) -> DigitsSplits:
    """MNIST as train / calibration / test splits: images float32 ``(n, 1, 28, 28)`` in [0, 1], labels int64.

    The calibration split is ``n_cal`` images drawn at random (``seed``) from the 60k training images, the train
    split the rest (or a random ``n_train`` of them); the test split is the official 10k test set (or its first
    ``n_test``). ``idx_*`` index into the 70k images train-then-test, so planted bugs can be masked consistently.
    """
    paths = find_mnist(folder)
    n_cal = check_int(n_cal, "n_cal", minimum=0)
    xtr = read_idx(paths["train_x"])
    ytr = read_idx(paths["train_y"]).astype(np.int64)
    xte = read_idx(paths["test_x"], max_items=n_test)
    yte = read_idx(paths["test_y"], max_items=n_test).astype(np.int64)
    if xtr.ndim != 3 or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise FailsightInputError(f"the MNIST files in {folder} do not fit together (images {xtr.shape}, labels "
                                  f"{ytr.shape}); check that they come from one distribution.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ytr))
    idx_cal = np.sort(perm[:n_cal])
    rest = perm[n_cal:]
    if n_train is not None:
        rest = rest[:check_int(n_train, "n_train")]
    idx_train = np.sort(rest)
    idx_test = len(ytr) + np.arange(len(yte))

    def img(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None]

    return DigitsSplits(x_train=img(xtr[idx_train]), y_train=ytr[idx_train], x_cal=img(xtr[idx_cal]),
                        y_cal=ytr[idx_cal], x_test=img(xte), y_test=yte, idx_train=idx_train, idx_cal=idx_cal,
                        idx_test=idx_test, seed=seed, classes=DIGIT_CLASSES)
