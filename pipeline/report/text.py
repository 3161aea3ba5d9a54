"""The report as text for a terminal: the funnel, delivery by channel, the top reasons, and the rate and latency
figures."""

from __future__ import annotations

from pipeline.report.summary import NOT_YET_KNOWN, CampaignReport, Timing

TRACK_HINT = "run `python -m pipeline track SPEC` to fetch the delivery status of the accepted messages"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def number(value: float) -> str:
    """1234567 -> 1,234,567; 12.345 -> 12.3; 0.01234 -> 0.0123."""
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.3g}"


def seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def rate(timing: Timing) -> str:
    if timing.average_rate_per_s is None:
        return f"{timing.requests:,} request(s) within {seconds(timing.duration_s)}"
    shown = f"{number(timing.average_rate_per_s)}/s on average"
    if timing.peak_rate_per_s is not None:
        shown += f", {number(timing.peak_rate_per_s)}/s in the busiest {seconds(timing.peak_window_ms / 1000)}"
    return shown


def format_report(report: CampaignReport) -> str:
    lines = [f"Campaign {report.campaign}: {report.results_path}", "", "Funnel"]
    previous = None
    for step in report.funnel:
        share = "" if previous is None else f"  {percent(step.count, previous):>6} of the step before"
        lost = ", ".join(f"{n:,} {what}" for what, n in step.lost.items())
        if step.name in ("delivered", "read") and not report.delivery_known:
            lines.append(f"  {step.name:<10} {'not yet known':>13}")
            continue
        lines.append(f"  {step.name:<10} {step.count:>10,}{share}{f'   (not: {lost})' if lost else ''}")
        previous = step.count
    if not report.delivery_known:
        lines += ["", f"Delivery: not yet known - the results file has no delivery columns; {TRACK_HINT}."]
    elif report.delivery_statuses.get(NOT_YET_KNOWN):
        lines += ["", f"Delivery: not yet known for {report.delivery_statuses[NOT_YET_KNOWN]:,} accepted row(s)."]
    if report.channels:
        lines += ["", "Delivery by channel"]
        for channel, statuses in report.channels.items():
            shown = ", ".join(f"{n:,} {status}" for status, n in sorted(statuses.items(), key=lambda i: -i[1]))
            lines.append(f"  {channel:<12} {sum(statuses.values()):>10,}   {shown}")
    if report.reasons:
        lines += ["", "Top reasons (rows not sent, messages not delivered)"]
        for reason in report.reasons:
            where = reason.status if reason.step == "not sent" else "delivery failed"
            lines.append(f"  {reason.count:>10,}  {where:<15} {reason.reason}")
        if report.other_reasons:
            lines.append(f"  {report.other_reasons:>10,}  other reasons")
    timing = report.timing
    lines += ["", "Sending"]
    if timing is None:
        lines.append("  no request was made")
    else:
        lines.append(
            f"  {timing.requests:,} request(s) answered from {timing.first_at:%Y-%m-%d %H:%M:%S} to "
            f"{timing.last_at:%H:%M:%S} UTC ({seconds(timing.duration_s)})"
        )
        lines.append(f"  rate: {rate(timing)}")
        if timing.latency_ms:
            lines.append("  latency: " + ", ".join(f"{k} {number(v)} ms" for k, v in timing.latency_ms.items()))
        if timing.delivery_delay_s:
            lines.append(
                "  sent to delivered: " + ", ".join(f"{k} {seconds(v)}" for k, v in timing.delivery_delay_s.items())
            )
    return "\n".join(lines)
