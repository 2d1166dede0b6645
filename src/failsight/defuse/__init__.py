"""failsight.defuse: find, group, label and fix a classifier's errors beyond the test set (imports torch).

Implements Defuse (Slack, Rauschmayr, Kenthapadi 2021, "Defuse: Harnessing Unrestricted Adversarial
Examples for Debugging Models Beyond Test Accuracy"):

1. a generative model (:class:`VAE`, or any object with ``encode``/``decode``) of the training images;
2. a search that perturbs correctly classified seeds in latent space and keeps the misclassified decodes;
3. misclassification regions: a Dirichlet-process Gaussian mixture over the found errors' latents;
4. one label per region (or "discard") from a person, a file round trip or an oracle;
5. a correction that fine-tunes a copy of the classifier on training data mixed with region samples.

``from failsight.defuse import Defuse, VAE`` is the entry point; see :class:`Defuse`.
"""

from failsight.defuse.core import Defuse, DefuseResult
from failsight.defuse.correct import CorrectionResult, RegionOutcome, correct
from failsight.defuse.labelers import (
    DISCARD,
    CallableLabeler,
    FileLabeler,
    Labeler,
    PromptLabeler,
    grid_png_bytes,
    resolve_label,
    resolve_labels,
    write_grid_png,
)
from failsight.defuse.regions import Region, RegionList, find_regions, load_regions, make_grid, save_regions
from failsight.defuse.search import SearchResult, search_errors
from failsight.defuse.vae import VAE, Generator, VAEHistory

__all__ = [
    "DISCARD",
    "VAE",
    "CallableLabeler",
    "CorrectionResult",
    "Defuse",
    "DefuseResult",
    "FileLabeler",
    "Generator",
    "Labeler",
    "PromptLabeler",
    "Region",
    "RegionList",
    "RegionOutcome",
    "SearchResult",
    "VAEHistory",
    "correct",
    "find_regions",
    "grid_png_bytes",
    "load_regions",
    "make_grid",
    "resolve_label",
    "resolve_labels",
    "save_regions",
    "search_errors",
    "write_grid_png",
]
