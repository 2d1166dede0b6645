"""Benchmark: failsight.reliability side by side with the reference libraries (not a test).

Run ``.venv/bin/python benchmarks/reliability.py`` (``--quick`` runs the slow references on fewer
resamples and extrapolates; such rows are marked ``~``). Everything runs in this one process on the
same float32 inputs; each cell is the median wall time over repeats after a warm-up (numba kernels are
compiled or loaded from their cache before timing). Ratios are ``library / failsight`` (> 1: failsight
is faster); the ``probs.sum()`` row is the memory floor, one read of the probability matrix, and its
ratio is ``failsight / floor``. The ``value`` column shows what each library computes, to show agreement.

Rows:
* ECE (15 bins, top-label, L1) on 1,000,000 x 10 and 100,000 x 1,000 float32 probabilities:
  torchmetrics ``multiclass_calibration_error``, netcal ``ECE``, probmetrics ``CalibrationError``
  (a torchmetrics wrapper; needs pandas), uncertainty-calibration ``get_ece``. scikit-learn has no ECE.
* bootstrap 95% interval of the ECE, 1,000 resamples, 100,000 x 10: uncertainty-calibration's
  ``bootstrap_uncertainty`` with its ``get_ece``, and a loop of torchmetrics over resampled tensors
  (the fastest exact reference). Libraries without a bootstrap are not listed.
* temperature-scaling fit rows from ``benchmarks/_bench_temperature.py`` when that file is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_BINS = 15


def make_probs(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident float32 softmax probabilities ``(n, k)`` and labels ``(n,)``, built in row chunks."""
    rng = np.random.default_rng(seed)
    p = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = max(1, (1 << 22) // k)
    for lo in range(0, n, step):
        m = min(step, n - lo)
        z = rng.standard_normal((m, k), dtype=np.float32) * 3.0
        z[np.arange(m), rng.integers(0, k, m)] += 4.0
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p[lo:lo + m] = e / e.sum(axis=1, keepdims=True)
        y[lo:lo + m] = np.argmax(0.6 * z + rng.gumbel(size=(m, k)).astype(np.float32), axis=1)
    return p, y


def _time(fn: Callable[[], Any], repeats: int, budget_s: float = 5.0, warmup: bool = True) -> tuple[float, Any]:
    """Median wall time in ms of ``fn()`` (after one warm-up call) and its last value."""
    value = fn() if warmup else None
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), value


def _row(task: str, library: str, median_ms: float | None, value: Any, note: str = "") -> dict[str, Any]:
    return {"task": task, "library": library, "median_ms": median_ms, "value": value, "note": note}


def _try(task: str, library: str, make: Callable[[], tuple[float, Any]], note: str = "") -> dict[str, Any]:
    try:
        ms, value = make()
    except ImportError as exc:
        return _row(task, library, None, None, f"not installed ({exc.name})")
    except Exception as exc:  # a reference failing is a result worth printing, not a crash
        return _row(task, library, None, None, f"failed: {type(exc).__name__}: {exc}"[:80])
    return _row(task, library, ms, value, note)


def bench_ece(n: int, k: int, quick: bool) -> list[dict[str, Any]]:
    from failsight.reliability.metrics import ece

    task = f"ECE {n:,} x {k:,}"
    p, y = make_probs(n, k, seed=k)
    rows = [_row(task, "failsight", *_time(lambda: ece(y, p, N_BINS), 21))]
    rows.append(_row(task, "probs.sum() floor", _time(lambda: p.sum(), 21)[0], None, "one read of the matrix"))

    def torchmetrics_ece() -> tuple[float, Any]:
        import torch
        from torchmetrics.functional.classification import multiclass_calibration_error

        pt, yt = torch.from_numpy(p), torch.from_numpy(y)
        return _time(lambda: float(multiclass_calibration_error(pt, yt, num_classes=k, n_bins=N_BINS)), 11)

    def netcal_ece() -> tuple[float, Any]:
        from netcal.metrics import ECE

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _time(lambda: float(ECE(bins=N_BINS).measure(p, y)), 5)

    def probmetrics_ece() -> tuple[float, Any]:
        import torch
        from probmetrics.metrics import CalibrationError

        pt, yt = torch.from_numpy(p), torch.from_numpy(y)
        metric = CalibrationError(n_bins=N_BINS, norm="l1")
        return _time(lambda: float(metric.compute_from_labels_probs(yt, pt)), 5)

    def uc_ece() -> tuple[float, Any]:
        from calibration.utils import get_ece

        return _time(lambda: float(get_ece(p, y, num_bins=N_BINS)), 1 if quick else 3, warmup=False)

    rows.append(_try(task, "torchmetrics", torchmetrics_ece))
    rows.append(_try(task, "netcal", netcal_ece))
    rows.append(_try(task, "probmetrics", probmetrics_ece))
    rows.append(_try(task, "uncertainty-calibration", uc_ece))
    return rows


