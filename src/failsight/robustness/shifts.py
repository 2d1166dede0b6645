"""Image shifts with severities: the ImageNet-C corruptions, single-cue shifts, and your own.

``corrupt(x, name, severity, seed=0)`` applies one registered shift to a batch of images ``(N, C, H, W)``
with values in [0, 1] and 1 or 3 channels (torch tensor or numpy array; the result has the same type,
dtype, device and shape). Everything is vectorised over the batch in torch and deterministic given
``seed``.

Registered out of the box (``list_shifts()``):

* the 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019) in families ``noise``, ``blur``,
  ``weather``, ``digital`` and the 4 extra ones (speckle noise, gaussian blur, spatter, saturate), with
  the parameters of the ``imagecorruptions`` package. Parameters given in pixels at 224×224 (blur
  radii, glass/elastic displacement, motion length, flake and drop sizes) are scaled by
  ``min(H, W) / 224``; relative ones (noise levels, zooms, pixelate factor, JPEG quality, contrast,
  fractal fog/frost) are used as is. Frost crystals are generated procedurally (no image assets).
* cue shifts that change one cue at a time — families ``color`` (hue rotation, channel permutation,
  desaturation, colour jitter), ``geometry`` (rotation, scale, translation, shear, elastic) and
  ``texture`` (achromatic noise, low-pass blur) — to measure reliance on colour versus shape.

Shifts that only change colour (``saturate``, ``hue_rotation``, ``channel_permutation``,
``desaturation``) are the identity on 1-channel images; ``list_shifts(channels=1)`` leaves them out.

Add your own with ``register_shift(name, fn, family=..., description=...)`` where
``fn(x, severity, generator) -> x`` maps a float32 tensor ``(N, C, H, W)`` in [0, 1] to one of the same
shape; failsight validates the input, seeds ``generator``, and clips the result to [0, 1].

Speed: built-in shifts run on chunks of a few MB of images (intermediates stay in cache), write straight
into the output where they can, and large outputs are allocated on transparent huge pages. Tensors on a
GPU stay there (bulk noise is drawn on the device from a generator seeded by ``seed``); only the CPU path
is tested here.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from failsight._validate import FailsightInputError, check_int
from failsight.robustness import _corruptions as _ic
from failsight.robustness import _corruptions_cue as _cue
from failsight.robustness import _corruptions_ops as _ops
from failsight.types import Result

__all__ = [
    "CORRUPTIONS",
    "CUE_SHIFTS",
    "EXTRA_CORRUPTIONS",
    "SEVERITIES",
    "ShiftInfo",
    "corrupt",
    "jpeg_compress",
    "list_shifts",
    "register_shift",
    "shift_families",
    "shift_family",
    "shift_info",
    "unregister_shift",
]

ShiftFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The 15 ImageNet-C corruptions, in the benchmark's order.
CORRUPTIONS: tuple[str, ...] = _ic.COMMON
#: The 4 extra ImageNet-C corruptions (held out for validation in the original benchmark).
EXTRA_CORRUPTIONS: tuple[str, ...] = _ic.EXTRA
#: The single-cue shifts.
CUE_SHIFTS: tuple[str, ...] = tuple(_cue.CUE_SHIFTS)

MIN_SIZE = 8
#: Built-in shifts run on chunks of at most this many values so intermediates stay in cache.
_CHUNK_VALUES = 1 << 20


@dataclasses.dataclass(frozen=True)
class ShiftInfo(Result):
    """A registered shift: its ``name``, ``family`` (e.g. 'noise', 'color'), ``suite`` ('imagenet_c',
    'imagenet_c_extra', 'cue' or 'custom'), a one-line ``description`` and whether it ``needs_color``
    (identity on 1-channel images)."""

    name: str
    family: str
    suite: str
    description: str
    needs_color: bool = False
    fn: ShiftFn = dataclasses.field(default=None, repr=False, compare=False,  # type: ignore[assignment]
                                    metadata={"exclude_json": True})
    builtin: bool = dataclasses.field(default=False, repr=False, metadata={"exclude_json": True})


_REGISTRY: dict[str, ShiftInfo] = {}


def _register_builtins() -> None:
    for name, (fn, family, desc) in _ic.CORRUPTIONS.items():
        suite = "imagenet_c" if name in _ic.COMMON else "imagenet_c_extra"
        _REGISTRY[name] = ShiftInfo(name, family, suite, desc, name == "saturate", fn, True)
    for name, (fn, family, desc, color) in _cue.CUE_SHIFTS.items():
        _REGISTRY[name] = ShiftInfo(name, family, "cue", desc, color, fn, True)


_register_builtins()


# ------------------------------------------------------------------------------------------------ registry


def register_shift(name: str, fn: ShiftFn, *, family: str = "custom", description: str = "",
                   needs_color: bool = False, overwrite: bool = False) -> None:
    """Register ``fn(x, severity, generator) -> x`` as shift ``name`` for :func:`corrupt`.

    ``x`` is float32 ``(N, C, H, W)`` in [0, 1] (a copy, so ``fn`` may work in place), ``severity``
    an int in 1..5, ``generator`` a seeded CPU ``torch.Generator`` (use it for all randomness so
    results are reproducible). ``fn`` must return a tensor of the same shape; it is clipped to
    [0, 1]. With ``needs_color=True`` the shift is skipped (identity) on 1-channel images. Built-in
    names cannot be replaced; an existing custom name needs ``overwrite=True``.
    """
    if not isinstance(name, str) or not name.strip():
        raise FailsightInputError(f"shift name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise FailsightInputError(
            f"fn for shift {name!r} must be callable as fn(x, severity, generator) -> x, got {type(fn).__name__}."
        )
    if not isinstance(family, str) or not family.strip():
        raise FailsightInputError(f"family must be a non-empty string, got {family!r}.")
    old = _REGISTRY.get(name)
    if old is not None and old.builtin:
        raise FailsightInputError(f"{name!r} is a built-in shift and cannot be replaced; pick another name.")
    if old is not None and not overwrite:
        raise FailsightInputError(f"shift {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = ShiftInfo(name, family, "custom", str(description), bool(needs_color), fn, False)


def unregister_shift(name: str) -> None:
    """Remove a custom shift added with :func:`register_shift`."""
    info = _get(name)
    if info.builtin:
        raise FailsightInputError(f"{name!r} is a built-in shift and cannot be removed.")
    del _REGISTRY[name]


def shift_families() -> list[str]:
    """Families of the registered shifts, in registration order."""
    return list(dict.fromkeys(info.family for info in _REGISTRY.values()))


def list_shifts(family: str | None = None, *, suite: str | None = None, channels: int | None = None) -> list[str]:
    """Names of the registered shifts, optionally only one ``family`` and/or ``suite``.

    ``channels=1`` drops the colour-only shifts, which are the identity on grayscale images.
    """
    infos = list(_REGISTRY.values())
    if family is not None:
        fams = shift_families()
        if family not in fams:
            raise FailsightInputError(f"unknown shift family {family!r}; valid families are: {', '.join(fams)}.")
        infos = [i for i in infos if i.family == family]
    if suite is not None:
        suites = list(dict.fromkeys(i.suite for i in _REGISTRY.values()))
        if suite not in suites:
            raise FailsightInputError(f"unknown suite {suite!r}; valid suites are: {', '.join(suites)}.")
        infos = [i for i in infos if i.suite == suite]
    if channels is not None:
        if channels not in (1, 3):
            raise FailsightInputError(f"channels must be 1 or 3, got {channels!r}.")
        if channels == 1:
            infos = [i for i in infos if not i.needs_color]
    return [i.name for i in infos]


def _get(name: Any) -> ShiftInfo:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise FailsightInputError(
            f"unknown shift {name!r}; valid names are: {', '.join(_REGISTRY)}. "
            "Add your own with register_shift(name, fn)."
        )
    return _REGISTRY[name]


def shift_info(name: str) -> ShiftInfo:
    """The :class:`ShiftInfo` of a registered shift."""
    return _get(name)


def shift_family(name: str) -> str:
    """Family of a registered shift (e.g. 'noise', 'blur', 'weather', 'digital', 'color')."""
    return _get(name).family


# ------------------------------------------------------------------------------------------------ inputs


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise FailsightInputError(f"severity must be an integer in 1..5, got {severity!r}.")
    return int(severity)


def _as_images(x: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Validate images and return (float32 contiguous tensor, function restoring the input's type)."""
    if isinstance(x, torch.Tensor):
        is_numpy = False
    elif isinstance(x, np.ndarray):
        is_numpy = True
    else:
        raise FailsightInputError(
            f"images must be a torch.Tensor or numpy.ndarray of shape (N, C, H, W), got {type(x).__name__}; "
            "convert with np.asarray(x, dtype=np.float32)."
        )
    dtype_ok = (x.dtype.is_floating_point if not is_numpy else x.dtype.kind == "f")
    if not dtype_ok:
        hint = " Divide by 255 first (e.g. x.float() / 255)." if str(x.dtype).endswith("uint8") else ""
        raise FailsightInputError(
            f"images must be floating point with values in [0, 1], got dtype {x.dtype}.{hint}"
        )
    shape = tuple(x.shape)
    if len(shape) != 4:
        extra = " For a single image add a batch axis (x[None])." if len(shape) == 3 else ""
        raise FailsightInputError(f"images must be 4-D (N, C, H, W), got shape {shape}.{extra}")
    n, c, h, w = shape
    if c not in (1, 3):
        if w in (1, 3):
            fix = "x.permute(0, 3, 1, 2)" if not is_numpy else "x.transpose(0, 3, 1, 2)"
            raise FailsightInputError(
                f"images must be channels-first (N, C, H, W) with C = 1 or 3, got shape {shape}, which looks "
                f"channels-last (N, H, W, C); convert with {fix}."
            )
        raise FailsightInputError(f"images must have 1 or 3 channels (N, C, H, W), got shape {shape}.")
    if n == 0:
        raise FailsightInputError("images are empty (N = 0); pass at least one image.")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise FailsightInputError(
            f"images must be at least {MIN_SIZE}×{MIN_SIZE} pixels, got {h}×{w}; upsample them first."
        )
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_numpy else x.detach()
    orig_dtype = t.dtype
    t32 = t.to(torch.float32).contiguous()
    lo, hi = torch.aminmax(t32)
    lo, hi = float(lo), float(hi)
    if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FailsightInputError("images contain NaN or inf; clean them before corrupting.")
        hint = " They look like 0-255 values: divide by 255." if hi > 1.0 and hi <= 255.0 and lo >= 0 else ""
        raise FailsightInputError(f"images must have values in [0, 1], got range [{lo:.4g}, {hi:.4g}].{hint}")

    def restore(out: torch.Tensor) -> Any:
        out = out.to(orig_dtype)
        return out.numpy() if is_numpy else out

    return t32, restore


