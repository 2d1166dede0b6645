"""Reading the user's own data: ``.npz``, MNIST-format IDX files, image folders, arrays and torch datasets.

:func:`load_data` turns any of these into one :class:`LabelledData`: images as float32 ``(n, C, H, W)`` in
[0, 1] (C = 1 or 3) or tabular features ``(n, d)``, int64 labels ``(n,)``, optional group labels for slicing,
where it came from, one note per conversion done on the way (transpose, /255, resize, ...) and a short
fingerprint of the data's content. Nothing here prints, writes files or downloads; torch and PIL are
imported only when a torch dataset or an image folder is read.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_int,
    check_labels,
    to_numpy,
)
from failsight.types import Result

__all__ = [
    "IMAGE_EXTENSIONS",
    "LabelledData",
    "check_image_size",
    "load_data",
    "normalize_images",
    "read_idx",
    "resize_images",
]

#: Keys accepted in an ``.npz`` for the inputs and for the labels (first match wins).
IMAGE_KEYS: tuple[str, ...] = ("x", "images")
LABEL_KEYS: tuple[str, ...] = ("y", "labels")
#: File suffixes read from an image folder (case-insensitive), through PIL.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: IDX type code -> big-endian numpy dtype (MNIST format: http://yann.lecun.com/exdb/mnist/).
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SUPPORTED = ("an .npz (arrays x and y, optional groups), an .npy of inputs (labels via y= or labels=), "
              "MNIST-format IDX files (e.g. train-images-idx3-ubyte or .gz), or an image folder with one "
              "sub-folder per class (" + ", ".join(IMAGE_EXTENSIONS) + ")")
_DATASET_BATCH = 256


@dataclasses.dataclass(frozen=True)
class LabelledData(Result):
    """Inputs, labels and group labels read by :func:`load_data`, with their provenance.

    ``x``: images float32 ``(n, C, H, W)`` in [0, 1] (``kind="images"``) or features float ``(n, d)``
    (``kind="features"``); ``y``: int64 ``(n,)`` or ``None``; ``groups``: ``{slicing name: (n,) labels}``
    or ``None``. ``source`` is one of "npz", "npy", "idx", "folder", "array", "torch"; ``class_names``
    maps label ``i`` to ``class_names[i]`` when known; ``notes`` has one sentence per conversion done;
    ``fingerprint`` is the first 16 hex digits of a sha256 over the (normalised) ``x`` and ``y``.
    ``original_shape`` / ``original_dtype`` / ``layout`` describe the inputs as stored ("NCHW", "NHWC",
    "NHW" for images, ``None`` for features). Unpacks as ``x, y = load_data(...)``; arrays are left out of
    ``to_dict()``.
    """

    x: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    y: np.ndarray | None = dataclasses.field(repr=False, metadata={"exclude_json": True})
    groups: dict[str, np.ndarray] | None = dataclasses.field(repr=False, metadata={"exclude_json": True})
    kind: str
    source: str
    path: str | None
    class_names: tuple[str, ...] | None
    notes: tuple[str, ...]
    fingerprint: str
    n: int
    item_shape: tuple[int, ...]
    group_names: tuple[str, ...]
    original_shape: tuple[int, ...]
    original_dtype: str
    layout: str | None

    def __iter__(self):  # x, y = load_data(...)
        yield self.x
        yield self.y

    def __len__(self) -> int:
        return self.n


# ----------------------------------------------------------------------------------------- images
def normalize_images(arr: Any, name: str = "x", *, min_size: int = 1,
                     purpose: str = "the analyses") -> tuple[np.ndarray, str, list[str]]:
    """Bring images to float32 ``(n, C, H, W)`` in [0, 1], C in {1, 3}.

    Accepts ``(n, C, H, W)``, ``(n, H, W, C)`` (transposed) and ``(n, H, W)`` (one channel added), with
    values in [0, 1] (floats), 0..255 (uint8, or another integer type whose values exceed 127; divided by
    255) or booleans; other integer images are refused as ambiguous (say 0..16: divide them yourself). Returns
    the images, the layout read ("NCHW", "NHWC" or "NHW") and one note per conversion. Images smaller
    than ``min_size`` pixels a side are refused ("``purpose`` need at least ..."). Anything else raises
    :class:`FailsightInputError` saying what to change.
    """
    a = to_numpy(arr, name)
    notes: list[str] = []
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise FailsightInputError(f"{name} must hold numbers, got dtype {a.dtype}.")
    if a.ndim == 3:
        layout = "NHW"
        a = a[:, None]
        notes.append(f"{name}: read (n, H, W) as one-channel images (n, 1, H, W).")
    elif a.ndim == 4:
        if a.shape[1] in (1, 3):
            layout = "NCHW"
        elif a.shape[3] in (1, 3):
            layout = "NHWC"
            a = a.transpose(0, 3, 1, 2)
            notes.append(f"{name}: transposed channels-last (n, H, W, C) to channels-first (n, C, H, W).")
        elif 4 in (a.shape[1], a.shape[3]):
            raise FailsightInputError(
                f"{name} has shape {a.shape}: 4 channels look like RGBA; drop the alpha channel "
                "(x[..., :3] or x[:, :3]) and save again."
            )
        else:
            raise FailsightInputError(
                f"{name} has shape {a.shape}; images must be (n, C, H, W) or (n, H, W, C) with C = 1 or 3 "
                "channels, or (n, H, W) grey-scale."
            )
    else:
        raise FailsightInputError(
            f"{name} has shape {a.shape}; images must be 4-D (n, C, H, W) or (n, H, W, C), or 3-D (n, H, W)."
            + (" For a single image add a batch axis (x[None])." if a.ndim == 2 else "")
        )
    if a.shape[0] == 0:
        raise FailsightInputError(f"{name} holds no images (n = 0).")
    check_image_size(a, min_size, name=name, purpose=purpose)
    if a.dtype == bool:
        a = a.astype(np.float32)
        notes.append(f"{name}: boolean images converted to 0.0 / 1.0.")
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise FailsightInputError(
                f"{name} holds integers in [{lo}, {hi}]; integer images must lie in 0..255 (8-bit). Rescale "
                "them, or save floats in [0, 1]."
            )
        # uint8 says 8-bit. A wider integer type says nothing about the scale: 0..255 is inferred only when the
        # values use the 8th bit (max > 127); smaller ranges (sklearn's digits are 0..16, binary masks 0..1,
        # 4-bit sensors 0..15) would be read as nearly black images, so they are refused with the fix
        if a.dtype != np.uint8 and hi <= 127:
            raise FailsightInputError(
                f"{name} holds {a.dtype} values in [{lo}, {hi}]: the pixel scale is ambiguous (0..{hi} as full "
                "range, or dark 8-bit images?). Convert to floats in [0, 1] with the scale you mean, e.g. "
                f"x / {hi}.0 (0..{hi} is the full range, as sklearn's digits' 0..16), or x.astype(np.uint8) if "
                "they are 8-bit values."
            )
        notes.append(f"{name}: {a.dtype} values 0..255 divided by 255 to [0, 1].")
        a = a.astype(np.float32) / np.float32(255.0)
    else:
        a = a.astype(np.float32, copy=False)
        if not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise FailsightInputError(f"{name} contains {bad} NaN/inf value(s); clean the images first.")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            hint = (" They look like 0..255 values: divide by 255 or store them as uint8."
                    if lo >= 0.0 and hi <= 255.0 else
                    " They look standardised (mean/std normalised): undo the normalisation, the analyses work "
                    "on pixel values in [0, 1]." if lo < 0.0 else "")
            raise FailsightInputError(
                f"{name} holds floats in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1].{hint}"
            )
    return np.ascontiguousarray(a, dtype=np.float32), layout, notes


def check_image_size(x: np.ndarray, min_size: int, *, name: str = "x", purpose: str = "the analyses") -> None:
    """Refuse images ``(n, C, H, W)`` smaller than ``min_size`` pixels on either side."""
    h, w = x.shape[-2], x.shape[-1]
    if h < min_size or w < min_size:
        raise FailsightInputError(
            f"{name} images are {h}×{w} pixels; {purpose} need at least {min_size}×{min_size}. Upsample them "
            "first (load_data(..., image_size=(h, w)) or --image-size) and check the layout: channels must "
            "be 1 or 3."
        )


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of antialiased bilinear resampling (a triangle filter widened by the
    reduction factor when shrinking, pixel centres aligned), the scheme PIL's ``Image.resize`` uses."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    centre = (np.arange(n_out) + 0.5) * scale  # (n_out,)
    lo = np.maximum(np.trunc(centre - fscale + 0.5), 0)[:, None]  # PIL's window [xmin, xmax)
    hi = np.minimum(np.trunc(centre + fscale + 0.5), n_in)[:, None]
    j = np.arange(n_in)[None, :]
    w = np.clip(1.0 - np.abs((j - centre[:, None] + 0.5) / fscale), 0.0, None)
    w = np.where((j >= lo) & (j < hi), w, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize images ``(n, C, H, W)`` (floats) to ``(n, C, h, w)`` with antialiased bilinear filtering.

    Separable and vectorised (two matrix products); agrees with PIL's ``Image.resize(..., BILINEAR)`` on
    float images. Values stay within the input's range (the weights are non-negative and sum to one).
    """
    h, w = (int(s) for s in size)
    x = np.asarray(x)
    if x.shape[-2:] == (h, w):
        return x
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    out = x.astype(dtype, copy=False)
    if out.shape[-1] != w:
        out = out @ _resize_matrix(out.shape[-1], w).T.astype(dtype)
    if out.shape[-2] != h:
        out = _resize_matrix(out.shape[-2], h).astype(dtype) @ out
    return np.ascontiguousarray(out)


