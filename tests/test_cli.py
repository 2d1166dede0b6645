"""The `failsight` command line: help, version, `reliability` on generated .npz files (incl. bad input
with exit code 2) and `demo` end to end in a small configuration."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from failsight import __version__
from failsight.cli import app

runner = CliRunner()


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _logits(n: int, k: int = 5, seed: int = 0, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident logits with ~85% accuracy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, noise, (n, k))
    z[np.arange(n), y] += 3.0
    return y, 2.5 * z


@pytest.fixture
def npz_files(tmp_path):
    y, z = _logits(600, seed=1)
    yc, zc = _logits(500, seed=2)
    pred = tmp_path / "test.npz"
    cal = tmp_path / "cal.npz"
    np.savez(pred, labels=y, logits=z)
    np.savez(cal, labels=yc, logits=zc)
    return pred, cal


def test_help_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    out = _plain(r.output)
    assert "demo" in out and "reliability" in out and "Find where, why and how" in out
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"failsight {__version__}"
    r = runner.invoke(app, ["reliability", "--help"])
    out = _plain(r.output)
    assert r.exit_code == 0 and "--max-risk" in out and "--calibration" in out and "labels" in out
    r = runner.invoke(app, ["demo", "--help"])
    assert r.exit_code == 0 and "--force" in _plain(r.output)


def test_reliability_writes_report_and_json(npz_files, tmp_path):
    pred, cal = npz_files
    out = tmp_path / "rep"
    r = runner.invoke(app, ["reliability", str(pred), "--calibration", str(cal), "--max-risk", "0.1",
                            "--calibrators", "temperature, isotonic", "--n-boot", "200", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Report:" in r.output
    html = (out / "report.html").read_text()
    assert 'id="reliability"' in html and "data:image/svg+xml;base64," in html
    res = json.loads((out / "results.json").read_text())
    rel = res["reliability"]
    assert rel["n_test"] == 600 and rel["n_cal"] == 500 and rel["input_kind"] == "logits"
    assert rel["best_calibrator"] in ("temperature", "isotonic")  # the logits are over-confident
    assert [row["name"] for row in rel["comparison"]["rows"]] == ["uncalibrated", "temperature", "isotonic"]
    assert rel["threshold"] is not None and rel["threshold"]["risk_bound"] <= 0.1
    # a second run refuses to overwrite, and says how to fix it
    r2 = runner.invoke(app, ["reliability", str(pred), "--out", str(out)])
    assert r2.exit_code == 2 and "--force" in r2.output
    r3 = runner.invoke(app, ["reliability", str(pred), "--out", str(out), "--force", "--calibration", str(cal),
                             "--calibrators", "temperature"])
    assert r3.exit_code == 0, r3.output


def test_reliability_probs_without_calibration_and_unmeetable_risk(tmp_path):
    y, z = _logits(300, seed=3)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    f = tmp_path / "p.npz"
    np.savez(f, labels=y, probs=p)
    r = runner.invoke(app, ["reliability", str(f), "--max-risk", "0.0001", "--n-boot", "100",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output  # an unmeetable requirement is reported, not an error
    assert "no threshold" in r.output
    html = (tmp_path / "o" / "report.html").read_text()
    assert "No threshold meets the requirement" in html


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: np.savez(d / "x.npz", labels=np.arange(3)), "must hold 'labels' and either 'logits' or 'probs'"),
    (lambda d: (d / "x.npz").write_text("not a zip"), "not a readable .npz"),
    (lambda d: np.savez(d / "x.npz", labels=np.array([0, 1, 7]), probs=np.full((3, 2), 0.5)), "label 7"),
    (lambda d: np.savez(d / "x.npz", labels=np.array([0, 1]), probs=np.array([[0.5, 0.6], [0.5, 0.5]])),
     "sum to 1"),
    (lambda d: np.savez(d / "x.npz", labels=np.array([0, 1, 1]), logits=np.array([[0.0, np.nan]] * 3)), "NaN"),
    (lambda d: np.savez(d / "x.npz", labels=np.array([0, 1]), logits=np.zeros((3, 2))), "different numbers"),
    (lambda d: None, "does not exist"),
])
def test_reliability_bad_input_exits_2(tmp_path, make, message):
    make(tmp_path)
    r = runner.invoke(app, ["reliability", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert message in _plain(r.output)
    assert "Traceback" not in r.output
    assert not (tmp_path / "o" / "report.html").exists()


def test_reliability_bad_option_exits_2(npz_files, tmp_path):
    pred, _ = npz_files
    r = runner.invoke(app, ["reliability", str(pred), "--max-risk", "1.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "max_risk" in r.output
    r = runner.invoke(app, ["reliability", str(pred), "--n-bins", "0", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "n_bins" in r.output
    # more bins than samples is a noisy estimate, not an error (issue 10 item 4): it runs, with a warning
    r = runner.invoke(app, ["reliability", str(pred), "--n-bins", "5000", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_reliability_unknown_calibrator_exits_2(npz_files, tmp_path):
    pred, cal = npz_files
    r = runner.invoke(app, ["reliability", str(pred), "--calibration", str(cal), "--calibrators", "magic",
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown calibrator 'magic'" in r.output


def test_demo_end_to_end_small(tmp_path, monkeypatch):
    import functools

    import failsight.demo

    # a small configuration of the real demo (the full one trains width 32 for 30 epochs)
    small = functools.partial(failsight.demo.run_demo, width=8, n_boot=50, calibrators=["temperature"],
                              robustness_kwargs={"shifts": ["contrast"], "detection_sizes": (20,), "n_trials": 1,
                                                 "n_null_trials": 2},
                              audit_defuse_kwargs={"generator_epochs": 5, "n_samples": 8},
                              defuse_kwargs={"cnn_epochs": 3, "oracle_models": 1, "vae_epochs": 5},
                              study_kwargs={"epochs": 1, "seeds": (0,), "n_train": 300})
    monkeypatch.setattr(failsight.demo, "run_demo", small)
    monkeypatch.setenv("FAILSIGHT_DB", str(tmp_path / "runs.db"))
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.html").write_text("old report")
    # refuses to overwrite an existing report (before any training) ...
    r = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2"])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert (out / "report.html").read_text() == "old report"
    # ... and replaces it with --force
    r = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2", "--force", "-q"])
    assert r.exit_code == 0, r.output
    assert "Report:" in r.output and "report.html" in r.output and "failsight audit of SmallCNN" in r.output
    assert "recorded as run 1" in r.output and (tmp_path / "runs.db").is_file()
    html = (out / "report.html").read_text()
    p = _parse_html(html)
    for sec in ("summary", "reliability", "robustness", "defuse", "slices", "defuse-planted", "study-shapes-colors"):
        assert f'id="{sec}"' in html, sec
    assert len([t for t, _ in p if t == "img"]) >= 4
    assert not any(v.startswith(("http:", "https:")) for _, a in p for v in a.values() if v)
    data = json.loads((out / "results.json").read_text())
    assert data["demo"]["epochs"] == 2 and data["demo"]["width"] == 8
    assert data["data"]["sizes"] == {"train": 899, "cal": 449, "test": 449}
    rel = data["audit"]["reliability"]
    assert rel["n_test"] == 449 and rel["comparison"]["n_cal"] == 449
    assert data["training"]["epochs"] == 2
    assert 0.3 < data["audit"]["metrics"]["reliability.accuracy"] <= 1.0  # 2 epochs of a tiny CNN
    # the slices step compares with the half-width baseline over class, ink and width
    assert set(data["audit"]["slices"]["worst"]) == {"class", "ink", "width"}
    assert data["audit"]["comparison"] is not None
    assert (out / "regions" / "labels.csv").is_file()


def _parse_html(html: str) -> list[tuple[str, dict]]:
    from html.parser import HTMLParser

    tags: list[tuple[str, dict]] = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

    P().feed(html)
    return tags
