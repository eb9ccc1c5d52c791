"""A routine's cadence and its scheduled times (UTC).

``manual`` (only "run now"), ``hourly``, ``daily``, ``weekdays`` (Monday to
Friday), ``weekly`` (Mondays) — all at minute 0 of hour 0 except hourly — a
5-field cron expression (minute hour day-of-month month day-of-week, parsed by
``croniter``), or ``every <N>s`` / ``every <N>m`` (a fixed interval counted from
the routine's creation; at least ``JETTY_ROUTINES_MIN_INTERVAL`` seconds).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

PRESETS = {
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekdays": "0 0 * * 1-5",
    "weekly": "0 0 * * 1",
}
_EVERY = re.compile(r"^every\s+(\d+)\s*([sm])$")


class InvalidCadence(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Cadence:
    text: str
    cron: str | None = None
    interval_s: float | None = None

    @property
    def manual(self) -> bool:
        return self.cron is None and self.interval_s is None

    def after(self, moment: float, origin: float) -> float | None:
        """The first scheduled time strictly after ``moment`` (epoch seconds)."""
        if self.interval_s is not None:
            steps = math.floor((moment - origin) / self.interval_s) + 1
            return origin + max(steps, 1) * self.interval_s
        if self.cron is not None:
            start = datetime.fromtimestamp(moment, UTC)
            following: datetime = croniter(self.cron, start).get_next(datetime)
            return following.timestamp()
        return None

    def due(self, since: float, now: float, origin: float, limit: int) -> list[float]:
        """Scheduled times in (since, now], oldest first, at most the last ``limit``."""
        found: list[float] = []
        moment = since
        while (following := self.after(moment, origin)) is not None and following <= now:
            found.append(following)
            moment = following
            if len(found) > limit:
                found.pop(0)
        return found


def parse(text: str, min_interval: float) -> Cadence:
    raw = text.strip()
    if raw == "manual":
        return Cadence(raw)
    if raw in PRESETS:
        return Cadence(raw, cron=PRESETS[raw])
    every = _EVERY.match(raw)
    if every:
        seconds = int(every.group(1)) * (60 if every.group(2) == "m" else 1)
        if seconds < min_interval:
            raise InvalidCadence(f"an interval must be at least {min_interval:g} seconds")
        return Cadence(raw, interval_s=float(seconds))
    if len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise InvalidCadence(
            "use manual, hourly, daily, weekdays, weekly, 'every <N>s', or a 5-field "
            "cron expression (minute hour day month weekday, UTC)"
        )
    return Cadence(raw, cron=raw)
