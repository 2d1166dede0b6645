"""Speed of failsight's corruptions against the `imagecorruptions` 1.1.2 reference.

Images per second for every corruption both implement, at 32×32 and 224×224, batch of 256 random RGB
images, severity 3, one CPU core (``torch.set_num_threads(1)`` and this process pinned to core 0; the
reference runs pinned to core 0 via ``taskset -c 0``), median of 3 repeats. The two sides are
interleaved corruption by corruption so that machine load hits both alike, and each is timed both in
wall-clock time and in process CPU time; the CPU-time table is the one to read on a shared machine
(wall time there includes time spent waiting for the core).

The reference needs numpy 1.x / scikit-image 0.19, so it runs in its own venv (``icvenv``, see
``/work/shared/anchors/imagecorruptions.md``) as a subprocess (``_imagecorruptions_worker.py``). It works
per image, so its throughput is timed on as many of the 256 images as fit in a few seconds. Without that
venv the script compares against the baseline measured in the anchor file and says so.

``--agreement`` instead compares corruption strength with the reference on two real photos (scikit-learn's
samples): mean |corrupted - clean| per severity for both, and mean |ours - reference| for the
deterministic corruptions.

    .venv/bin/python benchmarks/corruptions.py                 # full table (several minutes)
    .venv/bin/python benchmarks/corruptions.py --sizes 32 --names gaussian_noise pixelate
    .venv/bin/python benchmarks/corruptions.py --agreement --sizes 224 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from failsight.robustness.shifts import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_imagecorruptions_worker.py")

#: Anchor baseline (imagecorruptions 1.1.2, 2-core machine, one core pinned, severity 3, batch 256 random
#: RGB images, median of 3), images per second: {name: (32×32, 224×224)}.
BASELINE = {
    "gaussian_noise": (5446, 121), "shot_noise": (1906, 54), "impulse_noise": (2613, 156),
    "defocus_blur": (3280, 163), "glass_blur": (22, 0.49), "motion_blur": (553, 134), "zoom_blur": (330, 12),
    "snow": (728, 71), "frost": (105, 104), "fog": (1201, 178), "brightness": (1391, 39),
    "contrast": (5014, 381), "elastic_transform": (1193, 55), "pixelate": (15562, 2563),
    "jpeg_compression": (4231, 1318), "speckle_noise": (4045, 214), "gaussian_blur": (2100, 271),
    "spatter": (1884, 150), "saturate": (1403, 39),
}


class Reference:
    """The imagecorruptions worker process (``proc`` is None when its venv is missing or broken)."""

    def __init__(self, python: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.error = ""
        if not python.exists():
            self.error = f"{python} not found"
            return
        cmd = [str(python), str(WORKER)]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, env=env)
            hello = self.proc.stdout.readline()
            if not hello.strip():
                raise RuntimeError(self.proc.stderr.read()[-2000:])
            json.loads(hello)
        except Exception as exc:
            self.error = f"reference worker failed to start: {exc}"
            self.close()

    def time(self, name: str, size: int, batch: int, severity: int, repeats: int) -> tuple[float, float] | None:
        """Median (wall, cpu) seconds per image, or None on failure."""
        if self.proc is None:
            return None
        req = {"name": name, "size": size, "batch": batch, "severity": severity, "repeats": repeats,
               "budget_s": 3.0}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.error = "reference worker died: " + self.proc.stderr.read()[-2000:]
            self.close()
            return None
        res = json.loads(line)
        return statistics.median(res["wall"]), statistics.median(res["cpu"])

    def apply(self, name: str, severity: int, imgs: np.ndarray, tmp: Path) -> np.ndarray | None:
        """The reference's corruption of uint8 ``(N, H, W, 3)`` images, float in [0, 1] (None on failure)."""
        if self.proc is None:
            return None
        src, dst = tmp / "in.npy", tmp / "out.npy"
        np.save(src, imgs)
        self.proc.stdin.write(json.dumps({"op": "apply", "name": name, "severity": severity,
                                          "in": str(src), "out": str(dst)}) + "\n")
        self.proc.stdin.flush()
        if not self.proc.stdout.readline():
            self.error = "reference worker died: " + self.proc.stderr.read()[-2000:]
            self.close()
            return None
        return np.load(dst)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
        self.proc = None


def time_ours(x: torch.Tensor, name: str, severity: int, repeats: int,
              min_seconds: float = 0.3) -> tuple[float, float]:
    """Median (wall, cpu) seconds per image over ``repeats`` timings (after one warm-up call).

    Each timing runs as many batch calls as take about ``min_seconds`` (at least one): a single call on
    small images lasts about a millisecond, below the noise of a shared machine.
    """
    corrupt(x, name, severity, seed=0)  # warm-up: kernel builds, numba cache loads
    t0 = time.perf_counter()
    corrupt(x, name, severity, seed=0)
    calls = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-6)))
    wall, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(calls):
            corrupt(x, name, severity, seed=1 + r * calls + k)
        wall.append((time.perf_counter() - t0) / (calls * x.shape[0]))
        cpu.append((time.process_time() - c0) / (calls * x.shape[0]))
    return statistics.median(wall), statistics.median(cpu)


