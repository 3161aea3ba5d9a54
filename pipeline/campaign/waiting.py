"""`run --wait`: between passes, sleep until the next sending window opens, holding the campaign's lock; a signal
ends the wait at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from datetime import datetime

from pipeline.campaign.guards import utc_text
from pipeline.campaign.options import ProgressSink, RunOptions
from pipeline.send import RunControl


def wait_for_window(
    opening: datetime, deferred: int, options: RunOptions, control: RunControl, progress: ProgressSink | None
) -> bool:
    """`run --wait`: sleep (holding the campaign's lock) until `opening`; False when a signal ends the wait (it is
    then the run's interrupt: the results file is written and the exit code says so)."""
    with signals_end_the_wait(control, enabled=options.handle_signals) as woken:
        if progress is not None:  # said once the signals are ours: one right after it must end the wait, not us
            progress.notice(
                f"{deferred:,} row(s) outside their sending hours; waiting for the next window to open at "
                f"{utc_text(opening)} (Ctrl-C stops; a rerun goes on where this one stopped)"
            )
        sleep = options.sleep or woken.wait
        while not control.stopping:
            left = (opening - options.clock()).total_seconds()
            if left <= 0:
                return True
            sleep(min(left, 60.0))
    return False


@contextlib.contextmanager
def signals_end_the_wait(control: RunControl, *, enabled: bool) -> Iterator[threading.Event]:
    """For the whole wait, SIGINT/SIGTERM stop the run (noted as its interrupt) and wake the sleep at once: a
    signal between two sleeps must not escape as an exception and leave the results file unwritten."""
    woken = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield woken
        return

    def note(signum: int, _frame: object) -> None:
        control.interrupt_signal = control.interrupt_signal or signum
        control.stop()
        woken.set()

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield woken
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
