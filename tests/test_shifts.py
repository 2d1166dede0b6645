"""Tests for failsight.robustness.shifts: ImageNet-C corruptions, cue shifts, registry, errors."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage, stats

from failsight._validate import FailsightInputError
from failsight.robustness import _corruptions as C
from failsight.robustness import _corruptions_ops as ops
from failsight.robustness import shifts as S

ALL = S.list_shifts()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids OpenMP hand-off costs on a busy machine (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
DETERMINISTIC = {"contrast", "brightness", "pixelate", "jpeg_compression", "zoom_blur", "defocus_blur",
                 "gaussian_blur", "saturate", "desaturation", "texture_blur"}


def natural(size: int = 64, batch: int = 2) -> torch.Tensor:
    """Real photographs (scikit-learn's bundled samples), area-downsized to ``size``: ``(batch, 3, s, s)``."""
    from sklearn.datasets import load_sample_image

    imgs = [load_sample_image("china.jpg")[:, 80:507], load_sample_image("flower.jpg")[:, 100:527]]
    x = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in imgs]).float() / 255
    return F.interpolate(x, size=(size, size), mode="area").clamp(0, 1)[:batch].contiguous()


def mac(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


# ------------------------------------------------------------------------------------------------ registry


def test_builtins_registered():
    assert len(S.CORRUPTIONS) == 15 and len(S.EXTRA_CORRUPTIONS) == 4
    assert S.list_shifts(suite="imagenet_c") == list(S.CORRUPTIONS)
    assert S.list_shifts(suite="imagenet_c_extra") == list(S.EXTRA_CORRUPTIONS)
    assert set(S.list_shifts(family="color")) == {"hue_rotation", "channel_permutation", "desaturation",
                                                  "color_jitter"}
    assert set(S.list_shifts(family="geometry")) == {"rotation", "scale", "translation", "shear", "elastic"}
    assert set(S.list_shifts(family="texture")) == {"texture_noise", "texture_blur"}
    assert S.list_shifts(family="noise") == ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
    gray_ok = S.list_shifts(channels=1)
    assert "saturate" not in gray_ok and "hue_rotation" not in gray_ok and "color_jitter" in gray_ok
    assert S.shift_family("fog") == "weather" and S.shift_info("fog").suite == "imagenet_c"
    assert set(S.shift_families()) >= {"noise", "blur", "weather", "digital", "color", "geometry", "texture"}
    d = S.shift_info("snow").to_dict()
    assert d["name"] == "snow" and "fn" not in d


@pytest.fixture
def custom_shift():
    def invert(x, severity, g):
        return (1 - x) * (severity / 5) + x * (1 - severity / 5) + 0.5  # out of range on purpose: clipped

    S.register_shift("test_invert", invert, family="custom_test", description="partial inversion")
    yield "test_invert"
    if "test_invert" in S.list_shifts():
        S.unregister_shift("test_invert")


def test_register_and_use_custom_shift(custom_shift):
    assert custom_shift in S.list_shifts() and S.list_shifts(family="custom_test") == [custom_shift]
    x = torch.rand(3, 1, 8, 8)
    y = S.corrupt(x, custom_shift, 5)
    assert torch.allclose(y, (1.5 - x).clamp(0, 1))
    with pytest.raises(FailsightInputError, match="already registered"):
        S.register_shift(custom_shift, lambda x, s, g: x)
    S.register_shift(custom_shift, lambda x, s, g: x * 0, overwrite=True)
    assert float(S.corrupt(x, custom_shift, 1).abs().max()) == 0
    S.unregister_shift(custom_shift)
    assert custom_shift not in S.list_shifts()


def test_register_errors():
    with pytest.raises(FailsightInputError, match="built-in"):
        S.register_shift("fog", lambda x, s, g: x, overwrite=True)
    with pytest.raises(FailsightInputError, match="callable"):
        S.register_shift("nope", 3)
    with pytest.raises(FailsightInputError, match="non-empty"):
        S.register_shift("", lambda x, s, g: x)
    with pytest.raises(FailsightInputError, match="built-in"):
        S.unregister_shift("fog")
    S.register_shift("test_bad_shape", lambda x, s, g: x[:, :, :4])
    try:
        with pytest.raises(FailsightInputError, match="must return a tensor of shape"):
            S.corrupt(torch.rand(1, 3, 8, 8), "test_bad_shape", 1)
    finally:
        S.unregister_shift("test_bad_shape")


def test_custom_shift_gets_seeded_generator():
    S.register_shift("test_noise", lambda x, s, g: x + 0.1 * s * torch.randn(x.shape, generator=g))
    try:
        x = torch.full((2, 3, 8, 8), 0.5)
        a, b, c = (S.corrupt(x, "test_noise", 2, seed=k) for k in (3, 3, 4))
        assert torch.equal(a, b) and not torch.equal(a, c)
    finally:
        S.unregister_shift("test_noise")


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("size", [(8, 8), (32, 32), (64, 64), (24, 40)])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_shift_every_severity_keeps_shape_dtype_range(size, channels):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, channels, *size, generator=g)
    x[:, :, :2, :2] = 0.0  # exact zeros and ones exercise the HSV and Poisson edge cases
    x[:, :, -2:, -2:] = 1.0
    before = x.clone()
    for name in ALL:
        for sev in S.SEVERITIES:
            y = S.corrupt(x, name, sev, seed=sev)
            assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype, (name, sev)
            assert torch.isfinite(y).all(), (name, sev)
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, (name, sev)
    assert torch.equal(x, before), "corrupt must not modify its input"


