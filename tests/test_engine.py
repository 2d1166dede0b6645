"""The sweep engine: keyed seeds, merges, key-ordered folds, executors, failures, progress, bounded partials."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest

from _engine_kinds import draw as _draw
from _engine_kinds import register
from failsight._validate import FailsightInputError
from failsight.engine import (
    LocalExecutor,
    Plan,
    SerialExecutor,
    SweepError,
    TaskKind,
    fold_partials,
    run_sweep,
    stable_key_hash,
    task_rng,
)
from failsight.progress import progress_bar
from failsight.reliability._binning import BinCounts, top_label_counts, uniform_edges
from failsight.robustness.evaluate import ConditionStats

register()


def _stats(seed: int, n: int, k: int = 5) -> ConditionStats:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return ConditionStats.of(rng.integers(0, k, n), p)


def _same(a: ConditionStats, b: ConditionStats, exact: bool) -> None:
    assert (a.n, a.hits) == (b.n, b.hits)
    np.testing.assert_array_equal(a.curve_n, b.curve_n)
    np.testing.assert_array_equal(a.curve_hits, b.curve_hits)
    np.testing.assert_array_equal(a.bins.count, b.bins.count)
    np.testing.assert_array_equal(a.bins.sum_hit, b.bins.sum_hit)
    fa = np.r_[a.brier, a.nll, a.conf, a.bins.sum_value.ravel()]
    fb = np.r_[b.brier, b.nll, b.conf, b.bins.sum_value.ravel()]
    if exact:
        np.testing.assert_array_equal(fa, fb)
    else:  # float sums regrouped: three additions of O(n)-sized sums differ by a few ulps at most
        np.testing.assert_allclose(fa, fb, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------- keys and seeds
def test_stable_key_hash_is_fixed_and_not_pythons_hash():
    assert stable_key_hash(7) == 7 and stable_key_hash(np.int64(3)) == 3
    # blake2b of the tagged text: a constant, the same in every process (Python's str hash is salted)
    assert stable_key_hash("gaussian_noise") == stable_key_hash("gaussian_noise")
    assert stable_key_hash("a") != stable_key_hash("b") and stable_key_hash(-1) != stable_key_hash(1)
    assert 0 <= stable_key_hash("clean") < 2**32 and 0 <= stable_key_hash(2**40) < 2**32


def test_stable_key_hash_agrees_in_worker_processes():
    keys = [("clean", 0), ("gaussian_noise", 3, "trial", -2)]
    got = run_sweep(Plan.build("test.hash", keys), {}, executor=LocalExecutor(2, mode="process"), progress=False)
    assert got == [[stable_key_hash(p) for p in k] for k in keys]


def test_task_seeds_depend_on_key_not_order_or_other_tasks():
    ctx = {"seed": 11}
    small = run_sweep(Plan.build("test.draw", [("fog", 1), ("fog", 3)]), ctx, workers=1, progress=False)
    big = run_sweep(Plan.build("test.draw", [("snow", 5), ("fog", 3), ("clean", 0), ("fog", 1)]), ctx, workers=1,
                    progress=False)
    np.testing.assert_array_equal(small[0], big[3])
    np.testing.assert_array_equal(small[1], big[1])
    assert not np.array_equal(big[1], big[3])  # different keys, different streams
    other = run_sweep(Plan.build("test.draw", [("fog", 1)]), {"seed": 12}, workers=1, progress=False)
    assert not np.array_equal(other[0], small[0])


def test_plan_refuses_duplicate_keys_and_fingerprints_content():
    with pytest.raises(FailsightInputError, match="unique"):
        Plan.build("test.draw", [("a", 1), ("a", 1)])
    a = Plan.build("test.draw", [("a", 1)], params={"n": 1})
    assert a.fingerprint() == Plan.build("test.draw", [("a", 1)], params={"n": 1}).fingerprint()
    assert a.fingerprint() != Plan.build("test.draw", [("a", 1)], params={"n": 2}).fingerprint()


# ---------------------------------------------------------------------------------------------- merges
def test_condition_stats_merge_is_associative_with_identity():
    a, b, c = _stats(0, 300), _stats(1, 257), _stats(2, 1000)
    _same(ConditionStats.empty().merge(a), a, exact=True)
    _same(a.merge(ConditionStats.empty()), a, exact=True)
    _same(a.merge(b).merge(c), a.merge(b.merge(c)), exact=False)
    m = a.merge(b).metrics()
    assert m["accuracy"] == (a.hits + b.hits) / (a.n + b.n)
    assert np.isnan(ConditionStats.empty().metrics()["ece"])


def test_merged_stats_equal_the_metrics_of_all_rows():
    from failsight.reliability.metrics import brier_score, ece, nll

    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), size=900)
    y = rng.integers(0, 4, 900)
    merged = ConditionStats.empty()
    for lo in range(0, 900, 256):
        merged = merged.merge(ConditionStats.of(y[lo:lo + 256], p[lo:lo + 256]))
    m = merged.metrics()
    # sums over 900 rows regrouped in blocks: relative differences are a few float64 ulps
    assert m["ece"] == pytest.approx(ece(y, p), rel=1e-12)
    assert m["brier"] == pytest.approx(brier_score(y, p), rel=1e-12)
    assert m["nll"] == pytest.approx(nll(y, p), rel=1e-12)


def test_bincounts_empty_merge_and_edge_check():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=400)
    y = rng.integers(0, 3, 400)
    whole = top_label_counts(y, p, 10)
    parts = top_label_counts(y[:150], p[:150], 10).merge(top_label_counts(y[150:], p[150:], 10))
    np.testing.assert_array_equal(parts.count, whole.count)
    np.testing.assert_array_equal(parts.sum_hit, whole.sum_hit)
    np.testing.assert_allclose(parts.sum_value, whole.sum_value, rtol=1e-13)
    empty = BinCounts.empty(uniform_edges(10))
    assert empty.merge(whole).n == 400 and np.array_equal(empty.merge(whole).sum_value, whole.sum_value)
    with pytest.raises(FailsightInputError, match="different bin edges"):
        whole.merge(BinCounts.empty(uniform_edges(5)))


def test_key_ordered_fold_is_bit_identical_for_any_completion_order():
    kind = TaskKind("test.sum", run=_draw, init=ConditionStats.empty, merge=lambda a, b: a.merge(b))
    parts = [(i, _stats(i, 100 + 37 * i)) for i in range(12)]
    want = fold_partials(kind, parts)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [parts[i] for i in rng.permutation(len(parts))]
        _same(fold_partials(kind, shuffled), want, exact=True)
    with pytest.raises(FailsightInputError, match="not mergeable"):
        fold_partials(TaskKind("test.x", run=_draw, mergeable=False), parts)


# ---------------------------------------------------------------------------------------------- executors
@pytest.mark.parametrize("make", [lambda: SerialExecutor(), lambda: LocalExecutor(2, mode="process"),
                                  lambda: LocalExecutor(2, mode="thread")], ids=["serial", "process", "thread"])
def test_executors_agree_and_return_plan_order(make):
    keys = [(f"c{i}", i % 3) for i in range(9)]
    with make() as ex:
        got = run_sweep(Plan.build("test.draw", keys), {"seed": 4}, executor=ex, progress=False)
    want = [task_rng(4, "test", k).random(4) for k in keys]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("workers", [1, 2])
def test_failures_are_structured(workers):
    plan = Plan.build("test.fail", [("ok",), ("bad",), ("ok2",)])
    with pytest.raises(SweepError) as info:
        run_sweep(plan, {}, workers=workers, progress=False)
    (f,) = info.value.failures
    assert (f.kind, f.key, f.error, f.message) == ("test.fail", ("bad",), "ValueError", "boom")
    assert "Traceback" in f.traceback and f.to_dict()["key"] == ["bad"]
    with pytest.raises(FailsightInputError, match="fix the input"):
        run_sweep(Plan.build("test.fail", [("input",)]), {}, workers=workers, progress=False)


def test_unpicklable_context_runs_on_threads():
    ex = LocalExecutor(2)
    ctx = {"seed": 1, "f": lambda v: v}  # a lambda does not pickle: auto mode falls back to threads
    with ex:
        got = run_sweep(Plan.build("test.draw", [("a",), ("b",)]), ctx, executor=ex, progress=False)
    assert ex.last_mode == "thread"
    np.testing.assert_array_equal(got[1], task_rng(1, "test", ("b",)).random(4))
    with pytest.raises(FailsightInputError, match="cannot be sent"):
        run_sweep(Plan.build("test.draw", [("a",)]), ctx, executor=LocalExecutor(2, mode="process"), progress=False)


def test_bad_backend_and_workers():
    with pytest.raises(FailsightInputError, match="backend"):
        run_sweep(Plan.build("test.draw", [("a",)]), {"seed": 0}, backend="dask", progress=False)
    with pytest.raises(FailsightInputError, match="workers"):
        run_sweep(Plan.build("test.draw", [("a",)]), {"seed": 0}, workers=0, progress=False)


# ---------------------------------------------------------------------------------------------- memory
def test_condition_partials_do_not_grow_with_conditions_or_rows():
    """A condition's partial is O(bins + thresholds): the same size for 2 or 8 conditions and 200 or 600 rows."""
    import torch

    from failsight.robustness.evaluate import _Runner, _sweep_conditions

    rng = np.random.default_rng(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def sizes(n: int, shifts: tuple[str, ...]) -> list[int]:
        x = rng.uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, n)
        r = _Runner(model, 128)
        r.decide(x[:10])
        conds = [("clean", 0)] + [(s, 3) for s in shifts]
        parts = _sweep_conditions([r], x, y, conds, 0, workers=1, progress=False)
        return [len(pickle.dumps(p)) for p in parts[1:]]

    few = sizes(200, ("gaussian_noise", "contrast"))
    many = sizes(600, ("gaussian_noise", "contrast", "fog", "pixelate", "rotation", "snow", "zoom_blur"))
    assert len(set(few + many)) <= 2 and max(few + many) < 4000  # a few kB, whatever n and the condition count


