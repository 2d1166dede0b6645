"""failsight at real scale: the audit (without Defuse) on MNIST-sized and 3×32×32 test sets.

Reads MNIST from ``../shared/data/mnist/`` (skips with a message where it is absent), trains a small CNN on it
(or loads the cached weights from ``benchmarks/.cache/``) and prints, in one run, for each set:

- the single-core inference floor: the model's images/s on one thread, times the number of forward passes the
  audit makes (every shift × severity over the test set, the clean pass, the reliability step's test and
  calibration passes, the detection reference, the OOD images and the conformal sets' 500 images per condition);
- the audit (reliability, robustness at the default shifts and severities, slices) with 1 worker and with all
  workers, each in a fresh process as ``failsight audit`` runs it: wall time, wall / floor, peak RSS and peak
  PSS of that process's whole tree (workers and forkserver included, sampled from ``/proc`` every 0.2 s from
  the start of the audit, its test and calibration data already loaded);
- the same audit on a local Ray cluster: identical numbers (``to_dict()`` compared), overhead vs local.

The second set is MNIST padded to 32×32 and tinted with a random colour per image (10k × 3×32×32), with its
own CNN. ``--quick`` uses 2,000 test images and a 6-shift subset at severities 1, 3, 5 on the MNIST set only (a
smoke run of about 2-3 minutes on two idle cores, training the CNN included when it is not cached).

Usage: python benchmarks/scale.py [--quick] [--sets mnist,rgb32] [--no-ray] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MNIST = HERE.parent.parent / "shared" / "data" / "mnist"
CACHE = HERE / ".cache"
QUICK_SHIFTS = ("gaussian_noise", "defocus_blur", "fog", "contrast", "jpeg_compression", "rotation")


# ---------------------------------------------------------------------------------------------- the model
#: The CNN of both sets: failsight's :class:`~failsight.models.SmallCNN` at width 16 (two stages of two 3×3
#: conv-BN-ReLU layers, 16 and 32 channels, on 28×28). Its cost per image is close to the issue's CNN (about
#: 2,300 images/s on one core; this one ≈ 2,900 images/s on one thread of the development machine), so the
#: sweep is inference-bound as in the issue. ``--model lenet`` picks a 6× cheaper LeNet-style net instead, where
#: the corruptions dominate.
WIDTH = 16


class LeNet(nn.Module):
    """LeNet-style CNN: two 5×5 conv + pool stages, a 128-d penultimate layer, 10 logits.

    Defined at module level, as a user's model class would be, so worker processes unpickle it by reference.
    """

    def __init__(self, in_channels: int, size: int) -> None:
        super().__init__()
        s = ((size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(32 * s * s, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _net(kind: str, in_channels: int, size: int) -> nn.Module:
    from failsight.models.cnn import SmallCNN

    if kind == "lenet":
        return LeNet(in_channels, size)
    return SmallCNN(in_channels, 10, size, width=WIDTH, seed=0)


def _train(kind: str, name: str, x: np.ndarray, y: np.ndarray) -> Any:
    """The ``kind`` CNN for set ``name``, trained on ``(x, y)`` or loaded from ``benchmarks/.cache/``."""
    import torch

    from failsight.models.cnn import train_classifier

    model = _net(kind, x.shape[1], x.shape[2])
    path = CACHE / f"{name}-{kind}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    t = time.perf_counter()
    hist = train_classifier(model, x, y, epochs=1, batch_size=128, lr=3e-3, seed=0, progress=False)
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"  trained the {name} {kind} CNN in {time.perf_counter() - t:.0f} s, {hist.epochs} epoch(s) "
          f"(cached in {path})", flush=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- data
def _mnist() -> tuple[np.ndarray, ...]:
    from failsight.datasets.io import load_data

    tr = load_data(MNIST / "train-images-idx3-ubyte.gz")
    te = load_data(MNIST / "t10k-images-idx3-ubyte.gz")
    return tr.x, tr.y, te.x, te.y


def _rgb32(x: np.ndarray, seed: int) -> np.ndarray:
    """MNIST digits padded to 32×32 and tinted with one random colour per image: ``(n, 3, 32, 32)`` float32."""
    rng = np.random.default_rng(seed)
    pad = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    colour = rng.uniform(0.3, 1.0, size=(len(x), 3, 1, 1)).astype(np.float32)
    return (pad * colour).astype(np.float32)


# ---------------------------------------------------------------------------------------------- memory
def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process (0 when it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


class TreeMemory:
    """Samples RSS and PSS summed over a process tree (``root``'s, default this process's) every ``interval`` s;
    ``peak()`` since ``reset()``.

    The RSS sum counts pages shared between processes (shared libraries, the forkserver's pages its workers
    inherit, memory-mapped data, the Ray object store) once per process, an upper bound; PSS splits shared
    pages between their users, so its sum is the tree's real footprint.
    """

    def __init__(self, interval: float = 0.2, root: int | None = None) -> None:
        self.interval = interval
        self.root = os.getpid() if root is None else root
        self._peak = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            tot = [0, 0]
            for p in _tree(self.root):
                r, s = _mem(p)
                tot[0] += r
                tot[1] += s
            self._peak = (max(self._peak[0], tot[0]), max(self._peak[1], tot[1]))
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self._peak = (0, 0)

    def peak(self) -> tuple[float, float]:
        time.sleep(2 * self.interval)
        return self._peak[0] / 2**30, self._peak[1] / 2**30

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------------------------- measurements
def _floor(model: Any, x: np.ndarray, seconds: float = 8.0) -> float:
    """Images per second of ``model`` on one thread (batches of 512, median of repeated passes)."""
    import torch

    from failsight._threads import limit_threads

    xb = torch.from_numpy(x[:512])
    rates = []
    with limit_threads(1), torch.no_grad():
        model(xb)
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 5:
            t = time.perf_counter()
            model(xb)
            rates.append(len(xb) / (time.perf_counter() - t))
    return float(np.median(rates))


def _audit(model: Any, test: tuple, cal: tuple, shifts: Any, **kw: Any) -> tuple[Any, float]:
    import failsight

    t = time.perf_counter()
    res = failsight.audit(model, test, calibration=cal, steps=["reliability", "robustness", "slices"],
                          shifts=shifts, severities=(1, 3, 5), progress=False, **kw)
    return res, time.perf_counter() - t


def _set_data(name: str, kind: str, n_test: int) -> tuple[Any, tuple, tuple]:
    """The model (from the cache :func:`_train` filled) and the test and calibration data of set ``name``."""
    x_tr, y_tr, x_te, y_te = _mnist()
    x_cal, y_cal = x_tr[-5000:].copy(), y_tr[-5000:].copy()  # copies: the 60k training images are freed
    del x_tr
    x_te, y_te = x_te[:n_test], y_te[:n_test]
    if name.startswith("rgb"):
        x_te, x_cal = _rgb32(x_te, 2), _rgb32(x_cal, 3)
    model = _net(kind, x_te.shape[1], x_te.shape[2])
    model.load_state_dict(torch.load(CACHE / f"{'rgb32' if name.startswith('rgb') else 'mnist'}-{kind}.pt",
                                     weights_only=True))
    return model.eval(), (x_te, y_te), (x_cal, y_cal)


def _child(conn: Any, name: str, kind: str, n_test: int, shifts: Any, kw: dict[str, Any]) -> None:
    """One audit in a fresh process, as ``failsight audit`` would run it: loads its data, tells the parent when
    the audit starts (memory is measured from there), sends back (wall s, sweep s, numbers, clean accuracy)."""
    model, test, cal = _set_data(name, kind, n_test)
    conn.send("start")
    res, wall = _audit(model, test, cal, shifts, **kw)
    conn.send((wall, res.robustness.seconds.get("evaluate", float("nan")), _numbers(res),
               res.robustness.clean_accuracy))
    if kw.get("backend") == "ray":
        import ray

        ray.shutdown()
    conn.close()


def _audit_in_child(name: str, kind: str, n_test: int, shifts: Any, kw: dict[str, Any]
                    ) -> tuple[float, float, dict[str, Any], float, float, float]:
    """:func:`_child` in a spawned process; adds the peak RSS and PSS (GiB) of its process tree."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, name, kind, n_test, shifts, kw))
    proc.start()
    mem = TreeMemory(root=proc.pid)
    try:
        if parent.recv() != "start":
            raise RuntimeError("the audit process did not start")
        mem.reset()
        wall, sweep, nums, acc = parent.recv()
        rss, pss = mem.peak()
    finally:
        mem.stop()
        proc.join()
    if proc.exitcode:
        raise RuntimeError(f"the audit process failed (exit code {proc.exitcode})")
    return wall, sweep, nums, acc, rss, pss


