"""Faults and misuse (issue 11): concurrent writers on a new run store, atomic output files, links at output
paths, versioned and foreign databases, and the bad-input classes that must end in a clear error (exit 2,
nothing written, nothing recorded) before any work starts - never a traceback, a lost run or a half file.

Every bad input below is one row of a table, so the count the suite tries is ``len(<table>)`` (see the
module's ``BAD_*`` lists); each row asserts the exit status, the message and that nothing was written.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from _missing import missing_tool
from _postgres import PostgresUnavailable, start_postgres
from failsight._io import atomic_open, atomic_write, check_output, check_output_dir
from failsight._validate import FailsightInputError
from failsight.cli import app
from failsight.report.html import Report, Section, write_json
from failsight.runs import RunStore, RunStoreError
from failsight.runs.cli import display
from failsight.runs.store import SCHEMA_VERSION, metadata

FAILSIGHT = [sys.executable, "-m", "failsight"]
runner = CliRunner()


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def pg_server():
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        missing_tool("PostgreSQL", "postgresql", str(exc))
    yield server.url
    server.stop()


def _fresh_pg(server_url: str) -> str:
    """A new, empty database on the test server (or, where databases cannot be created, the server's
    database with every table dropped)."""
    url = sa.engine.make_url(server_url)
    name = f"fs_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        return url.set(database=name).render_as_string(hide_password=False)
    except sa.exc.DBAPIError:  # no CREATE DATABASE permission on an external server: empty its schema
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                conn.execute(sa.text(f'DROP TABLE "{table}" CASCADE'))
        return server_url
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request, tmp_path):
    """The location of a run store that does not exist yet, on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "fresh.db")
    return _fresh_pg(request.getfixturevalue("pg_server"))


