"""Run history: a results store for audits (a SQLite file by default, any SQLAlchemy URL such as PostgreSQL).

Every audit records one *run*: the identity of the model and of the data (hashes plus display names),
the configuration, every metric (dotted names such as ``reliability.ece``) and, optionally, the
per-sample predictions with their group labels, so that two runs on the same data can later be compared
metric by metric *and* slice by slice (:func:`failsight.slices.compare`).

Schema (SQLAlchemy Core; the same tables on SQLite and PostgreSQL):

* ``failsight_runs``: one row per run: ``id``, ``created_at`` (UTC), ``name``, ``model_id``,
  ``model_name``, ``data_id``, ``data_name``, ``config`` (JSON text), ``report_path``,
  ``failsight_version``, ``has_predictions``;
* ``failsight_run_metrics``: ``(run_id, name, value)``, one row per metric (``NULL``: not available),
  so plain SQL can query metrics across runs;
* ``failsight_run_blobs``: ``(run_id, kind, data)`` binary payloads; ``kind="predictions"`` holds an
  ``np.savez_compressed`` archive of ``y``, ``pred`` and the group labels (read back without pickle);
* ``failsight_meta``: ``(key, value)``; ``schema_version`` is :data:`SCHEMA_VERSION` (a store written before
  the schema was versioned has no such table: it is recognised by its tables and upgraded on first write).

Opening a store for writing creates or upgrades the schema in one transaction under a lock (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so any number of processes may open a store
that does not exist yet at the same time. A database holding other applications' tables and no failsight
tables is refused unless ``allow_foreign=True`` (CLI: ``--db-force``); a store written by a newer failsight
(a higher schema version) is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from failsight import __version__
from failsight._validate import (
    FailsightInputError,
    as_float_array,
    check_fraction,
    check_int,
    check_labels,
    to_numpy,
)
from failsight.types import Result, to_jsonable

if TYPE_CHECKING:
    from failsight.slices import Comparison, SliceReport

__all__ = [
    "SCHEMA_VERSION",
    "MetricRow",
    "RunComparison",
    "RunRecord",
    "RunStore",
    "RunStoreError",
    "check_run_name",
    "metadata",
    "metric_direction",
]

#: Blob kind of the stored predictions.
PREDICTIONS = "predictions"

_INSTALL_HINT = "pip install 'failsight[postgres]'"

#: Version of the table layout; bump it (and add an upgrade step in ``RunStore._upgrade``) on any change.
SCHEMA_VERSION = 1
#: Largest run id a store can hold (SQL BIGINT); larger ids name no run.
_MAX_ID = 2**63 - 1
#: Key of the PostgreSQL advisory lock that serialises schema creation (any fixed 64-bit number).
_PG_SCHEMA_LOCK = 0x6661696C73696768  # "failsigh"
#: Seconds a SQLite writer waits for another writer's lock before failing.
_SQLITE_BUSY_TIMEOUT = 60.0

metadata = sa.MetaData()

runs_table = sa.Table(
    "failsight_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("model_id", sa.String(255), nullable=False, index=True),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("data_id", sa.String(255), nullable=False, index=True),
    sa.Column("data_name", sa.String(255), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("report_path", sa.Text, nullable=True),
    sa.Column("failsight_version", sa.String(64), nullable=False),
    sa.Column("has_predictions", sa.Boolean, nullable=False),
)

metrics_table = sa.Table(
    "failsight_run_metrics", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("failsight_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("value", sa.Float, nullable=True),
    sa.Index("ix_failsight_run_metrics_name", "name"),
)

blobs_table = sa.Table(
    "failsight_run_blobs", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("failsight_runs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

meta_table = sa.Table(
    "failsight_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

#: Tables of schema version 1 before it was versioned (``failsight_meta`` came with versioning).
_LEGACY_TABLES = ("failsight_runs", "failsight_run_metrics", "failsight_run_blobs")


class RunStoreError(FailsightInputError):
    """The run store cannot be opened or used (bad URL, missing driver, unreachable server, not a database)."""


# --------------------------------------------------------------------------------------------------
# result types
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunRecord(Result):
    """One recorded run. ``created_at`` is an ISO 8601 UTC timestamp; ``metrics`` maps dotted metric
    names to values (``None``: not available); ``has_predictions`` says whether per-sample predictions
    were stored (see :meth:`RunStore.predictions`)."""

    id: int
    created_at: str
    name: str
    model_id: str
    model_name: str
    data_id: str
    data_name: str
    config: dict[str, Any]
    metrics: dict[str, float | None]
    report_path: str | None
    failsight_version: str
    has_predictions: bool

    @property
    def label(self) -> str:
        """Short display label: ``#id 'name'``."""
        return f"#{self.id} {self.name!r}"


