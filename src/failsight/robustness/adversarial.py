"""Worst-case robustness: gradient attacks within an ε-ball and the robust-accuracy-vs-ε curve.

Corruptions measure average-case shift; an attack measures the worst case within a budget ``‖x' − x‖ ≤ ε``
(``norm="linf"`` or ``"l2"``), inputs kept in the model's valid range ``bounds``:

* ``"fgsm"`` (Goodfellow et al. 2015): one step of size ε along the gradient's sign (L∞) or direction (L2).
* ``"pgd"`` (Madry et al. 2018): random start in the ball, ``steps`` steps of size ``step_size`` (default
  ``2.5 ε / steps``), projection after each. L2's random start scales a Gaussian direction to radius ``ε·U(0,1)``
  (the torchattacks convention).
* ``"apgd-ce"`` (Croce & Hein 2020, AutoAttack): cross-entropy, step size 2ε halved per sample at checkpoints
  ``w_j = ⌈p_j N⌉`` (``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) when fewer than
  75% of the steps since the last checkpoint raised the loss, or when the step size was not reduced at the last
  checkpoint and the best loss has not improved since; then the iterate restarts from the best point. Momentum
  0.75 on the projected step. Random start: a uniform (L∞) or Gaussian (L2) direction scaled to the ε sphere.

Every attack maximises the per-sample cross-entropy with gradients taken w.r.t. the input only, runs in
batches on the model's device, stops attacking a sample as soon as it is misclassified (success is final: the
returned input is a valid adversarial example) and draws its random starts from ``seed`` per block of 64
samples on the CPU, so results do not depend on the batch size or the device's RNG. ``restarts`` re-run the
attack from new random starts on the samples still correctly classified.

:func:`robust_accuracy` attacks at several ε, carries the samples broken at a smaller ε over to every larger one
(an adversarial example at ε is one at any ε' > ε, so the curve is non-increasing by construction), attaches
exact intervals, and runs the sanity checks that catch broken evaluations (gradient masking, too few steps):
independent attacks per ε on a subsample (a sample broken at ε but not at a larger ε means the attack is
unreliable), FGSM against the multi-step attack (a single step should never win), fewer steps against more,
and a very large ε (accuracy must reach 0). Each failed check becomes a warning in the result.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from failsight._stats import clopper_pearson
from failsight._validate import FailsightInputError, check_int, check_labels, to_numpy
from failsight.types import Interval, Result

__all__ = ["ATTACKS", "AttackResult", "RobustAccuracyCurve", "attack", "robust_accuracy"]

#: Attack methods :func:`attack` knows.
ATTACKS = ("fgsm", "pgd", "apgd-ce")
_NORMS = ("linf", "l2")
_BLOCK = 64  # samples per random-start generator


# ==================================================================================== checking


def _as_torch_model(model: Any) -> Any:
    """The differentiable callable behind ``model``; a clear error for models without gradients."""
    from failsight.models.adapters import ModelAdapter

    if isinstance(model, ModelAdapter):
        if model.kind not in ("torch", "torchscript"):
            raise FailsightInputError(
                f"attacks need input gradients, and a {model.kind} model has none. Attack a torch nn.Module "
                "(or TorchScript module) that returns logits; for an sklearn model, train a torch surrogate and "
                "attack that (a transfer attack).")
        return model.model
    if hasattr(model, "predict_proba") and not isinstance(model, nn.Module):
        raise FailsightInputError(
            f"attacks need input gradients, and {type(model).__name__} (an sklearn-style model) has none. Attack a "
            "torch nn.Module (or TorchScript module) returning logits; for an sklearn model, train a torch "
            "surrogate and attack that (a transfer attack).")
    if not callable(model):
        raise FailsightInputError(f"model must be a torch nn.Module returning logits, got {type(model).__name__}.")
    return model


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return torch.device("cpu"), torch.float32


class _Net:
    """Logits with gradients from a module or callable, in eval mode; probability outputs become log-probs."""

    def __init__(self, model: Any, sample: torch.Tensor) -> None:
        self.model = _as_torch_model(model)
        self.device, self.dtype = _device_dtype(self.model)
        self._modes: list[tuple[nn.Module, bool]] = []
        self._grads: list[tuple[torch.Tensor, bool]] = []
        xs = sample.to(self.device, self.dtype).requires_grad_(True)
        with self:
            try:
                out = self.model(xs)
            except Exception as exc:
                raise FailsightInputError(f"the model failed on a batch of inputs of shape {tuple(xs.shape)}: {exc}") from exc
            if not isinstance(out, torch.Tensor):
                raise FailsightInputError(
                    f"the model returned {type(out).__name__}, not a torch tensor: attacks need its output as a "
                    "differentiable tensor (n, k). Pass the nn.Module itself, not a numpy wrapper.")
            if out.ndim != 2 or out.shape[1] < 2:
                raise FailsightInputError(f"the model returned shape {tuple(out.shape)}; it must return logits (n, k).")
            if not out.requires_grad:
                raise FailsightInputError(
                    "the model's output has no gradient w.r.t. its input (it runs under torch.no_grad / "
                    "inference_mode, detaches, or is not differentiable). Attacks need input gradients: remove the "
                    "no_grad wrapper (a TorchScript module is fine if it keeps gradients).")
            o = out.detach().float()
            self.probs = bool(o.min() >= 0 and o.max() <= 1 and torch.allclose(o.sum(1), torch.ones(len(o)), atol=1e-3))
            self.n_classes = int(out.shape[1])

    def __enter__(self) -> _Net:
        if isinstance(self.model, nn.Module):
            self._modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            # input gradients only: no parameter keeps its graph (saves the backward's weight-gradient work)
            self._grads = [(p, p.requires_grad) for p in self.model.parameters()]
            for p, _ in self._grads:
                p.requires_grad_(False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self._modes:
            m.train(flag)
        for p, flag in self._grads:
            p.requires_grad_(flag)
        self._modes, self._grads = [], []

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.log(out.clamp_min(1e-12)) if self.probs else out


def _check_inputs(x: Any, y: Any, bounds: tuple[float, float]) -> tuple[torch.Tensor, np.ndarray]:
    if isinstance(x, torch.Tensor):
        xt = x.detach().cpu().float()
    else:
        arr = to_numpy(x, "x")
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise FailsightInputError(f"x must be numeric, got dtype {arr.dtype}.")
        xt = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if xt.ndim < 2 or len(xt) == 0:
        raise FailsightInputError(f"x must be a batch (n, ...) of at least one input, got shape {tuple(xt.shape)}.")
    if not torch.isfinite(xt).all():
        raise FailsightInputError("x contains NaN/inf; attacks need finite inputs.")
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise FailsightInputError(f"bounds must be a finite (low, high) with low < high, got {bounds!r}.")
    xmin, xmax = float(xt.min()), float(xt.max())
    if xmin < lo - 1e-6 or xmax > hi + 1e-6:
        raise FailsightInputError(
            f"x has values in [{xmin:.4g}, {xmax:.4g}], outside the declared valid range bounds=({lo:g}, {hi:g}). "
            "Attacks keep inputs in that range, so it must hold the clean inputs: pass bounds=(low, high) matching "
            "the model's input (e.g. normalised images), or attack the unnormalised images with the normalisation "
            "inside the model.")
    yy = check_labels(y, name="y")
    if len(yy) != len(xt):
        raise FailsightInputError(f"x has {len(xt)} inputs but y has {len(yy)} labels; they must match.")
    return xt.clamp(lo, hi), yy


def _check_eps(eps: Any, name: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise FailsightInputError(f"{name} must be a number >= 0, got {eps!r}.") from None
    if not math.isfinite(e) or e < 0:
        raise FailsightInputError(f"{name} must be a finite number >= 0 (the attack budget ‖x' − x‖ ≤ ε), got {eps!r}.")
    return e


# ==================================================================================== attacks


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float, norm: str, lo: float,
             hi: float) -> torch.Tensor:
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-float(eps), float(eps))
    else:
        n = _flat_norm(d)
        d = d * torch.clamp(eps / (n + 1e-12), max=1.0)
    return (x + d).clamp(lo, hi)


def _ascent(g: torch.Tensor, norm: str) -> torch.Tensor:
    return g.sign() if norm == "linf" else g / (_flat_norm(g) + 1e-12)


def _random_start(shape: tuple[int, ...], first: int, seed: int, restart: int, norm: str, uniform_radius: bool
                  ) -> torch.Tensor:
    """Noise for samples ``first..first+n-1``: one CPU generator per block of 64 samples, so independent of
    batching and device. L∞: uniform in [−1, 1]; L2: a unit direction times ``U(0, 1)`` (``uniform_radius``) or 1."""
    n = shape[0]
    out = torch.empty(shape)
    i = 0
    while i < n:
        b = (first + i) // _BLOCK
        off = (first + i) - b * _BLOCK
        take = min(n - i, _BLOCK - off)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, restart, b]).generate_state(1)[0]))
        if norm == "linf":
            block = torch.rand((_BLOCK, *shape[1:]), generator=g) * 2 - 1
        else:
            block = torch.randn((_BLOCK, *shape[1:]), generator=g)
            block = block / (_flat_norm(block) + 1e-12)
            if uniform_radius:
                block = block * torch.rand((_BLOCK,), generator=g).view(-1, *([1] * (len(shape) - 1)))
        out[i:i + take] = block[off:off + take]
        i += take
    return out


def _ce_grad(net: _Net, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss, predictions and input gradient of the summed loss."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = net.logits(x_adv)
    loss = nn.functional.cross_entropy(logits, y, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), logits.detach().argmax(1), g.detach()


def _fgsm(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, lo: float, hi: float) -> torch.Tensor:
    _, _, g = _ce_grad(net, x, y)
    return _project(x + eps * _ascent(g, norm), x, eps, norm, lo, hi)


def _pgd(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, lo: float, hi: float, steps: int,
         step_size: float, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on a batch: ``(x_adv, pred_adv)``, each sample's first misclassified iterate, else its last one.

    Throughput (the hot loop of every attack evaluation): one forward+backward per step on a working set, updated
    in place (L∞: ball ∩ box is the box ``[max(x − ε, lo), min(x + ε, hi)]``, one clamp). A sample that breaks
    is recorded there and then (its iterate is final) but stays in the working set, masked out, until a quarter
    of it has broken: then the set is compacted. So small ε pays no gather/scatter per step and large ε stops
    spending compute on broken samples. No host sync beyond the one ``any()`` per step.
    """
    out = _project(x + eps * start, x, eps, norm, lo, hi)
    pred = torch.empty_like(y)
    xw, x0, yw = out.clone(), x, y
    pos: torch.Tensor | None = None  # batch rows of the working set (None: all, in order)
    live: torch.Tensor | None = None  # working rows not broken yet (None: all)
    if norm == "linf":
        lower, upper = (x - eps).clamp_(min=lo), (x + eps).clamp_(max=hi)
    for _ in range(steps):
        xw.requires_grad_(True)
        logits = net.logits(xw)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, yw, reduction="sum"), xw)
        xw = xw.detach()
        pw = logits.detach().argmax(1)
        broke = pw != yw
        if live is not None:
            broke &= live
        if bool(broke.any()):  # misclassified already: that iterate is the adversarial example
            rows = broke.nonzero().squeeze(1)
            dst = rows if pos is None else pos[rows]
            out[dst], pred[dst] = xw[rows], pw[rows]
            live = ~broke if live is None else live & ~broke
            n_live = int(live.sum())
            if n_live == 0:
                return out, pred
            if n_live <= 0.75 * len(xw):
                keep = live.nonzero().squeeze(1)
                xw, x0, yw, g = xw[keep], x0[keep], yw[keep], g[keep]
                if norm == "linf":
                    lower, upper = lower[keep], upper[keep]
                pos = keep if pos is None else pos[keep]
                live = None
        # g may be an expanded view (a model constant in its input): no in-place op on it
        if norm == "linf":
            xw.add_(g.sign(), alpha=step_size).clamp_(lower, upper)
        else:
            xw.add_(g / _flat_norm(g).add_(1e-12), alpha=step_size).sub_(x0)
            xw.mul_(torch.clamp(eps / _flat_norm(xw).add_(1e-12), max=1.0)).add_(x0).clamp_(lo, hi)
    with torch.no_grad():
        pw = net.logits(xw).argmax(1)
    rows = torch.arange(len(xw), device=xw.device) if live is None else live.nonzero().squeeze(1)
    dst = rows if pos is None else pos[rows]
    out[dst], pred[dst] = xw[rows], pw[rows]
    return out, pred


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ⌈p_j N⌉`` at which APGD may halve its step size (Croce & Hein 2020, eq. 4)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    ws = (math.ceil(round(q * steps, 9)) for q in p[1:])  # rounded: 0.57 · 100 is 57.000…01 in floats
    return sorted({w for w in ws if 0 < w <= steps})


