"""CLI: ``failsight robustness`` end to end on a saved torch model and generated .npz files."""

from html.parser import HTMLParser

import numpy as np
import pytest
from typer.testing import CliRunner

from failsight.cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, train_classifier

    d = tmp_path_factory.mktemp("rob")
    data = split_digits(seed=0)
    model = SmallCNN(width=8, seed=0)
    train_classifier(model, data.x_train, data.y_train, epochs=3, seed=0, progress=False, num_threads=1)
    model.eval()
    torch.save(model, d / "model.pt")
    torch.jit.script(model).save(str(d / "scripted.pt"))
    x = (data.x_test[:120, 0] * 255).astype(np.uint8)  # (n, H, W) uint8: the loader normalises it
    np.savez(d / "test.npz", x=x, y=data.y_test[:120])
    np.savez(d / "ood.npz", x=np.random.default_rng(0).random((60, 1, 8, 8)).astype(np.float32))
    return d


@pytest.mark.parametrize("model_name", ["model.pt", "scripted.pt"])
def test_robustness_command_writes_report(files, model_name, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["robustness", "--model", str(files / model_name), "--data", str(files / "test.npz"),
                              "--ood", str(files / "ood.npz"), "--shifts", "contrast,gaussian_noise",
                              "--severities", "1,5", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    HTMLParser().feed(html)
    assert "contrast" in html and "gaussian_noise" in html
    assert (out / "results.json").is_file()
    res = runner.invoke(app, ["robustness", "--model", str(files / model_name), "--data", str(files / "test.npz"),
                              "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--severities", "7"], "severit"),
        (["--shifts", "nope"], "nope"),
        (["--severities", "a,b"], "comma-separated"),
    ],
)
def test_robustness_command_bad_input(files, tmp_path, args, match):
    res = runner.invoke(app, ["robustness", "--model", str(files / "model.pt"), "--data", str(files / "test.npz"),
                              "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert match in res.output


def test_robustness_command_rejects_non_model(files, tmp_path):
    res = runner.invoke(app, ["robustness", "--model", str(files / "test.npz"), "--data", str(files / "test.npz"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
