"""The guard rails every prepared batch goes through: suppression lists (rows become `suppressed`, never sent) and
each recipient's sending hours (rows outside them are `deferred` until their window opens). Both are decided in
bulk, as of one moment (`now`) for the whole of a pass, so the sending pass and the results pass of a run agree."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl

from pipeline import payload, validate
from pipeline.fields import CLOSES_AT, DEFERRED_REASON, OPENS_AT, ZONE_ERROR, ZONES
from pipeline.spec import CampaignSpec

if TYPE_CHECKING:
    from pipeline.suppress import Suppressions
    from pipeline.window import Opening

__all__ = ["CLOSES_AT", "DEFERRED_REASON", "OPENS_AT", "ZONES", "Guards", "utc_text"]


def utc_text(moment: datetime | None) -> str | None:
    """`2026-12-04T14:00:00Z`: a moment as the summaries and plans show it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


@dataclass(frozen=True)
class Guards:
    """The campaign's guard rails as of `now`: the suppressed recipients (None: no list) and, when `hours`, the
    recipients' sending hours."""

    spec: CampaignSpec
    now: datetime
    suppressed: Suppressions | None
    hours: bool
    defers: bool = True  # False: zones are checked, but no row is held for its window (`validate`)
    # each set of zones' opening as of `now`, kept across the batches of a pass (the sets repeat, the work is Python)
    openings: dict[str, Opening] = field(default_factory=dict, compare=False)

    @classmethod
    def of(
        cls, spec: CampaignSpec, now: datetime | None = None, *, hours: bool = True, defers: bool = True
    ) -> Guards | None:
        """The spec's guards, or None when it has none. Reads the suppression lists: one that cannot be read stops
        the command here, before anything is sent (InputError). `hours=False` leaves the sending hours out;
        `defers=False` checks the rows' zones but holds no row back."""
        hours = hours and spec.send.window is not None
        if not spec.suppress and not hours:
            return None
        from pipeline import suppress  # only campaigns with lists read them

        lists = suppress.load_campaign_suppressions(spec) if spec.suppress else None
        return cls(spec, now or datetime.now(UTC), lists, hours, defers)

    def at(self, now: datetime) -> Guards:
        """The same guards as of another moment (the suppression lists are not read again)."""
        return replace(self, now=now, openings={})

    def zones(self, fields: pl.DataFrame, frame: pl.DataFrame, decided: pl.DataFrame | None = None) -> pl.DataFrame:
        """`fields` with each row's time zones and, for a zone a row names that does not exist, the reason
        (`time_zones`, `time_zone_error`); unchanged without a window. `decided`: the rows' numbers with their
        zones, when found already (prepare.py finds them a span at a time)."""
        if not self.hours:
            return fields
        send = self.spec.send
        named = None
        zone = send.timezone
        if zone is not None and zone.column is not None:
            named = payload.as_text(frame.select(zone.column), [zone.column], rule=self.spec.message.value_text)[
                zone.column
            ]
        elif zone is not None:
            named = pl.Series("", [zone.value] * frame.height, dtype=pl.String)
        from pipeline import window  # only campaigns with sending hours load the zone data

        known = decided[ZONES] if decided is not None and ZONES in decided.columns else None
        found = window.row_zones(
            fields.height,
            named=named,
            numbers=fields[payload.TO] if payload.TO in fields.columns and known is None else None,
            number_zones=known,
            default_timezone=send.default_timezone,
        )
        return fields.with_columns(found)

    def reasons(self) -> list[pl.Expr]:
        """Reasons a row cannot be sent at any time: its zone does not exist, or is not known."""
        if not self.hours:
            return []
        from pipeline import window

        unknown = pl.col(ZONE_ERROR).is_null() & pl.col(ZONES).list.len().fill_null(0).eq(0)
        if self.spec.api.version == "v3":
            unknown = unknown & pl.col(payload.TO).is_not_null()  # a number that is not valid says so already
        return [pl.col(ZONE_ERROR), pl.when(unknown).then(pl.lit(window.UNKNOWN_REASON))]

    def suppress(self, checked: pl.DataFrame) -> pl.DataFrame:
        """Rows to send whose recipient is on a list become `suppressed` (result_error names the list)."""
        if self.suppressed is None:
            return checked
        from pipeline import suppress

        column = suppress.recipient_column(self.spec.api.version)
        return suppress.mark_suppressed(checked, self.suppressed, recipient=column)

    def notes(self) -> list[str]:
        """What the lists held that can match no row (counts only, never values)."""
        if self.suppressed is None:
            return []
        return [n for stats in self.suppressed.lists if (n := stats.note(self.spec.api.version)) is not None]

    def defer(self, checked: pl.DataFrame) -> pl.DataFrame:
        """Rows to send get `window_reason` (null while their window is open), `window_opens_at` and
        `window_closes_at`; without a window, nothing is added."""
        if not self.hours or not self.defers:
            return checked
        assert self.spec.send.window is not None
        from pipeline import window

        status = window.window_status(checked[ZONES], self.spec.send.window, now=self.now, cache=self.openings)
        to_send = pl.col(validate.STATUS).is_null()
        return checked.with_columns(
            *(pl.when(to_send).then(status[name]).alias(name) for name in (DEFERRED_REASON, OPENS_AT, CLOSES_AT))
        )
