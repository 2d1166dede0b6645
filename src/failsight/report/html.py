"""One self-contained HTML report built from ordered sections (jinja2).

A :class:`Report` holds :class:`Section` objects in order; each section holds blocks (paragraphs,
figures, tables, raw HTML) that render in the order added. Pillars contribute a function that turns
their result into a ``Section`` (see :mod:`failsight.report.sections`); the demo, the CLI and the audit
collect sections and call :meth:`Report.write`. Figures are embedded as ``data:`` URIs and the CSS is
inlined, so the file opens offline and can be mailed around.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from failsight import __version__
from failsight._io import OutputExistsError, atomic_write, check_output
from failsight._validate import FailsightInputError
from failsight.types import Interval, to_jsonable

__all__ = [
    "Figure",
    "FigureRow",
    "Html",
    "KeyFigure",
    "Paragraph",
    "Report",
    "ReportExistsError",
    "Section",
    "Table",
    "check_writable",
    "fmt_ci",
    "fmt_num",
    "write_json",
]

_TEMPLATES = Path(__file__).with_name("templates")
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_NUM_RE = re.compile(r"^([-+−]?[0-9.,]+([eE][-+]?[0-9]+)?%?|–|[-−]?∞)(\s|$)")


#: Raised when an output file exists and overwriting was not asked for (``force=False``).
ReportExistsError = OutputExistsError


# --------------------------------------------------------------------------------------------------
# number formatting (used by tables and by pillars' section builders)
# --------------------------------------------------------------------------------------------------


def fmt_num(x: Any, digits: int = 4, pct: bool = False) -> str:
    """Format a number for a table: ``digits`` significant digits, ``pct`` as a percentage, "–" for
    ``None``/NaN, integers as integers."""
    if x is None:
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–" if math.isnan(v) else ("∞" if v > 0 else "−∞")
    if pct:
        return f"{100 * v:.{max(digits - 2, 1)}f}%"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits or abs(v) < 1e-3:
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def fmt_ci(value: Any, ci: Any = None, digits: int = 4, pct: bool = False, ci_digits: int = 3) -> Markup:
    """``value`` with its interval (an :class:`Interval`, a ``(low, high)`` pair or ``None``) as HTML;
    the bounds get ``ci_digits`` significant digits."""
    main = escape(fmt_num(value, digits, pct))
    if ci is None:
        return Markup(main)
    if isinstance(ci, Interval):
        lo, hi = ci.low, ci.high
    elif isinstance(ci, dict):
        lo, hi = ci.get("low"), ci.get("high")
    else:
        lo, hi = ci
    return Markup('{} <span class="ci">[{}, {}]</span>').format(
        main, fmt_num(lo, ci_digits, pct), fmt_num(hi, ci_digits, pct))


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Paragraph:
    """Plain text (escaped when rendered); ``kind`` "text", "note" (muted box) or "warning"."""

    text: str
    kind: str = "text"
    block: str = dataclasses.field(default="paragraph", init=False)


@dataclasses.dataclass
class Html:
    """Trusted HTML markup inserted as is (build it with ``markupsafe.escape`` for user strings)."""

    markup: str
    block: str = dataclasses.field(default="html", init=False)


@dataclasses.dataclass
class Figure:
    """An embedded figure: ``src`` is a ``data:`` URI (from :func:`failsight.report.plots.fig_to_data_uri`)
    or inline ``<svg>`` markup. ``alt`` describes it for screen readers."""

    src: str
    caption: str = ""
    alt: str = ""
    block: str = dataclasses.field(default="figure", init=False)

    def __post_init__(self) -> None:
        s = self.src.lstrip()
        if not (s.startswith("data:image/") or s.startswith("<svg")):
            raise FailsightInputError(
                "Figure.src must be a data:image/... URI or inline <svg> markup so the report stays "
                "self-contained; use failsight.report.plots.fig_to_data_uri(fig)."
            )

    @property
    def inline_svg(self) -> bool:
        return self.src.lstrip().startswith("<svg")

    @classmethod
    def from_matplotlib(cls, fig: Any, caption: str = "", alt: str = "", fmt: str = "svg",
                        dpi: int = 110) -> Figure:
        """Embed a matplotlib figure (``fmt`` "svg" or "png")."""
        from failsight.report.plots import fig_to_data_uri

        return cls(fig_to_data_uri(fig, fmt=fmt, dpi=dpi), caption=caption, alt=alt or caption)


@dataclasses.dataclass
class FigureRow:
    """Figures shown side by side on wide screens, stacked on phones."""

    figures: list[Figure]
    block: str = dataclasses.field(default="figure_row", init=False)


@dataclasses.dataclass
class Table:
    """A table. Cells may be numbers (formatted with :func:`fmt_num`), strings (escaped) or ``Markup``
    (e.g. from :func:`fmt_ci`). ``highlight`` lists row indices to emphasise (e.g. the best row)."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    highlight: Sequence[int] = ()
    numeric: Sequence[bool] | None = None
    block: str = dataclasses.field(default="table", init=False)

    def __post_init__(self) -> None:
        for i, r in enumerate(self.rows):
            if len(r) != len(self.columns):
                raise FailsightInputError(
                    f"table row {i} has {len(r)} cells but there are {len(self.columns)} columns."
                )

    def cells(self) -> list[list[Markup]]:
        """Rows as rendered HTML cells."""
        out = []
        for r in self.rows:
            row = []
            for v in r:
                if isinstance(v, Markup):
                    row.append(v)
                elif isinstance(v, str):
                    row.append(escape(v))
                else:
                    row.append(escape(fmt_num(v)))
            out.append(row)
        return out

    def align_right(self) -> list[bool]:
        """Per column: right-align (numeric columns) or not."""
        if self.numeric is not None:
            return list(self.numeric)
        flags = []
        for j in range(len(self.columns)):
            vals = [r[j] for r in self.rows]
            flags.append(bool(vals) and all(_is_numeric_cell(v) for v in vals))
        return flags


