"""Batched torch image operations behind :mod:`failsight.robustness.shifts`.

Every function takes float32 images ``(N, C, H, W)`` (values in [0, 1] unless noted), never modifies its
input in place and is vectorised over the batch: Python loops only run over a handful of kernel taps,
zoom factors or fractal levels. Randomness comes from the ``torch.Generator`` that is passed in.
JPEG and pixelate, whose torch forms are dominated by memory traffic, also have numba kernels that do
each image in one cache-resident pass on CPU (used when numba is importable; same results).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:  # numba is a declared dependency; the torch paths keep everything working without it
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; FAILSIGHT_DISABLE_NUMBA tests the same paths
    HAVE_NUMBA = False

#: Run JPEG and pixelate through the numba kernels on CPU (environment variable FAILSIGHT_DISABLE_NUMBA=1
#: forces the torch paths, which are also used on other devices).
USE_NUMBA: bool = HAVE_NUMBA and not os.environ.get("FAILSIGHT_DISABLE_NUMBA")

#: ITU-R BT.601 luma weights (what OpenCV's RGB2GRAY and JPEG use).
LUMA = (0.299, 0.587, 0.114)

# --------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------


def uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform samples in ``[low, high)`` (float32)."""
    return rand(shape, g, device).mul_(high - low).add_(low)


def gen_for(g: torch.Generator, device: torch.device | str) -> torch.Generator:
    """``g`` (a CPU generator) itself on CPU; elsewhere a generator on ``device`` seeded from ``g``."""
    if torch.device(device).type == "cpu":
        return g
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))


def randn(shape: tuple[int, ...], g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal float32 samples on ``device``, reproducible from ``g``."""
    return torch.randn(shape, generator=gen_for(g, device), device=device)


def rand(shape: tuple[int, ...], g: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) float32 samples. On CPU they come from numpy's PCG64 (about 2.5× faster than
    torch's Mersenne twister), seeded from ``g`` so results stay reproducible."""
    if torch.device(device).type != "cpu":
        return torch.rand(shape, generator=gen_for(g, device), device=device)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    out = torch.empty(shape, dtype=torch.float32)
    np.random.default_rng(seed).random(dtype=np.float32, out=out.numpy())
    return out


_NORMAL_LEVELS = 1 << 16


@lru_cache(maxsize=1)
def _normal_quantiles() -> torch.Tensor:
    """The 2^16 midpoint quantiles of N(0, 1): ``ndtri((i + 0.5) / 2^16)`` (covers |z| <= 4.17)."""
    p = (torch.arange(_NORMAL_LEVELS, dtype=torch.float64) + 0.5) / _NORMAL_LEVELS
    return torch.special.ndtri(p).float()


def normal_into(out: torch.Tensor, mean: float, std: float, g: torch.Generator) -> torch.Tensor:
    """Fill contiguous ``out`` with N(mean, std) samples, reproducible from ``g``.

    On CPU: inverse-CDF sampling from 16-bit uniforms (numpy PCG64) through a table of the 2^16 normal
    quantiles — about twice as fast as ``Tensor.normal_``; the draws are a 2^16-level discretisation of
    the normal (tails beyond 4.17 sd, probability 3e-5, are folded into the extreme levels).
    """
    if out.device.type != "cpu" or not out.is_contiguous():
        return out.normal_(mean, std, generator=gen_for(g, out.device))
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    idx = np.random.default_rng(seed).integers(0, _NORMAL_LEVELS, size=out.numel(), dtype=np.uint16)
    table = _normal_quantiles() * std + mean
    return torch.index_select(table, 0, torch.from_numpy(idx.astype(np.int32)), out=out.view(-1)).view(out.shape)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(N, 1, H, W)`` of RGB ``(N, 3, H, W)``; a 1-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    g = x[:, 0:1] * LUMA[0]
    g.add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])
    return g


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n``."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


