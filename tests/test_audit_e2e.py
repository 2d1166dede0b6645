"""End to end: save real models (TorchScript, torch.save, an sklearn pickle) and data in every format
(.npz with groups, gzip and plain IDX, an image folder), run ``failsight audit`` as a subprocess on each, and
check the report, results.json, the region folder and the run history (``failsight runs list / compare``)."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

FAILSIGHT = [sys.executable, "-m", "failsight"]
# one worker runs the whole module (its fixture trains and saves the models once)
pytestmark = pytest.mark.xdist_group("audit-e2e")


def _write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _write_folder(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / f"digit{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.png")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Models and data on disk, as a user would have them."""
    from sklearn.linear_model import LogisticRegression

    from failsight.datasets.digits import split_digits
    from failsight.models.cnn import SmallCNN, train_classifier

    root = tmp_path_factory.mktemp("e2e")
    d = split_digits(seed=0, cal_size=0.25, test_size=0.25)
    n_tr, n_cal, n_te = 400, 200, 200
    x_tr, y_tr = d.x_train[:n_tr], d.y_train[:n_tr]
    x_cal, y_cal = d.x_cal[:n_cal], d.y_cal[:n_cal]
    x_te, y_te = d.x_test[:n_te], d.y_test[:n_te]
    # 8-bit images, as files hold them (the loaders divide by 255); digits are stored at 1/16 steps
    u8 = {k: np.round(v[:, 0] * 255).astype(np.uint8) for k, v in (("tr", x_tr), ("cal", x_cal), ("te", x_te))}

    net = SmallCNN(width=16, seed=0)
    train_classifier(net, u8["tr"][:, None] / 255.0, y_tr, epochs=25, seed=0, progress=False, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net.eval()).save(str(root / "cnn.ts"))
    torch.save(net, root / "cnn_module.pt")
    lr = LogisticRegression(max_iter=300).fit(u8["tr"].reshape(n_tr, -1) / 255.0, y_tr)
    with open(root / "logreg.pkl", "wb") as fh:
        pickle.dump(lr, fh)

    ink = np.where(u8["te"].reshape(n_te, -1).sum(1) > np.median(u8["te"].reshape(n_te, -1).sum(1)), "heavy", "light")
    np.savez(root / "test.npz", x=u8["te"], y=y_te, group_ink=ink)
    np.savez(root / "cal.npz", x=u8["cal"], y=y_cal)
    np.savez(root / "train.npz", x=u8["tr"], y=y_tr)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", u8["te"], compress=True)
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", y_te, compress=True)
    _write_idx(root / "cal-images-idx3-ubyte", u8["cal"], compress=False)
    _write_idx(root / "cal-labels-idx1-ubyte", y_cal, compress=False)
    _write_folder(root / "test_folder", u8["te"], y_te)
    return root


