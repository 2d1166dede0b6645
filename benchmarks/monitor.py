"""Deployment monitor: accuracy estimated without labels vs the true accuracy, interval coverage, false alarms.

Must show (issue 15). Ground truth is free here: the robustness suite shifts a labelled set. On MNIST
(``../shared/data/mnist``, skipped with a note where absent) and on the bundled digits, a SmallCNN is trained
(MNIST: 55,000 training images, 3 epochs by default; ``--mnist-train 12000 --mnist-epochs 2`` is the first run's weaker model);
a labelled reference set (the monitor's calibration data) is held out; then windows of 500 images are
scored:

* no shift: >= 200 windows drawn from the in-distribution pool (the false-alarm rate of the monitor's
  alerts at alpha = 0.05 is measured on them);
* every shift x severity of the default suite (the 15 ImageNet-C corruptions, severities 1-5; two
  windows per condition);
* label shift: class priors drawn from Dirichlet(alpha), alpha in {10, 1, 0.3}.

Digits has only 1,797 images, so the reference (1,000) and the windows draw held-out images (calibration +
test split, 1,078) with replacement and add fresh N(0, 0.02^2) sensor noise, as
``benchmarks/shift_detection.py`` does: every draw is a distinct image and reference and windows are i.i.d.
from the same distribution under no shift. On MNIST the reference is 3,000 random test images and the windows
draw from the other 7,000.

Per estimator it prints the mean absolute error (points of accuracy) of estimated vs true accuracy over all
shifted windows and per shift family, the coverage of the 90% intervals, and the false-alarm rate; NannyML's
CBPE runs on the same windows in the same run where ``nannyml`` is installed (its pins conflict with the
project's, so it lives in its own venv: ``python -m venv /tmp/nml && /tmp/nml/bin/pip install nannyml``, then
``--nannyml-python /tmp/nml/bin/python``; it runs in a subprocess).

Three cases by default (``--datasets mnist,mnist-weak,digits``): MNIST with the default CNN, MNIST with the first
run's weak CNN (12k images, 2 epochs) and the digits; the default estimator is chosen on their tuning windows pooled,
so it is not tuned to one model.

Tuning vs held out: the interval's shift slack of each estimator and the choice of the default estimator
were tuned on the *tuning* windows only: the corruptions at index 0 and 2 of each family (gaussian_noise,
impulse_noise, defocus_blur, motion_blur, snow, fog, contrast, pixelate), label shift at alpha in {10, 0.3},
and the even-numbered no-shift windows. The rest (7 corruptions, alpha = 1, odd no-shift windows) is held
out and reported separately.

Shift regression (fourth pass). Where the monitor has the model and the reference images it simulates shifts of
the reference (:mod:`failsight.monitor.simulate`: half the reference is corrupted with the default suite,
relabelled by Dirichlet priors, or left as is, and a regression from label-free window statistics to accuracy is
learnt). The benchmark builds that table once per model (the CNN is retrained, deterministically, and checked
against the cached outputs) and scores ``shift_regression`` beside the others. Its simulation uses the same
corruption suite the shifted windows come from, so ``sr_family_out`` also shows it refitted *without* the
window's corruption family (leave one family out: noise, blur, weather, digital): the figure for a kind of
shift the simulation does not contain. Nothing of it was tuned on these windows (its settings are the
simulation's defaults and the regression's fixed hyper-parameters).

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


def _case(dataset: str, seed: int, mnist_train: int = 55000, mnist_epochs: int = 3) -> dict:
    """Train the CNN (deterministic for a seed) and hold out the reference: model, probability function, the
    reference images as the monitor sees them, the in-distribution pool, the random generator and draw()."""
    import torch

    from failsight.models.cnn import SmallCNN, predict_logits, train_classifier

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    if dataset == "mnist":
        from failsight.datasets.io import read_idx

        xtr = read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
        ytr = read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
        xte = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None] / 255.0
        yte = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
        tr = rng.permutation(len(ytr))[:mnist_train]
        model = SmallCNN(in_channels=1, n_classes=10, image_size=28, width=16, seed=seed)
        t0 = time.perf_counter()
        train_classifier(model, xtr[tr], ytr[tr], epochs=mnist_epochs, batch_size=128, seed=seed, progress=False,
                         num_threads=2)
        print(f"  mnist: trained on {len(tr)} images, {mnist_epochs} epochs in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        perm = rng.permutation(len(yte))  # reference and pool: disjoint random parts of the test set
        ref_x, ref_y = xte[perm[:3000]], yte[perm[:3000]]
        pool_x, pool_y = xte[perm[3000:]], yte[perm[3000:]]
        jitter = 0.0
    else:
        from failsight.datasets.digits import split_digits

        s = split_digits(seed=seed, cal_size=0.25, test_size=0.35)
        model = SmallCNN(seed=seed)
        train_classifier(model, s.x_train, s.y_train, epochs=30, seed=seed, progress=False, num_threads=2)
        # one in-distribution pool (the held-out images); reference and windows are jittered draws from it,
        # so both are i.i.d. from the same distribution under no shift
        pool_x, pool_y = np.concatenate([s.x_cal, s.x_test]), np.concatenate([s.y_cal, s.y_test])
        ref_idx = rng.integers(0, len(pool_y), 1000)
        ref_x, ref_y = pool_x[ref_idx], pool_y[ref_idx]
        jitter = JITTER

    def draw(x: np.ndarray) -> np.ndarray:
        if jitter == 0.0:
            return x
        return np.clip(x + rng.normal(0.0, jitter, size=x.shape), 0.0, 1.0).astype(np.float32)

    def probs(x: np.ndarray) -> np.ndarray:
        return _softmax(predict_logits(model, x, batch_size=1024)).astype(np.float32)

    ref_x = draw(ref_x)
    return {"probs": probs, "ref_x": ref_x, "ref_y": ref_y, "pool_x": pool_x, "pool_y": pool_y, "rng": rng,
            "draw": draw, "jitter": jitter}


def prepare(dataset: str, n_null: int, per_condition: int, n_label: int, seed: int, quick: bool,
            mnist_train: int = 55000, mnist_epochs: int = 3) -> dict:
    """Train the CNN, hold out the reference, score every window. Returns arrays for the cache."""
    from failsight.robustness.label_shift import resample_to_priors
    from failsight.robustness.shifts import corrupt, list_shifts, shift_family

    c = _case(dataset, seed, mnist_train, mnist_epochs)
    probs, draw, rng, jitter = c["probs"], c["draw"], c["rng"], c["jitter"]
    ref_x, ref_y, pool_x, pool_y = c["ref_x"], c["ref_y"], c["pool_x"], c["pool_y"]

    def pool_take(n: int) -> np.ndarray:  # without replacement where the pool allows
        return rng.choice(len(pool_y), n, replace=n > len(pool_y) or jitter > 0)

    ref_p = probs(ref_x)
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
    variant = f"-train{args.mnist_train}-e{args.mnist_epochs}" if dataset == "mnist" else ""
    path = cache / f"monitor-{dataset}{variant}{'-quick' if args.quick else ''}-seed{args.seed}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    t0 = time.perf_counter()
    data = prepare(dataset, args.null_windows, 1 if args.quick else 2, 4 if args.quick else 10, args.seed,
                   args.quick, args.mnist_train, args.mnist_epochs)
    print(f"{dataset}: model outputs for {len(data['y'])} windows in {time.perf_counter() - t0:.0f} s "
          "(loaded machine)", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return data


def load_or_simulate(dataset: str, cache: Path, args: argparse.Namespace, data: dict):
    """The monitor's table of simulated shifts of the reference (:func:`failsight.monitor.simulate_reference`,
    default options), built with the same model as the cached windows (retrained: training is deterministic for
    a seed, checked against the cached reference outputs) and cached beside them."""
    from failsight.monitor.simulate import ShiftTable, simulate_reference

    variant = f"-train{args.mnist_train}-e{args.mnist_epochs}" if dataset == "mnist" else ""
    path = cache / f"monitor-table-{dataset}{variant}{'-quick' if args.quick else ''}-seed{args.seed}.json"
    if path.is_file():
        import json

        return ShiftTable.from_dict(json.loads(path.read_text())), None
    c = _case(dataset, args.seed, args.mnist_train, args.mnist_epochs)
    ref_p = c["probs"](c["ref_x"])
    gap = float(np.abs(ref_p - data["ref_probs"]).max())
    if gap > 1e-4:
        raise SystemExit(f"{dataset}: the retrained model differs from the cached one (max gap {gap:.2g}); delete "
                         f"the cache under {cache} and run again.")
    t0 = time.perf_counter()
    table = simulate_reference(lambda x: c["probs"](x).astype(np.float64), c["ref_x"], c["ref_y"],
                               data["ref_probs"].astype(np.float64), seed=args.seed, progress=False)
    seconds = time.perf_counter() - t0
    import json

    path.write_text(json.dumps(table.to_dict()))
    return table, seconds


#: Shifts outside the suite the monitor simulates (geometry, texture, grey-level jitter, and the ImageNet-C
#: "extra" corruptions): windows of these test shift_regression on kinds of shift it never saw.
UNSEEN = ("rotation", "scale", "shear", "translation", "elastic", "texture_blur", "texture_noise", "color_jitter",
          "gaussian_blur", "speckle_noise", "spatter")


def load_or_prepare_unseen(dataset: str, cache: Path, args: argparse.Namespace, data: dict) -> dict:
    """Windows (2 per shift x severity, 500 images each, from the in-distribution pool) under the
    :data:`UNSEEN` shifts, scored by the same model (retrained deterministically and checked), cached."""
    from failsight.robustness.shifts import corrupt, shift_family

    variant = f"-train{args.mnist_train}-e{args.mnist_epochs}" if dataset == "mnist" else ""
    path = cache / f"monitor-unseen-{dataset}{variant}-seed{args.seed}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    c = _case(dataset, args.seed, args.mnist_train, args.mnist_epochs)
    gap = float(np.abs(c["probs"](c["ref_x"]) - data["ref_probs"]).max())
    if gap > 1e-4:
        raise SystemExit(f"{dataset}: the retrained model differs from the cached one (max gap {gap:.2g}).")
    rng = np.random.default_rng([args.seed, 77])
    probs, ys, fam, names, sev = [], [], [], [], []
    for name in UNSEEN:
        for level in (1, 2, 3, 4, 5):
            idx = rng.choice(len(c["pool_y"]), 2 * WINDOW, replace=c["jitter"] > 0)
            x = np.asarray(corrupt(c["draw"](c["pool_x"][idx]), name, level, seed=int(rng.integers(2**31))),
                           dtype=np.float32)
            p = c["probs"](x)
            for w in range(2):
                sl = slice(w * WINDOW, (w + 1) * WINDOW)
                probs.append(p[sl])
                ys.append(c["pool_y"][idx][sl])
                fam.append(shift_family(name))
                names.append(name)
                sev.append(level)
    out = {"ref_probs": data["ref_probs"], "ref_y": data["ref_y"], "probs": np.stack(probs), "y": np.stack(ys),
           "family": np.array(fam), "shift": np.array(names), "severity": np.array(sev, dtype=np.int64),
           "split": np.array(["unseen"] * len(fam))}
    np.savez_compressed(path, **out)
    return out


def report_unseen(ds: str, r: dict, d: dict) -> None:
    """MAE and 90% coverage per estimator on the windows of shifts outside the simulated suite."""
    names = r["names"]
    err = np.abs(r["value"] - r["true"][:, None]) * 100
    from scipy import stats

    half = (stats.norm.ppf(0.5 + LEVEL / 2) * r["se"] + r["default_slack"][None, :, 0] * r["signal"][:, None]
            + r["default_slack"][None, :, 1] * r["excess"][:, None])
    cover = np.abs(r["value"] - r["true"][:, None]) <= half
    print(f"\n=== {ds}: shifts the monitor never simulates ({len(r['true'])} windows of {WINDOW}; MAE in points, "
          "true accuracy in brackets)")
    print(f"{'windows':28s} {'n':>4s} " + " ".join(f"{c[:13]:>13s}" for c in names))
    groups = [("all unseen", np.ones(len(r["true"]), bool))] + [
        (f"shift {s}", d["shift"] == s) for s in UNSEEN]
    for g, sel in groups:
        if sel.any():
            print(f"{g + ' [' + format(r['true'][sel].mean(), '.3f') + ']':28s} {sel.sum():4d} "
                  + " ".join(f"{e:13.2f}" for e in err[sel].mean(axis=0)))
    print("  90% coverage: " + " ".join(f"{n}={c:.3f}" for n, c in zip(names, cover.mean(axis=0), strict=True)))


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def score_windows(dataset: str, data: dict, max_risk: float, table=None) -> dict:
    """Run the monitor on every window (``evaluate``: nothing recorded, memory flat). Returns per-window
    arrays: true accuracy, per estimator value / se, the shift signal, alert flags per rule.

    With a ``table`` of simulated shifts the monitor also has ``shift_regression`` (its default then), and a
    column ``sr_family_out`` gives the same estimator refitted without the window's corruption family in the
    simulation: what it does on a kind of shift it never simulated (no-shift and label-shift windows keep the
    full table, as those are always simulated)."""
    from failsight.monitor import ESTIMATORS, SIMULATED_ESTIMATOR, Monitor
    from failsight.monitor.estimators import sampling_se
    from failsight.monitor.simulate import ShiftRegression, WindowStats, split_reference

    t0 = time.perf_counter()
    ref_p = data["ref_probs"].astype(np.float64)
    mon = Monitor(reference=(ref_p, data["ref_y"]), max_risk=max_risk, alpha=ALPHA, level=LEVEL,
                  simulate=table if table is not None else False)
    setup_s = time.perf_counter() - t0
    names = list(ESTIMATORS) + ([SIMULATED_ESTIMATOR, "sr_family_out"] if table is not None else [])
    held_models, stats_fn = {}, None
    if table is not None:
        a, _ = split_reference(len(ref_p), mon.config.seed)
        stats_fn = WindowStats(ref_p[a], data["ref_y"][a])
        for f in np.unique(data["family"]):
            if f not in ("none", "label"):
                held_models[f] = ShiftRegression(mon.config.seed).fit(table.subset(table.family != f))
    n = len(data["y"])
    out = {"true": np.empty(n), "signal": np.empty(n), "excess": np.empty(n), "value": np.empty((n, len(names))),
           "se": np.empty((n, len(names))), "alert": np.zeros(n, bool),
           "rules": {r: np.zeros(n, bool) for r in ("accuracy", "drift", "coverage", "selective_risk")}}
    t0 = time.perf_counter()
    for i in range(n):
        p = data["probs"][i].astype(np.float64)
        w = mon.evaluate(probs=p / p.sum(axis=1, keepdims=True), window_id=i + 1)
        out["true"][i] = float((p.argmax(axis=1) == data["y"][i]).mean())
        out["signal"][i] = w.shift_signal
        out["excess"][i] = w.drift_excess
        for j, name in enumerate(names):
            if name == "sr_family_out":
                # sampling part of the interval from the raw confidences (the monitor uses calibrated ones)
                conf = p.max(axis=1) / p.sum(axis=1)
                e = (held_models[data["family"][i]].estimate(stats_fn(p / p.sum(axis=1, keepdims=True)), LEVEL,
                                                             sampling_se(conf))
                     if data["family"][i] in held_models else w.estimated_accuracy[SIMULATED_ESTIMATOR])
            else:
                e = w.estimated_accuracy[name]
            out["value"][i, j], out["se"][i, j] = e.value, e.se
        out["alert"][i] = bool(w.alerts)
        for a in w.alerts:
            out["rules"][a.rule][i] = True
    out["seconds_per_window"] = (time.perf_counter() - t0) / n
    out["setup_s"] = setup_s
    out["names"] = names
    out["calibrator"] = mon.calibrator_name
    out["reference_accuracy"] = mon.reference_accuracy
    out["default_slack"] = np.array([[mon.estimators[nm].shift_slack, mon.estimators[nm].drift_slack]
                                     if nm in mon.estimators else [0.0, 0.0] for nm in names])
    return out


_CBPE_SCRIPT = r"""
import json, sys
import numpy as np
import pandas as pd
import nannyml as nml

