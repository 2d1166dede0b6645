"""Labelling misclassification regions: one label per region, or "discard".

Three labellers share one interface, ``labeler(regions, class_names) -> {region id: class index or None}``
(``None`` = discard):

- :class:`CallableLabeler` wraps a plain Python function (an oracle) — used by tests and benchmarks;
- :class:`PromptLabeler` asks a person in the terminal, showing each region's grid image path and the
  class names;
- :class:`FileLabeler` is a round trip through files: :meth:`FileLabeler.export` writes a folder of region
  grids plus a ``labels.csv`` to fill in, :meth:`FileLabeler.read` imports it.

:func:`resolve_labels` validates any ``{region id: class name | index | "discard" | None}`` mapping.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from failsight._validate import FailsightInputError
from failsight.defuse.regions import Region

__all__ = [
    "DISCARD",
    "CallableLabeler",
    "FileLabeler",
    "Labeler",
    "PromptLabeler",
    "grid_png_bytes",
    "resolve_label",
    "resolve_labels",
    "write_grid_png",
]

#: The word that discards a region (case-insensitive); an empty cell or ``None`` means the same.
DISCARD = "discard"

LABELS_CSV = "labels.csv"
_CSV_FIELDS = ["region_id", "label", "size", "error_rate", "seed_label", "predicted_label", "grid"]


@runtime_checkable
class Labeler(Protocol):
    """Gives each region one class index, or ``None`` to discard it."""

    def __call__(self, regions: Sequence[Region], class_names: Sequence[str]) -> dict[int, int | None]:
        ...  # pragma: no cover - protocol


def resolve_label(value: Any, class_names: Sequence[str], where: str = "label") -> int | None:
    """Turn a class name, a class index (int or digit string), ``"discard"``, ``""`` or ``None`` into a class
    index or ``None``. Class names take precedence over indices when a name is itself a number."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise FailsightInputError(f"{where}: {value!r} is not a class; use a class name, an index or 'discard'.")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
        if not 0 <= idx < len(class_names):
            raise FailsightInputError(
                f"{where}: class index {idx} is out of range; valid indices are 0..{len(class_names) - 1} "
                f"({', '.join(class_names)})."
            )
        return idx
    text = str(value).strip()
    if text == "" or text.lower() == DISCARD:
        return None
    names = list(class_names)
    if text in names:
        return names.index(text)
    lowered = [n.lower() for n in names]
    if text.lower() in lowered and lowered.count(text.lower()) == 1:
        return lowered.index(text.lower())
    if text.lstrip("-").isdigit():
        return resolve_label(int(text), class_names, where)
    raise FailsightInputError(
        f"{where}: unknown class {text!r}; use one of {', '.join(names)} (or its index), or '{DISCARD}'."
    )


def resolve_labels(labels: Mapping[Any, Any], regions: Sequence[Region],
                   class_names: Sequence[str]) -> dict[int, int | None]:
    """Validate ``{region id: class name | index | "discard" | None}`` against the regions and classes.

    Region ids may be ints or digit strings. Unknown ids raise :class:`FailsightInputError` naming the valid
    ones; regions missing from ``labels`` are treated as discarded.
    """
    if not isinstance(labels, Mapping):
        raise FailsightInputError(
            f"labels must be a mapping {{region id: class}}, got {type(labels).__name__}; e.g. {{0: '4', 1: 'discard'}}."
        )
    known = {r.id for r in regions}
    out: dict[int, int | None] = {r.id: None for r in regions}
    for key, value in labels.items():
        try:
            rid = int(str(key).strip())
        except ValueError:
            raise FailsightInputError(f"region id {key!r} is not an integer; known ids: {sorted(known)}.") from None
        if rid not in known:
            raise FailsightInputError(
                f"labels name region {rid}, which does not exist; known region ids: {sorted(known)}. Were the "
                "labels made for a different search?"
            )
        out[rid] = resolve_label(value, class_names, where=f"region {rid}")
    return out


# ------------------------------------------------------------------------------------------------ grids
def grid_png_bytes(region: Region, ncols: int = 8, scale: int | None = None) -> bytes:
    """The region's example grid as PNG bytes (nearest-neighbour upscaled ``scale`` times, default 4 for images
    up to 16 pixels and 2 above, so 8×8 digits and 28×28 MNIST both show at a legible 32-56 pixels; grey
    images are drawn dark-on-light)."""
    import io

    from matplotlib.image import imsave  # no pyplot: leaves the user's backend alone

    if scale is None:
        scale = 4 if region.examples.shape[-1] <= 16 else 2
    img = np.clip(region.grid(ncols=ncols), 0.0, 1.0)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if img.shape[2] == 1:
        imsave(buf, img[:, :, 0], cmap="gray_r", vmin=0.0, vmax=1.0, format="png")
    else:
        imsave(buf, img, format="png")
    return buf.getvalue()


def write_grid_png(region: Region, path: str | os.PathLike, ncols: int = 8, scale: int | None = None) -> Path:
    """Write the region's example grid as a PNG (see :func:`grid_png_bytes`); returns the path."""
    from failsight._io import atomic_write

    return atomic_write(path, grid_png_bytes(region, ncols=ncols, scale=scale), force=True)