def test_numpy_in_numpy_out_and_dtypes():
    x = np.random.default_rng(0).random((2, 3, 16, 16))
    y = S.corrupt(x, "gaussian_noise", 2, seed=1)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == x.shape
    y32 = S.corrupt(x.astype(np.float32), "gaussian_noise", 2, seed=1)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y, y32, atol=1e-6)
    t16 = torch.from_numpy(x).half()
    assert S.corrupt(t16, "contrast", 3).dtype == torch.float16
    xt = torch.from_numpy(x).float().requires_grad_(True)
    assert not S.corrupt(xt, "pixelate", 3).requires_grad


def test_determinism_and_seed_variation():
    x = natural(32).repeat(4, 1, 1, 1)  # 8 images: per-image random choices (signs, axes) rarely all coincide
    for name in ALL:
        a = S.corrupt(x, name, 3, seed=7)
        b = S.corrupt(x, name, 3, seed=7)
        assert torch.equal(a, b), name
        c = S.corrupt(x, name, 3, seed=8)
        if name in DETERMINISTIC:
            assert torch.equal(a, c), name
        else:
            assert not torch.equal(a, c), name


def test_chunked_batches_match_unchunked(monkeypatch):
    x = natural(32)
    names = ("contrast", "brightness", "saturate", "pixelate", "jpeg_compression", "defocus_blur")
    full = {n: S.corrupt(x, n, 4, seed=2) for n in names}
    monkeypatch.setattr(S, "_CHUNK_VALUES", 3 * 32 * 32)  # one image per chunk
    for name, ref in full.items():
        torch.testing.assert_close(S.corrupt(x, name, 4, seed=2), ref, atol=1e-6, rtol=0)
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur"):
        y = S.corrupt(x, name, 3, seed=2)
        assert torch.equal(y, S.corrupt(x, name, 3, seed=2)) and float(y.min()) >= 0 and float(y.max()) <= 1
        assert mac(y, x) > 0.01


# ------------------------------------------------------------------------------------------------ severity


MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "motion_blur",
            "zoom_blur", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
            "jpeg_compression", "gaussian_blur", "hue_rotation", "channel_permutation", "desaturation",
            "rotation", "translation", "shear", "elastic", "texture_noise", "texture_blur"]


@pytest.mark.parametrize("name", MONOTONE)
def test_change_grows_with_severity(name):
    x = natural(64)
    changes = [mac(S.corrupt(x, name, s, seed=0), x) for s in S.SEVERITIES]
    assert changes[0] > 0
    assert all(b > a for a, b in itertools.pairwise(changes)), (name, changes)


