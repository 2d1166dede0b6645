"""Tests for failsight.defuse.

Most tests use a *toy world* whose answers are known without training anything: a linear generator with a
2-D latent space and a classifier that is right everywhere (class = sign of z0) except in a planted "pocket"
around z = (2, 2), which it reads as class 0. Defuse must find the pocket, rank it first, and fix it. The
VAE and the real digits pipeline are exercised with tiny settings; the full planted-bug run is ``slow``.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from failsight._validate import FailsightInputError
from failsight.defuse import (
    VAE,
    CallableLabeler,
    CorrectionResult,
    Defuse,
    FileLabeler,
    PromptLabeler,
    RegionList,
    SearchResult,
    correct,
    find_regions,
    make_grid,
    resolve_labels,
    search_errors,
)
from failsight.defuse.correct import _relabel_by_neighbours, loss_within_tolerance

POCKET = np.array([2.0, 2.0])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LinearGen:
    """Toy generator: ``decode(z) = 0.5 + z @ A`` as 1×8×8 images, ``encode`` its exact inverse."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.A = 0.02 * rng.standard_normal((2, 64))
        self.pinv = np.linalg.pinv(self.A)
        self.calls = 0

    def encode(self, x):
        return ((np.asarray(x).reshape(len(x), -1) - 0.5) @ self.pinv).astype(np.float32)

    def decode(self, z):
        self.calls += 1
        return (0.5 + np.asarray(z, dtype=np.float64) @ self.A).reshape(-1, 1, 8, 8).astype(np.float32)


