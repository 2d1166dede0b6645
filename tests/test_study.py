import dataclasses
import json

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.datasets.shapes import shape_bias
from failsight.report import Report
from failsight.slices import compare, evaluate
from failsight.study import METRICS, PRESETS, VARIANTS, RunResult, SeedData, StudyConfig, run_study
from failsight.study.report import study_section
from failsight.study.shapes_colors import COMPARED_TASKS, TASK_LABELS, TASKS, _comparisons

# a grid small enough for every test run (a few seconds); the "small" preset is what CI runs end to end
TINY = {"seeds": (0, 1), "epochs": 2, "n_train": 320, "image_size": 16, "n_cue_train": 100, "n_conflict": 120,
        "cue_epochs": 2, "width": 4, "batch_size": 32, "pretrain_epochs": 1}


@pytest.fixture(scope="module")
def result():
    calls = []
    res = run_study(TINY, progress=False, callback=calls.append)
    # runs are engine tasks on every core: callbacks come in completion order, the result in plan order
    assert sorted((r.seed, r.variant) for r in calls) == sorted((r.seed, r.variant) for r in res.runs)
    assert [(r.seed, r.variant) for r in res.runs] == [(s, v) for s in (0, 1) for v in VARIANTS]
    return res


def test_grid_runs_every_variant_and_seed(result):
    cfg = result.config
    assert cfg.variants == tuple(VARIANTS) and cfg.seeds == (0, 1) and cfg.n_runs == 8
    assert {(r.variant, r.seed) for r in result.runs} == {(v, s) for v in VARIANTS for s in (0, 1)}
    assert len(result.table) == len(VARIANTS) * len(METRICS)
    assert [c.variant for c in result.comparisons] == ["frozen", "no_attention", "frozen_no_attention"]
    assert result.seconds > 0 and set(result.load_average) == {"start", "end"}
    for sd in result.seeds:
        assert len(sd.held_out) == 8 and len(sd.pairing) == 8
        assert sd.pretrain_loss is not None and sd.blank_mse > 0
        # the cue pairing uses seen combinations only
        assert not set(sd.pairing) & {(s, c) for s, c in sd.held_out}


def test_final_metrics_come_from_slices_evaluate(result):
    for run in result.runs:
        sd = next(s for s in result.seeds if s.seed == run.seed)
        for task in TASKS:
            rep = evaluate(sd.y_true[task], run.predictions[task], sd.groups[task])
            assert run.final[f"{task}_acc"] == pytest.approx(rep.overall)
            assert run.reports[task].overall == pytest.approx(rep.overall)
            assert run.reports[task].overall_ci == rep.overall_ci
            # learning curve's last epoch = the final evaluation; per-slice columns for shape and colour
            lc = run.curves[task]
            assert lc.overall.shape == (result.config.epochs,)
            assert lc.overall[-1] == pytest.approx(rep.overall)
            assert set(lc.slicings) == {"shape", "color"}
        assert run.shape_bias_curve.shape == (result.config.cue_epochs,)
        assert 0.0 <= run.final["shape_bias"] <= 1.0 or np.isnan(run.final["shape_bias"])


def test_shape_bias_is_geirhos_share_on_cue_conflict_images(result):
    # recompute from the stored cue-model predictions and the conflict images' factors
    from failsight.datasets.shapes import make_shapes

    run = result.run("baseline", 0)
    sd = result.seeds[0]
    names = dict(sd.pairing)  # shape -> its paired colour
    cfg = result.config
    pairs = list(sd.pairing)
    shapes = [s for s, _ in pairs]
    colors = [c for _, c in pairs]
    conflict = make_shapes(cfg.n_conflict, image_size=cfg.image_size, seed=sd.seed + 20_011,
                           combinations=[(s, names[t]) for s in shapes for t in shapes if t != s])
    shape_class = np.array([shapes.index(conflict.shape_names[i]) for i in conflict.shape_labels])
    color_class = np.array([colors.index(conflict.color_names[i]) for i in conflict.color_labels])
    pred = run.predictions["cue_conflict"]
    assert run.final["shape_bias"] == pytest.approx(shape_bias(pred == shape_class, pred == color_class),
                                                    nan_ok=True)


def test_table_is_mean_and_t_interval_over_seeds(result):
    for row in result.table:
        vals = [result.run(row.variant, s).final[row.metric] for s in (0, 1)]
        assert row.values == pytest.approx(tuple(vals), nan_ok=True)
        if np.isfinite(vals).all():
            assert row.mean == pytest.approx(np.mean(vals))
            assert row.ci_kind == "t over seeds"
            if row.ci is not None:
                assert 0.0 <= row.ci.low <= row.mean + 1e-12 <= row.ci.high + 2e-12 <= 1.0 + 2e-12
    rows = result.table_rows()
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert "shape bias" in result.summary()


