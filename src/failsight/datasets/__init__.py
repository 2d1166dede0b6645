"""Data: scikit-learn's bundled handwritten digits, the shapes x colours generator, and loaders for user data
(``.npz``, MNIST-format IDX files, image folders, arrays, torch datasets)."""

from failsight.datasets.digits import DigitsSplits, load_digits_images, split_digits
from failsight.datasets.io import (
    LabelledData,
    check_image_size,
    load_data,
    normalize_images,
    read_idx,
    resize_images,
)
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
    "DigitsSplits",
    "LabelledData",
    "ShapesData",
    "check_image_size",
    "color_table",
    "cue_conflict_split",
    "iid_split",
    "load_data",
    "load_digits_images",
    "make_shapes",
    "normalize_images",
    "read_idx",
    "resize_images",
    "shape_bias",
    "split_digits",
    "zero_shot_split",
]
