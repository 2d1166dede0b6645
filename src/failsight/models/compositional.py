"""A shape / colour / object network with ablation switches, and its seeded CPU training loop.

:class:`CompositionalNet` is a small CNN feature encoder whose ``(g, g)`` output map becomes ``g * g``
spatial tokens, an optional pre-norm self-attention block over those tokens (with learned positional
embeddings), mean pooling, a small shared MLP and three linear heads: ``shape``, ``color`` and the
combined ``object`` (``shape * n_colors + color``). Two switches give the ablations of the shapes ×
colours study:

* ``attention=False`` removes the attention block (and its positional embeddings): tokens are pooled
  straight after the encoder;
* ``frozen_embeddings=True`` freezes the encoder. It is first pretrained on a separate task —
  reconstructing the images through a small decoder (:func:`pretrain_encoder`, no labels) — and then
  kept fixed (weights and batch-norm statistics) while the rest of the network learns the labels.

Zero-shot prediction composes the shape and colour heads: the object score of ``(s, c)`` is
``shape_logit[s] + color_logit[c]``, whose softmax over all ``n_shapes * n_colors`` combinations *is*
the product of the two heads' probabilities (:func:`compose_logits`). So combinations never seen in
training can be predicted: the composed label is simply ``argmax(shape) * n_colors + argmax(color)``.

:func:`train_compositional` trains any subset of the heads, evaluates named evaluation sets after every
epoch (predicted labels per head, kept in the returned history and handed to an optional callback) and
is seeded: same seed, data and switches give the same weights on CPU. With a frozen encoder the token
maps are computed once and cached, so frozen variants train much faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from failsight._threads import limit_threads
from failsight._validate import FailsightInputError, as_float_array, check_int, check_labels
from failsight.models.cnn import _progress
from failsight.types import Result

__all__ = [
    "COMPOSED",
    "HEADS",
    "CompositionalHistory",
    "CompositionalNet",
    "PretrainHistory",
    "compose_logits",
    "compose_predictions",
    "predict_heads",
    "pretrain_encoder",
    "torch_threads",
    "train_compositional",
]

#: Heads of :class:`CompositionalNet`, in the order they are returned.
HEADS: tuple[str, ...] = ("shape", "color", "object")
#: Name of the composed (zero-shot) prediction in :func:`predict_heads` and training histories.
COMPOSED = "composed"


# ============================================================================ building blocks


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _grid_size(image_size: int) -> int:
    """Side of the token grid for an ``image_size`` input (2×2 max-pool, then a stride-2 convolution)."""
    return (image_size // 2 + 1) // 2


class ConvEncoder(nn.Module):
    """``(n, 3, s, s)`` → feature map ``(n, 2 * width, g, g)`` with ``g = ceil(floor(s / 2) / 2)``.

    Three 3×3 conv-BN-ReLU layers: full resolution, then 2×2 max-pooling, stride 2, stride 1. Cheap
    enough to train on two CPU cores; a 32×32 image gives 8×8 = 64 tokens.
    """

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.dim = 2 * width
        self.net = nn.Sequential(_conv(in_channels, width, 1), nn.MaxPool2d(2), _conv(width, 2 * width, 2),
                                 _conv(2 * width, 2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Small decoder for the reconstruction pretext task: ``(n, d, g, g)`` → images ``(n, c, s, s)``."""

    def __init__(self, dim: int, width: int, out_channels: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.ConvTranspose2d(dim, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if out.shape[-1] != self.image_size:
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False)
        return torch.sigmoid(out)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block over ``(n, T, d)`` tokens with learned positional embeddings."""

    def __init__(self, dim: int, tokens: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        x = x + self.pos
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)  # (b, heads, t, d / heads)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


# ============================================================================ the network


class CompositionalNet(nn.Module):
    """Encoder → (optional) self-attention over spatial tokens → mean pool → shape / colour / object heads.

    ``forward(x)`` takes float images ``(n, in_channels, image_size, image_size)`` and returns a dict of
    logits ``{"shape": (n, n_shapes), "color": (n, n_colors), "object": (n, n_objects)}``.

    Parameters
    ----------
    n_shapes, n_colors : sizes of the shape and colour heads.
    n_objects : size of the object head (default ``n_shapes * n_colors``, label ``shape * n_colors +
        color``); a cue-conflict task with one class per shape would use ``n_shapes``.
    image_size : input height = width (>= 8); fixes the number of tokens ``g * g``.
    width : encoder width (the token dimension is ``2 * width``, a multiple of ``heads``).
    attention : keep the self-attention block (``False`` removes it).
    heads : attention heads.
    frozen_embeddings : freeze the encoder; it must be pretrained (:func:`pretrain_encoder`, which
        :func:`train_compositional` runs first when needed) or loaded with :meth:`load_encoder_state`.
    seed : seeds the weight initialisation without touching the global torch RNG.
    """

    def __init__(self, n_shapes: int = 8, n_colors: int = 8, *, n_objects: int | None = None,
                 image_size: int = 32, in_channels: int = 3, width: int = 16, attention: bool = True,
                 heads: int = 2, hidden: int = 128, frozen_embeddings: bool = False,
                 seed: int | None = None) -> None:
        super().__init__()
        self.n_shapes = check_int(n_shapes, "n_shapes", minimum=2)
        self.n_colors = check_int(n_colors, "n_colors", minimum=2)
        self.n_objects = (self.n_shapes * self.n_colors if n_objects is None
                          else check_int(n_objects, "n_objects", minimum=2))
        self.image_size = check_int(image_size, "image_size", minimum=8)
        if self.image_size > 128:
            raise FailsightInputError(
                f"image_size={self.image_size} is too large for CompositionalNet (built for 8..128 pixels); "
                "resize the images."
            )
        self.in_channels = check_int(in_channels, "in_channels")
        self.width = check_int(width, "width", minimum=2)
        self.heads = check_int(heads, "heads")
        hidden = check_int(hidden, "hidden", minimum=2)
        if (2 * self.width) % self.heads:
            raise FailsightInputError(
                f"the token dimension 2 * width = {2 * self.width} must be divisible by heads={self.heads}; "
                "change width or heads."
            )
        self.attention = bool(attention)
        self.frozen_embeddings = bool(frozen_embeddings)
        self.grid = _grid_size(self.image_size)
        self.encoder_pretrained = False
        if seed is None:
            self._build(hidden)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self._build(hidden)
        if self.frozen_embeddings:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def _build(self, hidden: int) -> None:
        self.encoder = ConvEncoder(self.in_channels, self.width)
        d = self.encoder.dim
        self.block = AttentionBlock(d, self.grid * self.grid, self.heads) if self.attention else None
        self.norm = nn.LayerNorm(d)
        self.neck = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True))
        self.shape_head = nn.Linear(hidden, self.n_shapes)
        self.color_head = nn.Linear(hidden, self.n_colors)
        self.object_head = nn.Linear(hidden, self.n_objects)

    @property
    def token_dim(self) -> int:
        """Dimension ``d`` of each spatial token."""
        return self.encoder.dim

    @property
    def head_sizes(self) -> dict[str, int]:
        """Number of outputs of each head."""
        return {"shape": self.n_shapes, "color": self.n_colors, "object": self.n_objects}

    def train(self, mode: bool = True) -> CompositionalNet:
        """Set train/eval mode; a frozen encoder stays in eval mode (its batch-norm statistics are fixed)."""
        super().train(mode)
        if self.frozen_embeddings:
            self.encoder.eval()
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(n, c, s, s)`` → spatial tokens ``(n, g * g, d)``."""
        return self.encoder(x).flatten(2).transpose(1, 2)

    def forward_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Tokens ``(n, g * g, d)`` → logits per head (attention, pooling and heads only)."""
        if self.block is not None:
            tokens = self.block(tokens)
        h = self.neck(self.norm(tokens.mean(dim=1)))
        return {"shape": self.shape_head(h), "color": self.color_head(h), "object": self.object_head(h)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``(n, c, s, s)`` → ``{"shape": (n, S), "color": (n, C), "object": (n, O)}`` logits."""
        return self.forward_tokens(self.encode(x))

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """A copy of the encoder's weights and batch-norm statistics."""
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}

    def load_encoder_state(self, state: Mapping[str, torch.Tensor]) -> CompositionalNet:
        """Load encoder weights (e.g. one pretrained encoder shared by several variants); marks the
        encoder as pretrained."""
        self.encoder.load_state_dict(dict(state))
        self.encoder_pretrained = True
        return self