# ------------------------------------------------------------------------------------------------ corrupt

_HUGE_BYTES = 1 << 23


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """Uninitialised tensor like ``x``; large CPU ones are backed by transparent huge pages.

    A fresh 150 MB tensor costs ~40k page faults on 4 KiB pages (as much CPU time as a cheap
    corruption itself); an anonymous mapping advised MADV_HUGEPAGE needs ~75. Falls back to
    ``torch.empty_like`` where the platform lacks it.
    """
    nbytes = x.numel() * x.element_size()
    if x.device.type != "cpu" or nbytes < _HUGE_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty_like(x)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return torch.empty_like(x)
    return torch.frombuffer(buf, dtype=x.dtype).view(x.shape)  # the tensor keeps ``buf`` alive


def _run(info: ShiftInfo, x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    if info.builtin:
        n = x.shape[0]
        prepare = getattr(info.fn, "prepare", None)  # per-call state shared by all chunks (frost bank)
        kw = {"state": prepare(x, severity, g)} if prepare is not None else {}
        step = max(1, _CHUNK_VALUES // x[0].numel())
        if step >= n:
            return info.fn(x, severity, g, **kw)
        out = _empty_like(x)
        direct = getattr(info.fn, "writes_out", False)
        for i in range(0, n, step):  # chunks of images (not single images): keeps intermediates in cache
            if direct:
                info.fn(x[i:i + step], severity, g, out=out[i:i + step], **kw)
            else:
                out[i:i + step] = info.fn(x[i:i + step], severity, g, **kw)
        return out
    if info.needs_color and x.shape[1] == 1:
        return x.clone()
    out = info.fn(x.clone(), severity, g)  # a copy: a custom fn may work in place
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise FailsightInputError(
            f"custom shift {info.name!r} must return a tensor of shape {tuple(x.shape)}, got {got}."
        )
    return out.to(torch.float32).clamp(0, 1)


def corrupt(x: Any, name: str, severity: int, seed: int = 0) -> Any:
    """Apply shift ``name`` at ``severity`` (1-5) to images ``x`` ``(N, C, H, W)`` in [0, 1].

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, float, shape ``(N, C, H, W)``, C in {1, 3}, H, W >= 8.
    name : a name from :func:`list_shifts` (e.g. ``"gaussian_noise"``, ``"hue_rotation"``).
    severity : 1 (mild) to 5 (strong).
    seed : seeds all randomness; the same seed and input give the same output.

    Returns
    -------
    Corrupted images, same type, shape, dtype and device as ``x``, values in [0, 1].
    """
    info = _get(name)
    sev = _check_severity(severity)
    seed = check_int(seed, "seed", minimum=0)
    t, restore = _as_images(x)
    g = torch.Generator()  # CPU: per-image parameters; bulk noise on other devices is seeded from it
    g.manual_seed(seed)
    with torch.no_grad():
        out = _run(info, t, sev, g)
    return restore(out)


def jpeg_compress(x: Any, quality: int, *, subsampling: bool = True) -> Any:
    """JPEG encode + decode ``(N, C, H, W)`` images in [0, 1] at ``quality`` 1..100 (same type out).

    Baseline JPEG in torch: JFIF YCbCr, 8×8 DCT, the standard tables scaled by libjpeg's quality rule,
    4:2:0 chroma subsampling when ``subsampling`` (PIL's default), 8-bit decoded output.
    """
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise FailsightInputError(f"quality must be an integer in 1..100, got {quality!r}.")
    t, restore = _as_images(x)
    with torch.no_grad():
        out = _ops.jpeg(t, int(quality), subsampling=bool(subsampling))
    return restore(out)
