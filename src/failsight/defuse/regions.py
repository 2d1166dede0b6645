"""Misclassification regions: Dirichlet-process Gaussian mixtures over the latents of found errors.

The found errors are grouped by their failure — the (seed label, predicted label) pair — and a
Dirichlet-process Gaussian mixture (scikit-learn ``BayesianGaussianMixture``, at most ``max_components``
components per group) is fitted to each group's latent codes, so a pair whose errors form several separate
clusters (two styles of 4 read as 1) yields several regions. Each mixture component is a candidate region. It
becomes a region when it holds at least ``min_size`` found errors and samples *drawn from the component*
(not just the errors that built it) are misclassified at a rate of at least ``min_error_rate`` — i.e. the
component describes a part of latent space where the classifier reliably fails, so one label can fix all of it.

Why group by pair (``group_by="pair"``) instead of one mixture over all errors (``group_by="none"``, the
paper's recipe, still available): in the 16-dimensional latent space of the digits VAE the errors of different
failures overlap, and components of one global mixture held only 10-50% errors of their dominant pair; in a
planted-bug study (7 bugs × 3 seeds) the planted pair reached the top 3 in 16 of 21 runs with the global
mixture and 19 of 21 with per-pair mixtures. Diagonal covariances (``covariance_type="diag"``) keep the mixture
from cutting one blob of 50-100 errors into equal slices, which full 16×16 covariances did.

Regions are ranked by ``score = size * purity * pair_rate * directionality``:

- ``size * purity``: found errors of the region's dominant failure;
- ``pair_rate``: share of samples drawn from the region that fail that way (how reliable the failure is);
- ``directionality``: ``n(a→b) / (n(a→b) + n(b→a))`` over the whole search. Where a generator morphs one
  class into another, seeds of *both* classes fail across the boundary — an ambiguous region a label cannot
  fix; a systematic bug (a style of 5 read as 9) fails one way only.

Regions *backed by real failures* lead the ranking: with the seeds' predictions (the search keeps them), a
region whose 90% latent ellipsoid holds at least ``min_real_failures`` labelled seeds of its seed class that the
classifier predicts as the region's predicted class, at a share significantly above its error rate on all
seeds, is a failure the person's own images show; when any region is, only those are above the fold, and the
others (possible failures beyond the data, or generator drift across a class boundary) stay listed below it
with the counts as the reason. Measured on the MNIST planted-bug tuning runs (6 runs, ``defuse_mnist.py``):
the backed regions (all of the planted pair) hold 45-139 such failures among 175-438 seeds, every region of
another pair 0-4 (none backed in any of the 14 tuning and held-out runs, 584 regions); the oracle confirmed
all 10 backed regions and 1 of the 12 unbacked ones that were above the old fold (support rule),
so the share of confirmed regions above the fold went from 0.55 to 1.0. Without any backed region (a bug beyond the data, a
clean model) the fold is the support rule's, as before.

Defaults, and why:

- ``min_size = max(10, 1% of the errors found)``: ten errors are the fewest that make a region's statistics
  meaningful and a component that small is rarely more than a single seed's neighbourhood; the 1% floor stops
  large searches from surfacing crumbs a person should not spend a label on.
- ``min_error_rate = 0.5``: a region gets *one* label, which is only sensible when most of its samples
  fail; below a majority the component mixes correct and incorrect behaviour and fine-tuning on it would
  also "fix" inputs that were right.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failsight._validate import FailsightInputError, check_fraction, check_int
from failsight.defuse.search import SearchResult, check_classifier, classify
from failsight.defuse.vae import check_generator, check_images
from failsight.types import Result, to_jsonable

__all__ = ["Region", "RegionList", "find_regions", "fold_regions", "load_regions", "make_grid", "save_regions"]

_SCALARS = ("id", "size", "error_rate", "dominant_pair", "purity", "pair_rate", "confidence", "directionality",
            "score", "weight", "n_checked", "pair_counts", "seed", "class_names", "support",
            "real_failures", "real_seeds", "real_backed")
_ARRAYS = ("mean", "covariance", "member_index", "examples", "example_predictions")


def make_grid(images: Any, ncols: int = 8, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile images ``(n, c, h, w)`` into one array ``(rows*(h+pad)+pad, ncols*(w+pad)+pad, c)`` (HWC).

    Values are kept as given (images in [0, 1] stay in [0, 1]); empty cells are filled with ``pad_value``.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0:
        raise FailsightInputError(f"make_grid needs images (n, c, h, w) with n >= 1, got shape {x.shape}.")
    ncols = check_int(ncols, "ncols")
    n, c, h, w = x.shape
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    cells = np.full((nrows * ncols, c, h, w), pad_value, dtype=np.float32)
    cells[:n] = x
    cells = np.pad(cells, ((0, 0), (0, 0), (pad, 0), (pad, 0)), constant_values=pad_value)
    grid = cells.reshape(nrows, ncols, c, h + pad, w + pad).transpose(0, 3, 1, 4, 2)
    grid = grid.reshape(nrows * (h + pad), ncols * (w + pad), c)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=pad_value)


@dataclasses.dataclass(frozen=True)
class Region(Result):
    """One misclassification region (a Gaussian component of the error latents).

    ``size``: found errors assigned to it. ``error_rate``: fraction of samples drawn from the component
    that the classifier does not assign to the region's seed class. ``dominant_pair``: the most common
    (seed label, predicted label) among its errors, with ``purity`` its share; ``pair_rate``: fraction of
    drawn samples predicted as the pair's predicted label; ``confidence``: the classifier's mean softmax
    confidence on its errors; ``directionality``: share of the two classes' mutual confusion (over the whole
    search) that goes this region's way; ``support``: share of drawn samples whose nearest labelled seeds
    (latent space) mostly carry the seed class — how much the labelled data back the claim that the region's
    samples still show that class, i.e. are errors (``None`` without labelled seed codes); ``real_seeds``: labelled
    seeds of the seed class inside the component's 90% ellipsoid, ``real_failures``: how many of them the classifier
    predicts as the pair's predicted label — the failure seen on *real* images —, ``real_backed``: whether that
    share is significantly above the classifier's error rate on all seeds (``None`` without the seeds'
    predictions); ``score``: the ranking key (see the module docstring). ``mean``
    ``(d,)`` / ``covariance`` ``(d, d)`` describe the component in latent space; ``examples``
    ``(k, c, h, w)`` are decoded samples drawn from it (``example_predictions`` ``(k,)``); ``member_index``
    are rows of the search result.
    """

    id: int
    size: int
    error_rate: float
    dominant_pair: tuple[int, int]
    purity: float
    pair_rate: float
    confidence: float
    directionality: float
    score: float
    weight: float
    n_checked: int
    pair_counts: list[tuple[int, int, int]]
    mean: np.ndarray
    covariance: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    member_index: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    examples: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    example_predictions: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    seed: int = 0
    class_names: tuple[str, ...] | None = None
    support: float | None = None
    real_failures: int | None = None
    real_seeds: int | None = None
    real_backed: bool | None = None
    generator: Any = dataclasses.field(default=None, repr=False, compare=False, metadata={"exclude_json": True})

    @property
    def seed_label(self) -> int:
        """The class the region's seeds had (first element of ``dominant_pair``)."""
        return self.dominant_pair[0]

    @property
    def predicted_label(self) -> int:
        """The class the classifier wrongly predicts (second element of ``dominant_pair``)."""
        return self.dominant_pair[1]

    def pair_names(self) -> tuple[str, str]:
        """``dominant_pair`` as class names (indices as strings when no names are known)."""
        names = self.class_names
        a, b = self.dominant_pair
        if names is not None and max(a, b) < len(names):
            return names[a], names[b]
        return str(a), str(b)

    def describe(self) -> str:
        """One line: id, size, error rate and dominant pair."""
        a, b = self.pair_names()
        return (f"region {self.id}: {self.size} errors, {self.error_rate:.0%} of its samples misclassified, "
                f"mostly {a} -> {b} ({self.purity:.0%})")

    def sample_latents(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` latent codes ``(n, d)`` from the component (``seed`` defaults to the region's own)."""
        n = check_int(n, "n")
        rng = np.random.default_rng(self.seed + 7919 * (self.id + 1) if seed is None else seed)
        return rng.multivariate_normal(self.mean, self.covariance, size=n, method="cholesky").astype(np.float32)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draw ``n`` latents from the component and decode them: images ``(n, c, h, w)``.

        The same ``seed`` gives the same images; different seeds give independent draws.
        """
        if self.generator is None:
            raise FailsightInputError("this region has no generator attached (it was rebuilt from a dict).")
        z = self.sample_latents(n, seed)
        return check_images(self.generator.decode(z), "generator.decode(z)", check_range=False)

    def grid(self, ncols: int = 8, pad: int = 1) -> np.ndarray:
        """The region's example images tiled into one HWC array (see :func:`make_grid`)."""
        return make_grid(self.examples, ncols=ncols, pad=pad)


class RegionList(list):
    """The regions, ranked (best first), plus a record of every mixture component considered.

    It is a plain ``list`` of :class:`Region`; ``components`` holds one dict per non-empty component with
    its size, error rate, dominant pair and why it was kept or rejected. ``to_dict()`` gives JSON-ready data.
    """

    def __init__(self, regions: list[Region], components: list[dict[str, Any]], params: dict[str, Any]):
        super().__init__(regions)
        self.components = components
        self.params = params

    @property
    def fold(self) -> int:
        """How many leading regions are "above the fold": worth a person's label (see :func:`fold_regions`)."""
        return int(self.params.get("fold", len(self)))

    @property
    def above_fold(self) -> list[Region]:
        """The regions to label first (the top :attr:`fold` of the ranking)."""
        return list(self[: self.fold])

    def fold_reasons(self) -> dict[int, str]:
        """Region id → why it is below the fold (regions above it are absent)."""
        return {int(k): v for k, v in self.params.get("below_fold", {}).items()}

    def by_id(self, region_id: int) -> Region:
        """The region with this ``id``."""
        for r in self:
            if r.id == region_id:
                return r
        raise FailsightInputError(
            f"no region with id {region_id}; known ids: {[r.id for r in self]}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``regions`` (ranked), ``components`` and the parameters used."""
        return {"regions": [r.to_dict() for r in self], "components": to_jsonable(self.components),
                "params": to_jsonable(self.params)}

    def to_json(self, **kwargs: Any) -> str:
        """This list as a JSON string."""
        import json

        return json.dumps(self.to_dict(), **kwargs)


def _mode_pair(seed_label: np.ndarray, predicted: np.ndarray) -> tuple[tuple[int, int], float, list]:
    pairs, counts = np.unique(np.stack([seed_label, predicted], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    table = [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]
    top = order[0]
    return (int(pairs[top, 0]), int(pairs[top, 1])), float(counts[top] / counts.sum()), table


def _split_rows(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by key (in key order)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    return np.split(order, bounds)


def _group_name(group_by: str, found: SearchResult, rows: np.ndarray) -> str:
    if group_by == "pair":
        return f"{int(found.seed_label[rows[0]])}->{int(found.predicted[rows[0]])}"
    if group_by == "seed_label":
        return f"{int(found.seed_label[rows[0]])}->*"
    return "all"


def _fit_mixture(z: np.ndarray, k: int, prior: float | None, seed: int, covariance_type: str = "full"):
    """Fit a Dirichlet-process Gaussian mixture; returns (assignments, means, covariances, weights)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    bgm = BayesianGaussianMixture(
        n_components=k, covariance_type=covariance_type, weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=prior, max_iter=500, n_init=1, reg_covar=1e-4, init_params="kmeans",
        random_state=seed,
    )
    # the mixture's matrices are tiny (d x d); multi-threaded BLAS only adds overhead (7x slower measured on 2
    # busy cores), so the fit runs single-threaded
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        bgm.fit(z)
    covs = bgm.covariances_
    if covariance_type == "diag":
        covs = np.stack([np.diag(c) for c in covs])
    elif covariance_type == "spherical":
        covs = np.stack([c * np.eye(z.shape[1]) for c in covs])
    return bgm.predict(z), bgm.means_, covs, bgm.weights_


def find_regions(
    found: SearchResult,
    generator: Any,
    classifier: Any,
    *,
    max_components: int = 20,
    min_size: int | None = None,
    min_error_rate: float = 0.5,
    n_check: int = 200,
    n_examples: int = 32,
    weight_concentration_prior: float | None = None,
    group_by: str = "pair",
    covariance_type: str = "diag",
    seed: int = 0,
    class_names: tuple[str, ...] | list[str] | None = None,
    max_shown: int = 5,
    min_score_ratio: float = 0.1,
    support_k: int = 10,
    min_support: float = 0.5,
    min_real_failures: int = 5,
    real_alpha: float = 0.01,
) -> RegionList:
    """Group found errors into ranked misclassification regions (see the module docstring).

    ``found``: the search result (latents ``(m, d)``, standardised here by the search's latent spread).
    ``group_by``: ``"pair"`` (default: one mixture per (seed, predicted) pair), ``"seed_label"`` or ``"none"``
    (one mixture over all errors). Each group gets a Dirichlet-process mixture with at most
    ``min(max_components, group size // min_size)`` components of ``covariance_type``. Every component with at
    least ``min_size`` errors is checked by drawing ``n_check`` latents from it, decoding and classifying them;
    it is kept when at least ``min_error_rate`` of them are not predicted as its seed class. Regions are
    ranked by ``score`` and numbered ``0, 1, ...`` in that order; ``RegionList.components`` records every
    component with the reason it was kept or rejected. ``RegionList.fold`` says how many leading regions are worth
    a label (at most ``max_shown``, score at least ``min_score_ratio`` of the top one; :func:`fold_regions`) and
    ``RegionList.fold_reasons()`` why each other region is below the fold.

    ``support_k`` / ``min_support``: when the search kept the seeds' codes and labels (``found.seed_latent``,
    ``found.seed_labels``), each drawn sample is checked against its ``support_k`` nearest labelled seeds
    (standardised latent space): ``support`` is the share of samples whose neighbours' majority label is the
    region's seed class (what the classifier should have said). It multiplies the score, and a region below
    ``min_support`` is ranked after the others and stays below the fold (see the module docstring).

    ``min_real_failures`` / ``real_alpha``: with the seeds' predictions (``found.seed_predicted``) a region is
    *backed by real failures* when its 90% ellipsoid holds at least ``min_real_failures`` labelled seeds of its
    seed class that the classifier predicts as its predicted class, at a share significantly above the
    classifier's error rate on all seeds (one-sided binomial test, level ``real_alpha``). When any region is,
    those lead the ranking and only they are above the fold; the others stay listed below it with the reason.
    """
    if not isinstance(found, SearchResult):
        raise FailsightInputError(
            f"found must be the SearchResult returned by Defuse.search / search_errors, got {type(found).__name__}."
        )
    generator = check_generator(generator)
    classifier = check_classifier(classifier)
    max_components = check_int(max_components, "max_components")
    n_check = check_int(n_check, "n_check", minimum=10)
    n_examples = check_int(n_examples, "n_examples")
    seed = check_int(seed, "seed", minimum=0)
    min_error_rate = check_fraction(min_error_rate, "min_error_rate", open_low=False, open_high=False)
    m = found.n_found
    if min_size is None:
        min_size = max(10, math.ceil(0.01 * m))
    min_size = check_int(min_size, "min_size", minimum=2)
    if m == 0:
        raise FailsightInputError(
            f"the search found no errors ({found.n_tried} samples tried at radius {found.radius:g}), so there are "
            "no regions to find; search again with a larger radius or more samples per seed."
        )
    if m < min_size:
        raise FailsightInputError(
            f"the search found only {m} errors, fewer than min_size={min_size}; search with a larger radius or "
            "more samples per seed, or lower min_size."
        )
    names = tuple(class_names) if class_names is not None else None
    scale = np.asarray(found.latent_scale, dtype=np.float64)
    zs = found.latent.astype(np.float64) / scale
    d = zs.shape[1]
    if covariance_type not in ("full", "diag", "spherical"):
        raise FailsightInputError(f"covariance_type must be 'full', 'diag' or 'spherical', got {covariance_type!r}.")
    if group_by not in ("pair", "seed_label", "none"):
        raise FailsightInputError(f"group_by must be 'pair', 'seed_label' or 'none', got {group_by!r}.")
    if group_by == "pair":
        keys = found.seed_label * (int(found.predicted.max()) + 1) + found.predicted
    elif group_by == "seed_label":
        keys = found.seed_label
    else:
        keys = np.zeros(m, dtype=np.int64)
    groups = [(_group_name(group_by, found, rows), rows) for rows in _split_rows(keys)]
    rng = np.random.default_rng(seed)
    # how one-sided each confusion is: a -> b errors / (a -> b + b -> a errors) over the whole search
    k_cls = int(max(found.seed_label.max(), found.predicted.max())) + 1
    confusion = np.zeros((k_cls, k_cls), dtype=np.int64)
    np.add.at(confusion, (found.seed_label, found.predicted), 1)

    support_k = check_int(support_k, "support_k")
    min_support = check_fraction(min_support, "min_support", open_low=False, open_high=False)
    ref = _reference(found, scale, support_k)
    min_real_failures = check_int(min_real_failures, "min_real_failures", minimum=1)
    real_alpha = check_fraction(real_alpha, "real_alpha")
    real = _real_reference(found)

    candidates: list[dict[str, Any]] = []
    n_used = 0
    for g, rows in groups:  # loop over groups (pairs or classes), not samples
        if len(rows) < min_size:
            pair, purity, _ = _mode_pair(found.seed_label[rows], found.predicted[rows])
            candidates.append({"component": f"{g}", "size": len(rows), "dominant_pair": pair, "purity": purity,
                               "weight": 1.0, "kept": False, "error_rate": None,
                               "reason": f"fewer than min_size={min_size} errors in this group"})
            continue
        # at most one component per min_size errors: smaller ones could never become regions
        k = min(max_components, max(1, len(rows) // min_size))
        assign, means, covs, weights = _fit_mixture(zs[rows], k, weight_concentration_prior, seed, covariance_type)
        comps = np.unique(assign)
        n_used += len(comps)
        for c in comps:  # loop over mixture components (<= max_components), not samples
            members = rows[assign == c]
            pair, purity, table = _mode_pair(found.seed_label[members], found.predicted[members])
            info: dict[str, Any] = {"component": f"{g}#{int(c)}", "size": len(members),
                                    "dominant_pair": pair, "purity": purity, "weight": float(weights[c]),
                                    "confidence": float(found.confidence[members].mean()),
                                    "directionality": float(confusion[pair] / (confusion[pair] + confusion[pair[::-1]]))}
            if len(members) < min_size:
                info.update(kept=False, reason=f"fewer than min_size={min_size} errors", error_rate=None)
                candidates.append(info)
                continue
            mean = means[c] * scale
            cov = covs[c] * np.outer(scale, scale)
            cov = 0.5 * (cov + cov.T) + 1e-9 * np.eye(d)
            z = rng.multivariate_normal(mean, cov, size=n_check, method="cholesky").astype(np.float32)
            xs = check_images(generator.decode(z), "generator.decode(z)", check_range=False)
            pred, _ = classify(classifier, xs)
            err = float(np.mean(pred != pair[0]))
            info.update(error_rate=err, pair_rate=float(np.mean(pred == pair[1])),
                        support=None if ref is None else _support(ref, z / scale, pair[0]),
                        **_real_evidence(real, mean, cov, pair, min_real_failures, real_alpha))
            if err < min_error_rate:
                info.update(kept=False, reason=f"error rate of drawn samples {err:.2f} < min_error_rate={min_error_rate}")
            else:
                info.update(kept=True, reason="")
                info["_payload"] = (mean, cov, members, xs[:n_examples], pred[:n_examples], table)
            candidates.append(info)

    kept = [c for c in candidates if c["kept"]]
    for c in kept:
        c["score"] = c["size"] * c["purity"] * c["pair_rate"] * c["directionality"] * (
            1.0 if c["support"] is None else c["support"])
    # regions real failures back lead; regions the labelled seeds do not back go after those they do, so the
    # fold stays a prefix of the ranking
    any_real = any(c["real_backed"] for c in kept)
    kept.sort(key=lambda c: (not (any_real and c["real_backed"]),
                             c["support"] is not None and c["support"] < min_support, -c["score"],
                             str(c["component"])))
    regions = []
    for rid, c in enumerate(kept):
        mean, cov, members, ex, ex_pred, table = c.pop("_payload")
        c["region_id"] = rid
        regions.append(Region(
            id=rid, size=c["size"], error_rate=c["error_rate"], dominant_pair=c["dominant_pair"],
            purity=c["purity"], pair_rate=c["pair_rate"], confidence=c["confidence"],
            directionality=c["directionality"], score=c["score"],
            weight=c["weight"],
            n_checked=n_check, pair_counts=table, mean=mean, covariance=cov, member_index=members,
            examples=ex, example_predictions=ex_pred, seed=seed, class_names=names, support=c["support"],
            real_failures=c["real_failures"], real_seeds=c["real_seeds"], real_backed=c["real_backed"],
            generator=generator,
        ))
    candidates.sort(key=lambda c: -c["size"])
    fold, below = fold_regions([r.score for r in regions], max_shown=max_shown, min_score_ratio=min_score_ratio,
                               support=[r.support for r in regions], min_support=min_support,
                               real=[(r.real_backed, r.real_failures, r.real_seeds) for r in regions] if any_real
                               else None)
    params = {"max_components": max_components, "min_size": min_size, "min_error_rate": min_error_rate,
              "n_check": n_check, "n_found": m, "n_components_used": n_used, "group_by": group_by, "seed": seed,
              "max_shown": max_shown, "min_score_ratio": min_score_ratio, "fold": fold,
              "support_k": support_k, "min_support": min_support if ref is not None else None,
              "min_real_failures": min_real_failures if real is not None else None,
              "real_alpha": real_alpha if real is not None else None,
              "below_fold": {str(regions[i].id): why for i, why in below.items()}}
    return RegionList(regions, candidates, params)


def _reference(found: SearchResult, scale: np.ndarray, k: int) -> tuple[Any, np.ndarray, int] | None:
    """Nearest-neighbour index over the labelled seed codes (standardised), or ``None`` without them."""
    z, y = getattr(found, "seed_latent", None), getattr(found, "seed_labels", None)
    if z is None or y is None or len(y) <= k:
        return None
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k).fit(np.asarray(z, dtype=np.float64) / scale), np.asarray(y), k


def _support(ref: tuple[Any, np.ndarray, int], zq: np.ndarray, seed_class: int) -> float:
    """Share of samples (standardised codes ``zq`` ``(n, d)``) whose ``k`` nearest labelled seeds vote, by
    majority, for ``seed_class``: the labelled data say the sample still shows that class."""
    nn_index, y, k = ref
    idx = nn_index.kneighbors(np.asarray(zq, dtype=np.float64), n_neighbors=k, return_distance=False)
    lab = y[idx]  # (n, k)
    counts = np.zeros((len(lab), int(max(y.max(), seed_class)) + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(lab)), k), lab.ravel()), 1)
    return float(np.mean(counts.argmax(1) == seed_class))


def mahalanobis2(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance ``(n,)`` of codes ``z`` ``(n, d)`` to a Gaussian ``mean`` ``(d,)``, ``cov``
    ``(d, d)`` (a region's ellipsoid at quantile q is ``m2 <= chi2.ppf(q, d)``)."""
    chol = np.linalg.cholesky(cov)
    return np.sum(np.linalg.solve(chol, (np.asarray(z, dtype=np.float64) - mean).T) ** 2, axis=0)


def _real_reference(found: SearchResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
    """Seed codes ``(n, d)``, labels, the classifier's predictions and its error rate on them, or ``None``."""
    z, y, p = (getattr(found, k, None) for k in ("seed_latent", "seed_labels", "seed_predicted"))
    if z is None or y is None or p is None or len(y) == 0:
        return None
    y, p = np.asarray(y), np.asarray(p)
    return np.asarray(z, dtype=np.float64), y, p, float(np.mean(p != y))


def _real_evidence(real: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None, mean: np.ndarray,
                   cov: np.ndarray, pair: tuple[int, int], min_failures: int, alpha: float) -> dict[str, Any]:
    """Labelled seeds of ``pair[0]`` inside the component's 90% ellipsoid, how many the classifier predicts as
    ``pair[1]``, and whether that share is significantly above its error rate on all seeds."""
    if real is None:
        return {"real_failures": None, "real_seeds": None, "real_backed": None}
    from scipy.stats import binom, chi2

    z, y, p, base = real
    m2 = mahalanobis2(z, mean, cov)
    inside = (m2 <= chi2.ppf(0.9, z.shape[1])) & (y == pair[0])
    n, k = int(inside.sum()), int(np.sum(inside & (p == pair[1])))
    backed = k >= min_failures and float(binom.sf(k - 1, n, min(max(base, 1e-6), 1.0))) < alpha
    return {"real_failures": k, "real_seeds": n, "real_backed": bool(backed)}


def fold_regions(scores: Sequence[float], *, max_shown: int = 5, min_score_ratio: float = 0.1,
                 support: Sequence[float | None] | None = None, min_support: float = 0.0,
                 real: Sequence[tuple[bool | None, int | None, int | None]] | None = None) -> tuple[int, dict]:
    """Where the fold falls in a ranked list of region ``scores`` (best first): the leading regions whose score is
    at least ``min_score_ratio`` times the top score, at most ``max_shown`` of them. Returns ``(fold, {index:
    reason})`` for the regions below it.

    Why: a person labels the top of the list; ``score`` counts the found errors of a region's failure weighted
    by how reliably and how one-sidedly it fails, so a region with a tenth of the top score holds a tenth of
    the evidence - usually a crumb of a boundary two classes share rather than a bug, and not worth a label
    before the top ones are fixed. Five is what one sitting of labelling takes; the rest stay listed with their
    reason, not dropped.

    ``real`` (``(backed, failures, seeds)`` per region, or ``None``): when given, only regions backed by real
    failures are above the fold (see :func:`find_regions`); the ranking puts them first."""
    max_shown = check_int(max_shown, "max_shown", minimum=0)
    if not scores:
        return 0, {}
    top = float(scores[0])
    fold = 0
    below: dict[int, str] = {}
    for i, sc in enumerate(scores):
        sup = support[i] if support is not None else None
        if real is not None and not real[i][0]:
            below[i] = (f"{real[i][1]} of the {real[i][2]} labelled seeds of its class inside it are real failures "
                        "of this kind - not significantly more than the classifier's error rate elsewhere, while "
                        "regions above the fold are seen failing on real images")
        elif sup is not None and sup < min_support:
            below[i] = (f"only {sup:.0%} of its samples sit among labelled seeds of the class it should show "
                        f"(< {min_support:.0%}): more likely the generator drifting to another class than a bug")
        elif top > 0 and sc < min_score_ratio * top:
            below[i] = f"score {sc:.1f} is {sc / top:.0%} of the top region's (< {min_score_ratio:.0%})"
        elif fold >= max_shown:
            below[i] = f"beyond the first {max_shown} regions (rank {i + 1})"
        elif not below:
            fold += 1
    return fold, below


def save_regions(regions: Sequence[Region], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write regions (their Gaussians, statistics and example images; not the generator) to an ``.npz`` file,
    so a later session — e.g. the one that reads the filled-in labels — gets exactly the same regions back
    with :func:`load_regions`. Refuses to overwrite an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FailsightInputError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
    meta = {"format": "failsight.defuse.regions/1",
            "regions": [to_jsonable({k: getattr(r, k) for k in _SCALARS}) for r in regions],
            "components": to_jsonable(getattr(regions, "components", [])),
            "params": to_jsonable(getattr(regions, "params", {}))}
    arrays = {f"{k}_{i}": np.asarray(getattr(r, k)) for i, r in enumerate(regions) for k in _ARRAYS}
    from failsight._io import atomic_open

    with atomic_open(path, "wb", force=overwrite) as fh:
        np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)
    return path


def load_regions(path: str | os.PathLike, generator: Any) -> RegionList:
    """Read regions written by :func:`save_regions` and attach ``generator`` (the one they were found with)
    so ``region.sample(n)`` works again."""
    generator = check_generator(generator)
    path = Path(path)
    if not path.exists():
        raise FailsightInputError(f"no regions file at {str(path)!r}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except Exception as exc:
        raise FailsightInputError(f"{str(path)!r} is not a regions file written by save_regions(): {exc}") from exc
    if meta.get("format") != "failsight.defuse.regions/1":
        raise FailsightInputError(f"{str(path)!r} is not a regions file written by save_regions().")
    regions = []
    for i, m in enumerate(meta["regions"]):
        m["dominant_pair"] = tuple(m["dominant_pair"])
        m["pair_counts"] = [tuple(t) for t in m["pair_counts"]]
        m["class_names"] = tuple(m["class_names"]) if m["class_names"] is not None else None
        regions.append(Region(**m, **{k: arrays[f"{k}_{i}"] for k in _ARRAYS}, generator=generator))
    return RegionList(regions, meta["components"], meta["params"])