def _apgd(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, lo: float, hi: float, steps: int,
          start: torch.Tensor, rho: float = 0.75, momentum: float = 0.75) -> torch.Tensor:
    """APGD-CE on a batch; returns the first misclassified iterate of each sample, else its highest-loss one."""
    n = len(x)
    view = (-1, *([1] * (x.ndim - 1)))
    if norm == "linf":  # on the sphere, as AutoAttack: t / ‖t‖∞
        start = start / start.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
    x_adv = _project(x + eps * start, x, eps, norm, lo, hi)
    loss, pred, g = _ce_grad(net, x_adv, y)
    out = x_adv.clone()
    done = pred != y
    x_best, g_best, loss_best = x_adv.clone(), g.clone(), loss.clone()
    eta = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
    checkpoints = _apgd_checkpoints(steps)
    last_w = 0
    n_up = torch.zeros(n, device=x.device)  # steps since the last checkpoint that raised the loss
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
    loss_best_last = loss_best.clone()
    x_prev = x_adv.clone()
    prev_loss = loss.clone()
    for k in range(steps):
        a = momentum if k > 0 else 1.0
        live = ~done
        if not bool(live.any()):
            break
        idx = live.nonzero().squeeze(1)
        xa, xo, xp, gi, ei = x_adv[idx], x[idx], x_prev[idx], g[idx], eta[idx].view(view)
        z = _project(xa + ei * _ascent(gi, norm), xo, eps, norm, lo, hi)
        new = _project(xa + a * (z - xa) + (1 - a) * (xa - xp), xo, eps, norm, lo, hi)
        x_prev[idx] = xa
        x_adv[idx] = new
        li, pi, gn = _ce_grad(net, new, y[idx])
        g[idx] = gn
        broke = pi != y[idx]
        if bool(broke.any()):
            out[idx[broke]] = new[broke]
            done[idx[broke]] = True
        n_up[idx] += (li > prev_loss[idx]).float()
        prev_loss[idx] = li
        better = li > loss_best[idx]
        if bool(better.any()):
            bi = idx[better]
            x_best[bi], g_best[bi], loss_best[bi] = new[better], gn[better], li[better]
        w = k + 1
        if w in checkpoints:
            span = w - last_w
            cond1 = n_up < rho * span
            cond2 = ~reduced_last & (loss_best_last >= loss_best)
            halve = (cond1 | cond2) & ~done
            reduced_last = cond1 | cond2
            loss_best_last = loss_best.clone()
            if bool(halve.any()):
                eta[halve] /= 2.0
                x_adv[halve] = x_best[halve]
                g[halve] = g_best[halve]
                x_prev[halve] = x_best[halve]
            n_up.zero_()
            last_w = w
    still = ~done
    out[still] = x_best[still]
    return out


