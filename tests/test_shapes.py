import colorsys
import itertools
import json
import time

import numpy as np
import pytest

from failsight._validate import FailsightInputError
from failsight.datasets.shapes import (
    COLORS,
    DEFAULT_COLORS,
    DEFAULT_SHAPES,
    SHAPES,
    color_table,
    cue_conflict_split,
    iid_split,
    make_shapes,
    shape_bias,
    zero_shot_split,
)


@pytest.fixture(scope="module")
def data():
    return make_shapes(1200, seed=3, return_masks=True)


def test_shapes_and_labels(data):
    assert data.images.shape == (1200, 3, 32, 32) and data.images.dtype == np.float32
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert len(DEFAULT_SHAPES) >= 8 and len(DEFAULT_COLORS) >= 8
    assert data.shape_names == DEFAULT_SHAPES and data.color_names == DEFAULT_COLORS
    f = data.factors
    np.testing.assert_array_equal(data.labels, data.shape_labels * len(DEFAULT_COLORS) + data.color_labels)
    np.testing.assert_array_equal(f.shape, data.shape_labels)
    np.testing.assert_array_equal(f.color, data.color_labels)
    assert data.n_classes == 64 and data.object_label("star", "red") == 3 * 8 + 0
    # every combination appears, balanced to within one image
    counts = np.bincount(data.labels, minlength=64)
    assert counts.max() - counts.min() <= 1
    assert ((f.scale >= 0.2) & (f.scale <= 0.32)).all()
    assert ((f.rotation >= 0) & (f.rotation < 360)).all()
    assert ((f.x >= f.scale) & (f.x <= 1 - f.scale) & (f.y >= f.scale) & (f.y <= 1 - f.scale)).all()


def test_factor_table_records_and_dict(data):
    f = data.factors
    d = f.as_dict()
    assert set(d) == {"shape", "color", "x", "y", "scale", "rotation"}
    assert all(len(v) == len(data) for v in d.values())
    rec = f.to_records()
    assert len(rec) == len(data)
    i = 17
    assert rec[i]["shape"] == DEFAULT_SHAPES[f.shape[i]] and rec[i]["color"] == DEFAULT_COLORS[f.color[i]]
    assert rec[i]["x"] == pytest.approx(f.x[i]) and rec[i]["rotation"] == pytest.approx(f.rotation[i])
    json.dumps(f.subset(np.arange(3)).to_dict())  # JSON-ready
    assert len(f.subset(np.arange(5))) == 5
    g = data.groups()
    assert g["object"][i] == f"{rec[i]['color']} {rec[i]['shape']}"


def test_deterministic_with_seed():
    a = make_shapes(300, seed=11, texture=True, clutter=True)
    b = make_shapes(300, seed=11, texture=True, clutter=True)
    c = make_shapes(300, seed=12, texture=True, clutter=True)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.factors.rotation, b.factors.rotation)
    assert not np.array_equal(a.images, c.images)


def test_chunked_rendering_does_not_change_images(monkeypatch):
    import failsight.datasets.shapes as shapes_mod

    a = make_shapes(150, seed=5, texture=True, clutter=True)
    monkeypatch.setattr(shapes_mod, "_CHUNK", 7)
    b = make_shapes(150, seed=5, texture=True, clutter=True)
    np.testing.assert_array_equal(a.images, b.images)


def test_object_pixels_have_the_factor_colour(data):
    palette = np.array([COLORS[c] for c in DEFAULT_COLORS], dtype=np.float32)
    col = palette[data.color_labels][:, :, None, None]
    # black background, no texture: every pixel is coverage * colour, interior pixels exactly the colour
    np.testing.assert_allclose(data.images, data.masks[:, None] * col, atol=1e-6)
    full = data.masks == 1.0
    assert full.sum(axis=(1, 2)).min() > 10  # every object has a solid interior
    img = np.moveaxis(data.images, 1, -1)  # (n, H, W, 3)
    np.testing.assert_allclose(img[full], np.repeat(palette[data.color_labels], full.sum(axis=(1, 2)), axis=0),
                               atol=1e-6)


def test_texture_keeps_hue_and_clutter_is_grey():
    d = make_shapes(200, seed=1, texture=True, clutter=True, return_masks=True)
    palette = np.array([COLORS[c] for c in DEFAULT_COLORS], dtype=np.float32)
    full = d.masks == 1.0
    img = np.moveaxis(d.images, 1, -1)[full]  # (m, 3) interior pixels
    want = np.repeat(palette[d.color_labels], full.sum(axis=(1, 2)), axis=0)
    ratio = img / want
    assert ratio.min() > 0.35 and ratio.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(3, axis=1), atol=1e-4)  # same factor per channel
    assert ratio.std() > 0.05  # the texture really modulates brightness
    bg = np.moveaxis(d.images, 1, -1)[d.masks == 0]
    np.testing.assert_allclose(bg, bg[:, :1].repeat(3, axis=1), atol=1e-6)  # grey clutter
    assert bg.max() > 0.1


