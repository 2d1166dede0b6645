"""A small convolutional classifier and a seeded, deterministic CPU training loop.

``SmallCNN`` maps images ``(n, c, h, w)`` (8×8 up to 64×64) to logits ``(n, k)``. ``train_classifier``
and ``predict_logits`` work with any torch module that returns logits, so the Defuse fine-tuning and
the robustness pillar reuse them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from failsight._training import BudgetTracker, TrainingBudget, TrainingStop
from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_consistent_length,
    check_int,
    check_labels,
)
from failsight.types import Result

__all__ = ["DEFAULT_CLASSIFIER_BUDGET", "SmallCNN", "TrainingHistory", "predict_logits", "train_classifier"]

#: How long :func:`train_classifier` trains when no ``epochs`` are given: at most 30 epochs (what the 8×8 digits
#: were tuned with: 30 epochs of about 15 steps) and at most 3,000 optimiser steps (192k examples at batch 64:
#: 3.5 epochs of 55k MNIST images instead of 30), stopping earlier once the training loss, averaged over one
#: epoch (clipped to 50..500 steps), improved by less than 0.1% in 5 windows in a row after 80% of the budget.
DEFAULT_CLASSIFIER_BUDGET = TrainingBudget(max_epochs=30.0, max_steps=3000, patience=5, rel_tol=1e-3)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Small CNN for little images; returns logits ``(n, n_classes)`` for input ``(n, in_channels, s, s)``.

    Each stage is two 3×3 conv-BN-ReLU layers followed by 2×2 max-pooling; stages are added until the
    feature map is at most 4×4 (8×8 input: 1 stage; 64×64: 4 stages), channels double per stage from
    ``width`` (capped at ``8 * width``). A 2×2 adaptive average pool and a two-layer head with dropout
    follow, so non-power-of-two sizes work too. ``seed`` (optional) makes the weight initialisation
    reproducible without touching the global torch RNG.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 8, width: int = 32,
                 dropout: float = 0.2, seed: int | None = None) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels")
        n_classes = check_int(n_classes, "n_classes", minimum=2)
        image_size = check_int(image_size, "image_size", minimum=4)
        width = check_int(width, "width")
        if image_size > 256:
            raise FailsightInputError(
                f"image_size={image_size} is too large for SmallCNN (built for 8..64 pixels); "
                "resize the images or use a larger architecture."
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise FailsightInputError(f"dropout must lie in [0, 1), got {dropout!r}.")
        self.in_channels, self.n_classes, self.image_size, self.width = in_channels, n_classes, image_size, width
        if seed is None:
            self._build(float(dropout))
        else:  # seeded init on a forked RNG: reproducible, and the caller's torch RNG is left as it was
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self._build(float(dropout))

    def _build(self, dropout: float) -> None:
        layers: list[nn.Module] = []
        c, size = self.in_channels, self.image_size
        out = self.width
        while True:
            layers += [_conv_block(c, out), _conv_block(out, out)]
            c = out
            if size <= 4:
                break
            layers.append(nn.MaxPool2d(2))
            size = size // 2
            if size <= 4:
                break
            out = min(out * 2, 8 * self.width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        hidden = max(64, 2 * c)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * c, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, self.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float ``(n, in_channels, h, w)`` → logits ``(n, n_classes)``."""
        return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class TrainingHistory(Result):
    """Per-epoch training record. Lists have one entry per epoch (the last one may be partial when a step budget
    or the convergence rule stopped the run mid-epoch); ``val_*`` are empty when no validation data was given.
    ``stop`` says why and when training stopped (:class:`~failsight._training.TrainingStop`)."""

    train_loss: list[float]
    train_accuracy: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    epochs: int
    seconds: float
    seed: int
    lr: float
    batch_size: int
    weight_decay: float
    stop: TrainingStop | None = None

    @property
    def final_val_accuracy(self) -> float | None:
        """Validation accuracy after the last epoch (``None`` without validation data)."""
        return self.val_accuracy[-1] if self.val_accuracy else None


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_images(x: Any, name: str) -> np.ndarray:
    arr = as_float_array(x, name, ndim=(2, 3, 4))
    if arr.ndim == 3:  # (n, h, w): one channel
        arr = arr[:, None]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise FailsightInputError(
            f"model must be a torch.nn.Module returning logits, got {type(model).__name__}; "
            "wrap other models in an nn.Module or use their own predict function."
        )
    return model