class PocketNet(nn.Module):
    """Logits from features [z0, pocket(z)]: right (class = z0 > 0) except near ``POCKET``, where it says 0."""

    n_classes = 2

    def __init__(self, gen: LinearGen) -> None:
        super().__init__()
        self.register_buffer("P", torch.tensor(gen.pinv, dtype=torch.float32))
        self.register_buffer("c", torch.tensor(POCKET, dtype=torch.float32))
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-2.0, 6.0], [2.0, -6.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        z = (x.flatten(1) - 0.5) @ self.P
        pocket = torch.relu(1.5 - (z - self.c).norm(dim=1))
        return self.head(torch.stack([z[:, 0], pocket], 1))


def toy_seeds(gen: LinearGen, n: int = 150, seed: int = 0):
    rng = np.random.default_rng(seed)
    z1 = rng.normal(POCKET, 1.0, size=(4 * n, 2))
    z1 = z1[(np.linalg.norm(z1 - POCKET, axis=1) > 1.5) & (z1[:, 0] > 0.3)][:n]
    z0 = rng.normal([-2.0, 2.0], 1.0, size=(4 * n, 2))
    z0 = z0[z0[:, 0] < -0.3][:n]
    z = np.concatenate([z1, z0])
    y = (z[:, 0] > 0).astype(np.int64)
    return gen.decode(z), y


def toy_train(gen: LinearGen, n: int = 600, seed: int = 1):
    """Training data with true labels that never visits the pocket (a bug beyond the data)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform([-4, -1], [4, 5], size=(3 * n, 2))
    z = z[(np.linalg.norm(z - POCKET, axis=1) > 1.6) & (np.abs(z[:, 0]) > 0.6)][:n]
    return gen.decode(z), (z[:, 0] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def toy():
    gen = LinearGen()
    model = PocketNet(gen).eval()
    xs, ys = toy_seeds(gen)
    found = search_errors(model, gen, xs, ys, n_samples=16, radius=1.0, seed=0, progress=False)
    regions = find_regions(found, gen, model, max_components=8, seed=0, class_names=("zero", "one"))
    return gen, model, xs, ys, found, regions


# ---------------------------------------------------------------------------------------------- VAE
def test_vae_shapes_for_sizes_and_channels():
    for c, s in [(1, 8), (3, 16), (1, 28), (3, 64)]:
        vae = VAE(in_channels=c, image_size=s, latent_dim=4, width=4, seed=0)
        x = np.random.default_rng(0).random((3, c, s, s), dtype=np.float32)
        z = vae.encode(x)
        assert z.shape == (3, 4) and z.dtype == np.float32
        out = vae.decode(z)
        assert out.shape == (3, c, s, s)
        assert out.min() >= 0 and out.max() <= 1


def test_vae_fit_lowers_loss_reproducibly_and_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((64, 1, 8, 8)) > 0.6).astype(np.float32)
    a = VAE(latent_dim=4, width=4, seed=3)
    hist = a.fit(x, epochs=8, batch_size=32, seed=3, progress=False)
    assert hist.loss[-1] < hist.loss[0]
    b = VAE(latent_dim=4, width=4, seed=3)
    b.fit(x, epochs=8, batch_size=32, seed=3, progress=False)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    path = tmp_path / "vae.pt"
    a.save(path)
    with pytest.raises(FailsightInputError, match="overwrite"):
        a.save(path)
    c = VAE.load(path)
    assert c.config == a.config
    np.testing.assert_allclose(c.decode(a.encode(x)), a.decode(a.encode(x)), atol=1e-6)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(FailsightInputError, match="not a VAE file"):
        VAE.load(tmp_path / "junk.pt")


def test_vae_rejects_bad_images():
    vae = VAE(latent_dim=4, width=4)
    with pytest.raises(FailsightInputError, match=r"\[0, 1\]"):
        vae.encode(np.full((2, 1, 8, 8), 255.0))
    with pytest.raises(FailsightInputError, match="channel"):
        vae.encode(np.zeros((2, 3, 8, 8)))
    with pytest.raises(FailsightInputError, match="8×8"):
        vae.encode(np.zeros((2, 1, 16, 16)))
    with pytest.raises(FailsightInputError, match="NaN"):
        vae.encode(np.full((2, 1, 8, 8), np.nan))
    with pytest.raises(FailsightInputError, match="image_size"):
        VAE(image_size=128)
    with pytest.raises(FailsightInputError, match="latent space has 4"):
        vae.decode(np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------- search
def test_search_records_real_errors(toy):
    gen, model, xs, ys, found, _ = toy
    assert isinstance(found, SearchResult) and found.n_found > 50
    from failsight.models import predict_logits

    # every kept sample is misclassified, its image is the decode of its latent, seeds were right
    pred = predict_logits(model, found.images).argmax(1)
    np.testing.assert_array_equal(pred, found.predicted)
    assert np.all(found.predicted != found.seed_label)
    np.testing.assert_allclose(gen.decode(found.latent), found.images, atol=1e-5)
    np.testing.assert_array_equal(ys[found.seed_index], found.seed_label)
    seed_pred = predict_logits(model, xs).argmax(1)
    assert np.all(seed_pred[found.seed_index] == ys[found.seed_index])
    assert np.all((found.confidence > 0.5) & (found.confidence <= 1))
    assert found.n_tried == found.n_seeds_used * 16
    # the pocket dominates: most errors are class one read as zero
    assert found.pairs[0][:2] == (1, 0)
    d = found.to_dict()
    json.dumps(d)
    assert d["n_found"] == found.n_found and "images" not in d


def test_search_is_seeded_and_batched_identically(toy):
    gen, model, xs, ys, found, _ = toy
    again = search_errors(model, gen, xs, ys, n_samples=16, radius=1.0, seed=0, progress=False, batch_size=100)
    np.testing.assert_array_equal(found.seed_index, again.seed_index)
    np.testing.assert_allclose(found.latent, again.latent, atol=1e-6)
    other = search_errors(model, gen, xs, ys, n_samples=16, radius=1.0, seed=1, progress=False)
    assert other.n_found != found.n_found or not np.allclose(other.latent, found.latent)
    glob = search_errors(model, gen, xs, ys, n_samples=16, radius=1.0, spread="global", seed=0, progress=False)
    assert glob.spread == "global" and glob.n_found > 0


def test_search_empty_and_bad_inputs(toy):
    gen, model, xs, ys, _, _ = toy
    with pytest.raises(FailsightInputError, match="larger radius"):
        search_errors(model, gen, xs[ys == 0][:20], ys[ys == 0][:20], radius=1e-4, n_samples=4, progress=False)
    empty = search_errors(model, gen, xs[ys == 0][:20], ys[ys == 0][:20], radius=1e-4, n_samples=4,
                          progress=False, allow_empty=True)
    assert empty.n_found == 0 and empty.pairs == []
    with pytest.raises(FailsightInputError, match="larger radius"):
        find_regions(empty, gen, model)
    with pytest.raises(FailsightInputError, match=r"torch\.nn\.Module"):
        search_errors(lambda x: x, gen, xs, ys)
    with pytest.raises(FailsightInputError, match="encode"):
        search_errors(model, object(), xs, ys)
    with pytest.raises(FailsightInputError, match="different numbers"):
        search_errors(model, gen, xs, ys[:-1])
    with pytest.raises(FailsightInputError, match="radius"):
        search_errors(model, gen, xs, ys, radius=-1)
    with pytest.raises(FailsightInputError, match="none of the seed"):
        search_errors(model, gen, xs, 1 - ys, progress=False)


# ------------------------------------------------------------------------------------------ regions
def test_regions_find_the_pocket_first(toy):
    _gen, _model, _, _, found, regions = toy
    assert isinstance(regions, RegionList) and len(regions) >= 1
    top = regions[0]
    assert top.id == 0 and top.dominant_pair == (1, 0)
    assert np.linalg.norm(top.mean - POCKET) < 0.5
    assert top.error_rate > 0.7 and top.purity > 0.9
    assert top.size >= regions.params["min_size"]
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True)
    assert sum(c["size"] for c in regions.components) == found.n_found
    assert top.pair_names() == ("one", "zero") and "one -> zero" in top.describe()
    # the pocket fails one way only; errors across the z0 = 0 boundary go both ways
    n10, n01 = sum(found.predicted == 0), sum(found.predicted == 1)
    assert top.directionality == pytest.approx(n10 / (n10 + n01))
    assert all(0 < r.directionality <= 1 for r in regions)
    json.dumps(regions.to_dict())


def test_regions_seen_failing_on_real_seeds_lead_and_alone_are_above_the_fold(toy):
    import dataclasses

    gen, model, _, _, found, regions = toy
    # the toy's seeds never visit the pocket: no region is backed by real failures, the support rule sets the fold
    assert all(r.real_backed is False and r.real_failures == 0 for r in regions)
    # 30 labelled seeds inside the pocket ("one"), which the classifier reads as "zero": real failures of the bug
    rng = np.random.default_rng(3)
    x_in = gen.decode(POCKET + 0.3 * rng.standard_normal((30, 2)))
    pred_in = model(torch.from_numpy(x_in)).argmax(1).numpy()
    assert (pred_in == 0).mean() > 0.8
    seen = dataclasses.replace(
        found, seed_latent=np.concatenate([found.seed_latent, gen.encode(x_in)]),
        seed_labels=np.concatenate([found.seed_labels, np.ones(30, dtype=np.int64)]),
        seed_predicted=np.concatenate([found.seed_predicted, pred_in]))
    out = find_regions(seen, gen, model, max_components=8, seed=0, class_names=("zero", "one"))
    top = out[0]
    assert top.dominant_pair == (1, 0) and top.real_backed and top.real_failures >= 20
    assert top.real_failures <= top.real_seeds
    backed = [r.real_backed for r in out]
    assert backed == sorted(backed, reverse=True)  # backed regions first
    assert out.fold == min(sum(backed), 5) and all(r.real_backed for r in out.above_fold)
    assert all("real failures" in why for i, why in out.fold_reasons().items() if not out.by_id(i).real_backed)
    # the counts survive a save/load round trip
    assert [r.real_failures for r in out] == [r.real_failures for r in regions_roundtrip(out, gen)]


def regions_roundtrip(regions, gen):
    import tempfile
    from pathlib import Path

    from failsight.defuse import load_regions, save_regions

    with tempfile.TemporaryDirectory() as tmp:
        path = save_regions(regions, Path(tmp) / "r.npz")
        return load_regions(path, gen)


def test_region_grouping_options(toy):
    gen, model, _, _, found, _ = toy
    glob = find_regions(found, gen, model, max_components=8, group_by="none", covariance_type="full", seed=0)
    assert glob.params["group_by"] == "none" and len(glob) >= 1
    assert np.linalg.norm(glob[0].mean - POCKET) < 1.0
    by_class = find_regions(found, gen, model, max_components=8, group_by="seed_label", seed=0)
    assert all(r.size >= by_class.params["min_size"] for r in by_class)
    with pytest.raises(FailsightInputError, match="group_by"):
        find_regions(found, gen, model, group_by="bogus")
    with pytest.raises(FailsightInputError, match="covariance_type"):
        find_regions(found, gen, model, covariance_type="tied")


def test_region_sample_is_reproducible_and_misclassified(toy):
    _gen, model, _, _, _, regions = toy
    top = regions[0]
    a, b, c = top.sample(50, seed=1), top.sample(50, seed=1), top.sample(50, seed=2)
    assert a.shape == (50, 1, 8, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    from failsight.models import predict_logits

    assert np.mean(predict_logits(model, a).argmax(1) == 0) > 0.7
    z = top.sample_latents(4000, seed=0)
    np.testing.assert_allclose(z.mean(0), top.mean, atol=0.1)
    np.testing.assert_allclose(np.cov(z.T), top.covariance, atol=0.05)


def test_region_filters(toy):
    gen, model, _, _, found, _ = toy
    strict = find_regions(found, gen, model, max_components=8, min_error_rate=1.0, seed=0)
    assert all(r.error_rate == 1.0 for r in strict)
    assert any(not c["kept"] and "min_error_rate" in c["reason"] for c in strict.components)
    big = find_regions(found, gen, model, max_components=8, min_size=found.n_found // 2, seed=0)
    assert all(r.size >= found.n_found // 2 for r in big)
    with pytest.raises(FailsightInputError, match="min_size"):
        find_regions(found, gen, model, min_size=found.n_found + 1)
    with pytest.raises(FailsightInputError, match="SearchResult"):
        find_regions("nope", gen, model)


def test_make_grid_layout():
    x = np.zeros((5, 1, 2, 2), dtype=np.float32)
    x[3] = 0.5
    g = make_grid(x, ncols=3, pad=1)
    assert g.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert g[4, 1, 0] == 0.5  # image 3 sits at row 1, column 0
    assert g[4, 7, 0] == 1.0  # the empty sixth cell is padding
    with pytest.raises(FailsightInputError):
        make_grid(np.zeros((0, 1, 2, 2)))


# ---------------------------------------------------------------------------------------- labellers
def test_resolve_labels_and_callable_labeler(toy):
    *_, regions = toy
    names = ("zero", "one")
    ids = [r.id for r in regions]
    lab = resolve_labels({ids[0]: "one", str(ids[-1]): "DISCARD"}, regions, names)
    assert lab[ids[0]] == 1 and lab[ids[-1]] is None
    assert resolve_labels({ids[0]: 0}, regions, names)[ids[0]] == 0
    with pytest.raises(FailsightInputError, match="does not exist"):
        resolve_labels({99: "one"}, regions, names)
    with pytest.raises(FailsightInputError, match="unknown class 'seven'"):
        resolve_labels({ids[0]: "seven"}, regions, names)
    with pytest.raises(FailsightInputError, match="out of range"):
        resolve_labels({ids[0]: 2}, regions, names)
    got = CallableLabeler(lambda r: "one" if r.id == 0 else "discard")(regions, names)
    assert got[0] == 1 and all(v is None for k, v in got.items() if k != 0)


def test_file_labeler_round_trip(toy, tmp_path):
    *_, regions = toy
    names = ("zero", "one")
    fl = FileLabeler(tmp_path / "regions")
    path = fl.export(regions, names)
    assert (tmp_path / "regions" / "region_0.png").stat().st_size > 100
    with pytest.raises(FailsightInputError, match="already exists"):
        fl.export(regions, names)
    fl.export(regions, names, force=True)
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert [int(r["region_id"]) for r in rows] == [r.id for r in regions]
    assert rows[0]["seed_label"] == "one" and rows[0]["label"] == ""
    rows[0]["label"] = "one"
    for r in rows[1:]:
        r["label"] = "discard"

    def write(rows_):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows_[0]))
            w.writeheader()
            w.writerows(rows_)

    write(rows)
    got = fl(regions, names)
    assert got[0] == 1 and all(got[r.id] is None for r in regions[1:])
    write([*rows, {**rows[0], "region_id": "42"}])
    with pytest.raises(FailsightInputError, match="region 42"):
        FileLabeler.read(path, regions, names)
    write([{**rows[0], "label": "banana"}])
    with pytest.raises(FailsightInputError, match="banana"):
        FileLabeler.read(tmp_path / "regions", regions, names)
    with pytest.raises(FailsightInputError, match="no labels file"):
        FileLabeler.read(tmp_path / "missing.csv", regions, names)


def test_prompt_labeler_shows_grid_and_classes_and_retries(toy, tmp_path):
    *_, regions = toy
    answers = iter(["banana", "one"] + ["discard"] * len(regions))
    shown: list[str] = []
    lab = PromptLabeler(tmp_path / "grids", input_fn=lambda _: next(answers), output_fn=shown.append)
    got = lab(regions, ("zero", "one"))
    assert got[0] == 1 and all(got[r.id] is None for r in regions[1:])
    assert str(tmp_path / "grids" / "region_0.png") in shown[0] and "1=one" in shown[0]
    assert any("banana" in s for s in shown)
    assert (tmp_path / "grids" / "region_0.png").exists()


# --------------------------------------------------------------------------------------- correction
def test_correction_fixes_the_pocket_and_keeps_the_original(toy):
    gen, model, _xs, _ys, _, regions = toy
    x_tr, y_tr = toy_train(gen)
    x_te, y_te = toy_train(gen, n=300, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    labels = {r.id: ("one" if r.id == 0 else "discard") for r in regions}
    kw = dict(x_test=x_te, y_test=y_te, lambdas=(0.3, 0.6), epochs=10, lr=0.05, n_train_per_region=128,
              class_names=("zero", "one"), seed=0, progress=False)
    fixed, res = correct(model, regions, labels, x_tr, y_tr, **kw)
    assert isinstance(res, CorrectionResult) and fixed is not model
    for k, v in model.state_dict().items():  # the user's model is untouched
        torch.testing.assert_close(v, before[k])
    # the pocket is wrong by construction (the model says 0 inside it): a property of the toy model, not of
    # training (11-23% right over 200 seeds of held-out region samples)
    assert res.regions[0].accuracy_before < 0.3
    # how lam was chosen (deterministic given the fits): the flags follow the binomial test's p-values
    assert all(r["within_tolerance"] == (r["loss_p_value"] >= 0.05) for r in res.lambdas)
    assert all((r["val_lost"] == 0) == (r["val_retained"] == 1.0) for r in res.lambdas)
    assert res.n_train_dropped == 0 and len(res.lambdas) == 2
    if res.tolerance_met:  # the chosen lam's validation loss is not significantly above the tolerance
        chosen = next(r for r in res.lambdas if r["lam"] == res.lam)
        assert chosen["within_tolerance"] and chosen["loss_p_value"] >= 0.05
    # among the weights within tolerance, the chosen one has the largest net gain on real validation images
    # (the bug's real validation images fixed minus the validation images lost)
    # once the validation split holds at least min_val_failures of them (here: any). The toy's training images
    # hold none, so the validation split gets 60 pocket samples labelled "one" (the model is right on 11-23% of
    # them, asserted above for held-out samples, so some are failures)
    x_v, y_v = toy_train(gen, n=300, seed=7)
    x_v = np.concatenate([x_v, regions[0].sample(60, seed=11)])
    y_v = np.concatenate([y_v, np.ones(60, dtype=np.int64)])
    _, net = correct(model, regions, labels, x_tr, y_tr, **{**kw, "x_val": x_v, "y_val": y_v, "min_val_failures": 1})
    assert all(0 <= r["val_fixed"] <= r["val_failures"] for r in net.lambdas)
    ok_rows = [r for r in net.lambdas if r["within_tolerance"]]
    assert net.lambdas[0]["val_failures"] > 0
    if ok_rows:
        chosen = next(r for r in net.lambdas if r["lam"] == net.lam)
        assert chosen["val_fixed"] - chosen["val_lost"] == max(r["val_fixed"] - r["val_lost"] for r in ok_rows)
    with pytest.raises(FailsightInputError, match="min_val_failures"):
        correct(model, regions, labels, x_tr, y_tr, **{**kw, "min_val_failures": 0})

    # What the fine-tune achieves is a training outcome (a different seed or CPU rounds differently), so it is
    # asserted over three seeds, at least two of which must succeed. Measured: the fix (region >90% right,
    # tolerance met, test accuracy kept within 3 points) succeeded in 200 of 200 seeds, so the per-seed
    # failure rate is < 1.5% (95% upper bound, 0 of 200); two or more failures in three then have
    # probability < 3 * 0.015^2 = 6.8e-4, and far less at the observed rate.
    def fixes(r: CorrectionResult) -> bool:
        return (r.regions[0].accuracy_after > 0.9 and r.region_accuracy_after > r.region_accuracy_before
                and r.tolerance_met and r.lam in (0.3, 0.6)
                and r.test_accuracy_after >= r.test_accuracy_before - 0.03)

    others = [correct(model, regions, labels, x_tr, y_tr, **{**kw, "seed": s})[1] for s in (1, 2)]
    assert sum(fixes(r) for r in (res, *others)) >= 2
    assert res.discarded == [r.id for r in regions[1:]]
    assert {row["name"] for row in res.per_class} == {"zero", "one"} and res.per_class_split == "test"
    assert [r["what"] for r in res.table()] == ["held-out region samples", "validation", "test"]
    json.dumps(res.to_dict())
    # seeded: the same call gives the same numbers
    _, res2 = correct(model, regions, labels, x_tr, y_tr, **kw)
    assert res2.region_accuracy_after == res.region_accuracy_after and res2.lam == res.lam


def test_correction_can_drop_conflicting_training_images(toy):
    gen, model, _, _, _, regions = toy
    x_tr, y_tr = toy_train(gen, n=300)
    # mislabelled training data: 30 images from inside the pocket labelled 0, the class the model wrongly says
    rng = np.random.default_rng(7)
    z_bad = POCKET + 0.3 * rng.standard_normal((30, 2))
    x_all = np.concatenate([x_tr, gen.decode(z_bad)])
    y_all = np.concatenate([y_tr, np.zeros(30, dtype=np.int64)])
    x_val, y_val = toy_train(gen, n=150, seed=9)
    labels = {regions[0].id: 1}
    # relabel=False: here the validation split's images near the pocket are "one"s, so by default the pocket
    # images would be relabelled rather than dropped (test_correction_relabels_training_images_...)
    kw = dict(x_val=x_val, y_val=y_val, lambdas=(0.3,), epochs=10, lr=0.05, seed=0, progress=False, relabel=False)
    wins = 0
    for seed in (0, 1, 2):
        _, kept = correct(model, regions, labels, x_all, y_all, drop_conflicting=False, **{**kw, "seed": seed})
        _, dropped = correct(model, regions, labels, x_all, y_all, **{**kw, "seed": seed})  # dropping: default
        # which images conflict is decided by the original model and the labelled region, before training
        assert kept.n_train_dropped == 0
        assert 20 <= dropped.n_train_dropped <= 40  # the pocket images, hardly anything else
        wins += dropped.regions[0].accuracy_after >= kept.regions[0].accuracy_after
    # that the region ends up better fixed without the conflicting images is a training outcome: asserted in
    # at least 2 of 3 seeds. Measured 200 of 200 seeds (by 2-16 points), per-seed failure < 1.5% at 95%
    # confidence, so a false failure has probability < 3 * 0.015^2 = 6.8e-4.
    assert wins >= 2


def test_correction_distillation_anchor_keeps_the_rest_of_the_model(toy):
    """With the anchor (default) the fine-tuned model's outputs away from the region stay closer to the
    original's than with plain cross-entropy on the training labels, and the region is fixed either way."""
    from scipy.special import log_softmax

    from failsight.models.cnn import predict_logits

    gen, model, _, _, _, regions = toy
    x_tr, y_tr = toy_train(gen, n=300)
    x_far, _ = toy_train(gen, n=300, seed=11)
    labels = {regions[0].id: 1}
    kw = dict(lambdas=(0.5,), epochs=10, lr=0.05, seed=0, progress=False)

    def drift(m):  # mean KL(original || fine-tuned) on fresh images outside the pocket
        lp, lq = log_softmax(predict_logits(model, x_far), 1), log_softmax(predict_logits(m, x_far), 1)
        return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))

    # Both the fix and the anchor's effect are training outcomes, so they are asserted over three seeds, at
    # least two of which must show them. Measured over 200 seeds: the region >80% right with and without the
    # anchor, and the anchored drift below the plain one (by 0.7-1.1% relative, paired on the seed), in 200 of
    # 200; per-seed failure < 1.5% at 95% confidence, so a false failure has probability < 6.8e-4.
    wins = 0
    for seed in (0, 1, 2):
        anchored, res_a = correct(model, regions, labels, x_tr, y_tr, **{**kw, "seed": seed})
        plain, res_p = correct(model, regions, labels, x_tr, y_tr, distill=0.0, **{**kw, "seed": seed})
        assert all(r.regions[0].accuracy_before < 0.3 for r in (res_a, res_p))  # the toy model's pocket
        wins += (all(r.regions[0].accuracy_after > 0.8 for r in (res_a, res_p))
                 and drift(anchored) < drift(plain))
    assert wins >= 2
    with pytest.raises(FailsightInputError, match="distill"):
        correct(model, regions, labels, x_tr, y_tr, distill=1.5, progress=False)
    with pytest.raises(FailsightInputError, match="temperature"):
        correct(model, regions, labels, x_tr, y_tr, temperature=0.0, progress=False)