def _run(args: list[str], cwd: Path, env_db: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FAILSIGHT_DB", None)
    if env_db is not None:
        env["FAILSIGHT_DB"] = str(env_db)
    return subprocess.run(FAILSIGHT + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _section_ids(html: str) -> dict[str, str]:
    """Section id -> class attribute (status-ok / status-skipped)."""
    out: dict[str, str] = {}

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "section" and a.get("id"):
                out[a["id"]] = a.get("class", "")

    P().feed(html)
    return out


def test_audit_torchscript_npz_all_steps(files):
    out = files / "audit_ts"
    r = _run(["audit", "--model", "cnn.ts", "--test", "test.npz", "--calibration", "cal.npz", "--train", "train.npz",
              "--out", str(out), "--severities", "3", "--shifts", "fog,contrast,gaussian_noise,rotation", "-q",
              "--name", "ts-npz"], cwd=files)
    assert r.returncode == 0, r.stderr
    assert "failsight audit of" in r.stdout and "1. " in r.stdout and "recorded as run 1" in r.stdout
    html = (out / "report.html").read_text()
    ids = _section_ids(html)
    for sec in ("summary", "reliability", "robustness", "defuse", "slices"):
        assert sec in ids and "skipped" not in ids[sec], (sec, ids)
    assert "http://" not in html and "https://" not in html  # self-contained
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["kind"] == "torchscript" and res["data"]["test"]["n"] == 200
    assert {s["step"]: s["status"] for s in res["steps"]} == dict.fromkeys(
        ("reliability", "robustness", "adversarial", "defuse", "slices"), "ran")
    m = res["metrics"]
    assert 0.6 < m["reliability.accuracy"] <= 1.0 and 0 <= m["reliability.ece"] < 0.5
    assert m["robustness.worst_shift_accuracy"] < m["robustness.clean_accuracy"]
    assert m["defuse.errors_found"] > 0
    assert "ink" in res["slices"]["worst"] and "class" in res["slices"]["worst"]
    assert 1 <= len(res["findings"]) and res["findings"][0]["severity"] >= res["findings"][-1]["severity"]
    # Defuse exported its regions for labelling, and the generator so a --labels run finds the same regions
    assert (out / "regions" / "labels.csv").is_file() and (out / "generator.pt").is_file()
    assert (files / "failsight-runs.db").is_file()
    # nothing overwritten without --force
    r2 = _run(["audit", "--model", "cnn.ts", "--test", "test.npz", "--out", str(out)], cwd=files)
    assert r2.returncode == 2 and "already exists" in r2.stderr and "--force" in r2.stderr


def test_audit_sklearn_pickle_idx(files):
    out = files / "audit_sk"
    r = _run(["audit", "--model", "logreg.pkl", "--test", "t10k-images-idx3-ubyte.gz",
              "--calibration", "cal-images-idx3-ubyte", "--train", "train.npz", "--out", str(out),
              "--severities", "5", "--shifts", "contrast,gaussian_noise", "-q", "--name", "sk-idx"], cwd=files)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["kind"] == "sklearn" and res["data"]["test"]["source"] == "idx"
    steps = {s["step"]: s for s in res["steps"]}
    assert steps["reliability"]["status"] == steps["robustness"]["status"] == steps["slices"]["status"] == "ran"
    assert steps["defuse"]["status"] == "skipped" and "torch" in steps["defuse"]["reason"]
    html = (out / "report.html").read_text()
    assert "skipped" in _section_ids(html)["defuse"] and "Defuse searches and fine-tunes torch" in html
    assert 0.7 < res["metrics"]["reliability.accuracy"] <= 1.0
    assert res["metrics"]["robustness.worst_shift_accuracy"] < res["metrics"]["robustness.clean_accuracy"]


def test_audit_module_image_folder_and_runs(files):
    out = files / "audit_folder"
    db = files / "history.db"
    r = _run(["audit", "--model", "cnn_module.pt", "--test", "test_folder", "--out", str(out),
              "--steps", "reliability,slices", "-q", "--name", "module-folder", "--db", str(db)], cwd=files)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["test"]["source"] == "folder" and res["model"]["kind"] == "torch"
    steps = {s["step"]: s["status"] for s in res["steps"]}
    assert steps == {"reliability": "ran", "robustness": "not requested", "adversarial": "not requested",
                     "defuse": "not requested", "slices": "ran"}
    # the folder's classes are named after the sub-folders
    assert any(str(row["slice"]).startswith("digit") for row in res["slices"]["rows"])
    # run history: two models on the same .npz, recorded beside the folder run
    r = _run(["audit", "--model", "cnn_module.pt", "--test", "test.npz", "--out", str(files / "audit_npz"),
              "--steps", "reliability,slices", "-q", "--name", "module-npz", "--db", str(db)], cwd=files)
    assert r.returncode == 0, r.stderr
    r = _run(["audit", "--model", "logreg.pkl", "--test", "test.npz", "--out", str(files / "audit_npz_sk"),
              "--steps", "reliability,slices", "-q", "--name", "sklearn-npz", "--db", str(db)], cwd=files)
    assert r.returncode == 0, r.stderr
    lst = _run(["runs", "list", "--db", str(db)], cwd=files)
    assert lst.returncode == 0, lst.stderr
    assert all(n in lst.stdout for n in ("module-folder", "module-npz", "sklearn-npz"))
    cmp = _run(["runs", "compare", "module-npz", "sklearn-npz", "--db", str(db)], cwd=files)
    assert cmp.returncode == 0, cmp.stderr
    assert "reliability.accuracy" in cmp.stdout and "overall:" in cmp.stdout  # per metric and per slice
    bad = _run(["runs", "compare", "module-npz", "no-such-run", "--db", str(db)], cwd=files)
    assert bad.returncode == 2


def test_audit_bad_input_exit_2(files, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from failsight.cli import app

    runner = CliRunner()
    monkeypatch.chdir(files)
    r = runner.invoke(app, ["audit", "--model", "nope.pt", "--test", "test.npz", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["audit", "--model", "cnn.ts", "--test", "cal.npz", "--steps", "magic",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown audit step" in r.output
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 8, 8)), y=np.array([0, 1, 2, 3, 99]))
    r = runner.invoke(app, ["audit", "--model", "cnn.ts", "--test", str(tmp_path / "bad.npz"),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "labels" in r.output
    r = runner.invoke(app, ["audit", "--model", "cnn.ts", "--test", "test.npz", "--labels", "nope.csv",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "run the audit without --labels first" in r.output
    assert not (tmp_path / "o").exists()  # nothing written on bad input
