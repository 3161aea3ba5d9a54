"""The report as one self-contained HTML file: inline CSS, charts as SVG data URIs, no script, and a
Content-Security-Policy that forbids loading anything from anywhere - so it opens offline, as an email attachment, and
nothing in the data can run in it. Every value from the results file is HTML-escaped."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from pipeline import __version__
from pipeline.errors import OutputError
from pipeline.report import charts
from pipeline.report.summary import CampaignReport
from pipeline.report.text import TRACK_HINT, number, percent, rate, seconds

GENERATOR = "sentdm-batch report"
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STEP_NOTES = {
    "rows": "data rows in the input",
    "valid": "passed every check (not invalid, not a duplicate)",
    "accepted": "Sent.dm accepted the request (result_status sent)",
    "delivered": "the message reached the phone (DELIVERED or READ)",
    "read": "the recipient opened it (WhatsApp and RCS report reads; SMS does not)",
}
_CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --accent: #3e7cb1; --bad: #d64545; --good: #2f9e44; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f7fa; color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; margin-top: 18px; }
h2 { margin: 0 0 12px; font-size: 18px; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; background: none; border: 0; padding: 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 28px; font-weight: 700; font-variant-numeric: tabular-nums; }
.card .share { color: var(--muted); font-size: 13px; }
.card.bad .value { color: var(--bad); }
.card.good .value { color: var(--good); }
.notice { background: #fffbea; border-color: #f0b429; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; white-space: nowrap; }
td.reason { word-break: break-word; font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
            font-size: 13px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.muted { color: var(--muted); }
img.chart { display: block; width: 100%; height: auto; margin: 4px 0 12px; }
dl.figures { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0 0 12px; }
dl.figures dt { color: var(--muted); }
dl.figures dd { margin: 0; font-variant-numeric: tabular-nums; }
footer { color: var(--muted); font-size: 13px; margin-top: 18px; }
"""


def render_html(report: CampaignReport, *, generated_at: datetime | None = None) -> str:
    """The whole HTML document."""
    when = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    name = escape(report.campaign)
    body = [
        f"<header><h1>Campaign report: {name}</h1>"
        f"<p>Results file <code>{escape(Path(report.results_path).name)}</code> &middot; "
        f"{report.rows:,} rows &middot; made {escape(when)}</p></header>",
        _cards(report),
    ]
    if not report.delivery_known:
        body.append(
            '<section class="notice" data-notice="delivery-unknown"><strong>Delivery is not yet known.</strong> '
            f"This results file has no delivery columns: {escape(TRACK_HINT)}, then make the report again.</section>"
        )
    body += [_funnel(report), _outcomes(report), _reasons(report), _channels(report), _timing(report)]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        f'<meta name="generator" content="{GENERATOR}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{name} - campaign report</title><style>{_CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(body) + f"\n<footer>Made by sentdm-batch {escape(__version__)} from the result "
        "columns only: no names, numbers or message texts are in this report.</footer>\n</main></body></html>\n"
    )


def write_html(report: CampaignReport, path: Path) -> None:
    """Render and replace `path` atomically (temp file beside it, fsync, rename). An existing file is replaced only
    when it is a report this tool made."""
    _check_replaceable(path)
    document = render_html(report)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "w", encoding="utf-8") as out:
            out.write(document)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write the report: {exc.strerror or exc}. Hint: choose another --html path."
        ) from None


def _check_replaceable(path: Path) -> None:
    if not path.exists():
        return
    if not path.is_file():
        raise OutputError(f"{path}: --html exists and is not a regular file. Hint: choose another path.")
    try:
        with open(path, encoding="utf-8", errors="replace") as existing:
            head = existing.read(4096)
    except OSError as exc:
        raise OutputError(f"{path}: --html exists and cannot be read: {exc.strerror or exc}.") from None
    if head and f'content="{GENERATOR}"' not in head:
        raise OutputError(
            f"{path}: --html would overwrite a file that is not a report made by this tool. Hint: choose another "
            "path, or move that file away if it may go."
        )


def _image(svg: str | None, alt: str) -> str:
    if svg is None:
        return ""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img class="chart" alt="{escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _card(metric: str, label: str, value: int | None, share: str, tone: str = "") -> str:
    shown = "not yet known" if value is None else f"{value:,}"
    size = ' style="font-size:17px;line-height:34px"' if value is None else ""
    return (
        f'<div class="card {tone}"><div class="label">{escape(label)}</div>'
        f'<div class="value" data-metric="{metric}"{size}>{shown}</div><div class="share">{escape(share)}</div></div>'
    )


def _of_accepted(count: int | None, accepted: int) -> str:
    return "" if count is None else f"{percent(count, accepted)} of accepted"


def _cards(report: CampaignReport) -> str:
    rows, valid, accepted = report.count("rows"), report.count("valid"), report.count("accepted")
    known = report.delivery_known
    delivered = report.count("delivered") if known else None
    read = report.count("read") if known else None
    failed = report.delivery_statuses.get("FAILED", 0) if known else None
    not_sent = valid - accepted
    cards = [
        _card("rows", "Rows", rows, "in the input"),
        _card("valid", "Valid", valid, f"{percent(valid, rows)} of rows"),
        _card(
            "accepted",
            "Accepted",
            accepted,
            f"{percent(accepted, valid)} of valid" + (f"; {not_sent:,} not" if not_sent else ""),
        ),
        _card("delivered", "Delivered", delivered, _of_accepted(delivered, accepted)),
        _card("read", "Read", read, _of_accepted(read, accepted), "good" if read else ""),
        _card("failed", "Delivery failed", failed, _of_accepted(failed, accepted), "bad" if failed else ""),
    ]
    if delivered is not None:
        cards[3] = cards[3].replace('class="card "', 'class="card good"')
    return '<section class="cards">' + "".join(cards) + "</section>"