def _count_runs(url: str) -> list[int]:
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(sa.text("SELECT id FROM failsight_runs")))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A pickled sklearn model and a small labelled .npz, as a user has them (seconds to audit)."""
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    x = rng.random((120, 4, 4)).astype(np.float32)
    y = (x.reshape(120, -1).sum(1) > 8).astype(np.int64)
    model = LogisticRegression(max_iter=200).fit(x.reshape(120, -1), y)
    with open(root / "model.pkl", "wb") as fh:
        pickle.dump(model, fh)
    np.savez(root / "test.npz", x=x, y=y)
    return root


def _record_args(i: int) -> dict:
    return {"model_id": "m", "model_name": "m", "data_id": "d", "data_name": "d", "config": {"i": i},
            "metrics": {"reliability.accuracy": i / 10}}


# ------------------------------------------------------------------------------------------ concurrency


def _record_after_barrier(url: str, i: int, barrier, errors) -> None:
    try:
        barrier.wait(timeout=60)
        with RunStore(url) as store:
            store.record(**_record_args(i))
    except BaseException as exc:  # report to the parent: a child's traceback is invisible to pytest
        errors.put(f"writer {i}: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def test_concurrent_writers_create_a_new_store_without_losing_a_run(new_store):
    """8 processes open a store that does not exist yet at the same instant (a barrier) and record: before the
    locked schema creation, table creation raced and up to 7 of them failed ("table ... already exists")."""
    ctx = mp.get_context("fork")  # the children only open a store: nothing inherited from the parent is used
    barrier, errors = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_record_after_barrier, args=(new_store, i, barrier, errors)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    messages = [errors.get(timeout=5) for p in procs if p.exitcode not in (0, None)]
    assert not alive and not messages, messages
    assert _count_runs(new_store) == list(range(1, 9))


def _audit_argv(files: Path, tmp_path: Path, db: str, i: int) -> list[str]:
    return ["audit", "--model", str(files / "model.pkl"), "--test", str(files / "test.npz"), "--steps", "reliability",
            "-q", "--out", str(tmp_path / f"o{i}"), "--db", db, "--name", f"run-{i}"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("FAILSIGHT_DB", None)
    return env


#: Imports the CLI and everything an audit loads once, then forks one `failsight audit` process per argument
#: list (each runs the console script's main(), with its own stdout/stderr file) and prints their exit codes.
#: The import cost (seconds of CPU per interpreter) is paid once instead of eight times; each child is a
#: separate process with its own database connections, exactly as a shell would start them.
_LAUNCHER = textwrap.dedent("""
    import json, os, sys
    import failsight.auditing.report, failsight.cli, failsight.datasets.io, failsight.models.adapters  # noqa: F401
    import failsight.reliability.analysis, failsight.report.plots, failsight.runs.store  # noqa: F401
    from failsight.__main__ import main

    pids = []
    for argv, log in json.loads(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = ["failsight", *argv]
            code = 0
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
""")


def _forked_cli_audits(files: Path, tmp_path: Path, db: str, n: int) -> list[subprocess.CompletedProcess]:
    import json

    jobs = [[_audit_argv(files, tmp_path, db, i), str(tmp_path / f"log{i}.txt")] for i in range(n)]
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(jobs)], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    logs = [Path(log).read_text() for _, log in jobs]
    return [subprocess.CompletedProcess(argv, code, log, log) for (argv, _), code, log in zip(jobs, codes, logs, strict=True)]


def _cli_audits(files: Path, tmp_path: Path, db: str, n: int) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(FAILSIGHT + _audit_argv(files, tmp_path, db, i), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for i in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _check_cli_audits(results: list[subprocess.CompletedProcess], db: str, tmp_path: Path) -> None:
    for r in results:
        assert r.returncode == 0 and "recorded as run" in r.stdout, r.stderr[-2000:]
    n = len(results)
    assert _count_runs(db) == list(range(1, n + 1))
    with RunStore(db, create=False) as store:
        names = sorted(r.name for r in store.list(limit=None))
        assert names == sorted(f"run-{i}" for i in range(n))
        assert all(Path(r.report_path).is_file() for r in store.list(limit=None))  # each run has its report
    assert all((tmp_path / f"o{i}" / "results.json").is_file() for i in range(n))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the launcher forks (POSIX); the slow test covers this")
def test_eight_concurrent_cli_audits_on_a_new_store(files, tmp_path, new_store):
    """8 `failsight audit` processes, started together, record into one store that does not exist yet (a
    SQLite file, a new PostgreSQL database): 8 runs, each with its report. Before the fix 2 of 26 such CLI
    audits were lost. The processes are forked from one interpreter that imported the CLI (see _LAUNCHER)."""
    _check_cli_audits(_forked_cli_audits(files, tmp_path, new_store, 8), new_store, tmp_path)


@pytest.mark.slow
def test_eight_concurrent_cli_audits_as_separate_commands(files, tmp_path, new_store):
    """The same with 8 separately started `python -m failsight audit` commands (each imports everything)."""
    _check_cli_audits(_cli_audits(files, tmp_path, new_store, 8), new_store, tmp_path)


# ------------------------------------------------------------------------------------------ schema versions


def _legacy_store(url: str, columns_ok: bool = True) -> None:
    """A store as failsight wrote it before the schema was versioned: the three tables, no failsight_meta."""
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        tables = [metadata.tables[n] for n in ("failsight_runs", "failsight_run_metrics", "failsight_run_blobs")]
        metadata.create_all(engine, tables=tables)
        with engine.begin() as conn:
            conn.execute(tables[0].insert().values(
                created_at=sa.func.now(), name="old", model_id="m", model_name="m", data_id="d", data_name="d",
                config="{}", report_path=None, failsight_version="0.0.9", has_predictions=False))
            if not columns_ok:
                conn.execute(sa.text("DROP TABLE failsight_run_metrics"))
                conn.execute(sa.text("CREATE TABLE failsight_run_metrics (run_id INTEGER, other TEXT)"))
    finally:
        engine.dispose()


def _meta(url: str) -> dict[str, str]:
    engine = sa.create_engine(url if "://" in url else f"sqlite:///{url}")
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT key, value FROM failsight_meta")).all())
    finally:
        engine.dispose()


def test_new_store_records_its_schema_version(new_store):
    with RunStore(new_store) as store:
        store.record(**_record_args(1))
    assert _meta(new_store)["schema_version"] == str(SCHEMA_VERSION)


def test_unversioned_store_is_read_as_is_and_upgraded_on_write(new_store):
    _legacy_store(new_store)
    with RunStore(new_store, create=False) as store:  # reading changes nothing
        assert [r.name for r in store.list()] == ["old"]
    engine = sa.create_engine(new_store if "://" in new_store else f"sqlite:///{new_store}")
    assert "failsight_meta" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    with RunStore(new_store) as store:  # opening for writing stamps it; the old run is kept
        store.record(**_record_args(2))
        assert [r.name for r in store.list()][-1] == "old" and len(store.list()) == 2
    assert _meta(new_store)["schema_version"] == str(SCHEMA_VERSION)


def test_newer_or_foreign_layouts_are_refused(new_store):
    with RunStore(new_store) as store:
        store.record(**_record_args(1))
    engine = sa.create_engine(new_store if "://" in new_store else f"sqlite:///{new_store}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE failsight_meta SET value = :v WHERE key = 'schema_version'"),
                     {"v": str(SCHEMA_VERSION + 1)})
    engine.dispose()
    for open_ in (lambda: RunStore(new_store), lambda: RunStore(new_store, create=False),
                  lambda: RunStore.check(new_store)):
        with pytest.raises(RunStoreError, match=rf"newer failsight \(schema version {SCHEMA_VERSION + 1}"):
            open_()


def test_unversioned_store_with_other_columns_is_refused(tmp_path):
    db = str(tmp_path / "odd.db")
    _legacy_store(db, columns_ok=False)
    with pytest.raises(RunStoreError, match=r"without the column.*name.*value"):
        RunStore(db)


def test_foreign_database_refused_unless_allowed(new_store):
    engine = sa.create_engine(new_store if "://" in new_store else f"sqlite:///{new_store}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(sa.text("INSERT INTO users (id, email) VALUES (1, 'a@b.c')"))
    for open_ in (lambda: RunStore(new_store), lambda: RunStore.check(new_store)):
        with pytest.raises(RunStoreError, match=r"another application \(users\).*--db-force"):
            open_()
    assert sa.inspect(engine).get_table_names() == ["users"]  # nothing was added
    with RunStore(new_store, allow_foreign=True) as store:
        store.record(**_record_args(1))
    with RunStore(new_store) as store:  # from then on it is a failsight store
        assert len(store.list()) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT email FROM users")).scalar() == "a@b.c"  # untouched
    engine.dispose()


def test_check_writes_nothing(tmp_path, pg_server):
    db = tmp_path / "new.db"
    assert RunStore.check(str(db)) == str(db) and not db.exists()
    pg = _fresh_pg(pg_server)
    RunStore.check(pg)
    engine = sa.create_engine(pg)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_sqlite_errors_do_not_talk_about_servers(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("not a database, just notes\n" * 100)
    with pytest.raises(RunStoreError) as info:
        RunStore(str(bad))
    message = str(info.value)
    assert "notes.db" in message and not any(w in message for w in ("host", "port", "password", "server"))


def test_run_ids_beyond_bigint_are_clear_errors(tmp_path):
    with RunStore(str(tmp_path / "r.db")) as store:
        store.record(**_record_args(1))
        with pytest.raises(FailsightInputError, match="no run with id 1000000000000000000000000000000"):
            store.get(10**30)
        with pytest.raises(FailsightInputError, match="no run"):
            store.get("99999999999999999999999")


# ------------------------------------------------------------------------------------------ atomic writes


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write(path, "old\n")
    with pytest.raises(KeyboardInterrupt), atomic_open(path, "w", force=True) as fh:
        fh.write("half of the new cont")
        raise KeyboardInterrupt
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    atomic_write(path, b"new", force=True)
    assert path.read_bytes() == b"new"
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()  # a plain open()'s permissions, not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_killed_writer_never_leaves_a_partial_output(tmp_path):
    """SIGKILL in the middle of a write: the output is absent (or the previous version), never truncated."""
    path = tmp_path / "report.html"
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from failsight._io import atomic_open
        with atomic_open({str(path)!r}, "w") as fh:
            fh.write("<html>" + "x" * 100000)
            fh.flush()
            open({str(ready)!r}, "w").close()
            time.sleep(60)
            fh.write("</html>")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), "the writer did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not path.exists()  # only the hidden temporary file remains
    assert [p.name.startswith(".report.html.") for p in tmp_path.iterdir() if p.name != "ready"] == [True]


def test_links_at_output_paths_are_never_followed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "elsewhere" / "stolen.html"
    (out / "report.html").symlink_to(outside)  # dangling: its target does not exist
    report = Report(title="t").add(Section("S", "s").text("hello"))
    with pytest.raises(FailsightInputError, match="symbolic link"):
        report.write(out / "report.html")
    with pytest.raises(FailsightInputError, match="symbolic link"):
        write_json(out / "report.html", {"a": 1})
    report.write(out / "report.html", force=True)  # --force replaces the link itself
    assert not (out / "report.html").is_symlink() and "hello" in (out / "report.html").read_text()
    assert not outside.exists() and not outside.parent.exists()


def test_output_dir_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    for bad, message in [("", "is empty"), (tmp_path / "f", "is a file"), (tmp_path / "f" / "sub", "lies below")]:
        with pytest.raises(FailsightInputError, match=message):
            check_output_dir(bad, "--out")
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and not (tmp_path / "a").exists()
    with pytest.raises(FailsightInputError, match="directory"):
        check_output([tmp_path], force=True)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_out_is_refused_before_work(files, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        r = runner.invoke(app, ["audit", "--model", str(files / "model.pkl"), "--test", str(files / "test.npz"),
                                "--steps", "reliability", "--out", str(locked / "o")])
        assert r.exit_code == 2 and "not writable" in r.output
    finally:
        locked.chmod(0o700)


def test_audit_result_write_into_a_file_is_a_clear_error(files, tmp_path):
    import failsight
    from failsight.models.adapters import load_model

    res = failsight.audit(load_model(files / "model.pkl"), str(files / "test.npz"), steps=["reliability"])
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FailsightInputError, match="is a file, not a folder"):
        res.write(tmp_path / "taken")
    paths = res.write(tmp_path / "ok")
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["report.html", "results.json"]
    assert paths["report"].read_text().rstrip().endswith("</html>")


# ------------------------------------------------------------------------------------------ CLI bad input


def _setup_bad_inputs(root: Path) -> dict[str, str]:
    """Files the bad-input table refers to (``{name}`` placeholders)."""
    (root / "afile").write_text("x")
    (root / "notes.db").write_text("not a database\n" * 50)
    existing = root / "existing"
    existing.mkdir()
    (existing / "report.html").write_text("earlier report")
    linked = root / "linked"
    linked.mkdir()
    (linked / "report.html").symlink_to(root / "nowhere" / "x.html")
    engine = sa.create_engine(f"sqlite:///{root / 'other_app.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER)"))
    engine.dispose()
    with RunStore(str(root / "future.db")) as store:
        store.record(**_record_args(1))
    engine = sa.create_engine(f"sqlite:///{root / 'future.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE failsight_meta SET value = '999' WHERE key = 'schema_version'"))
    engine.dispose()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    np.savez(root / "pred.npz", labels=y, logits=rng.normal(size=(60, 3)))
    np.savez(root / "cal.npz", labels=y, logits=rng.normal(size=(60, 3)))
    np.savetxt(root / "g.csv", rng.integers(0, 2, 60), fmt="%d")
    with RunStore(str(root / "runs.db")) as store:
        store.record(**_record_args(1))
        store.record(**_record_args(2))
    return {"root": str(root)}


AUDIT = ["audit", "--model", "{files}/model.pkl", "--test", "{files}/test.npz", "--steps", "reliability"]

#: (arguments, part of the message). Every row must exit 2 before any work, write nothing under {root}/o and
#: create no run store.
BAD_CLI = [
    ([*AUDIT, "--out", ""], "output folder is empty"),
    ([*AUDIT, "--out", " "], "output folder is empty"),
    ([*AUDIT, "--out", "{root}/afile"], "is a file, not a folder"),
    ([*AUDIT, "--out", "{root}/afile/below"], "lies below"),
    ([*AUDIT, "--out", "{root}/existing"], "already exists"),
    ([*AUDIT, "--out", "{root}/linked"], "symbolic link"),
    ([*AUDIT, "--out", "{root}/o", "--db", "postgresql://u@h:port/db"], "not a valid database URL"),
    ([*AUDIT, "--out", "{root}/o", "--db", "nosuchdb://x/y"], "unknown database type"),
    ([*AUDIT, "--out", "{root}/o", "--db", "{root}"], "is a folder"),
    ([*AUDIT, "--out", "{root}/o", "--db", "{root}/missing/runs.db"], "does not exist"),
    ([*AUDIT, "--out", "{root}/o", "--db", ""], "--db is empty"),
    ([*AUDIT, "--out", "{root}/o", "--db", "{root}/notes.db"], "notes.db"),
    ([*AUDIT, "--out", "{root}/o", "--db", "{root}/other_app.sqlite"], "another application (users)"),
    ([*AUDIT, "--out", "{root}/o", "--db", "{root}/future.db"], "newer failsight"),
    ([*AUDIT, "--out", "{root}/o", "--name", ""], "--name must be a non-empty string"),
    ([*AUDIT, "--out", "{root}/o", "--name", "n" * 300], "255"),
    ([*AUDIT, "--out", "{root}/o", "--name", "x", "--no-record"], "--no-record"),
    ([*AUDIT, "--out", "{root}/o", "--db-force", "--no-record"], "--no-record"),
    ([*AUDIT, "--out", "{root}/o", "--groups", "{files}/model.pkl"], "not a text (UTF-8) CSV"),
    ([*AUDIT, "--out", "{root}/o", "--groups", "{root}/nope.csv"], "does not exist"),
    (["reliability", "{root}/pred.npz", "--out", "{root}/o", "--calibrators", "temperature"],
     "--calibrators has no effect without --calibration"),
    (["reliability", "{root}/pred.npz", "--out", "{root}/afile"], "is a file"),
    (["slices", "{root}/pred.npz", "--groups", "{root}/g.csv", "--out", "{root}/o", "--alpha", "0.1"],
     "--alpha has no effect without --baseline"),
    (["slices", "{root}/pred.npz", "--groups", "{root}/g.csv", "--baseline", "{root}/cal.npz", "--out", "{root}/o",
      "--alpha", "0"], "must lie in (0, 1)"),
    (["slices", "{root}/pred.npz", "--groups", "{root}/g.csv", "--baseline", "{root}/cal.npz", "--out", "{root}/o",
      "--alpha", "1.5"], "must lie in (0, 1)"),
    (["slices", "{root}/pred.npz", "--groups", "{files}/model.pkl", "--out", "{root}/o"], "not a text (UTF-8) CSV"),
    (["runs", "compare", "99999999999999999999999", "1", "--db", "{root}/runs.db"], "no run"),
    (["runs", "compare", "1", "2", "--db", "{root}/runs.db", "--alpha", "0"], "must lie in (0, 1)"),
    (["runs", "compare", "1", "2", "--db", "{root}/runs.db", "--out", "{root}/afile"], "is a file"),
    (["runs", "list", "--db", "{root}/notes.db"], "notes.db"),
    (["runs", "list", "--db", "{root}/future.db"], "newer failsight"),
]


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    _setup_bad_inputs(root)
    return root


@pytest.mark.parametrize(("args", "message"), BAD_CLI, ids=[f"{i:02d}-{a[0]}" for i, (a, _) in enumerate(BAD_CLI)])
def test_bad_cli_input_is_refused_before_any_work(args, message, files, bad_root, monkeypatch):
    monkeypatch.chdir(bad_root)
    monkeypatch.delenv("FAILSIGHT_DB", raising=False)
    before = sorted(p.name for p in bad_root.iterdir())
    argv = [a.format(files=files, root=bad_root) for a in args]
    r = runner.invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert sorted(p.name for p in bad_root.iterdir()) == before  # no output folder, no run store
    assert (bad_root / "existing" / "report.html").read_text() == "earlier report"


def test_slices_reads_the_documented_logits_key(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    z = rng.normal(size=(300, 4)) + 3 * np.eye(4)[y]
    np.savez(tmp_path / "p.npz", labels=y, logits=z)
    np.savetxt(tmp_path / "g.csv", np.repeat(["a", "b", "c"], 100), fmt="%s", header="part", comments="")
    r = runner.invoke(app, ["slices", str(tmp_path / "p.npz"), "--groups", str(tmp_path / "g.csv"),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert f"overall {(z.argmax(1) == y).mean():.2%}" in r.output  # argmax of the logits: exactly their accuracy
    np.savez(tmp_path / "p1.npz", labels=(y > 1).astype(int), logits=rng.random(300))  # 1-D, all in [0, 1]
    r = runner.invoke(app, ["slices", str(tmp_path / "p1.npz"), "--groups", str(tmp_path / "g.csv"),
                            "--out", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "look like probabilities" in r.output


def test_audit_into_new_nested_folder_records_beside_it(files, tmp_path, monkeypatch):
    """The up-front store check does not refuse the default store beside an --out that does not exist yet."""
    monkeypatch.delenv("FAILSIGHT_DB", raising=False)
    out = tmp_path / "a" / "b" / "audit"
    r = runner.invoke(app, AUDIT[:1] + [a.format(files=files) for a in AUDIT[1:]] + ["-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a" / "b" / "failsight-runs.db").is_file() and (out / "report.html").is_file()


def test_runs_list_never_prints_terminal_escapes(tmp_path):
    db = str(tmp_path / "r.db")
    evil = "evil\x1b]0;pwned\x07\x1b[2J\rname\u202e"
    with RunStore(db) as store:
        store.record(**{**_record_args(1), "model_name": "m\x1b[31m"}, name=evil)
    r = runner.invoke(app, ["runs", "list", "--db", db])
    assert r.exit_code == 0, r.output
    assert not any(c in r.output for c in "\x1b\x07\r\u202e")
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x0dname\\u202e" in r.output
    assert display("plain name ✓") == "plain name ✓"


def test_ctrl_c_during_imports_exits_130_quietly():
    """A KeyboardInterrupt raised while the CLI's modules import (as a Ctrl-C there does): no traceback."""
    code = textwrap.dedent("""
        import sys
        class Interrupt:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == "typer":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt)
        sys.argv = ["failsight", "--version"]
        from failsight.__main__ import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130 and "Traceback" not in r.stderr and "interrupted" in r.stderr, r.stderr