@pytest.mark.parametrize("name", ["glass_blur", "snow", "frost", "spatter", "saturate", "color_jitter", "scale"])
def test_remaining_shifts_change_the_image(name):
    """Not monotone in the reference either (glass blur and frost trade parameters across severities)."""
    x = natural(64)
    changes = [mac(S.corrupt(x, name, s, seed=0), x) for s in S.SEVERITIES]
    assert min(changes) > 1e-3, changes
    if name not in ("glass_blur", "frost"):
        assert changes[-1] > changes[0], changes


# ------------------------------------------------------------------------------------------------ noise


def test_gaussian_noise_statistics():
    x = torch.full((8, 3, 64, 64), 0.5)
    for sev, sigma in enumerate(C.PARAMS["gaussian_noise"], start=1):
        d = S.corrupt(x, "gaussian_noise", sev, seed=sev) - x
        if sigma < 0.2:  # clipping at 0 / 1 is negligible below 2.5 sigma
            assert abs(float(d.std()) - sigma) < 0.01 * sigma + 0.002
            assert abs(float(d.mean())) < 0.003


def test_normal_sampler_matches_the_normal_distribution():
    out = ops.normal_into(torch.empty(200_000), 0.5, 2.0, torch.Generator().manual_seed(0))
    ks = stats.kstest((out.double().numpy() - 0.5) / 2.0, "norm")
    assert ks.pvalue > 1e-3
    assert abs(float(out.mean()) - 0.5) < 0.02 and abs(float(out.std()) - 2.0) < 0.02


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_shot_noise_is_exact_poisson(severity):
    rate = C.PARAMS["shot_noise"][severity - 1]
    level = 0.6  # on the 1/255 grid, so the rate is exact
    x = torch.full((20, 3, 64, 64), level)
    k = (S.corrupt(x, "shot_noise", severity, seed=1) * rate).round().long().view(-1)
    kmax = int(np.ceil(rate))
    observed = torch.bincount(k, minlength=kmax + 1).numpy()
    lam = rate * level
    expected = stats.poisson.pmf(np.arange(kmax + 1), lam)
    expected[-1] = stats.poisson.sf(kmax - 1, lam)  # outcomes >= ceil(rate) are clipped to 1
    keep = expected * k.numel() > 5
    chi2 = (((observed - expected * k.numel()) ** 2) / (expected * k.numel()))[keep].sum()
    assert chi2 < stats.chi2.ppf(0.999, keep.sum() - 1), (observed, expected * k.numel())


def test_shot_noise_on_non_grid_values():
    x = torch.rand(4, 3, 32, 32)
    y = S.corrupt(x, "shot_noise", 1, seed=0)
    assert abs(float(y.mean() - x.clamp(max=1).mean())) < 0.01


def test_impulse_noise_fractions():
    x = torch.full((8, 3, 64, 64), 0.5)
    a = C.PARAMS["impulse_noise"][3]
    y = S.corrupt(x, "impulse_noise", 4, seed=0)
    n = y.numel()
    assert abs(float((y == 1).sum()) / n - a / 2) < 0.005
    assert abs(float((y == 0).sum()) / n - a / 2) < 0.005
    assert float(((y != 0) & (y != 1) & (y != 0.5)).sum()) == 0


def test_speckle_noise_scales_with_intensity():
    x = torch.full((4, 3, 64, 64), 0.2)
    d = S.corrupt(x, "speckle_noise", 1, seed=0) - x
    assert abs(float(d.std()) - 0.2 * C.PARAMS["speckle_noise"][0]) < 0.002


# ------------------------------------------------------------------------------------------------ blur


def test_gaussian_blur_matches_scipy_with_scaled_sigma():
    x = torch.rand(2, 3, 64, 48)
    for sev in S.SEVERITIES:
        sigma = C.PARAMS["gaussian_blur"][sev - 1] * 48 / 224  # the size rule: min(H, W) / 224
        ref = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(S.corrupt(x, "gaussian_blur", sev).numpy(), ref, atol=1e-5)