def compose_logits(shape_logits: Any, color_logits: Any) -> np.ndarray:
    """Object log-probabilities ``(n, S * C)`` composed from the shape ``(n, S)`` and colour ``(n, C)`` heads.

    Entry ``s * C + c`` is ``log p(shape = s) + log p(color = c)``: the product of the heads'
    probabilities, which equals the softmax of ``shape_logit[s] + color_logit[c]`` over all combinations.
    Its argmax is ``argmax(shape) * C + argmax(color)``, so unseen combinations can be predicted.
    """
    a = as_float_array(shape_logits, "shape_logits", ndim=2).astype(np.float64)
    b = as_float_array(color_logits, "color_logits", ndim=2).astype(np.float64)
    if len(a) != len(b):
        raise FailsightInputError(
            f"shape_logits has {len(a)} rows but color_logits has {len(b)}; they must describe the same "
            "images."
        )
    la = a - np.logaddexp.reduce(a, axis=1, keepdims=True)
    lb = b - np.logaddexp.reduce(b, axis=1, keepdims=True)
    return (la[:, :, None] + lb[:, None, :]).reshape(len(a), -1)


def compose_predictions(shape_pred: Any, color_pred: Any, n_colors: int) -> np.ndarray:
    """Composed object labels ``shape * n_colors + color`` from predicted shape and colour labels ``(n,)``."""
    n_colors = check_int(n_colors, "n_colors", minimum=1)
    s = check_labels(shape_pred, name="shape_pred")
    c = check_labels(color_pred, n_classes=n_colors, name="color_pred")
    if len(s) != len(c):
        raise FailsightInputError(
            f"shape_pred has {len(s)} labels but color_pred has {len(c)}; they must match."
        )
    return s * n_colors + c