# ---------------------------------------------------------------------------------------------- progress
def test_progress_log_lines_have_step_counts_elapsed_and_eta():
    buf = io.StringIO()
    with progress_bar("robustness", mode="log", stream=buf) as bar:
        t = bar.add_task("robustness", total=4)
        bar.update(t, advance=1, info="fog s1")
        bar.interval = 0.0  # every update now writes a line
        bar.update(t, advance=1, info="fog s3")
        bar.update(t, advance=2)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[failsight] robustness: 0/4")
    assert re.search(r"2/4 \(fog s3\) elapsed \d+:\d\d, ETA \d+:\d\d", lines[1])
    assert lines[-1].endswith("done") and "4/4" in lines[-1]
    silent = io.StringIO()
    with progress_bar("x", enabled=False, stream=silent) as bar:
        bar.update(bar.add_task("x", total=2), advance=2)
    assert silent.getvalue() == ""


def test_script_without_main_guard_falls_back_to_this_process(tmp_path):
    """A user script without ``if __name__ == "__main__":``: the workers re-import it and die while starting; the
    sweep finishes in the calling process with the same results and a warning that names the fix."""
    import os
    import subprocess
    import sys

    script = tmp_path / "user_script.py"
    script.write_text(
        "import warnings\n"
        "from failsight.engine import LocalExecutor, Plan, run_sweep\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    with LocalExecutor(2) as ex:\n"
        "        plan = Plan.build('engine.noop', [(i,) for i in range(5)])\n"
        "        first = run_sweep(plan, None, executor=ex, progress=False)\n"
        "        second = run_sweep(plan, None, executor=ex, progress=False)  # later stages: no new workers\n"
        "print('RESULT', first == second == [(i,) for i in range(5)],\n"
        "      any('__main__' in str(w.message) for w in caught), ex.last_mode)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert "RESULT True True serial (workers stopped)" in out.stdout, out.stdout + out.stderr[-3000:]


def test_conformal_shift_tasks_identical_for_any_worker_count():
    """The audit's conformal-coverage-under-shift tasks: the same outputs in this process and on 2 worker
    processes (each task on one thread, seeds from the audit seed), in plan order."""
    import failsight.auditing.core  # noqa: F401 - registers the task kind
    from failsight.models import SmallCNN
    from failsight.models.adapters import as_model

    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    ctx = {"x": x, "seed": 3, "adapter": as_model(SmallCNN(1, 10, 8, width=4, seed=0).eval()), "batch_size": None}
    plan = Plan.build("audit.conformal_shift", [("gaussian_noise", 3), ("contrast", 1), ("jpeg_compression", 5)])
    one = run_sweep(plan, ctx, executor=SerialExecutor(threads=1), progress=False)
    with LocalExecutor(2) as ex:
        two = run_sweep(plan, ctx, executor=ex, progress=False)
    assert [o.shape for o in one] == [(40, 10)] * 3
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