def test_curves_average_the_seeds(result):
    for c in result.curves:
        runs = [result.run(c.variant, s) for s in (0, 1)]
        assert c.epochs.tolist() == [1, 2]
        np.testing.assert_allclose(c.mean["shape_acc"], np.mean([r.curves["shape"].overall for r in runs], axis=0))
        np.testing.assert_allclose(c.low["color_acc"], np.min([r.curves["color"].overall for r in runs], axis=0))
        assert set(c.mean) >= {"shape_acc", "color_acc", "object_acc", "zero_shot_acc", "shape_bias"}


def test_pooled_comparison_is_slices_compare_on_the_seeds_paired_predictions(result):
    cmp_ = result.comparison("no_attention")
    y, pb, pc, task, by_shape = [], [], [], [], []
    for sd in result.seeds:
        for t in COMPARED_TASKS:
            y.append(sd.y_true[t])
            pb.append(result.run("baseline", sd.seed).predictions[t])
            pc.append(result.run("no_attention", sd.seed).predictions[t])
            task += [TASK_LABELS[t]] * len(sd.y_true[t])
            by_shape += [f"{TASK_LABELS[t]} | {s}" for s in sd.groups[t]["shape"]]
    y, pb, pc = map(np.concatenate, (y, pb, pc))
    ref = compare(y, pb, pc, {"task": np.array(task), "task × shape": np.array(by_shape)}, alpha=0.05)
    pooled = {(r.slicing, r.slice): r for r in cmp_.pooled.rows}
    for r in ref.rows:
        got = pooled[r.slicing, r.slice]
        assert (got.n, got.lost, got.gained) == (r.n, r.lost, r.gained)
        assert got.delta == pytest.approx(r.delta)
    assert cmp_.pooled.overall.n == len(y)
    assert len(cmp_.per_seed) == 2
    for tv in cmp_.tasks:
        row = pooled["task", TASK_LABELS[tv.task]]
        assert (tv.n, tv.verdict) == (row.n, row.verdict) and tv.delta == pytest.approx(row.delta)
        assert len(tv.seed_deltas) == 2
    assert "vs baseline" in cmp_.summary()


def test_result_is_json_ready_and_section_renders(result, tmp_path):
    d = json.loads(result.to_json(allow_nan=False))
    assert d["config"]["n_train"] == TINY["n_train"]
    assert "predictions" not in d["runs"][0]
    sec = study_section(result)
    html = Report(title="t", created="fixed").add(sec).render()
    for text in ("zero-shot acc", "shape bias", "frozen + no attention", "Learning curves", "p (Holm)"):
        assert text in html
    assert html.count("data:image/svg+xml") >= 2
    path = Report(created="fixed").add(study_section(result)).write(tmp_path / "study.html")
    assert path.stat().st_size > 10_000


def test_study_is_reproducible():
    cfg = dict(TINY, seeds=(3,), variants=("baseline", "frozen_no_attention"), epochs=1, cue_epochs=1)
    a = run_study(cfg, progress=False, workers=1)
    b = run_study(cfg, progress=False, workers=2)  # same seeds from the task keys: same runs in worker processes
    for ra, rb in zip(a.runs, b.runs, strict=True):
        assert ra.final == pytest.approx(rb.final, nan_ok=True)
        for k in ra.predictions:
            np.testing.assert_array_equal(ra.predictions[k], rb.predictions[k])
    # one seed: intervals are the run's own Wilson interval
    row = a.row("baseline", "shape_acc")
    assert row.ci_kind == "wilson (one run)" and row.ci == a.run("baseline", 3).reports["shape"].overall_ci
    assert a.comparison("frozen_no_attention").tasks[0].seed_delta_ci is None


# ----------------------------------------------------------------------------- verdicts, known answers


