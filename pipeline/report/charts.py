"""The report's charts, drawn with matplotlib and returned as SVG documents (text drawn as paths, so no font is
needed where the report is opened). Every chart is made from aggregates of a few hundred points at most; matplotlib
is imported only here, when an HTML report is asked for."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipeline.errors import UsageError
from pipeline.report.summary import NOT_YET_KNOWN, CampaignReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
# one colour per outcome, the same in every chart and table of the report
STATUS_COLOURS = {
    "READ": "#0b6e4f",
    "DELIVERED": "#2f9e44",
    "SENT": "#74b816",
    "ROUTED": "#f0b429",
    "QUEUED": "#f7c948",
    "FAILED": "#d64545",
    NOT_YET_KNOWN: "#bcccdc",
}
STEP_COLOUR = "#3e7cb1"
NOT_ACCEPTED_COLOUR = "#d64545"
_STATUS_ORDER = ("READ", "DELIVERED", "SENT", "ROUTED", "QUEUED", "FAILED", NOT_YET_KNOWN)
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # bundled with matplotlib: the same drawing on every machine
    "font.size": 10,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.frameon": False,
    "svg.fonttype": "path",
    "svg.hashsalt": "sentdm-batch-report",  # the same report from the same results, byte for byte
}


def status_colour(status: str) -> str:
    return STATUS_COLOURS.get(status, "#9aa5b1")


def plain_label(text: str) -> str:
    """A value from the data as a chart label: shortened, and with `$` escaped so matplotlib never reads it as
    mathtext (which could fail on it)."""
    short = text if len(text) <= 24 else text[:23] + "\u2026"
    return short.replace("$", r"\$")


def ordered_statuses(statuses: Sequence[str]) -> list[str]:
    known = [s for s in _STATUS_ORDER if s in statuses]
    return known + sorted(s for s in statuses if s not in _STATUS_ORDER)


@contextmanager
def _figure(width_in: float, height_in: float) -> Iterator[tuple[Figure, Axes]]:
    try:
        import matplotlib as mpl
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "the HTML report draws its charts with matplotlib, which is not installed. Hint: "
            "`pip install 'sentdm-batch[report]'` (or `pip install matplotlib`); the text report needs nothing more."
        ) from None
    with mpl.rc_context(_STYLE):  # type: ignore[arg-type]  # its keys are a Literal of every rc name
        figure = Figure(figsize=(width_in, height_in), layout="constrained")
        yield figure, figure.add_subplot()


def _svg(figure: Figure) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None}, transparent=True)
    return out.getvalue()


def _time_axis(axes: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()  # type: ignore[no-untyped-call]  # matplotlib.dates has no annotations
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def funnel_chart(report: CampaignReport) -> str:
    steps = report.funnel if report.delivery_known else report.funnel[:3]
    with _figure(9.0, 0.55 * len(steps) + 0.6) as (figure, axes):
        names = [s.name for s in steps][::-1]
        counts = [s.count for s in steps][::-1]
        bars = axes.barh(names, counts, color=STEP_COLOUR, height=0.62)
        top = max(counts[-1], 1)
        labels = [f"{c:,}  ({100 * c / top:.1f}%)" if i < len(counts) - 1 else f"{c:,}" for i, c in enumerate(counts)]
        axes.bar_label(bars, labels=labels, padding=4, color=INK)
        axes.set_xlim(0, top * 1.22)
        axes.xaxis.set_visible(False)
        axes.spines[["bottom", "left"]].set_visible(False)
        axes.tick_params(axis="y", length=0, labelsize=11)
        return _svg(figure)


def rate_chart(report: CampaignReport) -> str | None:
    series = report.series
    timing = report.timing
    if timing is None or series.is_empty():
        return None
    per_s = 1000 / timing.bin_ms
    width_days = timing.bin_ms / 86_400_000
    with _figure(9.0, 3.0) as (figure, axes):
        at = series["at"].to_list()
        accepted = [n * per_s for n in series["accepted"].to_list()]
        refused = [n * per_s for n in series["not_accepted"].to_list()]
        axes.bar(at, accepted, width=width_days, align="edge", color=STATUS_COLOURS["DELIVERED"], label="accepted")
        axes.bar(
            at,
            refused,
            width=width_days,
            align="edge",
            bottom=accepted,
            color=NOT_ACCEPTED_COLOUR,
            label="not accepted",
        )
        _time_axis(axes)
        axes.set_ylabel("requests / s")
        axes.set_title(f"Sending rate (answers per second, in {_width(timing.bin_ms)} bins, UTC)")
        axes.grid(axis="y", color=GRID)
        axes.set_axisbelow(True)
        axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
        return _svg(figure)


def latency_chart(report: CampaignReport) -> str | None:
    series = report.series.drop_nulls("p50_ms")
    timing = report.timing
    if timing is None or series.is_empty():
        return None
    with _figure(9.0, 3.0) as (figure, axes):
        middle = timedelta(milliseconds=timing.bin_ms / 2)  # a bin's figures belong to its middle, as its bar shows
        at = [start + middle for start in series["at"].to_list()]
        marker = "o" if series.height < 30 else None
        axes.plot(at, series["max_ms"].to_list(), color="#bcccdc", label="max", marker=marker, markersize=3)
        axes.plot(at, series["p90_ms"].to_list(), color="#f0b429", label="p90", marker=marker, markersize=3)
        axes.plot(
            at, series["p50_ms"].to_list(), color=STEP_COLOUR, label="median", marker=marker, markersize=3, linewidth=2
        )
        _time_axis(axes)
        axes.set_ylim(bottom=0)
        axes.set_ylabel("ms")
        axes.set_title(f"Request latency (per {_width(timing.bin_ms)} bin, UTC)")
        axes.grid(axis="y", color=GRID)
        axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3)
        return _svg(figure)


def channel_chart(report: CampaignReport) -> str | None:
    if not report.channels:
        return None
    channels = list(report.channels)[:12][::-1]
    statuses = ordered_statuses(sorted({s for c in channels for s in report.channels[c]}))
    labels = [plain_label(c) for c in channels]
    with _figure(9.0, 0.5 * len(channels) + 1.1) as (figure, axes):
        left = [0] * len(channels)
        for status in statuses:
            counts = [report.channels[c].get(status, 0) for c in channels]
            axes.barh(labels, counts, left=left, color=status_colour(status), label=plain_label(status), height=0.6)
            left = [a + b for a, b in zip(left, counts, strict=True)]
        axes.set_xlabel("accepted rows")
        axes.spines[["left"]].set_visible(False)
        axes.tick_params(axis="y", length=0, labelsize=11)
        axes.grid(axis="x", color=GRID)
        axes.set_axisbelow(True)
        axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=len(statuses))
        return _svg(figure)


def _width(bin_ms: int) -> str:
    if bin_ms < 1000:
        return f"{bin_ms} ms"
    if bin_ms < 60_000:
        return f"{bin_ms // 1000} s"
    if bin_ms < 3_600_000:
        return f"{bin_ms // 60_000} min"
    return f"{bin_ms // 3_600_000} h"