@pytest.mark.parametrize("size", [32, 48])
def test_object_centroid_is_at_xy(size):
    d = make_shapes(600, image_size=size, shapes=SHAPES, colors=None, seed=2, return_masks=True)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    a = d.masks
    cx = (a * xs).sum(axis=(1, 2)) / a.sum(axis=(1, 2))
    cy = (a * ys).sum(axis=(1, 2)) / a.sum(axis=(1, 2))
    err = np.hypot(cx - d.factors.x * size, cy - d.factors.y * size)
    assert err.max() < 0.3  # pixels
    # object size follows the scale factor: coverage area ~ scale^2 within each shape
    area = a.sum(axis=(1, 2)) / (d.factors.scale * size) ** 2
    for s in range(len(SHAPES)):
        rel = area[d.shape_labels == s]
        assert rel.std() / rel.mean() < 0.06


def test_shapes_are_distinct_and_rotate():
    # the same pose drawn for every shape: masks must differ pairwise, and rotation must move the mask
    n_s = len(SHAPES)
    d = make_shapes(n_s, image_size=48, shapes=SHAPES, colors=["red"], seed=0, return_masks=True,
                    combinations=[(s, 0) for s in range(n_s)])
    m = d.masks > 0.5
    for i, j in itertools.combinations(range(n_s), 2):
        inter = (m[i] & m[j]).sum()
        union = (m[i] | m[j]).sum()
        assert inter / union < 0.97
    assert len(set(SHAPES)) >= 10


def test_colours_are_distinct_in_hue():
    hues = []
    for name in DEFAULT_COLORS:
        h, s, v = colorsys.rgb_to_hsv(*COLORS[name])
        assert s > 0.7 and v > 0.7
        hues.append(360 * h)
    gaps = [min(abs(a - b), 360 - abs(a - b)) for a, b in itertools.combinations(hues, 2)]
    assert min(gaps) >= 20
    assert {r["color"] for r in color_table()} == set(COLORS)


def test_unknown_names_list_valid_ones():
    with pytest.raises(FailsightInputError, match=r"unknown shape.*'circle'"):
        make_shapes(10, shapes=["circle", "blob"])
    with pytest.raises(FailsightInputError, match=r"unknown colour.*'red'"):
        make_shapes(10, colors=["red", "chartreuse"])
    with pytest.raises(FailsightInputError, match="duplicates"):
        make_shapes(10, colors=["red", "red"])
    with pytest.raises(FailsightInputError, match="unknown shape"):
        make_shapes(10, combinations=[("blob", "red")])
    with pytest.raises(FailsightInputError, match=">= 1"):
        make_shapes(0)
    with pytest.raises(FailsightInputError, match="scale_range"):
        make_shapes(10, scale_range=(0.3, 0.6))


def test_combinations_restrict_the_draw():
    d = make_shapes(200, seed=0, combinations=[("star", "red"), ("circle", "blue")])
    pairs = {(d.shape_names[s], d.color_names[c]) for s, c in zip(d.shape_labels, d.color_labels, strict=True)}
    assert pairs == {("star", "red"), ("circle", "blue")}
    assert abs(int((d.shape_labels == 3).sum()) - 100) <= 1


def test_iid_split_is_a_stratified_partition(data):
    sp = iid_split(data, val=0.15, test=0.15, seed=0)
    allidx = np.concatenate([sp.train, sp.val, sp.test])
    assert len(allidx) == len(data) and len(np.unique(allidx)) == len(data)
    assert abs(len(sp.test) / len(data) - 0.15) < 0.03
    # every object class appears in train
    assert len(np.unique(data.labels[sp.train])) == 64
    again = iid_split(data, val=0.15, test=0.15, seed=0)
    np.testing.assert_array_equal(sp.test, again.test)
    assert set(sp.subsets(data)) == {"train", "val", "test"}