@dataclasses.dataclass(frozen=True)
class MetricRow(Result):
    """One metric of two runs side by side: ``delta = b - a``; ``direction`` is "higher", "lower" or
    ``None`` (unknown, see :func:`metric_direction`); ``better`` is "a", "b" or ``None`` (tie, unknown
    direction or a missing value)."""

    metric: str
    a: float | None
    b: float | None
    delta: float | None
    direction: str | None
    better: str | None


@dataclasses.dataclass(frozen=True)
class RunComparison(Result):
    """Two runs side by side (result of :meth:`RunStore.compare`); ``a`` is the baseline.

    ``slices`` is the paired per-slice comparison (:class:`failsight.slices.Comparison`, candidate ``b``
    against baseline ``a``) when both runs stored predictions for the same data, else ``None`` and
    ``slices_note`` says why; ``slice_report`` is run ``b``'s own per-slice evaluation on the same
    slicings (for the report).
    """

    a: RunRecord
    b: RunRecord
    metrics: tuple[MetricRow, ...]
    slices: Comparison | None
    slices_note: str | None
    same_model: bool
    same_data: bool
    slice_report: SliceReport | None = None

    @property
    def worse(self) -> tuple[MetricRow, ...]:
        """Metrics on which ``b`` is worse than ``a``, largest relative change first."""
        return _by_relative_change(r for r in self.metrics if r.better == "a")

    @property
    def better(self) -> tuple[MetricRow, ...]:
        """Metrics on which ``b`` is better than ``a``, largest relative change first."""
        return _by_relative_change(r for r in self.metrics if r.better == "b")

    def summary(self) -> list[str]:
        """A few plain-text lines, worst news first."""
        a, b = self.a.label, self.b.label
        lines: list[str] = []
        if not self.same_data:
            lines.append(f"different data: {a} ran on {self.a.data_name} ({self.a.data_id[:12]}), {b} on "
                         f"{self.b.data_name} ({self.b.data_id[:12]}); metric deltas mix the model change with "
                         "the data change.")
        s = self.slices
        bad_slices = s is not None and (s.partial_failure or bool(s.regressed) or s.overall.verdict == "regressed")
        if bad_slices:
            lines.append(s.summary())
        for rows, word in ((self.worse, "worse"), (self.better, "better")):
            if rows:
                shown = "; ".join(_fmt_row(r) for r in rows[:6])
                more = f" (and {len(rows) - 6} more)" if len(rows) > 6 else ""
                lines.append(f"{word} in {b} than {a}: {shown}{more}.")
        other = [r for r in self.metrics if r.direction is None and r.delta not in (None, 0.0)]
        if other:
            lines.append(f"{len(other)} metric(s) without a known direction changed: "
                         + "; ".join(_fmt_row(r) for r in other[:4]) + ("; ..." if len(other) > 4 else "") + ".")
        if s is not None and not bad_slices:
            lines.append(s.summary())
        elif s is None and self.slices_note:
            lines.append(f"no per-slice comparison: {self.slices_note}")
        if not any(r.delta not in (None, 0.0) for r in self.metrics) and not bad_slices:
            lines.insert(int(not self.same_data), f"no metric changed between {a} and {b}.")
        return lines


def _by_relative_change(rows: Any) -> tuple[MetricRow, ...]:
    return tuple(sorted(rows, key=lambda r: -abs(r.delta) / max(abs(r.a), 1e-12)))


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _fmt_row(r: MetricRow) -> str:
    delta = "" if r.delta is None else f" ({r.delta:+.3g})"
    return f"{r.metric} {_num(r.a)} -> {_num(r.b)}{delta}"


# --------------------------------------------------------------------------------------------------
# metric directions
# --------------------------------------------------------------------------------------------------

#: Substrings of a metric name and whether larger values are better; checked in this order, so
#: ``accuracy_drop`` reads as lower-better and ``coverage_at_risk`` as higher-better.
_DIRECTIONS: tuple[tuple[str, str], ...] = (
    ("drop", "lower"),
    ("accuracy", "higher"), ("coverage", "higher"), ("auroc", "higher"), ("aupr", "higher"),
    ("f1", "higher"), ("precision", "higher"), ("recall", "higher"),
    ("ece", "lower"), ("mce", "lower"), ("brier", "lower"), ("nll", "lower"), ("error", "lower"),
    ("risk", "lower"), ("fpr", "lower"), ("aurc", "lower"),
)