with np.load(sys.argv[1]) as f:
    ref_p, ref_y, win = f["ref_probs"].astype(np.float64), f["ref_y"], f["probs"].astype(np.float64)
k = ref_p.shape[1]
cols = [f"p{c}" for c in range(k)]

def frame(p, y=None):
    p = p / p.sum(axis=1, keepdims=True)
    df = pd.DataFrame(p, columns=cols)
    df["pred"] = p.argmax(axis=1)
    if y is not None:
        df["y"] = y
    return df

n, w, _ = win.shape
est = nml.CBPE(problem_type="classification_multiclass", y_pred_proba={c: f"p{c}" for c in range(k)},
               y_pred="pred", y_true="y", metrics=["accuracy"], chunk_size=w)
est.fit(frame(ref_p, ref_y))
res = est.estimate(frame(win.reshape(n * w, k))).filter(period="analysis").to_df()
vals = res[("accuracy", "value")].to_numpy(dtype=np.float64)[:n]
json.dump({"values": vals.tolist(), "version": nml.__version__}, open(sys.argv[2], "w"))
"""


def cbpe_estimates(data: dict, python: str | None) -> tuple[np.ndarray | None, str]:
    """NannyML CBPE's accuracy estimate per window (chunks of 500 = the windows), computed by ``python`` (an
    interpreter with ``nannyml``; it conflicts with the project's pins, so it lives in its own venv) in a
    subprocess of this run. Returns (estimates or None, note)."""
    import json
    import subprocess
    import tempfile

    if not python:
        return None, "not run (pass --nannyml-python, an interpreter with nannyml installed)"
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.json"
        np.savez(inp, ref_probs=data["ref_probs"], ref_y=data["ref_y"], probs=data["probs"])
        t0 = time.perf_counter()
        r = subprocess.run([python, "-c", _CBPE_SCRIPT, str(inp), str(out)], capture_output=True, text=True,
                           timeout=1800)
        if r.returncode != 0:
            return None, f"failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        res = json.loads(out.read_text())
    return np.asarray(res["values"], dtype=np.float64), f"nannyml {res['version']}, {time.perf_counter() - t0:.0f} s"


def tune_slack(value: np.ndarray, se: np.ndarray, signal: np.ndarray, excess: np.ndarray, true: np.ndarray,
               shifted: np.ndarray) -> tuple[float, float]:
    """The (shift slack, drift slack) pair with the narrowest mean interval whose intervals cover the true
    accuracy on >= 90% of the windows given and >= 90% of the shifted ones among them."""
    from scipy import stats

    z = stats.norm.ppf(0.5 + LEVEL / 2)
    best = (np.inf, np.inf, np.inf)
    grid = np.round(np.arange(0.0, 3.01, 0.1), 2)
    for kappa in grid:
        for c in grid:
            half = z * se + kappa * signal + c * excess
            ok = np.abs(value - true) <= half
            if ok.mean() >= LEVEL and ok[shifted].mean() >= LEVEL:
                width = float(np.minimum(2 * half, 1.0).mean())
                if width < best[0]:
                    best = (width, float(kappa), float(c))
    return best[1], best[2]


def report(results: dict[str, dict], datas: dict[str, dict]) -> None:
    from scipy import stats

    z = stats.norm.ppf(0.5 + LEVEL / 2)
    names = next(iter(results.values()))["names"]
    extra = ["nannyml_cbpe"] if any(r.get("cbpe") is not None for r in results.values()) else []
    for ds, r in results.items():
        d = datas[ds]
        fam, split = d["family"], d["split"]
        print(f"\n=== {ds}: NannyML CBPE {r['cbpe_note']}")
        print(f"=== {ds}: reference {len(d['ref_y'])} samples, accuracy {r['reference_accuracy']:.4f}, calibrator "
              f"{r['calibrator']}; {len(fam)} windows of {WINDOW}; monitor set-up {r['setup_s']:.1f} s, "
              f"{1000 * r['seconds_per_window']:.0f} ms per window (loaded machine); simulated shifts "
              + ("cached" if r.get("simulate_s") is None else f"{r['simulate_s']:.0f} s"))
        cols = names + extra
        vals = r["value"] if not extra else np.column_stack([r["value"], r["cbpe"] if r.get("cbpe") is not None
                                                            else np.full(len(fam), np.nan)])
        err = np.abs(vals - r["true"][:, None]) * 100
        print("MAE (points of accuracy) per estimator; true accuracy in brackets")
        print(f"{'windows':28s} {'n':>4s} " + " ".join(f"{c[:13]:>13s}" for c in cols))
        groups = [("all shifted", fam != "none"), ("all shifted, tune", (fam != "none") & (split == "tune")),
                  ("all shifted, held out", (fam != "none") & (split == "held_out")), ("no shift", fam == "none")]
        groups += [(f"family {f}", fam == f) for f in ("label", "noise", "blur", "weather", "digital")]
        for g, sel in groups:
            if sel.any():
                print(f"{g + ' [' + format(r['true'][sel].mean(), '.3f') + ']':28s} {sel.sum():4d} "
                      + " ".join(f"{e:13.2f}" for e in err[sel].mean(axis=0)))
        shifted_sev = [(f"severity {s}", (fam != "none") & (fam != "label") & (d["severity"] == s)) for s in range(1, 6)]
        for g, sel in shifted_sev:
            if sel.any():
                print(f"{g + ' [' + format(r['true'][sel].mean(), '.3f') + ']':28s} {sel.sum():4d} "
                      + " ".join(f"{e:13.2f}" for e in err[sel].mean(axis=0)))
        half = (z * r["se"] + r["default_slack"][None, :, 0] * r["signal"][:, None]
                + r["default_slack"][None, :, 1] * r["excess"][:, None])
        cover = np.abs(r["value"] - r["true"][:, None]) <= half
        print(f"coverage of the {LEVEL:.0%} intervals (default shift/drift slack " + ", ".join(
            f"{n}={k[0]:g}/{k[1]:g}" for n, k in zip(names, r["default_slack"], strict=True)) + ")")
        for g, sel in [("all", np.ones(len(fam), bool)), ("shifted, tune", (fam != "none") & (split == "tune")),
                       ("shifted, held out", (fam != "none") & (split == "held_out")), ("no shift", fam == "none")]:
            print(f"  {g:20s} " + " ".join(f"{n}={c:.3f}" for n, c in zip(names, cover[sel].mean(axis=0), strict=True)))
        width = np.minimum(2 * half, 1.0)
        for g, sel in [("no shift", fam == "none"), ("shifted", fam != "none")]:
            print(f"  mean width, {g:9s} " + " ".join(f"{n}={w:.3f}" for n, w in zip(names, width[sel].mean(axis=0),
                                                                                       strict=True)))
        null = fam == "none"
        k = int(r["alert"][null].sum())
        lo, hi = clopper_pearson(k, int(null.sum()))
        print(f"false alarms under no shift at alpha={ALPHA}: {k}/{null.sum()} = {k / null.sum():.3f} "
              f"[{lo:.3f}, {hi:.3f}] (target <= {ALPHA + 0.02:.2f}); per rule: "
              + ", ".join(f"{rule} {v[null].mean():.3f}" for rule, v in r["rules"].items()))
        shifted = fam != "none"
        print("alert rate on shifted windows: " + f"{r['alert'][shifted].mean():.3f}; by family: " + ", ".join(
            f"{f} {r['alert'][fam == f].mean():.2f}" for f in ("label", "noise", "blur", "weather", "digital")))
    # tuning summary (pooled over datasets): default estimator and slack from the tuning windows only
    print("\n=== tuning (tuning windows of every dataset pooled) vs held out")
    tv = np.concatenate([r["value"] for r in results.values()])
    ts = np.concatenate([r["se"] for r in results.values()])
    tsig = np.concatenate([r["signal"] for r in results.values()])
    tt = np.concatenate([r["true"] for r in results.values()])
    fam = np.concatenate([datas[ds]["family"] for ds in results])
    split = np.concatenate([datas[ds]["split"] for ds in results])
    tune = (split == "tune") & (fam != "none")
    held = (split == "held_out") & (fam != "none")
    mae_t = np.abs(tv[tune] - tt[tune, None]).mean(axis=0) * 100
    mae_h = np.abs(tv[held] - tt[held, None]).mean(axis=0) * 100
    best = names[int(np.argmin(mae_t))]
    print("MAE tune:     " + " ".join(f"{n}={m:.2f}" for n, m in zip(names, mae_t, strict=True)) + f"  -> default {best}")
    print("MAE held out: " + " ".join(f"{n}={m:.2f}" for n, m in zip(names, mae_h, strict=True)))
    exc = np.concatenate([r["excess"] for r in results.values()])
    tw = split == "tune"
    tuned = [tune_slack(tv[tw, j], ts[tw, j], tsig[tw], exc[tw], tt[tw], fam[tw] != "none") for j in range(len(names))]
    print("slacks (shift/drift) tuned on the tuning windows: " + ", ".join(
        f"{n}={k[0]:g}/{k[1]:g}" for n, k in zip(names, tuned, strict=True)))
    for j, n in enumerate(names):
        half = z * ts[:, j] + tuned[j][0] * tsig + tuned[j][1] * exc
        c = np.abs(tv[:, j] - tt) <= half
        print(f"  {n:22s} coverage tune {c[tw].mean():.3f} (shifted {c[tune].mean():.3f}), held out "
              f"{c[split == 'held_out'].mean():.3f} (shifted {c[held].mean():.3f}); mean width no shift "
              f"{np.minimum(2 * half, 1)[fam == 'none'].mean():.3f}, shifted {np.minimum(2 * half, 1)[fam != 'none'].mean():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "failsight-bench")
    ap.add_argument("--datasets", default="mnist,mnist-weak,digits",
                    help="mnist = SmallCNN trained as --mnist-train/--mnist-epochs say; mnist-weak = 12k images, "
                         "2 epochs; digits = the bundled digits")
    ap.add_argument("--null-windows", type=int, default=220)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--unseen", action="store_true",
                    help="also score windows of shifts outside the simulated suite (geometry, texture, grey-level "
                         "jitter, ImageNet-C extras); retrains each model once")
    ap.add_argument("--no-simulate", action="store_true",
                    help="leave out shift_regression (no table of simulated shifts: no model retraining)")
    ap.add_argument("--nannyml-python", default=os.environ.get("NANNYML_PYTHON"),
                    help="Python interpreter with nannyml installed (its own venv), for CBPE in the same run.")
    ap.add_argument("--max-risk", type=float, default=0.02)
    ap.add_argument("--mnist-train", type=int, default=55000,
                    help="MNIST training images of the CNN (a seeded subset of the 60k; 12000 = the first run's "
                         "weaker model).")
    ap.add_argument("--mnist-epochs", type=int, default=3, help="MNIST training epochs (2 = the first run's).")
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.null_windows = "digits", 40
    results: dict[str, dict] = {}
    datas: dict[str, dict] = {}
    unseen: dict[str, dict] = {}
    unseen_data: dict[str, dict] = {}
    for ds in args.datasets.split(","):
        if ds.startswith("mnist") and not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
            print(f"{ds}: skipped, no MNIST files under {MNIST_DIR}")
            continue
        if ds == "mnist-weak":  # the first run's weaker model: the default is chosen across models, not for one
            data = load_or_prepare("mnist", args.cache, argparse.Namespace(**{**vars(args), "mnist_train": 12000,
                                                                              "mnist_epochs": 2}))
        else:
            data = load_or_prepare(ds, args.cache, args)
        if args.prepare_only:
            continue
        datas[ds] = data
        targs = argparse.Namespace(**{**vars(args), "mnist_train": 12000, "mnist_epochs": 2}) \
            if ds == "mnist-weak" else args
        table, sim_s = (None, None) if args.no_simulate else \
            load_or_simulate("mnist" if ds.startswith("mnist") else ds, args.cache, targs, data)
        results[ds] = score_windows(ds, data, args.max_risk, table)
        results[ds]["simulate_s"] = sim_s
        if args.unseen and table is not None:
            unseen_data[ds] = load_or_prepare_unseen("mnist" if ds.startswith("mnist") else ds, args.cache, targs,
                                                     data)
            unseen[ds] = score_windows(ds, unseen_data[ds], args.max_risk, table)
        results[ds]["cbpe"], results[ds]["cbpe_note"] = cbpe_estimates(data, args.nannyml_python)
    if results:
        report(results, datas)
        for ds, r in unseen.items():
            report_unseen(ds, r, unseen_data[ds])
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak memory (RSS) of this process: {peak:.0f} MiB (windows are scored one at a time with "
              "Monitor.evaluate; the cached outputs of all windows are held in memory here, not by the monitor)")


if __name__ == "__main__":
    main()
