"""``gateway.hours``: the one parser of hours windows, for the actuators'
``allowed_hours`` and the rules' ``active`` hours alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.hours import DAY_NAMES, Hours, parse_days
from gateway.lease import ActuatorLimits
from rules.core.model import ActiveHours

clock = st.integers(0, 1439)
day_sets = st.frozensets(st.integers(0, 6), min_size=1)


def write(start: int, end: int, days: frozenset[int] | None) -> str:
    hours = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    if days is None:
        return hours
    return ",".join(DAY_NAMES[d] for d in sorted(days)) + " " + hours


def reference(start: int, end: int, days: frozenset[int], weekday: int, minute: int) -> bool:
    """Minute by minute over the week: the window as the docs describe it."""
    covered = set()
    for d in days:
        length = (end - start) % 1440 or 1440
        for k in range(length):
            t = d * 1440 + start + k
            covered.add(t % (7 * 1440))
    return weekday * 1440 + minute in covered


@settings(max_examples=200, deadline=None)
@given(clock, st.integers(1, 1440), st.one_of(st.none(), day_sets), st.integers(0, 6), clock)
def test_parse_and_contains_agree_with_the_minute_by_minute_reference(
    start: int, end: int, days: frozenset[int] | None, weekday: int, minute: int
) -> None:
    if start == end:
        with pytest.raises(ValueError, match="empty"):
            Hours.parse(write(start, end, days))
        return
    w = Hours.parse(write(start, end, days))
    every = days if days is not None else frozenset(range(7))
    assert (w.start_min, w.end_min, w.days) == (start, end, every)
    assert w.contains(weekday, minute) == reference(start, end, every, weekday, minute)


@settings(max_examples=100, deadline=None)
@given(clock, st.integers(1, 1440), day_sets, st.integers(0, 7 * 1440 - 1))
def test_rules_and_actuators_read_the_same_text_the_same_way(
    start: int, end: int, days: frozenset[int], at: int
) -> None:
    if start == end:
        return
    text = write(start, end, days)
    wall = datetime(2026, 11, 23, tzinfo=UTC).timestamp() + at * 60  # a Monday, UTC
    actuator = ActuatorLimits.model_validate({"allowed_hours": [text]})
    rule = ActiveHours(hours=text, tz="UTC")
    assert rule.contains(wall) == actuator.in_allowed_hours(datetime.fromtimestamp(wall, UTC))


def test_days_in_the_text_and_in_days_both_apply() -> None:
    monday = datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp()
    weekdays_only = ActiveHours(hours="mon-fri 06:00-22:00", days=["mon", "sat"], tz="UTC")
    assert weekdays_only.contains(monday)
    assert not weekdays_only.contains(monday + 5 * 86400)  # Saturday: not in the text
    assert not weekdays_only.contains(monday + 86400)  # Tuesday: not in days


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("25:00-26:00", "not a time of day"),
        ("06:60-07:00", "not a time of day"),
        ("24:00-06:00", "not a time of day"),
        ("mon-frx 06:00-22:00", "unknown day"),
        ("06:00-06:00", "empty"),
        ("6-22", "expected a window"),
    ],
)
def test_bad_windows_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Hours.parse(text)


def test_day_ranges_wrap_the_week() -> None:
    assert parse_days("fri-mon") == {4, 5, 6, 0}
    assert parse_days("daily") == parse_days("mon-sun") == frozenset(range(7))
