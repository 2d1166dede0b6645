"""Benchmark: failsight.reliability.ConformalClassifier side by side with MAPIE v1 (not a test).

Run ``PYTHONPATH=src .venv/bin/python benchmarks/conformal.py [--quick]``. Everything runs in this one process.

1. Agreement on real predictions — the MNIST CNN of ``_mnist_cnn.py`` (t10k split in half: 5,000 calibration,
   5,000 test) and logistic regression on the bundled digits — at α = 0.1, for each method:
   * ``lac``: MAPIE's ``SplitConformalClassifier(conformity_score="lac", prefit=True)`` on the same probabilities.
     Same score, same order statistic (MAPIE 1.6 uses ⌈(n+1)(1−α)⌉, the subject of its PR #973): identical
     sets expected.
   * ``aps``: MAPIE always randomises its calibration scores (``cumsum − U·p_y``) and, by default
     (``include_last_label=True``), not its sets; ``include_last_label="randomized"`` randomises both. Our
     ``randomized=True`` is that second definition: with MAPIE's uniforms substituted (``u = 1 − U``) the sets are
     identical, which the table shows; with our own seeded uniforms they differ per sample but not in coverage.
   * ``raps``: both tune ``k_reg``/``lam`` on a 20% split (ours: a seeded permutation; MAPIE: ShuffleSplit), so the
     thresholds are computed on different samples; coverage and mean size are compared.
2. Speed: fit on 50,000 and predict on 50,000 samples × 1,000 classes (100,000 rows in all; float32
   probabilities; both predict in chunks of 25,000 rows), median wall time over repeats, and peak traced memory
   (tracemalloc: numpy's allocations).
   Ratio = MAPIE / failsight. The synthetic probabilities (``reliability.make_probs``) are deliberately
   uncertain (sets of ~300 classes), the worst case for set construction. LAC sets can differ from MAPIE's in a
   few classes: MAPIE includes class j when ``(1 − p_j) − q ≤ 1e-8`` (a tolerance), we when ``1 − p_j ≤ q``
   exactly (the conformal definition); with 1,000 tiny probabilities some fall within 1e-8 of ``1 − q``.
   APS/RAPS sets differ per sample because the uniforms differ (see 1.).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from failsight.reliability import ConformalClassifier, coverage

ALPHA = 0.1


class Identity:
    """A prefit classifier whose predict_proba returns its input: MAPIE on precomputed probabilities."""

    def __init__(self, k: int) -> None:
        self.classes_ = np.arange(k)
        self.n_features_in_ = k
        self.k = k

    def fit(self, x: Any, y: Any = None) -> Identity:
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(x).argmax(1)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"k": self.k}

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, Tags

        t = Tags(estimator_type="classifier", target_tags=None)
        t.classifier_tags = ClassifierTags()
        return t


def mapie_sets(method: str, pc: np.ndarray, yc: np.ndarray, pt: np.ndarray, include_last: Any = True,
               seed: int = 0, chunk: int | None = None) -> tuple[np.ndarray, float]:
    from mapie.classification import SplitConformalClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp = SplitConformalClassifier(Identity(pc.shape[1]), confidence_level=1 - ALPHA, conformity_score=method,
                                      prefit=True, random_state=seed)
        mp.conformalize(pc, yc)
        params = {"include_last_label": include_last} if method != "lac" else None
        step = chunk or len(pt)
        sets = np.concatenate([mp.predict_set(pt[i:i + step], conformity_score_params=params)[1][:, :, 0]
                               for i in range(0, len(pt), step)])
    return sets, float(mp._mapie_classifier.conformity_score_function_.quantiles_[0])


def agreement(name: str, pc: np.ndarray, yc: np.ndarray, pt: np.ndarray, yt: np.ndarray) -> None:
    print(f"\n## {name}: {len(yc)} calibration, {len(yt)} test, k = {pc.shape[1]}, α = {ALPHA}\n")
    print("| method | library | quantile | coverage | mean size | empty | sets differing |")
    print("|---|---|---|---|---|---|---|")

    def row(method: str, lib: str, q: float, s: np.ndarray, ref: np.ndarray | None) -> None:
        diff = "" if ref is None else f"{int((s != ref).any(axis=1).sum())} of {len(s)}"
        print(f"| {method} | {lib} | {q:.6g} | {coverage(yt, s):.4f} | {s.sum(1).mean():.3f} | "
              f"{(s.sum(1) == 0).mean():.3%} | {diff} |")

    ms, mq = mapie_sets("lac", pc, yc, pt)
    cc = ConformalClassifier("lac", ALPHA).fit(pc, yc)
    row("lac", "MAPIE", mq, ms, None)
    row("lac", "failsight", float(cc.quantile_), cc.predict_sets(pt), ms)

    ms, mq = mapie_sets("aps", pc, yc, pt, include_last="randomized")
    row("aps rand.", "MAPIE", mq, ms, None)
    cc = ConformalClassifier("aps", ALPHA, randomized=True)
    cc._u = lambda n, stream: 1.0 - np.random.RandomState(0).uniform(size=n)  # MAPIE's uniforms
    cc.fit(pc, yc)
    row("aps rand.", "failsight, MAPIE's u", float(cc.quantile_), cc.predict_sets(pt), ms)
    cc = ConformalClassifier("aps", ALPHA, randomized=True, seed=0).fit(pc, yc)
    row("aps rand.", "failsight, own u", float(cc.quantile_), cc.predict_sets(pt), ms)
    ms, mq = mapie_sets("aps", pc, yc, pt, include_last=True)
    row("aps", "MAPIE (default)", mq, ms, None)
    cc = ConformalClassifier("aps", ALPHA).fit(pc, yc)
    row("aps", "failsight (non-rand.)", float(cc.quantile_), cc.predict_sets(pt), None)

    ms, mq = mapie_sets("raps", pc, yc, pt, include_last="randomized")
    row("raps rand.", "MAPIE", mq, ms, None)
    cc = ConformalClassifier("raps", ALPHA, randomized=True).fit(pc, yc)
    row("raps rand.", f"failsight (k_reg={cc.k_reg_}, λ={cc.lam_:g})", float(cc.quantile_), cc.predict_sets(pt), None)


def _time(fn: Any, repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``fn()`` and the peak traced memory (MiB) of one call."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return statistics.median(times), peak


def speed(n: int, k: int, repeats: int) -> None:
    from reliability import make_probs

    p, y = make_probs(2 * n, k, seed=0)
    pc, yc, pt = p[:n], y[:n], p[n:]
    chunk = min(n, 25_000)  # both libraries predict in chunks of 25k rows: MAPIE's float64 copies stay < 2 GB
    print(f"\n## fit on {n:,} + predict on {n:,} samples × {k:,} classes (float32), median of {repeats}\n")
    print("| method | failsight s | MAPIE s | ratio | failsight peak MiB | MAPIE peak MiB | mean size (ours / MAPIE) "
          "| sets differing |")
    print("|---|---|---|---|---|---|---|---|")
    for method, ours_kw, mapie_last in (("lac", {}, True), ("aps", {"randomized": True}, "randomized"),
                                        ("raps", {"randomized": True}, "randomized")):
        out: dict[str, Any] = {}

        def ours() -> None:
            cc = ConformalClassifier(method, ALPHA, **ours_kw).fit(pc, yc)  # noqa: B023
            out["ours"] = np.concatenate([cc.predict_sets(pt[i:i + chunk]) for i in range(0, n, chunk)])  # noqa: B023

        def theirs() -> None:
            out["theirs"] = mapie_sets(method, pc, yc, pt, include_last=mapie_last, chunk=chunk)[0]  # noqa: B023

        t_o, m_o = _time(ours, repeats)
        t_t, m_t = _time(theirs, max(1, repeats // 2))
        print(f"| {method} | {t_o:.2f} | {t_t:.2f} | {t_t / t_o:.1f}× | {m_o:.0f} | {m_t:.0f} | "
              f"{out['ours'].sum(1).mean():.2f} / {out['theirs'].sum(1).mean():.2f} | "
              f"{int((out['ours'] != out['theirs']).any(1).sum()):,} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller speed test (10k + 10k × 1000)")
    ap.add_argument("--skip-mnist", action="store_true")
    args = ap.parse_args()
    import mapie

    print(f"MAPIE {mapie.__version__}")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm] / 16, y[perm]
    p = LogisticRegression(max_iter=3000).fit(x[:600], y[:600]).predict_proba(x[600:])
    agreement("digits, logistic regression", p[:600], y[600:1200], p[600:], y[1200:])
    if not args.skip_mnist:
        import torch

        from _mnist_cnn import load_mnist, mnist_cnn, predict_probs

        torch.set_num_threads(2)
        net = mnist_cnn()
        xt, yt = load_mnist("t10k")
        pm = predict_probs(net, xt)
        print(f"\nMNIST CNN test accuracy {(pm.argmax(1) == yt).mean():.4f}")
        agreement("MNIST CNN (t10k halves)", pm[:5000], yt[:5000], pm[5000:], yt[5000:])
    speed(10_000 if args.quick else 50_000, 1000, 3)


if __name__ == "__main__":
    main()
