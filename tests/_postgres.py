"""A real PostgreSQL server for tests: ``$FAILSIGHT_TEST_POSTGRES_URL`` if set, else a throwaway server.

The throwaway server is initialised in a fresh temporary folder (``initdb``), listens only on a unix
socket inside that folder (no TCP port is opened, so parallel pytest-xdist workers never collide), runs
with durability switched off (fast; the data is thrown away) and is stopped and deleted by
:meth:`PostgresServer.stop`. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (created by Debian's ``postgresql`` package) through ``runuser``/``su``.

When no server can start, :class:`PostgresUnavailable` says precisely why (the tests skip with it).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

ENV_URL = "FAILSIGHT_TEST_POSTGRES_URL"

_SETTINGS = {  # appended to postgresql.conf: unix socket only, no durability, small footprint
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "20",
    "shared_buffers": "16MB",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bin_dir() -> Path | None:
    """Folder holding ``initdb`` and ``pg_ctl``: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


class PostgresServer:
    """A running server (``url``: a SQLAlchemy URL for the psycopg driver); :meth:`stop` shuts it down."""

    def __init__(self, url: str, base: Path | None = None, pg_ctl: list[str] | None = None,
                 schema: tuple[str, str] | None = None) -> None:
        self.url = url
        self._base = base
        self._pg_ctl = pg_ctl
        self._schema = schema  # (server URL, schema) to drop at the end (external server)

    def stop(self) -> None:
        if self._schema is not None:
            _run_sql(self._schema[0], f'DROP SCHEMA IF EXISTS "{self._schema[1]}" CASCADE')
            self._schema = None
        if self._base is None or self._pg_ctl is None:
            return
        try:
            subprocess.run([*self._pg_ctl, "-D", str(self._base / "data"), "-m", "immediate", "-w", "stop"],
                           capture_output=True, text=True, timeout=60, cwd=self._base)
        finally:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None


def _run_sql(url: str, *statements: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": 10})
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def _check_driver() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise PostgresUnavailable(
            f"the PostgreSQL driver psycopg is not installed ({exc}); pip install -e '.[test]'") from exc


def start_postgres() -> PostgresServer:
    """Start a throwaway server (or use ``$FAILSIGHT_TEST_POSTGRES_URL``); raises :class:`PostgresUnavailable`."""
    _check_driver()
    external = os.environ.get(ENV_URL)
    if external:
        for prefix in ("postgres://", "postgresql://"):
            if external.startswith(prefix):
                external = "postgresql+psycopg://" + external[len(prefix):]
        # one schema per pytest-xdist worker, so parallel workers sharing the server never collide
        worker = re.sub(r"\W", "_", os.environ.get("PYTEST_XDIST_WORKER", "main"))
        schema = f"failsight_test_{worker}"
        try:
            _run_sql(external, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE', f'CREATE SCHEMA "{schema}"')
        except Exception as exc:  # set but unusable: a configuration error, not a reason to skip
            raise RuntimeError(f"{ENV_URL} is set but the server cannot be used: {exc}") from exc
        import sqlalchemy as sa

        url = sa.engine.make_url(external).update_query_dict({"options": f"-csearch_path={schema}"})
        return PostgresServer(url.render_as_string(hide_password=False), schema=(external, schema))

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH nor in /usr/lib/postgresql/*/bin; "
            f"install them (Debian: apt-get install postgresql, which .ci/run does) or set {ENV_URL}.")
    initdb, pg_ctl = [str(bin_dir / "initdb")], [str(bin_dir / "pg_ctl")]
    owner = None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and PostgreSQL refuses to run as root; there is no 'postgres' user to run it "
                f"as (Debian's postgresql package creates it), or set {ENV_URL}.") from None
        if shutil.which("runuser"):
            initdb, pg_ctl = (["runuser", "-u", "postgres", "--", *c] for c in (initdb, pg_ctl))
        elif shutil.which("su"):
            initdb, pg_ctl = (["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(c) + ' "$@"', "--", "sh"]
                              for c in (initdb, pg_ctl))
        else:
            raise PostgresUnavailable("running as root without runuser or su to start PostgreSQL as 'postgres'.")

    # a short path: the unix socket path must stay under ~100 characters
    base = Path(tempfile.mkdtemp(prefix="fs-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        if owner is not None:
            os.chown(base, owner.pw_uid, owner.pw_gid)
        data, port = base / "data", _free_port()
        r = subprocess.run([*initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                            "--locale=C", "--no-sync"], capture_output=True, text=True, timeout=120, cwd=base)
        if r.returncode != 0:
            raise PostgresUnavailable(f"initdb failed (exit {r.returncode}): {_tail(r.stdout + r.stderr)}")
        settings = {**_SETTINGS, "port": str(port), "unix_socket_directories": f"'{base}'"}
        with open(data / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write("\n# failsight test server\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        log = base / "server.log"
        r = subprocess.run([*pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"],
                           capture_output=True, text=True, timeout=90, cwd=base)
        if r.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise PostgresUnavailable(
                f"pg_ctl start failed (exit {r.returncode}): {_tail(r.stdout + r.stderr + server_log)}")
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        PostgresServer("", base, pg_ctl).stop()  # in case it half-started; removes the folder
        if isinstance(exc, PostgresUnavailable):
            raise
        raise PostgresUnavailable(f"could not start a PostgreSQL server: {exc}") from exc
    return PostgresServer(f"postgresql+psycopg://postgres@/postgres?host={base}&port={port}", base, pg_ctl)
