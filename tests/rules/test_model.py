"""Rule models: thresholds, active hours, shorthand forms."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from rulehelpers import make_rule

from rules.core.model import ActiveHours, Interlock


def at(day: int, hour: int, minute: int = 0, tz: str = "Asia/Shanghai") -> float:
    # 2026-11-23 is a Monday
    return datetime(2026, 11, 23 + day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def test_shorthands_and_defaults() -> None:
    r = make_rule(site="site-01", devices="gate-monitor", notify="office",
                  actions={"lease": "cannon-1"})  # fmt: skip
    assert r.site == ["site-01"] and r.devices == ["gate-monitor"] and r.notify == ["office"]
    assert r.actions.lease == ["cannon-1"]
    assert r.clear_level == 100.0 and r.threshold == 150.0 and r.is_above
    no_clear = make_rule(clear=None)
    assert no_clear.clear_level == 150.0  # default: the threshold itself
    r2 = make_rule(**{"for": "1m30s", "window": "15m", "min_clear": 45})
    assert (r2.for_, r2.window, r2.min_clear) == (90.0, 900.0, 45.0)


@pytest.mark.parametrize("window", ["0.5s", "25h", 0])
def test_window_bounds(window: object) -> None:
    with pytest.raises(ValidationError):
        make_rule(window=window)


def test_interlock_clear_side_and_unique_names() -> None:
    with pytest.raises(ValidationError, match="clear"):
        Interlock.model_validate({"name": "frost", "metric": "temp", "devices": ["a"],
                                  "below": 3, "clear": 2})  # fmt: skip
    il = {"name": "frost", "metric": "temp", "devices": ["a"], "below": 3}
    with pytest.raises(ValidationError, match="unique"):
        make_rule(unless=[il, il])


def test_active_hours_plain_and_overnight() -> None:
    day = ActiveHours(hours="06:00-22:00", days=["mon", "tue"], tz="Asia/Shanghai")
    assert day.contains(at(0, 6, 0))
    assert day.contains(at(0, 21, 59))
    assert not day.contains(at(0, 22, 0))
    assert not day.contains(at(0, 5, 59))
    assert not day.contains(at(2, 12, 0))  # Wednesday
    night = ActiveHours(hours="22:00-06:00", days=["mon"], tz="Asia/Shanghai")
    assert night.contains(at(0, 23, 0))
    assert night.contains(at(1, 5, 0))  # Tuesday early morning belongs to Monday night
    assert not night.contains(at(0, 5, 0))  # Monday early morning belongs to Sunday night
    assert not night.contains(at(1, 23, 0))


@given(st.integers(min_value=0, max_value=1439), st.integers(min_value=0, max_value=1439),
       st.floats(min_value=1.7e9, max_value=1.9e9))  # fmt: skip
def test_active_hours_complement(a: int, b: int, now: float) -> None:
    """A window and its reverse cover every minute exactly once (all days enabled)."""
    if a == b:
        return
    fwd = ActiveHours(hours=f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}")
    rev = ActiveHours(hours=f"{b // 60:02d}:{b % 60:02d}-{a // 60:02d}:{a % 60:02d}")
    assert fwd.contains(now) != rev.contains(now)


def test_active_hours_validation() -> None:
    for bad in ("6-22", "06:00-06:00", "25:00-26:00"):
        with pytest.raises(ValidationError):
            ActiveHours(hours=bad)
    with pytest.raises(ValidationError, match="time zone"):
        ActiveHours(tz="Nowhere/City")
    assert ActiveHours(hours="00:00-24:00").contains(at(3, 23, 59, "UTC"))