def metric_direction(name: str) -> str | None:
    """Whether a larger value of metric ``name`` is better ("higher"), worse ("lower") or unknown (``None``),
    read from the name (``reliability.accuracy``: higher; ``reliability.ece``: lower; ``defuse.n_regions``:
    unknown)."""
    low = str(name).lower()
    for token, direction in _DIRECTIONS:
        if token in low:
            return direction
    return None


def _metric_rows(ma: Mapping[str, float | None], mb: Mapping[str, float | None]) -> tuple[MetricRow, ...]:
    rows = []
    for name in sorted(set(ma) | set(mb)):
        a, b = ma.get(name), mb.get(name)
        direction = metric_direction(name)
        delta = None if a is None or b is None else b - a
        better = None
        if delta is not None and direction is not None and abs(delta) > 1e-12 * max(abs(a), abs(b), 1.0):
            better = "b" if (delta > 0) == (direction == "higher") else "a"
        rows.append(MetricRow(name, a, b, delta, direction, better))
    return tuple(rows)


# --------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------


def _check_text(value: Any, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise FailsightInputError(f"{name} must be a non-empty string, got {value!r}.")
    if len(value) > 255 and name not in ("report_path",):
        raise FailsightInputError(f"{name} is {len(value)} characters long; keep it to 255 (use a hash for ids).")
    return value


def check_run_name(name: Any, what: str = "name") -> str:
    """A valid run name (non-empty text of at most 255 characters), or :class:`FailsightInputError`."""
    return _check_text(name, what)  # type: ignore[return-value]


def _check_metrics(metrics: Any) -> dict[str, float | None]:
    if not isinstance(metrics, Mapping):
        raise FailsightInputError(
            f"metrics must be a dict {{name: number or None}}, got {type(metrics).__name__}.")
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key.strip() or len(key) > 255:
            raise FailsightInputError(
                f"metric name {key!r} must be a non-empty string of at most 255 characters, e.g. 'reliability.ece'.")
        if value is None:
            out[key] = None
            continue
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if not isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
            raise FailsightInputError(
                f"metric {key!r} is {type(value).__name__} ({value!r}); metrics must be numbers or None. "
                "Put structured results in config or in the report instead.")
        v = float(value)
        out[key] = v if math.isfinite(v) else None  # NaN/inf are stored as "not available"
    return out


def _check_groups(groups: Any, n: int) -> dict[str, np.ndarray]:
    if groups is None:
        return {}
    if not isinstance(groups, Mapping):
        groups = {"group": groups}
    out: dict[str, np.ndarray] = {}
    for name, g in groups.items():
        where = f"predictions['groups'][{name!r}]"
        if not isinstance(name, str) or not name:
            raise FailsightInputError(f"slicing names in predictions['groups'] must be non-empty strings, got {name!r}.")
        arr = to_numpy(g, where)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or len(arr) != n:
            raise FailsightInputError(
                f"{where} has shape {arr.shape}; it needs one group label per sample, shape ({n},).")
        if arr.dtype == object:
            if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in arr.tolist()):
                raise FailsightInputError(
                    f"{where} has missing labels (None/NaN); give them an explicit label such as 'unknown'.")
            arr = arr.astype(str)
        elif arr.dtype.kind == "f":
            arr = as_float_array(arr, where)
        elif arr.dtype.kind not in "biuUS":
            raise FailsightInputError(f"{where} has unsupported dtype {arr.dtype}; use integer or string labels.")
        out[name] = arr
    return out