def bench_bootstrap(quick: bool, n_boot: int = 1000) -> list[dict[str, Any]]:
    from failsight.reliability.metrics import calibration_error

    n, k = 100_000, 10
    task = f"ECE bootstrap CI {n_boot:,} x {n:,} x {k}"
    p, y = make_probs(n, k, seed=1)

    def ours() -> tuple[float, float]:
        r = calibration_error(y, p, N_BINS, ci=0.95, n_boot=n_boot, seed=0)
        return r.ci.low, r.ci.high

    rows = [_row(task, "failsight", *_time(ours, 5))]
    slow_boot = 50 if quick else n_boot
    scale = n_boot / slow_boot
    note = f"~ {slow_boot} resamples x {scale:g}" if scale != 1 else ""

    def torchmetrics_loop() -> tuple[float, Any]:
        import torch
        from torchmetrics.functional.classification import multiclass_calibration_error

        from failsight.reliability._binning import bootstrap_indices

        pt, yt = torch.from_numpy(p), torch.from_numpy(y)

        def run() -> tuple[float, float]:
            vals = []
            for start in range(0, slow_boot, 50):
                idx = torch.from_numpy(bootstrap_indices(n, min(50, slow_boot - start), seed=0, start=start))
                vals += [float(multiclass_calibration_error(pt[i], yt[i], num_classes=k, n_bins=N_BINS))
                         for i in idx]
            lo, hi = np.quantile(vals, [0.025, 0.975])
            return float(lo), float(hi)

        ms, value = _time(run, 1, warmup=False)
        return ms * scale, value

    def uc_bootstrap() -> tuple[float, Any]:
        from calibration import utils as cu

        data = list(zip(p, y, strict=True))

        def functional(d: list) -> float:
            probs, labels = zip(*d, strict=True)
            return cu.get_ece(np.asarray(probs), np.asarray(labels), num_bins=N_BINS)

        def run() -> tuple[float, float]:
            np.random.seed(0)  # noqa: NPY002 - the reference draws from numpy's global generator
            lo, _, hi = cu.bootstrap_uncertainty(data, functional, num_samples=slow_boot, alpha=5.0)
            return float(lo), float(hi)

        ms, value = _time(run, 1, warmup=False, budget_s=0.0)
        return ms * scale, value

    rows.append(_try(task, "torchmetrics (loop)", torchmetrics_loop, note))
    rows.append(_try(task, "uncertainty-calibration", uc_bootstrap, note + " (basic bootstrap)"))
    return rows


def temperature_rows() -> list[dict[str, Any]]:
    try:
        import _bench_temperature
    except ImportError:
        return []
    return [dict(r) for r in _bench_temperature.run()]


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{x:.6f}" for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.8f}"
    return str(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    base = {r["task"]: r["median_ms"] for r in rows if r["library"] == "failsight" and r["median_ms"]}
    print(f"{'task':<34} {'library':<26} {'median ms':>11} {'ratio':>8}  value / note")
    last = None
    for r in rows:
        task = r["task"]
        if task != last and last is not None:
            print()
        last = task
        ms = r.get("median_ms")
        ref = base.get(task)
        if ms is None:
            ratio = ""
        elif r["library"].endswith("floor") and ref:
            ratio = f"{ref / ms:.2f}x"
        elif ref and r["library"] != "failsight":
            ratio = f"{ms / ref:.1f}x"
        else:
            ratio = "1"
        ms_s = "-" if ms is None else f"{ms:,.1f}"
        extra = _fmt_value(r.get("value"))
        if "nll" in r:
            extra += f"  nll {r['nll']:.6f}"
        if r.get("note"):
            extra += f"  ({r['note']})"
        print(f"{task:<34} {r['library']:<26} {ms_s:>11} {ratio:>8}  {extra}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer resamples for the slow references")
    args = parser.parse_args(argv)
    import numba

    from failsight.reliability import _binning

    print(f"numpy {np.__version__}, numba {numba.__version__}, failsight kernels: "
          f"{'numba' if _binning.USE_NUMBA else 'numpy'}, up to {_binning.MAX_THREADS} threads\n")
    rows = bench_ece(1_000_000, 10, args.quick) + bench_ece(100_000, 1_000, args.quick)
    rows += bench_bootstrap(args.quick)
    rows += temperature_rows()
    print_table(rows)


if __name__ == "__main__":
    main()
