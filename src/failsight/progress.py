"""Progress for every long loop: a rich bar in a terminal, plain log lines on stderr otherwise.

``progress_bar(label, enabled)`` returns a context manager with rich's task API (``add_task(description,
total=..., info=...)``, ``update(task, advance=1, info=..., total=...)``) plus ``advance(n, info)``, so a
loop written for rich works unchanged. Where stderr is not a terminal (``nohup``, CI, a pipe) it writes one
line when a step starts and ends, and at most every :data:`LOG_INTERVAL` seconds in between::

    [failsight] robustness: 12/79 (gaussian_noise s3) elapsed 0:41, ETA 3:49

The sweep engine sends a progress event to the driver when a task finishes, so the bar advances the same
way for 1 worker, N local workers or a Ray cluster. Set ``FAILSIGHT_PROGRESS=log`` (or ``bar``) to force
a mode.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["LOG_INTERVAL", "ProgressBar", "progress_bar"]

#: Seconds between two plain log lines of one step (the first and last line are always written).
LOG_INTERVAL = 10.0


def _fmt(seconds: float) -> str:
    s = round(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Progress of one step (or a few tasks) reported as a rich bar or as log lines; see the module docstring."""

    def __init__(self, label: str, *, enabled: bool = True, mode: str | None = None,
                 stream: TextIO | None = None, interval: float = LOG_INTERVAL) -> None:
        self.label = label
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        forced = os.environ.get("FAILSIGHT_PROGRESS", "").strip().lower()
        if mode is None:
            mode = forced if forced in ("bar", "log", "off") else None
        if mode is None:
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if callable(isatty) and isatty() else "log"
        self.mode = mode if self.enabled else "off"
        self.interval = float(interval)
        self._rich: Any = None
        self._tasks: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    # --- context ------------------------------------------------------------------------------------
    def __enter__(self) -> ProgressBar:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn(f"[bold]{self.label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(file=self.stream),
                transient=True)
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        if self.mode == "log":
            for tid, t in self._tasks.items():
                if not t["closed"]:
                    self._log(tid, final=True)

    # --- rich-compatible API --------------------------------------------------------------------------
    def add_task(self, description: str, total: float | None = None, info: str = "", **_: Any) -> int:
        """Start a step of ``total`` units; returns its id."""
        tid = self._next_id
        self._next_id += 1
        self._tasks[tid] = {"description": description, "total": total, "done": 0.0, "info": info,
                            "start": time.perf_counter(), "last": 0.0, "closed": False}
        if self._rich is not None:
            self._tasks[tid]["rich"] = self._rich.add_task(description, total=total, info=info)
        elif self.mode == "log":
            self._log(tid)
        return tid

    def update(self, task: int, *, advance: float = 0, info: str | None = None, total: float | None = None,
               **_: Any) -> None:
        """Advance step ``task`` by ``advance`` units, change its info text or total."""
        t = self._tasks[task]
        t["done"] += advance
        if info is not None:
            t["info"] = info
        if total is not None:
            t["total"] = total
        if self._rich is not None:
            kw: dict[str, Any] = {"advance": advance}
            if info is not None:
                kw["info"] = info
            if total is not None:
                kw["total"] = total
            self._rich.update(t["rich"], **kw)
        elif self.mode == "log":
            done = t["total"] is not None and t["done"] >= t["total"]
            if done or time.perf_counter() - t["last"] >= self.interval:
                self._log(task, final=done)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        """Advance the first step (added on demand with an unknown total)."""
        if not self._tasks:
            self.add_task(self.label)
        self.update(0, advance=n, info=info)

    # --- log lines ------------------------------------------------------------------------------------
    def _log(self, tid: int, final: bool = False) -> None:
        t = self._tasks[tid]
        now = time.perf_counter()
        t["last"] = now
        elapsed = now - t["start"]
        total, done = t["total"], t["done"]
        count = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
        eta = ""
        if total and 0 < done < total:
            eta = f", ETA {_fmt(elapsed * (total - done) / done)}"
        info = f" ({t['info']})" if t["info"] else ""
        name = self.label if t["description"] in ("", self.label) else f"{self.label} {t['description']}"
        state = " done" if final else ""
        self.stream.write(f"[failsight] {name}: {count}{info} elapsed {_fmt(elapsed)}{eta}{state}\n")
        self.stream.flush()
        if final:
            t["closed"] = True


def progress_bar(label: str, enabled: bool = True, *, mode: str | None = None,
                 stream: TextIO | None = None) -> ProgressBar:
    """A :class:`ProgressBar` for a loop named ``label`` (disabled: silent)."""
    return ProgressBar(label, enabled=enabled, mode=mode, stream=stream)
