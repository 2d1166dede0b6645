"""failsight.report: one self-contained HTML report (jinja2) with embedded matplotlib figures.

Pillars turn their results into :class:`Section` objects (see :mod:`failsight.report.sections`); a
:class:`Report` renders them in order into one file with :meth:`Report.write`.
"""

from failsight.report.html import (
    Figure,
    FigureRow,
    Html,
    KeyFigure,
    Paragraph,
    Report,
    ReportExistsError,
    Section,
    Table,
    check_writable,
    fmt_ci,
    fmt_num,
    write_json,
)
from failsight.report.plots import fig_to_data_uri, fig_to_svg
from failsight.report.sections import reliability_section, skipped_section

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
    "fig_to_data_uri",
    "fig_to_svg",
    "fmt_ci",
    "fmt_num",
    "reliability_section",
    "skipped_section",
    "write_json",
]
