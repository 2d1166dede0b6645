"""Reading user files for the robustness pillar: labelled images from ``.npz`` and torch models.

``load_labelled_images(path)`` reads ``x`` (images) and ``y`` (labels) from an ``.npz``, brings the images
to float32 ``(n, C, H, W)`` in [0, 1] and records every conversion in ``notes`` (the caller decides whether
to show them; nothing here prints). ``load_model(path)`` opens a TorchScript file or a module pickled with
``torch.save(model, path)``.
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_consistent_length, check_labels
from failsight.types import Result

__all__ = ["LabelledImages", "load_labelled_images", "load_model", "normalize_images"]

#: Keys accepted for the images and for the labels (first match wins).
IMAGE_KEYS: tuple[str, ...] = ("x", "images")
LABEL_KEYS: tuple[str, ...] = ("y", "labels")
_MIN_SIZE = 8


@dataclasses.dataclass(frozen=True)
class LabelledImages(Result):
    """Images ``x`` float32 ``(n, C, H, W)`` in [0, 1] and labels ``y`` int64 ``(n,)`` (``None`` when the
    file has none and they were not required), with where they came from and what was done to them:
    ``original_shape`` / ``original_dtype`` as stored, ``layout`` as read ("NCHW", "NHWC" or "NHW") and
    ``notes``, one sentence per conversion. Unpacks as ``x, y = load_labelled_images(path)``."""

    x: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    y: np.ndarray | None = dataclasses.field(repr=False, metadata={"exclude_json": True})
    path: str
    original_shape: tuple[int, ...]
    original_dtype: str
    layout: str
    notes: tuple[str, ...]

    def __iter__(self):  # x, y = load_labelled_images(...)
        yield self.x
        yield self.y

    def __len__(self) -> int:
        return len(self.x)


def normalize_images(arr: Any, name: str = "x") -> tuple[np.ndarray, str, list[str]]:
    """Bring images to float32 ``(n, C, H, W)`` in [0, 1], C in {1, 3}.

    Accepts ``(n, C, H, W)``, ``(n, H, W, C)`` (transposed) and ``(n, H, W)`` (one channel added), with values
    in [0, 1] (floats) or 0..255 (uint8 or other integer types; divided by 255). Returns the images, the
    layout read and notes describing each conversion. Anything else raises :class:`FailsightInputError`
    saying what to change.
    """
    a = np.asarray(arr.detach().cpu().numpy() if hasattr(arr, "detach") else arr)
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
    n, _, h, w = a.shape
    if n == 0:
        raise FailsightInputError(f"{name} holds no images (n = 0).")
    if h < _MIN_SIZE or w < _MIN_SIZE:
        raise FailsightInputError(
            f"{name} images are {h}×{w} pixels; the shifts need at least {_MIN_SIZE}×{_MIN_SIZE}. Upsample them "
            "first (and check the layout: channels must be 1 or 3)."
        )
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
                    " They look standardised (mean/std normalised): undo the normalisation, the shifts work on "
                    "pixel values in [0, 1]." if lo < 0.0 else "")
            raise FailsightInputError(
                f"{name} holds floats in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1].{hint}"
            )
    return np.ascontiguousarray(a, dtype=np.float32), layout, notes


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FailsightInputError(f"{what} file {path} does not exist; pass the path of an .npz file.")
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            raise FailsightInputError(
                f"{what} file {path} holds a single array (.npy), not an .npz archive; save images and labels "
                "with numpy.savez(path, x=images, y=labels)."
            )
        with obj as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, FailsightInputError):
            raise
        raise FailsightInputError(
            f"{what} file {path} is not a readable .npz ({exc}); save it with numpy.savez(path, x=images, y=labels)."
        ) from exc


def _pick(arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in arrays), None)


def load_labelled_images(path: str | Path, *, require_labels: bool = True) -> LabelledImages:
    """Read labelled images from an ``.npz`` holding ``x`` (or ``images``) and ``y`` (or ``labels``).

    ``x`` may be ``(n, C, H, W)``, ``(n, H, W, C)`` or ``(n, H, W)``, floats in [0, 1] or uint8 0..255; it is
    returned as float32 ``(n, C, H, W)`` in [0, 1] and every conversion is described in ``notes``. ``y``
    holds integer class labels ``(n,)``. With ``require_labels=False`` (e.g. OOD images) ``y`` may be
    missing and is then ``None``. Errors say what is wrong with the file and how to fix it.
    """
    p = Path(path)
    arrays = _read_npz(p, "image")
    found = ", ".join(sorted(arrays)) or "nothing"
    xk, yk = _pick(arrays, IMAGE_KEYS), _pick(arrays, LABEL_KEYS)
    if xk is None or (require_labels and yk is None):
        need = "'x' (images) and 'y' (labels)" if require_labels else "'x' (images)"
        raise FailsightInputError(
            f"{p} must hold {need} (found: {found}); save it with numpy.savez(path, x=images, y=labels)."
        )
    raw = arrays[xk]
    x, layout, notes = normalize_images(raw, name=xk)
    y = None
    if yk is not None:
        y = check_labels(arrays[yk], name=yk)
        check_consistent_length(x, y, names=(xk, yk))
    return LabelledImages(x=x, y=y, path=str(p), original_shape=tuple(int(s) for s in raw.shape),
                          original_dtype=str(raw.dtype), layout=layout, notes=tuple(notes))


def load_model(path: str | Path, *, map_location: str = "cpu") -> Any:
    """Load a torch model saved as TorchScript (``torch.jit.save``) or pickled whole (``torch.save(model)``).

    The model is returned in eval mode on ``map_location``. A pickled module needs its class importable
    (the same code as when it was saved) and unpickling runs code from the file: load only files you trust.
    A file holding only a ``state_dict`` is refused with instructions (failsight cannot rebuild the
    architecture from weights alone).
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FailsightInputError(f"model file {p} does not exist; pass a TorchScript or torch.save(model) file.")
    errors = []
    model: Any = None
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; loading existing files still works
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(p), map_location=map_location)
    except Exception as exc:  # not TorchScript: try a pickled module next
        errors.append(f"TorchScript: {exc.__class__.__name__}")
        try:
            model = torch.load(str(p), map_location=map_location, weights_only=False)
        except Exception as exc2:
            errors.append(f"torch.load: {exc2.__class__.__name__}: {str(exc2).splitlines()[0] if str(exc2) else ''}")
            raise FailsightInputError(
                f"could not load a model from {p} ({'; '.join(errors)}). Save it with "
                "torch.jit.script(model).save(path) (or torch.jit.trace), or torch.save(model, path) with the "
                "model's class importable when loading."
            ) from exc2
    if isinstance(model, dict):
        raise FailsightInputError(
            f"{p} holds a dict (a state_dict or checkpoint), not a model; failsight needs the architecture too. "
            "Save the module itself: torch.save(model, path) or torch.jit.script(model).save(path)."
        )
    if not isinstance(model, torch.nn.Module):
        raise FailsightInputError(
            f"{p} holds a {type(model).__name__}, not a torch.nn.Module; save the model itself."
        )
    model.eval()
    return model
