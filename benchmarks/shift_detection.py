"""Shift detection on the digits CNN: false-positive rate under no shift, and detection rate vs sample size.

Must show (issue 4):

1. Under no shift, the false-positive rate at alpha = 0.05 over >= 200 trials lies in [0.02, 0.08] for
   every detector (BBSD, MMD, classifier two-sample test) — at every sample size of the table. The default
   configuration of ``detect_shift`` (BBSD, KS + Bonferroni) is cheap, so it gets its own run with many
   more trials (``--default-null-trials``, 2000): with 200 trials an FPR of 0.045 has a binomial sd of
   0.015 and lands below 0.02 about once in 50 cells by chance alone.
2. A table of detection rate vs sample size (10, 100, 500, 1000) x shift (each ImageNet-C corruption
   family at severities 1, 3, 5, and label shift) on the digits CNN.

Set-up (Rabanser et al. 2019, "Failing Loudly"): a SmallCNN is trained on the digits training split; the
held-out calibration + test images (898) are the in-distribution pool. The deployment distribution D draws
a pool image uniformly and adds fresh N(0, 0.02²) sensor noise (clipped to [0, 1]), so every draw is a
distinct image and reference and new samples are i.i.d. from the same D under the null even when a sample
is larger than the pool. Each trial draws a fresh reference sample (``--n-ref`` images from D) and a new
sample of the largest size; smaller sizes use its first ``n`` images. A *family* shift corrupts each new
image with a member of the family picked uniformly at random (grey-scale members only) at the given
severity; *label shift* resamples the pool to class priors drawn from Dirichlet(alpha) per trial.

Detectors see the model, not the pixels: BBSD runs on the softmax outputs (10-d), MMD and the classifier
test on the 64-d penultimate features.

Every false-positive rate is printed with its 95% Clopper-Pearson interval.

Run: ``.venv/bin/python benchmarks/shift_detection.py`` (about 10-15 minutes on 2 cores);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.optimize  # noqa: F401  (load scipy's BLAS before limiting its threads)
import sklearn.linear_model  # noqa: F401
import torch
from scipy import stats
from threadpoolctl import threadpool_limits

from failsight.datasets.digits import split_digits
from failsight.models.cnn import SmallCNN, train_classifier
from failsight.robustness.detect import detect_shift
from failsight.robustness.label_shift import resample_to_priors
from failsight.robustness.ood import penultimate_features
from failsight.robustness.shifts import corrupt, list_shifts

DETECTORS = ("bbsd", "mmd", "classifier", "bbsd-perm")
SHORT = {"bbsd": "bbsd", "mmd": "mmd", "classifier": "clas", "bbsd-perm": "bbsP"}
FAMILIES = ("noise", "blur", "weather", "digital")
ALPHA = 0.05
JITTER = 0.02


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


class Setup:
    """Trained CNN, in-distribution pool and the representation the detectors see."""

    def __init__(self, seed: int, epochs: int) -> None:
        s = split_digits(seed=seed)
        self.model = SmallCNN(seed=seed)
        t0 = time.perf_counter()
        train_classifier(self.model, s.x_train, s.y_train, epochs=epochs, seed=seed, progress=False)
        self.train_seconds = time.perf_counter() - t0
        self.pool_x = np.concatenate([s.x_cal, s.x_test])
        self.pool_y = np.concatenate([s.y_cal, s.y_test])
        last = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        self.w = last.weight.detach().double().numpy()
        self.b = last.bias.detach().double().numpy()
        soft, _ = self.represent(self.pool_x)
        self.pool_accuracy = float((soft.argmax(1) == self.pool_y).mean())

    def represent(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(softmax outputs (n, 10) float64, penultimate features (n, 64))."""
        feats = penultimate_features(self.model, x, batch_size=2048).astype(np.float64)
        z = feats @ self.w.T + self.b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True), feats

    def draw(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = self.pool_x[idx] + rng.normal(0.0, JITTER, size=(len(idx), *self.pool_x.shape[1:]))
        return np.clip(x, 0.0, 1.0).astype(np.float32)


def shifted_images(setup: Setup, shift: tuple[str, object], n: int, rng: np.random.Generator) -> np.ndarray:
    kind, arg = shift
    if kind == "none":
        return setup.draw(rng.integers(0, len(setup.pool_y), n), rng)
    if kind == "label":
        seed = int(rng.integers(2**31))
        idx = resample_to_priors(setup.pool_y, dirichlet_alpha=float(arg), n=n, replace=True, seed=seed)
        return setup.draw(idx, rng)
    family, severity = arg  # type: ignore[misc]
    x = setup.draw(rng.integers(0, len(setup.pool_y), n), rng)
    members = list_shifts(family, channels=1)
    which = rng.integers(0, len(members), n)
    out = x.copy()
    for j, name in enumerate(members):  # one vectorised corruption per family member
        sel = np.flatnonzero(which == j)
        if len(sel):
            out[sel] = corrupt(x[sel], name, severity, seed=int(rng.integers(2**31)))
    return out


def run_null_default(setup: Setup, sizes: tuple[int, ...], trials: int, n_ref: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Rejections ``(n_sizes,)`` of ``detect_shift``'s default configuration (BBSD, Bonferroni) under no
    shift over ``trials`` fresh (reference, new) pairs."""
    hits = np.zeros(len(sizes), dtype=np.int64)
    n_max = max(sizes)
    for _ in range(trials):
        ref_soft, _ = setup.represent(setup.draw(rng.integers(0, len(setup.pool_y), n_ref), rng))
        new_soft, _ = setup.represent(shifted_images(setup, ("none", None), n_max, rng))
        for j, n in enumerate(sizes):
            hits[j] += detect_shift(ref_soft, new_soft[:n], alpha=ALPHA).is_shift
    return hits


def fpr_cell(k: int, trials: int) -> tuple[str, bool]:
    """``"rate [lo,hi]"`` and whether the rate lies in the target band [0.02, 0.08]."""
    fpr = k / trials
    lo, hi = clopper_pearson(k, trials)
    ok = 0.02 <= fpr <= 0.08
    return f"{fpr:.3f} [{lo:.3f},{hi:.3f}]{'' if ok else ' !'}", ok


def run_trials(setup: Setup, shift: tuple[str, object], sizes: tuple[int, ...], trials: int, n_ref: int,
               n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """Rejections ``(n_detectors, n_sizes)`` over ``trials``."""
    hits = np.zeros((len(DETECTORS), len(sizes)), dtype=np.int64)
    n_max = max(sizes)
    for t in range(trials):
        ref_soft, ref_feat = setup.represent(setup.draw(rng.integers(0, len(setup.pool_y), n_ref), rng))
        new_soft, new_feat = setup.represent(shifted_images(setup, shift, n_max, rng))
        for j, n in enumerate(sizes):
            seed = 1000 * t + j
            hits[0, j] += detect_shift(ref_soft, new_soft[:n], "bbsd", alpha=ALPHA).is_shift
            hits[1, j] += detect_shift(ref_feat, new_feat[:n], "mmd", alpha=ALPHA, n_permutations=n_perm,
                                       seed=seed).is_shift
            hits[2, j] += detect_shift(ref_feat, new_feat[:n], "classifier", alpha=ALPHA, seed=seed).is_shift
            hits[3, j] += detect_shift(ref_soft, new_soft[:n], "bbsd", alpha=ALPHA, bbsd_correction="permutation",
                                       n_permutations=max(n_perm, 199), seed=seed).is_shift
    return hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500, 1000])
    ap.add_argument("--n-ref", type=int, default=500, help="reference sample size per trial")
    ap.add_argument("--null-trials", type=int, default=200, help="no-shift trials for the all-detector table")
    ap.add_argument("--default-null-trials", type=int, default=2000,
                    help="no-shift trials for detect_shift's default configuration (BBSD, Bonferroni)")
    ap.add_argument("--trials", type=int, default=20, help="trials per shifted cell of the power table")
    ap.add_argument("--permutations", type=int, default=100, help="MMD permutations")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (the machine is shared)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few trials, small sizes")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.n_ref, args.null_trials, args.trials, args.epochs = [10, 100], 200, 20, 3, 5
        args.default_null_trials = 40
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # BLAS threads fighting over a busy machine slow everything 10x
    sizes = tuple(args.sizes)
    rng = np.random.default_rng(args.seed)

    setup = Setup(args.seed, args.epochs)
    print(f"digits SmallCNN: trained in {setup.train_seconds:.1f} s, accuracy on the 898-image pool "
          f"{setup.pool_accuracy:.3f}; reference n = {args.n_ref}, alpha = {ALPHA}, "
          f"MMD permutations = {args.permutations}\n")

    # 1. false-positive rate under no shift -----------------------------------------------------------
    t0 = time.perf_counter()
    default_hits = run_null_default(setup, sizes, args.default_null_trials, args.n_ref, rng)
    print(f"1a. Default configuration (detect_shift(reference, new): BBSD, KS + Bonferroni), no shift: "
          f"false-positive rate at alpha = {ALPHA} over {args.default_null_trials} trials (95% Clopper-Pearson "
          f"interval); target [0.02, 0.08]   [{time.perf_counter() - t0:.0f} s]")
    print(f"{'detector':<12}" + "".join(f"{'n=' + str(n):>24}" for n in sizes))
    cells = [fpr_cell(int(k), args.default_null_trials) for k in default_hits]
    print(f"{'bbsd':<12}" + "".join(f"{c:>24}" for c, _ in cells))
    print(f"default configuration within [0.02, 0.08] at every n: {'PASS' if all(ok for _, ok in cells) else 'FAIL'}")
    print()

    t0 = time.perf_counter()
    null_hits = run_trials(setup, ("none", None), sizes, args.null_trials, args.n_ref, args.permutations, rng)
    print(f"1b. Every detector, no shift: false-positive rate at alpha = {ALPHA} over {args.null_trials} trials "
          f"(95% Clopper-Pearson interval); target [0.02, 0.08]   [{time.perf_counter() - t0:.0f} s]")
    print(f"{'detector':<12}" + "".join(f"{'n=' + str(n):>24}" for n in sizes))
    outside = []
    for d, name in enumerate(DETECTORS):
        row = []
        for j, n in enumerate(sizes):
            cell, ok = fpr_cell(int(null_hits[d, j]), args.null_trials)
            if not ok:
                outside.append(f"{name} n={n}: {null_hits[d, j] / args.null_trials:.3f}")
            row.append(cell)
        print(f"{name:<12}" + "".join(f"{c:>24}" for c in row))
    print(f"cells outside the band: {', '.join(outside) if outside else 'none'}")
    if outside:
        t = args.null_trials
        lo_k = math.ceil(0.02 * t) - 1  # rate < 0.02  <=>  k <= lo_k;  rate > 0.08  <=>  k > floor(0.08 t)
        p_out = stats.binom.cdf(lo_k, t, ALPHA) + stats.binom.sf(math.floor(0.08 * t), t, ALPHA)
        cells_n = len(DETECTORS) * len(sizes)
        print(f"   (with {t} trials, a detector whose true rate is exactly {ALPHA} falls outside the band by chance "
              f"in {p_out * cells_n:.2f} of these {cells_n} cells on average: read the intervals)")
    print()

    # 2. detection rate vs sample size x shift --------------------------------------------------------
    shifts: list[tuple[str, str, tuple[str, object]]] = [("no shift", "", ("none", None))]
    for fam in FAMILIES:
        for sev in (1, 3, 5):
            shifts.append((fam, f"s{sev}", ("family", (fam, sev))))
    shifts += [("label", "Dir(10)", ("label", 10.0)), ("label", "Dir(1)", ("label", 1.0))]
    t0 = time.perf_counter()
    rates = {}
    for fam, sev, spec in shifts:
        if spec[0] == "none":
            rates[(fam, sev)] = null_hits / args.null_trials
        else:
            rates[(fam, sev)] = run_trials(setup, spec, sizes, args.trials, args.n_ref, args.permutations,
                                           rng) / args.trials
    print(f"2. Detection rate at alpha = {ALPHA} ({args.trials} trials per shifted cell, "
          f"{args.null_trials} for 'no shift')   [{time.perf_counter() - t0:.0f} s]")
    print("   family shifts corrupt each image with a random grey-scale member: "
          + "; ".join(f"{f}: {', '.join(list_shifts(f, channels=1))}" for f in FAMILIES))
    head = f"{'shift':<10}{'sev':<9}" + "".join(
        f"{SHORT[d] + ' n=' + str(n):>14}" for d in DETECTORS for n in sizes)
    print(head)
    print("-" * len(head))
    for fam, sev, _ in shifts:
        r = rates[(fam, sev)]
        print(f"{fam:<10}{sev:<9}" + "".join(f"{r[d, j]:>14.2f}" for d in range(len(DETECTORS))
                                             for j in range(len(sizes))))


if __name__ == "__main__":
    main()
