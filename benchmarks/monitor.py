"""Deployment monitor: accuracy estimated without labels vs the true accuracy, interval coverage, false alarms.

Must show (issue 15). Ground truth is free here: the robustness suite shifts a labelled set. On MNIST
(``../shared/data/mnist``, skipped with a note where absent) and on the bundled digits, a SmallCNN is trained;
a labelled reference set (the monitor's calibration data) is held out; then windows of 500 images are
scored:

* no shift: >= 200 windows drawn from the in-distribution pool (the false-alarm rate of the monitor's
  alerts at alpha = 0.05 is measured on them);
* every shift x severity of the default suite (the 15 ImageNet-C corruptions, severities 1-5; two
  windows per condition);
* label shift: class priors drawn from Dirichlet(alpha), alpha in {10, 1, 0.3}.

Digits has only 1,797 images, so its windows draw pool images with replacement and add fresh N(0, 0.02^2)
sensor noise (the reference too), as ``benchmarks/shift_detection.py`` does: every draw is a distinct image
and reference and windows are i.i.d. from the same distribution under no shift.

Per estimator it prints the mean absolute error (points of accuracy) of estimated vs true accuracy over all
shifted windows and per shift family, the coverage of the 90% intervals, and the false-alarm rate; NannyML's
CBPE runs on the same windows where ``nannyml`` imports (install it outside the project venv, e.g.
``pip install --target /tmp/nannyml nannyml`` and ``--nannyml-path /tmp/nannyml``).

Tuning vs held out: the interval's shift slack of each estimator and the choice of the default estimator
were tuned on the *tuning* windows only: the corruptions at index 0 and 2 of each family (gaussian_noise,
impulse_noise, defocus_blur, motion_blur, snow, fog, contrast, pixelate), label shift at alpha in {10, 0.3},
and the even-numbered no-shift windows. The rest (7 corruptions, alpha = 1, odd no-shift windows) is held
out and reported separately.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/monitor.py`` (prepares and caches the model outputs in
``--cache``, then evaluates; about 10 minutes on 2 busy cores the first time, seconds afterwards);
``--quick`` for a smoke run on the digits only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ALPHA = 0.05
LEVEL = 0.9
WINDOW = 500
JITTER = 0.02
MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
LABEL_ALPHAS = (10.0, 1.0, 0.3)
TUNE_LABEL_ALPHAS = (10.0, 0.3)


# --------------------------------------------------------------------------------------------------
# data: model outputs per window (cached)
# --------------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _tuning_shifts() -> set[str]:
    from failsight.robustness.shifts import list_shifts, shift_family

    names = list_shifts(suite="imagenet_c", channels=1)
    fams: dict[str, list[str]] = {}
    for n in names:
        fams.setdefault(shift_family(n), []).append(n)
    return {m for members in fams.values() for m in members[0::2][:2]}


def prepare(dataset: str, n_null: int, per_condition: int, n_label: int, seed: int, quick: bool) -> dict:
    """Train the CNN, hold out the reference, score every window. Returns arrays for the cache."""
    import torch

    from failsight.models.cnn import SmallCNN, predict_logits, train_classifier
    from failsight.robustness.label_shift import resample_to_priors
    from failsight.robustness.shifts import corrupt, list_shifts, shift_family

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    if dataset == "mnist":
        from failsight.datasets.io import read_idx

        xtr = read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
        ytr = read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
        xte = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
        yte = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        tr = rng.permutation(len(ytr))[:12000]
        model = SmallCNN(in_channels=1, n_classes=10, image_size=28, width=16, seed=seed)
        train_classifier(model, xtr[tr], ytr[tr], epochs=2, batch_size=128, seed=seed, progress=False,
                         num_threads=2)
        perm = rng.permutation(len(yte))  # reference and pool: disjoint random parts of the test set
        ref_x, ref_y = xte[perm[:3000]], yte[perm[:3000]]
        pool_x, pool_y = xte[perm[3000:]], yte[perm[3000:]]
        jitter = 0.0
    else:
        from failsight.datasets.digits import split_digits

        s = split_digits(seed=seed, cal_size=0.25, test_size=0.35)
        model = SmallCNN(seed=seed)
        train_classifier(model, s.x_train, s.y_train, epochs=30, seed=seed, progress=False, num_threads=2)
        pool_x, pool_y = s.x_test, s.y_test
        ref_idx = rng.integers(0, len(s.y_cal), 2 * len(s.y_cal))  # jittered draws: 2 per calibration image
        ref_x, ref_y = s.x_cal[ref_idx], s.y_cal[ref_idx]
        jitter = JITTER

    def draw(x: np.ndarray) -> np.ndarray:
        if jitter == 0.0:
            return x
        return np.clip(x + rng.normal(0.0, jitter, size=x.shape), 0.0, 1.0).astype(np.float32)

    def probs(x: np.ndarray) -> np.ndarray:
        return _softmax(predict_logits(model, x, batch_size=1024)).astype(np.float32)

    def pool_take(n: int) -> np.ndarray:  # without replacement where the pool allows
        return rng.choice(len(pool_y), n, replace=n > len(pool_y) or jitter > 0)

    ref_p = probs(draw(ref_x))
    windows_p, windows_y, meta = [], [], []
    for i in range(n_null):
        idx = pool_take(WINDOW)
        windows_p.append(probs(draw(pool_x[idx])))
        windows_y.append(pool_y[idx])
        meta.append(("none", "none", 0, "tune" if i % 2 == 0 else "held_out"))
    for j, a in enumerate(LABEL_ALPHAS):
        for _ in range(n_label):
            idx = resample_to_priors(pool_y, dirichlet_alpha=a, n=WINDOW, replace=True,
                                     seed=int(rng.integers(2**31)))
            windows_p.append(probs(draw(pool_x[idx])))
            windows_y.append(pool_y[idx])
            meta.append(("label", f"dirichlet_{a:g}", j + 1, "tune" if a in TUNE_LABEL_ALPHAS else "held_out"))
    tune = _tuning_shifts()
    shifts = list_shifts(suite="imagenet_c", channels=1)
    severities = (1, 3, 5) if quick else (1, 2, 3, 4, 5)
    for name in shifts:
        t0 = time.perf_counter()
        for sev in severities:
            idx = pool_take(per_condition * WINDOW)
            xs = corrupt(draw(pool_x[idx]), name, sev, seed=int(rng.integers(2**31)))
            p = probs(np.asarray(xs, dtype=np.float32))
            for w in range(per_condition):
                sl = slice(w * WINDOW, (w + 1) * WINDOW)
                windows_p.append(p[sl])
                windows_y.append(pool_y[idx][sl])
                meta.append((shift_family(name), name, sev, "tune" if name in tune else "held_out"))
        print(f"  {dataset}: {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    m = np.array(meta, dtype=object)
    return {"ref_probs": ref_p, "ref_y": ref_y, "probs": np.stack(windows_p), "y": np.stack(windows_y),
            "family": m[:, 0].astype(str), "shift": m[:, 1].astype(str), "severity": m[:, 2].astype(np.int64),
            "split": m[:, 3].astype(str)}


def load_or_prepare(dataset: str, cache: Path, args: argparse.Namespace) -> dict:
    path = cache / f"monitor-{dataset}{'-quick' if args.quick else ''}-seed{args.seed}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    t0 = time.perf_counter()
    data = prepare(dataset, args.null_windows, 1 if args.quick else 2, 4 if args.quick else 10, args.seed,
                   args.quick)
    print(f"{dataset}: model outputs for {len(data['y'])} windows in {time.perf_counter() - t0:.0f} s "
          "(loaded machine)", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "failsight-bench")
    ap.add_argument("--datasets", default="mnist,digits")
    ap.add_argument("--null-windows", type=int, default=220)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--nannyml-path", default=None)
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.null_windows = "digits", 40
    for ds in args.datasets.split(","):
        if ds == "mnist" and not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
            print(f"mnist: skipped, no MNIST files under {MNIST_DIR}")
            continue
        data = load_or_prepare(ds, args.cache, args)
        if args.prepare_only:
            continue
        evaluate(ds, data, args)


def evaluate(dataset: str, data: dict, args: argparse.Namespace) -> None:
    raise NotImplementedError


if __name__ == "__main__":
    main()
