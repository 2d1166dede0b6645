"""Cue shifts: perturb one cue at a time (colour, geometry or texture), five severities each.

They let you measure what a model relies on: a model that leans on colour drops under the colour
shifts while shape is intact; a shape-reliant one drops under the geometry shifts. Each function is
``fn(x, severity, g) -> x`` on float32 ``(N, C, H, W)`` in [0, 1]; per-image random choices (signs,
directions, permutations) come from ``g``. Geometric and blur magnitudes are relative to the image size;
affine warps fill uncovered pixels with 0 (as torchvision does).
Colour shifts are the identity on 1-channel images (gray has no hue or saturation to change).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from failsight.robustness import _corruptions_ops as ops

Shift = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

PARAMS: dict[str, list[float]] = {
    "hue_rotation": [30, 60, 90, 135, 180],  # degrees of hue rotation (random sign per image)
    "channel_permutation": [0.2, 0.4, 0.6, 0.8, 1.0],  # blend weight of a random channel permutation
    "desaturation": [0.2, 0.4, 0.6, 0.8, 1.0],  # blend weight of the luma image
    "color_jitter": [0.1, 0.2, 0.3, 0.4, 0.5],  # max relative brightness/contrast/saturation change
    "rotation": [5, 10, 20, 30, 45],  # degrees (random sign)
    "scale": [0.1, 0.2, 0.3, 0.4, 0.5],  # zoom by (1 + a) or 1 / (1 + a)
    "translation": [0.05, 0.1, 0.15, 0.2, 0.25],  # shift, fraction of the image size (random direction)
    "shear": [5, 10, 15, 22.5, 30],  # shear angle, degrees (random axis and sign)
    "elastic": [0.005, 0.01, 0.015, 0.02, 0.03],  # displacement std, fraction of size (smoothness 10 %)
    "texture_noise": [0.03, 0.06, 0.1, 0.15, 0.2],  # std of achromatic pixel noise
    "texture_blur": [0.006, 0.012, 0.02, 0.03, 0.045],  # Gaussian sigma, fraction of size
}


def _p(name: str, severity: int) -> float:
    return PARAMS[name][severity - 1]


def _signs(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g).float().mul_(2).sub_(1)


def _rgb_only(x: torch.Tensor) -> bool:
    return x.shape[1] == 3


# ---------------------------------------------------------------------------------------------- colour


def hue_rotation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    if not _rgb_only(x):
        return x.clone()
    deg = _p("hue_rotation", severity) * _signs(x.shape[0], g).to(x.device)
    h, s, v = ops.rgb_to_hsv(x)
    h = torch.remainder(h + (deg / 360.0).view(-1, 1, 1, 1), 1.0)
    return ops.hsv_to_rgb(h, s, v).clamp_(0, 1)


_PERMS = torch.tensor([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])  # non-identity


def channel_permutation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    if not _rgb_only(x):
        return x.clone()
    a = _p("channel_permutation", severity)
    n = x.shape[0]
    perm = _PERMS[torch.randint(0, len(_PERMS), (n,), generator=g)].to(x.device)
    swapped = torch.gather(x, 1, perm.view(n, 3, 1, 1).expand_as(x))
    return swapped.mul_(a).add_(x, alpha=1 - a)


def desaturation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    if not _rgb_only(x):
        return x.clone()
    a = _p("desaturation", severity)
    return (x * (1 - a)).add_(ops.gray(x), alpha=a).clamp_(0, 1)


def color_jitter(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors in [1-m, 1+m]) and hue (±m/2 turn), in that order.

    On 1-channel images only brightness and contrast apply.
    """
    m = _p("color_jitter", severity)
    n = x.shape[0]
    dev = x.device
    fb, fc, fs = (ops.uniform((n, 1, 1, 1), 1 - m, 1 + m, g, dev) for _ in range(3))
    fh = ops.uniform((n, 1, 1, 1), -m / 2, m / 2, g, dev)
    y = (x * fb).clamp_(0, 1)
    mean = ops.gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean).mul_(fc).add_(mean).clamp_(0, 1)
    if not _rgb_only(x):
        return y
    lum = ops.gray(y)
    y = (y - lum).mul_(fs).add_(lum).clamp_(0, 1)
    h, s, v = ops.rgb_to_hsv(y)
    return ops.hsv_to_rgb(torch.remainder(h + fh, 1.0), s, v).clamp_(0, 1)


