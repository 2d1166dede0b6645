"""Bundled and generated data: scikit-learn's handwritten digits and the shapes x colours generator."""

from failsight.datasets.shapes import (
    ShapesData,
    color_table,
    cue_conflict_split,
    iid_split,
    make_shapes,
    shape_bias,
    zero_shot_split,
)

__all__ = [
    "ShapesData",
    "color_table",
    "cue_conflict_split",
    "iid_split",
    "make_shapes",
    "shape_bias",
    "zero_shot_split",
]