def _synthetic(candidates):
    """Two seeds of labels/groups and runs whose predictions are constructed to a known answer."""
    rng = np.random.default_rng(0)
    cfg = StudyConfig(variants=("baseline", *candidates), seeds=(0, 1), epochs=1)
    shapes = np.array([f"s{i}" for i in range(8)])
    colors = np.array([f"c{i}" for i in range(8)])
    seeds, runs = [], []
    for seed in (0, 1):
        y, groups, preds = {}, {}, {}
        for t in COMPARED_TASKS:
            n = 800
            y[t] = rng.integers(0, 8, n)
            groups[t] = {"shape": shapes[rng.integers(0, 8, n)], "color": colors[np.arange(n) % 8]}
            right = rng.random(n) < 0.8
            preds[t] = np.where(right, y[t], (y[t] + 1) % 8)
        seeds.append(SeedData(seed, 100, {}, (), (), y, groups))
        dummy = {"reports": {}, "curves": {}, "shape_bias_curve": np.zeros(1), "loss": {}, "pretrain_loss": None,
                 "seconds": 0.0, "trainable_parameters": 0}
        runs.append(RunResult("baseline", seed, {"shape_bias": 0.2}, predictions=preds, **dummy))
        for v, make in candidates.items():
            runs.append(RunResult(v, seed, {"shape_bias": 0.3}, predictions=make(y, groups, preds), **dummy))
    return cfg, seeds, runs


def _colour_slice_broken(y, groups, preds):
    """Colour task: every 'c0' image wrong, but as many baseline errors elsewhere fixed (task holds)."""
    out = {k: v.copy() for k, v in preds.items()}
    t = "color"
    red = groups[t]["color"] == "c0"
    lost = red & (preds[t] == y[t])
    out[t][red] = (y[t][red] + 1) % 8
    fixable = np.flatnonzero(~red & (preds[t] != y[t]))
    out[t][fixable[: int(lost.sum())]] = y[t][fixable[: int(lost.sum())]]
    return out


def test_verdicts_flag_a_regressed_slice_behind_a_steady_task():
    cfg, seeds, runs = _synthetic({"frozen": lambda y, g, p: p, "no_attention": _colour_slice_broken})
    same, broken = _comparisons(cfg, seeds, runs)
    # identical predictions: nothing changes, nothing is flagged
    assert not same.partial_failure and same.task_partial_failures == ()
    assert {t.verdict for t in same.tasks} == {"no significant change"}
    assert all(t.delta == 0 for t in same.tasks)
    # one colour slice broken, the colour task as a whole holds: a partial failure on the colour task
    tasks = {t.task: t for t in broken.tasks}
    assert tasks["color"].verdict != "regressed" and tasks["color"].partial_failure
    assert broken.task_partial_failures == ("color",) and broken.partial_failure
    regressed = {str(r.slice) for r in broken.pooled.regressed}
    assert "colour task | c0" in regressed
    assert all(tasks[t].verdict == "no significant change" for t in ("shape", "object", "zero_shot"))
    assert tasks["color"].seeds_regressed == 0
    assert broken.shape_bias_delta == pytest.approx((0.1, 0.1))
    assert "PARTIAL FAILURE" in broken.summary()


# ----------------------------------------------------------------------------- configuration and errors


def test_presets_and_overrides():
    assert set(PRESETS) >= {"small", "default"}
    d = PRESETS["default"]
    assert d.variants == tuple(VARIANTS) and len(d.seeds) >= 3 and d.image_size == 32
    small = PRESETS["small"]
    assert small.n_runs <= d.n_runs and small.epochs * small.n_train < d.epochs * d.n_train
    with pytest.raises(FailsightInputError, match="unknown grid"):
        run_study("huge", progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"variants": ("no_attention", "wings")}, "unknown variant"),
    ({"variants": ("no_attention",)}, "include 'baseline'"),
    ({"variants": ("baseline", "baseline")}, "duplicates"),
    ({"seeds": ()}, "seeds is empty"),
    ({"seeds": (1, 1)}, "duplicates"),
    ({"n_train": 10}, "n_train"),
    ({"epochs": 0}, "epochs"),
    ({"image_size": 4}, "image_size"),
    ({"alpha": 1.5}, "alpha"),
    ({"colour_mode": "hsv"}, "unknown study setting"),
])
def test_bad_configuration(kwargs, match):
    with pytest.raises(FailsightInputError, match=match):
        run_study("small", progress=False, **kwargs)


def test_bad_grid_type_and_dict_keys():
    with pytest.raises(FailsightInputError, match="preset name"):
        run_study(3, progress=False)
    with pytest.raises(FailsightInputError, match="unknown study setting"):
        run_study({"epoch": 3}, progress=False)
    with pytest.raises(FailsightInputError, match="callback"):
        run_study(dataclasses.replace(PRESETS["small"], seeds=(0,)), progress=False, callback=1)


@pytest.mark.slow
def test_small_preset_end_to_end():
    res = run_study("small", progress=False)
    assert res.config.name == "small" and len(res.runs) == res.config.n_runs
    # colour is the easy cue: the baseline learns it well above chance (1/8) even in the small grid
    assert res.row("baseline", "color_acc").mean > 0.5
    Report(created="fixed").add(study_section(res)).render()