@dataclasses.dataclass(frozen=True)
class AttackResult(Result):
    """Adversarial inputs and per-sample outcome of one :func:`attack`.

    ``x_adv`` float32 like ``x``; ``success`` bool ``(n,)``: the model misclassifies ``x_adv`` (samples already
    misclassified when clean count as successes with ``x_adv = x``); ``pred_adv`` ``(n,)`` the predictions on
    ``x_adv``; ``perturbation`` ``(n,)`` its ``norm``-distance to ``x`` (≤ ε up to float rounding).
    """

    method: str
    norm: str
    eps: float
    steps: int
    restarts: int
    step_size: float | None
    n: int
    clean_accuracy: float
    robust_accuracy: float
    success_rate: float
    x_adv: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    success: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    pred_adv: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    pred_clean: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})
    perturbation: np.ndarray = dataclasses.field(repr=False, metadata={"exclude_json": True})


def _norm_dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def _check_method(method: str, norm: str) -> tuple[str, str]:
    m = str(method).lower().replace("_", "-")
    if m == "apgd":
        m = "apgd-ce"
    if m not in ATTACKS:
        raise FailsightInputError(f"method must be one of {ATTACKS}, got {method!r}.")
    nm = str(norm).lower().replace("∞", "inf")
    nm = {"inf": "linf", "l-inf": "linf", "linfinity": "linf", "2": "l2"}.get(nm, nm)
    if nm not in _NORMS:
        raise FailsightInputError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    return m, nm