def test_correction_errors(toy):
    gen, model, _, _, _, regions = toy
    x_tr, y_tr = toy_train(gen, n=100)
    with pytest.raises(FailsightInputError, match="nothing to correct"):
        correct(model, regions, {r.id: "discard" for r in regions}, x_tr, y_tr, progress=False)
    with pytest.raises(FailsightInputError, match="does not exist"):
        correct(model, regions, {77: 1}, x_tr, y_tr, progress=False)
    with pytest.raises(FailsightInputError, match=r"torch\.nn\.Module"):
        correct("model", regions, {0: 1}, x_tr, y_tr, progress=False)
    with pytest.raises(FailsightInputError, match="lambdas"):
        correct(model, regions, {0: 1}, x_tr, y_tr, lambdas=(1.5,), progress=False)
    with pytest.raises(FailsightInputError, match="channel"):
        correct(model, regions, {0: 1}, np.zeros((4, 3, 8, 8)), np.zeros(4, int), progress=False)
    with pytest.raises(FailsightInputError, match="tolerance_alpha"):
        correct(model, regions, {0: 1}, x_tr, y_tr, tolerance_alpha=1.5, progress=False)


def test_loss_within_tolerance_is_a_one_sided_binomial_test():
    from scipy.stats import binomtest

    for lost, n, tol in [(4, 343, 0.01), (8, 345, 0.01), (6, 345, 0.01), (3, 40, 0.05), (1, 10, 0.001)]:
        ok, p = loss_within_tolerance(lost, n, tol, 0.05)
        ref = binomtest(lost, n, tol, alternative="greater").pvalue  # reference: scipy's exact test
        assert p == pytest.approx(ref, rel=1e-9) and ok == (ref >= 0.05)
    # the planted 5->9 bug (seed 2): 4 of 343 lost is 1.17% > 1%, but not significantly more
    assert loss_within_tolerance(4, 343, 0.01, 0.05)[0]
    assert not loss_within_tolerance(4, 343, 0.01, None)[0]  # the point-estimate rule rejects it
    assert not loss_within_tolerance(8, 345, 0.01, 0.05)[0]  # 2.3%: p = 0.02
    assert loss_within_tolerance(3, 345, 0.01, None) == (True, None)
    assert loss_within_tolerance(0, 0, 0.01, 0.05) == (True, 1.0)
    assert loss_within_tolerance(1, 500, 0.0, 0.05)[0] is False  # no tolerance: any loss is too much
    assert loss_within_tolerance(0, 500, 0.0, 0.05)[0] is True