def test_zoom_blur_matches_scipy_zoom():
    x = torch.rand(1, 3, 40, 32)
    img = x[0].numpy().transpose(1, 2, 0).astype(np.float64)
    h, w = img.shape[:2]
    for sev in (1, 5):
        zooms = C.PARAMS["zoom_blur"][sev - 1]
        acc = img.copy()
        for z in zooms:
            ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
            t, left = (h - ch) // 2, (w - cw) // 2
            acc += ndimage.zoom(img[t:t + ch, left:left + cw], (z, z, 1), order=1)[:h, :w]
        ref = (acc / (len(zooms) + 1)).transpose(2, 0, 1)
        np.testing.assert_allclose(S.corrupt(x, "zoom_blur", sev)[0].numpy(), ref, atol=1e-5)


def test_blurs_preserve_constant_images():
    x = torch.full((2, 3, 32, 32), 0.3)
    for name in ("defocus_blur", "motion_blur", "zoom_blur", "gaussian_blur", "glass_blur", "texture_blur"):
        torch.testing.assert_close(S.corrupt(x, name, 5, seed=1), x, atol=1e-5, rtol=0)


def test_disk_kernel_scales_with_radius():
    for r in (0.3, 1.5, 6.0):
        k = ops.disk_kernel(r, 0.0)
        assert abs(float(k.sum()) - 1) < 1e-5 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert ops.disk_kernel(6.0, 0.5).shape[0] > ops.disk_kernel(1.5, 0.5).shape[0]
    c = ops.disk_kernel(0.01, 0.0)
    assert c.shape == (1, 1) or float(c.max()) > 0.99  # a sub-pixel disk is (almost) the identity


def test_motion_blur_is_a_one_sided_line():
    """A point becomes a trail along -(cos a, sin a) with the taps' Gaussian weights, total mass kept."""
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 32, 32] = 1.0
    for deg in (-40.0, 0.0, 25.0, 90.0, -130.0):
        length, sigma = 12.0, 5.0
        y = ops.line_blur(x, torch.tensor([deg]), length, sigma)[0, 0]
        assert abs(float(y.sum()) - 1) < 1e-5
        i = torch.arange(13, dtype=torch.float64)
        k = torch.exp(-i ** 2 / (2 * sigma ** 2))
        mean_i = float((k * i).sum() / k.sum())
        rad = np.deg2rad(deg)
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        cy, cx = float((y * yy).sum()), float((y * xx).sum())
        assert abs(cy - (32 - mean_i * np.sin(rad))) < 0.6, (deg, cy)
        assert abs(cx - (32 - mean_i * np.cos(rad))) < 0.6, (deg, cx)
        ys, xs = torch.nonzero(y > 1e-3, as_tuple=True)
        # every lit pixel lies within a pixel of the line through the point
        dist = ((xs - 32) * np.sin(rad) - (ys - 32) * np.cos(rad)).abs()
        assert float(dist.max()) <= 1.0


def test_motion_blur_angles_differ_per_image():
    x = torch.zeros(8, 1, 96, 96)
    x[:, 0, 48, 48] = 1.0
    y = S.corrupt(x.expand(8, 3, 96, 96).contiguous(), "motion_blur", 5, seed=0)
    assert len({tuple(torch.nonzero(y[i, 0] > 1e-3).flatten().tolist()) for i in range(8)}) >= 6


# ------------------------------------------------------------------------------------------------ weather


def test_brightness_matches_hsv_reference_and_raises_value():
    x = natural(32)
    x[:, :, :3, :3] = 0.0  # black pixels (hue undefined)
    hsv = rgb_to_hsv(x.numpy().transpose(0, 2, 3, 1))
    for sev, c in enumerate(C.PARAMS["brightness"], start=1):
        ref = hsv.copy()
        ref[..., 2] = np.clip(ref[..., 2] + c, 0, 1)
        y = S.corrupt(x, "brightness", sev)
        np.testing.assert_allclose(y.numpy(), hsv_to_rgb(ref).transpose(0, 3, 1, 2), atol=1e-5)
        assert float(y.amax(1).mean()) > float(x.amax(1).mean())
    g = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(S.corrupt(g, "brightness", 2), (g + 0.2).clamp(max=1))


