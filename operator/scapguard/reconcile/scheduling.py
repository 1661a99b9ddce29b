"""Cron rescans spread over the period: each scan gets its own point after the cron fire."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Final

from croniter import croniter

from scapguard.api.imagescan import format_time, rescan_value

MAX_SPREAD: Final = dt.timedelta(hours=6)


@dataclass(frozen=True)
class Window:
    start: dt.datetime  # the latest cron fire at or before now
    end: dt.datetime  # the next cron fire


def window(schedule: str, now: dt.datetime) -> Window:
    itr = croniter(schedule, now)
    end = itr.get_next(dt.datetime)
    start = croniter(schedule, end).get_prev(dt.datetime)
    return Window(start=start, end=end)


def offset(name: str, win: Window) -> dt.timedelta:
    """A stable point in the first half of the window (at most 6 hours in) for ``name``."""
    fraction = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2**32
    spread = min((win.end - win.start) / 2, MAX_SPREAD)
    return spread * fraction


def due_rescan(
    name: str, schedule: str, requested_at: dt.datetime | None, now: dt.datetime
) -> str | None:
    """The rescan annotation value if ``name`` is due for this window's scheduled rescan."""
    win = window(schedule, now)
    if requested_at is None or requested_at >= win.start:
        return None
    if win.start + offset(name, win) > now:
        return None
    return rescan_value("Scheduled", format_time(win.start))
