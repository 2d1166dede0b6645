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


def _tiny_classifier_data(n: int = 96):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    x[np.arange(n), 0, y, y] += 2.0  # a learnable cue per class
    return x, y


def test_classifier_trains_by_budget():
    from failsight.models import SmallCNN, train_classifier

    x, y = _tiny_classifier_data()
    m = SmallCNN(1, 3, 8, width=4, seed=0)
    h = train_classifier(m, x, y, budget=TrainingBudget(max_steps=7, patience=None), batch_size=32, progress=False)
    assert h.stop.reason == "step budget" and h.stop.steps == 7
    assert h.epochs == 3 and len(h.train_loss) == 3  # 3 + 3 + 1 steps: the last epoch is partial
    with pytest.raises(FailsightInputError, match="not both"):
        train_classifier(m, x, y, epochs=2, budget=TrainingBudget(), progress=False)
    with pytest.raises(FailsightInputError, match="TrainingBudget"):
        train_classifier(m, x, y, budget={"max_steps": 3}, progress=False)


def test_classifier_default_budget_scales_with_data():
    from failsight.models.cnn import DEFAULT_CLASSIFIER_BUDGET

    small = DEFAULT_CLASSIFIER_BUDGET.plan(900, 64)  # the digits' training split: the 30-epoch cap binds
    assert small.max_steps == 30 * 15
    large = DEFAULT_CLASSIFIER_BUDGET.plan(55_000, 64)  # MNIST: the step cap binds, not 30 × 860 steps
    assert large.max_steps == 3000 and large.max_steps < 4 * large.steps_per_epoch


def test_classifier_epochs_equal_budget_of_epochs():
    """``epochs=N`` is the fixed-epoch budget: same weights as ``budget=TrainingBudget.epochs(N)`` (same seed,
    same operations in the same order on one thread, so bit-identical)."""
    import torch

    from failsight.models import SmallCNN, train_classifier

    x, y = _tiny_classifier_data()
    ws = []
    for kw in ({"epochs": 2}, {"budget": TrainingBudget.epochs(2)}):
        m = SmallCNN(1, 3, 8, width=4, seed=0)
        h = train_classifier(m, x, y, batch_size=32, progress=False, num_threads=1, **kw)
        assert h.epochs == 2 and h.stop.steps == 6
        ws.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(ws[0], ws[1])


def test_training_progress_logs_without_terminal(capsys):
    """Not a terminal (pytest captures stderr): plain log lines, first and last always written."""
    from failsight.models import SmallCNN, train_classifier

    x, y = _tiny_classifier_data()
    train_classifier(SmallCNN(1, 3, 8, width=4, seed=0), x, y, epochs=2, batch_size=32, progress=True)
    err = capsys.readouterr().err
    assert "[failsight] training" in err and "6/6" in err and "done" in err


def test_auto_threads_uses_every_core(monkeypatch):
    """Work outside the sweep engine gets every usable core (÷ the processes sharing them), whatever the input size."""
    from failsight._threads import auto_threads
    from failsight.engine import available_cores

    monkeypatch.delenv("FAILSIGHT_NUM_THREADS", raising=False)
    cores = available_cores()
    assert auto_threads(64) == cores and auto_threads(3 * 224 * 224) == cores
    assert auto_threads(64, workers=cores) == 1 and auto_threads(64, workers=4 * cores) == 1
    monkeypatch.setenv("FAILSIGHT_NUM_THREADS", "3")
    assert auto_threads(64) == 3