def test_oracle_vote_rule_counts_confident_votes_and_needs_a_clear_majority():
    from failsight.defuse.planted import OracleEnsemble

    oracle = OracleEnsemble.__new__(OracleEnsemble)  # the rule alone, no networks needed
    oracle.n_classes, oracle.n_votes, oracle.min_share = 10, 100, 0.5
    oracle.min_confidence, oracle.min_confident, oracle.alpha = 0.8, 0.25, 0.05

    def votes(**kw):
        v = np.zeros(10, int)
        for k, n in kw.items():
            v[int(k[1:])] = n
        return v

    # 46 of 76 legible samples say 5, 22 say 9 (the rest of 100 were blends): a clear majority for 5
    assert oracle.label_from_votes(votes(c5=46, c9=22, c3=8), predicted_label=9) == 5
    assert oracle.label_from_votes(votes(c5=46, c9=22, c3=8), predicted_label=5) == "discard"  # model says 5
    assert oracle.label_from_votes(votes(c5=30, c9=26), predicted_label=9) == "discard"  # not beyond chance
    assert oracle.label_from_votes(votes(c5=30, c9=10, c3=15, c8=10), predicted_label=9) == "discard"  # < half
    assert oracle.label_from_votes(votes(c5=20), predicted_label=9) == "discard"  # too few legible samples


