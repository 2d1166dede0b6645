"""A small convolutional VAE used as Defuse's generative model, and the generator protocol.

Defuse needs only two operations from a generator: ``encode(x) -> z`` (images to latent codes) and
``decode(z) -> x`` (latent codes back to images). :class:`VAE` provides them for small images (1 or 3
channels, 8×8 up to 64×64) with a seeded training loop and save/load; any other object with the same two
methods (e.g. a stronger pretrained model) can be plugged into :class:`~failsight.defuse.Defuse` instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from failsight._training import BudgetTracker, TrainingBudget, TrainingStop
from failsight._validate import FailsightInputError, as_float_array, check_int
from failsight.types import Result

__all__ = ["VAE", "Generator", "VAEHistory", "check_generator", "check_images"]

#: Pixel values may exceed [0, 1] by this much (float rounding) before they are rejected.
_RANGE_ATOL = 1e-4


@runtime_checkable
class Generator(Protocol):
    """Anything with ``encode(x (n, c, h, w)) -> z (n, d)`` and ``decode(z (n, d)) -> x (n, c, h, w)``."""

    def encode(self, x: Any) -> Any:  # pragma: no cover - protocol
        ...

    def decode(self, z: Any) -> Any:  # pragma: no cover - protocol
        ...


def check_generator(generator: Any) -> Any:
    """Return ``generator`` if it has callable ``encode`` and ``decode`` methods, else raise."""
    missing = [m for m in ("encode", "decode") if not callable(getattr(generator, m, None))]
    if missing:
        raise FailsightInputError(
            f"generator of type {type(generator).__name__} lacks {' and '.join(missing)}(); pass an object with "
            "encode(x) -> z and decode(z) -> x (e.g. failsight.defuse.VAE), or None to train a VAE with "
            "Defuse.fit_generator(x_train)."
        )
    return generator


def check_images(x: Any, name: str = "x", channels: int | None = None, size: int | None = None,
                 check_range: bool = True) -> np.ndarray:
    """Validate images: float32 ``(n, c, h, w)`` (``(n, h, w)`` is read as one channel), values in [0, 1].

    ``channels``/``size`` (when given) must match what the generator was built for.
    """
    arr = as_float_array(x, name, ndim=(3, 4))
    if arr.ndim == 3:
        arr = arr[:, None]
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    _, c, h, w = arr.shape
    if channels is not None and c != channels:
        hint = " (channels-last input? transpose with x.transpose(0, 3, 1, 2))" if w == channels else ""
        raise FailsightInputError(
            f"{name} has {c} channel(s) (shape {arr.shape}) but the generator expects {channels}{hint}; "
            f"pass images as (n, {channels}, h, w)."
        )
    if size is not None and (h != size or w != size):
        raise FailsightInputError(
            f"{name} holds {h}×{w} images but the generator was built for {size}×{size}; resize the images "
            f"or build the VAE with image_size={h}."
        )
    if check_range:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_RANGE_ATOL or hi > 1 + _RANGE_ATOL:
            raise FailsightInputError(
                f"{name} has pixel values in [{lo:.4g}, {hi:.4g}], but the generator works on images scaled to "
                "[0, 1]; divide by the maximum (e.g. x / 255) and undo any mean/std normalisation first."
            )
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def _n_down(size: int) -> int:
    """Number of stride-2 stages that bring ``size`` down to at most 4."""
    return max(1, math.ceil(math.log2(size / 4)))


@dataclasses.dataclass(frozen=True)
class VAEHistory(Result):
    """Per-epoch training loss of a :class:`VAE` (negative ELBO per image: reconstruction + beta * KL; the
    last epoch may be partial) and ``stop``: why and after how many steps training ended."""

    loss: list[float]
    reconstruction: list[float]
    kl: list[float]
    epochs: int
    seconds: float
    seed: int
    stop: TrainingStop | None = None


class VAE(nn.Module):
    """Convolutional VAE for images ``(n, in_channels, image_size, image_size)`` with values in [0, 1].

    The encoder halves the resolution with stride-2 convolutions until it is at most 4×4 (8×8: one stage,
    64×64: four), channels doubling from ``width`` (capped at ``8 * width``); two linear heads give the
    posterior mean and log-variance of a ``latent_dim``-dimensional code. The decoder mirrors it with
    transposed convolutions and a sigmoid output (Bernoulli likelihood). ``beta`` weights the KL term; the
    default 0.1 (with 16 latent dimensions) keeps reconstructions sharp enough for a classifier to read them
    (96% of reconstructed digits test images are recognised by a reference CNN, vs 91% with 8 dimensions and
    beta 0.5).
    ``seed`` makes the weight initialisation reproducible without touching the global torch RNG.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, latent_dim: int = 16, width: int = 16,
                 beta: float = 0.1, seed: int | None = 0) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels")
        if in_channels not in (1, 3):
            raise FailsightInputError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}.")
        image_size = check_int(image_size, "image_size")
        if not 8 <= image_size <= 64:
            raise FailsightInputError(
                f"image_size must lie in 8..64, got {image_size}; resize the images or plug in your own "
                "generator (any object with encode/decode)."
            )
        latent_dim = check_int(latent_dim, "latent_dim")
        width = check_int(width, "width")
        if not (math.isfinite(beta) and beta > 0):
            raise FailsightInputError(f"beta must be a positive number, got {beta!r}.")
        self.config = {"in_channels": in_channels, "image_size": image_size, "latent_dim": latent_dim,
                       "width": width, "beta": float(beta)}
        self.in_channels, self.image_size, self.latent_dim, self.beta = in_channels, image_size, latent_dim, beta
        n_down = _n_down(image_size)
        chans = [min(width * 2**i, 8 * width) for i in range(n_down)]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for out in chans:
            enc += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        self.base = math.ceil(image_size / 2**n_down)
        self.up_size = self.base * 2**n_down
        if self.up_size != image_size:  # pad the input so the encoder sees a multiple of 2**n_down
            self._pad = self.up_size - image_size
        else:
            self._pad = 0
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = c * self.base * self.base
        hidden = max(128, 4 * latent_dim)
        self.enc_fc = nn.Sequential(nn.Linear(flat, hidden), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.dec_fc = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, flat),
                                    nn.LeakyReLU(0.2))
        self._dec_shape = (c, self.base, self.base)
        dec: list[nn.Module] = []
        for out in [*reversed(chans[:-1]), width]:
            dec += [nn.ConvTranspose2d(c, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        dec += [nn.Conv2d(c, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                for m in self.modules():
                    if hasattr(m, "reset_parameters") and m is not self:
                        m.reset_parameters()
        self.eval()

    # ----------------------------------------------------------------------------------------- torch
    def encode_t(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor ``(n, c, s, s)`` → posterior mean and log-variance, each ``(n, latent_dim)``."""
        if self._pad:
            x = F.pad(x, (0, self._pad, 0, self._pad))
        h = self.enc_fc(self.encoder(x))
        return self.mu(h), self.logvar(h).clamp(-12.0, 8.0)

    def decode_logits_t(self, z: torch.Tensor) -> torch.Tensor:
        """Tensor ``(n, latent_dim)`` → pixel logits ``(n, c, s, s)``."""
        h = self.dec_fc(z).view(-1, *self._dec_shape)
        out = self.decoder(h)
        if self._pad:
            out = out[..., : self.image_size, : self.image_size]
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (pixel logits of a reconstruction from a sampled code, mean, log-variance)."""
        mu, logvar = self.encode_t(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_logits_t(z), mu, logvar

    # ----------------------------------------------------------------------------------------- numpy
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: Any, batch_size: int = 2048) -> np.ndarray:
        """Images ``(n, c, s, s)`` in [0, 1] → posterior means ``(n, latent_dim)`` (float32)."""
        xa = check_images(x, "x", channels=self.in_channels, size=self.image_size)
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = [self.encode_t(torch.from_numpy(xa[i:i + batch_size]).to(self._device()))[0].cpu()
                       for i in range(0, len(xa), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out).numpy()

    def decode(self, z: Any, batch_size: int = 2048) -> np.ndarray:
        """Latent codes ``(n, latent_dim)`` → images ``(n, c, s, s)`` in [0, 1] (float32)."""
        za = as_float_array(z, "z", ndim=2)
        if za.shape[1] != self.latent_dim:
            raise FailsightInputError(
                f"z has {za.shape[1]} dimensions but the VAE's latent space has {self.latent_dim}."
            )
        zt = torch.from_numpy(np.ascontiguousarray(za, dtype=np.float32))
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = [torch.sigmoid(self.decode_logits_t(zt[i:i + batch_size].to(self._device()))).cpu()
                       for i in range(0, len(zt), batch_size)]
        finally:
            self.train(was)
        return torch.cat(out).numpy()

    def reconstruct(self, x: Any) -> np.ndarray:
        """``decode(encode(x))``: images ``(n, c, s, s)`` → reconstructions of the same shape."""
        return self.decode(self.encode(x))

    def fit(self, x: Any, *, epochs: int | None = None, budget: TrainingBudget | None = None, batch_size: int = 64,
            lr: float = 2e-3, seed: int = 0, progress: bool = True) -> VAEHistory:
        """Train on images ``(n, c, s, s)`` in [0, 1] (in place, on the model's device) with Adam and a cosine
        schedule planned over the step budget.

        How long: ``epochs`` fixes the number of passes (the old behaviour); otherwise ``budget`` (a
        :class:`~failsight._training.TrainingBudget`, default ``TrainingBudget()``: at most 150 epochs and 3,000
        steps, stopping earlier when the loss stops improving) decides, so 1,797 digits get their 150 epochs
        and 55k MNIST images about 3.5. The loss is the negative ELBO per image: summed binary cross-entropy
        plus ``beta`` times the KL divergence to N(0, I). Shuffling and the reparameterisation noise follow
        ``seed`` (the global torch RNG is restored afterwards). Returns a :class:`VAEHistory` (per-epoch
        losses, the last epoch possibly partial, and ``stop``: why training ended); the model is left in eval
        mode.
        """
        xa = check_images(x, "x", channels=self.in_channels, size=self.image_size)
        if epochs is not None and budget is not None:
            raise FailsightInputError("pass epochs or budget, not both.")
        if epochs is not None:
            budget = TrainingBudget.epochs(epochs)
        elif budget is None:
            budget = TrainingBudget()
        elif not isinstance(budget, TrainingBudget):
            raise FailsightInputError(f"budget must be a TrainingBudget, got {type(budget).__name__}.")
        batch_size = check_int(batch_size, "batch_size")
        seed = check_int(seed, "seed", minimum=0)
        if len(xa) < 2:
            raise FailsightInputError(f"need at least 2 images to train the VAE, got {len(xa)}.")
        if not (math.isfinite(lr) and lr > 0):
            raise FailsightInputError(f"lr must be a positive number, got {lr!r}.")
        dev = self._device()
        xt = torch.from_numpy(xa).to(dev)
        n = len(xt)
        plan = budget.plan(n, batch_size)
        tracker = BudgetTracker(plan)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=plan.schedule_steps)
        gen = torch.Generator().manual_seed(seed)
        hist: dict[str, list[float]] = {"loss": [], "reconstruction": [], "kl": []}
        t0 = time.perf_counter()
        total = plan.max_steps or plan.schedule_steps
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
                _progress("training VAE", progress) as bar:
            torch.manual_seed(seed)
            task = bar.add_task("vae", total=total, info="")
            self.train()
            try:
                while not tracker.done:
                    perm = torch.randperm(n, generator=gen).to(dev)
                    sums = torch.zeros(2, dtype=torch.float64, device=dev)
                    seen = 0
                    for i in range(0, n, batch_size):
                        xb = xt[perm[i:i + batch_size]]
                        if len(xb) < 2:  # BatchNorm needs two samples
                            continue
                        logits, mu, logvar = self(xb)
                        rec = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") / len(xb)
                        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(xb)
                        loss = rec + self.beta * kl
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        if sched.last_epoch < plan.schedule_steps:
                            sched.step()
                        sums += torch.stack([rec.detach(), kl.detach()]).double() * len(xb)
                        seen += len(xb)
                        bar.update(task, advance=1)
                        if tracker.step(loss.detach()):
                            break
                    rec_e, kl_e = (sums / max(seen, 1)).tolist()
                    hist["reconstruction"].append(rec_e)
                    hist["kl"].append(kl_e)
                    hist["loss"].append(rec_e + self.beta * kl_e)
                    bar.update(task, info=f"loss {hist['loss'][-1]:.2f}")
            finally:
                self.eval()
        stop = tracker.stop
        return VAEHistory(**hist, epochs=len(hist["loss"]), seconds=time.perf_counter() - t0, seed=seed, stop=stop)

    # ------------------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the configuration and state dict to ``path`` (a torch file); refuses to overwrite an
        existing file unless ``overwrite``."""
        if os.path.exists(path) and not overwrite:
            raise FailsightInputError(f"{os.fspath(path)!r} exists; pass overwrite=True to replace it.")
        from failsight._io import atomic_open

        with atomic_open(path, "wb", force=overwrite) as fh:
            torch.save({"format": "failsight.defuse.VAE/1", "config": dict(self.config),
                        "state_dict": self.state_dict()}, fh)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VAE:
        """Load a VAE written by :meth:`save`; the model comes back in eval mode."""
        if not os.path.exists(path):
            raise FailsightInputError(f"no VAE file at {os.fspath(path)!r}.")
        try:
            blob = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise FailsightInputError(f"{os.fspath(path)!r} is not a VAE file written by VAE.save(): {exc}") from exc
        if not isinstance(blob, dict) or blob.get("format") != "failsight.defuse.VAE/1":
            raise FailsightInputError(f"{os.fspath(path)!r} is not a VAE file written by VAE.save().")
        model = cls(**blob["config"], seed=None)
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return model


def _progress(label: str, enabled: bool):
    """Progress of a Defuse loop: a rich bar in a terminal, log lines on stderr otherwise (see
    :mod:`failsight.progress`)."""
    from failsight.progress import progress_bar

    return progress_bar(label, enabled)
