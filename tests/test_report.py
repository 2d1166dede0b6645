"""HTML report: self-contained, parseable, sections in order, overwrite protection; figures; the
reliability section built from a real analysis."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from typing import ClassVar

import numpy as np
import pytest
from markupsafe import Markup

from failsight._validate import FailsightInputError
from failsight.report import (
    Figure,
    Report,
    ReportExistsError,
    Section,
    fig_to_data_uri,
    fig_to_svg,
    fmt_ci,
    fmt_num,
    write_json,
)
from failsight.report.plots import (
    confidence_histogram_figure,
    reliability_diagram_figure,
    risk_coverage_figure,
)
from failsight.types import Interval


class _Collect(HTMLParser):
    """Collects tags/attributes and checks that open/close tags balance."""

    VOID: ClassVar[set[str]] = {"meta", "img", "br", "hr", "link", "input", "source", "col", "wbr", "path", "use", "rect"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:3]
    assert not p.stack, p.stack
    return p


def assert_self_contained(p: _Collect) -> None:
    for tag, attrs in p.tags:
        for key in ("src", "href"):
            v = attrs.get(key)
            if v is not None:
                assert not v.lower().startswith(("http:", "https:", "//")), (tag, v[:80])
                if tag == "img":
                    assert v.startswith("data:image/"), v[:40]
        assert tag not in ("link", "script"), tag  # no external stylesheets or scripts


def _toy_report() -> Report:
    rng = np.random.default_rng(0)
    edges = np.linspace(0, 1, 11)
    mid = (edges[:-1] + edges[1:]) / 2
    fig = reliability_diagram_figure(edges, mid, mid * 0.9, np.arange(10), title="toy", ece=0.05)
    s1 = (Section("First & <foremost>", "first", intro="Intro <script>alert(1)</script>")
          .key("accuracy", "97.1%", hint="CI", tone="good")
          .text("A paragraph.").figure(fig, caption="diagram")
          .table(["name", "value"], [["a <b>", fmt_ci(0.1, Interval(0.05, 0.2))], ["b", 0.123456]], highlight=[0])
          .note("a note"))
    s2 = Section("Second", "second").figures([
        Figure.from_matplotlib(risk_coverage_figure([0.2, 0.6, 1.0], [0.0, 0.01, 0.03], aurc=0.01,
                                                    chosen=(0.6, 0.01), chosen_bound=0.02, max_risk=0.02)),
        Figure.from_matplotlib(confidence_histogram_figure(rng.random(50), rng.random(50) > 0.3, threshold=0.5),
                               fmt="png"),
    ])
    return Report("Toy report", subtitle="sub", meta={"seed": 0, "data": "toy"}, created="2024-01-01").add(s1).add(s2)


def test_report_renders_self_contained_parseable_html():
    html = _toy_report().render()
    p = parse(html)
    assert_self_contained(p)
    ids = [a.get("id") for t, a in p.tags if t == "section"]
    assert ids == ["first", "second"]
    toc = [a["href"] for t, a in p.tags if t == "a" and a.get("href", "").startswith("#")]
    assert toc == ["#first", "#second"]
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) == 3
    assert sum(s.startswith("data:image/svg+xml;base64,") for s in imgs) == 2
    png = [s for s in imgs if s.startswith("data:image/png;base64,")]
    assert len(png) == 1 and base64.b64decode(png[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<style>" in html and "font:" in html  # CSS inlined
    assert "<script>alert" not in html and "&lt;script&gt;" in html  # user text escaped
    assert "First &amp; &lt;foremost&gt;" in html
    assert 'class="hl"' in html and '<span class="ci">[0.05, 0.2]</span>' in html
    assert 'name="viewport"' in html  # phone widths
    text = " ".join(p.text)
    assert "a note" in text and "97.1%" in text and "created" in text


def test_report_is_deterministic_with_fixed_created():
    assert _toy_report().render() == _toy_report().render()


def test_write_refuses_to_overwrite_without_force(tmp_path):
    r = _toy_report()
    path = r.write(tmp_path / "sub" / "report.html")
    assert path.exists()
    before = path.read_text()
    r.title = "changed"
    with pytest.raises(ReportExistsError, match=r"already exists.*--force"):
        r.write(path)
    assert path.read_text() == before  # untouched
    r.write(path, force=True)
    assert "changed" in path.read_text()
    with pytest.raises(ReportExistsError, match="directory"):
        r.write(tmp_path, force=True)
    assert issubclass(ReportExistsError, FailsightInputError) and issubclass(ReportExistsError, FileExistsError)


def test_write_json_strict_and_protected(tmp_path):
    p = write_json(tmp_path / "r.json", {"a": np.arange(3), "b": float("nan"), "c": Interval(0.1, 0.2)})
    assert json.loads(p.read_text()) == {"a": [0, 1, 2], "b": None, "c": {"low": 0.1, "high": 0.2, "level": 0.95}}
    with pytest.raises(ReportExistsError):
        write_json(p, {})
    write_json(p, {"x": 1}, force=True)
    assert json.loads(p.read_text()) == {"x": 1}


def test_section_validation():
    with pytest.raises(FailsightInputError, match="section id"):
        Section("x", "Bad Id")
    r = Report().add(Section("a", "a"))
    with pytest.raises(FailsightInputError, match="unique id"):
        r.add(Section("b", "a"))
    with pytest.raises(FailsightInputError, match="self-contained"):
        Figure("https://example.com/plot.png")
    with pytest.raises(FailsightInputError, match="row 0 has 1 cells"):
        Section("a", "b").table(["x", "y"], [[1]])
    skipped = Section("Robustness", "robustness", status="skipped").text("no images given", kind="warning")
    html = Report().add(skipped).render()
    assert "badge-skipped" in html and "no images given" in html


def test_number_formatting():
    assert fmt_num(None) == "–" and fmt_num(float("nan")) == "–"
    assert fmt_num(3) == "3" and fmt_num(12345) == "12,345"
    assert fmt_num(0.97123, pct=True) == "97.12%"
    assert fmt_num(0.0123456) == "0.01235"
    assert fmt_num(1.5e-5) == "1.500e-05"
    assert isinstance(fmt_ci(0.5, (0.4, 0.6)), Markup)
    assert str(fmt_ci(0.5)) == "0.5"


def test_figure_helpers():
    fig, ax = __import__("failsight.report.plots", fromlist=["new_figure"]).new_figure()
    ax.plot([0, 1], [0, 1])
    svg = fig_to_svg(fig)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert fig_to_svg(fig) == svg  # deterministic ids, no date
    uri = fig_to_data_uri(fig, fmt="png")
    assert uri.startswith("data:image/png;base64,")
    with pytest.raises(FailsightInputError, match="svg"):
        fig_to_data_uri(fig, fmt="jpg")
    inline = Report().add(Section("s", "s").figure(Figure(svg, caption="inline"))).render()
    assert '<div class="svg-inline"' in inline
    with pytest.raises(FailsightInputError, match="edges"):
        reliability_diagram_figure(np.linspace(0, 1, 5), [0.1], [0.1], [1])


def test_reliability_diagram_handles_empty_bins():
    edges = np.linspace(0, 1, 16)
    conf = np.full(15, np.nan)
    acc = np.full(15, np.nan)
    cnt = np.zeros(15)
    conf[-1], acc[-1], cnt[-1] = 0.99, 0.97, 500
    conf[10], acc[10], cnt[10] = 0.7, 0.8, 3
    fig = reliability_diagram_figure(edges, conf, acc, cnt)
    assert fig_to_data_uri(fig).startswith("data:image/svg+xml")


# --------------------------------------------------------------------------------------------------
# reliability analysis and its section
# --------------------------------------------------------------------------------------------------


def _overconfident(n: int, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1.2, (n, k))
    z[np.arange(n), y] += 2.5
    return y, 3.0 * z  # scaled up: over-confident


@pytest.fixture(scope="module")
def analysis_pair():
    from failsight.reliability.analysis import analyze

    y, z = _overconfident(800, seed=1)
    yc, zc = _overconfident(700, seed=2)
    a = analyze(y, z, y_cal=yc, cal=zc, max_risk=0.1, n_boot=200, calibrators=["temperature", "isotonic"])
    return a, (y, z, yc, zc)


def test_analyze_composes_the_reliability_functions(analysis_pair):
    from scipy.special import softmax

    from failsight.reliability import metrics, selective

    a, (y, z, yc, zc) = analysis_pair
    p = softmax(z, axis=1)
    assert a.input_kind == "logits" and a.n_test == 800 and a.n_cal == 700 and a.n_classes == 4
    assert a.metric("ece").value == pytest.approx(metrics.ece(y, p, n_bins=15), abs=1e-9)
    assert a.metric("brier").value == pytest.approx(metrics.brier_score(y, p), abs=1e-9)
    assert a.metric("nll").value == pytest.approx(metrics.nll(y, p), abs=1e-9)
    assert a.accuracy == pytest.approx(metrics.accuracy(y, p), abs=1e-12)
    lo, hi = a.metric("accuracy").ci
    assert lo < a.accuracy < hi
    ece_ci = a.metric("ece").ci
    assert ece_ci is not None and ece_ci.low <= a.metric("ece").value <= ece_ci.high
    rc = selective.risk_coverage(y, p)
    assert a.risk_coverage.aurc == pytest.approx(rc.aurc, abs=1e-12)
    # the over-confident logits get better calibrated by the chosen calibrator
    assert a.best_calibrator in ("temperature", "isotonic")
    assert a.metric("ece", calibrated=True).value < a.metric("ece").value
    assert set(a.comparison.names) >= {"uncalibrated", "temperature", "isotonic"}
    # the threshold is selected on the calibration split and checked on the test split
    ref = selective.select_threshold(yc, softmax(zc, axis=1), max_risk=0.1)
    assert a.threshold.threshold == pytest.approx(ref.threshold) and a.threshold.risk_bound <= 0.1
    assert a.threshold_split == "calibration" and a.threshold_on_test.independent
    assert {s.score for s in a.scores} >= {"msp", "energy"}  # logits given: logit scores included
    d = json.loads(a.to_json())
    assert d["metrics"][0]["key"] == "ece" and "test_confidence" not in d


def test_analyze_reports_unmeetable_threshold_as_text_and_handles_probs():
    from scipy.special import softmax

    from failsight.reliability.analysis import analyze

    y, z = _overconfident(150, seed=3)
    a = analyze(y, softmax(z, axis=1), max_risk=0.001, n_boot=100)
    assert a.input_kind == "probs" and a.threshold is None and a.comparison is None
    assert "no threshold meets" in a.threshold_reason
    assert any("calibration split" in n for n in a.notes)
    html = Report().add(_section(a)).render()
    parse(html)
    assert "No threshold meets the requirement" in html and "not met" in html


def _section(a):
    from failsight.report.sections import reliability_section

    return reliability_section(a)


def test_analyze_bad_input():
    from failsight.reliability.analysis import analyze

    y, z = _overconfident(100)
    with pytest.raises(FailsightInputError, match="both y_cal and cal"):
        analyze(y, z, y_cal=y)
    with pytest.raises(FailsightInputError, match="classes"):
        analyze(y, z, y_cal=y, cal=z[:, :3])
    with pytest.raises(FailsightInputError, match="unknown score"):
        analyze(y, z, score="nope")
    with pytest.raises(FailsightInputError, match="max_risk"):
        analyze(y, z, max_risk=2.0)
    with pytest.raises(FailsightInputError, match="label 7"):
        analyze(np.full(100, 7), z)


def test_reliability_section_renders(analysis_pair, tmp_path):
    a, _ = analysis_pair
    sec = _section(a)
    assert sec.id == "reliability"
    r = Report("Reliability", created="2024-01-01").add(sec)
    path = r.write(tmp_path / "report.html")
    html = path.read_text()
    p = parse(html)
    assert_self_contained(p)
    imgs = [a_["src"] for t, a_ in p.tags if t == "img"]
    assert len(imgs) == 4  # diagrams before/after, confidence histogram, risk-coverage curve
    assert all(s.startswith("data:image/") for s in imgs)
    text = " ".join(p.text)
    for needle in ("Calibration and accuracy", "Post-hoc calibrators", "Selective prediction",
                   f"after {a.best_calibrator}", "test accuracy", "independent check"):
        assert needle in text, needle
    assert html.count('class="ci"') >= 6  # metric intervals are shown


def test_reliability_section_when_no_calibrator_helps(analysis_pair):
    import dataclasses

    a, _ = analysis_pair
    html = Report().add(_section(dataclasses.replace(a, best_calibrator="uncalibrated"))).render()
    parse(html)
    assert "no calibrator helped" in html and "(not chosen)" in html and "For comparison" in html