def test_zero_shot_split_excludes_held_out_combinations(data):
    sp = zero_shot_split(data, per_shape=2, seed=4)
    held = {tuple(p) for p in sp.held_out.tolist()}
    assert len(held) == 2 * 8
    pair = np.stack([data.shape_labels, data.color_labels], axis=1)
    for part in (sp.train, sp.val, sp.test):
        assert not any(tuple(p) in held for p in pair[part].tolist())
    assert all(tuple(p) in held for p in pair[sp.test_unseen].tolist())
    n_heldout = sum(tuple(p) in held for p in pair.tolist())
    assert len(sp.test_unseen) == n_heldout
    # every shape and every colour still appears in training
    assert set(data.shape_labels[sp.train]) == set(range(8))
    assert set(data.color_labels[sp.train]) == set(range(8))
    # each colour is held out for exactly 2 shapes with this diagonal design
    assert np.bincount(sp.held_out[:, 1], minlength=8).tolist() == [2] * 8
    assert len(sp.seen_combinations(8, 8)) == 64 - 16
    assert sp.held_out_names[0][0] in DEFAULT_SHAPES


def test_zero_shot_explicit_and_invalid_held_out(data):
    sp = zero_shot_split(data, held_out=[("star", "red"), ("circle", "blue")])
    assert {tuple(x) for x in sp.held_out_names} == {("star", "red"), ("circle", "blue")}
    with pytest.raises(FailsightInputError, match="remove"):
        zero_shot_split(data, held_out=[("star", c) for c in DEFAULT_COLORS])
    with pytest.raises(FailsightInputError, match="per_shape"):
        zero_shot_split(data, per_shape=8)
    with pytest.raises(FailsightInputError, match="unknown colour"):
        zero_shot_split(data, held_out=[("star", "teal")])


def test_cue_conflict_split_agrees_in_train_and_conflicts_in_test(data):
    sp = cue_conflict_split(data, seed=2)
    pairing = sp.pairing
    assert sorted(pairing.tolist()) == sorted(set(pairing.tolist()))
    tr = np.concatenate([sp.train, sp.val])
    np.testing.assert_array_equal(data.color_labels[tr], pairing[data.shape_labels[tr]])
    np.testing.assert_array_equal(sp.labels(), data.shape_labels[sp.train])
    t = sp.test
    assert len(t) > 0
    assert (sp.shape_label[t] != sp.color_label[t]).all()
    assert (sp.color_label[t] >= 0).all()
    np.testing.assert_array_equal(pairing[sp.color_label[t]], data.color_labels[t])
    # following the shape gives bias 1, following the colour 0
    assert sp.shape_bias(sp.shape_label[t]) == 1.0
    assert sp.shape_bias(sp.color_label[t]) == 0.0
    mixed = np.where(np.arange(len(t)) % 4 == 0, sp.shape_label[t], sp.color_label[t])
    assert sp.shape_bias(mixed) == pytest.approx(np.mean(np.arange(len(t)) % 4 == 0))


def test_cue_conflict_with_generated_combinations():
    probe = cue_conflict_split(make_shapes(64, seed=0), pairing=list(DEFAULT_COLORS))  # shape i <-> colour i
    combos = probe.combinations
    train = make_shapes(160, seed=1, combinations=combos["train"])
    test = make_shapes(560, seed=2, combinations=combos["test"])
    sp_tr = cue_conflict_split(train, pairing=probe.pairing, val=0.1)
    assert len(sp_tr.train) + len(sp_tr.val) == 160 and len(sp_tr.test) == 0
    sp_te = cue_conflict_split(test, pairing=probe.pairing)
    assert len(sp_te.test) == 560
    with pytest.raises(FailsightInputError, match="at least as many colours"):
        cue_conflict_split(make_shapes(50, colors=["red", "blue"]))
    with pytest.raises(FailsightInputError, match="twice"):
        cue_conflict_split(make_shapes(50, shapes=["circle", "star"], colors=["red", "blue"]),
                           pairing=["red", "red"])


def test_shape_bias_definition():
    shape = np.array([1, 0, 0, 1, 0, 0], dtype=bool)
    color = np.array([0, 1, 0, 0, 1, 1], dtype=bool)
    assert shape_bias(shape, color) == pytest.approx(2 / 5)  # the one "neither" decision is ignored
    assert shape_bias(30, 10) == pytest.approx(0.75)
    assert np.isnan(shape_bias(np.zeros(3, bool), np.zeros(3, bool)))
    with pytest.raises(FailsightInputError, match="both cues"):
        shape_bias(np.array([True]), np.array([True]))
    with pytest.raises(FailsightInputError, match="must match"):
        shape_bias(np.ones(3, bool), np.ones(2, bool))


def test_speed_is_reported(record_property):
    make_shapes(64, seed=0)  # warm-up (centroid cache)
    t0 = time.perf_counter()
    make_shapes(4000, seed=0)
    dt = time.perf_counter() - t0
    record_property("shapes_images_per_second_32px", round(4000 / dt))
    print(f"make_shapes: {4000 / dt:.0f} images/s (32x32, one process)")