def _check_image_size_arg(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise FailsightInputError(
            f"image_size must be (height, width) or one int for square images, got {image_size!r}."
        ) from None
    return check_int(h, "image_size height"), check_int(w, "image_size width")


# ------------------------------------------------------------------------------------------- IDX
def _open_maybe_gzip(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike[str], *, max_items: int | None = None) -> np.ndarray:
    """Read an MNIST-format IDX file (gzip-compressed or not) into a numpy array of its stored shape.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions and that many big-endian uint32 sizes; the big-endian payload
    follows. Returns native-endian data; ``max_items`` reads only the first items along axis 0.
    """
    return _read_idx(Path(path), max_items)[0]


def _read_idx(p: Path, max_items: int | None) -> tuple[np.ndarray, tuple[int, ...]]:
    if not p.is_file():
        raise FailsightInputError(f"IDX file {p} does not exist; check the path.")
    try:
        with _open_maybe_gzip(p) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_DTYPES or head[3] == 0:
                raise FailsightInputError(
                    f"{p} is not an MNIST-format IDX file: wrong magic number {head.hex() or '(empty file)'} "
                    "(expected 00 00, a type code 08/09/0b/0c/0d/0e and the number of dimensions). Check "
                    "that the file is the images/labels file itself (gunzip-ed or .gz, not another archive)."
                )
            dtype = np.dtype(IDX_DTYPES[head[2]])
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise FailsightInputError(f"{p} is truncated: its header ends inside the dimension sizes.")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            n = dims[0] if max_items is None else min(dims[0], max_items)
            count = n * int(np.prod(dims[1:], dtype=np.int64))
            payload = _read_at_most(f, count * dtype.itemsize)
            extra = f.read(1) if n == dims[0] else b""
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise FailsightInputError(
            f"could not read IDX file {p} ({exc.__class__.__name__}: {exc}); the file looks truncated or "
            "corrupt: download or extract it again."
        ) from exc
    if len(payload) < count * dtype.itemsize:
        raise FailsightInputError(
            f"{p} is truncated: the header announces shape {dims} ({count * dtype.itemsize} bytes of data) "
            f"but only {len(payload)} bytes follow. Download or extract the file again."
        )
    if extra:
        raise FailsightInputError(
            f"{p} has data beyond the {count * dtype.itemsize} bytes its header (shape {dims}) announces; "
            "it is not a valid IDX file (wrong file, or several files concatenated)."
        )
    arr = np.frombuffer(payload, dtype=dtype).reshape((n, *dims[1:]))
    return arr.astype(dtype.newbyteorder("="), copy=True), dims


def _read_at_most(f: Any, size: int, chunk: int = 1 << 24) -> bytes:
    """Read up to ``size`` bytes in chunks (a corrupt header announcing terabytes allocates nothing)."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = f.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _looks_idx(head: bytes) -> bool:
    return len(head) >= 4 and head[:2] == b"\x00\x00" and head[2] in IDX_DTYPES and 1 <= head[3] <= 8


def _idx_label_candidates(path: Path) -> list[Path]:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    out: list[Path] = []
    for a, b in (("images", "labels"), ("image", "label"), ("Images", "Labels")):
        if a in name:
            base = re.sub(r"idx[2-9]", "idx1", name.replace(a, b))
            for cand in (base, base + ".gz"):
                q = path.with_name(cand)
                if q != path and q not in out:
                    out.append(q)
    return out


# ------------------------------------------------------------------------------------------- npz
def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            raise FailsightInputError(
                f"{what} file {path} holds a single array (.npy), not an .npz archive; save inputs and labels "
                "with numpy.savez(path, x=images, y=labels)."
            )
        with obj as f:
            return {k: f[k] for k in f.files}
    except FailsightInputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FailsightInputError(
            f"{what} file {path} is not a readable .npz ({exc}); save it with numpy.savez(path, x=images, y=labels)."
        ) from exc


def _pick(arrays: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in arrays), None)


def _npz_groups(arrays: Mapping[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    groups: dict[str, np.ndarray] = {}
    if "groups" in arrays:
        g = arrays["groups"]
        if g.ndim == 1:
            groups["group"] = g
        elif g.ndim == 2:
            if "group_names" in arrays:
                names = [str(s) for s in np.asarray(arrays["group_names"]).ravel()]
                if len(names) != g.shape[1] or len(set(names)) != len(names):
                    raise FailsightInputError(
                        f"{path}: group_names has {len(names)} entries {names} but groups has {g.shape[1]} "
                        "columns; give one distinct name per column."
                    )
            else:
                names = [f"group_{j}" for j in range(g.shape[1])]
            groups.update({nm: g[:, j] for j, nm in enumerate(names)})
        else:
            raise FailsightInputError(
                f"{path}: groups has shape {g.shape}; save one slicing as (n,) or several as (n, m) with "
                "group_names (m,), or as separate arrays group_<name>."
            )
    for k in sorted(arrays):
        if k.startswith("group_") and k != "group_names":
            name = k[len("group_"):]
            if name in groups:
                raise FailsightInputError(
                    f"{path}: the slicing {name!r} is given twice (in groups and as {k}); rename one of them."
                )
            groups[name] = arrays[k]
    return groups


# ---------------------------------------------------------------------------------------- folder
def _read_image(path: Path) -> tuple[np.ndarray, str]:
    """One image file -> ``(H, W)`` / ``(H, W, 3)`` array (uint8, or float32 in [0, 1] for 16-bit/float)
    and a flag naming the conversion done ("" when none)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # first frame of an animated GIF
            mode = im.mode
            if mode in ("L", "RGB"):
                return np.asarray(im), ""
            if mode == "1":
                return np.asarray(im.convert("L")), "bilevel"
            if mode == "LA":
                return np.asarray(im.convert("L")), "alpha"
            if mode in ("RGBA", "RGBa"):
                return np.asarray(im.convert("RGB")), "alpha"
            if mode == "P":
                has_alpha = "transparency" in im.info
                a = np.asarray(im.convert("RGB"))
                if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
                    a = np.ascontiguousarray(a[..., 0])
                return a, "alpha" if has_alpha else "palette"
            if mode.startswith("I"):  # 16-bit PNG/TIFF ("I;16", "I;16B", "I")
                a = np.asarray(im).astype(np.int64)
                if a.min() < 0 or a.max() > 65535:
                    raise FailsightInputError(
                        f"{path} is a {mode} integer image with values outside 0..65535; save 8- or 16-bit images."
                    )
                return (a / 65535.0).astype(np.float32), "16bit"
            if mode == "F":
                a = np.asarray(im, dtype=np.float32)
                if not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
                    raise FailsightInputError(f"{path} is a float image with values outside [0, 1]; rescale it.")
                return a, ""
            return np.asarray(im.convert("RGB")), f"mode {mode}"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, FailsightInputError):
            raise
        raise FailsightInputError(
            f"could not read image {path} ({exc.__class__.__name__}: {exc}); remove the file or re-save it "
            "as PNG/JPEG."
        ) from exc


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*")
                  if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _read_folder(root: Path, require_labels: bool, image_size: tuple[int, int] | None,
                 max_items: int | None, what: str):
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    top = sorted(f for f in root.iterdir()
                 if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
    notes: list[str] = []
    files: list[Path] = []
    labels: list[int] = []
    class_names: tuple[str, ...] | None = None
    if subdirs:
        for i, d in enumerate(subdirs):
            found = _image_files(d)
            if not found:
                raise FailsightInputError(
                    f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the "
                    "folder: class indices follow the sorted sub-folder names, so an empty class would shift them."
                )
            files += found
            labels += [i] * len(found)
        class_names = tuple(d.name for d in subdirs)
        if top:
            notes.append(f"ignored {len(top)} image(s) lying directly in {root} (only sub-folders are classes).")
    elif top:
        if require_labels:
            raise FailsightInputError(
                f"{what} folder {root} holds images but no class sub-folders; put each class's images in a "
                "sub-folder named after the class (label i = i-th sub-folder in sorted order)."
            )
        files = top
    else:
        raise FailsightInputError(
            f"{what} folder {root} is empty: it holds no class sub-folders and no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); expected one sub-folder of images per class."
        )
    n_total = len(files)
    if max_items is not None and max_items < n_total:
        files, labels = files[:max_items], labels[:max_items]
        notes.append(f"kept the first {max_items} of {n_total} images in sorted order (max_items).")
    images, flags = zip(*(_read_image(f) for f in files), strict=True)
    counts = Counter(fl for fl in flags if fl)
    for flag, k in sorted(counts.items()):
        notes.append({"alpha": f"dropped the alpha channel of {k} image(s) with transparency.",
                      "bilevel": f"read {k} black-and-white image(s) as grey-scale 0/255.",
                      "palette": f"converted {k} palette image(s) to RGB (grey-scale where the palette is grey).",
                      "16bit": f"divided {k} 16-bit image(s) by 65535 to [0, 1]."}.get(
            flag, f"converted {k} image(s) of {flag} to RGB."))
    colour = [im.ndim == 3 for im in images]
    c = 3 if any(colour) else 1
    if any(colour) and not all(colour):
        notes.append(f"converted {colour.count(False)} grey image(s) to RGB (three equal channels): the folder "
                     "mixes grey and colour images.")
    sizes = Counter(im.shape[:2] for im in images)
    if len(sizes) > 1 and image_size is None:
        example = {}
        for f, im in zip(files, images, strict=True):
            example.setdefault(im.shape[:2], f)
        desc = ", ".join(f"{h}×{w} ({k} file(s), e.g. {example[(h, w)].relative_to(root)})"
                         for (h, w), k in sizes.most_common(4))
        raise FailsightInputError(
            f"images in {root} have {len(sizes)} different sizes: {desc}. Pass image_size=(height, width) "
            "(CLI: --image-size H W) to resize them all, or resize the files."
        )
    target = image_size if image_size is not None else next(iter(sizes))
    all_uint8 = all(im.dtype == np.uint8 for im in images)
    need_resize = any(s != target for s in sizes)
    if all_uint8 and not need_resize:
        stack = np.empty((len(images), c, *target), dtype=np.uint8)
        for i, im in enumerate(images):
            stack[i] = im.transpose(2, 0, 1) if im.ndim == 3 else im[None]
        x, _, conv = normalize_images(stack, name="images")
        notes += conv
    else:
        x = np.empty((len(images), c, *target), dtype=np.float32)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.shape[:2], []).append(i)
        for (h, w), idx in by_size.items():
            grp = np.stack([im.transpose(2, 0, 1) if im.ndim == 3 else im[None] for im in
                            (images[i] for i in idx)]).astype(np.float32)
            if images[idx[0]].dtype == np.uint8:
                grp /= np.float32(255.0)
            x[idx] = resize_images(grp, target)  # channel broadcast: grey (1) into colour (3)
            if (h, w) != target:
                notes.append(f"resized {len(idx)} image(s) from {h}×{w} to {target[0]}×{target[1]} "
                             "(antialiased bilinear).")
        if all_uint8:
            notes.append("images: 8-bit values 0..255 divided by 255 to [0, 1].")
    y = np.asarray(labels, dtype=np.int64) if class_names is not None else None
    original = (n_total, c, *target)
    return x, y, class_names, notes, original