# ---------------------------------------------------------------------------------------------- geometry


def rotation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    th = torch.deg2rad(_p("rotation", severity) * _signs(n, g))
    c, s = torch.cos(th), torch.sin(th)
    mat = torch.stack((torch.stack((c, -s), 1), torch.stack((s, c), 1)), 1)
    return ops.affine(x, mat.to(x.device), torch.zeros(n, 2, device=x.device), "zeros").clamp_(0, 1)


def scale(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    a = _p("scale", severity)
    z = torch.where(_signs(n, g) > 0, torch.tensor(1 + a), torch.tensor(1 / (1 + a)))
    mat = torch.eye(2)[None] / z.view(n, 1, 1)
    return ops.affine(x, mat.to(x.device), torch.zeros(n, 2, device=x.device), "zeros").clamp_(0, 1)


def translation(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    f = _p("translation", severity)
    phi = ops.uniform((n,), 0.0, 2 * math.pi, g)
    shift = torch.stack((torch.cos(phi) * f * w, torch.sin(phi) * f * h), 1)
    mat = torch.eye(2).expand(n, 2, 2)
    return ops.affine(x, mat.to(x.device), shift.to(x.device), "zeros").clamp_(0, 1)


def shear(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    k = math.tan(math.radians(_p("shear", severity))) * _signs(n, g)
    horizontal = torch.rand((n,), generator=g) < 0.5
    mat = torch.eye(2).repeat(n, 1, 1)
    mat[:, 0, 1] = torch.where(horizontal, k, torch.zeros_like(k))
    mat[:, 1, 0] = torch.where(horizontal, torch.zeros_like(k), k)
    return ops.affine(x, mat.to(x.device), torch.zeros(n, 2, device=x.device), "zeros").clamp_(0, 1)


def elastic(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    size = min(h, w)
    field = ops.smooth_field(n, h, w, 0.1 * size, _p("elastic", severity) * size, g, x.device)
    return ops.warp(x, field[:, 0], field[:, 1], padding_mode="reflection").clamp_(0, 1)


# ---------------------------------------------------------------------------------------------- texture


def texture_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Achromatic white noise (same value in every channel): high frequencies change, colour does not."""
    n, _, h, w = x.shape
    noise = ops.randn((n, 1, h, w), g, x.device).mul_(_p("texture_noise", severity))
    return (x + noise).clamp_(0, 1)


def texture_blur(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    """Gaussian low-pass with sigma relative to the image: removes texture, keeps coarse shape and colour."""
    sigma = _p("texture_blur", severity) * min(x.shape[-2:])
    return ops.gaussian_blur(x, sigma).clamp_(0, 1)


#: name -> (function, family, description, needs colour)
CUE_SHIFTS: dict[str, tuple[Shift, str, str, bool]] = {
    "hue_rotation": (hue_rotation, "color", "rotate the HSV hue by a fixed angle", True),
    "channel_permutation": (channel_permutation, "color", "blend towards a random RGB channel permutation",
                            True),
    "desaturation": (desaturation, "color", "blend towards the grayscale image", True),
    "color_jitter": (color_jitter, "color", "random brightness, contrast, saturation and hue", False),
    "rotation": (rotation, "geometry", "rotate about the centre", False),
    "scale": (scale, "geometry", "zoom in or out about the centre", False),
    "translation": (translation, "geometry", "shift in a random direction", False),
    "shear": (shear, "geometry", "horizontal or vertical shear", False),
    "elastic": (elastic, "geometry", "smooth large-scale elastic deformation", False),
    "texture_noise": (texture_noise, "texture", "achromatic high-frequency noise", False),
    "texture_blur": (texture_blur, "texture", "low-pass blur relative to the image size", False),
}