def _funnel(report: CampaignReport) -> str:
    rows = []
    previous: int | None = None
    for step in report.funnel:
        unknown = step.name in ("delivered", "read") and not report.delivery_known
        count = "not yet known" if unknown else f"{step.count:,}"
        of_previous = "" if previous is None or unknown else percent(step.count, previous)
        of_rows = "" if unknown else percent(step.count, report.rows)
        lost = "; ".join(f"{n:,} {escape(what)}" for what, n in step.lost.items()) if not unknown else ""
        rows.append(
            f'<tr data-step="{step.name}"><td><strong>{step.name}</strong><br><span class="muted">'
            f'{escape(_STEP_NOTES.get(step.name, ""))}</span></td><td class="n">{count}</td>'
            f'<td class="n">{of_previous}</td><td class="n">{of_rows}</td><td>{lost}</td></tr>'
        )
        previous = step.count
    return (
        "<section><h2>Funnel</h2>"
        + _image(charts.funnel_chart(report), "funnel: rows, valid, accepted, delivered, read")
        + '<table><thead><tr><th>step</th><th class="n">rows</th><th class="n">of the step before</th>'
        '<th class="n">of all rows</th><th>stopped at this step</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></section>"
    )


def _count_table(counts: dict[str, int], whole: int, *, heading: str, attribute: str, colours: bool) -> str:
    rows = []
    for status, n in counts.items():
        swatch = f'<span class="swatch" style="background:{charts.status_colour(status)}"></span>' if colours else ""
        rows.append(
            f'<tr {attribute}="{escape(status)}"><td>{swatch}{escape(status or "(empty)")}</td>'
            f'<td class="n">{n:,}</td><td class="n">{percent(n, whole)}</td></tr>'
        )
    return (
        f'<table><thead><tr><th>{escape(heading)}</th><th class="n">rows</th><th class="n">share</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _outcomes(report: CampaignReport) -> str:
    parts = [
        '<section><h2>Outcomes</h2><div style="display:grid;grid-template-columns:1fr 1fr;gap:24px"><div>',
        _count_table(
            report.statuses, report.rows, heading="result_status (all rows)", attribute="data-status", colours=False
        ),
        "</div><div>",
    ]
    if report.delivery_known:
        ordered = {s: report.delivery_statuses[s] for s in charts.ordered_statuses(list(report.delivery_statuses))}
        accepted = report.count("accepted")
        heading = "delivery status (accepted rows)"
        parts.append(_count_table(ordered, accepted, heading=heading, attribute="data-delivery", colours=True))
    else:
        parts.append('<p class="muted">Delivery status: not yet known.</p>')
    parts.append("</div></div></section>")
    return "".join(parts)


def _reasons(report: CampaignReport) -> str:
    if not report.reasons:
        return '<section><h2>Why rows were not sent or not delivered</h2><p class="muted">No row failed.</p></section>'
    rows = [
        f'<tr><td class="n">{r.count:,}</td><td>{"not sent: " if r.step == "not sent" else "delivery: "}'
        f'{escape(r.status)}</td><td class="reason">{escape(r.reason)}</td></tr>'
        for r in report.reasons
    ]
    if report.other_reasons:
        rows.append(f'<tr><td class="n">{report.other_reasons:,}</td><td></td><td>other reasons</td></tr>')
    return (
        "<section><h2>Why rows were not sent or not delivered</h2>"
        '<p class="muted">The most frequent reasons; anything that could be a phone number is shown as [number].</p>'
        '<table data-table="reasons"><thead><tr><th class="n">rows</th><th>where</th><th>reason</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _channels(report: CampaignReport) -> str:
    if not report.channels:
        return ""
    statuses = charts.ordered_statuses(sorted({s for c in report.channels.values() for s in c}))
    head = "".join(f'<th class="n">{escape(s)}</th>' for s in statuses)
    rows = []
    for channel, counts in report.channels.items():
        cells = "".join(f'<td class="n">{counts.get(s, 0):,}</td>' for s in statuses)
        rows.append(
            f'<tr data-channel="{escape(channel)}"><td>{escape(channel)}</td>'
            f'<td class="n">{sum(counts.values()):,}</td>{cells}</tr>'
        )
    return (
        "<section><h2>Delivery by channel</h2>"
        + _image(charts.channel_chart(report), "delivery status by channel")
        + f'<table><thead><tr><th>channel</th><th class="n">accepted</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _timing(report: CampaignReport) -> str:
    timing = report.timing
    if timing is None:
        return '<section><h2>Sending rate and latency</h2><p class="muted">No request was made.</p></section>'
    figures = [
        ("requests answered", f"{timing.requests:,}"),
        ("first answer", f"{timing.first_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("last answer", f"{timing.last_at:%Y-%m-%d %H:%M:%S} UTC ({seconds(timing.duration_s)} after the first)"),
        ("rate", rate(timing)),
    ]
    if timing.latency_ms:
        figures.append(("latency", ", ".join(f"{k} {number(v)} ms" for k, v in timing.latency_ms.items())))
    if timing.delivery_delay_s:
        figures.append(
            ("sent to delivered", ", ".join(f"{k} {seconds(v)}" for k, v in timing.delivery_delay_s.items()))
        )
    listed = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in figures)
    return (
        f'<section><h2>Sending rate and latency</h2><dl class="figures">{listed}</dl>'
        + _image(charts.rate_chart(report), "answers per second over the run")
        + _image(charts.latency_chart(report), "request latency over the run")
        + "</section>"
    )