# ============================================================================ input handling


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch (and BLAS) threads (``None``: leave the setting), restoring it after;
    see :func:`failsight._threads.limit_threads`."""
    with limit_threads(None if n is None else check_int(n, "num_threads")):
        yield


def _check_model(model: Any) -> CompositionalNet:
    if not isinstance(model, CompositionalNet):
        raise FailsightInputError(
            f"model must be a CompositionalNet, got {type(model).__name__}; for single-head models use "
            "failsight.models.train_classifier."
        )
    return model


def _images(x: Any, model: CompositionalNet, name: str) -> np.ndarray:
    if hasattr(x, "images") and hasattr(x, "shape_labels"):  # ShapesData
        x = x.images
    arr = as_float_array(x, name, ndim=4)
    want = (model.in_channels, model.image_size, model.image_size)
    if tuple(arr.shape[1:]) != want:
        raise FailsightInputError(
            f"{name} has shape {arr.shape} but the model expects images (n, {want[0]}, {want[1]}, "
            f"{want[2]}); build the model with image_size={arr.shape[-1]} / in_channels={arr.shape[1]} or "
            "resize the images."
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _targets(data: Any, targets: Mapping[str, Any] | None, model: CompositionalNet,
             n: int) -> dict[str, np.ndarray]:
    if targets is None:
        if not (hasattr(data, "shape_labels") and hasattr(data, "labels")):
            raise FailsightInputError(
                "targets is None, which needs x to be a ShapesData; otherwise pass targets={'shape': ..., "
                "'color': ..., 'object': ...} (any subset of the heads)."
            )
        targets = {"shape": data.shape_labels, "color": data.color_labels, "object": data.labels}
    if not isinstance(targets, Mapping) or len(targets) == 0:
        raise FailsightInputError("targets must be a non-empty dict {head: (n,) labels} with heads from "
                                  f"{list(HEADS)}.")
    out: dict[str, np.ndarray] = {}
    sizes = model.head_sizes
    for head, y in targets.items():
        if head not in sizes:
            raise FailsightInputError(f"unknown head {head!r} in targets; the heads are {list(HEADS)}.")
        lab = check_labels(y, n_classes=sizes[head], name=f"targets[{head!r}]")
        if len(lab) != n:
            raise FailsightInputError(
                f"targets[{head!r}] has {len(lab)} labels but there are {n} images; pass one label per image."
            )
        out[head] = lab
    return out


def _batched(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, batch_size: int) -> list[Any]:
    return [fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def _tokens(model: CompositionalNet, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Encoder tokens of all images (no grad, encoder in its current mode)."""
    with torch.no_grad():
        return torch.cat(_batched(model.encode, x, batch_size))


