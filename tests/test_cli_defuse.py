"""CLI: ``failsight defuse`` round trip — export regions and labels.csv, fill it in, correct."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from failsight.cli import app

torch = pytest.importorskip("torch")
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from failsight.datasets.digits import split_digits
    from failsight.defuse import VAE
    from failsight.models.cnn import SmallCNN, train_classifier

    d = tmp_path_factory.mktemp("defuse")
    data = split_digits(seed=0)
    model = SmallCNN(width=8, seed=0)
    train_classifier(model, data.x_train, data.y_train, epochs=4, seed=0, progress=False, num_threads=1)
    torch.save(model, d / "model.pt")
    vae = VAE(seed=0)
    vae.fit(data.x_train, epochs=10, seed=0, progress=False)
    vae.save(d / "gen.pt")
    np.savez(d / "train.npz", x=data.x_train, y=data.y_train)
    np.savez(d / "val.npz", x=data.x_cal, y=data.y_cal)
    np.savez(d / "test.npz", x=data.x_test, y=data.y_test)
    return d


def _base(files, out):
    return ["defuse", "--model", str(files / "model.pt"), "--train", str(files / "train.npz"),
            "--seeds", str(files / "val.npz"), "--generator", str(files / "gen.pt"), "--out", str(out), "-q",
            "--n-samples", "8"]


def test_defuse_round_trip(files, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, _base(files, out))
    assert res.exit_code == 0, res.output
    labels_csv = out / "regions" / "labels.csv"
    assert labels_csv.is_file() and "Label the regions" in res.output
    rows = list(csv.DictReader(labels_csv.open()))
    assert rows, "at least one region expected from a 4-epoch model"
    assert all((out / "regions" / r["grid"]).is_file() for r in rows)
    # a person labels the first region with its seed class and discards the rest
    rows[0]["label"] = rows[0]["seed_label"]
    for r in rows[1:]:
        r["label"] = "discard"
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = runner.invoke(app, [*_base(files, out), "--labels", str(filled), "--test", str(files / "test.npz"),
                              "--force"])
    assert res.exit_code == 0, res.output
    assert (out / "fixed_model.pt").is_file() and "region accuracy" in res.output
    html = (out / "report.html").read_text()
    assert "before" in html and "after" in html
    # the original model file is untouched
    assert (files / "model.pt").stat().st_size > 0


def test_defuse_bad_labels_and_inputs(files, tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, _base(files, out)).exit_code == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("region_id,label\n999,3\n")
    res = runner.invoke(app, [*_base(files, out), "--labels", str(bad), "--force"])
    assert res.exit_code == 2 and "999" in res.output
    bad.write_text("region_id,label\n0,giraffe\n")
    res = runner.invoke(app, [*_base(files, out), "--labels", str(bad), "--force"])
    assert res.exit_code == 2 and "giraffe" in res.output
    res = runner.invoke(app, [*_base(files, out), "--labels", str(tmp_path / "missing.csv"), "--force"])
    assert res.exit_code == 2 and "does not exist" in res.output
    # refuses to overwrite without --force
    res = runner.invoke(app, _base(files, out))
    assert res.exit_code == 2 and "--force" in res.output
