"""Figures for the report (matplotlib, Agg canvas, no pyplot state).

Every figure function returns a :class:`matplotlib.figure.Figure`; :func:`fig_to_data_uri` and
:func:`fig_to_svg` turn one into a string the HTML report embeds (no files, no network). Figures are
built on ``matplotlib.figure.Figure`` directly, so nothing here touches the global pyplot state or the
user's backend.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from failsight._validate import FailsightInputError, as_float_array, to_numpy

__all__ = [
    "COLORS",
    "confidence_histogram_figure",
    "fig_to_data_uri",
    "fig_to_svg",
    "new_figure",
    "reliability_diagram_figure",
    "risk_coverage_figure",
    "set_margins",
]

#: Colour palette shared by all report figures (colour-blind safe, Okabe-Ito).
COLORS = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "red": "#D55E00",
    "purple": "#CC79A7", "sky": "#56B4E9", "yellow": "#F0E442", "grey": "#6b7280", "ink": "#1f2937",
}

_RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.edgecolor": "#9ca3af", "axes.grid": True, "grid.color": "#e5e7eb", "grid.linewidth": 0.6,
    "svg.fonttype": "path", "svg.hashsalt": "failsight",
}


def new_figure(width: float = 5.0, height: float = 3.6, nrows: int = 1, ncols: int = 1,
               layout: str | None = None, **subplot_kw: Any) -> tuple[Figure, Any]:
    """A figure (inches) with an Agg canvas and the report style; returns ``(fig, axes)``.

    ``layout=None`` (default) uses fixed margins (see :func:`set_margins`): about twice as fast to
    render as ``"constrained"``, which figures with outside legends or many panels may still ask for.
    """
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout=layout)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=True, **subplot_kw)
    if layout is None:
        set_margins(fig)
    return fig, axes


def set_margins(fig: Figure, left: float = 0.62, right: float = 0.15, bottom: float = 0.5, top: float = 0.4,
                hspace: float | None = None, wspace: float | None = None) -> None:
    """Fixed figure margins in inches (tick labels and axis titles need ~0.5 in on the left/bottom)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        hspace=hspace, wspace=wspace)


