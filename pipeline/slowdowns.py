"""Explaining a slow run while it happens: pacing events (the server asked every worker to wait, the sender cut its
rate after a 429) become notices at once, and when throughput stays far below what the run achieved for more than a
minute, one warning says why. Without this a run against a struggling server looks hung: minutes with nothing on
screen.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.limits import Pacer, PacingEvent
from pipeline.send import RunControl

NOTICE_EVERY_S = 10.0  # after the first notice, further pacing events are summed up at most this often
COLLAPSE_WINDOW_S = 60.0
_PEAK_WINDOW_S = 10.0
_COLLAPSED = 0.25  # a minute below a quarter of the peak rate is a collapse...
_RECOVERED = 0.5  # ...and it is over once a minute reaches half of it


def describe_rate(rate_per_s: float | None) -> str:
    if rate_per_s is None:
        return "unlimited"
    if rate_per_s >= 1:
        return f"{rate_per_s:.3g}/s"
    return f"{rate_per_s * 60:.3g}/min"


@dataclass
class _Sample:
    at: float
    done: int
    pauses: int
    slowdowns: int


class SlowdownWatch:
    """Fed pacing events (from the Pacer's callback) and progress ticks; says what slows the run down."""

    def __init__(
        self,
        notice: Callable[[str], None],
        warn: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notice = notice
        self._warn = warn
        self._clock = clock
        self._last_notice = -float("inf")
        self._held: list[PacingEvent] = []  # events since the last notice, told in the next one
        self._samples: deque[_Sample] = deque()
        self._peak_per_s = 0.0
        self._collapsed = False  # warned, and not recovered since
        self._low_since: float | None = None  # since when the rate has been below the collapse line

    def on_event(self, event: PacingEvent) -> None:
        now = self._clock()
        self._held.append(event)
        if now - self._last_notice >= NOTICE_EVERY_S:
            self._flush(now)

    def _flush(self, now: float) -> None:
        events, self._held = self._held, []
        if not events:
            return
        self._last_notice = now
        last = events[-1]
        if last.kind == "pause":
            text = f"paused {last.pause_s:.3g} s: {last.reason}; rate now {describe_rate(last.rate_per_s)}"
        else:
            text = f"rate cut to {describe_rate(last.rate_per_s)}: the server answered {last.reason}"
        pauses = sum(1 for e in events if e.kind == "pause")
        cuts = len(events) - pauses
        if len(events) > 1:
            parts = [f"{pauses} pause(s)"] if pauses else []
            parts += [f"{cuts} rate cut(s)"] if cuts else []
            text += f" ({' and '.join(parts)} since the last notice)"
        self._notice(text)

    def tick(self, done: int, pacer: Pacer, control: RunControl) -> str:
        """Called with the rows done so far on every progress update; returns a short pacing status for the
        progress line ("" when nothing holds the run back)."""
        now = self._clock()
        if self._held and now - self._last_notice >= NOTICE_EVERY_S:
            self._flush(now)
        self._samples.append(_Sample(now, done, pacer.pauses, pacer.slowdowns))
        while len(self._samples) > 2 and now - self._samples[1].at >= COLLAPSE_WINDOW_S:
            self._samples.popleft()
        self._watch_collapse(now, pacer, control)
        return self._status(pacer, control)

    def _rate_since(self, seconds: float) -> tuple[float, _Sample] | None:
        """Rows/s since the latest sample at least `seconds` old, and that sample; None before there is one."""
        now = self._samples[-1]
        start: _Sample | None = None
        for sample in self._samples:
            if now.at - sample.at < seconds:
                break
            start = sample
        if start is None:
            return None
        span = now.at - start.at
        return ((now.done - start.done) / span if span > 0 else 0.0), start

    def _watch_collapse(self, now: float, pacer: Pacer, control: RunControl) -> None:
        recent = self._rate_since(_PEAK_WINDOW_S)
        if recent is None:
            return
        self._peak_per_s = max(self._peak_per_s, recent[0])
        if recent[0] >= self._peak_per_s * (_RECOVERED if self._collapsed else _COLLAPSED):
            self._low_since = None
            self._collapsed = False
            return
        if self._low_since is None:
            self._low_since = now
        minute = self._rate_since(COLLAPSE_WINDOW_S)
        if self._collapsed or minute is None or now - self._low_since < COLLAPSE_WINDOW_S:
            return
        rate, start = minute
        self._collapsed = True
        reasons = []
        pauses = pacer.pauses - start.pauses
        if pauses:
            reasons.append(f"the server asked every worker to wait {pauses} time(s) (Retry-After / X-RateLimit-Reset)")
        cuts = pacer.slowdowns - start.slowdowns
        if cuts:
            reasons.append(
                f"the sender cut its rate {cuts} time(s) after 429 answers (now {describe_rate(pacer.rate_per_s)})"
            )
        if control.retrying:
            last = f" (last: {control.last_retry_error})" if control.last_retry_error else ""
            reasons.append(f"{control.retrying} row(s) are waiting to be retried after failures{last}")
        if not reasons:
            reasons.append("no pauses or failures: the server answers slowly, or the input is slow to read")
        self._warn(
            f"throughput fell to {rate:.3g} rows/s over the last minute (it reached {self._peak_per_s:.3g}/s): "
            + "; ".join(reasons)
        )

    def _status(self, pacer: Pacer, control: RunControl) -> str:
        parts = []
        paused = pacer.paused_for_s()
        if paused > 0:
            parts.append(f"paused {paused:.0f} s by the server")
        if pacer.slowdowns:
            parts.append(f"rate {describe_rate(pacer.rate_per_s)}")
        if control.retrying:
            parts.append(f"{control.retrying} waiting to retry")
        return ", ".join(parts)
