"""Training by budget: how long a training loop runs, decided by the data and the loss, not a fixed epoch count.

A :class:`TrainingBudget` says how much a loop may spend; :meth:`TrainingBudget.plan` turns it into concrete
step numbers for a data set of ``n`` examples and a batch size, and :class:`BudgetTracker` applies them while the
loop runs. Three limits, whichever comes first:

- **step budget**: ``min(max_epochs * steps_per_epoch, max_steps)``. On small data the epoch cap binds (1,797
  digits: 150 epochs of 19 steps = 2,850 steps, what the 8×8 defaults were tuned with); on large data the step cap
  binds (55k MNIST images: 3,000 steps ≈ 3.5 epochs instead of 129k steps; about 90 ms of one core per step of
  the 28×28 VAE, so under 5 minutes), so the cost stops growing with ``n``
  once the model has seen enough examples;
- **convergence**: the loss (training loss averaged over a window of steps, or a validation loss when the loop
  gives one) is compared window by window; when ``patience`` windows in a row improve the best value by less than
  ``rel_tol`` (relative), the loop has converged and stops. The window is one epoch clipped to
  ``[min_window, max_window]`` steps, so it averages away batch noise on small data and still reacts within a few
  hundred steps on large data; the loop is not stopped before ``min_steps`` (default: three windows and 80% of the
  step budget: under a decaying learning-rate schedule a mid-run plateau at a high rate is not convergence; on the
  1,797 digits a rule without that floor stopped the VAE at 1,200 of 2,250 steps, and with a 60% floor at 1,650, while its loss was still falling);
- **time**: ``max_seconds`` of wall clock (``None``: no limit) for a hard bound on a shared machine.

Learning-rate schedules are planned over the step budget (:attr:`BudgetPlan.max_steps`), so a run that uses its
whole budget ends with the schedule's low learning rate as a fixed-epoch run would. The tracker only reads
Python floats at window ends (one device synchronisation per window, not per step), so it costs nothing on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from failsight._validate import FailsightInputError, check_int
from failsight.types import Result

__all__ = ["BudgetPlan", "BudgetTracker", "TrainingBudget", "TrainingStop"]


@dataclasses.dataclass(frozen=True)
class TrainingBudget:
    """How much a training loop may spend (see the module docstring); ``None`` disables a limit.

    ``max_epochs`` and ``max_steps`` bound the optimiser steps (the smaller wins), ``max_seconds`` the wall time;
    ``patience`` windows without a ``rel_tol`` relative improvement of the monitored loss stop the loop early
    (``patience=None`` turns the convergence rule off). ``min_window``/``max_window`` clip the window (one epoch)
    in steps; ``min_steps`` (default three windows) is the fewest steps before convergence may stop the loop.
    """

    max_epochs: float | None = 150.0
    max_steps: int | None = 3000
    max_seconds: float | None = None
    patience: int | None = 5
    rel_tol: float = 1e-3
    min_window: int = 50
    max_window: int = 500
    min_steps: int | None = None
    min_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.max_epochs is None and self.max_steps is None and self.max_seconds is None and self.patience is None:
            raise FailsightInputError("a TrainingBudget needs at least one limit (max_epochs, max_steps, max_seconds "
                                      "or patience).")
        if self.max_epochs is not None and not (math.isfinite(self.max_epochs) and self.max_epochs > 0):
            raise FailsightInputError(f"max_epochs must be a positive number, got {self.max_epochs!r}.")
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps")
        if self.max_seconds is not None and not (self.max_seconds > 0):
            raise FailsightInputError(f"max_seconds must be positive, got {self.max_seconds!r}.")
        if self.patience is not None:
            check_int(self.patience, "patience")
        if not (math.isfinite(self.rel_tol) and self.rel_tol >= 0):
            raise FailsightInputError(f"rel_tol must be >= 0, got {self.rel_tol!r}.")
        check_int(self.min_window, "min_window")
        check_int(self.max_window, "max_window")
        if self.min_window > self.max_window:
            raise FailsightInputError("min_window must not exceed max_window.")

    @classmethod
    def epochs(cls, epochs: int) -> TrainingBudget:
        """Exactly ``epochs`` passes over the data (the fixed-epoch behaviour, for reproducing old runs)."""
        return cls(max_epochs=float(check_int(epochs, "epochs")), max_steps=None, patience=None)

    def plan(self, n: int, batch_size: int) -> BudgetPlan:
        """Concrete step numbers for ``n`` examples in batches of ``batch_size``."""
        n, batch_size = check_int(n, "n"), check_int(batch_size, "batch_size")
        per_epoch = math.ceil(n / batch_size)
        caps = []
        if self.max_epochs is not None:
            caps.append(max(1, math.ceil(self.max_epochs * per_epoch)))
        if self.max_steps is not None:
            caps.append(self.max_steps)
        max_steps = min(caps) if caps else None
        window = min(max(per_epoch, self.min_window), self.max_window)
        if max_steps is not None:
            window = max(1, min(window, max_steps // 4 or 1))
        if self.min_steps is not None:
            min_steps = self.min_steps
        else:
            min_steps = max(3 * window, math.ceil(self.min_fraction * max_steps) if max_steps is not None else 0)
        return BudgetPlan(n=n, batch_size=batch_size, steps_per_epoch=per_epoch, max_steps=max_steps, window=window,
                          min_steps=min_steps, patience=self.patience, rel_tol=self.rel_tol,
                          max_seconds=self.max_seconds)


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    """A :class:`TrainingBudget` resolved for one data set: ``max_steps`` (``None``: unbounded, then time or
    convergence must stop the loop), the convergence ``window`` and ``min_steps`` in optimiser steps."""

    n: int
    batch_size: int
    steps_per_epoch: int
    max_steps: int | None
    window: int
    min_steps: int
    patience: int | None
    rel_tol: float
    max_seconds: float | None

    @property
    def schedule_steps(self) -> int:
        """Steps a learning-rate schedule should be planned over (the step budget, else 100 epochs)."""
        return self.max_steps if self.max_steps is not None else 100 * self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class TrainingStop(Result):
    """Why and when a budgeted loop stopped: ``reason`` is ``"converged"``, ``"step budget"`` or
    ``"time budget"``; ``losses`` holds the monitored value at each window end."""

    reason: str
    steps: int
    epochs: float
    seconds: float
    max_steps: int | None
    window: int
    losses: list[float]


class BudgetTracker:
    """Applies a :class:`BudgetPlan` inside a training loop::

        tracker = BudgetTracker(budget.plan(len(x), batch_size))
        while not tracker.done:
            loss = ...; opt.step()
            tracker.step(loss.detach())          # a float or a 0-d tensor (summed lazily)

    ``monitor`` (optional): a callable evaluated at each window end returning the loss to watch (e.g. a
    validation loss); otherwise the window's mean training loss is watched. ``stop`` after the loop describes it.
    """

    def __init__(self, plan: BudgetPlan, monitor: Any = None) -> None:
        self.plan, self.monitor = plan, monitor
        self.steps = 0
        self._sum: Any = 0.0
        self._count = 0
        self._best = math.inf
        self._stale = 0
        self.losses: list[float] = []
        self.reason: str | None = None
        self._t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        """True once a limit was reached (the loop should stop)."""
        return self.reason is not None

    def step(self, loss: Any) -> bool:
        """Record one optimiser step with its training ``loss``; returns :attr:`done`."""
        self.steps += 1
        self._sum = self._sum + loss
        self._count += 1
        p = self.plan
        if self._count >= p.window:
            value = float(self.monitor()) if self.monitor is not None else float(self._sum) / self._count
            self._sum, self._count = 0.0, 0
            self.losses.append(value)
            if p.patience is not None:
                if not math.isfinite(value):
                    self._stale = p.patience  # a diverged loss will not come back: stop
                elif value < self._best - p.rel_tol * abs(self._best) or not math.isfinite(self._best):
                    self._best, self._stale = value, 0
                else:
                    self._stale += 1
                if self.steps >= p.min_steps and self._stale >= p.patience:
                    self.reason = "converged"
        if self.reason is None and p.max_steps is not None and self.steps >= p.max_steps:
            self.reason = "step budget"
        if self.reason is None and p.max_seconds is not None and time.perf_counter() - self._t0 >= p.max_seconds:
            self.reason = "time budget"
        return self.done

    @property
    def stop(self) -> TrainingStop:
        """Summary of the run so far (``reason`` ``"running"`` before a limit was reached)."""
        return TrainingStop(reason=self.reason or "running", steps=self.steps,
                            epochs=self.steps / self.plan.steps_per_epoch, seconds=time.perf_counter() - self._t0,
                            max_steps=self.plan.max_steps, window=self.plan.window, losses=list(self.losses))