def fig_to_svg(fig: Figure) -> str:
    """Render ``fig`` as SVG markup (text kept as text, deterministic ids, no date metadata)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def fig_to_data_uri(fig: Figure, fmt: str = "svg", dpi: int = 110) -> str:
    """Render ``fig`` as a ``data:`` URI for ``<img src=...>``: ``fmt="svg"`` (crisp line art) or
    ``"png"`` (image grids, heatmaps with many cells)."""
    import matplotlib

    if fmt not in ("svg", "png"):
        raise FailsightInputError(f"fmt must be 'svg' or 'png', got {fmt!r}.")
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _rgb(color: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def _style(ax: Any) -> None:
    ax.set_axisbelow(True)


def reliability_diagram_figure(
    bin_edges: Any,
    confidence: Any,
    accuracy: Any,
    count: Any,
    *,
    title: str = "Reliability diagram",
    ece: float | None = None,
    width: float = 4.6,
    height: float = 4.4,
) -> Figure:
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal, the gap between
    each bar and the bin's mean confidence shaded (red: over-confident, orange: under-confident), and a
    strip below with the number of samples per bin.

    ``bin_edges`` ``(b+1,)``; ``confidence``, ``accuracy``, ``count`` ``(b,)`` (empty bins: count 0,
    their confidence/accuracy may be NaN and are not drawn).
    """
    edges = as_float_array(bin_edges, "bin_edges", ndim=1)
    b = len(edges) - 1
    conf = np.asarray(to_numpy(confidence, "confidence"), dtype=np.float64).reshape(-1)
    acc = np.asarray(to_numpy(accuracy, "accuracy"), dtype=np.float64).reshape(-1)
    cnt = np.asarray(to_numpy(count, "count"), dtype=np.float64).reshape(-1)
    if not (len(conf) == len(acc) == len(cnt) == b) or b < 1:
        raise FailsightInputError(
            f"reliability diagram needs b+1 bin edges and b values per bin; got {len(edges)} edges, "
            f"{len(conf)} confidences, {len(acc)} accuracies, {len(cnt)} counts."
        )
    fig, (ax, axc) = new_figure(width, height, nrows=2, ncols=1, sharex=True,
                                gridspec_kw={"height_ratios": [3.2, 1]})
    set_margins(fig, top=0.6 if ece is not None else 0.4, hspace=0.12)
    left, widths = edges[:-1], np.diff(edges)
    ok = (cnt > 0) & np.isfinite(conf) & np.isfinite(acc)
    ax.bar(left[ok], acc[ok], width=widths[ok], align="edge", color=COLORS["blue"], alpha=0.85,
           edgecolor="white", linewidth=0.6, label="accuracy in bin", zorder=2)
    over = ok & (conf > acc)
    under = ok & (conf < acc)
    # gap between accuracy and mean confidence: over-confident (above the bar) light red, hatched;
    # under-confident (inside the bar) opaque orange, so the blue part ends at the bin's confidence
    for mask, face, edge, label in ((over, (*_rgb("#dc2626"), 0.28), "#dc2626", "gap: over-confident"),
                                    (under, (*_rgb(COLORS["orange"]), 0.9), "#b45309", "gap: under-confident")):
        if mask.any():
            lo = np.minimum(acc[mask], conf[mask])
            ax.bar(left[mask], np.abs(conf[mask] - acc[mask]), bottom=lo, width=widths[mask], align="edge",
                   facecolor=face, edgecolor=edge, linewidth=0.8, hatch="///", label=label, zorder=3)
    ax.plot([0, 1], [0, 1], ls="--", color=COLORS["ink"], lw=1, label="perfect calibration", zorder=4)
    ax.scatter(conf[ok], acc[ok], s=10, color=COLORS["ink"], zorder=5)
    ax.set_xlim(float(edges[0]), float(edges[-1]))
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    t = title if ece is None else f"{title}\nECE = {ece:.4f}"
    ax.set_title(t)
    ax.legend(loc="upper left", frameon=False)
    _style(ax)
    axc.bar(left, cnt, width=widths, align="edge", color=COLORS["grey"], edgecolor="white", linewidth=0.4)
    if cnt.max() > 0 and cnt[cnt > 0].min() * 20 < cnt.max():
        axc.set_yscale("log")
    axc.set_ylabel("count")
    axc.set_xlabel("confidence (max probability)")
    _style(axc)
    return fig


def confidence_histogram_figure(
    confidence: Any,
    correct: Any,
    *,
    n_bins: int = 20,
    title: str = "Confidence of correct and wrong predictions",
    threshold: float | None = None,
    xlabel: str = "confidence (max probability)",
    width: float = 5.2,
    height: float = 3.4,
) -> Figure:
    """Histogram of a confidence score ``(n,)`` split by whether the prediction was ``correct`` ``(n,)``.

    Each group is normalised to sum to one (the groups differ a lot in size), so the plot shows how
    the two distributions separate; group sizes are in the legend. ``threshold`` draws a vertical line.
    """
    conf = as_float_array(confidence, "confidence", ndim=1).astype(np.float64)
    ok = np.asarray(to_numpy(correct, "correct")).astype(bool).reshape(-1)
    if len(ok) != len(conf):
        raise FailsightInputError(f"confidence has {len(conf)} values but correct has {len(ok)}; they must match.")
    lo, hi = float(conf.min()), float(conf.max())
    if 0.0 <= lo and hi <= 1.0:  # a probability-like score: show up to 1, start at a round value
        lo, hi = np.floor(lo * 10.0) / 10.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, n_bins + 1)
    fig, ax = new_figure(width, height)
    for mask, color, name in ((ok, COLORS["blue"], "correct"), (~ok, COLORS["red"], "wrong")):
        m = int(mask.sum())
        if m == 0:
            continue
        h, _ = np.histogram(conf[mask], bins=edges)
        ax.stairs(h / m, edges, fill=True, alpha=0.35, color=color, zorder=2)
        ax.stairs(h / m, edges, color=color, lw=1.5, label=f"{name} (n = {m})", zorder=3)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color=COLORS["ink"], ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of group")
    ax.set_title(title)
    ax.legend(loc="upper left", frameon=False)
    _style(ax)
    return fig


