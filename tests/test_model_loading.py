"""failsight.models.load_model: class spec + weights, checkpoint layouts, key prefixes, clear errors."""

from __future__ import annotations

import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch

from failsight._validate import FailsightInputError
from failsight.models import SmallCNN, load_model
from failsight.models.loading import extract_state_dict, parse_model_args

NET_CODE = textwrap.dedent("""
    import torch
    from torch import nn
    from helper_layers import Block

    class Net(nn.Module):
        def __init__(self, width=8, n_classes=3):
            super().__init__()
            self.body = Block(4, width)
            self.head = nn.Linear(width, n_classes)

        def forward(self, x):
            return self.head(self.body(x))

    def build(width=8):
        return Net(width=width)
""")
LAYERS_CODE = textwrap.dedent("""
    from torch import nn

    class Block(nn.Sequential):
        def __init__(self, a, b):
            super().__init__(nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU())
""")


@pytest.fixture()
def netfile(tmp_path):
    (tmp_path / "net.py").write_text(NET_CODE)
    (tmp_path / "helper_layers.py").write_text(LAYERS_CODE)
    return tmp_path / "net.py"


def _trained(netfile, width=8):
    """A Net from the file with non-default weights and BatchNorm statistics (so a load is visible)."""
    from failsight.models.loading import resolve_model_spec

    cls = resolve_model_spec(f"{netfile}:Net")
    torch.manual_seed(0)
    m = cls(width=width)
    m.train()
    m(torch.randn(32, 4) * 3 + 1)  # moves the running statistics
    return m.eval()


X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)


def _logits(m):
    with torch.no_grad():
        return m(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model_state_dict", "model", "lightning", "ddp",
                                    "compiled", "lightning+ddp"])
def test_file_spec_with_weights_in_every_layout(netfile, tmp_path, layout):
    m = _trained(netfile, width=6)
    sd = m.state_dict()
    if layout == "plain":
        blob = sd
    elif layout == "lightning":  # LightningModule with self.model = Net(...) plus a loss with its own buffer
        blob = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                "state_dict": OrderedDict([*((f"model.{k}", v) for k, v in sd.items()),
                                           ("criterion.weight", torch.ones(3))]),
                "hyper_parameters": {"width": 6, "lr": 1e-3}}
    elif layout == "ddp":
        blob = OrderedDict((f"module.{k}", v) for k, v in sd.items())
    elif layout == "compiled":
        blob = {"model_state_dict": OrderedDict((f"_orig_mod.{k}", v) for k, v in sd.items()), "optimizer": {}}
    elif layout == "lightning+ddp":
        blob = {"state_dict": OrderedDict((f"model.module.{k}", v) for k, v in sd.items())}
    else:
        blob = {layout: sd, "epoch": 7}
    torch.save(blob, tmp_path / "ckpt.pt")
    a = load_model(f"{netfile}:Net", weights=tmp_path / "ckpt.pt", model_args='{"width": 6}', device="cpu")
    # same class, same tensors: the forward pass is the same computation, so logits agree exactly
    np.testing.assert_array_equal(a.predict_logits(X), _logits(m))
    assert not a.model.training


def test_factory_and_module_spec_and_python_objects(netfile, tmp_path, monkeypatch):
    m = _trained(netfile)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    a = load_model(f"{netfile}:build", weights=str(tmp_path / "w.pt"), model_args={"width": 8}, device="cpu")
    np.testing.assert_array_equal(a.predict_logits(X), _logits(m))
    monkeypatch.syspath_prepend(str(tmp_path))
    b = load_model("net:Net", weights=tmp_path / "w.pt", device="cpu")  # an importable module name
    np.testing.assert_array_equal(b.predict_logits(X), _logits(m))
    c = load_model(type(m), weights=m.state_dict(), device="cpu")  # Python: a class and an in-memory state dict
    np.testing.assert_array_equal(c.predict_logits(X), _logits(m))
    sys.modules.pop("net", None)
    sys.modules.pop("helper_layers", None)