# ----------------------------------------------------------------------------------- torch dataset
def _item_array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)  # numpy arrays, numbers, PIL images (a dataset without a transform)


_DICT_X = ("x", "image", "img", "pixel_values", "input", "inputs")
_DICT_Y = ("y", "label", "labels", "target")


def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        xk = next((k for k in _DICT_X if k in item), None)
        if xk is None:
            raise FailsightInputError(
                f"dataset items are dicts with keys {sorted(item)}; expected the input under one of {_DICT_X}."
            )
        yk = next((k for k in _DICT_Y if k in item), None)
        return item[xk], None if yk is None else item[yk]
    if isinstance(item, (tuple, list)):
        if len(item) == 0:
            raise FailsightInputError("dataset items are empty tuples; __getitem__ must return (x, y).")
        return item[0], item[1] if len(item) > 1 else None
    return item, None


def _collate(items: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    xs, ys = zip(*(_split_item(it) for it in items), strict=True)
    arrays = [_item_array(v) for v in xs]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise FailsightInputError(
            f"dataset items have different shapes {sorted(shapes)[:4]}; give the dataset a transform that "
            "resizes them to one size (e.g. torchvision.transforms.Resize) or save them as an image folder and "
            "pass image_size."
        )
    x = np.stack(arrays)
    if all(v is None for v in ys):
        return x, None
    if any(v is None for v in ys):
        raise FailsightInputError("some dataset items have a label and some do not; return (x, y) for every item.")
    return x, np.stack([_item_array(v) for v in ys])


def _read_dataset(ds: Any, max_items: int | None):
    from torch.utils.data import DataLoader, Subset

    n_total = len(ds)
    if n_total == 0:
        raise FailsightInputError("the dataset is empty (len 0); pass a dataset with at least one item.")
    n = n_total if max_items is None else min(n_total, max_items)
    notes = [] if n == n_total else [f"kept the first {n} of {n_total} dataset items (max_items)."]
    loader = DataLoader(ds if n == n_total else Subset(ds, range(n)), batch_size=_DATASET_BATCH,
                        shuffle=False, num_workers=0, collate_fn=_collate)
    xs, ys = [], []
    for bx, by in loader:
        xs.append(bx)
        ys.append(by)
    shapes = {a.shape[1:] for a in xs}
    if len(shapes) > 1:
        raise FailsightInputError(
            f"dataset items have different shapes {sorted(shapes)[:4]}; give the dataset a transform that "
            "resizes them to one size."
        )
    has_y = [b is not None for b in ys]
    if any(has_y) and not all(has_y):
        raise FailsightInputError("some dataset items have a label and some do not; return (x, y) for every item.")
    y = np.concatenate(ys) if all(has_y) else None
    classes = getattr(ds, "classes", None)
    class_names = tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) and classes else None
    return np.concatenate(xs), y, class_names, notes