def _is_numeric_cell(v: Any) -> bool:
    """Numbers, and markup/text that reads as a number (e.g. from :func:`fmt_ci`), align right."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, (int, float, np.number)) or v is None:
        return True
    if isinstance(v, str):
        text = Markup(v).striptags() if isinstance(v, Markup) else v
        return bool(_NUM_RE.match(text.strip()))
    return False


@dataclasses.dataclass
class KeyFigure:
    """A headline number shown as a card at the top of a section."""

    label: str
    value: str
    hint: str = ""
    tone: str = "neutral"  # neutral | good | bad | warn


# --------------------------------------------------------------------------------------------------
# section and report
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Section:
    """One report section: ``title``, an ``id`` (anchor, lowercase letters/digits/-/_), an optional
    ``intro`` text, headline ``key_figures``, ordered ``blocks`` and ``notes`` (shown at the end).

    Build it with the chaining helpers: ``Section("Reliability", "reliability").text(...).figure(...)``.
    A pillar that could not run adds a section with ``status="skipped"`` and the reason as a note, so
    the report says so instead of silently leaving it out.
    """

    title: str
    id: str
    intro: str = ""
    key_figures: list[KeyFigure] = dataclasses.field(default_factory=list)
    blocks: list[Any] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    status: str = "ok"  # ok | skipped | failed

    def __post_init__(self) -> None:
        if not _ID_RE.match(self.id):
            raise FailsightInputError(
                f"section id {self.id!r} must start with a lowercase letter and hold only a-z, 0-9, '-' or '_'."
            )

    def text(self, text: str, kind: str = "text") -> Section:
        self.blocks.append(Paragraph(text, kind))
        return self

    def heading(self, text: str) -> Section:
        self.blocks.append(Html(Markup("<h3>{}</h3>").format(text)))
        return self

    def html(self, markup: str) -> Section:
        self.blocks.append(Html(markup))
        return self

    def figure(self, fig: Figure | Any, caption: str = "", alt: str = "", fmt: str = "svg") -> Section:
        """Add a :class:`Figure` or a matplotlib figure (embedded as ``fmt``)."""
        if not isinstance(fig, Figure):
            fig = Figure.from_matplotlib(fig, caption=caption, alt=alt, fmt=fmt)
        self.blocks.append(fig)
        return self

    def figures(self, figs: Iterable[Figure]) -> Section:
        self.blocks.append(FigureRow(list(figs)))
        return self

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "",
              highlight: Sequence[int] = ()) -> Section:
        self.blocks.append(Table(list(columns), [list(r) for r in rows], caption, list(highlight)))
        return self

    def key(self, label: str, value: str, hint: str = "", tone: str = "neutral") -> Section:
        self.key_figures.append(KeyFigure(label, value, hint, tone))
        return self

    def note(self, text: str) -> Section:
        self.notes.append(text)
        return self


@dataclasses.dataclass
class Report:
    """An ordered collection of sections rendered into one self-contained HTML file.

    ``meta`` is a dict shown in the header (data, model, seed, ...); ``created`` defaults to now
    (pass a fixed string for byte-reproducible reports).
    """

    title: str = "failsight report"
    subtitle: str = ""
    sections: list[Section] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str | None = None

    def add(self, section: Section) -> Report:
        """Append a section (ids must be unique); returns the report for chaining."""
        if not isinstance(section, Section):
            raise FailsightInputError(f"expected a Section, got {type(section).__name__}.")
        if any(s.id == section.id for s in self.sections):
            raise FailsightInputError(
                f"the report already has a section with id {section.id!r}; give each section a unique id."
            )
        self.sections.append(section)
        return self

    def section(self, section_id: str) -> Section:
        """The section with this id."""
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(section_id)

    def render(self) -> str:
        """The whole report as an HTML string."""
        env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=select_autoescape(["html"]),
                          trim_blocks=True, lstrip_blocks=True)
        css = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
        created = self.created or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
        return env.get_template("base.html").render(
            title=self.title, subtitle=self.subtitle, sections=self.sections,
            meta={k: fmt_num(v) if not isinstance(v, str) else v for k, v in self.meta.items()},
            created=created, version=__version__, css=Markup(css),
        )

    def write(self, path: str | Path, force: bool = False) -> Path:
        """Render and write to ``path`` atomically (parent folders are created; see :func:`failsight._io.atomic_write`).
        Refuses to replace an existing file or a link unless ``force`` (raises :class:`ReportExistsError`).
        Returns the path."""
        path = Path(path)
        check_writable([path], force)
        return atomic_write(path, self.render(), force=force)


def check_writable(paths: Iterable[str | Path], force: bool = False) -> None:
    """Raise :class:`ReportExistsError` naming the first of ``paths`` that exists or is a symbolic link
    (unless ``force``) or that is a directory (see :func:`failsight._io.check_output`)."""
    check_output(paths, force)


def write_json(path: str | Path, data: Any, force: bool = False) -> Path:
    """Write ``data`` (results, dataclasses, numpy arrays: anything :func:`to_jsonable` takes) as
    indented strict JSON, atomically. Refuses to overwrite unless ``force``. Returns the path."""
    path = Path(path)
    check_writable([path], force)
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    return atomic_write(path, text + "\n", force=force)