def test_builtin_class_spec_and_whole_module_file_with_new_weights(tmp_path):
    a0 = SmallCNN(seed=1)
    torch.save(a0.state_dict(), tmp_path / "cnn.pt")
    a = load_model("failsight.models.cnn:SmallCNN", weights=tmp_path / "cnn.pt", device="cpu")
    x = np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(a.predict_logits(x), a0.eval()(torch.from_numpy(x)).detach().numpy())
    torch.save(SmallCNN(seed=2), tmp_path / "whole.pt")  # a whole-module pickle still opens, and takes --weights
    b = load_model(tmp_path / "whole.pt", weights=tmp_path / "cnn.pt", device="cpu")
    np.testing.assert_array_equal(b.predict_logits(x), a.predict_logits(x))
    assert load_model(tmp_path / "whole.pt", device="cpu").predict_logits(x).shape == (5, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_still_opens(tmp_path):
    m = SmallCNN(seed=0).eval()
    torch.jit.script(m).save(str(tmp_path / "m.ts"))
    a = load_model(tmp_path / "m.ts", device="cpu")
    x = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    # TorchScript runs the same ops; float32 results agree to rounding
    np.testing.assert_allclose(a.predict_logits(x), m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_wrong_keys_and_shapes_name_the_first_mismatches(netfile, tmp_path):
    m = _trained(netfile, width=8)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    with pytest.raises(FailsightInputError, match=r"shapes differ.*body\.0\.weight \(8, 4\) vs \(16, 4\)"):
        load_model(f"{netfile}:Net", weights=tmp_path / "w.pt", model_args={"width": 16}, device="cpu")
    sd = m.state_dict()
    sd["extra.weight"] = torch.zeros(2)
    del sd["head.bias"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(FailsightInputError) as ei:
        load_model(f"{netfile}:Net", weights=tmp_path / "bad.pt", device="cpu")
    msg = str(ei.value)
    assert "missing from the weights: head.bias" in msg and "not in the model: extra.weight" in msg


def test_state_dict_passed_as_model_gets_instructions(tmp_path):
    torch.save(SmallCNN().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(FailsightInputError, match=r"--model mypkg\.nets:Net --weights"):
        load_model(tmp_path / "sd.pt")


def test_bad_specs_and_args(netfile, tmp_path):
    with pytest.raises(FailsightInputError, match=r"no 'Nope'.*Net"):
        load_model(f"{netfile}:Nope")
    with pytest.raises(FailsightInputError, match="cannot import module"):
        load_model("no_such_pkg_xyz.nets:Net")
    with pytest.raises(FailsightInputError, match="does not exist"):
        load_model(f"{tmp_path / 'missing.py'}:Net")
    with pytest.raises(FailsightInputError, match="not valid JSON"):
        parse_model_args("{width: 3}")
    with pytest.raises(FailsightInputError, match="JSON object"):
        parse_model_args("[1, 2]")
    with pytest.raises(FailsightInputError, match="constructor"):
        load_model(f"{netfile}:Net", model_args={"depth": 3})
    with pytest.warns(UserWarning, match="random"):
        load_model(f"{netfile}:Net", device="cpu")
    with pytest.raises(FailsightInputError, match="without a state_dict"):
        extract_state_dict({"epoch": 1, "optimizer": {"lr": 0.1}})
    with pytest.raises(FailsightInputError, match=r"weights file .* does not exist"):
        load_model(f"{netfile}:Net", weights=tmp_path / "nope.pt")


def test_cli_audit_takes_class_and_weights(tmp_path, netfile):
    """--model file.py:Class --weights --model-args reach the model through the shared option helper."""
    from typer.testing import CliRunner

    from failsight.cli import app
    from failsight.datasets.digits import split_digits

    s = split_digits(seed=0)
    cnn = SmallCNN(seed=0)
    torch.save({"state_dict": {f"model.{k}": v for k, v in cnn.state_dict().items()}}, tmp_path / "ckpt.ckpt")
    np.savez(tmp_path / "test.npz", x=s.x_test[:60], y=s.y_test[:60])
    res = CliRunner().invoke(app, ["audit", "--model", "failsight.models.cnn:SmallCNN", "--weights",
                                   str(tmp_path / "ckpt.ckpt"), "--model-args", '{"n_classes": 10}', "--test",
                                   str(tmp_path / "test.npz"), "--steps", "reliability", "--out",
                                   str(tmp_path / "out"), "--no-record", "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["audit", "--model", "failsight.models.cnn:SmallCNN", "--weights",
                                   str(tmp_path / "ckpt.ckpt"), "--model-args", '{"width": 4}', "--test",
                                   str(tmp_path / "test.npz"), "--steps", "reliability", "--out",
                                   str(tmp_path / "out2"), "--no-record", "-q"])
    assert res.exit_code == 2 and "shapes differ" in res.output
