"""Model adapters: torch modules, TorchScript and torch.save files, sklearn pickles / joblib, callables."""

from __future__ import annotations

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

from failsight._validate import FailsightInputError
from failsight.datasets.digits import load_digits_images
from failsight.models.adapters import (
    CallableAdapter,
    ModelAdapter,
    SklearnAdapter,
    TorchAdapter,
    TorchScriptAdapter,
    as_model,
    load_model,
)
from failsight.models.cnn import SmallCNN
from failsight.types import Classifier

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_images()
    return x[:200], y[:200]  # (200, 1, 8, 8) float32


@pytest.fixture(scope="module")
def logreg(digits):
    x, y = digits
    return LogisticRegression(max_iter=300).fit(x.reshape(len(x), -1), y)


def _cnn(seed: int = 0) -> SmallCNN:
    return SmallCNN(width=8, seed=seed)


def _direct(model: nn.Module, x: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).double().numpy()
    model.train(was)
    return out


def _save_script(model: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))


# --------------------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------------------
def test_torch_module_predicts_logits_like_a_direct_call(digits):
    x, _ = digits
    model = _cnn()
    a = as_model(model)
    assert isinstance(a, TorchAdapter) and a.kind == "torch" and a.output == "auto"
    assert a.n_classes == 10 and a.trainable_module is model and a.name == "SmallCNN"
    out = a.predict(x)
    assert out.dtype == np.float64 and out.shape == (200, 10) and a.output == "logits"
    np.testing.assert_allclose(out, _direct(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.predict_proba(x), softmax(out, axis=1), rtol=1e-10)
    np.testing.assert_array_equal(a.predict_logits(x), out)
    np.testing.assert_array_equal(a(x), out)
    # torch input, other dtypes (cast to the module's float32) and 3-D / 2-D batching give the same
    np.testing.assert_allclose(a.predict(torch.from_numpy(x)), out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.predict(x.astype(np.float64)), out, rtol=1e-6, atol=1e-6)
    ro = x.copy()
    ro.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        np.testing.assert_allclose(a.predict(ro, progress=True), out, rtol=1e-6, atol=1e-6)
    d = a.describe()
    assert d["kind"] == "torch" and d["n_classes"] == 10 and d["output"] == "logits" and d["source"] is None
    assert d["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert len(d["fingerprint"]) == 16 and int(d["fingerprint"], 16) >= 0


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_batching_does_not_change_outputs(digits, batch_size):
    x, _ = digits
    a = as_model(_cnn())
    np.testing.assert_allclose(a.predict(x[:30], batch_size=batch_size), a.predict(x[:30], batch_size=30),
                               rtol=1e-5, atol=1e-6)


def test_training_flags_and_weights_are_left_as_they_were(digits):
    x, _ = digits
    model = _cnn()
    model.train()
    model.features[0].eval()  # mixed flags (e.g. a frozen block) must come back exactly
    flags = [m.training for m in model.modules()]
    before = copy.deepcopy(model.state_dict())
    a = as_model(model)
    a.predict(x[:40])
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():  # BatchNorm running stats untouched: eval + inference_mode
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # dropout inactive during predict: two calls agree although the module is in training mode
    np.testing.assert_array_equal(a.predict(x[:40]), a.predict(x[:40]))
    model.eval()
    a.predict(x[:5])
    assert not any(m.training for m in model.modules())


def test_torch_input_errors(digits):
    x, _ = digits
    a = as_model(_cnn())
    with pytest.raises(FailsightInputError, match=r"batch axis: x\[None\]"):
        a.predict(x[0, 0, 0])
    with pytest.raises(FailsightInputError, match="numeric"):
        a.predict(np.array([["a", "b"]]))
    with pytest.raises(FailsightInputError, match=r"'SmallCNN' \(torch\) failed on a batch of inputs of shape"):
        a.predict(np.zeros((4, 3, 8, 8), np.float32))  # 3 channels for a 1-channel model
    with pytest.raises(FailsightInputError, match="batch_size"):
        a.predict(x, batch_size=0)
    nan = x[:8].copy()
    nan[3, 0, 2, 2] = np.nan
    with pytest.raises(FailsightInputError, match="inputs of that batch contain NaN"):
        a.predict(nan)


def test_torchscript_file_and_fingerprints(tmp_path, digits):
    x, _ = digits
    model = _cnn()
    _save_script(model, tmp_path / "scripted.ts")
    a = load_model(tmp_path / "scripted.ts")
    assert isinstance(a, TorchScriptAdapter) and a.kind == "torchscript" and a.trainable_module is None
    assert a.source == str(tmp_path / "scripted.ts") and a.name == "SmallCNN (scripted.ts)" and a.n_classes == 10
    np.testing.assert_allclose(a.predict(x, batch_size=64), _direct(model, x), rtol=1e-5, atol=1e-6)
    assert a.output == "logits" and not a.model.training
    a.model.train()
    a.predict(x[:3])
    assert a.model.training  # flag restored on the scripted module too
    # in memory, loaded, saved again and reloaded: one fingerprint; other weights: another
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        fp_mem = as_model(torch.jit.script(model)).fingerprint()
        a.model.save(str(tmp_path / "again.pt"))
    assert a.fingerprint() == fp_mem == load_model(tmp_path / "again.pt").fingerprint()
    _save_script(_cnn(seed=1), tmp_path / "other.pt")
    assert load_model(tmp_path / "other.pt").fingerprint() != fp_mem
    assert a.describe()["n_parameters"] == sum(p.numel() for p in model.parameters())


def test_torch_save_module_file(tmp_path, digits):
    x, _ = digits
    model = _cnn()
    torch.save(model, tmp_path / "model.weird")  # recognised by content, not extension
    a = load_model(tmp_path / "model.weird")
    assert type(a) is TorchAdapter and isinstance(a.trainable_module, SmallCNN)
    np.testing.assert_allclose(a.predict(x), _direct(model, x), rtol=1e-5, atol=1e-6)
    fp = as_model(model).fingerprint()
    assert a.fingerprint() == fp == as_model(copy.deepcopy(model)).fingerprint()
    torch.save(a.model, tmp_path / "again.pt")
    assert load_model(tmp_path / "again.pt").fingerprint() == fp
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head[-1].bias[0] += 1e-3
    assert as_model(other).fingerprint() != fp
    assert as_model(_cnn(seed=1)).fingerprint() != fp
    # the legacy (non-zip) torch.save format loads too
    torch.save(model, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_model(tmp_path / "legacy.pt").fingerprint() == fp


def test_state_dicts_and_non_models_are_refused(tmp_path, digits):
    model = _cnn()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(FailsightInputError, match="state_dict"):
        load_model(tmp_path / "weights.pt")
    torch.save({"epoch": 3, "model_state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(FailsightInputError, match="'epoch', 'model_state_dict'"):
        load_model(tmp_path / "ckpt.pt")
    joblib.dump(model.state_dict(), tmp_path / "weights.joblib")
    with pytest.raises(FailsightInputError, match="state_dict"):
        load_model(tmp_path / "weights.joblib")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(FailsightInputError, match=r"Tensor, not a torch\.nn\.Module"):
        load_model(tmp_path / "tensor.pt")
    np.savez(tmp_path / "data.npz", x=digits[0][:3], y=digits[1][:3])
    with pytest.raises(FailsightInputError, match=r"\.npz of arrays"):
        load_model(tmp_path / "data.npz")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FailsightInputError, match=r"could not load a model.*only model files you trust"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    with pytest.raises(FailsightInputError, match="is a folder"):
        load_model(tmp_path)
    with open(tmp_path / "text.pkl", "wb") as f:
        pickle.dump("model.pt", f)
    with pytest.raises(FailsightInputError, match="holds a str, not a model"):
        load_model(tmp_path / "text.pkl")


# --------------------------------------------------------------------------------------------------
# sklearn
# --------------------------------------------------------------------------------------------------
def test_sklearn_pickle_and_joblib_files(tmp_path, digits, logreg):
    x, _ = digits
    flat = x.reshape(len(x), -1)
    ref = logreg.predict_proba(flat)
    with open(tmp_path / "lr.pkl", "wb") as f:
        pickle.dump(logreg, f)
    joblib.dump(logreg, tmp_path / "lr.joblib")
    joblib.dump(logreg, tmp_path / "lr.bin", compress=3)  # compressed, odd extension
    mem = as_model(logreg)
    assert isinstance(mem, SklearnAdapter) and mem.output == "probs" and mem.n_classes == 10
    assert mem.trainable_module is None and mem.describe()["classes"] == list(range(10))
    fp = mem.fingerprint()
    for name in ("lr.pkl", "lr.joblib", "lr.bin"):
        a = load_model(tmp_path / name)
        assert a.kind == "sklearn" and a.source == str(tmp_path / name)
        np.testing.assert_allclose(a.predict(x), ref, rtol=1e-5, atol=1e-7)  # images (n, 1, 8, 8) flattened to 64
        np.testing.assert_allclose(a.predict(flat, batch_size=33), ref, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.predict_proba(torch.from_numpy(x)), ref, rtol=1e-5, atol=1e-7)
        assert a.fingerprint() == fp
    np.testing.assert_allclose(softmax(mem.predict_logits(x), axis=1), ref, rtol=1e-5, atol=1e-7)
    refit = LogisticRegression(max_iter=300, C=0.5).fit(flat, digits[1])
    assert as_model(refit).fingerprint() != fp


class _LabelsOnly:
    """An estimator that predicts labels only."""

    def fit(self, x, y):
        return self

    def predict(self, x):
        return np.zeros(len(x), int)


def test_sklearn_decision_function_and_input_checks(digits, logreg):
    x, y = digits
    flat = x.reshape(len(x), -1)
    flat = flat.astype(np.float64)  # float32 BLAS results depend on the batch size; float64 is exact enough
    a = as_model(logreg, output="logits")  # decision_function: multinomial logits
    np.testing.assert_allclose(a.predict(flat), logreg.decision_function(flat), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.predict_proba(flat), logreg.predict_proba(flat), rtol=1e-8, atol=1e-12)
    binary = LogisticRegression(max_iter=300).fit(flat, (y >= 5).astype(int))
    b = as_model(binary, output="logits")  # one score d -> [-d/2, d/2], softmax = sigmoid(d)
    d = binary.decision_function(flat)
    np.testing.assert_allclose(b.predict(flat), np.stack([-d / 2, d / 2], axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.predict_proba(flat), binary.predict_proba(flat), rtol=1e-8, atol=1e-12)
    with pytest.raises(FailsightInputError, match="fitted on 64 features; flattening cannot match"):
        as_model(logreg).predict(np.zeros((3, 1, 9, 9)))
    with pytest.raises(FailsightInputError, match="x has 10 features but LogisticRegression was fitted on 64"):
        as_model(logreg).predict(np.zeros((3, 10)))
    with pytest.raises(FailsightInputError, match="neither predict_proba nor decision_function"):
        SklearnAdapter(_LabelsOnly())
    with pytest.raises(FailsightInputError, match="has predict\\(\\) but no class scores"):
        as_model(_LabelsOnly())
    with pytest.raises(FailsightInputError, match="output must be one of"):
        as_model(logreg, output="probabilities")


def test_sklearn_fingerprint_ignores_padding_and_memo_layout(tmp_path, digits):
    x, y = digits
    forest = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(x.reshape(len(x), -1), y)
    joblib.dump(forest, tmp_path / "rf.joblib")
    back = load_model(tmp_path / "rf.joblib")
    # pickle bytes are not round-trip stable (struct padding, memo order); the content hash is
    assert back.fingerprint() == as_model(forest).fingerprint()
    np.testing.assert_array_equal(back.predict(x), forest.predict_proba(x.reshape(len(x), -1)))


# --------------------------------------------------------------------------------------------------
# callables
# --------------------------------------------------------------------------------------------------
def _linear_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(64, 10))


def _make_callables(w: np.ndarray):
    def probs_fn(xb):
        return softmax(np.asarray(xb).reshape(len(xb), -1) @ w, axis=1)

    def logits_fn(xb):
        return torch.as_tensor(np.asarray(xb).reshape(len(xb), -1) @ w)

    return probs_fn, logits_fn


def test_callables_returning_probs_and_logits(digits):
    x, _ = digits
    w = _linear_weights(0)
    probs_fn, logits_fn = _make_callables(w)
    z = x.reshape(len(x), -1).astype(np.float64) @ w
    p_ref = softmax(z, axis=1)
    pa, la = as_model(probs_fn), as_model(logits_fn)
    assert isinstance(pa, CallableAdapter) and pa.output == "auto" and pa.n_classes is None
    np.testing.assert_allclose(pa.predict(x, batch_size=40), p_ref, rtol=1e-6)
    assert pa.output == "probs" and pa.n_classes == 10 and pa.trainable_module is None
    np.testing.assert_allclose(la.predict(x), z, rtol=1e-6)
    assert la.output == "logits"
    np.testing.assert_allclose(la.predict_proba(x), p_ref, rtol=1e-6)
    np.testing.assert_allclose(pa.predict_proba(x).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # log-probabilities: softmax gives the probabilities back; tiny probabilities are clipped, not -inf
    lp = pa.predict_logits(x)
    assert np.isfinite(lp).all() and lp.max() <= 0
    np.testing.assert_allclose(softmax(lp, axis=1), p_ref, rtol=1e-5, atol=1e-12)
    onehot = as_model(lambda xb: np.eye(3)[np.zeros(len(xb), int)])
    assert np.isfinite(onehot.predict_logits(np.zeros((4, 2)))).all()
    # dict / Hugging Face style outputs: their logits are used
    class _Out:
        def __init__(self, logits):
            self.logits = logits

    np.testing.assert_allclose(as_model(lambda xb: _Out(logits_fn(xb))).predict(x), z, rtol=1e-6)
    np.testing.assert_allclose(as_model(lambda xb: {"logits": logits_fn(xb)}).predict(x), z, rtol=1e-6)
    assert isinstance(pa, Classifier)
    # torch tensors are passed through to the callable as given
    seen = []
    as_model(lambda xb: seen.append(type(xb)) or np.full((len(xb), 2), 0.5)).predict(torch.zeros(3, 2))
    assert seen == [torch.Tensor]


def test_callable_fingerprint_is_weak_but_sees_closures():
    p0, _ = _make_callables(_linear_weights(0))
    p0b, _ = _make_callables(_linear_weights(0))
    p1, _ = _make_callables(_linear_weights(1))
    fp = as_model(p0).fingerprint()
    assert fp == as_model(p0).fingerprint() == as_model(p0b).fingerprint()
    assert as_model(p1).fingerprint() != fp  # closure weights count
    assert as_model(_make_callables).fingerprint() != fp
    assert "weak" in CallableAdapter.fingerprint.__doc__


def _bad(out_fn):
    return CallableAdapter(out_fn, name="bad")


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda xb: np.zeros(len(xb)), r"'bad' \(callable\) returned shape \(\d+,\): one score per input"),
        (lambda xb: np.zeros((len(xb), 1)), "binary model return two columns"),
        (lambda xb: np.zeros((len(xb), 3, 2)), "must return a 2-D array"),
        (lambda xb: np.zeros((len(xb) + 1, 3)), r"returned \d+ rows for a batch of \d+ inputs"),
        (lambda xb: np.full((len(xb), 3), np.nan), "NaN/inf"),
        (lambda xb: np.full((len(xb), 3), "a"), "must return numbers"),
        (lambda xb: (np.zeros((len(xb), 3)), np.zeros(3)), "tuple of 2 arrays"),
        (lambda xb: np.zeros((len(xb), 2 + int(xb[0, 0]))), "number of classes must not change"),
        (lambda xb: 1 / 0, r"'bad' \(callable\) failed on a batch of inputs of shape \(\d+, 2\): ZeroDivisionError"),
    ],
)
def test_bad_outputs_are_refused(fn, match):
    x = np.zeros((10, 2))
    x[5:, 0] = 1  # second batch: one more column for the "changing k" case
    with pytest.raises(FailsightInputError, match=match):
        _bad(fn).predict(x, batch_size=5)


def test_declared_probabilities_are_checked_per_batch():
    x = np.zeros((10, 2))
    x[5:, 0] = 1
    fn = lambda xb: np.where(xb[:, :1] > 0, np.array([[2.0, -1.0]]), np.array([[0.3, 0.7]]))  # noqa: E731
    with pytest.raises(FailsightInputError, match=r"from index 5.*pass output='logits'"):
        as_model(fn).predict(x, batch_size=5)
    with pytest.raises(FailsightInputError, match="pass output='logits'"):
        as_model(lambda xb: np.full((len(xb), 2), 3.0), output="probs").predict(x)
    np.testing.assert_array_equal(as_model(fn, output="logits").predict(x, batch_size=5)[5], [2.0, -1.0])


def test_as_model_dispatch_and_passthrough(tmp_path, digits, logreg):
    model = _cnn()
    a = as_model(model)
    assert as_model(a) is a
    fixed = as_model(a, output="probs")
    assert fixed is not a and fixed.output == "probs" and a.output == "auto" and isinstance(fixed, ModelAdapter)
    a.predict(digits[0][:4])
    with pytest.raises(FailsightInputError, match="already reads its outputs as 'logits'"):
        as_model(a, output="probs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert isinstance(as_model(torch.jit.script(model)), TorchScriptAdapter)
        assert isinstance(as_model(torch.jit.trace(model.eval(), torch.zeros(2, 1, 8, 8))), TorchScriptAdapter)
    joblib.dump(logreg, tmp_path / "m.joblib")
    assert as_model(str(tmp_path / "m.joblib")).kind == "sklearn"
    assert as_model(logreg.predict_proba).kind == "callable"
    with pytest.raises(FailsightInputError, match="cannot use a int as a model"):
        as_model(3)
    with pytest.raises(FailsightInputError, match="x is None"):
        a.predict(None)
    with pytest.raises(FailsightInputError, match="x is empty"):
        a.predict(np.zeros((0, 1, 8, 8), np.float32))
    assert "TorchAdapter(name='SmallCNN'" in repr(a)
