"""The Ray backend on a real local Ray cluster (no mocks, no local_mode): identical results to the local backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

ray = pytest.importorskip("ray", reason="the ray backend needs ray (pip install 'failsight[ray]')")
pytestmark = pytest.mark.xdist_group(name="ray")  # one cluster: keep these tests on one xdist worker

import _engine_kinds  # noqa: E402
from failsight.datasets.digits import load_digits_images  # noqa: E402
from failsight.engine import Plan, RayExecutor, SweepError, run_sweep, task_rng  # noqa: E402
from failsight.robustness.analysis import analyze_robustness  # noqa: E402
from failsight.robustness.evaluate import evaluate  # noqa: E402

_engine_kinds.register()
# Ray workers do not have tests/ on their path: ship the test kinds' code by value
ray.cloudpickle.register_pickle_by_value(_engine_kinds)


@pytest.fixture(scope="session")
def cluster():
    """One real local Ray cluster (2 CPUs) for the whole session."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def data():
    x, y = load_digits_images()
    idx = np.random.default_rng(0).permutation(len(y))
    tr, ref, te = idx[:900], idx[900:1000], idx[1000:1200]
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[tr].reshape(len(tr), -1), y[tr])
    lin = torch.nn.Linear(64, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(lda.coef_).float())
        lin.bias.copy_(torch.from_numpy(lda.intercept_).float())
    return {"x": x[te], "y": y[te], "x_ref": x[ref], "model": torch.nn.Sequential(torch.nn.Flatten(), lin)}


def test_ray_tasks_use_key_seeds_and_report_failures(cluster):
    ex = RayExecutor()
    keys = [("fog", 1), ("snow", 3), ("clean", 0)]
    got = run_sweep(Plan.build("test.draw", keys), {"seed": 4}, executor=ex, progress=False)
    for g, k in zip(got, keys, strict=True):
        np.testing.assert_array_equal(g, task_rng(4, "test", k).random(4))
    with pytest.raises(SweepError) as info:
        run_sweep(Plan.build("test.fail", [("ok",), ("bad",)]), {}, executor=ex, progress=False)
    assert info.value.failures[0].key == ("bad",) and info.value.failures[0].error == "ValueError"


def test_ray_analysis_equals_local_to_the_last_digit(cluster, data):
    kw = dict(shifts=("gaussian_noise", "contrast", "fog"), severities=(1, 5), x_reference=data["x_ref"],
              detection_sizes=(20,), n_trials=2, n_null_trials=2, n_permutations=20, reference_size=60,
              progress=False, seed=2)
    local = analyze_robustness(data["model"], data["x"], data["y"], workers=1, **kw)
    remote = analyze_robustness(data["model"], data["x"], data["y"], backend="ray", **kw)
    a, b = local.to_dict(), remote.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # every float: same tasks, same key seeds, same key-ordered fold
    ev = evaluate(data["model"], data["x"], data["y"], shifts=("pixelate",), severities=(3,), backend="ray",
                  progress=False)
    assert ev.to_dict() == evaluate(data["model"], data["x"], data["y"], shifts=("pixelate",), severities=(3,),
                                    workers=1, progress=False).to_dict()
