"""The 19 ImageNet-C corruptions (Hendrycks & Dietterich 2019), batched in torch.

Each corruption is ``fn(x, severity, g) -> x`` on float32 ``(N, C, H, W)`` in [0, 1] (C = 1 or 3) and
returns a new tensor in [0, 1]. Parameters are those of the ``imagecorruptions`` 1.1.2 package (the
ImageNet-C code for 224×224 images), listed in ``PARAMS``.

Scaling rule. Quantities measured in pixels at 224×224 — blur radii and sigmas, glass-blur displacement,
motion-blur length, elastic displacement and smoothness, snowflake and spatter sizes — are multiplied by
``s = min(H, W) / 224``, so an image and its downscaled copy get the same corruption at the same relative
scale (a consequence: on small images the mildest blurs are faint, e.g. defocus severity 1 at 32×32,
just as a 3-pixel blur of a 224×224 photo is invisible after downsizing it to 32×32). Quantities that
are already relative (noise levels, zoom factors, pixelate factors, contrast, JPEG quality, fog and frost
fractals generated at the image's own size) are used as they are. Pixel-level features are not shrunk
below one pixel: glass-blur swap distance and the spatter drop smoothing are floored at one pixel,
snowflakes are at least a pixel (their noise grid is resampled, as the reference's zoom does), and the
3×3 spatter filters and the defocus anti-aliasing blur keep their pixel sizes.

Where this departs from the reference (all checked against it on real photos with
``benchmarks/corruptions.py --agreement``: per-severity strength within a few percent unless noted):
deterministic corruptions (blurs, contrast, brightness, saturate, pixelate, JPEG) differ from it by
~0.5/255 on average, mostly its truncation to uint8, which is not done here; glass blur scrambles
pixels with independent offsets instead of chained sequential swaps (~10 % milder); frost textures are
procedural (matched to the reference frost layer's mean and spread), with random crops and flips of a
few textures per call; JPEG runs in float (no 8-bit rounding of input or output); images of any size
from 8 px are accepted (the reference needs 32 px) and 1-channel images stay 1-channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from failsight.robustness import _corruptions_ops as ops

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

#: Per-severity parameters (severities 1..5), in the units of the reference at 224×224.
PARAMS: dict[str, list] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],  # noise std
    "shot_noise": [60, 25, 12, 5, 3],  # photons per unit intensity
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],  # salt-and-pepper fraction
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],  # multiplicative noise std
    "gaussian_blur": [1, 2, 3, 4, 6],  # sigma (px)
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],  # sigma, max shift, rounds
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],  # disk radius, alias sigma (px)
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],  # radius (trail = 2r px), sigma (px)
    "zoom_blur": [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
                  np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)],  # zoom factors averaged
    # mean, std, flake zoom, threshold, motion radius, motion sigma, image blend
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],  # image weight, frost weight
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],  # fog weight, fractal decay
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],  # added to HSV value
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],  # contrast factor
    "elastic_transform": [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],  # alpha
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],  # resize factor
    "jpeg_compression": [25, 18, 15, 10, 7],  # JPEG quality
    # mean, std, blur sigma, threshold, intensity / mud blur, mode (0 water, 1 mud)
    "spatter": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],  # saturation factor, offset
}


def scale_of(x: torch.Tensor) -> float:
    """Size factor ``s = min(H, W) / 224`` applied to pixel-valued parameters."""
    return min(x.shape[-2:]) / 224.0


def _p(name: str, severity: int):
    return PARAMS[name][severity - 1]


# ---------------------------------------------------------------------------------------------- noise


def _writes_out(fn: Corruption) -> Corruption:
    """Mark a corruption that accepts ``out=`` (the batch runner then skips a copy per chunk)."""
    fn.writes_out = True  # type: ignore[attr-defined]
    return fn


def _dest(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    return torch.empty_like(x) if out is None else out


@_writes_out
def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    c = _p("gaussian_noise", severity)
    return ops.normal_into(_dest(x, out), 0.0, c, g).add_(x).clamp_(0, 1)


@_writes_out
def shot_noise(x: torch.Tensor, severity: int, g: torch.Generator,
               out: torch.Tensor | None = None) -> torch.Tensor:
    return ops.poisson_scaled(x, float(_p("shot_noise", severity)), g, out=out)


@_writes_out
def impulse_noise(x: torch.Tensor, severity: int, g: torch.Generator,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    a = _p("impulse_noise", severity)
    u = ops.rand(x.shape, g, x.device)
    salt = (u < a / 2).to(x.dtype)  # half of the flipped values are salt (1), half pepper (0)
    return torch.where(u < a, salt, x, out=_dest(x, out))


@_writes_out
def speckle_noise(x: torch.Tensor, severity: int, g: torch.Generator,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    c = _p("speckle_noise", severity)
    return ops.normal_into(_dest(x, out), 1.0, c, g).mul_(x).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------- blur


def gaussian_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    sigma = _p("gaussian_blur", severity) * scale_of(x)
    return ops.gaussian_blur(x, sigma).clamp_(0, 1)


def glass_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Blur, locally scramble pixels, blur again.

    The reference swaps each pixel with a random neighbour at integer offsets in ``[-d, d)`` (d =
    max shift), sequentially, for ``rounds`` passes. Here every pixel instead takes the value at the
    sum of ``rounds`` independent integer offsets in ``[-d, d)`` (all channels alike): a vectorised
    local scramble with the same reach, slightly milder (no chains of swaps). ``d`` follows the size
    rule but is at least one pixel (a swap cannot be shorter).
    """
    sigma, delta, rounds = _p("glass_blur", severity)
    s = scale_of(x)
    n, _, h, w = x.shape
    y = ops.gaussian_blur(x, sigma * s)
    d = max(1, round(delta * s))
    off = torch.zeros((n, 2, h, w), device=x.device)
    for _ in range(rounds):
        off += torch.randint(-d, d, (n, 2, h, w), generator=ops.gen_for(g, x.device), device=x.device)
    y = ops.warp(y, off[:, 0], off[:, 1], padding_mode="border", mode="nearest")
    return ops.gaussian_blur(y, sigma * s).clamp_(0, 1)


