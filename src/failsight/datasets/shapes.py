"""Procedural shapes × colours images with known factors, zero-shot and cue-conflict splits.

Every image shows one object: a shape (circle, square, triangle, star, ...) in a colour (red, orange,
...), at a random position, scale and rotation, optionally textured (a stripe grating that changes
brightness, never hue) and on a cluttered background (smooth grey noise). Each image carries its
factors, so slices (by shape, by colour, by combination) and controlled splits come for free:

* :func:`iid_split` — stratified train / val / test;
* :func:`zero_shot_split` — shape-colour combinations held out of training entirely (each shape and
  each colour still appears in training), to test whether a model composes what it learned;
* :func:`cue_conflict_split` — training where shape and colour both predict the label, a test where
  they disagree; :func:`shape_bias` is Geirhos et al. (2019)'s shape bias carried to shape vs colour.

Drawing is vectorised over the batch with numpy (signed-distance functions, anti-aliased edges):
no per-image Python loop, thousands of 32×32 images per second on one core. Seeded and reproducible.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_fraction, check_int, check_labels, to_numpy
from failsight.types import Result

__all__ = [
    "COLORS",
    "DEFAULT_COLORS",
    "DEFAULT_SHAPES",
    "SHAPES",
    "CueConflictSplit",
    "ShapesData",
    "ShapesFactors",
    "ShapesSplit",
    "ZeroShotSplit",
    "cue_conflict_split",
    "iid_split",
    "make_shapes",
    "shape_bias",
    "zero_shot_split",
]

# ============================================================================ palette

#: Named colours (RGB in [0, 1]); chosen to be distinct in hue. ``color_table()`` lists RGB and hue.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "orange": (0.95, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.15),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.55, 0.15, 0.85),
    "magenta": (0.90, 0.10, 0.70),
    # extra colours, available by name
    "lime": (0.60, 0.95, 0.10),
    "azure": (0.10, 0.55, 0.95),
}
#: The 8 colours used when ``colors=None``.
DEFAULT_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")


def color_table() -> list[dict[str, Any]]:
    """Name, RGB (0-255) and hue (degrees) of every colour in :data:`COLORS`."""
    out = []
    for name, rgb in COLORS.items():
        h, _, _ = colorsys.rgb_to_hsv(*rgb)
        out.append({"color": name, "rgb": tuple(round(255 * c) for c in rgb), "hue": round(360 * h, 1)})
    return out


# ============================================================================ shapes as signed distances
# Each SDF takes local coordinates (ux, uy) (arrays, y pointing down as in images), in which the object
# fits in the unit disc, and returns the signed distance to the outline (negative inside) in the same
# units. The generator rotates/scales pixel coordinates into this frame, so one vectorised call draws
# every image of a shape at once.


def _polygon_sdf(vertices: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Exact signed distance to a simple polygon (vertices ``(m, 2)``), vectorised over points."""
    v = np.asarray(vertices, dtype=np.float32)

    def sdf(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        d = (ux - v[0, 0]) ** 2 + (uy - v[0, 1]) ** 2
        inside = np.zeros(ux.shape, dtype=bool)
        for i in range(len(v)):  # loop over edges (<= 12), not samples
            j = i - 1
            ex, ey = v[j, 0] - v[i, 0], v[j, 1] - v[i, 1]
            wx, wy = ux - v[i, 0], uy - v[i, 1]
            t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            bx, by = wx - ex * t, wy - ey * t
            np.minimum(d, bx * bx + by * by, out=d)
            # crossing-number test, written as IQ's sign flip
            c1 = uy >= v[i, 1]
            c2 = uy < v[j, 1]
            c3 = ex * wy > ey * wx
            inside ^= (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        out = np.sqrt(d)
        return np.where(inside, -out, out)

    return sdf


def _regular(n: int, radius: float, phase: float = -np.pi / 2) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    a = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _box(hx: float, hy: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def sdf(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        dx, dy = np.abs(ux) - hx, np.abs(uy) - hy
        outside = np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2)
        return outside + np.minimum(np.maximum(dx, dy), 0)

    return sdf


def _circle(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    return np.sqrt(ux * ux + uy * uy) - 0.9


def _ring(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    return np.abs(np.sqrt(ux * ux + uy * uy) - 0.7) - 0.22


def _cross(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    return np.minimum(_box(0.95, 0.3)(ux, uy), _box(0.3, 0.95)(ux, uy))


def _heart(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    # Inigo Quilez's exact heart SDF: tip at the origin, lobes up to y ~ 1.1, farthest point ~0.67 from
    # its middle (0, 0.55); map the unit disc onto that disc (image y points down, so flip it)
    k = np.float32(0.68)
    px = np.abs(ux) * k
    py = np.float32(0.55) - uy * k
    lobe = np.sqrt((px - 0.25) ** 2 + (py - 0.75) ** 2) - np.float32(np.sqrt(2.0) / 4.0)
    q = 0.5 * np.maximum(px + py, 0.0)
    body = np.sqrt(np.minimum(px ** 2 + (py - 1.0) ** 2, (px - q) ** 2 + (py - q) ** 2)) * np.sign(px - py)
    return np.where(py + px > 1.0, lobe, body) / k


def _crescent(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    outer = np.sqrt(ux * ux + uy * uy) - 0.72
    bite = np.sqrt((ux - 0.36) ** 2 + uy * uy) - 0.58
    return np.maximum(outer, -bite)


_SHAPE_SDFS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _box(0.72, 0.72),
    "triangle": _polygon_sdf(_regular(3, 1.0)),
    "star": _polygon_sdf(_star(5, 1.0, 0.45)),
    "cross": _cross,
    "heart": _heart,
    "diamond": _polygon_sdf(np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])),
    "hexagon": _polygon_sdf(_regular(6, 0.95, phase=0.0)),
    # extra shapes, available by name
    "ring": _ring,
    "crescent": _crescent,
    "arrow": _polygon_sdf(np.array([[0.0, -1.0], [0.75, -0.15], [0.28, -0.15], [0.28, 0.95],
                                    [-0.28, 0.95], [-0.28, -0.15], [-0.75, -0.15]])),
}
#: Names of all available shapes.
SHAPES: tuple[str, ...] = tuple(_SHAPE_SDFS)
#: The 8 shapes used when ``shapes=None``.
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "hexagon")


@functools.cache
def _centroid(name: str) -> tuple[float, float]:
    """Area centroid of a shape in its local frame (so every object is drawn centred on (x, y))."""
    g = (np.arange(400, dtype=np.float32) + 0.5) / 400 * 2.4 - 1.2
    ux, uy = np.meshgrid(g, g)
    a = np.clip(0.5 - _SHAPE_SDFS[name](ux, uy) * (400 / 2.4), 0.0, 1.0)
    return float((a * ux).sum() / a.sum()), float((a * uy).sum() / a.sum())


# ============================================================================ data containers


@dataclasses.dataclass(frozen=True, eq=False)
class ShapesFactors(Result):
    """The generative factors of each image, as parallel ``(n,)`` arrays.

    ``shape``/``color`` index ``shape_names``/``color_names``; ``x``, ``y`` are the object centre as a
    fraction of the image width/height (``x`` = column, ``y`` = row, pixel ``(i, j)`` has its centre at
    ``((j + 0.5) / W, (i + 0.5) / H)``); ``scale`` is the object's radius as a fraction of the image size;
    ``rotation`` is in degrees, clockwise on screen, in [0, 360).
    """

    shape: np.ndarray
    color: np.ndarray
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    shape_names: tuple[str, ...]
    color_names: tuple[str, ...]

    _COLUMNS = ("shape", "color", "x", "y", "scale", "rotation")

    def __len__(self) -> int:
        return len(self.shape)

    def as_dict(self) -> dict[str, np.ndarray]:
        """Column name -> ``(n,)`` array (shape/colour as integer indices)."""
        return {c: getattr(self, c) for c in self._COLUMNS}

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per image, shape and colour as names: ``[{"shape": "star", "color": "red", ...}]``."""
        sn, cn = np.asarray(self.shape_names), np.asarray(self.color_names)
        cols = {"shape": sn[self.shape].tolist(), "color": cn[self.color].tolist(),
                **{c: getattr(self, c).tolist() for c in ("x", "y", "scale", "rotation")}}
        return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]

    def subset(self, idx: Any) -> ShapesFactors:
        """Rows ``idx`` (indices or boolean mask) as a new table."""
        return dataclasses.replace(self, **{c: getattr(self, c)[idx] for c in self._COLUMNS})


@dataclasses.dataclass(frozen=True, eq=False)
class ShapesData:
    """Images with their labels and factors (result of :func:`make_shapes`).

    ``images`` float32 ``(n, 3, H, W)`` in [0, 1]; ``labels`` int64 ``(n,)`` object label
    ``shape * n_colors + color``; ``shape_labels``/``color_labels`` ``(n,)``; ``factors`` the factor
    table; ``masks`` float32 ``(n, H, W)`` object coverage in [0, 1] when asked for, else ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    shape_labels: np.ndarray
    color_labels: np.ndarray
    factors: ShapesFactors
    shape_names: tuple[str, ...]
    color_names: tuple[str, ...]
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        """Number of object classes (``n_shapes * n_colors``)."""
        return len(self.shape_names) * len(self.color_names)

    def object_label(self, shape: str | int, color: str | int) -> int:
        """Object label of a shape-colour combination (names or indices)."""
        s = _index_of(shape, self.shape_names, "shape")
        c = _index_of(color, self.color_names, "colour")
        return s * len(self.color_names) + c

    def object_names(self) -> list[str]:
        """Names of the object classes, index = object label: ``["red circle", ...]``."""
        return [f"{c} {s}" for s in self.shape_names for c in self.color_names]

    def subset(self, idx: Any) -> ShapesData:
        """Samples ``idx`` (indices or boolean mask) as a new data set."""
        idx = np.asarray(idx)
        return ShapesData(self.images[idx], self.labels[idx], self.shape_labels[idx], self.color_labels[idx],
                          self.factors.subset(idx), self.shape_names, self.color_names,
                          None if self.masks is None else self.masks[idx])

    def groups(self) -> dict[str, np.ndarray]:
        """Slicings for :mod:`failsight.slices`: ``{"shape": names, "color": names, "object": names}``."""
        sn, cn = np.asarray(self.shape_names), np.asarray(self.color_names)
        s, c = sn[self.shape_labels], cn[self.color_labels]
        return {"shape": s, "color": c, "object": np.char.add(np.char.add(c, " "), s)}


def _index_of(value: str | int | np.integer, names: tuple[str, ...], what: str) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= int(value) < len(names):
            raise FailsightInputError(f"{what} index {value} out of range 0..{len(names) - 1} ({list(names)}).")
        return int(value)
    if value not in names:
        raise FailsightInputError(f"unknown {what} {value!r}; valid {what}s here: {list(names)}.")
    return names.index(value)


def _resolve(names: Sequence[str] | None, registry: Sequence[str], default: tuple[str, ...],
             what: str) -> tuple[str, ...]:
    if names is None:
        return default
    if isinstance(names, str):
        names = [names]
    names = tuple(str(n).lower() for n in names)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise FailsightInputError(
            f"unknown {what} name(s) {unknown}; valid {what}s: {list(registry)}."
        )
    if len(set(names)) != len(names):
        raise FailsightInputError(f"{what}s {list(names)} contain duplicates; list each once.")
    if not names:
        raise FailsightInputError(f"no {what}s given; pass at least one of {list(registry)}.")
    return names


def _resolve_combinations(combinations: Any, shape_names: tuple[str, ...],
                          color_names: tuple[str, ...]) -> np.ndarray:
    """``(m, 2)`` int array of (shape index, colour index) pairs from names or indices."""
    if combinations is None:
        ks, kc = len(shape_names), len(color_names)
        return np.stack(np.divmod(np.arange(ks * kc), kc), axis=1)
    pairs = list(combinations) if not isinstance(combinations, np.ndarray) else combinations.tolist()
    if len(pairs) == 0:
        raise FailsightInputError("combinations is empty; pass at least one (shape, colour) pair.")
    out = []
    for p in pairs:
        if len(p) != 2:
            raise FailsightInputError(f"each combination must be a (shape, colour) pair, got {p!r}.")
        out.append((_index_of(p[0], shape_names, "shape"), _index_of(p[1], color_names, "colour")))
    arr = np.unique(np.asarray(out, dtype=np.int64), axis=0)
    return arr


# ============================================================================ generator

_CHUNK = 1024  # images drawn per vectorised block (bounds memory; results do not depend on it)


def make_shapes(
    n: int,
    *,
    image_size: int = 32,
    shapes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    texture: bool = False,
    clutter: bool = False,
    seed: int = 0,
    combinations: Any = None,
    scale_range: tuple[float, float] = (0.2, 0.32),
    return_masks: bool = False,
) -> ShapesData:
    """Draw ``n`` images of coloured shapes with known factors.

    Parameters
    ----------
    n : number of images.
    image_size : height = width in pixels (>= 8).
    shapes, colors : names from :data:`SHAPES` / :data:`COLORS` (default: :data:`DEFAULT_SHAPES`,
        :data:`DEFAULT_COLORS`, 8 each); their order defines the label indices.
    texture : modulate the object's brightness with a random stripe grating (hue unchanged).
    clutter : draw objects on smooth random grey noise instead of black.
    seed : seed of every random choice; the same arguments give the same images.
    combinations : optional ``(shape, colour)`` pairs (names or indices) to draw from, e.g. only the
        combinations seen in a zero-shot split's training set; default all ``n_shapes * n_colors``.
        Combinations are balanced: each appears ``n // m`` or ``n // m + 1`` times.
    scale_range : object radius as a fraction of the image size, drawn uniformly.
    return_masks : also return the object coverage ``(n, H, W)``.

    Returns
    -------
    ShapesData with ``images`` float32 ``(n, 3, H, W)`` in [0, 1], labels and the factor table.
    Position is uniform such that the object stays inside the image; rotation uniform in [0, 360).
    """
    n = check_int(n, "n", minimum=1)
    size = check_int(image_size, "image_size", minimum=8)
    shape_names = _resolve(shapes, SHAPES, DEFAULT_SHAPES, "shape")
    color_names = _resolve(colors, tuple(COLORS), DEFAULT_COLORS, "colour")
    combos = _resolve_combinations(combinations, shape_names, color_names)
    lo_s, hi_s = (float(v) for v in scale_range)
    if not (0 < lo_s <= hi_s < 0.5):
        raise FailsightInputError(f"scale_range must satisfy 0 < low <= high < 0.5, got {scale_range!r}.")
    rng = np.random.default_rng(seed)

    # factors (all random draws happen here, so chunking below cannot change the result)
    pick = rng.permutation(np.arange(n) % len(combos))
    shape_idx = combos[pick, 0]
    color_idx = combos[pick, 1]
    scale = rng.uniform(lo_s, hi_s, n)
    x = rng.uniform(scale, 1.0 - scale)
    y = rng.uniform(scale, 1.0 - scale)
    rotation = rng.uniform(0.0, 360.0, n)
    tex = rng.uniform(size=(n, 3)) if texture else None  # frequency, direction, phase
    grid = rng.uniform(0.0, 0.45, size=(n, 4, 4)) if clutter else None

    palette = np.array([COLORS[c] for c in color_names], dtype=np.float32)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=np.float32) if return_masks else None
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        alpha, shade = _draw(shape_names, shape_idx[sl], x[sl], y[sl], scale[sl], rotation[sl], size, coords,
                             None if tex is None else tex[sl])
        col = palette[color_idx[sl]][:, :, None, None]  # (b, 3, 1, 1)
        obj = col * (alpha if shade is None else alpha * shade)[:, None]
        if grid is None:
            images[sl] = obj
        else:
            bg = _smooth_noise(grid[sl], size)[:, None]
            images[sl] = obj + bg * (1.0 - alpha[:, None])
        if masks is not None:
            masks[sl] = alpha
    np.clip(images, 0.0, 1.0, out=images)

    factors = ShapesFactors(shape_idx, color_idx, x, y, scale, rotation, shape_names, color_names)
    labels = shape_idx * len(color_names) + color_idx
    return ShapesData(images, labels, shape_idx.copy(), color_idx.copy(), factors, shape_names, color_names, masks)


def _draw(shape_names: tuple[str, ...], shape_idx: np.ndarray, x: np.ndarray, y: np.ndarray, scale: np.ndarray,
          rotation: np.ndarray, size: int, coords: np.ndarray,
          tex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Coverage ``(b, H, W)`` of each object (anti-aliased) and optional brightness ``(b, H, W)``."""
    b = len(shape_idx)
    f32 = np.float32
    radius = (scale * size).astype(f32)[:, None, None]  # pixels per local unit
    th = np.deg2rad(rotation).astype(f32)[:, None, None]
    cos, sin = np.cos(th), np.sin(th)
    dx = coords[None, None, :] - (x * size).astype(f32)[:, None, None]  # (b, 1, W)
    dy = coords[None, :, None] - (y * size).astype(f32)[:, None, None]  # (b, H, 1)
    # rotate the pixel grid by -theta (object rotated by +theta, clockwise on screen), scale to local units
    ux = (cos * dx + sin * dy) / radius
    uy = (cos * dy - sin * dx) / radius
    alpha = np.zeros((b, size, size), dtype=f32)
    for s in np.unique(shape_idx):  # loop over shapes (<= 11), each drawn for all its images at once
        rows = np.flatnonzero(shape_idx == s)
        name = shape_names[s]
        cx, cy = _centroid(name)
        d = _SHAPE_SDFS[name](ux[rows] + f32(cx), uy[rows] + f32(cy))
        alpha[rows] = np.clip(f32(0.5) - d * radius[rows], 0.0, 1.0)
    if tex is None:
        return alpha, None
    freq = (2.0 + 2.5 * tex[:, 0]).astype(f32)[:, None, None]  # stripes per object radius / pi
    ang = (np.pi * tex[:, 1]).astype(f32)[:, None, None]
    phase = (2 * np.pi * tex[:, 2]).astype(f32)[:, None, None]
    wave = np.cos(freq * np.float32(np.pi) * (ux * np.cos(ang) + uy * np.sin(ang)) + phase)
    return alpha, (f32(0.7) + f32(0.3) * wave).astype(f32)


def _smooth_noise(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``(b, g, g)`` random grids to ``(b, size, size)`` smooth grey noise."""
    g = grid.shape[1]
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * (g - 1)
    i0 = np.clip(np.floor(t).astype(np.int64), 0, g - 2)
    w = (t - i0).astype(np.float32)
    grid = grid.astype(np.float32)
    rows = grid[:, i0, :] * (1 - w)[None, :, None] + grid[:, i0 + 1, :] * w[None, :, None]  # (b, size, g)
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


# ============================================================================ splits


def _check_split_fractions(**fracs: float) -> dict[str, float]:
    out = {k: check_fraction(v, k, open_low=False) for k, v in fracs.items()}
    if sum(out.values()) >= 1.0:
        raise FailsightInputError(f"split fractions {out} leave nothing for training; their sum must be < 1.")
    return out


def _stratified_parts(strata: np.ndarray, fracs: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Assign each sample a part 0..len(fracs) (last = remainder), stratified by ``strata``."""
    n = len(strata)
    order = np.lexsort((rng.random(n), strata))  # random order within each stratum
    s_sorted = strata[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    pos = (rank + 0.5) / np.repeat(sizes, sizes)  # in (0, 1)
    edges = np.cumsum(fracs)
    part = np.empty(n, dtype=np.int64)
    part[order] = np.searchsorted(edges, pos, side="right")
    return part


@dataclasses.dataclass(frozen=True, eq=False)
class ShapesSplit(Result):
    """Index arrays of an i.i.d. split (result of :func:`iid_split`)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def subsets(self, data: ShapesData) -> dict[str, ShapesData]:
        """``{"train": ..., "val": ..., "test": ...}`` as :class:`ShapesData`."""
        return {k: data.subset(getattr(self, k)) for k in ("train", "val", "test")}


def iid_split(data: ShapesData, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> ShapesSplit:
    """Random train / val / test split, stratified by object label (shape × colour)."""
    fr = _check_split_fractions(val=val, test=test)
    part = _stratified_parts(data.labels, [fr["test"], fr["val"]], np.random.default_rng(seed))
    return ShapesSplit(np.flatnonzero(part == 2), np.flatnonzero(part == 1), np.flatnonzero(part == 0))


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroShotSplit(Result):
    """Zero-shot split (result of :func:`zero_shot_split`).

    ``train``/``val``/``test`` hold only *seen* combinations (``test`` is the i.i.d. control);
    ``test_unseen`` holds every sample of the ``held_out`` combinations ``(m, 2)`` (shape index,
    colour index), none of which occurs in train or val.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_unseen: np.ndarray
    held_out: np.ndarray
    held_out_names: tuple[tuple[str, str], ...]

    def subsets(self, data: ShapesData) -> dict[str, ShapesData]:
        """``{"train", "val", "test", "test_unseen"}`` as :class:`ShapesData`."""
        return {k: data.subset(getattr(self, k)) for k in ("train", "val", "test", "test_unseen")}

    def seen_combinations(self, n_shapes: int, n_colors: int) -> np.ndarray:
        """``(k, 2)`` combinations not held out (pass to ``make_shapes(combinations=...)`` for more training data)."""
        allc = np.stack(np.divmod(np.arange(n_shapes * n_colors), n_colors), axis=1)
        held = set(map(tuple, self.held_out.tolist()))
        return np.array([c for c in allc.tolist() if tuple(c) not in held], dtype=np.int64)


def zero_shot_split(
    data: ShapesData,
    *,
    held_out: Sequence[tuple[str | int, str | int]] | None = None,
    per_shape: int = 1,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
) -> ZeroShotSplit:
    """Hold shape-colour combinations out of training entirely.

    By default ``per_shape`` colours are held out for every shape, along shifted diagonals of a random
    colour permutation, so each colour is held out for about ``per_shape`` shapes too; every shape and
    every colour still appears in training. Pass ``held_out=[("star", "red"), ...]`` to choose them.
    The seen combinations are split i.i.d. (stratified) into train / val / test.
    """
    fr = _check_split_fractions(val=val, test=test)
    ks, kc = len(data.shape_names), len(data.color_names)
    rng = np.random.default_rng(seed)
    if held_out is None:
        per_shape = check_int(per_shape, "per_shape", minimum=1)
        if per_shape >= kc:
            raise FailsightInputError(
                f"per_shape={per_shape} would hold out every colour of a shape ({kc} colours); use < {kc}."
            )
        sigma = rng.permutation(kc)
        offsets = rng.choice(kc, size=per_shape, replace=False)
        held = np.array([(s, sigma[(s + o) % kc]) for s in range(ks) for o in offsets], dtype=np.int64)
    else:
        held = _resolve_combinations(held_out, data.shape_names, data.color_names)
    held = np.unique(held, axis=0)
    held_codes = held[:, 0] * kc + held[:, 1]
    left_shapes = set(range(ks)) - {s for s in range(ks) if np.sum(held[:, 0] == s) == kc}
    left_colors = set(range(kc)) - {c for c in range(kc) if np.sum(held[:, 1] == c) == ks}
    if len(left_shapes) < ks or len(left_colors) < kc:
        lost = [data.shape_names[s] for s in range(ks) if s not in left_shapes] + \
               [data.color_names[c] for c in range(kc) if c not in left_colors]
        raise FailsightInputError(
            f"the held-out combinations remove {lost} from training entirely; a zero-shot split must keep "
            "every shape and every colour in training. Hold out fewer combinations."
        )
    unseen = np.isin(data.labels, held_codes)
    if not unseen.any():
        raise FailsightInputError("no sample of the held-out combinations is in the data; draw more images.")
    seen_idx = np.flatnonzero(~unseen)
    part = _stratified_parts(data.labels[seen_idx], [fr["test"], fr["val"]], rng)
    train = seen_idx[part == 2]
    missing_s = set(range(ks)) - set(np.unique(data.shape_labels[train]).tolist())
    missing_c = set(range(kc)) - set(np.unique(data.color_labels[train]).tolist())
    if missing_s or missing_c:
        raise FailsightInputError(
            f"with {len(data)} images some shapes/colours ({sorted(missing_s)} / {sorted(missing_c)}) have no "
            "training sample; draw more images."
        )
    names = tuple((data.shape_names[s], data.color_names[c]) for s, c in held.tolist())
    return ZeroShotSplit(train, seen_idx[part == 1], seen_idx[part == 0], np.flatnonzero(unseen), held, names)


@dataclasses.dataclass(frozen=True, eq=False)
class CueConflictSplit(Result):
    """Cue-conflict split (result of :func:`cue_conflict_split`).

    The task has one class per shape; class ``i`` is paired with colour ``pairing[i]``. ``train``/``val``
    hold images whose colour is their shape's paired colour (both cues give the label); ``test`` holds
    images whose colour is paired with *another* shape, so the cues disagree: ``shape_label[test]`` is the
    class the shape says, ``color_label[test]`` the class the colour says (they always differ there).
    ``shape_label``/``color_label`` are ``(n,)`` over the whole data (``color_label`` is -1 for a colour
    paired with no class).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    pairing: np.ndarray
    shape_label: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    color_label: np.ndarray = dataclasses.field(metadata={"exclude_json": True})

    def labels(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Task labels (= shape class) for ``idx`` (default ``train``)."""
        return self.shape_label[self.train if idx is None else idx]

    def follow(self, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
        """For test predictions ``(len(test),)`` labels or ``(len(test), k)`` probabilities: booleans
        ``(shape_follow, color_follow)``."""
        arr = to_numpy(y_pred, "y_pred")
        pred = arr.argmax(axis=1) if arr.ndim == 2 else check_labels(arr, name="y_pred")
        if len(pred) != len(self.test):
            raise FailsightInputError(
                f"y_pred has {len(pred)} predictions but the cue-conflict test set has {len(self.test)} images."
            )
        return pred == self.shape_label[self.test], pred == self.color_label[self.test]

    def shape_bias(self, y_pred: Any) -> float:
        """:func:`shape_bias` of test-set predictions."""
        return shape_bias(*self.follow(y_pred))

    @property
    def combinations(self) -> dict[str, np.ndarray]:
        """``{"train": (k, 2), "test": (k*(k-1), 2)}`` (shape, colour) pairs, for ``make_shapes(combinations=)``."""
        k = len(self.pairing)
        tr = np.stack([np.arange(k), self.pairing], axis=1)
        te = np.array([(s, self.pairing[c]) for s in range(k) for c in range(k) if c != s], dtype=np.int64)
        return {"train": tr, "test": te}


def cue_conflict_split(
    data: ShapesData,
    *,
    pairing: Sequence[str | int] | None = None,
    val: float = 0.1,
    seed: int = 0,
) -> CueConflictSplit:
    """Split where shape and colour agree in training and disagree in the test.

    ``pairing[i]`` is the colour (name or index) paired with shape ``i``; default a seeded random
    one-to-one choice (needs at least as many colours as shapes). From an i.i.d. sample only about
    ``1 / n_colors`` of the images are cue-consistent; to get more, draw data with
    ``make_shapes(combinations=split.combinations["train"])`` and pass ``pairing=split.pairing``.
    """
    check_fraction(val, "val", open_low=False)
    ks, kc = len(data.shape_names), len(data.color_names)
    rng = np.random.default_rng(seed)
    if pairing is None:
        if kc < ks:
            raise FailsightInputError(
                f"cue conflict pairs each shape with its own colour: need at least as many colours ({kc}) as "
                f"shapes ({ks}). Pass more colours or fewer shapes."
            )
        pair = rng.permutation(kc)[:ks]
    else:
        pl = list(pairing)
        if len(pl) != ks:
            raise FailsightInputError(f"pairing needs one colour per shape ({ks}), got {len(pl)}.")
        pair = np.array([_index_of(c, data.color_names, "colour") for c in pl], dtype=np.int64)
        if len(set(pair.tolist())) != ks:
            raise FailsightInputError(f"pairing {pl} uses a colour twice; each shape needs its own colour.")
    inv = np.full(kc, -1, dtype=np.int64)
    inv[pair] = np.arange(ks)
    shape_label = data.shape_labels.astype(np.int64)
    color_label = inv[data.color_labels]
    agree = color_label == shape_label
    conflict = (color_label >= 0) & ~agree
    agree_idx = np.flatnonzero(agree)
    if len(agree_idx) == 0 and not conflict.any():
        raise FailsightInputError(
            "the data holds neither cue-consistent nor cue-conflict images for this pairing; draw more images."
        )
    part = _stratified_parts(shape_label[agree_idx], [val], rng)
    return CueConflictSplit(agree_idx[part == 1], agree_idx[part == 0], np.flatnonzero(conflict), pair,
                            shape_label, color_label)


def shape_bias(pred_shape_follow: Any, pred_color_follow: Any) -> float:
    """Shape bias: share of shape decisions among decisions that follow either cue.

    Geirhos et al. (2019) define shape bias on cue-conflict images as ``shape decisions / (shape
    decisions + texture decisions)``, counting only predictions that match one of the two cues; here
    the second cue is colour. Inputs are booleans ``(n,)`` per cue-conflict image (did the prediction
    follow the shape? the colour?) or two counts. Returns NaN when no prediction followed either cue.
    """
    a = to_numpy(pred_shape_follow, "pred_shape_follow")
    b = to_numpy(pred_color_follow, "pred_color_follow")
    if a.shape != b.shape:
        raise FailsightInputError(f"pred_shape_follow {a.shape} and pred_color_follow {b.shape} must match.")
    if a.ndim == 0:  # counts
        s, c = float(a), float(b)
        if s < 0 or c < 0:
            raise FailsightInputError("decision counts must be >= 0.")
    else:
        if a.dtype != bool or b.dtype != bool:
            if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
                raise FailsightInputError("pass booleans per image (or two counts) to shape_bias.")
            a, b = a.astype(bool), b.astype(bool)
        if (a & b).any():
            raise FailsightInputError(
                f"{int((a & b).sum())} prediction(s) follow both cues: on cue-conflict images shape and colour "
                "point to different classes, so check that the test set really is cue-conflicting."
            )
        s, c = float(a.sum()), float(b.sum())
    return s / (s + c) if s + c > 0 else float("nan")