# ------------------------------------------------------------------------------------ Defuse object
def test_defuse_workflow_on_toy(toy):
    gen, model, xs, ys, _, _ = toy
    with pytest.raises(FailsightInputError, match=r"torch\.nn\.Module"):
        Defuse(object())
    with pytest.raises(FailsightInputError, match="decode"):
        Defuse(model, generator=type("G", (), {"encode": lambda self, x: x})())
    with pytest.raises(FailsightInputError, match="fit_generator"):
        Defuse(model).search(xs, ys)
    d = Defuse(model, generator=gen, seed=0, class_names=("zero", "one"), progress=False)
    found = d.search(xs, ys, n_samples=16)
    regions = d.find_regions(found, max_components=8)
    assert regions[0].dominant_pair == (1, 0) and regions[0].pair_names() == ("one", "zero")
    labels = d.label(regions, CallableLabeler(lambda r: r.seed_label if r.id == 0 else None))
    x_tr, y_tr = toy_train(gen)
    _fixed, summary = d.correct(regions, labels, x_tr, y_tr, lambdas=(0.5,), epochs=10, lr=0.05)
    assert summary.regions[0].accuracy_after > 0.9
    res = d.result(found, regions, labels, summary)
    data = json.loads(res.to_json())
    assert data["regions"][0]["dominant_pair"] == [1, 0] and data["labels"] == {"0": 1, **{
        str(r.id): None for r in regions[1:]}}
    assert data["correction"]["lam"] == 0.5