def defocus_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    radius, alias = _p("defocus_blur", severity)
    s = scale_of(x)
    k = ops.disk_kernel(radius * s, alias)  # the anti-aliasing blur is a pixel-level quantity: not scaled
    return ops.conv_same(x, k, mode="reflect" if k.shape[0] // 2 < min(x.shape[-2:]) else "replicate").clamp_(0, 1)


def motion_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    radius, sigma = _p("motion_blur", severity)
    s = scale_of(x)
    angles = ops.uniform((x.shape[0],), -45.0, 45.0, g)
    return ops.line_blur(x, angles, 2 * radius * s, sigma * s).clamp_(0, 1)


def _clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """Centre crop of size ``ceil(H / z)`` resized by ``z`` (linear, corner-aligned as scipy's zoom)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / z), math.ceil(w / z)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (max(h, round(ch * z)), max(w, round(cw * z)))
    if size == (ch, cw):
        return crop
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)[..., :h, :w]


def zoom_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    zooms = _p("zoom_blur", severity)
    out = x.clone()
    for z in zooms:  # 11-16 zoom factors, each one vectorised over the batch
        out.add_(_clipped_zoom(x, float(z)))
    return out.div_(len(zooms) + 1).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------- weather


def snow(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    loc, scl, zoom, thr, mb_r, mb_s, blend = _p("snow", severity)
    s = scale_of(x)
    n, _, h, w = x.shape
    z = zoom * s  # flake grid spacing in pixels; below 1 the grid is resampled down (flakes stay 1 px)
    ch, cw = math.ceil(h / z), math.ceil(w / z)
    layer = ops.randn((n, 1, ch, cw), g, x.device).mul_(scl).add_(loc)
    if (ch, cw) != (h, w):
        layer = F.interpolate(layer, size=(max(h, round(ch * z)), max(w, round(cw * z))),
                              mode="bilinear", align_corners=True)[..., :h, :w]
    layer = layer.masked_fill_(layer < thr, 0.0).clamp_(0, 1)
    angles = ops.uniform((n,), -135.0, -45.0, g)
    layer = ops.line_blur(layer, angles, 2 * mb_r * s, mb_s * s)
    lum = ops.gray(x)
    base = torch.maximum(x, lum * 1.5 + 0.5).mul_(1 - blend).add_(x, alpha=blend)
    return base.add_(layer).add_(torch.flip(layer, dims=(2, 3))).clamp_(0, 1)


def frost_layer(n: int, c: int, h: int, w: int, g: torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Procedural frost ``(N, C, H, W)`` in [0, 1]: ice needles over a fractal haze, bluish white.

    Stands in for the reference's frost photographs: a diamond-square haze (the fog fractal), thin
    bright ridges of a rougher fractal (crystal edges), and short needles (sparse seeds motion-blurred
    along three directions per image), mapped to the brightness and tint of the reference's frost layer
    (channel means about 0.45 / 0.58 / 0.63, std about 0.1). Sizes are relative to the image.
    """
    size = ops.next_pow2(max(h, w))
    haze = ops.plasma_fractal(n, size, 1.8, g, device)[:, None, :h, :w]
    rough = ops.plasma_fractal(n, size, 1.25, g, device)[:, None, :h, :w]
    ridges = (1.0 - (2.0 * rough - 1.0).abs()).pow_(10)
    s = min(h, w) / 224.0
    # needles grow where the crystals are: seeds thinned by the ridge density, three orientations
    u = ops.rand((n, 1, h, w), g, device)
    pick = ops.rand((n, 1, h, w), g, device)
    seeds = (u < 0.04 * ridges.pow(0.5)).float()
    base = ops.uniform((n,), -180.0, 180.0, g)
    needles = torch.zeros_like(seeds)
    for k in range(3):
        part = seeds * ((pick >= k / 3) & (pick < (k + 1) / 3)).float()
        needles += ops.line_blur(part, base + 120.0 * k, 14 * s, 6 * s)
    needles = (needles * (3.0 / needles.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6))).clamp_(0, 1)
    f = (0.45 * haze + 0.6 * ridges * (0.3 + haze) + 0.4 * needles * (0.5 + haze)).clamp_(0, 1)
    # brightness and tint of the reference's frost layer: per-channel mean ~(0.45, 0.58, 0.63), std ~0.1
    tint = torch.tensor([0.728, 0.931, 1.016], device=device).view(1, 3, 1, 1)
    if c == 1:
        tint = (tint * torch.tensor(ops.LUMA, device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return ((0.42 + 0.68 * f) * tint).clamp_(0, 1)


_FROST_BANK = 4  # textures generated per call; images take random crops of them (the reference has 5)
_FROST_MARGIN = 1.5  # texture side relative to the image side


def _frost_prepare(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """A small bank of frost textures ``(K, C, ~1.5 H, ~1.5 W)`` shared by the whole batch."""
    n, c, h, w = x.shape
    th, tw = math.ceil(h * _FROST_MARGIN), math.ceil(w * _FROST_MARGIN)
    return frost_layer(min(_FROST_BANK, n), c, th, tw, g, x.device)


@_writes_out
def frost(x: torch.Tensor, severity: int, g: torch.Generator, out: torch.Tensor | None = None,
          state: torch.Tensor | None = None) -> torch.Tensor:
    """``a * x + b * frost``; like the reference, each image gets a random crop of one of a few frost
    textures (here procedural, generated once per call, with random flips)."""
    a, b = _p("frost", severity)
    n, c, h, w = x.shape
    bank = _frost_prepare(x, severity, g) if state is None else state
    k, _, th, tw = bank.shape
    dev = x.device
    pick = torch.randint(0, k, (n,), generator=g).to(dev)
    oy = torch.randint(0, th - h + 1, (n,), generator=g).to(dev)
    ox = torch.randint(0, tw - w + 1, (n,), generator=g).to(dev)
    fy = torch.randint(0, 2, (n,), generator=g).to(dev).bool()
    fx = torch.randint(0, 2, (n,), generator=g).to(dev).bool()
    ry, rx = torch.arange(h, device=dev), torch.arange(w, device=dev)
    rows = torch.where(fy[:, None], h - 1 - ry[None, :], ry[None, :]) + oy[:, None]  # (N, H)
    cols = torch.where(fx[:, None], w - 1 - rx[None, :], rx[None, :]) + ox[:, None]  # (N, W)
    flat = (rows * tw)[:, :, None] + cols[:, None, :] + (pick * (c * th * tw))[:, None, None]  # (N, H, W)
    o = _dest(x, out)
    for ch in range(c):  # one flat gather per channel (1 or 3), shared index
        o[:, ch] = torch.take(bank, flat + ch * th * tw)
    return o.mul_(b).add_(x, alpha=a).clamp_(0, 1)


frost.prepare = _frost_prepare  # type: ignore[attr-defined]


def fog(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    a, decay = _p("fog", severity)
    n, _, h, w = x.shape
    layer = ops.plasma_fractal(n, ops.next_pow2(max(h, w)), decay, g, x.device)[:, None, :h, :w]
    mx = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + layer * a).mul_(mx / (mx + a)).clamp_(0, 1)


@_writes_out
def brightness(x: torch.Tensor, severity: int, g: torch.Generator,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """HSV value + c. With hue and saturation fixed, RGB scales with V, so ``rgb * V'/V`` (exact).

    Black pixels (V = 0, saturation 0) become gray ``V'``.
    """
    c = _p("brightness", severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp_(max=1.0)
    ratio = v_new / v.clamp_min(1e-12)
    o = torch.mul(x, ratio, out=_dest(x, out))  # 0 where v = 0
    return o.addcmul_((v <= 0).to(x.dtype), v_new).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------- digital


@_writes_out
def contrast(x: torch.Tensor, severity: int, g: torch.Generator,
             out: torch.Tensor | None = None) -> torch.Tensor:
    c = _p("contrast", severity)
    m = x.mean(dim=(2, 3), keepdim=True)
    return torch.sub(x, m, out=_dest(x, out)).mul_(c).add_(m).clamp_(0, 1)


#: Elastic displacement std (pixels at 224×224) of the reference: alpha * U(-m, m) smoothed by a Gaussian
#: of sigma 0.01*224 (truncate 3): std = alpha * m / sqrt(3) * sum(k1^2).
_ELASTIC_SIGMA_REF = 0.01 * 224
_ELASTIC_GAIN_REF = float((ops.gaussian_kernel1d(_ELASTIC_SIGMA_REF, truncate=3.0).double() ** 2).sum())
_ELASTIC_M_REF = 0.005 * 224


def elastic_transform(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Smooth random displacement field (imagecorruptions' elastic transform), reflected borders."""
    alpha = _p("elastic_transform", severity)
    s = scale_of(x)
    n, _, h, w = x.shape
    std = alpha * _ELASTIC_M_REF / math.sqrt(3.0) * _ELASTIC_GAIN_REF * s
    field = ops.smooth_field(n, h, w, _ELASTIC_SIGMA_REF * s, std, g, x.device)
    return ops.warp(x, field[:, 0], field[:, 1], padding_mode="reflection").clamp_(0, 1)


@lru_cache(maxsize=64)
def _blocks(length: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """PIL's maps between ``length`` pixels and ``m < length`` cells, reproduced bit for bit.

    BOX (downsizing, Pillow's ``precompute_coeffs``): cell c averages the run of pixels where the box
    filter is 1 around its centre ``(c + .5) L / m``, computed in double precision as Pillow does — so
    where a cell edge falls exactly on a pixel centre, rounding decides, and a pixel may belong to two
    neighbouring cells. Returns each cell's first pixel and pixel count (int64 ``(m,)``). NEAREST
    (upsizing, Pillow's ``ImagingScaleAffine``): pixel i reads cell ``int(x_i)`` with
    ``x_0 = .5 m / L`` and ``x_{i+1} = x_i + m / L`` accumulated in double (int64 ``(L,)``), plus whether
    torch's 'nearest-exact' interpolation computes the same map.
    """
    scale = float(length) / m  # Pillow: (double)(in1 - in0) / outSize, filterscale = max(scale, 1)
    support = 0.5 * max(scale, 1.0)  # box filter support 0.5
    ss = 1.0 / max(scale, 1.0)
    starts, counts = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    for c in range(m):  # m cells, once per (length, m): cached
        center = (c + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), length)
        t = (np.arange(xmin, xmax, dtype=np.float64) - center + 0.5) * ss
        inside = np.flatnonzero((t > -0.5) & (t <= 0.5))  # Pillow's box_filter; a contiguous run
        starts[c], counts[c] = xmin + inside[0], len(inside)
    a = float(m) / length
    steps = np.full(length, a)
    steps[0] = a * 0.5
    near = np.cumsum(steps).astype(np.int64)  # sequential double sums, truncated (coordinates >= 0)
    near_t = torch.from_numpy(near)
    probe = torch.arange(m, dtype=torch.float32).view(1, 1, 1, m)
    torch_map = F.interpolate(probe, size=(1, length), mode="nearest-exact").view(-1).long()
    return (torch.from_numpy(starts), torch.from_numpy(counts), near_t, bool(torch.equal(torch_map, near_t)))


def _block_sums(x: torch.Tensor, dim: int, m: int) -> torch.Tensor:
    """Sums over PIL's ``m`` BOX cells along ``dim`` (contiguous runs of about ``L / m`` pixels)."""
    starts, counts, _, _ = _blocks(x.shape[dim], m)
    starts, counts = starts.to(x.device), counts.to(x.device)
    out = x.index_select(dim, starts)
    length = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = m
    for t in range(1, int(counts.max())):  # offsets inside a cell: at most 1 / factor of them
        sel = x.index_select(dim, (starts + t).clamp_(max=length - 1))
        if bool((counts > t).all()):
            out += sel
        else:  # only the longer cells have a pixel at this offset
            out.addcmul_(sel, (counts > t).to(x.dtype).view(shape))
    return out


@lru_cache(maxsize=64)
def _row_operator(length: int, m: int) -> torch.Tensor:
    """``(L, L)`` matrix of BOX-average-then-NEAREST along one axis: ``row @ op.T`` pixelates a row."""
    starts, counts, near, _ = _blocks(length, m)
    down = torch.zeros(m, length, dtype=torch.float64)
    for c in range(m):  # cells may share a border pixel (see _blocks): fill each run on its own
        down[c, int(starts[c]):int(starts[c] + counts[c])] = 1.0 / float(counts[c])
    return down[near].float()  # row i averages the BOX cell NEAREST maps pixel i to


@lru_cache(maxsize=64)
def _row_tiles(length: int, m: int, target: int = 32) -> tuple[tuple[int, int, torch.Tensor], ...]:
    """Split the row operator into independent diagonal blocks of about ``target`` pixels.

    ``_row_operator`` is block diagonal (cells never straddle a block edge), so ``row @ op.T`` is a few
    small GEMMs on column ranges instead of one ``L × L`` GEMM. Returns ``(start, stop, block.T)``.
    """
    op = _row_operator(length, m)
    nz = op != 0
    valid = [e for e in range(1, length) if not bool(nz[:e, e:].any()) and not bool(nz[e:, :e].any())]
    tiles, a = [], 0
    while a < length:
        cand = [e for e in valid if a < e <= a + target]
        b = max(cand) if cand else next((e for e in valid if e > a), length)
        if length - b < target // 2:
            b = length
        tiles.append((a, b, op[a:b, a:b].T.contiguous()))
        a = b
    return tuple(tiles)


@lru_cache(maxsize=64)
def _blocks_np(length: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_blocks` as int64 numpy arrays for the numba kernel: cell starts, cell counts, NEAREST map."""
    starts, counts, near, _ = _blocks(length, m)
    return starts.numpy().copy(), counts.numpy().copy(), near.numpy().copy()


@_writes_out
def pixelate(x: torch.Tensor, severity: int, g: torch.Generator,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL ``resize(int(size * c), BOX)`` then ``resize(size, NEAREST)``, per channel, in float.

    The output is piecewise constant: each pixel holds the mean of the BOX cell NEAREST maps it to.
    On CPU one numba pass per plane: each used cell row's input rows are summed once, averaged per
    cell along W, expanded by the NEAREST map and written to the output rows that read it. Elsewhere
    (torch): rows are first summed per cell (row gathers); along W, averaging and expansion are one GEMM
    with the per-axis operator (split into ~32-pixel diagonal blocks for wide images).
    """
    c = _p("pixelate", severity)
    h, w = x.shape[-2:]
    mh, mw = max(1, int(h * c)), max(1, int(w * c))
    dest = _dest(x, out)
    if ops.numba_ok(x, dest):
        return ops.pixelate_numba(x, dest, *_blocks_np(h, mh), *_blocks_np(w, mw))
    _, cnt_h, near_h, _ = _blocks(h, mh)
    rows = _block_sums(x, 2, mh)  # (N, C, mh, W) sums over each cell's rows
    inv_h = (1.0 / cnt_h.to(x.device, x.dtype)).view(-1, 1)
    if w <= 64:
        wide = torch.matmul(rows, _row_operator(w, mw).to(x.device).T)
    else:  # the operator is block diagonal: one small GEMM per column block
        wide = torch.empty_like(rows)
        r2, w2 = rows.view(-1, w), wide.view(-1, w)
        for a, b, blk in _row_tiles(w, mw):
            w2[:, a:b] = r2[:, a:b] @ blk.to(x.device)
    wide.mul_(inv_h)
    return torch.index_select(wide, 2, near_h.to(x.device), out=dest)


@_writes_out
def jpeg_compression(x: torch.Tensor, severity: int, g: torch.Generator,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    return ops.jpeg(x, _p("jpeg_compression", severity), out=out)


# ---------------------------------------------------------------------------------------------- extra


def _dilate3(m: torch.Tensor, replicate: bool = False) -> torch.Tensor:
    """3×3 binary dilation of a bool ``(N, 1, H, W)`` mask (separable ORs of shifted slices); outside
    the image counts as False, or as the nearest border pixel with ``replicate``."""
    if replicate:
        p = F.pad(m[:, 0].to(torch.uint8), (1, 1, 1, 1), mode="replicate").bool()
    else:
        p = F.pad(m[:, 0], (1, 1, 1, 1))
    rows = p[..., :-2] | p[..., 1:-1] | p[..., 2:]
    return (rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:])[:, None]


def _spatter_water(ll: torch.Tensor, s: float) -> torch.Tensor:
    """Embossed water-drop intensity ``(N, 1, H, W)`` (the reference's Canny / distance / emboss chain)."""
    n, _, h, w = ll.shape
    mask = ll > 0
    edge = mask & ~_dilate3(~mask, replicate=True)  # inner boundary of the drops
    cap = max(1, round(20 * s))
    dist = torch.zeros(ll.shape, dtype=torch.uint8, device=ll.device)
    reach = edge
    for _ in range(cap):  # truncated chessboard distance to the nearest drop edge
        dist += ~reach
        reach = _dilate3(reach)
    dist = ops.box3(dist.float()).floor_().clamp_(0, 255).long()
    # per-image histogram equalisation (OpenCV equalizeHist) over the cap + 1 possible levels
    nb = cap + 1
    hist = torch.bincount((dist.view(n, -1) + nb * torch.arange(n, device=ll.device)[:, None]).view(-1),
                          minlength=n * nb).view(n, nb).double()
    cdf = hist.cumsum(1)
    first = (hist > 0).float().argmax(1, keepdim=True)
    h0 = hist.gather(1, first)
    total = cdf[:, -1:]
    lut = torch.round((cdf - h0) * 255.0 / (total - h0).clamp_min(1)).clamp_(0, 255)
    lut = torch.where(total == h0, first.double().expand_as(lut), lut).float()
    eq = lut.gather(1, dist.view(n, -1)).view(n, 1, h, w)
    ker = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    emb = ops.conv_same(eq, ker, mode="reflect" if min(h, w) > 1 else "replicate").round_().clamp_(0, 255)
    m = ll * ops.box3(emb)
    return m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def spatter(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    loc, scl, sigma, thr, inten, mode = _p("spatter", severity)
    s = max(scale_of(x), 1.0 / sigma)  # drops are at least a pixel across: the noise blur stays >= 1 px
    n, c, h, w = x.shape
    # smoothed noise with the reference's std at 224 (its drop coverage), whatever the scaled sigma
    k_ref, k = ops.gaussian_kernel1d(sigma), ops.gaussian_kernel1d(sigma * s)
    gain = float((k_ref.double() ** 2).sum() / (k.double() ** 2).sum())
    ll = ops.gaussian_blur(ops.randn((n, 1, h, w), g, x.device), sigma * s).mul_(scl * gain).add_(loc)
    ll.masked_fill_(ll < thr, 0.0)
    if mode == 0:  # water: pale turquoise drops
        m = _spatter_water(ll, s).mul_(inten)
        color = torch.tensor([175.0, 238.0, 238.0], device=x.device).view(1, 3, 1, 1) / 255.0
        add = (m * color).clamp_(0, 1)
        return (x + (ops.gray(add) if c == 1 else add)).clamp_(0, 1)
    m = ops.gaussian_blur((ll > thr).float(), inten * s)  # mud: opaque brown blobs
    m.masked_fill_(m < 0.8, 0.0)
    color = torch.tensor([63.0, 42.0, 20.0], device=x.device).view(1, 3, 1, 1) / 255.0
    col = color * m
    return (x * (1 - m) + (ops.gray(col) if c == 1 else col)).clamp_(0, 1)


@_writes_out
def saturate(x: torch.Tensor, severity: int, g: torch.Generator,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """HSV saturation ``s * a + b`` (clipped). Closed form: with H and V fixed, ``v - rgb`` scales with S.

    Gray pixels (S = 0) have hue 0 (red) as in skimage, so an offset ``b > 0`` tints them red. On 1-channel
    images this is the identity (the reference converts to RGB and keeps the red channel, i.e. V).
    """
    a, b = _p("saturate", severity)
    if x.shape[1] == 1:
        return _dest(x, out).copy_(x)
    v = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * a + b).clamp_(0, 1)
    ratio = s_new / s.clamp_min(1e-12)
    res = v - (v - x) * ratio
    if b > 0:  # achromatic pixels: hue 0 -> (v, v(1-s'), v(1-s'))
        red = torch.cat((v, v * (1 - s_new), v * (1 - s_new)), dim=1)
        res = torch.where(s > 0, res, red)
    return torch.clamp(res, 0, 1, out=_dest(x, out))


#: name -> (function, family, description); the order is the ImageNet-C order (15 common, then 4 extra).
CORRUPTIONS: dict[str, tuple[Corruption, str, str]] = {
    "gaussian_noise": (gaussian_noise, "noise", "additive Gaussian noise per pixel and channel"),
    "shot_noise": (shot_noise, "noise", "Poisson (photon) noise"),
    "impulse_noise": (impulse_noise, "noise", "salt-and-pepper noise"),
    "defocus_blur": (defocus_blur, "blur", "out-of-focus blur with a disk kernel"),
    "glass_blur": (glass_blur, "blur", "blur, local pixel scrambling, blur (frosted glass)"),
    "motion_blur": (motion_blur, "blur", "camera motion: one-sided blur along a random line"),
    "zoom_blur": (zoom_blur, "blur", "average of centre zooms (camera moving towards the object)"),
    "snow": (snow, "weather", "snowflakes streaked by motion, brightened scene"),
    "frost": (frost, "weather", "procedural frost crystals over the image"),
    "fog": (fog, "weather", "plasma-fractal fog"),
    "brightness": (brightness, "weather", "brighter scene (HSV value + c)"),
    "contrast": (contrast, "digital", "reduced contrast around the per-channel mean"),
    "elastic_transform": (elastic_transform, "digital", "smooth random local displacements"),
    "pixelate": (pixelate, "digital", "box downsampling then nearest upsampling"),
    "jpeg_compression": (jpeg_compression, "digital", "JPEG encode/decode at low quality"),
    "speckle_noise": (speckle_noise, "noise", "multiplicative Gaussian noise"),
    "gaussian_blur": (gaussian_blur, "blur", "Gaussian blur"),
    "spatter": (spatter, "weather", "water drops (severity 1-3) or mud (4-5) on the lens"),
    "saturate": (saturate, "digital", "HSV saturation change (identity on 1-channel images)"),
}

COMMON = tuple(list(CORRUPTIONS)[:15])
EXTRA = tuple(list(CORRUPTIONS)[15:])
