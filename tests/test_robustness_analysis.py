"""Robustness analysis pipeline, its report section and the .npz / model loaders (tiny models, fast)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import average_precision_score, roc_auc_score

from failsight._validate import FailsightInputError
from failsight.datasets.digits import load_digits_images
from failsight.report.html import Report
from failsight.robustness import analysis as an
from failsight.robustness.analysis import (
    CURVE_THRESHOLDS,
    RobustnessAnalysis,
    analyze_robustness,
    default_shifts,
    synthetic_ood_images,
)
from failsight.robustness.evaluate import corrupted, evaluate
from failsight.robustness.io import load_labelled_images, load_model, normalize_images
from failsight.robustness.report import robustness_section, shift_heatmap_figure

SHIFTS = ("gaussian_noise", "defocus_blur", "fog", "contrast", "rotation")
SEV = (1, 5)
KW = dict(shifts=SHIFTS, severities=SEV, detection_sizes=(10, 40), n_trials=2, n_null_trials=4, n_permutations=50,
          reference_size=100, progress=False, seed=3)


def _as_torch(lda: LinearDiscriminantAnalysis) -> torch.nn.Module:
    lin = torch.nn.Linear(64, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(lda.coef_).float())
        lin.bias.copy_(torch.from_numpy(lda.intercept_).float())
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


@pytest.fixture(scope="module")
def data():
    x, y = load_digits_images()
    idx = np.random.default_rng(0).permutation(len(y))
    tr, ref, te = idx[:900], idx[900:1050], idx[1050:1250]
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[tr].reshape(len(tr), -1), y[tr])
    weak = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[tr[:60]].reshape(60, -1), y[tr[:60]])
    return {"x": x[te], "y": y[te], "x_ref": x[ref], "y_ref": y[ref], "model": _as_torch(lda), "lda": lda,
            "weak": _as_torch(weak), "x_ood": synthetic_ood_images(60, seed=1)}


@pytest.fixture(scope="module")
def analysis(data):
    return analyze_robustness(data["model"], data["x"], data["y"], x_reference=data["x_ref"],
                              y_reference=data["y_ref"], x_ood=data["x_ood"], num_threads=1, **KW)


def _probs(model, x):
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.asarray(x, np.float32))).double(), 1).numpy()


# ---------------------------------------------------------------------------------------------- analysis
def test_table_is_evaluate_and_recorded_outputs_change_nothing(data, analysis):
    assert isinstance(analysis, RobustnessAnalysis)
    ref = evaluate(data["model"], data["x"], data["y"], shifts=SHIFTS, severities=SEV, seed=3, progress=False)
    got = analysis.evaluation
    assert got.shifts == SHIFTS and got.severities == SEV
    for a, b in zip(got.rows, ref.rows, strict=True):
        assert (a.shift, a.severity) == (b.shift, b.severity)
        assert a.accuracy == pytest.approx(b.accuracy, abs=1e-12)
        assert a.ece == pytest.approx(b.ece, abs=1e-9)
        assert a.mean_confidence == pytest.approx(b.mean_confidence, abs=1e-9)
    assert analysis.n_test == 200 and analysis.n_reference == 150 and analysis.n_ood == 60
    assert analysis.image_shape == (1, 8, 8)


def test_confidence_curves_match_a_direct_computation(data, analysis):
    cv = analysis.curves
    assert cv.families == ("noise", "blur", "weather", "digital", "geometry")
    assert cv.accuracy.shape == (5, 2, len(CURVE_THRESHOLDS)) == cv.fraction.shape
    x, y, model = data["x"], data["y"], data["model"]
    p = _probs(model, corrupted(x, "fog", 5, seed=3))
    conf, ok = p.max(1), p.argmax(1) == y
    j = cv.families.index("weather")
    for k, t in enumerate(CURVE_THRESHOLDS):
        sel = conf >= t
        assert cv.fraction[j, 1, k] == pytest.approx(sel.mean())
        if sel.any():
            assert cv.accuracy[j, 1, k] == pytest.approx(ok[sel].mean())
        else:
            assert np.isnan(cv.accuracy[j, 1, k])
    assert cv.clean_fraction[0] == 1.0
    assert cv.clean_accuracy[0] == pytest.approx(analysis.clean_accuracy)
    assert cv.members["weather"] == ("fog",)


def test_sample_grids_hold_the_evaluated_images(data, analysis):
    i = analysis.sample_index
    assert set(analysis.samples) == set(SHIFTS)
    for name in ("fog", "rotation"):
        grid = analysis.samples[name]
        assert grid.shape == (1 + len(SEV), 1, 8, 8) and grid.dtype == np.float32
        np.testing.assert_array_equal(grid[0], data["x"][i])
        for k, s in enumerate(SEV, start=1):
            np.testing.assert_array_equal(grid[k], corrupted(data["x"], name, s, seed=3)[i])
    assert analysis.ood_samples.shape[1:] == (1, 8, 8)


def test_detection_table_shape_rates_and_power(analysis):
    cells = analysis.detection
    conds = 1 + 4 * len(SEV) + 1  # no shift, the four ImageNet-C families x severities, label shift
    assert len(cells) == conds * 3 * 2
    assert analysis.detection_sizes == (10, 40)
    assert {c.detector for c in cells} == {"bbsd", "mmd", "classifier"}
    for c in cells:
        want = 4 if c.kind == "none" else 2  # the false-alarm row has its own trial count
        assert len(c.p_values) == want and c.n_trials == want
        assert 0.0 <= c.detection_rate <= 1.0
        assert c.detection_rate == pytest.approx(np.mean(np.asarray(c.p_values) <= 0.05))
    # a strong shift is caught by every detector at the larger size
    for det in ("bbsd", "mmd", "classifier"):
        assert analysis.detection_cell(det, "digital", 5, 40).detection_rate == 1.0
    s = analysis.detection_settings
    assert s["representation"]["mmd"].startswith("penultimate features (64-d)")
    assert s["families"]["weather"] == ["fog"] and s["reference_size"] == 100
    with pytest.raises(FailsightInputError, match="no detection result"):
        analysis.detection_cell("bbsd", "color", 5)


def test_ood_metrics_agree_with_sklearn(data, analysis):
    assert set(analysis.ood) == {"msp", "max_logit", "energy", "entropy", "mahalanobis"}
    p_in, p_out = _probs(data["model"], data["x"]), _probs(data["model"], data["x_ood"])
    s = np.r_[p_in.max(1), p_out.max(1)]
    lab = np.r_[np.ones(len(p_in)), np.zeros(len(p_out))]
    m = analysis.ood["msp"]
    assert m.auroc == pytest.approx(roc_auc_score(lab, s))
    assert m.aupr_in == pytest.approx(average_precision_score(lab, s))
    assert (m.n_in, m.n_out) == (200, 60)
    # Mahalanobis on the penultimate features (here the flattened pixels) fitted on the reference set
    from failsight.robustness.ood import Mahalanobis

    maha = Mahalanobis().fit(data["x_ref"].reshape(150, -1).astype(np.float64), data["y_ref"])
    sm = np.r_[maha.score(data["x"].reshape(200, -1)), maha.score(data["x_ood"].reshape(60, -1))]
    assert analysis.ood["mahalanobis"].auroc == pytest.approx(roc_auc_score(lab, sm), abs=1e-6)


def test_json_is_strict_and_leaves_images_out(analysis):
    d = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    assert "samples" not in d and "ood_samples" not in d
    assert len(d["detection"]) == len(analysis.detection)
    assert d["evaluation"]["rows"][0]["shift"] == "clean"
    assert set(d["seconds"]) == {"evaluate", "detection", "ood", "total"}


def test_same_seed_same_result_and_threads_restored(data, analysis):
    before = torch.get_num_threads()
    again = analyze_robustness(data["model"], data["x"], data["y"], x_reference=data["x_ref"],
                               y_reference=data["y_ref"], x_ood=data["x_ood"], num_threads=1, **KW)
    assert torch.get_num_threads() == before
    a, b = analysis.to_dict(), again.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_two_worker_processes_give_the_identical_analysis(data, analysis):
    # conditions and detection trials run as engine tasks on 2 spawned workers; seeds follow task keys and
    # partials are folded in key order, so every number (floats included) equals the in-process run's
    res = analyze_robustness(data["model"], data["x"], data["y"], x_reference=data["x_ref"],
                             y_reference=data["y_ref"], x_ood=data["x_ood"], workers=2, **KW)
    a, b = analysis.to_dict(), res.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    for name in SHIFTS:
        np.testing.assert_array_equal(res.samples[name], analysis.samples[name])


def test_without_reference_half_of_x_is_the_reference(data):
    res = analyze_robustness(data["model"], data["x"], data["y"], x_ood=data["x_ood"], **{
        **KW, "shifts": ("contrast",), "severities": (3,)})
    assert res.n_reference == 100 and res.detection_settings["reference"] == "random half of x"
    assert res.ood["msp"].n_in == 100  # the half not used to fit Mahalanobis
    assert "mahalanobis" in res.ood and "labels" in res.ood_settings["mahalanobis"]
    assert {c.shift for c in res.detection} == {"no shift", "digital", "label shift"}


def test_callable_model_returning_probabilities(data):
    lda = data["lda"]
    res = analyze_robustness(lambda xb: lda.predict_proba(xb.reshape(len(xb), -1)), data["x"], data["y"],
                             x_reference=data["x_ref"], x_ood=data["x_ood"],
                             **{**KW, "shifts": ("gaussian_noise", "contrast"), "detection_sizes": (20,)})
    assert res.evaluation.output_kind == "probabilities"
    assert set(res.ood) == {"msp", "entropy"}
    assert res.detection_settings["representation"]["mmd"] == "probabilities"
    assert any("need logits" in n for n in res.notes) and any("Mahalanobis" in n for n in res.notes)


def test_small_pools_drop_sizes_and_default_shifts(data):
    res = analyze_robustness(data["model"], data["x"][:30], data["y"][:30], x_reference=data["x_ref"][:20],
                             **{**KW, "shifts": ("contrast",), "severities": 5, "detection_sizes": (10, 40),
                                "n_null_trials": None})
    assert res.detection_sizes == (10,)
    assert {c.n_trials for c in res.detection if c.kind == "none"} == {20}  # default max(n_trials, 20)
    assert any("exceed" in n for n in res.notes)
    assert "saturate" not in default_shifts(1) and "saturate" in default_shifts(3)
    assert len(default_shifts(3)) == 30 and "hue_rotation" not in default_shifts(1)


@pytest.mark.parametrize("kwargs, match", [
    ({"shifts": ["fogg"]}, "unknown shift"),
    ({"severities": (0, 3)}, "severities must be integers in 1..5"),
    ({"detection_sizes": (5,)}, "detection_sizes must be integers >= 10"),
    ({"detection_families": ["color"]}, "detection_families"),
    ({"y_reference": np.zeros(10, int)}, "y_reference was given without x_reference"),
    ({"x_ood": np.zeros((4, 3, 8, 8), np.float32)}, "x_ood has images of shape"),
    ({"x_reference": np.zeros((4, 1, 8, 8)) + 2}, "x_reference must hold images with values in"),
    ({"n_trials": 0}, "n_trials must be >= 1"),
    ({"label_shift_alpha": -1}, "label_shift_alpha"),
])
def test_bad_input_is_explained(data, kwargs, match):
    kw = {**KW, "shifts": ("contrast",), **kwargs}
    with pytest.raises(FailsightInputError, match=match):
        analyze_robustness(data["model"], data["x"], data["y"], **kw)


def test_bad_images_and_models(data):
    with pytest.raises(FailsightInputError, match="scale them"):
        analyze_robustness(data["model"], data["x"] * 255, data["y"], **KW)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        analyze_robustness(data["model"], data["x"], data["y"][:10], **KW)
    with pytest.raises(FailsightInputError, match="model must be"):
        analyze_robustness(42, data["x"], data["y"], **KW)
    rgb_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 10))
    with pytest.raises(FailsightInputError, match=r"the model failed on a batch of images of shape \(200, 1, 8, 8\)"):
        analyze_robustness(rgb_model, data["x"], data["y"], **KW)


def test_synthetic_ood_images_are_deterministic():
    a, b = synthetic_ood_images(11, seed=4), synthetic_ood_images(11, seed=4)
    assert a.shape == (11, 1, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a[:5].reshape(5, -1).max(1).min() == pytest.approx(1.0)
    assert synthetic_ood_images(4, image_size=16, channels=3).shape == (4, 3, 16, 16)


# ---------------------------------------------------------------------------------------------- report
def _figures(html: str) -> int:
    return len(re.findall(r'<img src="data:image/', html)) + len(re.findall(r'class="svg-inline"', html))


def test_section_renders_with_figures_tables_and_summary(analysis):
    sec = robustness_section(analysis)
    assert sec.id == "robustness" and sec.status == "ok"
    html = Report(title="t", created="fixed").add(sec).render()
    # 2 heatmaps, overconfidence, curves, sample grid, OOD strip
    assert _figures(html) == 6
    assert html.count("<table>") == 3  # worst conditions, detection, OOD
    assert "BBSD n=40" in html and "no shift" in html and "label shift" in html
    assert "AUROC" in html and "Mahalanobis" in html
    worst = max(analysis.evaluation.rows[1:], key=lambda r: r.accuracy_drop)
    assert f"under {worst.shift} s{worst.severity}" in html
    assert analysis.summary() in html.replace("&#39;", "'").replace("&amp;", "&")
    labels = [k.label for k in sec.key_figures]
    assert labels[:4] == ["clean accuracy", "mean accuracy under shift", "worst condition", "mean overconfidence"]
    assert "OOD AUROC" in labels and "mCE" not in labels


def test_section_with_baseline_shows_mce(data):
    res = analyze_robustness(data["model"], data["x"], data["y"], baseline=data["weak"],
                             **{**KW, "shifts": ("gaussian_noise", "contrast", "rotation"), "detection_sizes": ()})
    assert res.detection == () and np.isfinite(res.mce_imagenet_c)
    ev = res.evaluation
    assert res.mce_imagenet_c == pytest.approx(np.mean([ev.ce["gaussian_noise"], ev.ce["contrast"]]))
    assert any("2 of the 15" in n for n in res.notes)
    sec = robustness_section(res)
    html = Report(title="t", created="fixed").add(sec).render()
    assert "Corruption error against the baseline" in html and "relative CE" in html
    assert "mCE" in [k.label for k in sec.key_figures]
    assert _figures(html) == 5  # no OOD strip
    assert "Shift detection was not run" in html


def test_heatmap_rejects_mismatched_shapes():
    with pytest.raises(FailsightInputError, match="heatmap needs"):
        shift_heatmap_figure(np.zeros((2, 3)), ["a", "b"], [1, 3], ["f", "f"], title="t")


# ---------------------------------------------------------------------------------------------- io
def test_load_labelled_images_normalises_and_says_so(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(5, 9, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=nhwc, y=np.arange(5))
    li = load_labelled_images(tmp_path / "a.npz")
    x, y = li
    assert list(y) == [0, 1, 2, 3, 4]
    assert x.shape == (5, 3, 9, 10) and x.dtype == np.float32 and li.layout == "NHWC"
    np.testing.assert_allclose(x, nhwc.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    assert any("transposed" in n for n in li.notes) and any("divided by 255" in n for n in li.notes)
    assert li.original_shape == (5, 9, 10, 3) and li.original_dtype == "uint8"
    np.savez(tmp_path / "b.npz", images=rng.uniform(size=(4, 8, 8)), labels=[0, 1, 1, 0])
    li = load_labelled_images(tmp_path / "b.npz")
    assert li.x.shape == (4, 1, 8, 8) and li.layout == "NHW" and list(li.y) == [0, 1, 1, 0]
    np.savez(tmp_path / "c.npz", x=rng.uniform(size=(4, 1, 8, 8)).astype(np.float32))
    assert load_labelled_images(tmp_path / "c.npz", require_labels=False).y is None
    assert load_labelled_images(tmp_path / "c.npz", require_labels=False).notes == ()


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((3, 1, 8, 8))}, r"must hold 'x' \(images\) and 'y' \(labels\) \(found: x\)"),
    ({"x": np.full((3, 1, 8, 8), 200.0), "y": [0, 1, 2]}, "divide by 255"),
    ({"x": np.full((3, 1, 8, 8), -0.5), "y": [0, 1, 2]}, "standardised"),
    ({"x": np.zeros((3, 8, 8, 4)), "y": [0, 1, 2]}, "RGBA"),
    ({"x": np.zeros((3, 5, 8, 8)), "y": [0, 1, 2]}, "C = 1 or 3"),
    ({"x": np.zeros((3, 1, 4, 4)), "y": [0, 1, 2]}, "at least 8"),
    ({"x": np.full((3, 1, 8, 8), 300, np.int64), "y": [0, 1, 2]}, "0..255"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": [0, 1]}, "different numbers of samples"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": [0.5, 1, 2]}, "non-integer"),
    ({"x": np.zeros((8, 8)), "y": [0]}, "batch axis"),
])
def test_load_labelled_images_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(FailsightInputError, match=match):
        load_labelled_images(tmp_path / "bad.npz")


def test_load_files_that_are_not_npz(tmp_path):
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_labelled_images(tmp_path / "missing.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 1, 8, 8)))
    with pytest.raises(FailsightInputError, match="single array"):
        load_labelled_images(tmp_path / "one.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FailsightInputError, match=r"not a readable \.npz"):
        load_labelled_images(tmp_path / "junk.npz")
    with pytest.raises(FailsightInputError, match="NaN"):
        normalize_images(np.full((2, 1, 8, 8), np.nan))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_load_model_torchscript_pickled_and_state_dict(tmp_path, data):
    model = data["model"]
    x = torch.from_numpy(data["x"][:4])
    torch.save(model, tmp_path / "pickled.pt")
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    for name in ("pickled.pt", "scripted.pt"):
        m = load_model(tmp_path / name)
        assert not m.training
        torch.testing.assert_close(m(x), model(x))
    with pytest.raises(FailsightInputError, match="state_dict"):
        load_model(tmp_path / "weights.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FailsightInputError, match="could not load a model"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_model(tmp_path / "none.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_model_runs_through_the_analysis(tmp_path, data):
    torch.jit.script(data["model"]).save(str(tmp_path / "m.pt"))
    res = analyze_robustness(load_model(tmp_path / "m.pt"), data["x"], data["y"], x_reference=data["x_ref"],
                             **{**KW, "shifts": ("contrast",), "severities": (5,), "detection_sizes": (20,)})
    assert res.evaluation.clean_accuracy > 0.85
    assert len(res.detection) == 3 * 3
    # scripted modules do not run forward hooks: MMD and the classifier test fall back to the logits
    assert res.detection_settings["representation"]["mmd"] == "logits"


def test_large_test_sets_draw_detection_samples_from_a_capped_pool(data, monkeypatch):
    monkeypatch.setattr(an, "_MAX_POOL", 40)
    res = analyze_robustness(data["model"], data["x"], data["y"], x_reference=data["x_ref"],
                             **{**KW, "shifts": ("contrast",), "severities": (5,), "detection_sizes": (10, 30)})
    assert res.detection_settings["pool_size"] == 40
    assert any("random subset of 40" in n for n in res.notes)
    assert res.detection_cell("mmd", "digital", 5, 30).detection_rate == 1.0