# ----------------------------------------------------------------------------------------- helpers
def _fingerprint(x: np.ndarray, y: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{x.shape}|".encode())
    h.update(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).data)
    if y is None:
        h.update(b"|no labels")
    else:
        h.update(f"|{y.shape}|".encode())
        h.update(np.ascontiguousarray(y, dtype="<i8").data)
    return h.hexdigest()[:16]


def _check_group_array(name: str, g: Any) -> np.ndarray:
    a = to_numpy(g, f"groups[{name!r}]")
    if a.ndim != 1:
        raise FailsightInputError(
            f"groups[{name!r}] has shape {a.shape}; each slicing must be a 1-D array with one label per sample."
        )
    if a.dtype == object:
        if any(v is None for v in a):
            raise FailsightInputError(f"groups[{name!r}] contains None; every sample needs a group label.")
        a = a.astype(str)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise FailsightInputError(f"groups[{name!r}] contains NaN/inf; every sample needs a group label.")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool or a.dtype.kind in "US"):
        raise FailsightInputError(f"groups[{name!r}] has dtype {a.dtype}; use strings or integers.")
    return a


def _groups_from_arg(groups: Any, n_samples: int | None = None) -> dict[str, np.ndarray]:
    if isinstance(groups, (str, os.PathLike)):
        p = Path(groups)
        if p.suffix.lower() == ".npz" and p.is_file():  # the same layouts as groups inside a data .npz
            arrays = _read_npz(p, "groups")
            found = _npz_groups(arrays, p)
            if not found:
                raise FailsightInputError(
                    f"groups file {p} holds no 'groups' or 'group_<name>' array (found: {sorted(arrays)}); save "
                    "it with numpy.savez(path, groups=labels)."
                )
            return found
        from failsight.slices.io import load_groups

        found = load_groups(p, n_samples=n_samples)  # CSV: one slicing per column, named by the header
        return {"group": found["groups"]} if list(found) == ["groups"] else found
    if isinstance(groups, Mapping):
        return {str(k): v for k, v in groups.items()}
    return {"group": groups}  # one array of labels


