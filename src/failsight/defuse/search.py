"""Misclassification search: perturb correctly classified seeds in a generator's latent space.

From each seed the classifier gets right, ``n_samples`` latent codes are drawn around the seed's code
(Gaussian noise, ``radius`` times the per-dimension spread of the latent codes), decoded in batches and
classified; every sample whose prediction differs from the seed's label is kept as a found error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_int,
    check_labels,
)
from failsight.defuse.vae import check_generator, check_images
from failsight.types import Result

__all__ = ["SearchResult", "check_classifier", "classify", "latent_spread", "search_errors"]


def check_classifier(classifier: Any) -> nn.Module:
    """Return ``classifier`` if it is a torch module (returning logits), else raise."""
    if not isinstance(classifier, nn.Module):
        raise FailsightInputError(
            f"classifier must be a torch.nn.Module that returns logits (n, k), got {type(classifier).__name__}; "
            "wrap other models in an nn.Module whose forward returns logits."
        )
    return classifier


def classify(classifier: nn.Module, x: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels ``(n,)`` and softmax confidence of the predicted class ``(n,)`` for images ``x``."""
    from failsight.models.cnn import predict_logits

    logits = predict_logits(classifier, x, batch_size=batch_size).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    return pred, p[np.arange(len(pred)), pred]


def latent_spread(z: np.ndarray) -> np.ndarray:
    """Per-dimension standard deviation ``(d,)`` of latent codes ``z`` ``(n, d)`` (floored at 1e-6)."""
    if len(z) < 2:
        raise FailsightInputError(
            "need at least 2 latent codes to measure the latent spread; pass more seeds or give latent_scale."
        )
    return np.maximum(z.std(axis=0, dtype=np.float64), 1e-6)


