"""The numba kernels behind JPEG and pixelate: same results as the torch paths, PIL's maps bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from failsight.robustness import _corruptions as C
from failsight.robustness import _corruptions_ops as ops
from failsight.robustness import shifts as S

pytestmark = pytest.mark.skipif(not ops.USE_NUMBA, reason="numba kernels unavailable or disabled")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torch_path(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the numba kernels switched off (the path used off-CPU)."""
    ops.USE_NUMBA = False
    try:
        return fn(*args, **kwargs)
    finally:
        ops.USE_NUMBA = True


def photos(h: int, w: int) -> torch.Tensor:
    """scikit-learn's two sample photos, area-resized to ``(2, 3, h, w)`` and rounded to 8-bit levels."""
    from sklearn.datasets import load_sample_image

    imgs = [load_sample_image("china.jpg")[:, 80:507], load_sample_image("flower.jpg")[:, 100:527]]
    x = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in imgs]).float() / 255
    return (F.interpolate(x, size=(h, w), mode="area").clamp(0, 1) * 255).round() / 255


def pil_jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf)).astype(np.float64) / 255


# ------------------------------------------------------------------------------------------------ JPEG


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 37, 29), (2, 1, 33, 40), (2, 3, 8, 8), (2, 3, 17, 64)])
@pytest.mark.parametrize("subsampling", [True, False])
def test_jpeg_kernel_matches_torch_path(shape, subsampling):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    for q in (7, 15, 25):
        ours = ops.jpeg(x, q, subsampling=subsampling)
        ref = torch_path(ops.jpeg, x, q, subsampling=subsampling)
        assert ours.shape == x.shape and float(ours.min()) >= 0 and float(ours.max()) <= 1
        d = (ours - ref).abs()
        # same arithmetic in float32; only a coefficient on an exact rounding tie may round the other way
        assert float(d.mean()) < 1e-6
        assert float((d > 1e-5).float().mean()) < 1e-3


@pytest.mark.parametrize(("h", "w"), [(45, 37), (64, 64)])
def test_jpeg_kernel_close_to_pil_on_photos(h, w):
    x = photos(h, w)
    u8 = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for q in (25, 10):
        ours = ops.jpeg(x, q).permute(0, 2, 3, 1).numpy()
        for i in range(len(u8)):
            ref = pil_jpeg(u8[i], q)
            err_ref = np.abs(ref - u8[i] / 255).mean()
            assert np.abs(ours[i] - ref).mean() < 0.35 * err_ref
            assert abs(np.abs(ours[i] - u8[i] / 255).mean() - err_ref) < 0.15 * err_ref
    gray = x[:1, 1:2]
    ref = pil_jpeg((gray[0, 0] * 255).round().byte().numpy(), 15)
    ours = ops.jpeg(gray, 15)[0, 0].numpy()
    assert np.abs(ours - ref).mean() < 0.15 * np.abs(ref - gray[0, 0].numpy()).mean()


def test_jpeg_non_contiguous_input_takes_the_torch_path_with_the_same_result():
    x = torch.rand(2, 3, 24, 40)
    xt = x.transpose(2, 3)
    assert not xt.is_contiguous()
    d = (ops.jpeg(xt, 15) - ops.jpeg(xt.contiguous(), 15)).abs()
    assert float(d.mean()) < 1e-6


# ------------------------------------------------------------------------------------------------ pixelate


def pil_pixelate(plane: np.ndarray, c: float) -> np.ndarray:
    h, w = plane.shape
    small = Image.fromarray(plane, mode="F").resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


@pytest.mark.parametrize(("h", "w"), [(40, 40), (37, 29), (17, 100), (11, 13), (224, 224), (8, 8)])
def test_pixelate_matches_pil_at_any_size_on_both_paths(h, w):
    # sizes where a cell edge falls exactly on a pixel centre (40 -> 16, 37 -> 18, 17 -> 10, ...): PIL's
    # double-precision rounding decides there, and both paths follow it
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    for sev, c in enumerate(C.PARAMS["pixelate"], start=1):
        ref = np.stack([pil_pixelate(x[0, ch].numpy(), c) for ch in range(3)])
        fast = S.corrupt(x, "pixelate", sev)[0].numpy()
        slow = torch_path(S.corrupt, x, "pixelate", sev)[0].numpy()
        np.testing.assert_allclose(fast, ref, atol=1e-5)
        np.testing.assert_allclose(slow, ref, atol=1e-5)


def test_block_maps_are_pils():
    for length in range(8, 97):
        for m in sorted({max(1, int(length * c)) for c in C.PARAMS["pixelate"]}):
            starts, counts, near, _ = C._blocks(length, m)
            idx = np.arange(m, dtype=np.float32)[None, :]
            pil_near = np.asarray(Image.fromarray(idx, mode="F").resize((length, 1), Image.NEAREST))[0]
            np.testing.assert_array_equal(near.numpy(), pil_near.astype(np.int64), err_msg=f"{length}->{m}")
            # BOX weights of PIL: resize the identity, row i = weights of input pixel i in each cell
            wts = np.asarray(Image.fromarray(np.eye(length, dtype=np.float32), mode="F").resize((m, length),
                                                                                               Image.BOX))
            ours = np.zeros((length, m))
            for c in range(m):
                ours[int(starts[c]):int(starts[c] + counts[c]), c] = 1.0 / float(counts[c])
            np.testing.assert_allclose(ours, wts, atol=1e-6, err_msg=f"{length}->{m}")


def test_pixelate_output_is_piecewise_constant_on_pils_cells():
    x = torch.rand(2, 3, 40, 40)
    y = S.corrupt(x, "pixelate", 3)  # 40 -> 16 cells per axis
    _, _, near, _ = C._blocks(40, 16)
    for b in range(16):
        for a in range(16):
            blk = y[:, :, near == b][:, :, :, near == a]
            assert float((blk - blk[..., :1, :1]).abs().max()) == 0.0


# ------------------------------------------------------------------------------------------------ plumbing


@pytest.mark.parametrize("name", ["jpeg_compression", "pixelate"])
def test_threads_and_chunks_do_not_change_results(name):
    x = torch.rand(30, 3, 112, 112, generator=torch.Generator().manual_seed(3))  # > 1M values: chunked
    one = S.corrupt(x, name, 3)
    torch.set_num_threads(2)
    try:
        two = S.corrupt(x, name, 3)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)
    parts = torch.cat([S.corrupt(x[:7], name, 3), S.corrupt(x[7:], name, 3)])
    assert torch.equal(one, parts)
    assert torch.equal(one[4:5], S.corrupt(x[4:5], name, 3))


def test_kernels_do_not_modify_their_input():
    x = torch.rand(3, 3, 33, 47)
    keep = x.clone()
    for name in ("jpeg_compression", "pixelate"):
        S.corrupt(x, name, 5)
        assert torch.equal(x, keep)