def test_defuse_on_digits_small():
    """The real pipeline end to end with tiny settings: VAE training, search, regions, correction."""
    from failsight.datasets.digits import split_digits
    from failsight.models import SmallCNN, train_classifier

    s = split_digits(seed=0)
    model = SmallCNN(width=8, seed=0)
    train_classifier(model, s.x_train, s.y_train, epochs=4, seed=0, progress=False)
    d = Defuse(model, seed=0, progress=False).fit_generator(s.x_train, latent_dim=6, width=8, epochs=6)
    assert isinstance(d.generator, VAE) and d.generator_history_.epochs == 6
    found = d.search(s.x_cal[:120], s.y_cal[:120], n_samples=8, radius=1.5)
    # n_found > 0 is a training outcome with an overwhelming margin: this 4-epoch CNN is 69-86% accurate over
    # 30 seeds (test_digits_cnn), and the search decodes 120 x 8 samples near real digits; even at a 1% error
    # rate among them, finding none has probability 0.99^960 < 1e-4, at the ~11% that the stronger audit
    # model's search finds (test_audit) < 1e-40
    assert found.images.shape[1:] == (1, 8, 8) and found.n_found > 0
    regions = d.find_regions(found, max_components=5, min_size=5, min_error_rate=0.3, n_check=40)
    if len(regions) == 0:  # tiny models may leave nothing coherent; the record still says why
        assert all(not c["kept"] for c in regions.components)
        return
    labels = {regions[0].id: regions[0].seed_label}
    _fixed, summary = d.correct(regions, labels, s.x_train, s.y_train, x_val=s.x_cal, y_val=s.y_cal,
                               lambdas=(0.5,), epochs=1, n_train_per_region=32, n_val_per_region=16,
                               n_holdout_per_region=32)
    assert summary.regions[0].n_holdout == 32 and summary.per_class_split == "validation"
    assert 0 <= summary.val_accuracy_after <= 1


