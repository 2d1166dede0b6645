"""``failsight runs``: list recorded audit runs and compare two of them (a typer sub-app, thin).

Mounted by :mod:`failsight.cli` as ``app.add_typer(runs_app, name="runs")``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from failsight import __version__
from failsight._validate import FailsightInputError

__all__ = ["DEFAULT_DB", "ENV_DB", "display", "resolve_db", "runs_app"]

#: Exit code for bad input (the message on stderr says what is wrong and how to fix it).
EXIT_BAD_INPUT = 2
#: Environment variable naming the default run store.
ENV_DB = "FAILSIGHT_DB"
#: Run store used when neither --db nor $FAILSIGHT_DB is given (in the current folder).
DEFAULT_DB = "failsight-runs.db"

_DB_HELP = (f"Run store: a SQLite file or a database URL (postgresql://user@host/db). Default: ${ENV_DB}, "
            f"else {DEFAULT_DB} in the current folder.")

runs_app = typer.Typer(
    name="runs",
    help="Run history: list recorded audits and compare two of them, per metric and per slice.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _fail(message: str | BaseException) -> None:
    from failsight.cli import _reason

    shown = "\n".join(display(line) for line in _reason(message).split("\n"))  # may quote a run name
    typer.echo(f"failsight: error: {shown}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def display(text: Any) -> str:
    """``text`` made safe to print on a terminal: control and format characters (escape sequences, carriage
    returns, bidi overrides, ...) from run names, model or data names are shown escaped (``\\x1b``), never
    interpreted."""
    import unicodedata

    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == " " or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def resolve_db(db: str | None) -> str:
    """The store to use: ``db``, else ``$FAILSIGHT_DB``, else :data:`DEFAULT_DB`."""
    return db or os.environ.get(ENV_DB) or DEFAULT_DB


def _open(db: str | None) -> Any:
    from failsight.runs.store import RunStore

    target = resolve_db(db)
    if "://" not in target and not Path(target).expanduser().is_file():
        how = "--db" if db else (f"${ENV_DB}" if os.environ.get(ENV_DB) else "the default")
        raise FailsightInputError(
            f"no run store at {target} (from {how}); `failsight audit` records its runs in {DEFAULT_DB} next to "
            f"its --out folder: pass that file with --db or set {ENV_DB}.")
    return RunStore(target, create=False)


def _out_dir(value: str | Path) -> Path:
    from failsight.cli import _out_dir as parse

    return parse(value)


def _metric(metrics: dict[str, float | None], name: str) -> float | None:
    """``reliability.<name>`` if recorded, else the first metric whose last dotted part is ``name``."""
    if f"reliability.{name}" in metrics:
        return metrics[f"reliability.{name}"]
    return next((v for k, v in metrics.items() if k.rsplit(".", 1)[-1] == name), None)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f}%" if pct else f"{x:.4g}"


def _table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Plain-text table (works in pipes and logs)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if j in right else str(c).ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


@runs_app.command("list", short_help="List recorded runs, newest first.")
def list_runs(
    db: str | None = typer.Option(None, "--db", help=_DB_HELP, show_default=False),
    limit: int = typer.Option(20, "--limit", "-n", help="Show at most this many runs."),
) -> None:
    """List recorded runs, newest first: id, time (UTC), name, model, data, accuracy and ECE."""
    try:
        with _open(db) as store:
            runs = store.list(limit=limit)
            where = store.location
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    if not runs:
        typer.echo(f"no runs recorded in {where} yet.")
        return
    rows = [[str(r.id), r.created_at[:16].replace("T", " "), r.name, f"{r.model_name} ({r.model_id[:8]})",
             r.data_name, _fmt(_metric(r.metrics, "accuracy"), pct=True), _fmt(_metric(r.metrics, "ece"))]
            for r in runs]
    rows = [[display(c) for c in row] for row in rows]  # names come from users' files
    for line in _table(["id", "when (UTC)", "name", "model", "data", "accuracy", "ECE"], rows, right={0, 5, 6}):
        typer.echo(line)


def comparison_lines(cmp: Any) -> list[str]:
    """The text that ``failsight runs compare`` prints for a :class:`~failsight.runs.RunComparison`."""
    a, b = cmp.a, cmp.b
    lines = [f"baseline  a = {a.label}: {a.model_name} on {a.data_name}, {a.created_at[:16].replace('T', ' ')} UTC",
             f"candidate b = {b.label}: {b.model_name} on {b.data_name}, {b.created_at[:16].replace('T', ' ')} UTC",
             ""]
    lines += cmp.summary()
    if cmp.metrics:
        lines.append("")
        rows = [[r.metric, _fmt(r.a), _fmt(r.b), "–" if r.delta is None else f"{r.delta:+.4g}",
                 {"a": "a", "b": "b"}.get(r.better or "", "")] for r in cmp.metrics]
        lines += _table(["metric", "a", "b", "delta", "better"], rows, right={1, 2, 3})
    s = cmp.slices
    if s is not None:
        changed = [r for r in s.rows if r.verdict in ("regressed", "improved")]
        lines += ["", f"per slice ({s.test}, {s.correction}-corrected, alpha={s.alpha:g}): "
                      f"{len(s.regressed)} regressed, {len(s.improved)} improved of {len(s.rows)} slices"]
        for r in sorted(changed, key=lambda r: (r.verdict != "regressed", r.delta))[:20]:
            lines.append(f"  {r.slicing}={r.slice}: {r.baseline:.2%} -> {r.candidate:.2%} "
                         f"({r.delta * 100:+.2f} pts, n={r.n}, p_adj={r.p_adjusted:.3g}) {r.verdict}")
    return lines


@runs_app.command("compare", short_help="Compare two runs side by side, per metric and per slice.")
def compare_runs(
    a: str = typer.Argument(..., help="Baseline run: its id or a unique prefix of its name.", show_default=False,
                           metavar="A"),
    b: str = typer.Argument(..., help="Candidate run: its id or a unique prefix of its name.", show_default=False,
                           metavar="B"),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP, show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", show_default=False, parser=_out_dir, metavar="DIR",
                                    help="Also write report.html and results.json into this folder."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing report in --out."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the per-slice verdicts."),
) -> None:
    """Compare run B (candidate) against run A (baseline): every metric side by side, and, when both runs
    stored predictions for the same data, paired per-slice verdicts (McNemar, Holm-corrected) with a
    PARTIAL FAILURE flag when the aggregate holds while a slice regresses.

    Example: failsight runs compare 3 5 --out compare-3-5
    """
    from failsight.cli import _check_level, _check_out
    from failsight.report.html import write_json

    try:
        alpha = _check_level(alpha, "--alpha")
        paths = None if out is None else tuple(_check_out(out, ("report.html", "results.json"), force))
        with _open(db) as store:
            cmp = store.compare(a, b, alpha=alpha)
        if paths is not None:
            from failsight.runs.report import comparison_report

            comparison_report(cmp).write(paths[0], force=force)
            write_json(paths[1], {"failsight_version": __version__, "comparison": cmp}, force=force)
    except (FailsightInputError, OSError) as exc:
        _fail(exc)
        return
    for line in comparison_lines(cmp):
        typer.echo(display(line))
    if paths is not None:
        typer.echo(f"\nReport: {paths[0].resolve()}")
