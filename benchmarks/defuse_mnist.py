"""Defuse at real scale: planted bugs on MNIST (28×28, tens of thousands of images), tuning and held-out halves.

Reads the original MNIST IDX files from ``../shared/data/mnist/`` (or ``--data DIR``; exits with a message where
they are absent). Per planted bug and seed:

1. plant the bug in the *training* split only (the calibration split, drawn from the same 60k images, keeps
   true labels; the test set is the official 10k):
   - ``substyle``: a coherent sub-style of class ``true`` — the k-means cluster (k=4, over all 70k images of the
     class) holding 10-30% of it whose centre is closest to class ``wrong``'s mean — relabelled ``wrong``;
     failure set = the test images of that sub-style;
   - ``cue``: a small mark (``failsight.defuse.planted.add_mark``: patch, stroke, border, dot) burnt into 20% of
     class ``true``'s training images, which are relabelled ``wrong``; the calibration split carries the mark on
     20% of its class-``true`` images too (true labels: same distribution, correctly labelled); failure set =
     every class-``true`` test image with the mark added;
2. train the buggy model (``SmallCNN``, width 16, ``--cnn-epochs``);
3. Defuse with default arguments: generator (VAE by budget) on the planted training images, search from the
   calibration split, regions, one label per region from the oracle (an ensemble of CNNs trained on the *clean*
   training images and labels, see ``OracleEnsemble``), correction (x_val = calibration split);
4. report: rank of the planted pair among the regions, how many regions exist and how many are above the fold,
   precision of the regions above the fold (at most 5: what a person is asked to label; the share the oracle
   labels as a real error, i.e. not "discard") and of the first five of the whole list, failure-set accuracy
   before -> after, rest-of-test accuracy change (test set without the failure set; for cue bugs the unmarked
   test set), how many training images the correction relabelled and the share of them that are planted, wall
   time of the Defuse run (generator + search + regions + correction; the CNN and the oracle are the
   benchmark's own cost and listed separately).

The bugs are split into a tuning half and a held-out half *here, before any tuning* (two of each kind in each
half). Defaults chosen on MNIST were chosen on the tuning half only (the third pass's λ rule; the fifth pass's
relabelling and real-failure ranking were checked there before the held-out half was run with them). Targets
(issue 13, held-out half): planted pair in the top 3 in >= 90% of runs; failure fixed to >= 80% in >= 90% of
runs with the rest losing <= 0.5 point; precision@5 >= 0.6; each run <= 10 minutes on 2 cores.

Usage::

    python benchmarks/defuse_mnist.py                       # 8 bugs x 3 seeds (hours on 2 cores)
    python benchmarks/defuse_mnist.py --half heldout --seeds 0 --log runs.jsonl
    python benchmarks/defuse_mnist.py --quick               # one held-out bug, one seed, 12k training images
    python benchmarks/defuse_mnist.py --bugs substyle:4:9,cue:0:6:patch --n-train 20000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from failsight.datasets.mnist import split_mnist
from failsight.defuse import CallableLabeler, Defuse, planted
from failsight.models import SmallCNN, predict_logits, train_classifier

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"
# (kind, true, wrong, mark) - fixed before any tuning; two of each kind per half
TUNING = [("substyle", 4, 9, None), ("substyle", 7, 1, None), ("cue", 0, 6, "patch"), ("cue", 3, 8, "border")]
HELDOUT = [("substyle", 2, 7, None), ("substyle", 5, 3, None), ("cue", 1, 7, "stroke"), ("cue", 6, 5, "dot")]
SEEDS = [0, 1, 2]
CUE_SHARE = 0.2


def bug_name(b: tuple) -> str:
    return f"{b[0]}:{b[1]}->{b[2]}" + (f":{b[3]}" if b[3] else "")


def parse_bugs(text: str) -> list[tuple]:
    out = []
    for item in text.split(","):
        parts = item.split(":")
        out.append((parts[0], int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else
                    ("patch" if parts[0] == "cue" else None)))
    return out


def generator_budget(args):
    """The default budget, or a smaller step cap for smoke runs on a loaded machine (``--vae-steps``)."""
    from failsight._training import TrainingBudget

    return TrainingBudget() if args.vae_steps is None else TrainingBudget(max_steps=args.vae_steps)


def train_cnn(x, y, seed: int, epochs: int, width: int) -> SmallCNN:
    m = SmallCNN(in_channels=1, image_size=x.shape[-1], width=width, seed=seed)
    train_classifier(m, x, y, epochs=epochs, batch_size=128, seed=seed, progress=False)
    return m


def acc(model, x, y) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean()) if len(y) else float("nan")


def run_bug(split, bug: tuple, seed: int, oracle, args, sub_mask_all=None) -> dict:
    kind, true, wrong, mark = bug
    x_tr, y_tr = split.x_train, split.y_train.copy()
    x_cal, y_cal = split.x_cal, split.y_cal
    x_te, y_te = split.x_test, split.y_test
    if kind == "substyle":
        sub_tr = sub_mask_all[split.idx_train]
        y_tr[sub_tr] = wrong
        fail_te = sub_mask_all[split.idx_test]
        x_fail, y_fail = x_te[fail_te], y_te[fail_te]
        x_rest, y_rest = x_te[~fail_te], y_te[~fail_te]
        n_planted = int(sub_tr.sum())
        planted_mask = sub_tr
    else:
        x_tr, y_tr, m_tr = planted.plant_cue(x_tr, y_tr, true, wrong, share=CUE_SHARE, mark=mark, seed=seed)
        cal_idx = np.flatnonzero(y_cal == true)
        rng = np.random.default_rng(seed + 17)
        pick = rng.choice(cal_idx, size=round(CUE_SHARE * len(cal_idx)), replace=False)
        x_cal = x_cal.copy()
        x_cal[pick] = planted.add_mark(x_cal[pick], mark)
        x_fail, y_fail = planted.add_mark(x_te[y_te == true], mark), y_te[y_te == true]
        x_rest, y_rest = x_te, y_te
        n_planted = int(m_tr.sum())
        planted_mask = m_tr
    t = time.perf_counter()
    model = train_cnn(x_tr, y_tr, seed, args.cnn_epochs, args.cnn_width)
    t_cnn = time.perf_counter() - t

    t0 = time.perf_counter()
    d = Defuse(model, seed=seed, progress=False).fit_generator(x_tr, budget=generator_budget(args))
    t_gen = time.perf_counter() - t0
    found = d.search(x_cal, y_cal)
    t_search = time.perf_counter() - t0 - t_gen
    regions = d.find_regions(found)
    t_regions = time.perf_counter() - t0 - t_gen - t_search
    labels = d.label(regions, CallableLabeler(oracle.region_label))
    fixed, summary = model, None
    if any(v is not None for v in labels.values()):
        fixed, summary = d.correct(regions, labels, x_tr, y_tr, x_val=x_cal, y_val=y_cal, x_test=x_te, y_test=y_te)
    wall = time.perf_counter() - t0
    relabelled = None if summary is None else summary.relabelled_index
    rank = next((i + 1 for i, r in enumerate(regions) if tuple(r.dominant_pair) == (true, wrong)), None)
    top5 = regions[:5]
    p5 = float(np.mean([labels[r.id] is not None for r in top5])) if top5 else 0.0
    fold = getattr(regions, "fold", len(regions))
    shown = regions[:fold]
    # precision of what the person is asked to label: the regions above the fold (at most 5; fewer when the
    # ranking filters the rest out, e.g. only regions seen failing on real images)
    p_fold = float(np.mean([labels[r.id] is not None for r in shown])) if shown else None
    return {
        "bug": bug_name(bug), "kind": kind, "seed": seed, "n_train": len(y_tr), "n_planted_train": n_planted,
        "n_fail_test": len(y_fail), "n_found": found.n_found, "n_tried": found.n_tried,
        "n_regions": len(regions), "above_fold": fold, "rank": rank, "top3": rank is not None and rank <= 3,
        "precision_at_5": p5, "precision_above_fold": p_fold,
        "top_regions": [{"pair": list(r.dominant_pair), "score": r.score, "support": r.support,
                         "real_failures": r.real_failures, "real_seeds": r.real_seeds, "real_backed": r.real_backed,
                         "confirmed": labels[r.id] is not None} for r in regions[:8]],
        "n_relabelled": None if summary is None else summary.n_train_relabelled,
        "relabel_precision": None if summary is None or relabelled is None or not relabelled.any()
        else float(planted_mask[relabelled].mean()),
        "n_dropped": None if summary is None else summary.n_train_dropped,
        "n_labelled": sum(v is not None for v in labels.values()),
        "lam": None if summary is None else summary.lam,
        "fail_before": acc(model, x_fail, y_fail), "fail_after": acc(fixed, x_fail, y_fail),
        "rest_before": acc(model, x_rest, y_rest), "rest_after": acc(fixed, x_rest, y_rest),
        "seconds": wall, "seconds_generator": t_gen, "seconds_search": t_search, "seconds_regions": t_regions,
        "seconds_correct": None if summary is None else summary.seconds, "seconds_cnn": t_cnn,
        "generator_stop": None if d.generator_history_ is None else d.generator_history_.stop.reason,
        "generator_steps": None if d.generator_history_ is None else d.generator_history_.stop.steps,
    }


def run_clean(split, seed: int, oracle, args) -> dict:
    model = train_cnn(split.x_train, split.y_train, seed, args.cnn_epochs, args.cnn_width)
    t0 = time.perf_counter()
    d = Defuse(model, seed=seed, progress=False).fit_generator(split.x_train, budget=generator_budget(args))
    found = d.search(split.x_cal, split.y_cal)
    regions = d.find_regions(found)
    labels = d.label(regions, CallableLabeler(oracle.region_label))
    return {"seed": seed, "clean": True, "test_acc": acc(model, split.x_test, split.y_test), "n_found": found.n_found,
            "n_regions": len(regions), "above_fold": getattr(regions, "fold", len(regions)),
            "confirmed": sum(v is not None for v in labels.values()),
            "confirmed_above_fold": sum(labels[r.id] is not None for r in regions[:getattr(regions, "fold",
                                                                                          len(regions))]),
            "seconds": time.perf_counter() - t0}


def summarise(rows: list[dict], title: str) -> None:
    if not rows:
        return
    print(f"\n{title}: {len(rows)} run(s)")
    head = (f"{'bug':24} {'seed':>4} {'rank':>4} {'regions':>9} {'p@5':>5} {'p@fold':>6} {'fail before->after':>19} "
            f"{'rest Δ pts':>10} {'lam':>4} {'wall s':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['bug']:24} {r['seed']:>4} {r['rank']!s:>4} {r['above_fold']:>3}/{r['n_regions']:<5} "
              f"{r['precision_at_5']:5.2f} {_fmt(r['precision_above_fold']):>6} {r['fail_before']:8.1%} -> "
              f"{r['fail_after']:6.1%} {100 * (r['rest_after'] - r['rest_before']):10.2f} {_fmt(r['lam']):>4} "
              f"{r['seconds']:7.0f}")
    n = len(rows)
    top3 = sum(r["top3"] for r in rows)
    fixed = sum(r["fail_after"] >= 0.8 and r["rest_after"] - r["rest_before"] >= -0.005 for r in rows)
    print(f"targets: planted pair in top 3 {top3}/{n} (>= 90%) | fixed to >= 80% with rest >= -0.5 pt {fixed}/{n} "
          f"(>= 90%) | precision of the regions above the fold (<= 5, what a person is asked to label) "
          f"{np.mean([r['precision_above_fold'] or 0.0 for r in rows]):.2f} (>= 0.6), of the first five of the whole "
          f"list {np.mean([r['precision_at_5'] for r in rows]):.2f} | "
          f"max wall {max(r['seconds'] for r in rows):.0f} s (<= 600 s on 2 cores)")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DATA), help="folder with the four MNIST IDX files")
    ap.add_argument("--half", choices=("tuning", "heldout", "both"), default="both")
    ap.add_argument("--bugs", default=None, help="explicit bugs, e.g. substyle:4:9,cue:0:6:patch (overrides --half)")
    ap.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    ap.add_argument("--n-train", type=int, default=None, help="training images (default: all 55k)")
    ap.add_argument("--n-test", type=int, default=None, help="test images (default: all 10k)")
    ap.add_argument("--n-cal", type=int, default=5000, help="calibration images = search seeds (default 5k)")
    ap.add_argument("--vae-steps", type=int, default=None,
                    help="cap the generator's steps below its default budget (smoke runs only; not the defaults)")
    ap.add_argument("--cnn-epochs", type=int, default=2)
    ap.add_argument("--cnn-width", type=int, default=16)
    ap.add_argument("--oracle-models", type=int, default=3)
    ap.add_argument("--clean", action="store_true", help="also run Defuse on a clean model per seed")
    ap.add_argument("--quick", action="store_true", help="one held-out bug, one seed, 12k training images")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--log", default=None, help="append one JSON line per run to this file")
    args = ap.parse_args(argv)
    try:
        probe = split_mnist(args.data, n_train=10, n_cal=10, n_test=10)
        del probe
    except Exception as exc:
        print(f"skipped: MNIST not available ({exc})")
        return 0
    if args.bugs:
        groups = [("chosen", parse_bugs(args.bugs))]
    else:
        groups = [(h, b) for h, b in (("tuning", TUNING), ("heldout", HELDOUT)) if args.half in (h, "both")]
    seeds = args.seeds
    if args.quick:
        groups, seeds = [("heldout", HELDOUT[:1])], seeds[:1]
        args.n_train = args.n_train or 12000
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {g: [] for g, _ in groups}
    cleans = []
    for seed in seeds:
        split = split_mnist(args.data, n_train=args.n_train, n_cal=args.n_cal, n_test=args.n_test, seed=seed)
        t = time.perf_counter()
        oracle = planted.OracleEnsemble(split.x_train, split.y_train, n_models=args.oracle_models,
                                        epochs=args.cnn_epochs, width=args.cnn_width, seed=seed)
        print(f"seed {seed}: {len(split.y_train)} train / {len(split.y_cal)} cal / {len(split.y_test)} test; "
              f"oracle ensemble {time.perf_counter() - t:.0f} s", flush=True)
        if args.clean:
            c = run_clean(split, seed, oracle, args)
            cleans.append(c)
            print(f"  clean: {c['n_regions']} regions ({c['above_fold']} above the fold), {c['confirmed']} confirmed "
                  f"({c['confirmed_above_fold']} above the fold)", flush=True)
        for g, bugs in groups:
            for b in bugs:
                sub = substyle(args.data, b) if b[0] == "substyle" else None
                r = run_bug(split, b, seed, oracle, args, sub)
                r["half"] = g
                results[g].append(r)
                print(f"  [{g}] {r['bug']} seed {seed}: rank {r['rank']} of {r['n_regions']} ({r['above_fold']} above "
                      f"the fold), p@5 {r['precision_at_5']:.2f}, failure {r['fail_before']:.1%} -> "
                      f"{r['fail_after']:.1%}, rest {100 * (r['rest_after'] - r['rest_before']):+.2f} pts, "
                      f"{r['seconds']:.0f} s (generator {r['seconds_generator']:.0f} s, {r['generator_stop']} after "
                      f"{r['generator_steps']} steps)", flush=True)
                if args.log:
                    with open(args.log, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(r) + "\n")
    for g, rows in results.items():
        summarise(rows, f"{g} half")
    if cleans:
        print("\nclean models: regions the oracle confirms as real errors per run (target <= 1): "
              + ", ".join(f"seed {c['seed']}: {c['confirmed']} ({c['confirmed_above_fold']} above the fold)"
                          for c in cleans))
    return 0


_CACHE: dict[str, np.ndarray] = {}


def substyle(folder: str, bug: tuple) -> np.ndarray:
    """Mask over the 70k images of the planted sub-style (k-means over all images of the class, fixed seed)."""
    key = bug_name(bug)
    if key not in _CACHE:
        _CACHE[key] = planted.substyle_mask(read_all_images(folder), read_all_labels(folder), bug[1], bug[2],
                                            share=(0.10, 0.30), seed=0)[0]
    return _CACHE[key]


def read_all_images(folder: str) -> np.ndarray:
    """All 70k images (train then test) as float32 (n, 1, 28, 28): the sub-style clusters are found over both."""
    if "x" not in _CACHE:
        from failsight.datasets.io import read_idx
        from failsight.datasets.mnist import find_mnist

        p = find_mnist(folder)
        _CACHE["x"] = np.concatenate([read_idx(p["train_x"]), read_idx(p["test_x"])]).astype(np.float32)[:, None] / 255
    return _CACHE["x"]


def read_all_labels(folder: str) -> np.ndarray:
    from failsight.datasets.io import read_idx
    from failsight.datasets.mnist import find_mnist

    p = find_mnist(folder)
    return np.concatenate([read_idx(p["train_y"]), read_idx(p["test_y"])]).astype(np.int64)


if __name__ == "__main__":
    sys.exit(main())