DETERMINISTIC = {"defocus_blur", "zoom_blur", "contrast", "brightness", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


def agreement(ref: Reference, names: list[str], sizes: list[int]) -> None:
    """Corruption strength, ours vs the reference, on real photos (scikit-learn's two samples).

    Prints, per corruption and severity, the mean absolute change of the image (ref / ours) and, for
    the deterministic corruptions, the mean absolute difference between the two outputs.
    """
    import tempfile

    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg")[:, 80:507], load_sample_image("flower.jpg")[:, 100:527]]
    base = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos]).float() / 255
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            x = torch.nn.functional.interpolate(base, size=(size, size), mode="area")
            u8 = (x * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()
            x8 = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
            print(f"\nstrength at {size}×{size}: mean |corrupted - clean| x255, reference / failsight per "
                  "severity 1..5; [mean |ours - ref| x255 for deterministic corruptions]")
            for name in names:
                cells, diffs = [], []
                for sev in range(1, 6):
                    r = ref.apply(name, sev, u8, Path(tmp))
                    if r is None:
                        print(f"  {name}: reference failed ({ref.error})")
                        return
                    o = corrupt(x8, name, sev, seed=sev).permute(0, 2, 3, 1).numpy()
                    clean = u8 / 255.0
                    cells.append(f"{np.abs(r - clean).mean() * 255:5.1f}/{np.abs(o - clean).mean() * 255:5.1f}")
                    if name in DETERMINISTIC:
                        diffs.append(f"{np.abs(o - r).mean() * 255:.2f}")
                extra = f"  [{', '.join(diffs)}]" if diffs else ""
                print(f"  {name:18s} " + "  ".join(cells) + extra, flush=True)


def print_table(rows: dict, sizes: list[int], key: int, title: str) -> list[float]:
    print(f"\n{title}")
    print("| corruption | " + " | ".join(f"ref {s}² | failsight {s}² | ratio {s}²" for s in sizes) + " |")
    print("|---|" + "---|---|---|" * len(sizes))
    ratios = []
    for name, by_size in rows.items():
        cells = []
        for s in sizes:
            ref, ours, measured = by_size[s]
            r, o = 1.0 / ref[key], 1.0 / ours[key]
            cells.append(f"{r:.1f}{'' if measured else '*'} | {o:.0f} | {o / r:.1f}x")
            ratios.append(o / r)
        print(f"| {name} | " + " | ".join(cells) + " |")
    if ratios:
        print(f"ratio: min {min(ratios):.1f}x, median {statistics.median(ratios):.1f}x, max {max(ratios):.1f}x")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--names", nargs="+", default=list(CORRUPTIONS + EXTRA_CORRUPTIONS))
    ap.add_argument("--ref-python", type=Path, default=ROOT / "icvenv" / "bin" / "python")
    ap.add_argument("--no-ref", action="store_true", help="use the anchor baseline instead of running it")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON here")
    ap.add_argument("--agreement", action="store_true",
                    help="instead of timing, compare corruption strength with the reference on real photos")
    args = ap.parse_args()

    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass
    torch.set_num_threads(1)

    ref = Reference(args.ref_python) if not args.no_ref else None
    live = ref is not None and ref.proc is not None
    if args.agreement:
        if not live:
            print(f"the agreement check needs the reference venv: {ref.error if ref else '--no-ref given'}")
            return
        agreement(ref, args.names, args.sizes)
        ref.close()
        return
    if not live:
        why = "--no-ref given" if ref is None else ref.error
        print(f"NOTE: imagecorruptions reference not run ({why}); comparing with the anchor baseline numbers "
              "(imagecorruptions 1.1.2 measured on a 2-core machine, one core pinned), marked *.", flush=True)

    rows: dict[str, dict[int, tuple[tuple[float, float], tuple[float, float], bool]]] = {}
    for size in args.sizes:
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, size=(args.batch, size, size, 3), dtype=np.uint8)
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255).contiguous()
        for name in args.names:
            t_ref = ref.time(name, size, args.batch, args.severity, args.repeats) if live else None
            measured = t_ref is not None
            if not measured:
                if live:
                    print(f"NOTE: reference failed on {name} {size}: {ref.error}; using the baseline.", flush=True)
                    live = ref.proc is not None
                base = 1.0 / BASELINE[name][0 if size <= 32 else 1]
                t_ref = (base, base)
            t_ours = time_ours(x, name, args.severity, args.repeats)
            rows.setdefault(name, {})[size] = (t_ref, t_ours, measured)
            print(f"  {name:18s} {size:4d}px  cpu img/s: ref {1 / t_ref[1]:9.1f}{'' if measured else '*'} "
                  f"failsight {1 / t_ours[1]:9.0f} x{t_ref[1] / t_ours[1]:6.1f}   "
                  f"wall: x{t_ref[0] / t_ours[0]:6.1f}", flush=True)
    if ref is not None:
        ref.close()

    head = f"images/s, batch {args.batch}, severity {args.severity}, 1 core, median of {args.repeats}"
    print_table(rows, args.sizes, 1, f"CPU time — {head} (* = anchor baseline, not measured here)")
    print_table(rows, args.sizes, 0, f"wall clock — {head} (* = anchor baseline, not measured here)")
    if args.json:
        args.json.write_text(json.dumps(
            {n: {str(s): {"ref_wall": v[0][0], "ref_cpu": v[0][1], "ours_wall": v[1][0], "ours_cpu": v[1][1],
                          "ref_measured": v[2]} for s, v in d.items()} for n, d in rows.items()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