def _head_outputs(model: CompositionalNet, inp: torch.Tensor, from_tokens: bool,
                  batch_size: int = 512) -> dict[str, torch.Tensor]:
    fwd = model.forward_tokens if from_tokens else model.forward
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            parts = _batched(fwd, inp, batch_size)
    finally:
        model.train(was)
    return {h: torch.cat([p[h] for p in parts]) for h in HEADS}


def _labels_from_outputs(out: Mapping[str, torch.Tensor], n_colors: int) -> dict[str, np.ndarray]:
    lab = {h: out[h].argmax(dim=1).numpy().astype(np.int64) for h in HEADS}
    lab[COMPOSED] = lab["shape"] * n_colors + lab["color"]
    return lab


def predict_heads(model: CompositionalNet, x: Any, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Logits of every head on images ``x`` ``(n, c, s, s)`` (or a ShapesData), in eval mode, no grad.

    Returns ``{"shape": (n, S), "color": (n, C), "object": (n, O), "composed": (n, S * C)}``; ``composed``
    holds the log-probabilities of :func:`compose_logits` (zero-shot object prediction).
    """
    model = _check_model(model)
    batch_size = check_int(batch_size, "batch_size")
    xt = torch.from_numpy(_images(x, model, "x"))
    out = {h: v.float().numpy() for h, v in _head_outputs(model, xt, False, batch_size).items()}
    out[COMPOSED] = compose_logits(out["shape"], out["color"])
    return out


# ============================================================================ results


@dataclasses.dataclass(frozen=True)
class PretrainHistory(Result):
    """Reconstruction pretraining of the encoder: mean squared error per epoch ``(E,)``."""

    loss: list[float]
    epochs: int
    seconds: float
    seed: int


@dataclasses.dataclass(frozen=True, eq=False)
class CompositionalHistory(Result):
    """Per-epoch record of :func:`train_compositional`.

    ``loss[head]`` and ``train_accuracy[head]`` have one entry per epoch for each trained head;
    ``predictions[set][head]`` is an int ``(E, n_set)`` array of predicted labels after each epoch for
    every evaluation set and every head plus ``"composed"`` (zero-shot object label). ``pretrain`` is the
    reconstruction pretraining run by this call (``None`` if none ran).
    """

    loss: dict[str, list[float]]
    train_accuracy: dict[str, list[float]]
    predictions: dict[str, dict[str, np.ndarray]] = dataclasses.field(metadata={"exclude_json": True})
    epochs: int
    seconds: float
    seed: int
    lr: float
    batch_size: int
    weight_decay: float
    attention: bool
    frozen_embeddings: bool
    trainable_parameters: int
    pretrain: PretrainHistory | None = None

    def final_predictions(self, set_name: str) -> dict[str, np.ndarray]:
        """Predicted labels ``(n,)`` per head after the last epoch on one evaluation set."""
        if set_name not in self.predictions:
            raise FailsightInputError(
                f"no evaluation set {set_name!r}; the sets are {list(self.predictions)}."
            )
        return {h: p[-1] for h, p in self.predictions[set_name].items()}


# ============================================================================ training


def _check_common(epochs: int, batch_size: int, lr: float, seed: int) -> tuple[int, int, float, int]:
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    seed = check_int(seed, "seed", minimum=0)
    if not (math.isfinite(lr) and lr > 0):
        raise FailsightInputError(f"lr must be a positive number, got {lr!r}.")
    return epochs, batch_size, float(lr), seed


def pretrain_encoder(
    model: CompositionalNet,
    x: Any,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = False,
) -> PretrainHistory:
    """Pretrain ``model``'s encoder on reconstruction (a separate, label-free task), in place.

    A small decoder (seeded, discarded afterwards) maps the encoder's feature map back to the images
    ``x`` ``(n, c, s, s)`` in [0, 1]; encoder and decoder minimise the mean squared error with AdamW
    and a cosine schedule. The encoder is marked as pretrained; a model built with
    ``frozen_embeddings=True`` keeps it frozen afterwards. Returns a :class:`PretrainHistory`.
    """
    model = _check_model(model)
    epochs, batch_size, lr, seed = _check_common(epochs, batch_size, lr, seed)
    xa = _images(x, model, "x")
    xt = torch.from_numpy(xa)
    n = len(xt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7919)
        decoder = ConvDecoder(model.token_dim, model.width, model.in_channels, model.image_size)
    enc = model.encoder
    params = [*enc.parameters(), *decoder.parameters()]
    steps = epochs * math.ceil(n / batch_size)
    gen = torch.Generator().manual_seed(seed + 104729)
    losses: list[float] = []
    t0 = time.perf_counter()
    enc.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                anneal_strategy="cos")
    try:
        with torch_threads(num_threads), torch.random.fork_rng(devices=[]), _progress(progress) as bar:
            torch.manual_seed(seed)
            task = bar.add_task("pretrain", total=epochs, info="reconstruction")
            enc.train()
            decoder.train()
            for _ in range(epochs):
                perm = torch.randperm(n, generator=gen)
                tot = torch.zeros((), dtype=torch.float64)
                for i in range(0, n, batch_size):
                    xb = xt[perm[i:i + batch_size]]
                    opt.zero_grad(set_to_none=True)
                    loss = F.mse_loss(decoder(enc(xb)), xb)
                    loss.backward()
                    opt.step()
                    sched.step()
                    tot += loss.detach().double() * len(xb)
                losses.append(float(tot) / n)
                bar.update(task, advance=1, info=f"mse {losses[-1]:.4f}")
    finally:
        if model.frozen_embeddings:
            enc.requires_grad_(False)
        model.eval()
    model.encoder_pretrained = True
    return PretrainHistory(losses, epochs, time.perf_counter() - t0, seed)


def train_compositional(
    model: CompositionalNet,
    x: Any,
    targets: Mapping[str, Any] | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    eval_sets: Mapping[str, Any] | None = None,
    callback: Callable[[int, dict[str, dict[str, np.ndarray]], CompositionalNet], Any] | None = None,
    pretrain_epochs: int = 3,
    num_threads: int | None = None,
    progress: bool = False,
) -> CompositionalHistory:
    """Train ``model`` in place on images ``x`` ``(n, c, s, s)`` with one cross-entropy per head.

    Parameters
    ----------
    model : a :class:`CompositionalNet` (its switches decide the variant).
    x : float images ``(n, c, s, s)`` in [0, 1], or a ``ShapesData`` (then ``targets`` defaults to its
        shape, colour and object labels).
    targets : ``{head: (n,) int labels}`` for any subset of ``"shape"``, ``"color"``, ``"object"``; the
        loss is the sum of the given heads' cross-entropies (untrained heads are left as initialised).
    epochs, batch_size, lr, weight_decay : AdamW with a one-cycle cosine schedule.
    seed : drives shuffling (and the pretraining, when it runs); the global torch RNG is left untouched.
    eval_sets : ``{name: images (m, c, s, s) or ShapesData}`` evaluated after every epoch.
    callback : ``callback(epoch, predictions, model)`` after every epoch (``epoch`` from 1), with
        ``predictions[set][head]`` the ``(m,)`` predicted labels of this epoch (heads plus
        ``"composed"``); its return value is ignored.
    pretrain_epochs : reconstruction epochs run first when the model has ``frozen_embeddings`` and an
        encoder that was neither pretrained nor loaded.
    num_threads : torch threads for this call (``None``: unchanged); restored afterwards.
    progress : show a progress bar on stderr.

    Returns
    -------
    CompositionalHistory (the model is left in eval mode).
    """
    model = _check_model(model)
    epochs, batch_size, lr, seed = _check_common(epochs, batch_size, lr, seed)
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise FailsightInputError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    xa = _images(x, model, "x")
    n = len(xa)
    tg = _targets(x, targets, model, n)
    sets: dict[str, np.ndarray] = {}
    for name, data in (eval_sets or {}).items():
        sets[str(name)] = _images(data, model, f"eval_sets[{name!r}]")
    if callback is not None and not callable(callback):
        raise FailsightInputError("callback must be callable as callback(epoch, predictions, model).")

    pre = None
    with torch_threads(num_threads):
        if model.frozen_embeddings and not model.encoder_pretrained:
            pre = pretrain_encoder(model, xa, epochs=pretrain_epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   progress=progress)
        cached = model.frozen_embeddings  # frozen encoder: tokens never change, compute them once
        xt = torch.from_numpy(xa)
        if cached:
            model.eval()
            train_in = _tokens(model, xt)
            eval_in = {k: _tokens(model, torch.from_numpy(v)) for k, v in sets.items()}
        else:
            train_in = xt
            eval_in = {k: torch.from_numpy(v) for k, v in sets.items()}
        fwd = model.forward_tokens if cached else model.forward
        yt = {h: torch.from_numpy(v) for h, v in tg.items()}

        params = [p for p in model.parameters() if p.requires_grad]
        steps = epochs * math.ceil(n / batch_size)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                    anneal_strategy="cos")
        gen = torch.Generator().manual_seed(seed)
        loss_hist: dict[str, list[float]] = {h: [] for h in tg}
        acc_hist: dict[str, list[float]] = {h: [] for h in tg}
        preds: dict[str, dict[str, list[np.ndarray]]] = {k: {h: [] for h in (*HEADS, COMPOSED)} for k in sets}
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]), _progress(progress) as bar:
            torch.manual_seed(seed)
            task = bar.add_task("train", total=epochs, info="")
            try:
                for ep in range(1, epochs + 1):
                    model.train()
                    perm = torch.randperm(n, generator=gen)
                    loss_sum = {h: torch.zeros((), dtype=torch.float64) for h in tg}
                    correct = {h: 0 for h in tg}
                    for i in range(0, n, batch_size):
                        idx = perm[i:i + batch_size]
                        out = fwd(train_in[idx])
                        losses = {h: F.cross_entropy(out[h], yt[h][idx]) for h in tg}
                        total = torch.stack(list(losses.values())).sum()
                        opt.zero_grad(set_to_none=True)
                        total.backward()
                        opt.step()
                        sched.step()
                        for h in tg:
                            loss_sum[h] += losses[h].detach().double() * len(idx)
                            correct[h] += int((out[h].detach().argmax(1) == yt[h][idx]).sum())
                    for h in tg:
                        loss_hist[h].append(float(loss_sum[h]) / n)
                        acc_hist[h].append(correct[h] / n)
                    epoch_preds = {k: _labels_from_outputs(_head_outputs(model, v, cached), model.n_colors)
                                   for k, v in eval_in.items()}
                    for k, d in epoch_preds.items():
                        for h, lab in d.items():
                            preds[k][h].append(lab)
                    if callback is not None:
                        callback(ep, epoch_preds, model)
                    bar.update(task, advance=1, info="loss " + " ".join(
                        f"{h} {loss_hist[h][-1]:.3f}" for h in tg))
            finally:
                model.eval()
    n_params = sum(p.numel() for p in params)
    return CompositionalHistory(
        loss_hist, acc_hist, {k: {h: np.stack(v) for h, v in d.items()} for k, d in preds.items()},
        epochs, time.perf_counter() - t0, seed, lr, batch_size, float(weight_decay), model.attention,
        model.frozen_embeddings, int(n_params), pre,
    )
