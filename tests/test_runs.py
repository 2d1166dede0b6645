"""Run history (failsight.runs): the same store suite on SQLite and on a real PostgreSQL server, the
`failsight runs` CLI, and clear errors for bad stores and bad input."""

import datetime as dt
import json
import os
import socket
from html.parser import HTMLParser

import numpy as np
import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from _missing import missing_tool
from _postgres import PostgresUnavailable, start_postgres
from failsight._validate import FailsightInputError
from failsight.runs import RunStore, RunStoreError, metric_direction
from failsight.runs.cli import runs_app
from failsight.runs.store import metadata
from failsight.slices import compare as compare_slices

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def pg_url():
    """URL of a real PostgreSQL server ($FAILSIGHT_TEST_POSTGRES_URL or a throwaway one per worker)."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        missing_tool("PostgreSQL", "postgresql", str(exc))
    yield server.url
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """An empty run store on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    url = request.getfixturevalue("pg_url")
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    return url


def _pair(regress: bool = True, n: int = 2000, seed: int = 0):
    """Labels, colour groups and two predictors; the candidate fixes errors everywhere but (if
    ``regress``) breaks 'red'."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    colour = np.array(["red", "green", "blue", "gray"])[rng.integers(0, 4, n)]
    base_ok = rng.random(n) < 0.8
    cand_ok = base_ok.copy()
    cand_ok[~base_ok & (rng.random(n) < 0.5)] = True
    if regress:
        cand_ok[(colour == "red") & base_ok & (rng.random(n) < 0.35)] = False
    return y, colour, np.where(base_ok, y, (y + 1) % 4), np.where(cand_ok, y, (y + 1) % 4)


def _record_pair(store, regress=True, same_data=True, predictions=True):
    y, colour, pa, pb = _pair(regress)
    groups = {"colour": colour, "half": (np.arange(len(y)) % 2).astype(np.int64)}
    a = store.record(model_id="sha256:aaaa", model_name="cnn", data_id="sha256:dddd", data_name="digits-test",
                     config={"seed": 0}, name="baseline",
                     metrics={"reliability.accuracy": float((pa == y).mean()), "reliability.ece": 0.05,
                              "defuse.n_regions": 3, "robustness.mean_shift_accuracy": 0.7},
                     predictions={"y": y, "pred": pa, "groups": groups} if predictions else None)
    b = store.record(model_id="sha256:bbbb", model_name="cnn-ft", data_id="sha256:dddd" if same_data else "sha256:eeee",
                     data_name="digits-test", config={"seed": 1}, name="finetuned",
                     metrics={"reliability.accuracy": float((pb == y).mean()), "reliability.ece": 0.08,
                              "defuse.n_regions": 5, "robustness.mean_shift_accuracy": 0.7,
                              "reliability.nll": 0.3},
                     predictions={"y": y, "pred": pb, "groups": groups})
    return a, b, (y, colour, pa, pb, groups)


# ------------------------------------------------------------------------------------------ the store


def test_record_get_list_round_trip(store_url):
    config = {"steps": ["reliability", "robustness"], "seed": np.int64(3), "lr": np.float32(0.5),
              "nested": {"shape": (8, 8), "flag": True}}
    metrics = {"reliability.accuracy": np.float64(0.9731), "reliability.ece": 0.0123, "defuse.n_regions": 4,
               "ood.auroc": None, "robustness.nan_metric": float("nan"), "found": np.bool_(True)}
    with RunStore(store_url) as store:
        assert store.list() == []
        run = store.record(model_id="m" * 64, model_name="digits-cnn", data_id="d1", data_name="digits",
                           config=config, metrics=metrics, report_path="out/report.html", failsight_version="9.9")
        assert run.id >= 1 and run.name.startswith("digits-cnn-")
        assert run.config == {"steps": ["reliability", "robustness"], "seed": 3, "lr": 0.5,
                              "nested": {"shape": [8, 8], "flag": True}}
        assert run.metrics == {"defuse.n_regions": 4.0, "found": 1.0, "ood.auroc": None,
                               "reliability.accuracy": 0.9731, "reliability.ece": 0.0123,
                               "robustness.nan_metric": None}
        assert (run.report_path, run.failsight_version, run.has_predictions) == ("out/report.html", "9.9", False)
        created = dt.datetime.fromisoformat(run.created_at)
        assert created.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(dt.timezone.utc) - created).total_seconds()) < 300
        second = store.record(model_id="m2", model_name="other", data_id="d1", data_name="digits", config={},
                              metrics={}, name="second")
        assert store.get(run.id) == run and store.get(str(run.id)) == run and store.get(f"#{run.id}") == run
        assert [r.id for r in store.list()] == [second.id, run.id]  # newest first
        assert [r.id for r in store.list(limit=1)] == [second.id]
        assert store.predictions(run.id) is None
        assert json.loads(run.to_json())["metrics"]["ood.auroc"] is None
    with RunStore(store_url, create=False) as again:  # persisted, reopened without creating
        assert [r.name for r in again.list(limit=None)] == ["second", run.name]


def test_predictions_round_trip(store_url):
    y, colour, pa, _ = _pair()
    probs = np.eye(4)[pa] * 0.7 + 0.075  # (n, 4) scores: stored as their argmax
    groups = {"colour": colour, "size": np.arange(len(y)) % 3, "score_bin": np.round(np.linspace(0, 1, len(y)), 1)}
    with RunStore(store_url) as store:
        run = store.record(model_id="m", model_name="m", data_id="d", data_name="d", config={}, metrics={},
                           predictions={"y": y, "pred": probs, "groups": groups})
        assert run.has_predictions
        p = store.predictions(run.name)
    assert p["y"].dtype == np.int64 and np.array_equal(p["y"], y)
    assert np.array_equal(p["pred"], pa)
    assert list(p["groups"]) == ["colour", "size", "score_bin"]
    for name, g in groups.items():
        assert np.array_equal(p["groups"][name], g)
    assert p["groups"]["colour"].dtype.kind == "U"


def test_compare_flags_the_regressed_slice(store_url):
    with RunStore(store_url) as store:
        a, b, (y, _, pa, pb, groups) = _record_pair(store)
        cmp = store.compare("base", "fine")
    assert (cmp.a.id, cmp.b.id, cmp.same_data, cmp.same_model) == (a.id, b.id, True, False)
    # the verdicts are exactly those of failsight.slices.compare (a is the baseline), with 'class' added
    direct = compare_slices(y, pa, pb, {"class": y, **groups}, alpha=0.05)
    assert cmp.slices.to_dict() == direct.to_dict()
    assert cmp.slices.partial_failure
    assert [(r.slicing, r.slice) for r in cmp.slices.regressed] == [("colour", "red")]
    assert cmp.slices_note is None
    assert cmp.slice_report.overall == pytest.approx((pb == y).mean())
    rows = {r.metric: r for r in cmp.metrics}
    assert rows["reliability.ece"].better == "a" and rows["reliability.ece"].delta == pytest.approx(0.03)
    assert rows["reliability.accuracy"].better == "b"
    assert rows["defuse.n_regions"].better is None and rows["defuse.n_regions"].direction is None
    assert rows["robustness.mean_shift_accuracy"].better is None  # tie
    assert rows["reliability.nll"].a is None and rows["reliability.nll"].delta is None
    lines = cmp.summary()
    assert lines[0].startswith("PARTIAL FAILURE") and "colour='red'" in lines[0]
    assert lines[1].startswith("worse in #") and "reliability.ece" in lines[1]
    assert json.loads(cmp.to_json())["slices"]["partial_failure"] is True


def test_compare_without_slices_says_why(store_url):
    with RunStore(store_url) as store:
        _record_pair(store, same_data=False)
        cmp = store.compare("baseline", "finetuned")
        assert cmp.slices is None and not cmp.same_data and "different data" in cmp.slices_note
        assert cmp.summary()[0].startswith("different data")
        assert any(line.startswith("no per-slice comparison") for line in cmp.summary())
        _, c, _ = _record_pair(store, predictions=False)
        cmp = store.compare(c.id - 1, c.id)
        assert cmp.slices is None and "stored no predictions" in cmp.slices_note
        same = store.compare(c.id, c.id)
        assert same.summary()[0].startswith("no metric changed")
        assert not same.slices.regressed and not same.slices.partial_failure


def test_get_by_name_and_lookup_errors(store_url):
    with RunStore(store_url) as store:
        ids = [store.record(model_id="m", model_name="m", data_id="d", data_name="d", config={}, metrics={},
                            name=name).id for name in ("nightly-01", "nightly-02", "night_100%", "42")]
        assert store.get("nightly-01").id == ids[0]
        assert store.get("night_").id == ids[2]  # LIKE wildcards are matched literally
        assert store.get("night_1").id == ids[2]
        with pytest.raises(FailsightInputError, match=r"matches several runs \(#\d+ 'nightly-01', #\d+ 'nightly-02'"):
            store.get("nightly")
        with pytest.raises(FailsightInputError, match=r"no run 'weekly'.*failsight runs list"):
            store.get("weekly")
        with pytest.raises(FailsightInputError, match="no run with id 999"):
            store.get(999)
        assert store.get("42").id == ids[3]  # no run has id 42, so the name is used
        with pytest.raises(FailsightInputError, match=r"id .* or a name prefix"):
            store.get(True)
        with pytest.raises(FailsightInputError, match="alpha"):
            store.compare(ids[0], ids[1], alpha=1.5)


def test_postgresql_specifics(pg_url):
    """Plain postgresql:// URLs use psycopg 3; a wrong database name fails with the server's reason; the
    metrics table is queryable with SQL."""
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    engine = sa.create_engine(pg_url)
    metadata.drop_all(engine)
    with RunStore(plain) as store:
        assert store.url.drivername == "postgresql+psycopg"
        store.record(model_id="m", model_name="m", data_id="d", data_name="d", config={},
                     metrics={"reliability.ece": 0.04})
        store.record(model_id="m", model_name="m", data_id="d", data_name="d", config={},
                     metrics={"reliability.ece": 0.02})
    with engine.connect() as conn:
        best = conn.execute(sa.text("SELECT min(value) FROM failsight_run_metrics WHERE name = 'reliability.ece'"))
        assert best.scalar() == pytest.approx(0.02)
    engine.dispose()
    wrong_db = sa.engine.make_url(pg_url).set(database="no_such_db").render_as_string(hide_password=False)
    with pytest.raises(RunStoreError, match=r"cannot reach the run store .*no_such_db"):
        RunStore(wrong_db)


# ------------------------------------------------------------------------------------------ bad input


def test_record_rejects_bad_input(tmp_path):
    y, colour, pa, _ = _pair(n=100)
    ok = {"model_id": "m", "model_name": "m", "data_id": "d", "data_name": "d", "config": {}, "metrics": {}}
    cases = [
        ({"metrics": {"reliability.ece": "0.1"}}, "metric 'reliability.ece' is str"),
        ({"metrics": {"": 1.0}}, "metric name"),
        ({"metrics": [("a", 1.0)]}, "metrics must be a dict"),
        ({"config": ["seed", 0]}, "config must be a dict"),
        ({"model_id": ""}, "model_id must be a non-empty string"),
        ({"predictions": {"y": y}}, "no 'pred'"),
        ({"predictions": {"y": y, "pred": pa, "probs": pa}}, r"unknown keys \['probs'\]"),
        ({"predictions": {"y": y, "pred": pa[:-1]}}, "has 99 samples but predictions\\['y'\\] has 100"),
        ({"predictions": {"y": y, "pred": pa, "groups": {"colour": colour[:50]}}}, r"shape \(100,\)"),
        ({"predictions": {"y": y, "pred": pa, "groups": {"c": np.array([None, *colour[1:]], dtype=object)}}},
         "missing labels"),
        ({"predictions": {"y": y - 1, "pred": pa}}, "negative label"),
    ]
    with RunStore(tmp_path / "runs.db") as store:
        for change, message in cases:
            with pytest.raises(FailsightInputError, match=message):
                store.record(**{**ok, **change})
        assert store.list() == []  # nothing half-written


def test_store_location_errors(tmp_path):
    with pytest.raises(FailsightInputError, match="does not exist; create"):
        RunStore(tmp_path / "missing" / "runs.db")
    with pytest.raises(FailsightInputError, match="is a folder"):
        RunStore(tmp_path)
    (tmp_path / "notes.txt").write_text("not a database, just text\n" * 50)
    with pytest.raises(RunStoreError, match="not a database"):
        RunStore(tmp_path / "notes.txt")
    with pytest.raises(FailsightInputError, match="no run store at"):
        RunStore(tmp_path / "new.db", create=False)
    assert not (tmp_path / "new.db").exists()
    sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}").connect().close()
    with pytest.raises(RunStoreError, match="holds no failsight runs"):
        RunStore(tmp_path / "empty.db", create=False)
    with pytest.raises(FailsightInputError, match="not a valid database URL"):
        RunStore("::not a url://")
    with pytest.raises(RunStoreError, match="unknown database type 'nosuchdb'"):
        RunStore("nosuchdb://user@host/db")
    with pytest.raises(RunStoreError, match=r"driver for 'postgresql\+pg8000' is not installed.*failsight\[postgres\]"):
        RunStore("postgresql+pg8000://user@localhost/db")
    with RunStore("sqlite://") as mem:  # URLs work too (in-memory SQLite)
        assert mem.list() == []


def test_unreachable_server_fails_with_a_clear_message():
    # nothing listens on port 1: refused at once
    with pytest.raises(RunStoreError, match=r"cannot reach the run store postgresql.*127\.0\.0\.1:1.*server runs"):
        RunStore("postgresql://failsight@127.0.0.1:1/runs")
    # a host that accepts the connection but never answers: connect_timeout ends the wait
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"postgresql://failsight:secret@127.0.0.1:{silent.getsockname()[1]}/runs"
        with pytest.raises(RunStoreError, match="timeout expired") as info:
            RunStore(url, connect_timeout=2)
    assert "secret" not in str(info.value)  # the password is never shown


def test_metric_direction_table():
    higher = ["reliability.accuracy", "robustness.mean_shift_accuracy", "selective.coverage", "ood.auroc",
              "ood.aupr_in", "selective.coverage_at_risk", "slices.macro_f1"]
    lower = ["reliability.ece", "reliability.mce", "reliability.brier", "reliability.nll", "slices.error_rate",
             "selective.risk", "ood.fpr95", "selective.aurc", "robustness.accuracy_drop", "reliability.ECE"]
    assert all(metric_direction(m) == "higher" for m in higher)
    assert all(metric_direction(m) == "lower" for m in lower)
    assert metric_direction("defuse.n_regions") is None and metric_direction("study.shape_bias") is None


# ------------------------------------------------------------------------------------------ CLI

_app = typer.Typer()
_app.add_typer(runs_app, name="runs")  # mounted as failsight.cli does
runner = CliRunner()


def _invoke(args, **kwargs):
    return runner.invoke(_app, ["runs", *args], **kwargs)


def test_cli_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FAILSIGHT_DB", raising=False)
    res = _invoke(["list"])
    assert res.exit_code == 2 and "no run store at failsight-runs.db" in res.output
    assert not (tmp_path / "failsight-runs.db").exists()  # listing never creates an empty store
    db = tmp_path / "elsewhere.db"
    with RunStore(db) as store:
        _record_pair(store)
    res = _invoke(["list"], env={"FAILSIGHT_DB": str(db)})
    assert res.exit_code == 0, res.output
    header, _, newest, oldest = res.output.splitlines()
    assert header.split()[:5] == ["id", "when", "(UTC)", "name", "model"]
    assert "finetuned" in newest and "cnn-ft (sha256:b)" in newest and "0.08" in newest
    assert "baseline" in oldest and "80." in oldest
    res = _invoke(["list", "--db", str(db), "--limit", "1"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 3
    res = _invoke(["list", "--db", str(tmp_path / "nope.db")])
    assert res.exit_code == 2 and "from --db" in res.output


def test_cli_compare_writes_report_and_never_overwrites(store_url, tmp_path):
    with RunStore(store_url) as store:
        a, b, _ = _record_pair(store)
    res = _invoke(["compare", "baseline", str(b.id), "--db", store_url])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "PARTIAL FAILURE" in text and "colour=red" in text and "regressed" in text
    assert "reliability.ece" in text and "0.05" in text and "0.08" in text
    assert not (tmp_path / "cmp").exists()
    out = tmp_path / "cmp"
    res = _invoke(["compare", str(a.id), str(b.id), "--db", store_url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    HTMLParser().feed(html)
    for anchor in ('id="runs"', 'id="metrics"', 'id="slices"', "PARTIAL FAILURE", "sha256:bbbb"):
        assert anchor in html
    results = json.loads((out / "results.json").read_text())
    cmp = results["comparison"]
    assert cmp["a"]["id"] == a.id and cmp["slices"]["partial_failure"] is True
    assert {r["metric"] for r in cmp["metrics"]} >= {"reliability.ece", "reliability.accuracy"}
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = _invoke(["compare", str(a.id), str(b.id), "--db", store_url, "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output and "--force" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    res = _invoke(["compare", str(a.id), str(b.id), "--db", store_url, "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output


def test_cli_compare_errors(tmp_path):
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        _record_pair(store, same_data=False)
    res = _invoke(["compare", "baseline", "finetuned", "--db", str(db), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "no per-slice comparison" in res.output
    assert "skipped" in (tmp_path / "o" / "report.html").read_text()
    for args, message in [(["compare", "1", "77"], "no run with id 77"),
                          (["compare", "1", "2", "--alpha", "2"], "alpha must lie in"),
                          (["compare", "1", "2", "--db", "nosuchdb://x/y"], "unknown database type")]:
        full = args if "--db" in args else [*args, "--db", str(db)]
        res = _invoke(full)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output
    assert sorted(os.listdir(tmp_path)) == ["o", "runs.db"]