@pytest.mark.slow
def test_planted_bug_is_found_and_fixed():
    """The benchmark's setting for one bug and seed (about a minute): 1s of one sub-style labelled 8."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from defuse_planted import Oracle, run_planted, substyle_mask
    from failsight.datasets.digits import split_digits

    split = split_digits(seed=0)
    mask, _ = substyle_mask(1, 8)
    vae = VAE(seed=0)
    vae.fit(split.x_train, seed=0, progress=False)
    row = run_planted(split, mask, 1, 8, 0, vae, 0.0, Oracle(split.x_train, split.y_train, 0))
    assert row["top3"]
    assert row["sub_after"] >= 0.8 > row["sub_before"]
    assert row["rest_after"] >= row["rest_before"] - 0.015


def test_report_section_renders(toy):
    from failsight.defuse.report import defuse_section
    from failsight.report import Report

    gen, model, _xs, _ys, found, regions = toy
    d = Defuse(model, generator=gen, seed=0, class_names=("zero", "one"), progress=False)
    labels = {r.id: (1 if r.id == 0 else None) for r in regions}
    x_tr, y_tr = toy_train(gen, n=200)
    _, summary = d.correct(regions, labels, x_tr, y_tr, lambdas=(0.5,), epochs=5, lr=0.05)
    sec = defuse_section(d.result(found, regions, labels, summary), labeler_note="labels came from an oracle")
    html = Report(sections=[sec], created="fixed").render()
    assert "one → zero" in html and "data:image/png;base64," in html and "labels came from an oracle" in html
    assert "held-out region samples" in html
    empty = defuse_section(d.result(found, RegionList([], [], {})))
    assert any("No misclassification region" in getattr(b, "text", "") for b in empty.blocks)


def test_regions_save_load_round_trip(toy, tmp_path):
    from failsight.defuse import load_regions, save_regions

    gen, *_, regions = toy
    path = save_regions(regions, tmp_path / "regions.npz")
    with pytest.raises(FailsightInputError, match="exists"):
        save_regions(regions, path)
    back = load_regions(path, gen)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in regions]
    np.testing.assert_array_equal(back[0].sample(8, seed=3), regions[0].sample(8, seed=3))
    assert back.params == regions.params and len(back.components) == len(regions.components)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(FailsightInputError, match="not a regions file"):
        load_regions(tmp_path / "bad.npz", gen)


def test_regions_fold_survives_save_and_load(toy, tmp_path):
    from failsight.defuse import load_regions, save_regions

    gen, model, _xs, _ys, found, regions = toy
    assert 0 < regions.fold <= min(5, len(regions))
    assert set(regions.fold_reasons()) == {r.id for r in regions[regions.fold:]}
    back = load_regions(save_regions(regions, tmp_path / "r.npz"), gen)
    assert back.fold == regions.fold and back.fold_reasons() == regions.fold_reasons()
    res = Defuse(model, generator=gen, seed=0, progress=False).result(found, regions)
    assert res.fold == regions.fold and res.to_dict()["fold"] == regions.fold


def test_correction_relabels_training_images_the_validation_labels_contradict(toy):
    gen, model, _, _, _, regions = toy
    x_tr, y_tr = toy_train(gen, n=300)
    rng = np.random.default_rng(7)
    # 30 mislabelled training images inside the pocket (truly "one", labelled 0: the cause of the bug)
    x_all = np.concatenate([x_tr, gen.decode(POCKET + 0.3 * rng.standard_normal((30, 2)))])
    y_all = np.concatenate([y_tr, np.zeros(30, dtype=np.int64)])
    x_v, y_v = toy_train(gen, n=150, seed=9)
    x_pocket = gen.decode(POCKET + 0.3 * rng.standard_normal((40, 2)))
    labels = {regions[0].id: 1}
    kw = dict(lambdas=(0.3,), epochs=2, lr=0.05, seed=0, progress=False)
    # the validation split shows pocket images labelled "one": its labels contradict the 30 training labels
    _, res = correct(model, regions, labels, x_all, y_all, x_val=np.concatenate([x_v, x_pocket]),
                     y_val=np.concatenate([y_v, np.ones(40, dtype=np.int64)]), **kw)
    assert 20 <= res.n_train_relabelled <= 30  # only images labelled 0 near the region; never a genuine image
    # the neighbour rule, directly: the new label is the region's, and only the pocket images get one
    z = gen.encode(x_all).astype(np.float64)
    new = _relabel_by_neighbours(z, y_all, gen.encode(np.concatenate([x_v, x_pocket])).astype(np.float64),
                                 np.concatenate([y_v, np.ones(40, dtype=np.int64)]), [regions[0]], {regions[0].id: 1},
                                 0.99, 10, 0.7)
    assert set(np.flatnonzero(new >= 0)) <= set(range(len(y_tr), len(y_all))) and set(new[new >= 0]) <= {1}
    # the same pocket images labelled 0 in the validation split agree with the training labels: nothing changes
    _, agree = correct(model, regions, labels, x_all, y_all, x_val=np.concatenate([x_v, x_pocket]),
                       y_val=np.concatenate([y_v, np.zeros(40, dtype=np.int64)]), **kw)
    assert agree.n_train_relabelled == 0
    _, off = correct(model, regions, labels, x_all, y_all, x_val=np.concatenate([x_v, x_pocket]),
                     y_val=np.concatenate([y_v, np.ones(40, dtype=np.int64)]), relabel=False, **kw)
    assert off.n_train_relabelled == 0 and off.n_train_dropped >= res.n_train_dropped
