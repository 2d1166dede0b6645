"""Timing worker for the `imagecorruptions` reference, run by benchmarks/corruptions.py in its own venv.

The reference (imagecorruptions 1.1.2) needs numpy 1.x and scikit-image 0.19, so it cannot share the
project's environment; this script runs under that venv's python and answers one JSON request per line
on stdin with one JSON line on stdout:

    {"name": "gaussian_noise", "size": 32, "batch": 256, "severity": 3, "repeats": 3, "budget_s": 4.0}
    -> {"name": ..., "size": ..., "n_images": k, "wall": [s per image, ...], "cpu": [s per image, ...]}

``wall`` is elapsed time, ``cpu`` the process's CPU time (robust to other load on a shared machine).
A request with ``"op": "apply"`` corrupts the uint8 ``(N, H, W, 3)`` images saved in ``"in"`` (``.npy``)
and saves the float results in [0, 1] to ``"out"`` (used to compare corruption strength).

The reference corrupts one uint8 HWC image per call, so its throughput does not depend on the batch:
each repeat times the first ``k`` of the ``batch`` images, ``k`` chosen so that a repeat takes about
``budget_s`` seconds (at least 4 images, at most ``batch``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings


def main() -> None:
    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass
    warnings.filterwarnings("ignore")
    import numpy as np
    from imagecorruptions import corrupt

    print(json.dumps({"ready": True, "numpy": np.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "apply":
            np.random.seed(int(req.get("seed", 0)))  # noqa: NPY002 - the reference uses numpy's global RNG
            imgs = np.load(req["in"])
            res = np.stack([corrupt(im, severity=int(req["severity"]), corruption_name=req["name"])
                            for im in imgs]).astype(np.float32) / 255.0
            np.save(req["out"], res)
            print(json.dumps({"ok": True}), flush=True)
            continue
        size, batch, sev = int(req["size"]), int(req["batch"]), int(req["severity"])
        rng = np.random.default_rng(int(req.get("seed", 0)))
        imgs = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        name = req["name"]
        np.random.seed(0)  # noqa: NPY002 - the reference draws from numpy's global RNG
        t0 = time.perf_counter()
        corrupt(imgs[0], severity=sev, corruption_name=name)  # warm-up (numba JIT, file reads)
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        corrupt(imgs[1 % batch], severity=sev, corruption_name=name)
        t1 = min(t1, time.perf_counter() - t0)
        k = int(min(batch, max(4, float(req.get("budget_s", 4.0)) / max(t1, 1e-6))))
        wall, cpu = [], []
        for _ in range(int(req.get("repeats", 3))):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(k):
                corrupt(imgs[i], severity=sev, corruption_name=name)
            wall.append((time.perf_counter() - t0) / k)
            cpu.append((time.process_time() - c0) / k)
        print(json.dumps({"name": name, "size": size, "n_images": k, "wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