def _check_predictions(predictions: Any) -> dict[str, Any]:
    """Validate ``{"y": (n,), "pred": (n,) or (n, k), "groups": {name: (n,)}}``."""
    if not isinstance(predictions, Mapping):
        raise FailsightInputError(
            "predictions must be a dict {'y': labels (n,), 'pred': predicted labels (n,), "
            f"'groups': {{slicing: labels (n,)}}}}, got {type(predictions).__name__}.")
    unknown = sorted(set(predictions) - {"y", "pred", "groups"})
    missing = [k for k in ("y", "pred") if k not in predictions]
    if unknown or missing:
        raise FailsightInputError(
            f"predictions has {'unknown keys ' + str(unknown) if unknown else ''}"
            f"{' and ' if unknown and missing else ''}{'no ' + ' or '.join(map(repr, missing)) if missing else ''}; "
            "pass {'y': true labels, 'pred': predicted labels, 'groups': {slicing: labels}} (groups optional).")
    y = check_labels(predictions["y"], name="predictions['y']")
    pred = to_numpy(predictions["pred"], "predictions['pred']")
    if pred.ndim == 2 and pred.shape[1] > 1:  # probabilities or logits: keep the predicted class only
        pred = as_float_array(pred, "predictions['pred']").argmax(axis=1)
    pred = check_labels(pred, name="predictions['pred']")
    if len(pred) != len(y):
        raise FailsightInputError(
            f"predictions['pred'] has {len(pred)} samples but predictions['y'] has {len(y)}; they must match.")
    return {"y": y, "pred": pred, "groups": _check_groups(predictions.get("groups"), len(y))}


def _compact(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.min_scalar_type(int(labels.max())), copy=False)


def _pack_predictions(p: dict[str, Any]) -> bytes:
    names = list(p["groups"])
    arrays = {"y": _compact(p["y"]), "pred": _compact(p["pred"]), "group_names": np.array(json.dumps(names))}
    for i, name in enumerate(names):
        arrays[f"g{i}"] = p["groups"][name]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unpack_predictions(blob: bytes) -> dict[str, Any]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as f:
        names = json.loads(str(f["group_names"]))
        return {"y": f["y"].astype(np.int64), "pred": f["pred"].astype(np.int64),
                "groups": {name: f[f"g{i}"] for i, name in enumerate(names)}}


