"""Monitor persistence in the run store (SQLite file by default, PostgreSQL by URL).

Two tables beside the run history's (same database, same engine as :class:`failsight.runs.RunStore`):

* ``failsight_monitors``: one row per monitor: ``id``, ``name`` (unique), ``created_at``, ``fingerprint``
  (sha256 of the reference set), ``model_name``, ``n_classes``, ``n_reference``, ``config`` (JSON),
  ``reference`` (``np.savez_compressed`` of the reference probabilities and labels, read without pickle),
  ``failsight_version``;
* ``failsight_monitor_windows``: one row per window: ``(monitor_id, window_id)``, ``created_at``,
  ``name``, ``n``, ``result`` (the :class:`~failsight.monitor.WindowResult` as JSON), ``predictions``
  (compressed predicted classes and accepted mask, so late labels give the true accuracy), ``labels``
  (once attached), ``true_accuracy``.

Every write is one transaction: a failed or refused write leaves the stored monitor unchanged.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
from typing import Any

import numpy as np
import sqlalchemy as sa

from failsight import __version__
from failsight._validate import FailsightInputError
from failsight.runs.store import RunStore

__all__ = ["MonitorStore", "monitors_table", "windows_table"]

metadata = sa.MetaData()

monitors_table = sa.Table(
    "failsight_monitors", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("n_classes", sa.Integer, nullable=False),
    sa.Column("n_reference", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("reference", sa.LargeBinary, nullable=False),
    sa.Column("failsight_version", sa.String(64), nullable=False),
)

windows_table = sa.Table(
    "failsight_monitor_windows", metadata,
    sa.Column("monitor_id", sa.Integer, sa.ForeignKey("failsight_monitors.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("window_id", sa.Integer, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("predictions", sa.LargeBinary, nullable=False),
    sa.Column("labels", sa.LargeBinary, nullable=True),
    sa.Column("true_accuracy", sa.Float, nullable=True),
)


def _pack(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


class MonitorStore:
    """Monitors and their windows in a run store. ``url``: a SQLite file path (created if missing) or a
    database URL, or an open :class:`~failsight.runs.RunStore`. ``create=False`` refuses a store without
    monitors (for reading, e.g. the report)."""

    def __init__(self, url: str | os.PathLike | RunStore, *, create: bool = True) -> None:
        self._owned = not isinstance(url, RunStore)
        self.runs = RunStore(url, create=create) if self._owned else url
        self.engine = self.runs.engine
        self.location = self.runs.location
        try:
            with self.runs._errors("opening"):
                if create:
                    metadata.create_all(self.engine, checkfirst=True)
                elif not sa.inspect(self.engine).has_table(monitors_table.name):
                    raise FailsightInputError(
                        f"{self.location} holds no monitor; record windows first (failsight monitor ... --db).")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._owned:
            self.runs.close()

    def __enter__(self) -> MonitorStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- monitors

    def names(self) -> list[str]:
        """Names of the stored monitors, oldest first."""
        with self.runs._errors("reading"), self.engine.connect() as conn:
            return [r.name for r in conn.execute(sa.select(monitors_table.c.name).order_by(monitors_table.c.id))]

    def _monitor_id(self, conn: sa.Connection, name: str) -> int:
        mid = conn.execute(sa.select(monitors_table.c.id).where(monitors_table.c.name == name)).scalar_one_or_none()
        if mid is None:
            raise FailsightInputError(f"{self.location} holds no monitor named {name!r}.")
        return int(mid)

    def create(self, name: str, fingerprint: str, config: dict[str, Any], ref_probs: np.ndarray,
               ref_y: np.ndarray, model_name: str) -> None:
        """Record a new monitor with its reference set."""
        blob = _pack(probs=np.asarray(ref_probs, dtype=np.float64), y=np.asarray(ref_y, dtype=np.int64))
        with self.runs._errors("writing to"), self.engine.begin() as conn:
            conn.execute(monitors_table.insert().values(
                name=name, created_at=_now(), fingerprint=fingerprint, model_name=model_name[:255],
                n_classes=int(ref_probs.shape[1]), n_reference=len(ref_y), config=json.dumps(config, sort_keys=True),
                reference=blob, failsight_version=__version__))

    def load(self, name: str, last: int | None = None) -> dict[str, Any] | None:
        """The stored monitor ``name`` (config, reference, windows) or ``None``; ``last``: only the most recent
        ``last`` windows (oldest first), so reopening a long-running monitor reads a bounded amount."""
        from failsight.monitor.core import WindowResult

        with self.runs._errors("reading"), self.engine.connect() as conn:
            row = conn.execute(sa.select(monitors_table).where(monitors_table.c.name == name)).first()
            if row is None:
                return None
            ref = _unpack(row.reference)
            q = sa.select(windows_table.c.result).where(windows_table.c.monitor_id == row.id)
            if last is None:
                q = q.order_by(windows_table.c.window_id)
            else:
                q = q.order_by(windows_table.c.window_id.desc()).limit(int(last))
            windows = [WindowResult.from_dict(json.loads(r.result)) for r in conn.execute(q)]
            if last is not None:
                windows.reverse()
        created = row.created_at
        created = created.replace(tzinfo=_dt.timezone.utc) if created.tzinfo is None else created
        return {"name": row.name, "created_at": created.isoformat(), "fingerprint": row.fingerprint,
                "model_name": row.model_name, "config": json.loads(row.config), "reference_probs": ref["probs"],
                "reference_y": ref["y"], "windows": windows, "failsight_version": row.failsight_version}

    # ---------------------------------------------------------------------------------------- windows

    def next_window_id(self, name: str) -> int:
        with self.runs._errors("reading"), self.engine.connect() as conn:
            mid = self._monitor_id(conn, name)
            last = conn.execute(sa.select(sa.func.max(windows_table.c.window_id))
                                .where(windows_table.c.monitor_id == mid)).scalar_one_or_none()
        return 1 if last is None else int(last) + 1

    def add_window(self, name: str, window: Any, pred: np.ndarray, accepted: np.ndarray | None) -> None:
        arrays = {"pred": pred}
        if accepted is not None:
            arrays["accepted"] = np.asarray(accepted, dtype=bool)
        with self.runs._errors("writing to"), self.engine.begin() as conn:
            mid = self._monitor_id(conn, name)
            conn.execute(windows_table.insert().values(
                monitor_id=mid, window_id=window.window_id, created_at=_now(), name=window.name[:255], n=window.n,
                result=window.to_json(), predictions=_pack(**arrays), labels=None, true_accuracy=None))

    def window(self, name: str, window_id: int) -> Any:
        """The stored :class:`~failsight.monitor.WindowResult` of one window, or ``None``."""
        from failsight.monitor.core import WindowResult

        with self.runs._errors("reading"), self.engine.connect() as conn:
            mid = self._monitor_id(conn, name)
            res = conn.execute(sa.select(windows_table.c.result).where(
                windows_table.c.monitor_id == mid, windows_table.c.window_id == window_id)).scalar_one_or_none()
        return None if res is None else WindowResult.from_dict(json.loads(res))

    def windows(self, name: str) -> list[Any]:
        """Every stored window of monitor ``name``, oldest first."""
        data = self.load(name)
        return [] if data is None else data["windows"]

    def predictions(self, name: str, window_id: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The stored predicted classes ``(n,)`` and accepted mask ``(n,)`` (or ``None``) of a window."""
        with self.runs._errors("reading"), self.engine.connect() as conn:
            mid = self._monitor_id(conn, name)
            blob = conn.execute(sa.select(windows_table.c.predictions).where(
                windows_table.c.monitor_id == mid, windows_table.c.window_id == window_id)).scalar_one_or_none()
        if blob is None:
            raise FailsightInputError(f"monitor {name!r} in {self.location} has no window {window_id}.")
        arrays = _unpack(blob)
        return arrays["pred"].astype(np.int64), arrays.get("accepted")

    def set_labels(self, name: str, window: Any, y: np.ndarray) -> None:
        """Store the labels of a window with its updated result."""
        with self.runs._errors("writing to"), self.engine.begin() as conn:
            mid = self._monitor_id(conn, name)
            conn.execute(windows_table.update().where(
                windows_table.c.monitor_id == mid, windows_table.c.window_id == window.window_id).values(
                result=window.to_json(), labels=_pack(y=np.asarray(y, dtype=np.int64)),
                true_accuracy=window.true_accuracy))
