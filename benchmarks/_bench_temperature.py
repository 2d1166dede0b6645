"""Benchmark: temperature-scaling fit on 50,000 x 100 logits, failsight against the references.

``run()`` returns one row per library with ``task``, ``library``, ``median_ms`` (median wall time of the
fit), ``value`` (the fitted temperature T) and ``nll`` (the calibration-set NLL at that T, all
evaluated by the same float64 function, so rows are comparable). ``benchmarks/reliability.py`` prints
these rows; ``python benchmarks/_bench_temperature.py`` prints them alone.

Data: seeded synthetic float32 logits ``1.7 * z0`` where labels are drawn from ``softmax(z0)``, so the
logits are over-confident and the NLL-optimal temperature is close to 1.7. Every library gets the same
float32 logits, except netcal, whose API takes probabilities (given ``softmax`` of the logits in
float64, computed outside the timed region).

References (each where it imports): netcal ``TemperatureScaling`` (scipy BFGS on numeric gradients,
stores the weight 1/T), scikit-learn >= 1.8 ``CalibratedClassifierCV(FrozenEstimator(...),
method="temperature")`` (bounded Brent on log(1/T)), probmetrics ``TemperatureScalingCalibrator``
(bisection on the gradient, torch), and the widely copied torch recipe of gpleiss/temperature_scaling
(``LBFGS(lr=0.01, max_iter=50)`` from T = 1.5, one ``step``), which stops short of the optimum.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

TASK = "temperature fit 50,000 x 100"
N, K, FACTOR, SEED = 50_000, 100, 1.7, 0


def make_logits(n: int = N, k: int = K, factor: float = FACTOR, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident float32 logits ``(n, k)`` and labels ``(n,)`` (optimal T close to ``factor``)."""
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(n, k)) * 2.0
    z0[np.arange(n), rng.integers(0, k, n)] += 7.0
    y = np.argmax(z0 + rng.gumbel(size=(n, k)), axis=1)  # labels ~ softmax(z0): z0 is calibrated
    return (factor * z0).astype(np.float32), y.astype(np.int64)


def nll_at(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``softmax(z / T)`` in float64."""
    s = z.astype(np.float64) / temperature
    s -= s.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))


def _time(fit: Callable[[], float], repeats: int, budget_s: float = 3.0) -> tuple[float, float]:
    """Median wall time in ms of ``fit()`` after one warm-up; returns ``(ms, T)``.

    Runs ``repeats`` times, or fewer once ``budget_s`` seconds are spent (slow references), at least once.
    """
    value = fit()  # warm-up: imports, JIT compilation / cache load, allocator
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        value = fit()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), float(value)


def _failsight(z: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    from failsight.reliability.calibrators import TemperatureScaling

    return lambda: TemperatureScaling(input="logits").fit(z, y).temperature_


def _sklearn(z: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    class Logits(ClassifierMixin, BaseEstimator):
        """A fitted 'classifier' whose decision function is its input (the logits)."""

        def fit(self, X: Any, y: Any) -> Logits:
            self.classes_ = np.arange(X.shape[1])
            return self

        def decision_function(self, X: Any) -> Any:
            return X

        def predict(self, X: Any) -> Any:
            return np.asarray(X).argmax(axis=1)

    frozen = FrozenEstimator(Logits().fit(z, y))

    def fit() -> float:
        cal = CalibratedClassifierCV(frozen, method="temperature").fit(z, y)
        return 1.0 / float(cal.calibrated_classifiers_[0].calibrators[0].beta_)

    return fit


def _netcal(z: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    from netcal.scaling import TemperatureScaling

    s = z.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)

    def fit() -> float:
        ts = TemperatureScaling()
        ts.fit(p, y)
        return 1.0 / float(np.ravel(ts.weights)[0])  # netcal stores the weight 1/T

    return fit


def _probmetrics(z: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    import torch
    from probmetrics.calibrators.temperature_scaling import TemperatureScalingCalibrator
    from probmetrics.distributions import CategoricalLogits

    logits, labels = torch.as_tensor(z), torch.as_tensor(y)

    def fit() -> float:
        cal = TemperatureScalingCalibrator()
        cal.fit_torch(CategoricalLogits(logits), labels)
        return 1.0 / float(cal.invtemp_)

    return fit


def _torch_lbfgs_recipe(z: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    import torch

    logits, labels = torch.as_tensor(z), torch.as_tensor(y)

    def fit() -> float:
        temperature = torch.nn.Parameter(torch.ones(1) * 1.5)
        optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)
        criterion = torch.nn.CrossEntropyLoss()

        def closure() -> Any:
            optimizer.zero_grad()
            loss = criterion(logits / temperature, labels)
            loss.backward()
            return loss

        optimizer.step(closure)
        return float(temperature.item())

    return fit


#: (library label, factory, repeats)
CASES: list[tuple[str, Callable[[np.ndarray, np.ndarray], Callable[[], float]], int]] = [
    ("failsight", _failsight, 15),
    ("scikit-learn (temperature)", _sklearn, 7),
    ("probmetrics (bisection)", _probmetrics, 7),
    ("netcal", _netcal, 5),
    ("torch LBFGS lr=0.01 recipe", _torch_lbfgs_recipe, 5),
]


def run() -> list[dict[str, Any]]:
    """Time every available implementation; rows ``{task, library, median_ms, value, nll}``."""
    z, y = make_logits()
    rows: list[dict[str, Any]] = []
    for library, factory, repeats in CASES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                median_ms, temperature = _time(factory(z, y), repeats)
        except ImportError:
            continue  # reference not installed
        rows.append({"task": TASK, "library": library, "median_ms": median_ms, "value": temperature,
                     "nll": nll_at(z, y, temperature)})
    return rows


if __name__ == "__main__":
    results = run()
    base = next((r["median_ms"] for r in results if r["library"] == "failsight"), float("nan"))
    print(f"{TASK} (float32 logits, optimal T ~ {FACTOR})")
    print(f"{'library':30s} {'median ms':>10s} {'x failsight':>12s} {'T':>12s} {'NLL':>14s}")
    for r in results:
        print(f"{r['library']:30s} {r['median_ms']:10.1f} {r['median_ms'] / base:12.2f} {r['value']:12.6f} "
              f"{r['nll']:14.10f}")