def test_fog_and_frost_layers():
    m = ops.plasma_fractal(3, 64, 2.0, torch.Generator().manual_seed(0))
    assert m.shape == (3, 64, 64)
    assert float(m.amin((1, 2)).max()) == 0.0 and float(m.amax((1, 2)).min()) == 1.0
    assert 0.35 < float(m.mean()) < 0.65  # the reference's fractal is centred (mean ~0.5)
    f = C.frost_layer(2, 3, 48, 64, torch.Generator().manual_seed(0))
    assert f.shape == (2, 3, 48, 64) and float(f.min()) >= 0 and float(f.max()) <= 1
    assert float(f[:, 2].mean()) > float(f[:, 0].mean())  # bluish
    dark = torch.zeros(2, 3, 32, 32)
    assert float(S.corrupt(dark, "frost", 3).mean()) > 0.1
    assert float(S.corrupt(dark + 0.2, "fog", 3).mean()) > 0.2 / 3  # fog lifts dark scenes towards grey


# ------------------------------------------------------------------------------------------------ digital


def test_contrast_scales_std_and_keeps_mean():
    x = natural(32)
    for sev, c in enumerate(C.PARAMS["contrast"], start=1):
        y = S.corrupt(x, "contrast", sev)
        torch.testing.assert_close(y.std(dim=(2, 3)), c * x.std(dim=(2, 3)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_pixelate_matches_pil_box_then_nearest(size):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    for sev, c in enumerate(C.PARAMS["pixelate"], start=1):
        y = S.corrupt(x, "pixelate", sev)[0].numpy()
        m = int(size * c)
        for ch in range(3):
            im = Image.fromarray(x[0, ch].numpy(), mode="F").resize((m, m), Image.BOX)
            ref = np.asarray(im.resize((size, size), Image.NEAREST))
            np.testing.assert_allclose(y[ch], ref, atol=1e-5)


def test_pixelate_is_piecewise_constant_in_blocks():
    x = torch.rand(2, 3, 40, 40)
    y = S.corrupt(x, "pixelate", 3)  # factor 0.4: 16 blocks per axis
    from failsight.robustness._corruptions import _blocks

    ids = _blocks(40, 16)[2]  # PIL's NEAREST map (its float arithmetic, not the integer (2i+1)m//2n formula)
    for b in range(16):
        for a in range(16):
            blk = y[:, :, ids == b][:, :, :, ids == a]
            assert float((blk - blk[..., :1, :1]).abs().max()) == 0.0
    assert len(torch.unique(y[0, 0, 0])) <= 16


def test_jpeg_close_to_pil():
    x = natural(64)
    x = (x * 255).round() / 255
    u8 = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for q in (25, 10, 7):
        ours = S.jpeg_compress(x, q).permute(0, 2, 3, 1).numpy()
        for i in range(len(u8)):
            buf = io.BytesIO()
            Image.fromarray(u8[i]).save(buf, "JPEG", quality=q)
            ref = np.asarray(Image.open(buf)).astype(np.float64) / 255
            err_ref = np.abs(ref - u8[i] / 255).mean()
            err_ours = np.abs(ours[i] - u8[i] / 255).mean()
            assert np.abs(ours[i] - ref).mean() < 0.35 * err_ref  # far closer to PIL than to the input
            assert abs(err_ours - err_ref) < 0.15 * err_ref


def test_jpeg_grayscale_close_to_pil():
    g8 = (natural(64)[0, 1] * 255).round().byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(g8).save(buf, "JPEG", quality=15)
    ref = np.asarray(Image.open(buf)).astype(np.float64) / 255
    ours = S.jpeg_compress(torch.from_numpy(g8 / 255.0)[None, None].float(), 15)[0, 0].numpy()
    assert np.abs(ours - ref).mean() < 0.15 * np.abs(ref - g8 / 255).mean()


def test_jpeg_quality_100_is_near_identity():
    x = torch.rand(2, 3, 40, 24)
    y = S.jpeg_compress(x, 100, subsampling=False)
    assert float((y - x).abs().max()) < 2.5 / 255
    smooth = natural(64)
    assert mac(S.jpeg_compress(smooth, 100, subsampling=False), smooth) < 0.5 / 255
    assert mac(S.jpeg_compress(smooth, 100), smooth) < mac(S.jpeg_compress(smooth, 90), smooth)
    assert mac(S.jpeg_compress(smooth, 5), smooth) > mac(S.jpeg_compress(smooth, 50), smooth)


def test_quant_table_quality_rule():
    np.testing.assert_array_equal(ops.quant_table(50), ops._Q_LUMA)
    assert ops.quant_table(100).max() == 1
    assert ops.quant_table(1).max() == 255  # baseline clip
    assert ops.quant_table(25)[0, 0] == np.floor((16 * 200 + 50) / 100)


def test_elastic_transform_displacement_scales_with_size():
    """The displacement std follows the size rule: same relative warp at 64 and 224 pixels."""
    for size in (64, 224):
        s = size / 224
        field = ops.smooth_field(4, size, size, C._ELASTIC_SIGMA_REF * s, 1.7 * s, torch.Generator().manual_seed(0))
        assert abs(float(field.std()) / (1.7 * s) - 1) < 0.2


# ------------------------------------------------------------------------------------------------ extra


def test_saturate_matches_hsv_reference():
    x = natural(32)
    x[:, :, :4, :4] = 0.5  # gray pixels: hue 0, so an offset tints them red (as skimage does)
    hsv = rgb_to_hsv(x.numpy().transpose(0, 2, 3, 1))
    for sev, (a, b) in enumerate(C.PARAMS["saturate"], start=1):
        ref = hsv.copy()
        ref[..., 1] = np.clip(ref[..., 1] * a + b, 0, 1)
        np.testing.assert_allclose(S.corrupt(x, "saturate", sev).numpy(),
                                   hsv_to_rgb(ref).transpose(0, 3, 1, 2), atol=1e-5)


def test_spatter_modes():
    x = natural(64)
    water = S.corrupt(x, "spatter", 2, seed=0)
    mud = S.corrupt(x, "spatter", 5, seed=0)
    assert float((water - x).min()) >= -1e-6  # water drops only add light
    assert float((mud - x).min()) < -0.1  # mud covers the image with dark brown


def test_snow_brightens():
    x = natural(64)
    assert float(S.corrupt(x, "snow", 3, seed=0).mean()) > float(x.mean()) + 0.05


# ------------------------------------------------------------------------------------------------ cue shifts


def test_color_shifts_keep_luma_structure_and_gray_is_identity():
    x = natural(32)
    hsv = rgb_to_hsv(x.numpy().transpose(0, 2, 3, 1))
    y = S.corrupt(x, "hue_rotation", 3, seed=0)
    hy = rgb_to_hsv(y.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(hy[..., 1:], hsv[..., 1:], atol=1e-4)  # S and V kept
    dh = np.abs(((hy[..., 0] - hsv[..., 0]) * 360 + 180) % 360 - 180)[hsv[..., 1] > 0.1]
    assert np.allclose(dh, 90, atol=0.5)
    z = S.corrupt(x, "channel_permutation", 5, seed=0)
    for i in range(len(x)):
        assert sorted(z[i].sum((1, 2)).tolist()) == pytest.approx(sorted(x[i].sum((1, 2)).tolist()), rel=1e-5)
        assert not torch.equal(z[i], x[i])
    d = S.corrupt(x, "desaturation", 5)
    torch.testing.assert_close(d, ops.gray(x).expand_as(x), atol=1e-6, rtol=0)
    g = torch.rand(2, 1, 16, 16)
    for name in ("hue_rotation", "channel_permutation", "desaturation", "saturate"):
        assert torch.equal(S.corrupt(g, name, 5), g)


def test_geometry_shifts_move_a_square():
    x = torch.zeros(2, 1, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0

    def centroid(t):
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        m = t[:, 0].sum((1, 2))
        return (t[:, 0] * yy).sum((1, 2)) / m, (t[:, 0] * xx).sum((1, 2)) / m

    for name in ("rotation", "scale", "shear"):  # about the centre: centroid stays
        cy, cx = centroid(S.corrupt(x, name, 4, seed=1))
        assert torch.allclose(cy, torch.tensor(31.5), atol=0.3) and torch.allclose(cx, torch.tensor(31.5), atol=0.3)
    cy, cx = centroid(S.corrupt(x, "translation", 3, seed=1))
    shift = torch.sqrt((cy - 31.5) ** 2 + (cx - 31.5) ** 2)
    assert torch.allclose(shift, torch.tensor(0.15 * 64), atol=0.5)
    area = S.corrupt(x, "scale", 5, seed=1)[:, 0].sum((1, 2))
    expected = torch.tensor([256 * 1.5 ** 2, 256 / 1.5 ** 2])
    assert all(float(torch.min(torch.abs(a - expected))) < 20 for a in area)
    rot = S.corrupt(x, "rotation", 5, seed=1)
    assert abs(float(rot.sum()) - float(x.sum())) < 0.02 * float(x.sum())


def test_texture_noise_is_achromatic():
    x = torch.full((2, 3, 32, 32), 0.5)
    y = S.corrupt(x, "texture_noise", 2, seed=0)
    torch.testing.assert_close(y[:, 0], y[:, 1])
    torch.testing.assert_close(y[:, 1], y[:, 2])
    assert float((y - x).std()) > 0.05


def test_texture_blur_removes_high_frequencies():
    x = natural(64)
    y = S.corrupt(x, "texture_blur", 5)
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    hf = lambda t: float(ops.conv_same(t, lap).abs().mean())  # noqa: E731
    assert hf(y) < 0.3 * hf(x)
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), atol=0.01, rtol=0)  # colour kept


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_name_lists_valid_ones():
    with pytest.raises(FailsightInputError, match="gaussian_noise") as ei:
        S.corrupt(torch.rand(1, 3, 8, 8), "gausian_noise", 1)
    assert "valid names" in str(ei.value) and "hue_rotation" in str(ei.value)


@pytest.mark.parametrize("sev", [0, 6, 2.5, "3", True, None])
def test_bad_severity(sev):
    with pytest.raises(FailsightInputError, match=r"severity must be an integer in 1\.\.5"):
        S.corrupt(torch.rand(1, 3, 8, 8), "fog", sev)


@pytest.mark.parametrize(("x", "match"), [
    (torch.rand(1, 3, 8, 8) * 255, "divide by 255"),
    (torch.rand(1, 3, 8, 8) - 0.5, r"values in \[0, 1\]"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.rand(2, 32, 32, 3), "permute"),
    (np.random.default_rng(0).random((2, 32, 32, 3)), "transpose"),
    (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "(?i)divide by 255"),
    (np.zeros((1, 3, 8, 8), dtype=np.int64), "floating point"),
    (torch.rand(3, 8, 8), "batch axis"),
    (torch.rand(1, 3, 4, 4), "at least 8"),
    (torch.rand(1, 2, 8, 8), "1 or 3 channels"),
    (torch.rand(0, 3, 8, 8), "empty"),
    ([[0.5]], "torch.Tensor or numpy.ndarray"),
])
def test_bad_images(x, match):
    with pytest.raises(FailsightInputError, match=match):
        S.corrupt(x, "contrast", 1)


def test_other_bad_arguments():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(FailsightInputError, match="seed"):
        S.corrupt(x, "fog", 1, seed=-1)
    with pytest.raises(FailsightInputError, match="seed"):
        S.corrupt(x, "fog", 1, seed=1.5)
    with pytest.raises(FailsightInputError, match="unknown shift family"):
        S.list_shifts(family="nope")
    with pytest.raises(FailsightInputError, match="unknown suite"):
        S.list_shifts(suite="nope")
    with pytest.raises(FailsightInputError, match="channels"):
        S.list_shifts(channels=2)
    with pytest.raises(FailsightInputError, match="quality"):
        S.jpeg_compress(x, 0)
    with pytest.raises(FailsightInputError, match="unknown shift"):
        S.shift_info("nope")