# --------------------------------------------------------------------------------------------------------
# convolutions
# --------------------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(2r + 1,)`` with ``r = int(truncate * sigma + 0.5)`` (scipy's rule)."""
    radius = int(truncate * sigma + 0.5) if sigma > 0 else 0
    if radius == 0:
        return torch.ones(1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """'Valid' cross-correlation of every image plane with ``weight``.

    ``x`` is ``(N, C, H, W)`` (already padded); ``weight`` is ``(kh, kw)`` shared by all planes or
    ``(N, kh, kw)`` with one kernel per image. Returns ``(N, C, H - kh + 1, W - kw + 1)``. Few taps or
    small inputs are summed as shifted slices; otherwise one grouped oneDNN convolution (which costs a
    one-off kernel build per new shape, repaid on large batches).
    """
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ho, wo = h - kh + 1, w - kw + 1
    taps = kh * kw
    if taps <= 7 or x.numel() * taps < (1 << 22):
        per_image = weight.dim() == 3
        wt = weight.to(x.dtype)  # stays on the CPU: its taps are read as Python floats
        out = None
        for a in range(kh):
            for b in range(kw):
                sl = x[:, :, a:a + ho, b:b + wo]
                if per_image:
                    term = sl * wt[:, a, b].view(n, 1, 1, 1)
                    out = term if out is None else out.add_(term)
                else:
                    wab = float(wt[a, b])
                    if wab == 0.0 and out is not None:
                        continue
                    out = sl * wab if out is None else out.add_(sl, alpha=wab)
        return out
    if weight.dim() == 2:
        wt = weight.reshape(1, 1, kh, kw).expand(n * c, 1, kh, kw)
    else:
        wt = weight.reshape(n, 1, 1, kh, kw).expand(n, c, 1, kh, kw).reshape(n * c, 1, kh, kw)
    y = F.conv2d(x.reshape(1, n * c, h, w), wt.contiguous().to(x.device, x.dtype), groups=n * c)
    return y.reshape(n, c, ho, wo)


def blur_separable(x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor | None = None,
                   mode: str = "replicate") -> torch.Tensor:
    """Separable filter with odd 1-D kernels (``k_rows`` along H, ``k_cols`` along W), same-size output.

    ``mode`` is the border rule of :func:`torch.nn.functional.pad` ('replicate' = scipy's 'nearest',
    'reflect' = scipy's 'mirror').
    """
    k_cols = k_rows if k_cols is None else k_cols
    ph, pw = k_rows.numel() // 2, k_cols.numel() // 2
    if ph == 0 and pw == 0:
        return x.clone()
    h, w = x.shape[-2:]
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"  # reflection needs pad < size; fall back for tiny images
    y = F.pad(x, (pw, pw, ph, ph), mode=mode)
    if pw:
        y = depthwise_conv(y, k_cols.reshape(1, -1))
    if ph:
        y = depthwise_conv(y, k_rows.reshape(-1, 1))
    return y


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` pixels (scipy ``gaussian_filter`` semantics)."""
    k = gaussian_kernel1d(sigma, truncate)
    return blur_separable(x, k, k, mode=mode)


def box3(x: torch.Tensor) -> torch.Tensor:
    """3×3 mean filter with reflected borders (OpenCV ``blur(…, (3, 3))``)."""
    k = torch.full((3,), 1.0 / 3.0)
    return blur_separable(x, k, k, mode="reflect")


@lru_cache(maxsize=64)
def _disk_kernel_np(radius: float, alias_sigma: float, supersample: int = 8) -> np.ndarray:
    r_int = max(1, math.ceil(radius + 1))
    # area coverage of the disk per pixel, from supersample×supersample sub-pixel points
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    grid = np.arange(-r_int, r_int + 1)
    sub = (grid[:, None] + off[None, :]).ravel()
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= radius ** 2
    k = inside.reshape(2 * r_int + 1, supersample, 2 * r_int + 1, supersample).mean(axis=(1, 3))
    if k.sum() <= 0:
        k = np.zeros_like(k)
        k[r_int, r_int] = 1.0
    k = k / k.sum()
    if alias_sigma > 0.05:  # anti-alias like the reference's 3×3 GaussianBlur
        t = np.exp(-0.5 * (np.arange(-1, 2) / alias_sigma) ** 2)
        t /= t.sum()
        kp = np.pad(k, 1)
        size = k.shape[0] + 2
        k = np.zeros((size, size))
        for a in range(3):
            for b in range(3):
                k += t[a] * t[b] * np.pad(kp, 1)[a:a + size, b:b + size]
    # trim zero border
    nz = np.nonzero(k.sum(axis=0) > 1e-12)[0]
    lo, hi = int(nz.min()), int(nz.max())
    lo = min(lo, k.shape[0] - 1 - hi)
    k = k[lo:k.shape[0] - lo, lo:k.shape[0] - lo]
    return (k / k.sum()).astype(np.float32)


def disk_kernel(radius: float, alias_sigma: float = 0.0) -> torch.Tensor:
    """Normalised anti-aliased disk ``(k, k)`` of ``radius`` pixels (area coverage, then a light blur)."""
    return torch.from_numpy(_disk_kernel_np(float(radius), float(alias_sigma)))


def conv_same(x: torch.Tensor, kernel: torch.Tensor, mode: str = "replicate") -> torch.Tensor:
    """Same-size 2-D filtering with an odd ``(kh, kw)`` kernel shared by all planes."""
    kh, kw = kernel.shape
    if kh == 1 and kw == 1:
        return x * float(kernel[0, 0])
    y = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    return depthwise_conv(y, kernel)


# --------------------------------------------------------------------------------------------------------
# motion (line) blur with one direction per image
# --------------------------------------------------------------------------------------------------------


def line_blur(x: torch.Tensor, angles: torch.Tensor, length: float, sigma: float) -> torch.Tensor:
    """Motion blur along a line, one angle per image.

    ``out(y, x) = sum_i k_i img(y + i sin a, x + i cos a)`` for taps ``i = 0 .. floor(length)`` with
    ``k_i ∝ exp(-i² / 2σ²)`` (the one-sided trail of Hendrycks' ``_motion_blur``), replicated borders.
    ``angles`` is ``(N,)`` in degrees (row axis pointing down). Vectorised as: cyclic per-column
    shear (a gather) that turns each line horizontal, a grouped 1-D convolution with each image's
    tap weights (splatted linearly onto the integer grid), and the inverse shear.
    """
    n_taps = math.floor(length) + 1
    if n_taps <= 1 or sigma <= 0:
        return x.clone()
    rad = torch.deg2rad(angles.double().cpu())
    sin, cos = torch.sin(rad), torch.cos(rad)
    horiz = cos.abs() >= sin.abs()
    if bool(horiz.all()):
        return _line_blur_h(x, sin, cos, n_taps, sigma)
    if not bool(horiz.any()):  # mostly vertical: transpose, swap the roles of sin and cos
        return _line_blur_h(x.transpose(2, 3), cos, sin, n_taps, sigma).transpose(2, 3).contiguous()
    out = torch.empty_like(x)
    hi, vi = torch.nonzero(horiz).squeeze(1), torch.nonzero(~horiz).squeeze(1)
    out[hi] = _line_blur_h(x[hi], sin[hi], cos[hi], n_taps, sigma)
    out[vi] = _line_blur_h(x[vi].transpose(2, 3), cos[vi], sin[vi], n_taps, sigma).transpose(2, 3)
    return out


def _line_blur_h(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, n_taps: int, sigma: float) -> torch.Tensor:
    """``line_blur`` for directions with ``|cos| >= |sin|`` (float64 ``sin``/``cos`` of shape ``(N,)``)."""
    n, c, h, w = x.shape
    i = torch.arange(n_taps, dtype=torch.float64)
    k = torch.exp(-(i ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    u = i[None, :] * cos[:, None]  # horizontal position of each tap (N, T)
    jmin, jmax = math.floor(float(u.min())), math.ceil(float(u.max()))
    klen = jmax - jmin + 1
    fl = torch.floor(u)
    fr = u - fl
    idx = (fl - jmin).long()
    wk = torch.zeros(n, klen + 1, dtype=torch.float64)
    wk.scatter_add_(1, idx, k[None, :] * (1 - fr))
    wk.scatter_add_(1, idx + 1, k[None, :] * fr)
    wk = wk[:, :klen].float()
    tan = sin / cos
    pad = math.ceil(max(abs(jmin), abs(jmax)) * float(tan.abs().max())) + 1
    hp, wp = h + 2 * pad, w + klen - 1
    p = F.pad(x, (-jmin, jmax, pad, pad), mode="replicate")
    dev = x.device
    tan_f = tan.to(dev)
    # shear: S(y', xp) = P((y' + r(xp)) mod Hp, xp), r(xp) = round((xp + jmin) tan)
    cols = torch.arange(wp, device=dev, dtype=torch.float64) + jmin
    r = torch.round(cols[None, :] * tan_f[:, None]).long()  # (N, Wp)
    rows = torch.arange(hp, device=dev)
    # gathers run on the flattened planes (last dim), which is several times faster than along H
    idx_s = torch.remainder(rows[None, :, None] + r[:, None, :], hp) * wp + torch.arange(wp, device=dev)
    s = torch.gather(p.view(n, c, hp * wp), 2, idx_s.view(n, 1, -1).expand(n, c, hp * wp)).view(n, c, hp, wp)
    t = depthwise_conv(s, wk.to(dev)[:, None, :])  # (N, C, Hp, W)
    # inverse shear for the output rows: O(y, x) = T((y + pad - round(x tan)) mod Hp, x)
    r0 = torch.round(torch.arange(w, device=dev, dtype=torch.float64)[None, :] * tan_f[:, None]).long()
    rows_o = torch.arange(h, device=dev) + pad
    idx_o = torch.remainder(rows_o[None, :, None] - r0[:, None, :], hp) * w + torch.arange(w, device=dev)
    return torch.gather(t.reshape(n, c, hp * w), 2, idx_o.view(n, 1, -1).expand(n, c, h * w)).view(n, c, h, w)


# --------------------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------------------


def base_grid(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identity sampling grid ``(1, H, W, 2)`` in normalised coordinates (``align_corners=False``)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)[None]


def warp(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding_mode: str = "reflection",
         mode: str = "bilinear") -> torch.Tensor:
    """Backward warp: ``out(y, x) = img(y + dy, x + dx)``; ``dx``, ``dy`` are ``(N, H, W)`` pixels."""
    n, _, h, w = x.shape
    grid = base_grid(h, w, x.device).expand(n, h, w, 2).clone()
    grid[..., 0].add_(dx, alpha=2.0 / w)
    grid[..., 1].add_(dy, alpha=2.0 / h)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def affine(x: torch.Tensor, mat: torch.Tensor, shift: torch.Tensor, padding_mode: str = "reflection") -> torch.Tensor:
    """Per-image affine warp in centred pixel coordinates: ``src = mat @ dst + shift``.

    ``mat`` is ``(N, 2, 2)`` acting on ``(x, y)`` pixel offsets from the image centre, ``shift`` ``(N, 2)``
    pixels. Bilinear sampling.
    """
    n, c, h, w = x.shape
    d = torch.tensor([w / 2.0, h / 2.0], dtype=torch.float32, device=x.device)
    theta = torch.empty(n, 2, 3, dtype=torch.float32, device=x.device)
    theta[:, :, :2] = mat.float() * d[None, None, :] / d[None, :, None]  # D^-1 A D
    theta[:, :, 2] = shift.float() / d[None, :]
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def smooth_field(n: int, h: int, w: int, sigma: float, std: float, g: torch.Generator,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Two smooth random displacement fields ``(N, 2, H, W)`` (pixels) with per-pixel std ``std``.

    White Gaussian noise blurred with a Gaussian of ``sigma`` pixels (truncate 3, reflected borders),
    then rescaled by the exact std of the blurred noise so ``std`` holds at any ``sigma``.
    """
    noise = randn((n, 2, h, w), g, device)
    k = gaussian_kernel1d(sigma, truncate=3.0)
    field = blur_separable(noise, k, k, mode="reflect")
    gain = float((k.double() ** 2).sum())  # std of the 2-D blurred unit noise = sum(k1^2)
    return field.mul_(std / gain)


# --------------------------------------------------------------------------------------------------------
# plasma fractal (diamond-square)
# --------------------------------------------------------------------------------------------------------


def plasma_fractal(n: int, mapsize: int, decay: float, g: torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched diamond-square heightmaps ``(N, mapsize, mapsize)`` in [0, 1] (``mapsize`` a power of 2).

    Same recursion as the ImageNet-C ``plasma_fractal`` (wrap-around neighbours, wibble shrinking by
    ``decay`` per level), one independent map per image.
    """
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    m = torch.zeros(n, mapsize, mapsize, device=device)
    step, wib = mapsize, 100.0

    def noise(t: torch.Tensor) -> torch.Tensor:
        return t.mul_(0.25).add_(uniform(tuple(t.shape), -wib * wib, wib * wib, g, device))

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = noise(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = noise(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = noise(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wib /= decay
    flat = m.view(n, -1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    flat.sub_(lo).div_((hi - lo).clamp_min(1e-12))
    return m


# --------------------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------------------


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSV of RGB ``(N, 3, H, W)``: each ``(N, 1, H, W)``, hue in [0, 1) (0 where undefined, as skimage)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v, _ = x.max(1, keepdim=True)
    mn, _ = x.min(1, keepdim=True)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    dz = delta.clamp_min(1e-12)
    h = torch.where(r >= v, (g - b) / dz, torch.where(g >= v, 2.0 + (b - r) / dz, 4.0 + (r - g) / dz))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RGB ``(N, 3, H, W)`` from HSV planes ``(N, 1, H, W)`` (hue in [0, 1))."""
    n6 = torch.tensor([5.0, 3.0, 1.0], device=h.device).view(1, 3, 1, 1)
    k = torch.remainder(n6 + h * 6.0, 6.0)
    f = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v - v * s * f


# --------------------------------------------------------------------------------------------------------
# JPEG (baseline DCT, standard tables, libjpeg quality scaling)
# --------------------------------------------------------------------------------------------------------

_Q_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64)
_Q_CHROMA = np.array([
    [17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99], [99, 99, 99, 99, 99, 99, 99, 99],
    [99, 99, 99, 99, 99, 99, 99, 99], [99, 99, 99, 99, 99, 99, 99, 99]], dtype=np.float64)


def quant_table(quality: int, chroma: bool = False) -> np.ndarray:
    """libjpeg ``jpeg_set_quality`` table for ``quality`` in 1..100 (baseline: entries clipped to 1..255)."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = _Q_CHROMA if chroma else _Q_LUMA
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


@lru_cache(maxsize=1)
def _dct_matrix() -> torch.Tensor:
    k = np.arange(8)
    d = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return torch.from_numpy(d)  # orthonormal 8-point DCT-II (float64): coef = D @ block @ D.T


@lru_cache(maxsize=64)
def _block_codec(quality: int, chroma: bool, pooled: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                        torch.Tensor, torch.Tensor]:
    """Matrices that code flattened 8×8 blocks (rows of 64, row-major) in one GEMM each way.

    Forward: ``round(rows @ fwd + fwd_bias)`` are the quantised coefficients of ``255 * block - 128``
    (the level shift only touches the DC term, so it is a bias); with ``pooled`` the rows are 2×2
    *sums* of chroma and the 1/4 of the average is folded in. Inverse: ``q @ inv + inv_bias`` is the
    decoded block back in [0, 1] units (level shift undone).
    """
    d = _dct_matrix()
    kron = torch.kron(d, d)  # coef_vec = kron @ block_vec
    q = torch.from_numpy(quant_table(quality, chroma).reshape(64))
    gain = 255.0 * (0.25 if pooled else 1.0)
    fwd = kron.T * gain / q[None, :]
    fwd_bias = torch.zeros(64, dtype=torch.float64)
    inv = q[:, None] * kron / 255.0
    inv_bias = torch.zeros(64, dtype=torch.float64)
    if not chroma:
        fwd_bias[0] = -128.0 * 8.0 / float(q[0])  # DC of a constant 128 block is 8 * 128
        inv_bias[:] = 128.0 / 255.0
    return fwd.float(), fwd_bias.float(), inv.float(), inv_bias.float()


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """``(M, H, W)`` planes as rows of flattened 8×8 blocks ``(M * H/8 * W/8, 64)`` (one copy)."""
    m, h, w = plane.shape
    return plane.reshape(m, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(-1, 64)



def _code_blocks(plane: torch.Tensor, quality: int, chroma: bool, pooled: bool = False,
                 level_back: bool = True) -> torch.Tensor:
    """Quantised-and-decoded blocks ``(M * H/8 * W/8, 64)`` of planes ``(M, H, W)`` (H, W multiples of 8),
    or of block rows ``(B, 64)`` already laid out by ``_to_blocks``.

    With ``level_back=False`` the luminance level shift (+128/255) is left for the caller to add.
    """
    fwd, fb, inv, ib = (t.to(plane.device) for t in _block_codec(quality, chroma, pooled))
    coef = torch.mm(plane if plane.dim() == 2 else _to_blocks(plane), fwd)
    if not chroma:
        coef[:, 0] += float(fb[0])  # the level shift only moves the DC coefficient
    rec = torch.mm(coef.round_(), inv)
    return rec.add_(float(ib[0])) if (not chroma and level_back) else rec


def _from_blocks(rows: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``_to_blocks`` as a strided view ``(M, H/8, 8, W/8, 8)``."""
    return rows.view(m, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4)


_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                        dtype=torch.float64)
_YCC2RGB_C = torch.linalg.inv(_RGB2YCC)[:, 1:].float()  # chroma columns of the inverse (luma column is 1s)


def jpeg(x: torch.Tensor, quality: int, subsampling: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """Baseline JPEG encode + decode of ``(N, C, H, W)`` in [0, 1], C in {1, 3}.

    JFIF YCbCr (level shift 128), 8×8 DCT with the standard luminance/chrominance tables scaled by
    libjpeg's quality rule, coefficients rounded to the quantisation grid; chroma 4:2:0 (2×2 average
    down, libjpeg's 'fancy' triangle upsampling = bilinear with half-pixel centres) when
    ``subsampling``; edges padded by replication to whole blocks. Grayscale images are coded as
    luminance only (as PIL does for mode 'L'). The decoded image is clipped to [0, 1], not rounded to
    8-bit levels. On CPU (float32, contiguous) this runs as one numba kernel per image (see
    :func:`jpeg_numba`); elsewhere each block transform (DCT, quantiser scaling, level shift) is one GEMM.
    """
    n, c, h, w = x.shape
    if numba_ok(x) and (out is None or numba_ok(out)):
        return jpeg_numba(x, quality, subsampling, torch.empty_like(x) if out is None else out)
    mult = 16 if (subsampling and c == 3) else 8
    hp, wp = h + (-h) % mult, w + (-w) % mult
    xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x
    if c == 1:
        rec = _code_blocks(xp.reshape(n, hp, wp), quality, chroma=False)
        dec = _from_blocks(rec, n, hp, wp).reshape(n, 1, hp, wp)[..., :h, :w]
        return torch.clamp(dec, 0, 1, out=torch.empty_like(x) if out is None else out)
    lum = xp[:, 0] * LUMA[0]
    lum.add_(xp[:, 1], alpha=LUMA[1]).add_(xp[:, 2], alpha=LUMA[2])
    rgb2c = _RGB2YCC[1:].float().to(x.device)
    to_rgb = _YCC2RGB_C.to(x.device)
    if subsampling:  # chroma is linear in RGB: pool RGB 2×2 first, then convert at quarter size
        pairs = xp[..., 0::2] + xp[..., 1::2]
        sums = pairs[..., 0::2, :] + pairs[..., 1::2, :]  # 2×2 sums; the 1/4 is in the codec matrix
        hs, ws = hp // 2, wp // 2
        chroma = torch.matmul(rgb2c, sums.reshape(n, 3, hs * ws)).view(n * 2, hs, ws)
        crec = _from_blocks(_code_blocks(chroma, quality, chroma=True, pooled=True),
                            n * 2, hs, ws).reshape(n, 2, hs * ws)
        # colour conversion commutes with the (linear) upsampling: convert at quarter size, then upsample
        dest = out if (out is not None and (hp, wp) == (h, w)) else None
        small = torch.matmul(to_rgb, crec).add_(128.0 / 255.0)  # + the luminance level shift
        rgb = fancy_upsample2(small.view(n * 3, hs, ws), out=dest).view(n, 3, hp, wp)
    else:
        chroma = torch.matmul(rgb2c, xp.reshape(n, 3, hp * wp)).view(n * 2, hp, wp)
        crec = _from_blocks(_code_blocks(chroma, quality, chroma=True), n * 2, hp, wp)
        rgb = torch.matmul(to_rgb, crec.reshape(n, 2, hp * wp)).add_(128.0 / 255.0).view(n, 3, hp, wp)
    yimg = _from_blocks(_code_blocks(lum, quality, chroma=False, level_back=False), n, hp, wp)
    yimg = yimg.reshape(n, 1, hp, wp)
    if (hp, wp) != (h, w):
        rgb, yimg = rgb[..., :h, :w], yimg[..., :h, :w]
    if out is not None and rgb.data_ptr() == out.data_ptr():
        return out.add_(yimg).clamp_(0, 1)
    return torch.add(rgb, yimg, out=torch.empty_like(x) if out is None else out).clamp_(0, 1)


def fancy_upsample2(c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """libjpeg's 'fancy' h2v2 upsampling of ``(M, h, w)`` to ``(M, 2h, 2w)``.

    Each output sample is ``3/4`` of the nearer and ``1/4`` of the farther input sample on each axis
    (edges replicated), i.e. bilinear interpolation with half-pixel centres, done as four ``lerp``s
    written straight into the interleaved output (``out``, contiguous ``(M, 2h, 2w)``, if given).
    """
    m, h, w = c.shape
    wide = torch.empty(m, h, w, 2, dtype=c.dtype, device=c.device)
    ev, od = wide[..., 0], wide[..., 1]  # output columns 2i and 2i + 1
    torch.lerp(c[..., 1:], c[..., :-1], 0.25, out=ev[..., 1:])
    torch.lerp(c[..., :-1], c[..., 1:], 0.25, out=od[..., :-1])
    ev[..., 0], od[..., -1] = c[..., 0], c[..., -1]  # replicated edges: lerp(a, a) = a
    wide = wide.view(m, h, 2 * w)
    tall = torch.empty(m, h, 2, 2 * w, dtype=c.dtype, device=c.device) if out is None else out.view(m, h, 2, 2 * w)
    ev, od = tall[:, :, 0], tall[:, :, 1]  # output rows 2j and 2j + 1
    torch.lerp(wide[:, 1:], wide[:, :-1], 0.25, out=ev[:, 1:])
    torch.lerp(wide[:, :-1], wide[:, 1:], 0.25, out=od[:, :-1])
    ev[:, 0], od[:, -1] = wide[:, 0], wide[:, -1]
    return tall.view(m, 2 * h, 2 * w)


# --------------------------------------------------------------------------------------------------------
# numba kernels for CPU: JPEG and pixelate, one image (or plane) at a time, all work in cache
#
# Same arithmetic as the torch paths (float32, same tables and colour matrices); they differ from them only
# where a coefficient lands on a rounding tie (here half-up, libjpeg's float rule; torch rounds half-even).
# Kernels take a range ``lo..hi`` of images/planes so :func:`run_split` can hand ranges to threads.
# --------------------------------------------------------------------------------------------------------

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def run_split(kernel: Callable[..., Any], total: int, item_values: int, *args: Any) -> None:
    """Call ``kernel(*args, lo, hi)`` over ranges covering ``range(total)``.

    Uses up to ``torch.get_num_threads()`` threads (the kernels release the GIL), giving each thread at
    least ~2^17 values of work (``item_values`` per item); results never depend on the split.
    """
    per = max(1, -(-(1 << 17) // max(1, item_values)))
    threads = min(torch.get_num_threads(), total // per)
    if threads <= 1:
        kernel(*args, 0, total)
        return
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < threads:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="failsight-img")
            _POOL_SIZE = threads
        pool = _POOL
    bounds = [total * t // threads for t in range(threads + 1)]
    for f in [pool.submit(kernel, *args, a, b) for a, b in itertools.pairwise(bounds)]:
        f.result()


def numba_ok(*tensors: torch.Tensor) -> bool:
    """Whether the numba kernels can work on these tensors in place (CPU, float32, C-contiguous)."""
    return USE_NUMBA and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                             for t in tensors)


@lru_cache(maxsize=64)
def _nb_quant_tiles(quality: int, chroma: bool, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantiser tables in the kernels' transposed block layout, tiled over ``width`` columns.

    Entry ``[l, 8 b + k]`` belongs to coefficient ``(k, l)`` (vertical, horizontal frequency): ``1 / Q``
    (forward, pixel values in 0..255 units) and ``Q / 255`` (inverse, back to [0, 1] units).
    """
    qt = np.tile(quant_table(quality, chroma).T, (1, width // 8))
    return (1.0 / qt).astype(np.float32), (qt / 255.0).astype(np.float32)


@lru_cache(maxsize=1)
def _nb_colour() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 DCT matrix ``(8, 8)``, RGB -> YCbCr rows ``(3, 3)`` and YCbCr -> RGB chroma columns ``(3, 2)``."""
    return (_dct_matrix().numpy().astype(np.float32), _RGB2YCC.numpy().astype(np.float32),
            _YCC2RGB_C.numpy().astype(np.float32))


if HAVE_NUMBA:

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_fdct_rows(src, dst, m, w):  # pragma: no cover - compiled
        # dst[k, j] = sum_r m[k, r] src[r, j] (8-point DCT down each column of an 8-row strip), with the
        # even/odd butterflies of the DCT's symmetry m[k, 7 - r] = (-1)^k m[k, r]; vectorised over j
        e00, e01, e02, e03 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
        e20, e21, e22, e23 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
        e40, e41, e42, e43 = m[4, 0], m[4, 1], m[4, 2], m[4, 3]
        e60, e61, e62, e63 = m[6, 0], m[6, 1], m[6, 2], m[6, 3]
        o10, o11, o12, o13 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
        o30, o31, o32, o33 = m[3, 0], m[3, 1], m[3, 2], m[3, 3]
        o50, o51, o52, o53 = m[5, 0], m[5, 1], m[5, 2], m[5, 3]
        o70, o71, o72, o73 = m[7, 0], m[7, 1], m[7, 2], m[7, 3]
        for j in range(w):
            s0 = src[0, j] + src[7, j]
            d0 = src[0, j] - src[7, j]
            s1 = src[1, j] + src[6, j]
            d1 = src[1, j] - src[6, j]
            s2 = src[2, j] + src[5, j]
            d2 = src[2, j] - src[5, j]
            s3 = src[3, j] + src[4, j]
            d3 = src[3, j] - src[4, j]
            dst[0, j] = e00 * s0 + e01 * s1 + e02 * s2 + e03 * s3
            dst[2, j] = e20 * s0 + e21 * s1 + e22 * s2 + e23 * s3
            dst[4, j] = e40 * s0 + e41 * s1 + e42 * s2 + e43 * s3
            dst[6, j] = e60 * s0 + e61 * s1 + e62 * s2 + e63 * s3
            dst[1, j] = o10 * d0 + o11 * d1 + o12 * d2 + o13 * d3
            dst[3, j] = o30 * d0 + o31 * d1 + o32 * d2 + o33 * d3
            dst[5, j] = o50 * d0 + o51 * d1 + o52 * d2 + o53 * d3
            dst[7, j] = o70 * d0 + o71 * d1 + o72 * d2 + o73 * d3

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_idct_rows(src, dst, m, w):  # pragma: no cover - compiled
        # inverse of _nb_fdct_rows: dst[r, j] = sum_k m[k, r] src[k, j]
        e00, e01, e02, e03 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
        e20, e21, e22, e23 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
        e40, e41, e42, e43 = m[4, 0], m[4, 1], m[4, 2], m[4, 3]
        e60, e61, e62, e63 = m[6, 0], m[6, 1], m[6, 2], m[6, 3]
        o10, o11, o12, o13 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
        o30, o31, o32, o33 = m[3, 0], m[3, 1], m[3, 2], m[3, 3]
        o50, o51, o52, o53 = m[5, 0], m[5, 1], m[5, 2], m[5, 3]
        o70, o71, o72, o73 = m[7, 0], m[7, 1], m[7, 2], m[7, 3]
        for j in range(w):
            c0, c2, c4, c6 = src[0, j], src[2, j], src[4, j], src[6, j]
            c1, c3, c5, c7 = src[1, j], src[3, j], src[5, j], src[7, j]
            ev0 = e00 * c0 + e20 * c2 + e40 * c4 + e60 * c6
            ev1 = e01 * c0 + e21 * c2 + e41 * c4 + e61 * c6
            ev2 = e02 * c0 + e22 * c2 + e42 * c4 + e62 * c6
            ev3 = e03 * c0 + e23 * c2 + e43 * c4 + e63 * c6
            od0 = o10 * c1 + o30 * c3 + o50 * c5 + o70 * c7
            od1 = o11 * c1 + o31 * c3 + o51 * c5 + o71 * c7
            od2 = o12 * c1 + o32 * c3 + o52 * c5 + o72 * c7
            od3 = o13 * c1 + o33 * c3 + o53 * c5 + o73 * c7
            dst[0, j] = ev0 + od0
            dst[7, j] = ev0 - od0
            dst[1, j] = ev1 + od1
            dst[6, j] = ev1 - od1
            dst[2, j] = ev2 + od2
            dst[5, j] = ev2 - od2
            dst[3, j] = ev3 + od3
            dst[4, j] = ev3 - od3

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_quantise(c, qi, qd, w):  # pragma: no cover - compiled
        # round coefficients to the quantiser grid in place (half up, libjpeg's float rule); qi / qd are
        # the tiled tables of _nb_quant_tiles. One row at a time: a simple loop LLVM vectorises
        half = np.float32(0.5)
        for r in range(8):
            row, a, b = c[r], qi[r], qd[r]
            for j in range(w):
                row[j] = np.floor(row[j] * a[j] + half) * b[j]

    @njit(cache=True, nogil=True, inline="always")
    def _nb_transpose_blocks(src, dst, w):  # pragma: no cover - compiled
        # transpose every 8×8 block of an 8-row strip: dst[c, 8b + r] = src[r, 8b + c]
        for b in range(0, w, 8):
            for r in range(8):
                for c in range(8):
                    dst[c, b + r] = src[r, b + c]

    @njit(cache=True, fastmath=True, nogil=True)
    def _nb_code_plane(p, m, qi, qd, t, u):  # pragma: no cover - compiled
        # JPEG-code a level-shifted plane (H, W multiples of 8, values in 0..255 units) in place; decoded
        # values come back in [0, 1] units. One 8-row strip at a time (in L1): DCT down the columns,
        # transpose the blocks, DCT down the columns again (= along the rows), quantise, and back the same
        # way. Every pass is a loop over the strip's columns that LLVM vectorises (8 floats per step).
        hp, wp = p.shape
        for s in range(0, hp, 8):
            strip = p[s:s + 8]
            _nb_fdct_rows(strip, t, m, wp)
            _nb_transpose_blocks(t, u, wp)
            _nb_fdct_rows(u, t, m, wp)
            _nb_quantise(t, qi, qd, wp)
            _nb_idct_rows(t, u, m, wp)
            _nb_transpose_blocks(u, t, wp)
            _nb_idct_rows(t, strip, m, wp)

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_fill_plane(x, i, p, wts, off, h, w):  # pragma: no cover - compiled
        # p[y, x] = sum_c wts[c] * img[c, y, x] + off over the padded plane (edges replicated)
        hp, wp = p.shape
        nc = x.shape[1]
        for yy in range(hp):
            ys = min(yy, h - 1)
            row = p[yy]
            if nc == 1:
                a = x[i, 0, ys]
                w0 = wts[0]
                for xx in range(w):
                    row[xx] = w0 * a[xx] + off
            else:
                a, b, c = x[i, 0, ys], x[i, 1, ys], x[i, 2, ys]
                w0, w1, w2 = wts[0], wts[1], wts[2]
                for xx in range(w):
                    row[xx] = w0 * a[xx] + w1 * b[xx] + w2 * c[xx] + off
            for xx in range(w, wp):
                row[xx] = row[w - 1]

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_pool_chroma(x, i, cb, cr, ycc, h, w, pairs):  # pragma: no cover - compiled
        # 4:2:0 chroma of image i: 2×2 means of the (edge-replicated, padded) RGB, converted to centred
        # Cb, Cr in 0..255 units (chroma is linear in RGB, so pooling first is exact)
        hs, ws = cb.shape
        w2 = w // 2
        q = np.float32(63.75)  # 255 / 4: the mean of the 2×2 sums, in 0..255 units (float32 throughout)
        kb0, kb1, kb2 = q * ycc[1, 0], q * ycc[1, 1], q * ycc[1, 2]
        kr0, kr1, kr2 = q * ycc[2, 0], q * ycc[2, 1], q * ycc[2, 2]
        for yy in range(hs):
            for k in range(2):
                ys = min(2 * yy + k, h - 1)
                for ch in range(3):
                    src = x[i, ch, ys]
                    dst = pairs[ch, k]
                    for xx in range(w2):
                        dst[xx] = src[2 * xx] + src[2 * xx + 1]
                    for xx in range(w2, ws):  # odd width / padding: replicated last column
                        dst[xx] = src[min(2 * xx, w - 1)] + src[min(2 * xx + 1, w - 1)]
            r0, r1, g0, g1 = pairs[0, 0], pairs[0, 1], pairs[1, 0], pairs[1, 1]
            b0, b1 = pairs[2, 0], pairs[2, 1]
            rb, rr = cb[yy], cr[yy]
            for xx in range(ws):
                r = r0[xx] + r1[xx]
                g = g0[xx] + g1[xx]
                b = b0[xx] + b1[xx]
                rb[xx] = kb0 * r + kb1 * g + kb2 * b
                rr[xx] = kr0 * r + kr1 * g + kr2 * b

    @njit(cache=True, fastmath=True, nogil=True, inline="always")
    def _nb_upsample_row(c, yy, v, row):  # pragma: no cover - compiled
        # libjpeg's 'fancy' h2v2 upsampling of chroma plane c for output row yy: 3/4 nearer + 1/4 farther
        # sample on each axis, edges replicated (bilinear with half-pixel centres)
        hs, ws = c.shape
        ys = yy >> 1
        nb = min(max(ys - 1 if (yy & 1) == 0 else ys + 1, 0), hs - 1)
        a, b = c[ys], c[nb]
        near, far = np.float32(0.75), np.float32(0.25)
        for xx in range(ws):
            v[xx] = near * a[xx] + far * b[xx]
        row[0] = v[0]
        for xx in range(1, ws):
            row[2 * xx] = near * v[xx] + far * v[xx - 1]
        for xx in range(ws - 1):
            row[2 * xx + 1] = near * v[xx] + far * v[xx + 1]
        row[2 * ws - 1] = v[ws - 1]

    @njit(cache=True, fastmath=True, nogil=True)
    def _nb_jpeg(x, out, m, ycc, to_rgb, qiy, qdy, qic, qdc, subsample, lo, hi):  # pragma: no cover
        # baseline JPEG encode + decode of images lo..hi of x (N, C, H, W) into out (same shape)
        _, nc, h, w = x.shape
        mult = 16 if (subsample and nc == 3) else 8
        hp, wp = h + (-h) % mult, w + (-w) % mult
        lum = np.empty((hp, wp), np.float32)
        t = np.empty((8, wp), np.float32)
        u = np.empty((8, wp), np.float32)
        lw = np.empty(3, np.float32)
        for c in range(3):
            lw[c] = 255.0 * ycc[0, c]
        if nc == 1:
            lw[0] = 255.0
        level, zero, one = np.float32(128.0 / 255.0), np.float32(0.0), np.float32(1.0)
        shift, nought = np.float32(-128.0), np.float32(0.0)  # float32 constants keep the loops in float32
        hs, ws = (hp // 2, wp // 2) if (subsample and nc == 3) else (hp, wp)
        cb = np.empty((hs, ws), np.float32)
        cr = np.empty((hs, ws), np.float32)
        pairs = np.empty((3, 2, ws), np.float32)
        v = np.empty(ws, np.float32)
        rowb = np.empty(wp, np.float32)
        rowr = np.empty(wp, np.float32)
        cbw = np.empty(3, np.float32)
        crw = np.empty(3, np.float32)
        for c in range(3):
            cbw[c] = 255.0 * ycc[1, c]
            crw[c] = 255.0 * ycc[2, c]
        rb, gb, gr, br = to_rgb[0, 0], to_rgb[1, 0], to_rgb[1, 1], to_rgb[2, 0]
        rr, bb = to_rgb[0, 1], to_rgb[2, 1]
        for i in range(lo, hi):
            _nb_fill_plane(x, i, lum, lw, shift, h, w)
            _nb_code_plane(lum, m, qiy, qdy, t, u)
            if nc == 1:
                for yy in range(h):
                    src, dst = lum[yy], out[i, 0, yy]
                    for xx in range(w):
                        dst[xx] = min(max(src[xx] + level, zero), one)
                continue
            if subsample:
                _nb_pool_chroma(x, i, cb, cr, ycc, h, w, pairs)
            else:
                _nb_fill_plane(x, i, cb, cbw, nought, h, w)
                _nb_fill_plane(x, i, cr, crw, nought, h, w)
            _nb_code_plane(cb, m, qic, qdc, t, u)
            _nb_code_plane(cr, m, qic, qdc, t, u)
            for yy in range(h):
                if subsample:
                    _nb_upsample_row(cb, yy, v, rowb)
                    _nb_upsample_row(cr, yy, v, rowr)
                    pb, pr = rowb, rowr
                else:
                    pb, pr = cb[yy], cr[yy]
                ly = lum[yy]
                o0, o1, o2 = out[i, 0, yy], out[i, 1, yy], out[i, 2, yy]
                for xx in range(w):
                    yv = ly[xx] + level
                    b_, r_ = pb[xx], pr[xx]
                    o0[xx] = min(max(yv + rb * b_ + rr * r_, zero), one)
                    o1[xx] = min(max(yv + gb * b_ + gr * r_, zero), one)
                    o2[xx] = min(max(yv + br * b_ + bb * r_, zero), one)

    @njit(cache=True, fastmath=True, nogil=True)
    def _nb_pixelate(x, out, start_h, cnt_h, near_h, start_w, cnt_w, near_w, lo, hi):  # pragma: no cover
        # planes lo..hi of x (P, H, W): out[i, j] = mean of the BOX cell (near_h[i], near_w[j]), where cell
        # (r, c) covers rows start_h[r] + (0..cnt_h[r]) and columns start_w[c] + (0..cnt_w[c]). One read of
        # the rows each used cell covers, one write of the output
        _, h, w = x.shape
        mw = start_w.shape[0]
        rowsum = np.empty(w, np.float32)
        cells = np.empty(mw, np.float32)
        row = np.empty(w, np.float32)
        for p in range(lo, hi):
            src, dst = x[p], out[p]
            prev = -1
            for i in range(h):
                r = near_h[i]
                if r != prev:  # near_h is nondecreasing: each cell row is computed once
                    s0, k = start_h[r], cnt_h[r]
                    a = src[s0]
                    for j in range(w):
                        rowsum[j] = a[j]
                    for t in range(1, k):
                        b = src[s0 + t]
                        for j in range(w):
                            rowsum[j] += b[j]
                    inv_h = 1.0 / k
                    for c in range(mw):
                        acc = 0.0
                        for j in range(start_w[c], start_w[c] + cnt_w[c]):
                            acc += rowsum[j]
                        cells[c] = acc * (inv_h / cnt_w[c])
                    for j in range(w):
                        row[j] = cells[near_w[j]]
                    prev = r
                d = dst[i]
                for j in range(w):
                    d[j] = row[j]


def jpeg_numba(x: torch.Tensor, quality: int, subsampling: bool, out: torch.Tensor) -> torch.Tensor:
    """:func:`jpeg` on CPU float32 contiguous ``x`` into ``out`` (same shape) with the numba kernel."""
    n, c, h, w = x.shape
    mult = 16 if (subsampling and c == 3) else 8
    wp = w + (-w) % mult
    m, ycc, to_rgb = _nb_colour()
    qiy, qdy = _nb_quant_tiles(int(quality), False, wp)
    wc = wp // 2 if (subsampling and c == 3) else wp
    qic, qdc = _nb_quant_tiles(int(quality), True, wc)
    run_split(_nb_jpeg, n, c * h * w, x.detach().numpy(), out.detach().numpy(), m, ycc, to_rgb,
              qiy, qdy, qic, qdc, bool(subsampling))
    return out


def pixelate_numba(x: torch.Tensor, out: torch.Tensor, start_h: np.ndarray, cnt_h: np.ndarray,
                   near_h: np.ndarray, start_w: np.ndarray, cnt_w: np.ndarray, near_w: np.ndarray) -> torch.Tensor:
    """Piecewise-constant BOX-mean / NEAREST image ``out`` of CPU float32 contiguous ``x`` ``(N, C, H, W)``.

    Index arrays (int64): BOX cells along H (``start_h``, ``cnt_h``, ``(mh,)``) and W (``(mw,)``), and the
    cell NEAREST reads for each output row ``near_h (H,)`` (nondecreasing) and column ``near_w (W,)``.
    """
    n, c, h, w = x.shape
    run_split(_nb_pixelate, n * c, h * w, x.detach().numpy().reshape(n * c, h, w),
              out.detach().numpy().reshape(n * c, h, w), start_h, cnt_h, near_h, start_w, cnt_w, near_w)
    return out


# --------------------------------------------------------------------------------------------------------
# Poisson sampling for shot noise
# --------------------------------------------------------------------------------------------------------

_POISSON_LEVELS = 1020  # x is quantised to 1/1020 (a multiple of 1/255: 8-bit images are exact)
_POISSON_GUIDE = 512


@lru_cache(maxsize=16)
def _poisson_tables(rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Guide tables for inverse-CDF sampling of ``min(Poisson(rate * j / L), K) / rate``, j = 0..L.

    Outcomes ``k >= K = ceil(rate)`` all give the output value 1 (the result is clipped to [0, 1]), so
    ``K`` CDF thresholds per level suffice. For a uniform ``u`` in bin ``b`` (of ``G``) the outcome is
    known from ``(j, b)`` unless a threshold falls inside the bin. Returns ``value (L+1, G)`` (the output
    value, or -1 where the bin holds a threshold), ``k_lo (L+1, G)`` (outcome at the bin start),
    ``cdf (L+1, K)``, ``values (K+1,)`` and ``K``.
    """
    kk = math.ceil(rate)
    levels = _POISSON_LEVELS + 1
    lam = rate * np.arange(levels) / _POISSON_LEVELS
    k = np.arange(kk)
    lgam = np.array([math.lgamma(i + 1.0) for i in k])
    with np.errstate(divide="ignore", invalid="ignore"):
        logpmf = k[None, :] * np.log(lam[:, None]) - lam[:, None] - lgam[None, :]
    pmf = np.exp(logpmf)
    pmf[0, :] = 0.0
    pmf[0, 0] = 1.0  # lambda = 0: all mass at k = 0
    cdf = np.minimum(np.cumsum(pmf, axis=1), 1.0)  # (L+1, K), P(X <= k), rows nondecreasing
    edges = np.arange(_POISSON_GUIDE + 1) / _POISSON_GUIDE
    off = 2.0 * np.arange(levels)[:, None]  # separates the rows so one searchsorted serves all
    flat = (cdf + off).ravel()
    base = kk * np.arange(levels)[:, None]
    lo = np.searchsorted(flat, (edges[None, :-1] + off).ravel(), side="right").reshape(levels, -1) - base
    hi = np.searchsorted(flat, (edges[None, 1:] + off).ravel(), side="left").reshape(levels, -1) - base
    values = np.minimum(np.arange(kk + 1) / rate, 1.0)
    value = np.where(hi == lo, values[lo], -1.0)
    return (torch.from_numpy(value.astype(np.float32)), torch.from_numpy(lo.astype(np.int64)),
            torch.from_numpy(cdf.astype(np.float32)), torch.from_numpy(values.astype(np.float32)), kk)


def poisson_scaled(x: torch.Tensor, rate: float, g: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact draws of ``clip(Poisson(rate * x) / rate, 0, 1)`` for x in [0, 1] (x on a 1/1020 grid).

    Inverse-CDF sampling with a guide table: one uniform and one table look-up per pixel, and a short
    search for the few pixels whose uniform lands in a bin that holds a CDF threshold.
    """
    value, lo, cdf, values, kk = (t.to(x.device) if isinstance(t, torch.Tensor) else t
                                  for t in _poisson_tables(rate))
    u = rand(x.shape, g, x.device)
    idx = (x * _POISSON_LEVELS).round_().mul_(_POISSON_GUIDE)
    idx.add_(torch.floor(u * _POISSON_GUIDE).clamp_(max=_POISSON_GUIDE - 1)).floor_()
    flat_idx = idx.view(-1).long()
    res = torch.empty_like(x) if out is None else out
    flat_out = res.view(-1)
    torch.index_select(value.view(-1), 0, flat_idx, out=flat_out)
    amb = torch.nonzero(flat_out < 0).squeeze(1)
    if amb.numel():
        ia = flat_idx[amb]
        j = torch.div(ia, _POISSON_GUIDE, rounding_mode="floor")
        k = lo.view(-1)[ia]
        ua = u.view(-1)[amb]
        cdf_flat = cdf.view(-1)
        todo = torch.arange(amb.numel(), device=x.device)
        while todo.numel():  # advance k while CDF_j(k) <= u; a bin holds few thresholds
            kt = k[todo]
            step = (kt < kk) & (cdf_flat[j[todo] * kk + kt.clamp(max=kk - 1)] <= ua[todo])
            todo = todo[step]
            k[todo] += 1
        flat_out[amb] = values[k]
    return res
