"""Tests for failsight.datasets.io: .npz, IDX, image folders, arrays and torch datasets."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from failsight._validate import FailsightInputError
from failsight.datasets.io import LabelledData, load_data, read_idx, resize_images
from failsight.robustness.io import load_labelled_images

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
          np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def write_idx(path, arr, gz=False):
    """Minimal IDX writer: magic 00 00 <type> <ndim>, big-endian uint32 dims, big-endian payload."""
    arr = np.asarray(arr)
    head = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    blob = head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


@pytest.fixture
def digits():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 10, 9), dtype=np.uint8)
    y = np.arange(12) % 3
    return x, y


def write_png_folder(root, x, y, names=("cat", "dog", "emu"), mode=None):
    """One sub-folder per class, images as PNG; x (n, H, W) or (n, H, W, 3) uint8."""
    for i, (img, lab) in enumerate(zip(x, y, strict=True)):
        d = root / names[lab]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode=mode).save(d / f"{i:03d}.png")
    return root


# ---------------------------------------------------------------------------------------------- npz
def test_npz_images_labels_and_each_groups_layout(tmp_path, digits):
    x, y = digits
    n = len(y)
    g1 = np.array(["a", "b"] * (n // 2))
    np.savez(tmp_path / "one.npz", x=x, y=y, groups=g1, class_names=np.array(["c0", "c1", "c2"]))
    d = load_data(tmp_path / "one.npz")
    assert d.kind == "images" and d.source == "npz" and d.x.shape == (n, 1, 10, 9) and d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x[:, 0], x.astype(np.float32) / np.float32(255))
    assert d.y.dtype == np.int64 and list(d.y) == list(y)
    assert list(d.groups) == ["group"] and list(d.groups["group"]) == list(g1)
    assert d.class_names == ("c0", "c1", "c2") and d.layout == "NHW" and d.original_dtype == "uint8"
    assert any("divided by 255" in s for s in d.notes) and any("one-channel" in s for s in d.notes)

    two = np.stack([np.arange(n) % 2, np.arange(n) % 4], axis=1)
    np.savez(tmp_path / "named.npz", x=x, y=y, groups=two, group_names=np.array(["parity", "mod4"]))
    d = load_data(tmp_path / "named.npz")
    assert d.group_names == ("parity", "mod4")
    np.testing.assert_array_equal(d.groups["mod4"], np.arange(n) % 4)
    np.savez(tmp_path / "unnamed.npz", x=x, y=y, groups=two)
    assert load_data(tmp_path / "unnamed.npz").group_names == ("group_0", "group_1")

    np.savez(tmp_path / "keys.npz", images=x, labels=y, group_site=np.arange(n) % 2, group_colour=g1)
    d = load_data(tmp_path / "keys.npz")
    assert set(d.groups) == {"site", "colour"} and list(d.groups["colour"]) == list(g1)

    np.savez(tmp_path / "clash.npz", x=x, y=y, groups=two, group_names=np.array(["a", "b"]), group_a=g1)
    with pytest.raises(FailsightInputError, match="given twice"):
        load_data(tmp_path / "clash.npz")
    np.savez(tmp_path / "badnames.npz", x=x, y=y, groups=two, group_names=np.array(["a"]))
    with pytest.raises(FailsightInputError, match="one distinct name per column"):
        load_data(tmp_path / "badnames.npz")


def test_groups_argument_dict_csv_and_npz(tmp_path, digits):
    x, y = digits
    n = len(y)
    np.savez(tmp_path / "d.npz", x=x, y=y, groups=np.zeros(n, dtype=int))
    csv = tmp_path / "g.csv"
    csv.write_text("site,weather\n" + "".join(f"s{i % 2},{'fog' if i % 3 else 'sun'}\n" for i in range(n)))
    d = load_data(tmp_path / "d.npz", groups=csv)
    assert set(d.groups) == {"group", "site", "weather"} and d.groups["site"][1] == "s1"
    assert d.groups["weather"][0] == "sun"
    np.savez(tmp_path / "g.npz", groups=np.arange(n) % 5)
    d = load_data(tmp_path / "d.npz", groups=tmp_path / "g.npz")
    assert any("replace the stored" in s for s in d.notes) and d.group_names == ("group",)
    np.testing.assert_array_equal(d.groups["group"], np.arange(n) % 5)
    np.savez(tmp_path / "g2.npz", groups=np.stack([np.arange(n) % 2] * 2, 1), group_names=np.array(["u", "v"]))
    assert load_data(x, y, groups=tmp_path / "g2.npz").group_names == ("u", "v")
    (tmp_path / "one.csv").write_text("".join(f"{i % 3}\n" for i in range(n)))
    np.testing.assert_array_equal(load_data(x, y, groups=tmp_path / "one.csv").groups["group"], np.arange(n) % 3)
    np.savez(tmp_path / "none.npz", labels=y)
    with pytest.raises(FailsightInputError, match="holds no 'groups'"):
        load_data(x, y, groups=tmp_path / "none.npz")
    d = load_data(x, y, groups={"k": list("ab" * (n // 2))})
    assert d.groups["k"].dtype.kind == "U"
    d = load_data(x, y, groups=np.arange(n))
    assert d.group_names == ("group",)
    with pytest.raises(FailsightInputError, match=r"groups\['k'\] has 3 labels for 12 samples"):
        load_data(x, y, groups={"k": [0, 1, 2]})
    with pytest.raises(FailsightInputError, match="NaN"):
        load_data(x, y, groups={"k": np.full(n, np.nan)})
    with pytest.raises(FailsightInputError, match="1-D"):
        load_data(x, y, groups={"k": np.zeros((n, 2))})
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_data(x, y, groups=tmp_path / "nope.csv")


def test_npz_features_and_errors(tmp_path):
    f = np.random.default_rng(1).normal(size=(6, 4))
    np.savez(tmp_path / "f.npz", x=f, y=[0, 1, 0, 1, 1, 0])
    d = load_data(tmp_path / "f.npz")
    assert d.kind == "features" and d.layout is None and d.x.shape == (6, 4)
    np.testing.assert_array_equal(d.x, f)
    np.savez(tmp_path / "nolab.npz", x=f)
    with pytest.raises(FailsightInputError, match=r"must hold 'x' \(inputs\) and 'y' \(labels\) \(found: x\)"):
        load_data(tmp_path / "nolab.npz")
    assert load_data(tmp_path / "nolab.npz", require_labels=False).y is None
    assert list(load_data(tmp_path / "nolab.npz", y=[0, 1, 2, 0, 1, 2]).y) == [0, 1, 2, 0, 1, 2]
    with pytest.raises(FailsightInputError, match="already holds labels"):
        load_data(tmp_path / "f.npz", y=np.zeros(6, int))
    np.savez(tmp_path / "nan.npz", x=np.full((3, 2), np.nan), y=[0, 1, 0])
    with pytest.raises(FailsightInputError, match="NaN"):
        load_data(tmp_path / "nan.npz")
    with pytest.raises(FailsightInputError, match="features, not images"):
        load_data(tmp_path / "f.npz", image_size=(8, 8))


# ---------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    rng = np.random.default_rng(2)
    arr = (rng.uniform(size=(5, 7, 3)) * 100).astype(dtype)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr, gz=gz)
    got = read_idx(p)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    np.testing.assert_array_equal(read_idx(p, max_items=2), arr[:2])


def test_idx_mnist_names_discover_labels_gzip_and_plain(tmp_path, digits):
    x, y = digits
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), gz=True)
    d = load_data(tmp_path / "train-images-idx3-ubyte.gz")
    assert d.source == "idx" and d.x.shape == (12, 1, 10, 9) and list(d.y) == list(y)
    np.testing.assert_array_equal(d.x[:, 0], x / np.float32(255))
    assert any("train-labels-idx1-ubyte.gz" in s for s in d.notes)
    # the same content from an .npz and from IDX has the same identity
    np.savez(tmp_path / "same.npz", x=x, y=y)
    assert load_data(tmp_path / "same.npz").fingerprint == d.fingerprint
    # plain (gunzipped) files, dotted Kaggle-style name, float images
    xf = (x / 255.0).astype(np.float32)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", xf)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", y.astype(np.uint8))
    d2 = load_data(tmp_path / "t10k-images.idx3-ubyte")
    np.testing.assert_array_equal(d2.x[:, 0], xf)
    assert list(d2.y) == list(y)
    # explicit labels= wins; max_items caps images and labels alike
    write_idx(tmp_path / "other-labels", (2 - y).astype(np.uint8))
    d3 = load_data(tmp_path / "train-images-idx3-ubyte.gz", labels=tmp_path / "other-labels", max_items=5)
    assert d3.n == 5 and list(d3.y) == list(2 - y[:5]) and any("first 5 of 12" in s for s in d3.notes)


def test_idx_errors(tmp_path, digits):
    x, y = digits
    with pytest.raises(FailsightInputError, match=r"train-labels-idx1-ubyte, train-labels-idx1-ubyte\.gz"):
        load_data(write_idx(tmp_path / "train-images-idx3-ubyte", x))
    assert load_data(tmp_path / "train-images-idx3-ubyte", require_labels=False).y is None
    write_idx(tmp_path / "train-labels-idx1-ubyte", y[:10].astype(np.uint8))
    with pytest.raises(FailsightInputError, match="10 labels for 12 inputs"):
        load_data(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(FailsightInputError, match="as labels="):
        load_data(tmp_path / "train-labels-idx1-ubyte")
    blob = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "cut-idx3-ubyte").write_bytes(blob[:-7])
    with pytest.raises(FailsightInputError, match="truncated"):
        read_idx(tmp_path / "cut-idx3-ubyte")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(blob)[:-30])
    with pytest.raises(FailsightInputError, match="truncated or corrupt"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "long-idx3-ubyte").write_bytes(blob + b"\x00")
    with pytest.raises(FailsightInputError, match="beyond"):
        read_idx(tmp_path / "long-idx3-ubyte")
    (tmp_path / "magic-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + blob[4:])
    with pytest.raises(FailsightInputError, match="wrong magic number 01020803"):
        load_data(tmp_path / "magic-idx3-ubyte")
    (tmp_path / "huge-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\xff\xff\xff\xff" + b"\x00" * 10)
    with pytest.raises(FailsightInputError, match="truncated"):
        read_idx(tmp_path / "huge-idx1-ubyte")


# ------------------------------------------------------------------------------------------- folders
def test_folder_grey_png_roundtrips_exactly_with_sorted_classes(tmp_path, digits):
    x, y = digits
    root = write_png_folder(tmp_path / "grey", x, y, names=("zebra", "ant", "moth"))
    (root / "ant" / "README.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    d = load_data(root)
    assert d.source == "folder" and d.class_names == ("ant", "moth", "zebra")
    assert d.x.shape == (12, 1, 10, 9) and d.x.dtype == np.float32
    # label i = class_names[i]; files sorted within each class
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 2), np.flatnonzero(y == 0)])
    np.testing.assert_array_equal(np.round(d.x[:, 0] * 255).astype(np.uint8), x[order])
    assert [d.class_names[i] for i in d.y] == [("zebra", "ant", "moth")[k] for k in y[order]]
    # same pixels and labels as an .npz in that order -> same fingerprint
    np.savez(tmp_path / "same.npz", x=x[order], y=d.y)
    assert load_data(tmp_path / "same.npz").fingerprint == d.fingerprint
    assert load_data(root, max_items=4).n == 4


def test_folder_rgb_mixed_rgba_and_jpeg(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(4, 8, 11, 3), dtype=np.uint8)
    root = write_png_folder(tmp_path / "rgb", rgb, np.array([0, 1, 0, 1]))
    d = load_data(root)
    assert d.x.shape == (4, 3, 8, 11)
    got = np.round(d.x.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, rgb[[0, 2, 1, 3]])
    # a grey PNG and an RGBA PNG join the colour images
    grey = rng.integers(0, 256, size=(8, 11), dtype=np.uint8)
    Image.fromarray(grey).save(root / "cat" / "grey.png")
    rgba = np.concatenate([rgb[0], np.full((8, 11, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(root / "dog" / "alpha.png")
    Image.fromarray(np.full((8, 11, 3), 200, np.uint8)).save(root / "dog" / "flat.jpg", quality=95)
    d = load_data(root)
    assert d.x.shape == (7, 3, 8, 11)
    assert any("grey image(s) to RGB" in s for s in d.notes) and any("alpha" in s for s in d.notes)
    files = ["000.png", "002.png", "grey.png", "001.png", "003.png", "alpha.png", "flat.jpg"]
    i = files.index("grey.png")
    np.testing.assert_array_equal(np.round(d.x[i] * 255).astype(np.uint8), np.stack([grey] * 3))
    np.testing.assert_array_equal(np.round(d.x[files.index("alpha.png")] * 255).astype(np.uint8),
                                  rgb[0].transpose(2, 0, 1))
    assert np.abs(d.x[files.index("flat.jpg")] * 255 - 200).max() <= 3  # JPEG is lossy


def test_folder_sizes_resize_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "sizes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    small = rng.integers(0, 256, size=(10, 12), dtype=np.uint8)
    big = rng.integers(0, 256, size=(20, 16), dtype=np.uint8)
    Image.fromarray(small).save(root / "a" / "s.png")
    Image.fromarray(big).save(root / "b" / "b.bmp")
    with pytest.raises(FailsightInputError, match=r"2 different sizes.*image_size=\(height, width\).*--image-size"):
        load_data(root)
    d = load_data(root, image_size=(10, 12))
    assert d.x.shape == (2, 1, 10, 12) and any("resized 1 image(s) from 20×16 to 10×12" in s for s in d.notes)
    np.testing.assert_array_equal(d.x[0, 0], small / np.float32(255))
    ref = np.asarray(Image.fromarray((big / np.float32(255)).astype(np.float32), mode="F")
                     .resize((12, 10), Image.BILINEAR))
    np.testing.assert_allclose(d.x[1, 0], ref, atol=1e-6)
    (root / "empty").mkdir()
    with pytest.raises(FailsightInputError, match=r"class folder .*empty has no images"):
        load_data(root, image_size=16)
    (tmp_path / "void").mkdir()
    with pytest.raises(FailsightInputError, match="is empty"):
        load_data(tmp_path / "void")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(small).save(flat / "1.png")
    Image.fromarray(small).save(flat / "2.gif")
    with pytest.raises(FailsightInputError, match="no class sub-folders"):
        load_data(flat)
    d = load_data(flat, require_labels=False)
    assert d.y is None and d.class_names is None and d.n == 2
    np.testing.assert_array_equal(d.x[1, 0], small / np.float32(255))  # grey palette GIF stays grey
    (flat / "3.png").write_bytes(b"garbage")
    with pytest.raises(FailsightInputError, match=r"could not read image .*3\.png"):
        load_data(flat, require_labels=False)
    with pytest.raises(FailsightInputError, match="single image"):
        load_data(root / "a" / "s.png")


def test_resize_matches_pil_bilinear():
    rng = np.random.default_rng(5)
    for (hh, ww), (h, w) in [((28, 28), (32, 32)), ((37, 23), (12, 9)), ((10, 10), (10, 25))]:
        a = rng.uniform(size=(hh, ww)).astype(np.float32)
        ref = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.BILINEAR))
        got = resize_images(a[None, None], (h, w))[0, 0]
        np.testing.assert_allclose(got, ref, atol=1e-6)


# --------------------------------------------------------------------------------- arrays and torch
def test_arrays_tensors_and_kind(tmp_path, digits):
    x, y = digits
    d = load_data(torch.from_numpy(x), torch.from_numpy(y))
    assert d.source == "array" and d.x.shape == (12, 1, 10, 9) and list(d.y) == list(y)
    nhwc = np.random.default_rng(6).uniform(size=(3, 9, 9, 3)).astype(np.float32)
    d = load_data(nhwc, [0, 1, 2], image_size=(16, 12))
    assert d.x.shape == (3, 3, 16, 12) and d.layout == "NHWC" and any("resized" in s for s in d.notes)
    d = load_data(x, y, kind="features")
    assert d.kind == "features" and d.x.shape == (12, 90) and d.x.max() > 1  # raw values, no /255
    d = load_data(x, y, max_items=5)
    assert d.n == 5 and list(d.y) == list(y[:5])
    with pytest.raises(FailsightInputError, match="batch axis"):
        load_data(np.zeros((8, 8)), [0] * 8, kind="images")
    with pytest.raises(FailsightInputError, match="no labels"):
        load_data(x)
    with pytest.raises(FailsightInputError, match="different numbers of samples"):
        load_data(x, y[:-1])
    with pytest.raises(FailsightInputError, match="labels were given twice"):
        load_data(x, y, labels=tmp_path / "l.npy")
    with pytest.raises(FailsightInputError, match="standardised"):
        load_data(np.full((2, 1, 8, 8), -1.0), [0, 1])
    with pytest.raises(FailsightInputError, match="one value per sample"):
        load_data(np.zeros(5), [0] * 5)
    with pytest.raises(FailsightInputError, match="image_size must be"):
        load_data(x, y, image_size=(1, 2, 3))
    with pytest.raises(FailsightInputError, match="kind must be"):
        load_data(x, y, kind="text")
    with pytest.raises(FailsightInputError, match="cannot read data from a int"):
        load_data(3)


def test_torch_datasets(digits):
    x, y = digits
    xt = torch.from_numpy(x[:, None] / np.float32(255))
    ds = torch.utils.data.TensorDataset(xt, torch.from_numpy(y))
    d = load_data(ds)
    assert d.source == "torch" and d.x.shape == (12, 1, 10, 9)
    np.testing.assert_array_equal(d.x, xt.numpy())
    assert list(d.y) == list(y)
    d = load_data(ds, max_items=7, groups={"g": np.arange(12) % 2})
    assert d.n == 7 and list(d.groups["g"]) == list(np.arange(7) % 2)

    class PilDataset(torch.utils.data.Dataset):
        classes = ("zero", "one", "two")

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"image": Image.fromarray(np.stack([x[i]] * 3, axis=-1)), "label": int(y[i])}

    d = load_data(PilDataset())
    assert d.x.shape == (12, 3, 10, 9) and d.class_names == ("zero", "one", "two")
    np.testing.assert_array_equal(np.round(d.x[:, 1] * 255).astype(np.uint8), x)
    d = load_data(torch.utils.data.TensorDataset(xt), require_labels=False)
    assert d.y is None
    with pytest.raises(FailsightInputError, match="no labels"):
        load_data(torch.utils.data.TensorDataset(xt))
    with pytest.raises(FailsightInputError, match="empty"):
        load_data(torch.utils.data.TensorDataset(xt[:0], torch.from_numpy(y[:0])))


# -------------------------------------------------------------------------------- result and paths
def test_result_json_fingerprint_and_path_errors(tmp_path, digits):
    x, y = digits
    d = load_data(x, y)
    assert isinstance(d, LabelledData) and len(d) == 12
    xs, ys = d
    assert xs is d.x and ys is d.y
    js = json.loads(d.to_json())
    assert "x" not in js and "y" not in js and "groups" not in js
    assert js["fingerprint"] == d.fingerprint and len(d.fingerprint) == 16 and js["item_shape"] == [1, 10, 9]
    assert load_data(x.copy(), y.copy()).fingerprint == d.fingerprint
    y2 = y.copy()
    y2[0] = 2
    assert load_data(x, y2).fingerprint != d.fingerprint
    assert load_data(x, require_labels=False).fingerprint != d.fingerprint
    assert load_data(d) is d
    with pytest.raises(FailsightInputError, match="already a LabelledData"):
        load_data(d, max_items=3)
    with pytest.raises(FailsightInputError, match=r"test data file .* does not exist"):
        load_data(tmp_path / "missing.npz", what="test data")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FailsightInputError, match=r"unknown format \(suffix '.txt'\).*\.npz.*IDX.*image folder"):
        load_data(tmp_path / "notes.txt")
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(FailsightInputError, match="single array"):
        load_data(tmp_path / "x.npy")
    np.save(tmp_path / "y.npy", y)
    d = load_data(tmp_path / "x.npy", labels=tmp_path / "y.npy")
    assert d.source == "npy" and d.fingerprint == load_data(x, y).fingerprint
    np.savez(tmp_path / "cn.npz", x=x, y=y, class_names=np.array(["a", "b"]))
    with pytest.raises(FailsightInputError, match="label 2 but only 2 class names"):
        load_data(tmp_path / "cn.npz")


def test_robustness_loader_reads_folders_and_idx(tmp_path, digits):
    x, y = digits
    root = write_png_folder(tmp_path / "f", x, y)
    li = load_labelled_images(root)
    assert li.x.shape == (12, 1, 10, 9) and li.layout == "NCHW" and len(li.y) == 12
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:, :6, :6])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y.astype(np.uint8))
    with pytest.raises(FailsightInputError, match="at least 8"):
        load_labelled_images(tmp_path / "t10k-images-idx3-ubyte")
    li = load_labelled_images(tmp_path / "t10k-images-idx3-ubyte", image_size=12)
    assert li.x.shape == (12, 1, 12, 12)


def test_integer_images_with_an_ambiguous_scale_are_refused_with_the_fix():
    """issue 11 item 5: int64 digits (0..16) were divided by 255 into nearly black images."""
    from sklearn.datasets import load_digits

    from failsight.datasets.io import normalize_images

    digits = load_digits()
    x = digits.images.astype(np.int64)  # (1797, 8, 8), 0..16
    with pytest.raises(FailsightInputError, match=r"ambiguous.*x / 16\.0"):
        load_data(x, digits.target)
    # the fix the message names gives the images the digits loader uses
    d = load_data(x / 16.0, digits.target)
    assert d.x.max() == 1.0 and d.x.dtype == np.float32
    # binary 0/1 integer masks: ambiguous too (astype(bool) or / 1.0 says what is meant)
    with pytest.raises(FailsightInputError, match="ambiguous"):
        normalize_images(np.eye(8, dtype=np.int32)[None].repeat(2, 0))
    # safe inferences stay: uint8 is 8-bit by its type; a wider type whose values use the 8th bit is 0..255
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 17, size=(3, 8, 8), dtype=np.uint8)
    np.testing.assert_allclose(normalize_images(u8)[0][:, 0], u8 / np.float32(255.0))
    wide = rng.integers(0, 256, size=(3, 8, 8)).astype(np.int64)
    wide[0, 0, 0] = 200
    np.testing.assert_allclose(normalize_images(wide)[0][:, 0], wide / np.float32(255.0), rtol=1e-6)