def _strip_timings(d: Any) -> Any:
    """``d`` without wall-time entries (``seconds``, ``*_time_s``), which differ between any two runs."""
    if isinstance(d, dict):
        return {k: _strip_timings(v) for k, v in d.items() if k != "seconds" and not k.endswith("time_s")}
    if isinstance(d, list):
        return [_strip_timings(v) for v in d]
    return d


def _numbers(res: Any) -> dict[str, Any]:
    return _strip_timings({"robustness": res.robustness.to_dict(), "reliability": res.reliability.to_dict(),
                           "slices": res.slices.to_dict() if res.slices is not None else None})


def task_overhead(executor: Any, n: int = 200) -> float:
    """Milliseconds per task of ``executor`` on tasks that do nothing (``engine.noop``), after a warm-up."""
    from failsight.engine import Plan, run_sweep

    run_sweep(Plan.build("engine.noop", [(i,) for i in range(8)]), None, executor=executor, progress=False)
    t = time.perf_counter()
    run_sweep(Plan.build("engine.noop", [(i,) for i in range(n)]), None, executor=executor, progress=False)
    return 1000 * (time.perf_counter() - t) / n


def run_set(name: str, kind: str, n_test: int, shifts: Any, workers: int, use_ray: bool,
            floor_seconds: float = 8.0) -> list[dict[str, Any]]:
    """Floor, then each run in a fresh process (:func:`_audit_in_child`); prints and returns the table rows."""
    from failsight.robustness.analysis import default_shifts

    model, (x_test, y_test), (_, y_cal) = _set_data(name, kind, n_test)

    names = default_shifts(x_test.shape[1]) if shifts is None else shifts
    n_cond = 1 + 3 * len(names)
    n_ood = min(len(y_test), 1000)
    n_conformal = min(len(y_test), 500) * (n_cond - 1)  # the conformal sets' coverage under each shift
    # sweep; reliability (test, calibration); detection reference (= calibration); OOD; conformal under shift
    passes = len(y_test) * n_cond + len(y_test) + len(y_cal) + len(y_cal) + n_ood + n_conformal
    rate = _floor(model, x_test, seconds=floor_seconds)
    floor = passes / rate
    print(f"\n[{name}] {len(y_test):,} test images {tuple(x_test.shape[1:])}, {len(names)} shifts × 3 severities "
          f"= {n_cond} conditions, {passes:,} forward passes; 1-thread inference {rate:,.0f} images/s -> "
          f"floor {floor:.0f} s", flush=True)
    rows = []
    ref = None
    for label, kw in [("local, 1 worker", {"workers": 1}), (f"local, {workers} workers", {"workers": workers})] + (
            [(f"ray local cluster, {workers} CPUs", {"backend": "ray", "workers": workers})] if use_ray else []):
        wall, sweep, nums, acc, rss, pss = _audit_in_child(name, kind, n_test, names, kw)
        same = "-" if ref is None else ("yes" if nums == ref else "NO")
        ref = nums if ref is None else ref
        rows.append({"set": name, "run": label, "wall": wall, "floor": floor, "rss": rss, "pss": pss, "same": same,
                     "sweep": sweep, "clean_acc": acc})
        print(f"  {label:<28} wall {wall:7.1f} s (shift sweep {sweep:6.1f} s)  wall/floor {wall / floor:5.2f}  "
              f"peak RSS {rss:5.2f} GiB = {rss * 2**30 / 1e9:4.2f} GB (PSS {pss:5.2f} GiB)  "
              f"identical to 1 worker: {same}", flush=True)
    local_n = next(r for r in rows if r["run"].startswith(f"local, {workers}"))
    for r in rows:
        if r["run"].startswith("ray"):
            over = r["wall"] / local_n["wall"] - 1
            print(f"  ray overhead vs local {workers} workers: {over:+.1%}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 test images and 6 shifts (a smoke run)")
    ap.add_argument("--sets", default=None, help="comma-separated: mnist, rgb32 (default both; --quick: mnist)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    ap.add_argument("--workers", type=int, default=None, help="workers of the parallel runs (default: all cores)")
    ap.add_argument("--n-test", type=int, default=None, help="test images (default 10,000; --quick 2,000)")
    ap.add_argument("--model", choices=("smallcnn", "lenet"), default="smallcnn",
                    help="the CNN: failsight's SmallCNN width 16 (default; costs about what the issue's CNN costs) "
                         "or a 6x cheaper LeNet")
    ap.add_argument("--overhead", action="store_true", help="also measure the per-task cost of each executor")
    args = ap.parse_args(argv)
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"skipped: MNIST not found in {MNIST} (the original IDX .gz files)")
        return 0
    from failsight.engine import available_cores

    workers = args.workers or available_cores()
    use_ray = not args.no_ray
    if use_ray:
        try:
            import ray
        except ImportError:
            print("ray is not installed: the Ray comparison is skipped (pip install 'failsight[ray]')")
            use_ray = False
    print(f"failsight scale benchmark: {available_cores()} usable cores, load average "
          f"{os.getloadavg()[0]:.1f}, {'quick' if args.quick else 'full'} mode", flush=True)
    x_tr, y_tr, x_te, y_te = _mnist()
    n_test = args.n_test or (2000 if args.quick else len(y_te))
    shifts = QUICK_SHIFTS if args.quick else None
    # calibration / reference split: the last 5,000 training images (never trained on)
    x_cal, y_cal, x_fit, y_fit = x_tr[-5000:], y_tr[-5000:], x_tr[:-5000], y_tr[:-5000]
    rows: list[dict[str, Any]] = []
    sets = [s.strip() for s in (args.sets or ("mnist" if args.quick else "mnist,rgb32")).split(",") if s.strip()]
    floor_seconds = 3.0 if args.quick else 8.0
    if "mnist" in sets:
        _train(args.model, "mnist", x_fit, y_fit)
    if "rgb32" in sets:
        _train(args.model, "rgb32", _rgb32(x_fit[:20000], 1), y_fit[:20000])
    del x_tr, y_tr, x_te, y_te, x_cal, y_cal, x_fit, y_fit
    if "mnist" in sets:
        rows += run_set("mnist 1x28x28", args.model, n_test, shifts, workers, use_ray, floor_seconds)
    if "rgb32" in sets:
        rows += run_set("rgb 3x32x32", args.model, n_test, shifts, workers, use_ray, floor_seconds)
    print("\n| set | run | wall s | shift sweep s | wall / 1-core floor | peak RSS GiB (tree) | peak PSS GiB (tree) "
          "| same numbers |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['run']} | {r['wall']:.1f} | {r['sweep']:.1f} | {r['wall'] / r['floor']:.2f} | "
              f"{r['rss']:.2f} | {r['pss']:.2f} | {r['same']} |")
    if args.overhead:
        from failsight.engine import LocalExecutor, RayExecutor, SerialExecutor

        print("\nper-task cost of the executor itself (tasks that return their key):")
        for label, make in [("serial", SerialExecutor), (f"local processes ({workers})", lambda: LocalExecutor(workers)),
                            (f"ray local cluster ({workers} CPUs)", lambda: RayExecutor(workers=workers))][
                :3 if use_ray else 2]:
            with make() as ex:
                print(f"  {label:<28} {task_overhead(ex):7.2f} ms/task", flush=True)
        if use_ray:
            import ray

            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
