"""Training by budget: step budgets that scale with the data, the convergence rule, the VAE using them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from failsight._training import BudgetTracker, TrainingBudget
from failsight._validate import FailsightInputError


def test_plan_scales_with_data_size():
    b = TrainingBudget()
    small = b.plan(1200, 64)  # digits-sized: the epoch cap binds (150 epochs of 19 steps)
    assert small.max_steps == 150 * 19 and small.window == 50
    big = b.plan(55_000, 64)  # MNIST-sized: the step cap binds, not 150 epochs (129k steps)
    assert big.max_steps == 3000 and big.window == 500
    assert big.min_steps == math.ceil(0.8 * 3000)
    exact = TrainingBudget.epochs(7).plan(1000, 100)
    assert exact.max_steps == 70 and exact.patience is None


def _run(tracker, losses):
    for v in losses:
        if tracker.step(v):
            break
    return tracker.stop


def test_tracker_stops_on_plateau_budget_and_divergence():
    plan = TrainingBudget(max_epochs=None, max_steps=None, patience=3, min_steps=0, min_window=10,
                          max_window=10).plan(100, 10)
    # falls for 5 windows, then flat: stops after 3 stale windows
    stop = _run(BudgetTracker(plan), [10.0 / (1 + i // 10) for i in range(50)] + [2.0] * 1000)
    assert stop.reason == "converged" and stop.steps == 80
    assert stop.losses[:2] == [10.0, 5.0]
    # steadily improving: only the step cap stops it
    plan2 = TrainingBudget(max_epochs=3, max_steps=None, patience=3, min_window=10, max_window=10).plan(100, 10)
    stop = _run(BudgetTracker(plan2), [100.0 - i for i in range(1000)])
    assert stop.reason == "step budget" and stop.steps == 30
    stop = _run(BudgetTracker(plan), [1.0] * 10 + [math.nan] * 100)
    assert stop.reason == "converged" and stop.steps == 20  # a NaN window stops at once
    stop = _run(BudgetTracker(TrainingBudget(max_seconds=1e-9).plan(100, 10)), [1.0] * 10)
    assert stop.reason == "time budget" and stop.steps == 1


def test_monitor_replaces_training_loss():
    vals = iter([5.0, 4.0, 4.0, 4.0, 4.0])
    plan = TrainingBudget(max_epochs=None, max_steps=None, patience=2, min_steps=0, min_window=5,
                          max_window=5).plan(50, 10)
    stop = _run(BudgetTracker(plan, monitor=lambda: next(vals)), [99.0] * 100)
    assert stop.losses == [5.0, 4.0, 4.0, 4.0] and stop.reason == "converged"


def test_bad_budgets():
    with pytest.raises(FailsightInputError, match="at least one limit"):
        TrainingBudget(max_epochs=None, max_steps=None, patience=None)
    with pytest.raises(FailsightInputError, match="max_epochs"):
        TrainingBudget(max_epochs=-1)
    with pytest.raises(FailsightInputError, match="min_window"):
        TrainingBudget(min_window=10, max_window=5)


def test_vae_trains_by_budget():
    from failsight.defuse import VAE

    x = np.random.default_rng(0).random((96, 1, 8, 8), dtype=np.float32)
    v = VAE(latent_dim=4, width=8, seed=0)
    h = v.fit(x, budget=TrainingBudget(max_steps=7, patience=None), batch_size=32, progress=False)
    assert h.stop.reason == "step budget" and h.stop.steps == 7 and h.epochs == 3  # 3 + 3 + 1 steps
    with pytest.raises(FailsightInputError, match="not both"):
        v.fit(x, epochs=2, budget=TrainingBudget(), progress=False)