def risk_coverage_figure(
    coverage: Any,
    risk: Any,
    *,
    aurc: float | None = None,
    chosen: tuple[float, float] | None = None,
    chosen_bound: float | None = None,
    max_risk: float | None = None,
    title: str = "Risk-coverage curve",
    extra_curves: Sequence[tuple[str, Any, Any]] = (),
    width: float = 5.2,
    height: float = 4.2,
) -> Figure:
    """Selective risk against coverage ``(m,)`` each, with the target ``max_risk`` as a dashed line and
    the ``chosen`` (coverage, risk) operating point marked (its guaranteed ``chosen_bound`` as an error
    bar). ``extra_curves``: ``(label, coverage, risk)`` for other scores."""
    cov = as_float_array(coverage, "coverage", ndim=1).astype(np.float64)
    rk = as_float_array(risk, "risk", ndim=1).astype(np.float64)
    if len(cov) != len(rk):
        raise FailsightInputError(f"coverage has {len(cov)} points but risk has {len(rk)}; they must match.")
    fig, ax = new_figure(width, height)
    set_margins(fig, left=0.7, bottom=1.45)  # room for the legend below the axes
    label = "selective risk" + (f" (AURC {aurc:.4f})" if aurc is not None else "")
    ax.plot(cov, rk, color=COLORS["blue"], lw=1.8, label=label, zorder=3)
    palette = [COLORS["green"], COLORS["purple"], COLORS["orange"], COLORS["sky"]]
    for i, (name, c, r) in enumerate(extra_curves):
        ax.plot(np.asarray(c, float), np.asarray(r, float), lw=1.2,
                color=palette[i % len(palette)], label=name, zorder=2)
    if max_risk is not None:
        ax.axhline(max_risk, color=COLORS["red"], ls="--", lw=1, label=f"target risk {max_risk:g}")
    if chosen is not None:
        c, r = chosen
        ax.axvline(c, color=COLORS["grey"], ls=":", lw=1)
        if chosen_bound is not None and np.isfinite(chosen_bound):
            ax.errorbar([c], [r], yerr=[[0.0], [max(chosen_bound - r, 0.0)]], fmt="none",
                        ecolor=COLORS["ink"], capsize=4, lw=1.2, zorder=4)
        ax.scatter([c], [r], s=60, marker="D", color=COLORS["orange"], edgecolor=COLORS["ink"], zorder=5,
                   label=f"chosen: coverage {c:.1%}, risk {r:.2%}"
                         + (f", bound {chosen_bound:.2%}" if chosen_bound is not None else ""))
    top = max(float(np.nanmax(rk)) if len(rk) else 0.0, max_risk or 0.0, chosen_bound or 0.0)
    ax.set_ylim(0, max(top * 1.1, 1e-3))
    # zoom in on the part of the curve that carries information: from a bit before the first error
    first_err = cov[rk > 0].min() if np.any(rk > 0) else 1.0
    lo = first_err if chosen is None else min(first_err, chosen[0])
    x0 = float(np.clip(np.floor((lo - 0.05) * 10) / 10, 0.0, 0.8))
    ax.set_xlim(x0, 1.0 + 0.01 * (1.0 - x0))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.set_xlabel("coverage (fraction of inputs answered)" + (f", from {x0:g}" if x0 > 0 else ""))
    ax.set_ylabel("risk (error rate on answered)")
    ax.set_title(title)
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False, ncols=1)
    _style(ax)
    return fig