def _read_labels_file(path: Path, max_items: int | None) -> np.ndarray:
    if not path.is_file():
        raise FailsightInputError(f"labels file {path} does not exist; check the path.")
    with open(path, "rb") as f:
        head = f.read(6)
    if path.suffix.lower() == ".npz" or head[:2] == b"PK":
        arrays = _read_npz(path, "labels")
        k = _pick(arrays, LABEL_KEYS)
        if k is None:
            raise FailsightInputError(f"labels file {path} has no array 'y' or 'labels' (found: {sorted(arrays)}).")
        lab = arrays[k]
    elif head.startswith(b"\x93NUMPY"):
        lab = np.load(path, allow_pickle=False)
    elif head[:2] == b"\x1f\x8b" or _looks_idx(head):
        lab = read_idx(path, max_items=max_items)
    else:
        raise FailsightInputError(
            f"labels file {path} is not IDX, .npy or .npz; save the labels with numpy.save(path, labels)."
        )
    return lab if max_items is None else lab[:max_items]


# ---------------------------------------------------------------------------------------- load_data
def load_data(src: Any, y: Any = None, *, groups: Any = None, labels: str | os.PathLike[str] | None = None,
              require_labels: bool = True, what: str = "data", image_size: int | tuple[int, int] | None = None,
              max_items: int | None = None, kind: str = "auto") -> LabelledData:
    """Read inputs, labels and optional group labels from any supported source into :class:`LabelledData`.

    ``src`` may be a path to an ``.npz`` (``x``/``images``, ``y``/``labels``, optional ``groups`` as
    ``(n,)``, ``(n, m)`` with ``group_names`` ``(m,)``, or arrays ``group_<name>``; optional
    ``class_names``), an ``.npy`` of inputs, an MNIST-format IDX file (gzip or not; the labels file is
    ``labels=`` or found beside it, ``*-images-idx3-ubyte`` -> ``*-labels-idx1-ubyte``), an image folder
    with one sub-folder per class (sorted names give the class indices), a numpy array / torch tensor
    (labels in ``y``), or a torch ``Dataset`` whose items are ``(x, y)`` (read with a DataLoader).

    Images ``(n, C, H, W)``, ``(n, H, W, C)`` or ``(n, H, W)`` become float32 ``(n, C, H, W)`` in [0, 1]
    (uint8 divided by 255); 2-D inputs ``(n, d)`` are finite float features. ``kind="images"`` refuses
    features, ``kind="features"`` flattens images to ``(n, C*H*W)`` (stored values for arrays, [0, 1] for
    an image folder). ``labels`` is a labels file (IDX, .npy, .npz) for sources without labels; ``y`` gives
    them as an array. ``groups`` is a ``{name: (n,) labels}`` dict, one ``(n,)`` array (named "group"), a
    CSV path (read with :func:`failsight.slices.io.load_groups`, one slicing per column) or an ``.npz``
    with the layouts above; it is merged over groups stored in the source, one label per sample in the
    data's order (for a folder: sorted class folders, then sorted file paths). ``image_size`` ``(h, w)``
    resizes every image (antialiased bilinear, as PIL); ``max_items`` keeps the first items only (labels
    and groups of the full length are cut alike). ``what`` names the data in error messages ("test data").
    """
    if isinstance(src, LabelledData):
        if any(v is not None for v in (y, groups, labels, image_size, max_items)) or kind != "auto":
            raise FailsightInputError(
                "src is already a LabelledData; pass its arrays (load_data(d.x, d.y, groups=...)) to change "
                "labels, groups, size or count."
            )
        return src
    if kind not in ("auto", "images", "features"):
        raise FailsightInputError(f"kind must be 'auto', 'images' or 'features', got {kind!r}.")
    size = _check_image_size_arg(image_size)
    if max_items is not None:
        max_items = check_int(max_items, "max_items")
    if y is not None and labels is not None:
        raise FailsightInputError("labels were given twice (y= and labels=); pass only one of them.")
    external_y = y is not None or labels is not None

    notes: list[str] = []
    src_groups: dict[str, np.ndarray] = {}
    class_names: tuple[str, ...] | None = None
    path: Path | None = None
    src_y: Any = None
    x_name = "x"
    folder_original: tuple[int, ...] | None = None
    n_total: int | None = None

    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FailsightInputError(f"{what} file {path} does not exist; pass {_SUPPORTED}.")
        if path.is_dir():
            source = "folder"
            raw, src_y, class_names, fnotes, folder_original = _read_folder(
                path, require_labels and not external_y, size, max_items, what)
            notes += fnotes
            n_total = folder_original[0]
            x_name = "images"
        else:
            with open(path, "rb") as f:
                head = f.read(8)
            suffix = path.suffix.lower()
            idx_name = bool(re.search(r"idx\d|ubyte", path.name)) or suffix == ".idx"
            if suffix == ".npz" or (head[:2] == b"PK" and not idx_name):
                source = "npz"
                arrays = _read_npz(path, what)
                xk, yk = _pick(arrays, IMAGE_KEYS), _pick(arrays, LABEL_KEYS)
                if xk is None or (require_labels and yk is None and not external_y):
                    desc = {"images": "'x' (images)", "features": "'x' (features)"}.get(kind, "'x' (inputs)")
                    need = f"{desc} and 'y' (labels)" if require_labels else desc
                    raise FailsightInputError(
                        f"{path} must hold {need} (found: {', '.join(sorted(arrays)) or 'nothing'}); save it "
                        "with numpy.savez(path, x=images, y=labels)."
                    )
                raw, x_name = arrays[xk], xk
                src_y = arrays[yk] if yk is not None else None
                src_groups = _npz_groups(arrays, path)
                if "class_names" in arrays:
                    class_names = tuple(str(s) for s in np.asarray(arrays["class_names"]).ravel())
            elif suffix == ".npy" or head.startswith(b"\x93NUMPY"):
                source = "npy"
                if require_labels and not external_y:
                    raise FailsightInputError(
                        f"{what} file {path} holds a single array (.npy), not an .npz archive; save inputs and "
                        "labels with numpy.savez(path, x=images, y=labels), or pass the labels (y= / labels=)."
                    )
                try:
                    raw = np.load(path, allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise FailsightInputError(f"{what} file {path} is not a readable .npy ({exc}).") from exc
            elif idx_name or head[:2] == b"\x1f\x8b" or _looks_idx(head):
                source = "idx"
                raw, dims = _read_idx(path, max_items)
                n_total = dims[0]
                if len(raw) < n_total:
                    notes.append(f"kept the first {len(raw)} of {n_total} items (max_items).")
                if raw.ndim == 1:
                    raise FailsightInputError(
                        f"{path} is a 1-D IDX file (labels?); pass the images file as the data and this one "
                        "as labels= (CLI: the labels file is found beside the images when named like MNIST)."
                    )
                if not external_y:
                    cands = _idx_label_candidates(path)
                    found = next((c for c in cands if c.is_file()), None)
                    if found is not None:
                        labels = found
                        notes.append(f"labels read from {found.name}, found beside the images.")
                    elif require_labels:
                        tried = ", ".join(c.name for c in cands) or "none (the name holds no 'images')"
                        raise FailsightInputError(
                            f"no labels file for IDX images {path}: looked beside it for {tried}. Pass "
                            "labels=<labels file> (or y=), or put the MNIST-named labels file next to the images."
                        )
            elif suffix in IMAGE_EXTENSIONS:
                raise FailsightInputError(
                    f"{path} is a single image; put the images in a folder with one sub-folder per class and "
                    "pass the folder."
                )
            else:
                raise FailsightInputError(
                    f"cannot read {what} file {path}: unknown format (suffix {suffix or 'none'!r}). Supported: "
                    f"{_SUPPORTED}."
                )
    elif isinstance(src, (np.ndarray, list, tuple)) or hasattr(src, "detach"):
        source = "array"
        raw = to_numpy(src, "x")
    elif hasattr(src, "__len__") and hasattr(src, "__getitem__"):
        source = "torch"
        raw, src_y, class_names, dnotes = _read_dataset(src, max_items)
        n_total = len(src)
        notes += dnotes
    else:
        raise FailsightInputError(
            f"cannot read {what} from a {type(src).__name__}; pass a path ({_SUPPORTED}), a numpy array or "
            "torch tensor with y=, or a torch Dataset of (x, y) items."
        )

    # cap array-like sources (folders, datasets and IDX files were capped while reading)
    if raw.ndim == 0:
        raise FailsightInputError(f"{what} is a single number; pass an array of inputs (n, ...).")
    if n_total is None:
        n_total = len(raw)
        if max_items is not None and len(raw) > max_items:
            notes.append(f"kept the first {max_items} of {len(raw)} items (max_items).")
            raw = raw[:max_items]
            src_y = None if src_y is None else src_y[:max_items]
    original_shape = folder_original or tuple(int(s) for s in raw.shape)
    original_dtype = "uint8" if source == "folder" else str(raw.dtype)

    # inputs
    if source == "folder":
        x, layout = raw, "NCHW"
    else:
        if kind == "features" and raw.ndim > 2:
            notes.append(f"{x_name}: flattened {tuple(raw.shape[1:])} inputs to {int(np.prod(raw.shape[1:]))} features.")
            raw = raw.reshape(len(raw), -1)
        if kind == "images" or (kind == "auto" and raw.ndim in (3, 4)):
            x, layout, conv = normalize_images(raw, name=x_name)
            notes += conv
            if size is not None and x.shape[-2:] != size:
                notes.append(f"resized the images from {x.shape[-2]}×{x.shape[-1]} to {size[0]}×{size[1]} "
                             "(antialiased bilinear).")
                x = resize_images(x, size)
        elif raw.ndim == 2:
            if size is not None:
                raise FailsightInputError(
                    f"image_size was given but {x_name} has shape {raw.shape}: 2-D inputs are features, not images."
                )
            x, layout = as_float_array(raw, x_name), None
        else:
            raise FailsightInputError(
                f"{x_name} has shape {raw.shape}; pass images (n, C, H, W), (n, H, W, C) or (n, H, W), or "
                "features (n, d)." + (" A 1-D array holds one value per sample: reshape it to (n, 1)."
                                      if raw.ndim == 1 else "")
            )
    if kind == "features" and x.ndim == 4:
        notes.append(f"images flattened to {int(np.prod(x.shape[1:]))} features.")
        x = x.reshape(len(x), -1)
    data_kind = "images" if x.ndim == 4 else "features"
    n = len(x)

    # labels
    if labels is not None:
        if src_y is not None:
            raise FailsightInputError(f"{path} already holds labels; drop labels= or use a file without them.")
        src_y = _read_labels_file(Path(labels), max_items)
    elif y is not None:
        if src_y is not None:
            raise FailsightInputError(f"{what} already holds labels; drop y= or pass inputs without labels.")
        src_y = to_numpy(y, "y")
        if max_items is not None and src_y.ndim and len(src_y) == n_total and n < n_total:
            src_y = src_y[:n]
    yy: np.ndarray | None = None
    if src_y is not None:
        yy = check_labels(src_y, name="labels")
        if class_names and int(yy.max()) >= len(class_names):
            raise FailsightInputError(
                f"{what} has label {int(yy.max())} but only {len(class_names)} class names {list(class_names)[:5]}; "
                "labels must index class_names (0..k-1): fix the labels or the class_names array."
            )
        if len(yy) != n:
            raise FailsightInputError(
                f"{what} has different numbers of samples: {len(yy)} labels for {n} inputs; the label count "
                "must equal the number of "
                f"{'images' if data_kind == 'images' else 'rows'} (check that the labels file belongs to the data)."
            )
    elif require_labels:
        raise FailsightInputError(
            f"{what} has no labels; pass them with y= (an array) or labels= (a labels file), or store them in "
            "the file (numpy.savez(path, x=..., y=...))."
        )

    # groups
    all_groups = dict(src_groups)
    if groups is not None:
        # the sample count settles whether a CSV's line 1 is a header (unless max_items made it ambiguous)
        arg = _groups_from_arg(groups, n_samples=n if n == n_total else None)
        clash = sorted(set(arg) & set(all_groups))
        if clash:
            notes.append(f"groups given as an argument replace the stored slicing(s) {clash}.")
        all_groups.update(arg)
    checked: dict[str, np.ndarray] = {}
    for name, g in all_groups.items():
        a = _check_group_array(name, g)
        if len(a) == n_total and n < n_total:
            a = a[:n]
        if len(a) != n:
            raise FailsightInputError(
                f"groups[{name!r}] has {len(a)} labels for {n} samples; give one group label per sample, in "
                "the order of the data."
            )
        checked[name] = a

    return LabelledData(
        x=x, y=yy, groups=checked or None, kind=data_kind, source=source,
        path=None if path is None else str(path), class_names=class_names, notes=tuple(notes),
        fingerprint=_fingerprint(x, yy), n=n, item_shape=tuple(int(s) for s in x.shape[1:]),
        group_names=tuple(checked), original_shape=original_shape, original_dtype=original_dtype, layout=layout,
    )