def predict_logits(model: nn.Module, x: Any, batch_size: int = 1024) -> np.ndarray:
    """Run ``model`` in eval mode without gradients on ``x`` ``(n, c, h, w)`` (or ``(n, d)`` for MLPs).

    Returns float32 logits ``(n, k)``. The model's train/eval mode is restored afterwards.
    """
    model = _check_model(model)
    batch_size = check_int(batch_size, "batch_size")
    arr = as_float_array(x, "x", ndim=(2, 3, 4))
    if arr.ndim == 3:
        arr = arr[:, None]
    xt = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = [model(xt[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(xt), batch_size)]
    finally:
        model.train(was_training)
    logits = torch.cat(outs).numpy()
    if logits.ndim != 2:
        raise FailsightInputError(
            f"model returned an output of shape {tuple(logits.shape)}; it must return logits (n, k)."
        )
    return logits


def _progress(enabled: bool, label: str = "training"):
    """Progress of a training loop: a rich bar in a terminal, log lines on stderr otherwise (see
    :mod:`failsight.progress`)."""
    from failsight.progress import progress_bar

    return progress_bar(label, enabled)


def train_classifier(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    epochs: int | None = None,
    budget: TrainingBudget | None = None,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    x_val: Any = None,
    y_val: Any = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> TrainingHistory:
    """Train ``model`` (any module returning logits) in place with AdamW, cross-entropy and a cosine
    learning-rate schedule.

    How long: ``epochs`` gives exactly that many passes over the data; otherwise ``budget`` (a
    :class:`~failsight._training.TrainingBudget`, default :data:`DEFAULT_CLASSIFIER_BUDGET`) bounds the optimiser
    steps by an epoch cap and a step cap (so the cost stops growing with the data) and stops early once the
    training loss stops improving; the learning-rate schedule is planned over the step budget. Give one of the two.

    ``x`` float ``(n, c, h, w)``, ``y`` int ``(n,)``; optional ``x_val``/``y_val`` are evaluated after
    every epoch. Shuffling and dropout are driven by ``seed`` (the global torch RNG is left untouched),
    so the same seed, model initialisation and data give the same weights on CPU. Shows a rich progress
    bar on stderr when ``progress``. ``num_threads`` sets torch's intra-op threads for the duration of
    the call (restored afterwards); ``1`` is fastest for small models on a busy machine, where several
    threads per process oversubscribe the cores. The model is left in eval mode. Returns a
    :class:`TrainingHistory`.
    """
    model = _check_model(model)
    if epochs is not None and budget is not None:
        raise FailsightInputError("pass epochs (a fixed number of passes) or budget (a TrainingBudget), not both.")
    if epochs is not None:
        budget = TrainingBudget.epochs(check_int(epochs, "epochs"))
    elif budget is None:
        budget = DEFAULT_CLASSIFIER_BUDGET
    elif not isinstance(budget, TrainingBudget):
        raise FailsightInputError(f"budget must be a failsight TrainingBudget, got {type(budget).__name__}.")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads")
    if not (math.isfinite(lr) and lr > 0):
        raise FailsightInputError(f"lr must be a positive number, got {lr!r}.")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise FailsightInputError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    xa = _as_images(x, "x")
    ya = check_labels(y, name="y")
    check_consistent_length(xa, ya, names=("x", "y"))
    has_val = x_val is not None or y_val is not None
    if has_val:
        if x_val is None or y_val is None:
            raise FailsightInputError("pass both x_val and y_val, or neither.")
        xv = _as_images(x_val, "x_val")
        yv = check_labels(y_val, name="y_val")
        check_consistent_length(xv, yv, names=("x_val", "y_val"))
    n_out = getattr(model, "n_classes", None)
    if n_out is not None and int(ya.max()) >= n_out:
        raise FailsightInputError(
            f"y has label {int(ya.max())} but the model has only {n_out} outputs; "
            "build the model with n_classes = number of classes."
        )
    in_ch = getattr(model, "in_channels", None)
    if in_ch is not None and xa.shape[1] != in_ch:
        raise FailsightInputError(
            f"x has {xa.shape[1]} channel(s) but the model expects {in_ch}; pass images as (n, {in_ch}, h, w)."
        )

    device = _model_device(model)
    xt = torch.from_numpy(xa)
    yt = torch.from_numpy(ya)
    n = len(yt)
    plan = budget.plan(n, batch_size)
    tracker = BudgetTracker(plan)
    total_steps = plan.schedule_steps
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                pct_start=0.15, anneal_strategy="cos")
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [], "val_loss": [], "val_accuracy": []}
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    with torch.random.fork_rng(devices=[]), _progress(progress) as bar:
        torch.manual_seed(seed)  # dropout and other stochastic layers; restored on exit
        task = bar.add_task("train", total=plan.max_steps, info="")
        try:
            while not tracker.done:
                model.train()
                perm = torch.randperm(n, generator=gen)
                loss_sum = torch.zeros((), dtype=torch.float64)
                correct = seen = 0
                for i in range(0, n, batch_size):
                    idx = perm[i:i + batch_size]
                    xb, yb = xt[idx].to(device), yt[idx].to(device)
                    opt.zero_grad(set_to_none=True)
                    out = model(xb)
                    loss = loss_fn(out, yb)
                    loss.backward()
                    opt.step()
                    if sched.last_epoch < total_steps:  # OneCycleLR refuses steps past its plan
                        sched.step()
                    loss_sum += loss.detach().double().cpu() * len(idx)
                    correct += int((out.argmax(1) == yb).sum())
                    seen += len(idx)
                    if tracker.step(loss.detach()):
                        break
                hist["train_loss"].append(float(loss_sum) / max(seen, 1))
                hist["train_accuracy"].append(correct / max(seen, 1))
                info = f"loss {hist['train_loss'][-1]:.3f}"
                if has_val:
                    lv = torch.from_numpy(predict_logits(model, xv))
                    hist["val_loss"].append(float(loss_fn(lv, torch.from_numpy(yv))))
                    hist["val_accuracy"].append(float((lv.argmax(1).numpy() == yv).mean()))
                    info += f"  val acc {hist['val_accuracy'][-1]:.3f}"
                bar.update(task, advance=math.ceil(seen / batch_size), info=info)
        finally:
            model.eval()
            torch.set_num_threads(threads_before)
    return TrainingHistory(
        **hist, epochs=len(hist["train_loss"]), seconds=time.perf_counter() - t0, seed=seed, lr=float(lr),
        batch_size=batch_size, weight_decay=float(weight_decay), stop=tracker.stop,
    )
