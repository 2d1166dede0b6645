"""CLI: ``failsight slices`` end to end on generated files, and ``failsight study`` input errors."""

from html.parser import HTMLParser

import numpy as np
from typer.testing import CliRunner

from failsight.cli import app

runner = CliRunner()


def _files(tmp_path, regress: bool):
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 4, n)
    colour = np.array(["red", "green", "blue", "gray"])[rng.integers(0, 4, n)]
    base_ok = rng.random(n) < 0.8
    cand_ok = base_ok.copy()
    # the candidate fixes some errors everywhere ...
    cand_ok[~base_ok & (rng.random(n) < 0.5)] = True
    if regress:  # ... but breaks 'red'
        cand_ok[(colour == "red") & base_ok & (rng.random(n) < 0.35)] = False
    pred_b = np.where(base_ok, y, (y + 1) % 4)
    pred_c = np.where(cand_ok, y, (y + 1) % 4)
    np.savez(tmp_path / "base.npz", labels=y, pred=pred_b)
    np.savez(tmp_path / "cand.npz", labels=y, pred=pred_c)
    (tmp_path / "groups.csv").write_text("colour\n" + "\n".join(colour) + "\n")
    return tmp_path / "base.npz", tmp_path / "cand.npz", tmp_path / "groups.csv"


def test_slices_command_flags_partial_failure(tmp_path):
    base, cand, groups = _files(tmp_path, regress=True)
    out = tmp_path / "out"
    res = runner.invoke(app, ["slices", str(cand), "--baseline", str(base), "--groups", str(groups),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "PARTIAL FAILURE" in res.output and "red" in res.output
    html = (out / "report.html").read_text()
    HTMLParser().feed(html)
    assert "Candidate against baseline" in html and "regressed" in html
    # refuses to overwrite without --force
    res = runner.invoke(app, ["slices", str(cand), "--groups", str(groups), "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output


def test_slices_command_no_flag_without_regression(tmp_path):
    base, cand, groups = _files(tmp_path, regress=False)
    res = runner.invoke(app, ["slices", str(cand), "--baseline", str(base), "--groups", str(groups),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "PARTIAL FAILURE" not in res.output


def test_slices_command_bad_input(tmp_path):
    _base, cand, groups = _files(tmp_path, regress=False)
    (tmp_path / "short.csv").write_text("colour\nred\nblue\n")
    res = runner.invoke(app, ["slices", str(cand), "--groups", str(tmp_path / "short.csv"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    np.savez(tmp_path / "nolabels.npz", pred=np.zeros(3))
    res = runner.invoke(app, ["slices", str(tmp_path / "nolabels.npz"), "--groups", str(groups),
                              "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "labels" in res.output


def test_study_command_unknown_study(tmp_path):
    res = runner.invoke(app, ["study", "cats-dogs", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "shapes-colors" in res.output
