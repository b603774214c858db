"""Hours of the day: one syntax and one parser for the actuators' ``allowed_hours``
(site.yaml) and the rules' ``active: {hours: ...}`` (rules.yaml). Pure.

A window is written ``[DAYS ]HH:MM-HH:MM``: ``06:00-22:00``,
``mon-fri 07:00-19:00``, ``sat,sun 08:00-12:00``, ``fri-mon 22:00-02:00``.
DAYS: ``mon`` .. ``sun``, ranges (which may wrap: ``fri-mon``), lists, or
``daily`` / ``all`` / ``*``; omitted = every day. A window whose end is
before its start crosses midnight and belongs to the day it starts on
(``fri 22:00-02:00`` includes Saturday 01:00). ``24:00`` ends a window at
midnight; ``00:00-24:00`` is the whole day. Which wall clock (the site's
local time, a rule's ``tz``) is the caller's business: :meth:`Hours.contains`
takes the weekday and the minute of the day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY = frozenset(range(7))
_WINDOW = re.compile(
    r"^\s*(?:(?P<days>[a-z,\- *]+?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


def _clock(text: str, allow_24: bool) -> int:
    hh, mm = (int(x) for x in text.split(":"))
    if mm > 59 or hh > 24 or (hh == 24 and (mm or not allow_24)):
        raise ValueError(f"{text!r} is not a time of day (HH:MM, 00:00..24:00)")
    return hh * 60 + mm


def parse_days(text: str) -> frozenset[int]:
    """Weekdays (0 = Monday) of ``mon``, ``mon-fri``, ``sat,sun``, ``daily`` ..."""
    days: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if part in ("daily", "all", "*"):
            days.update(EVERY_DAY)
            continue
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            raise ValueError(f"unknown day {part!r} (use mon, tue, ..., sun, ranges like mon-fri)")
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class Hours:
    """One window of hours on some days (see the module docstring)."""

    start_min: int  # minute of the day it starts, 0..1439
    end_min: int  # minute of the day it ends (exclusive), 1..1440; below start: next day
    days: frozenset[int] = EVERY_DAY  # the days it starts on, 0 = Monday
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Hours:
        """The window written ``text``; ValueError saying what is expected otherwise."""
        m = _WINDOW.match(text.lower())
        if not m:
            raise ValueError(
                f"expected a window like '06:00-22:00' or 'mon-fri 07:00-19:00', got {text!r}"
            )
        start = _clock(m["start"], allow_24=False)
        end = _clock(m["end"], allow_24=True)
        if start == end:
            raise ValueError(
                f"window {text!r} is empty (start equals end); 00:00-24:00 is the whole day"
            )
        days = parse_days(m["days"]) if m["days"] else EVERY_DAY
        return cls(start, end, days, text.strip())

    def contains(self, weekday: int, minute: float) -> bool:
        """Is ``minute`` (of the day, fractions allowed) of ``weekday`` (0 = Monday) inside?"""
        if self.start_min < self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        # crosses midnight: the part after midnight belongs to the previous day's window
        return (weekday in self.days and minute >= self.start_min) or (
            (weekday - 1) % 7 in self.days and minute < self.end_min
        )

    def restricted_to(self, days: frozenset[int]) -> Hours:
        """The same hours on those of its days that are in ``days`` too."""
        return Hours(self.start_min, self.end_min, self.days & days, self.text)

    def __str__(self) -> str:
        return self.text or f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-" + (
            f"{self.end_min // 60:02d}:{self.end_min % 60:02d}"
        )
