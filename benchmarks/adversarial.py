"""Benchmark: failsight.robustness.attack side by side with torchattacks (not a test).

Run ``PYTHONPATH=src:.extra .venv/bin/python benchmarks/adversarial.py [--n 1000] [--device cpu|cuda]`` with
torchattacks installed beside the project (``pip install --no-deps --target .extra torchattacks``: it imports
without torchvision, which must not be installed next to this torch). One process, one model (the MNIST CNN of
``_mnist_cnn.py``), the first ``--n`` MNIST test images.

At matched settings (same ε, step size 2.5·ε/steps, steps, one random start; torchattacks ``PGD`` / ``PGDL2``
with ``random_start=True``), for three ε per norm: robust accuracy of each (target: within 1 point; the random
starts differ, so per-sample outcomes may too) and throughput in attacked images per second (median of
``--repeats``, ours and theirs timed interleaved; ours stops attacking an image once it is misclassified, theirs
runs every step) and the speed ratio theirs/ours both in wall-clock and in CPU seconds of this process (the CPU
ratio is the one to read on a shared machine: it does not count time spent waiting for a core). Then APGD-CE (ours,
and torchattacks' ``APGD(loss="ce")``) at the same number of steps: it should be at least as strong as PGD.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mnist_cnn import load_mnist, mnist_cnn
from failsight.robustness import attack


def _once(fn: Any) -> tuple[float, float, Any]:
    """(wall s, CPU s of this process, result) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _pair(ours: Any, theirs: Any, repeats: int) -> tuple[float, float, float, float, Any, Any]:
    """Median wall and CPU seconds of ``ours`` and ``theirs``, timed interleaved (ours, theirs, ours, ...) so a
    change of machine load hits both alike. Returns (wall ours, wall theirs, cpu ours, cpu theirs, results)."""
    wo, wt, co, ct = [], [], [], []
    ro = rt = None
    for _ in range(repeats):
        w, c, ro = _once(ours)
        wo.append(w)
        co.append(c)
        w, c, rt = _once(theirs)
        wt.append(w)
        ct.append(c)
    med = statistics.median
    return med(wo), med(wt), med(co), med(ct), ro, rt


def theirs(ta_cls: Any, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, torch_seed: int,
           **kw: Any) -> float:
    """Robust accuracy under a torchattacks attack, batch by batch."""
    atk = ta_cls(net, **kw)
    torch.manual_seed(torch_seed)
    ok = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        adv = atk(xb, yb)
        with torch.no_grad():
            ok += int((net(adv).argmax(1) == yb).sum())
    return ok / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("all", "pgd", "apgd"), default="all")
    args = ap.parse_args()
    import torchattacks

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    net = mnist_cnn().to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)  # both libraries need input gradients only
    xs, ys = load_mnist("t10k")
    x = torch.from_numpy(xs[:args.n]).to(dev)
    y = torch.from_numpy(ys[:args.n]).to(dev)
    with torch.no_grad():
        clean = float((net(x).argmax(1) == y).float().mean())
    print(f"torchattacks {torchattacks.__version__}, torch {torch.__version__}, device {dev}, {args.n} MNIST test "
          f"images, clean accuracy {clean:.4f}, steps {args.steps}, batch {args.batch}\n")
    print("| attack | ε | failsight robust acc | torchattacks robust acc | Δ (points) | failsight img/s | "
          "torchattacks img/s | speed ratio (wall) | speed ratio (CPU s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    n, s = args.n, args.steps
    pgd_acc: dict[tuple[str, float], float] = {}
    for norm, cls, eps_list in () if args.only == "apgd" else (("linf", torchattacks.PGD, (0.05, 0.1, 0.15)), ("l2", torchattacks.PGDL2, (0.5, 1.0, 1.5))):
        for eps in eps_list:
            alpha = 2.5 * eps / s
            t_o, t_t, c_o, c_t, r, acc_t = _pair(
                partial(attack, net, x, y, method="pgd", norm=norm, eps=eps, steps=s, step_size=alpha,
                        batch_size=args.batch, seed=0),
                partial(theirs, cls, net, x, y, args.batch, 0, eps=eps, alpha=alpha, steps=s, random_start=True),
                args.repeats)
            pgd_acc[(norm, eps)] = acc_t
            print(f"| PGD-{norm} | {eps:g} | {r.robust_accuracy:.4f} | {acc_t:.4f} | "
                  f"{100 * (r.robust_accuracy - acc_t):+.1f} | {n / t_o:.0f} | {n / t_t:.0f} | {t_t / t_o:.2f}× | "
                  f"{c_t / c_o:.2f}× |", flush=True)
    if args.only == "pgd":
        _peak()
        return
    print("\nAPGD-CE at the same number of steps (stronger = lower robust accuracy than PGD):\n")
    print("| attack | ε | failsight APGD-CE | torchattacks APGD-CE | torchattacks PGD | failsight img/s | "
          "torchattacks APGD img/s | speed ratio (CPU s) |")
    print("|---|---|---|---|---|---|---|---|")
    for norm, ta_norm, eps_list in (("linf", "Linf", (0.05, 0.1, 0.15)), ("l2", "L2", (0.5, 1.0, 1.5))):
        for eps in eps_list:
            if (norm, eps) not in pgd_acc:  # --only apgd: their PGD at the same steps, for the comparison
                pgd_cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
                pgd_acc[(norm, eps)] = theirs(pgd_cls, net, x, y, args.batch, 0, eps=eps, alpha=2.5 * eps / s,
                                              steps=s, random_start=True)
            t_o, t_t, c_o, c_t, r, acc_t = _pair(
                partial(attack, net, x, y, method="apgd-ce", norm=norm, eps=eps, steps=s, batch_size=args.batch,
                        seed=0),
                partial(theirs, torchattacks.APGD, net, x, y, args.batch, 0, norm=ta_norm, eps=eps, steps=s,
                        n_restarts=1, loss="ce", seed=0),
                args.repeats)
            print(f"| APGD-CE-{norm} | {eps:g} | {r.robust_accuracy:.4f} | {acc_t:.4f} | {pgd_acc[(norm, eps)]:.4f} | "
                  f"{n / t_o:.0f} | {n / t_t:.0f} | {c_t / c_o:.2f}× |", flush=True)
    _peak()


def _peak() -> None:
    import resource

    print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