# --------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, start transactions (the documented pysqlite recipe), so DDL is
    transactional and a connection can ask for ``BEGIN IMMEDIATE`` (execution option ``sqlite_begin``): the
    write lock taken up front, so concurrent writers queue on the busy timeout instead of deadlocking."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def _make_url(url: str | os.PathLike, create: bool) -> sa.engine.URL:
    if isinstance(url, os.PathLike) or (isinstance(url, str) and "://" not in url):
        text = os.fspath(url)
        if not str(text).strip():
            raise FailsightInputError("the run store path is empty; pass a file path (SQLite) or a database URL.")
        path = Path(text).expanduser()
        if path.is_dir():
            raise FailsightInputError(f"{path} is a folder; pass the path of a SQLite file, e.g. {path / 'failsight-runs.db'}.")
        if not path.parent.is_dir():
            raise FailsightInputError(f"the folder of the run store {path} does not exist; create {path.parent} first.")
        if not create and not path.exists():
            raise FailsightInputError(f"there is no run store at {path}; record a run first (failsight audit) "
                                      "or pass the path of an existing store.")
        return sa.engine.URL.create("sqlite", database=str(path))
    if not isinstance(url, str):
        raise FailsightInputError(f"the run store must be a file path or a database URL string, got {type(url).__name__}.")
    text = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if text.startswith(prefix):
            text = "postgresql+psycopg://" + text[len(prefix):]
    try:
        return sa.engine.make_url(text)
    except (sa_exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise FailsightInputError(
            f"{url!r} is not a valid database URL ({exc}); pass a file path for SQLite or a URL such as "
            "postgresql://user:password@host:5432/dbname.") from exc


class RunStore:
    """Results store for audit runs.

    ``url``: a file path (a SQLite file, created if missing; its folder must exist) or any SQLAlchemy URL
    (``sqlite:///runs.db``, ``postgresql://user@host/db``; plain ``postgresql://`` uses the psycopg 3
    driver, installed by ``pip install 'failsight[postgres]'``). Tables are created (or an unversioned
    store upgraded) if needed unless ``create=False``, which instead refuses a store that does not exist
    yet and changes nothing. ``allow_foreign``: use a database that already holds other applications'
    tables (refused by default, so failsight never mixes its tables into another program's database by
    mistake). ``connect_timeout`` (seconds) bounds the wait for an unreachable PostgreSQL server.

    Safe for concurrent use: several processes may create and write the same new store at once.

    Use it as a context manager (or call :meth:`close`)::

        with RunStore("failsight-runs.db") as store:
            run = store.record(model_id=h, model_name="cnn", data_id=d, data_name="digits-test",
                               config={"seed": 0}, metrics={"reliability.accuracy": 0.97})
            store.compare(run.id - 1, run.id).summary()
    """

    def __init__(self, url: str | os.PathLike, *, create: bool = True, connect_timeout: int = 10,
                 allow_foreign: bool = False, _check_only: bool = False) -> None:
        connect_timeout = check_int(connect_timeout, "connect_timeout", minimum=1)
        self.url = _make_url(url, create)
        self.location = self.url.render_as_string(hide_password=True)
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite" and self.url.database not in (None, "", ":memory:"):
            self.location = str(self.url.database)
        kwargs: dict[str, Any] = {}
        if self.backend == "postgresql" and "connect_timeout" not in self.url.query:
            kwargs["connect_args"] = {"connect_timeout": connect_timeout}
        if self.backend == "sqlite":
            kwargs["connect_args"] = {"timeout": _SQLITE_BUSY_TIMEOUT}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except sa_exc.NoSuchModuleError as exc:
            raise RunStoreError(
                f"unknown database type {self.url.drivername!r} in {self.location!r}; use a SQLite file path or a "
                "URL such as postgresql://user@host/db.") from exc
        except ImportError as exc:
            hint = (f"{_INSTALL_HINT} (psycopg 3, used by plain postgresql:// URLs)"
                    if self.backend == "postgresql" else "install the database driver")
            raise RunStoreError(
                f"the database driver for {self.url.drivername!r} is not installed ({_first_line(exc)}); "
                f"{hint}, or use a SQLite file path.") from exc
        except sa_exc.ArgumentError as exc:
            raise RunStoreError(f"cannot use the database URL {self.location!r}: {exc}") from exc
        if self.backend == "sqlite":
            _sqlite_transactions(self.engine)
        try:
            with self._errors("opening"):
                self._open_schema(create, bool(allow_foreign), _check_only)
        except BaseException:
            self.engine.dispose()
            raise

    # ---------------------------------------------------------------------------------------- schema

    def _schema_version(self, conn: sa.Connection, tables: set[str]) -> int | None:
        """The stored schema version; ``None`` for an unversioned (pre-versioning) store."""
        if meta_table.name not in tables:
            return None
        value = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")).scalar()
        try:
            return int(value)
        except (TypeError, ValueError):
            raise RunStoreError(
                f"{self.location} has a {meta_table.name} table without a valid schema_version ({value!r}); it was "
                "not written by failsight, or was damaged. Use another store.") from None

    def _check_version(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise RunStoreError(
                f"the run store {self.location} was written by a newer failsight (schema version {version}; this "
                f"failsight {__version__} reads up to version {SCHEMA_VERSION}). Upgrade failsight "
                "(pip install -U failsight) or use another store.")
        if version is not None and version < 1:
            raise RunStoreError(f"the run store {self.location} has an unknown schema version {version}.")

    def _check_legacy(self, conn: sa.Connection) -> None:
        """An unversioned store must have version 1's columns to be read or upgraded."""
        insp = sa.inspect(conn)
        for table in (runs_table, metrics_table):
            have = {c["name"] for c in insp.get_columns(table.name)}
            missing = sorted({c.name for c in table.columns} - have)
            if missing:
                raise RunStoreError(
                    f"{self.location} has a table {table.name} without the column(s) {', '.join(missing)}: it was "
                    "not written by failsight, or by an unknown version. Use another store.")

    @classmethod
    def check(cls, url: str | os.PathLike, *, allow_foreign: bool = False, connect_timeout: int = 10) -> str:
        """Check, without writing anything, that a run could be recorded in ``url``: the URL parses, the driver
        is installed, the server answers, the SQLite file's folder exists and is writable, and the database is a
        failsight store of a known version (or a new/empty one; one with other applications' tables only when
        ``allow_foreign``). Raises :class:`RunStoreError` / :class:`FailsightInputError` naming the problem;
        returns the store's display location. The CLI calls it before any work starts."""
        target = _make_url(url, True)
        if target.get_backend_name() == "sqlite" and target.database not in (None, "", ":memory:"):
            path = Path(str(target.database))
            if not path.exists():  # connecting would create the file: check the folder instead
                if not os.access(path.parent, os.W_OK | os.X_OK):
                    raise RunStoreError(f"cannot create the run store {path}: its folder {path.parent} is not "
                                        "writable; pass a --db in a folder you can write to.")
                return str(path)
            if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
                raise RunStoreError(f"the run store {path} is not a file you can read and write; fix its "
                                    "permissions or pass another --db.")
        store = cls(url, create=True, allow_foreign=allow_foreign, connect_timeout=connect_timeout, _check_only=True)
        store.close()
        return store.location

    def _open_schema(self, create: bool, allow_foreign: bool, check_only: bool = False) -> None:
        ours = {t.name for t in metadata.sorted_tables}
        with self.engine.connect() as conn:  # fast path, no lock: an existing, current store
            tables = set(sa.inspect(conn).get_table_names())
            version = self._schema_version(conn, tables)
            self._check_version(version)
            if version == SCHEMA_VERSION and ours <= tables:
                return
            if check_only:  # what _create_or_upgrade would refuse, without writing
                self._refuse_foreign(tables, allow_foreign)
                if version is None and runs_table.name in tables:
                    self._check_legacy(conn)
                return
            if not create:
                if runs_table.name not in tables:
                    raise RunStoreError(f"{self.location} holds no failsight runs (no table {runs_table.name}); "
                                        "record a run first (failsight audit) or check the store path/URL.")
                if version is None:  # readable as is; upgraded by the first write
                    self._check_legacy(conn)
                return
        try:
            self._create_or_upgrade(allow_foreign)
        except sa_exc.DatabaseError:
            if self.backend in ("sqlite", "postgresql"):
                raise
            self._create_or_upgrade(allow_foreign)  # no lock there: a concurrent creator won; check again

    def _create_or_upgrade(self, allow_foreign: bool) -> None:
        ours = {t.name for t in metadata.sorted_tables}
        with self._schema_lock() as conn:  # create or upgrade: one process at a time, in one transaction
            tables = set(sa.inspect(conn).get_table_names())
            version = self._schema_version(conn, tables)
            self._check_version(version)
            if version == SCHEMA_VERSION and ours <= tables:
                return  # another process created it while this one waited for the lock
            self._refuse_foreign(tables, allow_foreign)
            if version is None and runs_table.name in tables:
                self._check_legacy(conn)  # an unversioned store of version 1: stamp it
            metadata.create_all(conn, checkfirst=True)
            if version is None:
                conn.execute(meta_table.insert(), [
                    {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    {"key": "created_by", "value": f"failsight {__version__}"}])

    def _refuse_foreign(self, tables: set[str], allow_foreign: bool) -> None:
        ours = {t.name for t in metadata.sorted_tables}
        foreign = sorted(t for t in tables - ours if not t.startswith("sqlite_"))
        if not (tables & ours) and foreign and not allow_foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise RunStoreError(
                f"{self.location} already holds tables of another application ({shown}) and no failsight runs; "
                "failsight will not add its tables to it. Pass a new file or database for the run store, or "
                "allow it explicitly (CLI: --db-force; library: allow_foreign=True).")

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``, so concurrent writers queue instead of failing)."""
        conn = self.engine.connect()
        if self.backend == "sqlite":
            conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        with conn, conn.begin():
            yield conn

    @contextmanager
    def _schema_lock(self) -> Iterator[sa.Connection]:
        """A connection in a transaction that holds the store's schema lock; commits on a clean exit."""
        if self.backend == "sqlite":
            with self.engine.connect().execution_options(sqlite_begin="BEGIN IMMEDIATE") as conn, conn.begin():
                yield conn
        elif self.backend == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SCHEMA_LOCK})
                yield conn
        else:  # other databases: no portable lock; a lost race shows up as "already exists" below
            with self.engine.begin() as conn:
                yield conn

    # ---------------------------------------------------------------------------------------- plumbing

    def __repr__(self) -> str:
        return f"RunStore({self.location!r})"

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.OperationalError as exc:
            reason = _first_line(exc)
            if self.backend == "sqlite":
                if "locked" in reason or "busy" in reason:
                    hint = (f"another program held a lock on it for over {_SQLITE_BUSY_TIMEOUT:.0f} s; retry when "
                            "it is done")
                elif "readonly" in reason or "read-only" in reason:
                    hint = "make the file (and its folder) writable, or use another store"
                else:
                    hint = "check that it is a SQLite file written by failsight and that you can read and write it"
                raise RunStoreError(
                    f"cannot use the SQLite run store {self.location} while {action} it: {reason}; {hint}.") from exc
            raise RunStoreError(
                f"cannot reach the run store {self.location} while {action} it: {reason}. Check that "
                "the server runs and that host, port, user, password and database name are right.") from exc
        except sa_exc.DatabaseError as exc:
            raise RunStoreError(
                f"database error while {action} the run store {self.location}: {_first_line(exc)}. Is it a "
                "failsight run store (a SQLite file or database written by failsight)?") from exc

    # ---------------------------------------------------------------------------------------- writing

    def record(self, *, model_id: str, model_name: str, data_id: str, data_name: str, config: Mapping[str, Any],
               metrics: Mapping[str, float | None], predictions: Mapping[str, Any] | None = None,
               name: str | None = None, report_path: str | os.PathLike | None = None,
               failsight_version: str = __version__) -> RunRecord:
        """Record one run and return it.

        ``model_id``/``data_id`` identify model and data (e.g. content hashes); ``*_name`` are for people.
        ``config``: JSON-able settings. ``metrics``: ``{dotted name: number or None}`` (NaN/inf are stored as
        ``None``). ``predictions``: ``{"y": (n,) int, "pred": (n,) int or (n, k) scores, "groups": {slicing:
        (n,) labels}}``, stored compactly so two runs on the same data can be compared per slice.
        ``name`` defaults to ``<model_name>-<UTC time>``.
        """
        fields = {k: _check_text(v, k) for k, v in (("model_id", model_id), ("model_name", model_name),
                                                    ("data_id", data_id), ("data_name", data_name),
                                                    ("failsight_version", failsight_version))}
        if name is not None:
            name = _check_text(name, "name")
        report = _check_text(report_path, "report_path", optional=True)
        if not isinstance(config, Mapping):
            raise FailsightInputError(f"config must be a dict of settings, got {type(config).__name__}.")
        config_text = json.dumps(to_jsonable(dict(config)), sort_keys=True)
        values = _check_metrics(metrics)
        blob = None if predictions is None else _pack_predictions(_check_predictions(predictions))
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        if name is None:
            name = f"{fields['model_name'][:230]}-{created:%Y%m%d-%H%M%S}"
        with self._errors("writing to"), self._write() as conn:
            res = conn.execute(runs_table.insert().values(
                created_at=created, name=name, config=config_text, report_path=report,
                has_predictions=blob is not None, **fields))
            run_id = int(res.inserted_primary_key[0])
            if values:
                conn.execute(metrics_table.insert(),
                             [{"run_id": run_id, "name": k, "value": v} for k, v in values.items()])
            if blob is not None:
                conn.execute(blobs_table.insert().values(run_id=run_id, kind=PREDICTIONS, data=blob))
        return self.get(run_id)

    # ---------------------------------------------------------------------------------------- reading

    def _records(self, conn: sa.Connection, rows: list[Any]) -> list[RunRecord]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        metrics: dict[int, dict[str, float | None]] = {i: {} for i in ids}
        q = sa.select(metrics_table).where(metrics_table.c.run_id.in_(ids)).order_by(metrics_table.c.name)
        for m in conn.execute(q):
            metrics[m.run_id][m.name] = m.value
        out = []
        for r in rows:
            created = r.created_at
            created = created.replace(tzinfo=_dt.timezone.utc) if created.tzinfo is None \
                else created.astimezone(_dt.timezone.utc)
            out.append(RunRecord(
                id=int(r.id), created_at=created.isoformat(), name=r.name, model_id=r.model_id,
                model_name=r.model_name, data_id=r.data_id, data_name=r.data_name, config=json.loads(r.config),
                metrics=metrics[r.id], report_path=r.report_path, failsight_version=r.failsight_version,
                has_predictions=bool(r.has_predictions)))
        return out

    def list(self, limit: int | None = 50) -> list[RunRecord]:
        """Recorded runs, newest first (at most ``limit``; ``None``: all)."""
        q = sa.select(runs_table).order_by(runs_table.c.id.desc())
        if limit is not None:
            q = q.limit(check_int(limit, "limit", minimum=1))
        with self._errors("reading"), self.engine.connect() as conn:
            return self._records(conn, list(conn.execute(q)))

    def get(self, run_id: int | str) -> RunRecord:
        """The run with this id, or whose name is ``run_id`` or starts with it (must be unique)."""
        if isinstance(run_id, (bool, np.bool_)) or not isinstance(run_id, (int, np.integer, str)):
            raise FailsightInputError(f"a run is named by its id (int) or a name prefix (str), got {run_id!r}.")
        key = str(run_id).strip()
        if isinstance(run_id, str) and key.startswith("#") and key[1:].isdigit():
            key = key[1:]
        if not key:
            raise FailsightInputError("the run name is empty; give a run id or a name prefix.")
        c = runs_table.c
        if key.isdigit() and int(key) > _MAX_ID and not isinstance(run_id, str):
            raise FailsightInputError(f"no run with id {key} in {self.location} (run ids are at most {_MAX_ID}); "
                                      "list the runs with `failsight runs list`.")
        with self._errors("reading"), self.engine.connect() as conn:
            if key.isdigit() and int(key) <= _MAX_ID:
                rows = list(conn.execute(sa.select(runs_table).where(c.id == int(key))))
                if rows or not isinstance(run_id, str):
                    if not rows:
                        raise FailsightInputError(f"no run with id {key} in {self.location}; "
                                                  "list the runs with `failsight runs list`.")
                    return self._records(conn, rows)[0]
            rows = list(conn.execute(sa.select(runs_table).where(c.name == key).order_by(c.id)))
            if not rows:
                q = sa.select(runs_table).where(c.name.startswith(key, autoescape=True)).order_by(c.id).limit(6)
                rows = list(conn.execute(q))
            if len(rows) == 1:
                return self._records(conn, rows)[0]
        if not rows:
            what = f"with id {key} (nor a name starting with it)" if key.isdigit() else repr(key)
            raise FailsightInputError(
                f"no run {what} in {self.location}: give a run id or a unique prefix of a run name "
                "(list them with `failsight runs list`).")
        shown = ", ".join(f"#{r.id} {r.name!r}" for r in rows[:5])
        raise FailsightInputError(
            f"{key!r} matches several runs ({shown}{', ...' if len(rows) > 5 else ''}); give the run id or more of "
            "the name.")

    def predictions(self, run_id: int | str) -> dict[str, Any] | None:
        """The stored predictions of a run, ``{"y": (n,) int64, "pred": (n,) int64, "groups": {name: (n,)}}``,
        or ``None`` when the run stored none."""
        run = self.get(run_id)
        if not run.has_predictions:
            return None
        q = sa.select(blobs_table.c.data).where(blobs_table.c.run_id == run.id, blobs_table.c.kind == PREDICTIONS)
        with self._errors("reading"), self.engine.connect() as conn:
            blob = conn.execute(q).scalar_one_or_none()
        return None if blob is None else _unpack_predictions(bytes(blob))

    # ---------------------------------------------------------------------------------------- comparing

    def compare(self, a: int | str, b: int | str, *, alpha: float = 0.05) -> RunComparison:
        """Compare run ``b`` (candidate) against run ``a`` (baseline): every metric side by side and, when
        both stored predictions for the same data, the paired per-slice comparison
        (:func:`failsight.slices.compare` at level ``alpha``, over the stored slicings plus ``class``)."""
        alpha = check_fraction(alpha, "alpha")
        ra, rb = self.get(a), self.get(b)
        rows = _metric_rows(ra.metrics, rb.metrics)
        same_model, same_data = ra.model_id == rb.model_id, ra.data_id == rb.data_id
        slices = slice_report = None
        note = None
        missing = [r.label for r in (ra, rb) if not r.has_predictions]
        if missing:
            note = f"run {' and '.join(missing)} stored no predictions (record them with predictions=...)."
        elif not same_data:
            note = "the runs used different data, so their predictions cannot be paired sample by sample."
        else:
            pa, pb = self.predictions(ra.id), self.predictions(rb.id)
            if pa is None or pb is None or not np.array_equal(pa["y"], pb["y"]):
                note = "the runs share a data id but their stored labels differ; they cannot be paired."
            else:
                from failsight.slices import compare as compare_slices
                from failsight.slices import evaluate

                groups: dict[str, np.ndarray] = {}
                dropped = []
                for name in dict.fromkeys([*pa["groups"], *pb["groups"]]):
                    ga, gb = pa["groups"].get(name), pb["groups"].get(name)
                    if ga is not None and gb is not None and np.array_equal(ga, gb):
                        groups[name] = ga
                    else:
                        dropped.append(name)
                if "class" not in groups:
                    groups = {"class": pa["y"], **groups}
                slices = compare_slices(pa["y"], pa["pred"], pb["pred"], groups, alpha=alpha)
                slice_report = evaluate(pa["y"], pb["pred"], groups)
                if dropped:
                    note = (f"slicing(s) {', '.join(map(repr, dropped))} left out: stored by one run only or with "
                            "different labels.")
        return RunComparison(ra, rb, rows, slices, note, same_model, same_data, slice_report)
