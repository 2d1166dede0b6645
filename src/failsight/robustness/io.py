"""Reading user files for the robustness pillar: labelled images and torch models.

``load_labelled_images(path)`` reads images and labels through :func:`failsight.datasets.io.load_data`
(``.npz``, MNIST-format IDX files, image folders), as float32 ``(n, C, H, W)`` in [0, 1], and records every
conversion in ``notes`` (the caller decides whether to show them; nothing here prints). ``load_model(path)``
opens a TorchScript file or a module pickled with ``torch.save(model, path)``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError
from failsight.datasets import io as _dio
from failsight.types import Result

__all__ = ["LabelledImages", "load_labelled_images", "load_model", "normalize_images"]

#: The shifts need images at least this many pixels a side.
MIN_IMAGE_SIZE = 8


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
    """Bring images to float32 ``(n, C, H, W)`` in [0, 1], C in {1, 3}, at least 8×8 pixels.

    :func:`failsight.datasets.io.normalize_images` with the shifts' minimum size: accepts ``(n, C, H, W)``,
    ``(n, H, W, C)`` and ``(n, H, W)``, floats in [0, 1] or 0..255 integers. Returns the images, the layout
    read and one note per conversion; anything else raises :class:`FailsightInputError` saying what to change.
    """
    return _dio.normalize_images(arr, name, min_size=MIN_IMAGE_SIZE, purpose="the shifts")


def load_labelled_images(path: str | os.PathLike[str], *, require_labels: bool = True,
                         labels: str | os.PathLike[str] | None = None,
                         image_size: int | tuple[int, int] | None = None,
                         max_items: int | None = None) -> LabelledImages:
    """Read labelled images from an ``.npz`` (``x``/``images`` and ``y``/``labels``), an MNIST-format IDX
    file (labels file beside it or ``labels=``) or an image folder (one sub-folder per class).

    Images may be stored ``(n, C, H, W)``, ``(n, H, W, C)`` or ``(n, H, W)``, floats in [0, 1] or uint8
    0..255; they are returned as float32 ``(n, C, H, W)`` in [0, 1] and every conversion is described in
    ``notes``. With ``require_labels=False`` (e.g. OOD images) labels may be missing and ``y`` is ``None``.
    ``image_size`` / ``max_items`` as in :func:`failsight.datasets.io.load_data`. Errors say what is wrong
    with the file and how to fix it.
    """
    d = _dio.load_data(path, labels=labels, require_labels=require_labels, what="image", kind="images",
                       image_size=image_size, max_items=max_items)
    _dio.check_image_size(d.x, MIN_IMAGE_SIZE, name="images", purpose="the shifts")
    return LabelledImages(x=d.x, y=d.y, path=str(Path(path)), original_shape=d.original_shape,
                          original_dtype=d.original_dtype, layout=d.layout or "NCHW", notes=d.notes)


def load_model(path: str | Path, *, map_location: str = "cpu") -> Any:
    """Load a torch model saved as TorchScript (``torch.jit.save``) or pickled whole (``torch.save(model)``).

    The ``nn.Module`` is returned in eval mode on ``map_location`` (see
    :func:`failsight.models.adapters.load_model`, which this wraps, for the formats and the errors). A pickled
    module needs its class importable and unpickling runs code from the file: load only files you trust. A
    file holding only a ``state_dict`` is refused with instructions.
    """
    import torch

    from failsight.models.adapters import load_model as load_adapter

    adapter = load_adapter(path, device=map_location)
    if not isinstance(adapter.model, torch.nn.Module):
        raise FailsightInputError(
            f"{path} holds a {adapter.kind} model ({adapter.name}); this command needs a torch.nn.Module saved with "
            "torch.save(model, path) or torch.jit.script(model).save(path)."
        )
    adapter.model.eval()
    return adapter.model