def _class_cholesky(z: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Cholesky factor of the Ledoit-Wolf covariance of one class's codes; the global diagonal when the class
    has fewer than 3 codes."""
    from sklearn.covariance import ledoit_wolf

    d = z.shape[1]
    if len(z) < 3:
        return np.diag(scale)
    cov = ledoit_wolf(z)[0] + 1e-8 * np.diag(scale**2)
    return np.linalg.cholesky(cov + 1e-12 * np.eye(d))


@dataclasses.dataclass(frozen=True)
class SearchResult(Result):
    """Errors found by :func:`search_errors` (``m`` found errors, latent size ``d``).

    Per-error arrays: ``seed_index`` ``(m,)`` (row of ``x_seed``), ``latent`` ``(m, d)``, ``images``
    ``(m, c, h, w)``, ``seed_label`` ``(m,)``, ``predicted`` ``(m,)`` and ``confidence`` ``(m,)`` (softmax
    probability of the predicted class). ``pairs`` lists ``(seed label, predicted label, count)`` by count.
    ``seed_latent`` ``(n, d)`` / ``seed_labels`` ``(n,)``: the codes and true labels of *all* given seeds (the
    labelled reference :func:`~failsight.defuse.regions.find_regions` checks regions against; ``None`` when
    built elsewhere); ``seed_predicted`` ``(n,)``: the classifier's predictions on them (its real failures).
    """

    seed_index: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    latent: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    images: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    seed_label: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    predicted: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    confidence: np.ndarray = dataclasses.field(metadata={"exclude_json": True})
    latent_scale: np.ndarray
    n_seeds_given: int
    n_seeds_correct: int
    n_seeds_used: int
    n_tried: int
    n_samples: int
    radius: float
    spread: str
    seed: int
    pairs: list[tuple[int, int, int]]
    seed_latent: np.ndarray | None = dataclasses.field(default=None, metadata={"exclude_json": True})
    seed_labels: np.ndarray | None = dataclasses.field(default=None, metadata={"exclude_json": True})
    seed_predicted: np.ndarray | None = dataclasses.field(default=None, metadata={"exclude_json": True})

    @property
    def n_found(self) -> int:
        """Number of errors found."""
        return len(self.seed_index)

    @property
    def error_rate(self) -> float:
        """Fraction of tried perturbations that were misclassified."""
        return self.n_found / self.n_tried if self.n_tried else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-error arrays are left out; counts and pairs are kept)."""
        d = super().to_dict()
        d.update(n_found=self.n_found, error_rate=self.error_rate)
        return d


def _pair_counts(seed_label: np.ndarray, predicted: np.ndarray) -> list[tuple[int, int, int]]:
    if len(seed_label) == 0:
        return []
    pairs, counts = np.unique(np.stack([seed_label, predicted], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def search_errors(
    classifier: Any,
    generator: Any,
    x_seed: Any,
    y_seed: Any,
    *,
    n_samples: int = 32,
    radius: float = 0.5,
    spread: str = "class",
    latent_scale: Any = None,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
    reconstruction_check: bool = True,
    allow_empty: bool = False,
    max_seeds: int | None = 2000,
) -> SearchResult:
    """Search for inputs the classifier gets wrong near correctly classified seeds.

    ``x_seed`` images ``(n, c, h, w)`` in [0, 1] with true labels ``y_seed`` ``(n,)``. Seeds the classifier
    misclassifies are skipped. Each remaining seed's code ``z = generator.encode(x)`` is perturbed
    ``n_samples`` times as ``z + radius * L_y @ N(0, I)``. With ``spread="class"`` (default) ``L_y L_y^T``
    is the (Ledoit-Wolf shrunk) covariance of the codes of all seeds of the seed's class ``y`` — the
    perturbations follow the ways that class really varies, so they move *within* the class more often than
    across to another one; with ``spread="global"`` it is ``diag(latent_scale)^2``, ``latent_scale`` ``(d,)``
    defaulting to the per-dimension spread of all seed codes. Candidates are decoded and classified
    ``batch_size`` at a time. A candidate is an error when its prediction differs from its seed's label. With
    ``reconstruction_check`` (default) seeds whose decoded code is itself misclassified are skipped too:
    their "errors" would show the generator's limits, not the classifier's. Raises
    :class:`FailsightInputError` when nothing is found (unless ``allow_empty``), suggesting a larger radius.
    ``max_seeds`` (default 2,000; ``None`` = all) perturbs a random subset (``seed``) of the correctly classified
    seeds when there are more: the search cost is ``max_seeds * n_samples`` decodes and forward passes (64k, about a
    minute on one core at 28×28) whatever the size of the validation split, while every seed still shapes the
    class covariances. The 1,797 digits never reach the cap.
    """
    classifier = check_classifier(classifier)
    generator = check_generator(generator)
    n_samples = check_int(n_samples, "n_samples")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    radius = float(radius)
    if not (np.isfinite(radius) and radius > 0):
        raise FailsightInputError(f"radius must be a positive number (in units of the latent spread), got {radius!r}.")
    channels = getattr(generator, "in_channels", None)
    size = getattr(generator, "image_size", None)
    x = check_images(x_seed, "x_seed", channels=channels, size=size)
    y = check_labels(y_seed, name="y_seed")
    check_consistent_length(x, y, names=("x_seed", "y_seed"))

    pred, _ = classify(classifier, x)
    ok = np.flatnonzero(pred == y)
    if len(ok) == 0:
        raise FailsightInputError(
            "the classifier gets none of the seed images right, so there is nothing to perturb; check that "
            "y_seed uses the classifier's label encoding and x_seed its preprocessing."
        )
    n_correct = len(ok)
    if max_seeds is not None and len(ok) > check_int(max_seeds, "max_seeds"):
        # own stream: the perturbation noise below stays what it is without the cap
        ok = np.sort(np.random.default_rng([seed, 7211]).choice(ok, size=max_seeds, replace=False))
    z_all = as_float_array(generator.encode(x), "generator.encode(x_seed)", ndim=2).astype(np.float64)
    z0 = z_all[ok]
    if reconstruction_check:
        # a seed whose own reconstruction is already misclassified would only yield generator artefacts
        rec = check_images(generator.decode(z0.astype(np.float32)), "generator.decode(z)", check_range=False)
        good = classify(classifier, rec)[0] == y[ok]
        if not good.any():
            raise FailsightInputError(
                "the classifier misclassifies the generator's reconstruction of every seed, so the generator "
                "cannot represent these images well enough; train it longer or on more data, or pass "
                "reconstruction_check=False."
            )
        ok, z0 = ok[good], z0[good]
    d = z0.shape[1]
    if latent_scale is None:
        scale = latent_spread(z_all)
    else:
        scale = as_float_array(latent_scale, "latent_scale", ndim=1).astype(np.float64)
        if scale.shape != (d,) or (scale <= 0).any():
            raise FailsightInputError(f"latent_scale must be {d} positive numbers (one per latent dimension).")
    if spread not in ("class", "global"):
        raise FailsightInputError(f"spread must be 'class' or 'global', got {spread!r}.")
    # one Cholesky factor per class: perturbations follow the class's own variation ("class") or the
    # per-dimension spread of all codes ("global")
    classes = np.unique(y[ok])
    chol = np.empty((int(y.max()) + 1, d, d))
    chol[:] = np.diag(scale)
    if spread == "class":
        chol[classes] = [_class_cholesky(z_all[y == c], scale) for c in classes]  # loop over classes only

    rng = np.random.default_rng(seed)
    n_total = len(ok) * n_samples
    keep_idx, keep_z, keep_x, keep_pred, keep_conf = [], [], [], [], []
    seeds_per_chunk = max(1, batch_size // n_samples)
    from failsight.defuse.vae import _progress

    with _progress("searching", progress) as bar:
        task = bar.add_task("search", total=n_total, info="")
        found = 0
        for start in range(0, len(ok), seeds_per_chunk):
            rows = np.arange(start, min(start + seeds_per_chunk, len(ok)))
            src = np.repeat(rows, n_samples)
            eps = rng.standard_normal((len(src), d))
            z = z0[src] + radius * np.einsum("nij,nj->ni", chol[y[ok[src]]], eps)
            xs = check_images(generator.decode(z.astype(np.float32)), "generator.decode(z)", check_range=False)
            p, conf = classify(classifier, xs, batch_size=batch_size)
            wrong = np.flatnonzero(p != y[ok[src]])
            keep_idx.append(ok[src[wrong]])
            keep_z.append(z[wrong].astype(np.float32))
            keep_x.append(xs[wrong])
            keep_pred.append(p[wrong])
            keep_conf.append(conf[wrong])
            found += len(wrong)
            bar.update(task, advance=len(src), info=f"{found} errors")

    seed_index = np.concatenate(keep_idx).astype(np.int64)
    if len(seed_index) == 0 and not allow_empty:
        raise FailsightInputError(
            f"the search found no misclassified samples ({n_total} tried from {len(ok)} seeds at radius {radius:g}); "
            f"the classifier may be robust around these seeds. Try a larger radius (e.g. radius={2 * radius:g}) "
            "or more samples per seed (n_samples)."
        )
    seed_label = y[seed_index]
    predicted = np.concatenate(keep_pred).astype(np.int64)
    return SearchResult(
        seed_index=seed_index,
        latent=np.concatenate(keep_z),
        images=np.concatenate(keep_x),
        seed_label=seed_label,
        predicted=predicted,
        confidence=np.concatenate(keep_conf),
        latent_scale=scale,
        n_seeds_given=len(y),
        n_seeds_correct=n_correct,
        n_seeds_used=len(ok),
        n_tried=n_total,
        n_samples=n_samples,
        radius=radius,
        spread=spread,
        seed=seed,
        pairs=_pair_counts(seed_label, predicted),
        seed_latent=z_all.astype(np.float32),
        seed_labels=y,
        seed_predicted=np.asarray(pred, dtype=np.int64),
    )