def _default_batch(device: torch.device, x: torch.Tensor) -> int:
    per = int(np.prod(x.shape[1:]))
    base = 4096 if device.type == "cuda" else 512
    return max(16, min(base, int(base * 784 / max(per, 1))))


def _run_attack(net: _Net, xt: torch.Tensor, yt: torch.Tensor, m: str, nm: str, eps: float, steps: int,
                restarts: int, step_size: float | None, seed: int, lo: float, hi: float, batch_size: int,
                offset: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_adv, pred_clean, pred_adv) on CPU for ``xt`` (CPU); ``offset``: global sample indices (for the seeds)."""
    n = len(xt)
    x_adv = xt.clone()
    pred_clean = torch.empty(n, dtype=torch.long)
    pred_adv = torch.empty(n, dtype=torch.long)
    ids = np.arange(n) if offset is None else offset
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        xb = xt[a:b].to(net.device, net.dtype)
        yb = yt[a:b].to(net.device)
        with torch.no_grad():
            pc = net.logits(xb).argmax(1)
        pred_clean[a:b] = pc.cpu()
        adv = xb.clone()
        pred_b = pc.clone()  # predictions on adv, kept up to date (no extra forward pass at the end)
        todo = (pc == yb).nonzero().squeeze(1)
        if eps > 0 and len(todo):
            for r in range(restarts if m != "fgsm" else 1):
                xs, ys = xb[todo], yb[todo]
                if m == "fgsm":
                    cand = _fgsm(net, xs, ys, eps, nm, lo, hi)
                else:
                    # the random start of sample i depends only on (seed, restart, i): batching does not matter
                    gi = ids[a:b][todo.cpu().numpy()]
                    start = _starts(gi, tuple(xs.shape[1:]), seed, r, nm, m == "pgd").to(xs.device, xs.dtype)
                    if m == "pgd":
                        cand, pa = _pgd(net, xs, ys, eps, nm, lo, hi, steps, step_size or 2.5 * eps / steps, start)
                    else:
                        cand = _apgd(net, xs, ys, eps, nm, lo, hi, steps, start)
                adv[todo] = cand
                if m != "pgd":
                    with torch.no_grad():
                        pa = net.logits(cand).argmax(1)
                pred_b[todo] = pa
                todo = todo[pa == ys]
                if len(todo) == 0:
                    break
        pred_adv[a:b] = pred_b.cpu()
        x_adv[a:b] = adv.detach().cpu().to(x_adv.dtype)
    return x_adv, pred_clean, pred_adv


def _starts(gi: np.ndarray, shape: tuple[int, ...], seed: int, r: int, nm: str, uniform_radius: bool) -> torch.Tensor:
    """Random starts for the global sample indices ``gi`` (sorted), one generator block at a time."""
    out = torch.empty((len(gi), *shape))
    blocks = gi // _BLOCK
    for b in np.unique(blocks):
        sel = np.flatnonzero(blocks == b)
        noise = _random_start((_BLOCK, *shape), int(b) * _BLOCK, seed, r, nm, uniform_radius)
        out[sel] = noise[gi[sel] - int(b) * _BLOCK]
    return out


def attack(
    model: Any,
    x: Any,
    y: Any,
    *,
    method: str = "pgd",
    norm: str = "linf",
    eps: float = 0.3,
    steps: int | None = None,
    restarts: int = 1,
    step_size: float | None = None,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
) -> AttackResult:
    """Attack ``model`` on ``(x, y)`` within ``‖x' − x‖_norm ≤ eps`` (see the module docstring for the methods).

    Parameters
    ----------
    model : a torch ``nn.Module`` or TorchScript module returning logits (or probabilities) ``(b, k)`` with
        gradients w.r.t. its input; a torch :class:`~failsight.models.adapters.ModelAdapter` is unwrapped. Its
        device is used; its train/eval flags are restored afterwards.
    x : inputs ``(n, ...)`` (numpy or torch) within ``bounds``; ``y`` int labels ``(n,)``.
    method : ``"fgsm"``, ``"pgd"`` or ``"apgd-ce"``.
    eps : budget ≥ 0 in input units (e.g. 0.3 for MNIST L∞ on [0, 1] pixels, 2.0 for L2).
    steps : iterations (default 1 for FGSM, 10 for PGD, 100 for APGD-CE, AutoAttack's setting).
    restarts : random restarts (PGD/APGD) on the samples not yet broken.
    step_size : PGD step (default ``2.5·eps/steps``); APGD adapts its own, starting at ``2·eps``.
    seed : random starts; the same seed gives the same result for any batch size.
    bounds : the model's valid input range; adversarial inputs are clipped to it.

    Returns
    -------
    AttackResult
    """
    m, nm = _check_method(method, norm)
    e = _check_eps(eps)
    steps = check_int(steps if steps is not None else {"fgsm": 1, "pgd": 10, "apgd-ce": 100}[m], "steps")
    restarts = check_int(restarts, "restarts")
    seed = check_int(seed, "seed", minimum=0)
    if step_size is not None and not (math.isfinite(float(step_size)) and float(step_size) > 0):
        raise FailsightInputError(f"step_size must be a positive number, got {step_size!r}.")
    lo, hi = float(bounds[0]), float(bounds[1])
    xt, yy = _check_inputs(x, y, (lo, hi))
    net = _Net(model, xt[:2])
    if int(yy.max()) >= net.n_classes:
        raise FailsightInputError(f"y has label {int(yy.max())} but the model gives {net.n_classes} outputs.")
    bs = check_int(batch_size, "batch_size") if batch_size is not None else _default_batch(net.device, xt)
    yt = torch.from_numpy(yy)
    with net:
        x_adv, pc, pa = _run_attack(net, xt, yt, m, nm, e, steps, restarts, step_size, seed, lo, hi, bs)
    success = (pa != yt).numpy()
    clean_ok = (pc == yt).numpy()
    return AttackResult(
        method=m, norm=nm, eps=e, steps=steps if m != "fgsm" else 1, restarts=restarts if m != "fgsm" else 1,
        step_size=None if m != "pgd" else float(step_size or 2.5 * e / steps), n=len(yy),
        clean_accuracy=float(clean_ok.mean()), robust_accuracy=float(1 - success.mean()),
        success_rate=float(success[clean_ok].mean()) if clean_ok.any() else math.nan,
        x_adv=x_adv.numpy(), success=success, pred_adv=pa.numpy(), pred_clean=pc.numpy(),
        perturbation=_norm_dist(x_adv, xt, nm).numpy())


# ==================================================================================== curve


@dataclasses.dataclass(frozen=True)
class RobustAccuracyCurve(Result):
    """Robust accuracy at each ε with exact (Clopper-Pearson) intervals, and the sanity checks' outcome.

    ``accuracy[i]``: share of the ``n`` samples still correctly classified under the attack at ``eps[i]`` (with
    the samples broken at smaller ε carried over). ``fgsm_accuracy``: the single-step attack at each ε on the
    ``sanity_n`` sanity samples, beside ``check_accuracy`` (the multi-step attack run independently per ε on the
    same samples); ``fewer_steps_accuracy``: the attack with a quarter of the steps at the largest ε on them;
    ``large_eps_accuracy``: at ``large_eps`` (should be 0). ``warnings``: each failed check, in words.
    ``examples``: up to 8 samples broken at the smallest ε that broke any — clean and adversarial images, label,
    prediction (for the report's grid; not in JSON).
    """

    method: str
    norm: str
    steps: int
    restarts: int
    n: int
    clean_accuracy: float
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]
    ci: tuple[Interval, ...]
    sanity_n: int = 0
    check_accuracy: tuple[float, ...] = ()
    fgsm_accuracy: tuple[float, ...] = ()
    fewer_steps_accuracy: float | None = None
    large_eps: float | None = None
    large_eps_accuracy: float | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    examples: dict[str, Any] | None = dataclasses.field(default=None, repr=False, metadata={"exclude_json": True})

    @property
    def worst(self) -> tuple[float, float]:
        """``(eps, accuracy)`` at the largest ε."""
        return self.eps[-1], self.accuracy[-1]

    @property
    def passed_checks(self) -> bool:
        return not self.warnings


def robust_accuracy(
    model: Any,
    x: Any,
    y: Any,
    eps: Sequence[float] = (0.1, 0.2, 0.3),
    *,
    method: str = "pgd",
    norm: str = "linf",
    steps: int | None = None,
    restarts: int = 1,
    step_size: float | None = None,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    ci: float = 0.95,
    sanity: bool = True,
    sanity_n: int = 200,
    large_eps: float | None = None,
    warn: bool = True,
) -> RobustAccuracyCurve:
    """Accuracy-vs-ε curve under :func:`attack`, with intervals and sanity checks (module docstring).

    ``eps``: budgets (sorted; 0 is the clean accuracy). ``sanity``: run the checks on ``sanity_n`` samples (a
    seeded subsample): independent attacks per ε, FGSM per ε, a quarter of the steps at the largest ε, and
    ``large_eps`` (default: the whole range for L∞, ``√d ×`` range for L2: enough to reach any input). Their
    failures are listed in ``warnings`` (and raised as :class:`UserWarning` when ``warn``). Returns
    :class:`RobustAccuracyCurve`.
    """
    import time

    t0 = time.perf_counter()
    m, nm = _check_method(method, norm)
    try:
        eps_list = sorted({_check_eps(e) for e in eps})
    except TypeError:
        raise FailsightInputError(f"eps must be a list of budgets >= 0, got {eps!r}.") from None
    if not eps_list:
        raise FailsightInputError("eps is empty; pass at least one budget, e.g. eps=[0.1, 0.2, 0.3].")
    if not 0 < float(ci) < 1:
        raise FailsightInputError(f"ci must lie in (0, 1), got {ci!r}.")
    steps_n = check_int(steps if steps is not None else {"fgsm": 1, "pgd": 10, "apgd-ce": 100}[m], "steps")
    restarts = check_int(restarts, "restarts")
    seed = check_int(seed, "seed", minimum=0)
    lo, hi = float(bounds[0]), float(bounds[1])
    xt, yy = _check_inputs(x, y, (lo, hi))
    net = _Net(model, xt[:2])
    bs = check_int(batch_size, "batch_size") if batch_size is not None else _default_batch(net.device, xt)
    yt = torch.from_numpy(yy)
    n = len(yy)
    kw = {"m": m, "nm": nm, "steps": steps_n, "restarts": restarts, "step_size": step_size, "seed": seed,
          "lo": lo, "hi": hi, "batch_size": bs}
    acc, cis = [], []
    examples = None
    with net:
        with torch.no_grad():
            pc = torch.cat([net.logits(xt[a:a + bs].to(net.device, net.dtype)).argmax(1).cpu() for a in range(0, n, bs)])
        alive = (pc == yt).numpy()
        clean = float(alive.mean())
        for e in eps_list:
            idx = np.flatnonzero(alive)
            if e > 0 and len(idx):
                xa, _, pa = _run_attack(net, xt[idx], yt[idx], eps=e, offset=idx, **kw)
                broke = (pa != yt[idx]).numpy()
                if examples is None and broke.any():
                    sel = idx[broke][:8]
                    pos = np.flatnonzero(broke)[:8]
                    examples = {"eps": e, "x": xt[sel].numpy(), "x_adv": xa[pos].numpy(), "y": yy[sel],
                                "pred": pa[pos].numpy()}
                alive[idx[broke]] = False
            k = int(alive.sum())
            acc.append(k / n)
            cis.append(clopper_pearson(k, n, float(ci)))
        msgs: list[str] = []
        chk = fg = ()
        fewer = big = big_acc = None
        s_n = 0
        if sanity and m != "fgsm":
            sub = np.sort(np.random.default_rng([seed, 99]).permutation(n)[:min(sanity_n, n)])
            s_n = len(sub)
            xs, ys = xt[sub], yt[sub]
            ind, fgs = [], []
            prev_broken = None
            for e in eps_list:
                _, _, pa = _run_attack(net, xs, ys, eps=e, offset=sub, **kw)
                br = (pa != ys).numpy()
                ind.append(float(1 - br.mean()))
                _, _, pf = _run_attack(net, xs, ys, eps=e, offset=sub, **{**kw, "m": "fgsm"})
                fgs.append(float((pf == ys).float().mean()))
                if prev_broken is not None:
                    lost = int((prev_broken & ~br).sum())
                    if lost > max(1, 0.02 * s_n):
                        msgs.append(f"not monotone in ε: {lost} of {s_n} samples broken at a smaller ε survive "
                                    f"ε={e:g} (independent runs): the attack is unreliable (too few steps or "
                                    "restarts, or gradient masking).")
                prev_broken = br if prev_broken is None else (prev_broken | br)
                if fgs[-1] < ind[-1] - max(2 / s_n, 0.02):
                    msgs.append(f"single-step FGSM beats {m} at ε={e:g} ({fgs[-1]:.1%} vs {ind[-1]:.1%} robust "
                                "accuracy): the multi-step attack is failing — a sign of gradient masking or a bad "
                                "step size; trust neither number.")
            chk, fg = tuple(ind), tuple(fgs)
            e_max = eps_list[-1]
            if steps_n >= 4 and e_max > 0:
                _, _, pa = _run_attack(net, xs, ys, eps=e_max, offset=sub, **{**kw, "steps": max(1, steps_n // 4)})
                fewer = float((pa == ys).float().mean())
                if fewer < ind[-1] - max(2 / s_n, 0.02):
                    msgs.append(f"not monotone in steps: {max(1, steps_n // 4)} steps give {fewer:.1%} robust accuracy "
                                f"at ε={e_max:g}, {steps_n} steps {ind[-1]:.1%}: the attack is unstable (step size?).")
            d = int(np.prod(xt.shape[1:]))
            big = float(large_eps) if large_eps is not None else (hi - lo) * (1.0 if nm == "linf" else math.sqrt(d))
            _, _, pa = _run_attack(net, xs, ys, eps=big, offset=sub, **kw)
            big_acc = float((pa == ys).float().mean())
            if big_acc > 0:
                msgs.append(f"robust accuracy is {big_acc:.1%} at ε={big:.3g}, a budget that reaches every input of the "
                            "range: it must be 0%. Gradients are masked or the attack is broken; the curve is "
                            "not a trustworthy upper bound.")
    if warn:
        for msg in msgs:
            warnings.warn(msg, UserWarning, stacklevel=2)
    return RobustAccuracyCurve(
        method=m, norm=nm, steps=steps_n if m != "fgsm" else 1, restarts=restarts, n=n, clean_accuracy=clean,
        eps=tuple(eps_list), accuracy=tuple(acc), ci=tuple(cis), sanity_n=s_n, check_accuracy=chk, fgsm_accuracy=fg,
        fewer_steps_accuracy=fewer, large_eps=big, large_eps_accuracy=big_acc, warnings=tuple(msgs),
        seconds=time.perf_counter() - t0, examples=examples)
