"""Real prediction sets for ``benchmarks/calibration_real.py``: models trained here, predictions on held-out data.

Each problem is ``(name, z_cal, y_cal, z_test, y_test)`` with float32 logits of 5,000 calibration and
5,000 test rows the model never saw in training:

* ``mnist10-lr``: multinomial logistic regression on 50 PCA components of MNIST pixels (10 classes);
* ``mnist10-mlp``: a small torch MLP on MNIST pixels, trained long enough to be over-confident;
* ``pairs100-lr``: 100 classes from pairs of MNIST digits (class = 10 * first + second): logistic regression
  on the two images' PCA features side by side;
* ``pairs100-mlp``: the same pairs, an over-fitted torch MLP;
* ``shapes100-lr``: the shapes x colours generator, 10 shapes x 10 colours = 100 classes, logistic
  regression on 12 x 12 pixels (clutter and texture on);
* ``shapes110-mlp``: 11 shapes x 10 colours = 110 classes, an MLP.

Problems are cached as ``.npz`` under ``$FAILSIGHT_BENCH_CACHE`` (default ``/tmp/failsight_calib_cache``)
so reruns skip training. MNIST is read from ``../shared/data/mnist`` (the problems that need it are skipped
with a message when it is absent).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT.parent / "shared" / "data" / "mnist"
CACHE = Path(os.environ.get("FAILSIGHT_BENCH_CACHE", "/tmp/failsight_calib_cache"))
N_CAL = 5000
N_TEST = 5000

Problem = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from failsight.datasets.io import load_data

    tr = load_data(MNIST / "train-images-idx3-ubyte.gz", kind="features")
    te = load_data(MNIST / "t10k-images-idx3-ubyte.gz", kind="features")
    return (np.asarray(tr.x, np.float32), np.asarray(tr.y), np.asarray(te.x, np.float32), np.asarray(te.y))


def _pca(x_fit: np.ndarray, d: int, *xs: np.ndarray) -> list[np.ndarray]:
    mu = x_fit.mean(0)
    _, _, vt = np.linalg.svd(x_fit[:10000] - mu, full_matrices=False)
    return [((x - mu) @ vt[:d].T).astype(np.float32) for x in xs]


def _lr(x: np.ndarray, y: np.ndarray, xe: np.ndarray, C: float, max_iter: int = 300) -> np.ndarray:
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=C, max_iter=max_iter).fit(x, y)
    return m.decision_function(xe).astype(np.float32)


def _mlp(x: np.ndarray, y: np.ndarray, xe: np.ndarray, k: int, epochs: int, seed: int, hidden: int = 256) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, k))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    with torch.no_grad():
        return net(torch.from_numpy(xe)).numpy().astype(np.float32)


def _pairs(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
    return np.concatenate([x[a], x[b]], axis=1), (10 * y[a] + y[b]).astype(np.int64)


def _split(name: str, z: np.ndarray, y: np.ndarray, seed: int) -> Problem:
    idx = np.random.default_rng(seed).permutation(len(y))[:N_CAL + N_TEST]
    c, t = idx[:N_CAL], idx[N_CAL:]
    return name, z[c], y[c], z[t], y[t]


def _build(name: str) -> Problem:
    if name.startswith(("mnist", "pairs")):
        xtr, ytr, xte, yte = _mnist()
    if name == "mnist10-lr":
        ftr, fte = _pca(xtr, 50, xtr, xte)
        return _split(name, _lr(ftr[:20000], ytr[:20000], fte, C=10.0), yte, 1)
    if name == "mnist10-mlp":
        return _split(name, _mlp(xtr[:20000], ytr[:20000], xte, 10, epochs=30, seed=0), yte, 2)
    if name.startswith("pairs100"):
        ftr, fte = _pca(xtr, 30, xtr, xte)
        ptr, qtr = _pairs(ftr, ytr, 40000, seed=3)
        pte, qte = _pairs(fte, yte, N_CAL + N_TEST, seed=4)
        if name == "pairs100-lr":
            return _split(name, _lr(ptr, qtr, pte, C=1.0), qte, 5)
        return _split(name, _mlp(ptr, qtr, pte, 100, epochs=25, seed=1), qte, 6)
    if name.startswith("shapes"):
        from failsight.datasets.shapes import SHAPES, make_shapes

        n_shapes = 10 if name.startswith("shapes100") else 11
        kw = {"image_size": 12, "shapes": SHAPES[:n_shapes],
              "colors": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "lime", "azure"),
              "texture": True, "clutter": True}
        tr = make_shapes(30000, seed=7, **kw)
        te = make_shapes(N_CAL + N_TEST, seed=8, **kw)
        x = tr.images.reshape(len(tr.labels), -1)
        xe = te.images.reshape(len(te.labels), -1)
        k = n_shapes * 10
        if name == "shapes100-lr":
            z = _lr(x, tr.labels, xe, C=1.0, max_iter=200)
        else:
            z = _mlp(x, tr.labels, xe, k, epochs=30, seed=2)
        return _split(name, z, np.asarray(te.labels, np.int64), 9)
    raise KeyError(name)


#: tuned on (defaults of the calibrators and the selection were chosen looking at these only)
TUNE = ("mnist10-lr", "pairs100-lr", "pairs100-mlp")
#: held out (never looked at while choosing defaults)
HELD_OUT = ("mnist10-mlp", "shapes100-lr", "shapes110-mlp")


def load(name: str) -> Problem | None:
    """The cached problem ``name`` (built and cached on first use); ``None`` when MNIST is missing."""
    path = CACHE / f"{name}.npz"
    if path.exists():
        d = np.load(path)
        return name, d["zc"], d["yc"], d["zt"], d["yt"]
    if name.startswith(("mnist", "pairs")) and not MNIST.exists():
        print(f"skip {name}: MNIST not found at {MNIST}")
        return None
    prob = _build(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, zc=prob[1], yc=prob[2], zt=prob[3], yt=prob[4])
    tmp.replace(path)
    return prob