def _check_dest(path: Path, force: bool) -> None:
    from failsight._io import check_output

    check_output([path], force)


# ------------------------------------------------------------------------------------------- labellers
class CallableLabeler:
    """Labels each region with ``fn(region)``, which returns a class index, a class name, ``"discard"`` or
    ``None`` (e.g. an oracle model voting on ``region.sample(n)``)."""

    def __init__(self, fn: Callable[[Region], Any]) -> None:
        if not callable(fn):
            raise FailsightInputError(f"CallableLabeler needs a callable, got {type(fn).__name__}.")
        self.fn = fn

    def __call__(self, regions: Sequence[Region], class_names: Sequence[str]) -> dict[int, int | None]:
        """``{region id: class index or None}``."""
        return {r.id: resolve_label(self.fn(r), class_names, where=f"region {r.id}") for r in regions}


class PromptLabeler:
    """Asks in the terminal. For each region it writes the grid PNG into ``grid_dir``, shows its path, the
    region's summary and the class names, and reads a class (name or index) or ``discard``; an invalid
    answer is asked again. ``input_fn``/``output_fn`` default to :func:`input`/:func:`print` (injectable for
    tests and other front ends)."""

    def __init__(self, grid_dir: str | os.PathLike, input_fn: Callable[[str], str] = input,
                 output_fn: Callable[[str], Any] = print, force: bool = False, max_attempts: int = 5) -> None:
        self.grid_dir = Path(grid_dir)
        self.input_fn, self.output_fn, self.force, self.max_attempts = input_fn, output_fn, force, max_attempts

    def __call__(self, regions: Sequence[Region], class_names: Sequence[str]) -> dict[int, int | None]:
        """``{region id: class index or None}``."""
        self.grid_dir.mkdir(parents=True, exist_ok=True)
        out: dict[int, int | None] = {}
        choices = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
        for r in regions:
            png = self.grid_dir / f"region_{r.id}.png"
            _check_dest(png, self.force)
            write_grid_png(r, png)
            self.output_fn(f"{r.describe()}\n  grid: {png}\n  classes: {choices}")
            for attempt in range(self.max_attempts):
                answer = self.input_fn(f"label for region {r.id} (class name/index, or '{DISCARD}'): ")
                try:
                    out[r.id] = resolve_label(answer, class_names, where=f"region {r.id}")
                    break
                except FailsightInputError as exc:
                    if attempt == self.max_attempts - 1:
                        raise
                    self.output_fn(f"  {exc}")
        return out


class FileLabeler:
    """File round trip: ``export`` writes ``region_<id>.png`` grids and a ``labels.csv`` (one row per region,
    ``label`` column empty) into ``folder``; a person fills in the ``label`` column with a class name or
    index, or ``discard``; ``read`` imports it. Calling the labeller reads the file."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @property
    def labels_path(self) -> Path:
        """``folder / "labels.csv"``."""
        return self.folder / LABELS_CSV

    def export(self, regions: Sequence[Region], class_names: Sequence[str], force: bool = False) -> Path:
        """Write the grids and ``labels.csv``; refuses to overwrite existing files unless ``force``. Returns
        the CSV path."""
        from failsight._io import atomic_open, check_output

        targets = [self.labels_path] + [self.folder / f"region_{r.id}.png" for r in regions]
        check_output(targets, force)  # every target before anything is written
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for r in regions:
            png = write_grid_png(r, self.folder / f"region_{r.id}.png")
            a, b = r.dominant_pair
            rows.append({"region_id": r.id, "label": "", "size": r.size, "error_rate": f"{r.error_rate:.3f}",
                         "seed_label": class_names[a] if a < len(class_names) else a,
                         "predicted_label": class_names[b] if b < len(class_names) else b, "grid": png.name})
        with atomic_open(self.labels_path, "w", force=force, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return self.labels_path

    @staticmethod
    def read(path: str | os.PathLike, regions: Sequence[Region],
             class_names: Sequence[str]) -> dict[int, int | None]:
        """Import a filled-in labels CSV (columns ``region_id`` and ``label``; others are ignored). Unknown
        region ids or class names raise :class:`FailsightInputError`; an empty label means discard."""
        path = Path(path)
        if path.is_dir():
            path = path / LABELS_CSV
        if not path.exists():
            raise FailsightInputError(f"no labels file at {str(path)!r}; export one with FileLabeler.export first.")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "region_id" not in fields or "label" not in fields:
                raise FailsightInputError(
                    f"{str(path)!r} must have the columns region_id and label (found: {', '.join(fields) or 'none'})."
                )
            raw: dict[str, Any] = {}
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): v for k, v in row.items()}
                rid = (row.get("region_id") or "").strip()
                if rid == "":
                    continue
                if rid in raw:
                    raise FailsightInputError(f"{str(path)!r} line {line}: region {rid} is listed twice.")
                raw[rid] = (row.get("label") or "").strip()
        try:
            return resolve_labels(raw, regions, class_names)
        except FailsightInputError as exc:
            raise FailsightInputError(f"{str(path)!r}: {exc}") from None

    def __call__(self, regions: Sequence[Region], class_names: Sequence[str]) -> dict[int, int | None]:
        """Read ``folder/labels.csv``."""
        return self.read(self.labels_path, regions, class_names)
