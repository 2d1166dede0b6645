"""The :class:`Defuse` workflow object: generator → search → regions → labels → correction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from failsight._training import TrainingBudget
from failsight._validate import FailsightInputError, check_int
from failsight.defuse.correct import CorrectionResult, correct
from failsight.defuse.labelers import Labeler, resolve_labels
from failsight.defuse.regions import Region, RegionList, find_regions
from failsight.defuse.search import SearchResult, check_classifier, search_errors
from failsight.defuse.vae import VAE, VAEHistory, check_generator, check_images
from failsight.types import Result

__all__ = ["Defuse", "DefuseResult"]


@dataclasses.dataclass(frozen=True)
class DefuseResult(Result):
    """Everything one Defuse run produced, ready for a report: the search summary, the ranked regions,
    the labels given (region id → class index or ``None`` = discarded) and the correction summary. ``fold``:
    how many leading regions are worth a label first (``None``: all); ``below_fold``: region id → why not."""

    search: SearchResult
    regions: list[Region]
    components: list[dict[str, Any]]
    class_names: tuple[str, ...]
    labels: dict[int, int | None] | None = None
    correction: CorrectionResult | None = None
    notes: tuple[str, ...] = ()
    fold: int | None = None
    below_fold: dict[int, str] = dataclasses.field(default_factory=dict)


class Defuse:
    """Debug a torch classifier beyond its test set (Slack, Rauschmayr, Kenthapadi 2021).

    ``classifier``: a ``torch.nn.Module`` mapping images ``(n, c, h, w)`` to logits ``(n, k)`` (never modified;
    :meth:`correct` returns a fine-tuned copy). ``generator``: any object with ``encode(x) -> z`` and
    ``decode(z) -> x``; ``None`` means "train a :class:`VAE` with :meth:`fit_generator`". ``seed`` drives every
    random step, so the same inputs and seed reproduce the same regions and fix. ``progress`` shows rich
    progress bars on stderr.

    Typical use::

        d = Defuse(model, seed=0).fit_generator(x_train)
        found = d.search(x_val, y_val)
        regions = d.find_regions(found)
        labels = d.label(regions, CallableLabeler(oracle))      # or FileLabeler / PromptLabeler
        fixed, summary = d.correct(regions, labels, x_train, y_train, x_test=x_test, y_test=y_test)
    """

    def __init__(self, classifier: Any, generator: Any = None, seed: int = 0, *,
                 class_names: Sequence[str] | None = None, progress: bool = True) -> None:
        self.classifier: nn.Module = check_classifier(classifier)
        self.generator = check_generator(generator) if generator is not None else None
        self.seed = check_int(seed, "seed", minimum=0)
        self.class_names = tuple(str(c) for c in class_names) if class_names is not None else None
        self.progress = bool(progress)
        self.generator_history_: VAEHistory | None = None

    # ------------------------------------------------------------------------------------- helpers
    def _require_generator(self) -> Any:
        if self.generator is None:
            raise FailsightInputError(
                "Defuse has no generator yet; call fit_generator(x_train) first or pass generator= (any object "
                "with encode/decode)."
            )
        return self.generator

    def _names(self, x_example: Any = None) -> tuple[str, ...]:
        if self.class_names is not None:
            return self.class_names
        k = getattr(self.classifier, "n_classes", None)
        if k is None and x_example is not None:
            from failsight.models.cnn import predict_logits

            k = predict_logits(self.classifier, x_example[:1]).shape[1]
        if k is None:
            raise FailsightInputError("cannot tell the number of classes; pass class_names= to Defuse.")
        self.class_names = tuple(str(i) for i in range(int(k)))
        return self.class_names

    # ------------------------------------------------------------------------------------ the steps
    def fit_generator(self, x_train: Any, *, latent_dim: int = 16, width: int = 16, beta: float = 0.1,
                      epochs: int | None = None, budget: TrainingBudget | None = None, batch_size: int = 64,
                      lr: float = 2e-3, device: str | None = None) -> Defuse:
        """Train a :class:`VAE` on the classifier's training images ``(n, c, s, s)`` in [0, 1] (1 or 3
        channels, 8 ≤ s ≤ 64) and use it as the generator. Training runs by ``budget`` (default
        :class:`~failsight._training.TrainingBudget`: at most 150 epochs and 3,000 steps, earlier when the loss
        stops improving: the 150 epochs the 8×8 digits defaults were tuned with, about 3.5 epochs on 55k MNIST
        images), or exactly ``epochs`` passes when given. ``device``: where it trains (default: the
        classifier's device; CUDA when present and the classifier is there). A lower ``beta`` keeps
        reconstructions sharp enough for the classifier to read. Returns ``self``."""
        x = check_images(x_train, "x_train")
        if x.shape[2] != x.shape[3]:
            raise FailsightInputError(f"the VAE needs square images, got {x.shape[2]}×{x.shape[3]}; crop or pad them.")
        vae = VAE(in_channels=x.shape[1], image_size=x.shape[2], latent_dim=latent_dim, width=width, beta=beta,
                  seed=self.seed)
        vae.to(device if device is not None else self._device())
        self.generator_history_ = vae.fit(x, epochs=epochs, budget=budget, batch_size=batch_size, lr=lr,
                                          seed=self.seed, progress=self.progress)
        self.generator = vae
        return self

    def _device(self) -> Any:
        import torch

        for t in (*self.classifier.parameters(), *self.classifier.buffers()):
            return t.device
        return torch.device("cpu")

    def search(self, x_seed: Any, y_seed: Any, *, n_samples: int = 32, radius: float = 1.0, spread: str = "class",
               batch_size: int = 4096, reconstruction_check: bool = True, max_seeds: int | None = 2000) -> SearchResult:
        """Find misclassified samples around the seeds the classifier gets right; see
        :func:`~failsight.defuse.search.search_errors`. ``x_seed`` ``(n, c, h, w)``, ``y_seed`` ``(n,)`` true
        labels (a labelled validation split is a good choice)."""
        gen = self._require_generator()
        self._names(check_images(x_seed, "x_seed", check_range=False))
        return search_errors(self.classifier, gen, x_seed, y_seed, n_samples=n_samples, radius=radius,
                             spread=spread, batch_size=batch_size, seed=self.seed, progress=self.progress,
                             reconstruction_check=reconstruction_check, max_seeds=max_seeds)

    def find_regions(self, found: SearchResult, *, max_components: int = 20, min_size: int | None = None,
                     min_error_rate: float = 0.5, n_check: int = 200, n_examples: int = 32,
                     group_by: str = "pair", covariance_type: str = "diag", max_shown: int = 5,
                     min_score_ratio: float = 0.1, support_k: int = 10, min_support: float = 0.5,
                     min_real_failures: int = 5, real_alpha: float = 0.01) -> RegionList:
        """Group the found errors into ranked misclassification regions; see
        :func:`~failsight.defuse.regions.find_regions`. Each region has ``id``, ``size``, ``error_rate``,
        ``dominant_pair`` and ``sample(n)``; ``regions.fold`` of them are worth a label first
        (``regions.fold_reasons()`` says why the rest are below the fold); ``support`` checks each region against
        the labelled seeds of the search (``min_support``, ``support_k``); regions the seeds show failing on real
        images lead and, when there are any, are the only ones above the fold (``min_real_failures``,
        ``real_alpha``)."""
        gen = self._require_generator()
        names = self._names(found.images[:1] if isinstance(found, SearchResult) and found.n_found else None)
        return find_regions(found, gen, self.classifier, max_components=max_components, min_size=min_size,
                            min_error_rate=min_error_rate, n_check=n_check, n_examples=n_examples, seed=self.seed,
                            class_names=names, group_by=group_by, covariance_type=covariance_type,
                            max_shown=max_shown, min_score_ratio=min_score_ratio, support_k=support_k,
                            min_support=min_support, min_real_failures=min_real_failures, real_alpha=real_alpha)

    def label(self, regions: Sequence[Region], labeler: Labeler | Any) -> dict[int, int | None]:
        """Ask ``labeler`` (``labeler(regions, class_names)``, e.g. a :class:`CallableLabeler`,
        :class:`FileLabeler` or :class:`PromptLabeler`) for one label per region; returns
        ``{region id: class index or None}`` (``None`` = discard)."""
        if not callable(labeler):
            raise FailsightInputError(
                f"labeler must be callable as labeler(regions, class_names), got {type(labeler).__name__}."
            )
        names = self._names(regions[0].examples[:1] if regions else None)
        return resolve_labels(labeler(list(regions), names), regions, names)

    def correct(self, regions: Sequence[Region], labels: Mapping[Any, Any], x_train: Any, y_train: Any,
                **kwargs: Any) -> tuple[nn.Module, CorrectionResult]:
        """Fine-tune a copy of the classifier on ``x_train``/``y_train`` mixed with samples from the labelled
        regions; returns ``(new_model, summary)``. Keyword arguments (``x_val``, ``y_val``, ``x_test``,
        ``y_test``, ``lambdas``, ``epochs``, ...) go to :func:`~failsight.defuse.correct.correct`."""
        names = self._names(check_images(x_train, "x_train", check_range=False))
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("progress", self.progress)
        kwargs.setdefault("class_names", names)
        return correct(self.classifier, regions, labels, x_train, y_train, **kwargs)

    def result(self, found: SearchResult, regions: RegionList | Sequence[Region],
               labels: Mapping[int, int | None] | None = None,
               correction: CorrectionResult | None = None) -> DefuseResult:
        """Bundle a run's outputs into a :class:`DefuseResult` (what the report section renders)."""
        names = self._names(found.images[:1] if found.n_found else None)
        notes = []
        if not regions:
            notes.append(
                f"No misclassification region passed the filters among {found.n_found} found errors; search "
                "with a larger radius or lower min_size/min_error_rate."
            )
        return DefuseResult(
            search=found, regions=list(regions), components=list(getattr(regions, "components", [])),
            class_names=names, labels=dict(labels) if labels is not None else None, correction=correction,
            notes=tuple(notes), fold=regions.fold if isinstance(regions, RegionList) else None,
            below_fold=regions.fold_reasons() if isinstance(regions, RegionList) else {},
        )
