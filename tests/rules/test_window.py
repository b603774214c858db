"""Rolling windows against a naive reference; freshness and ordering guards."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.core.window import AGGREGATES, DeviceTrack, RollingWindow, Series

LENGTH = 10.0

steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=7.0),  # time since the previous reading
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.floats(min_value=0.0, max_value=4.0),  # query lag after the reading
    ),
    min_size=1,
    max_size=200,
)


KINDS = [AGGREGATES, ("mean",), ("max",), ("min",), ("last",), ("max", "min"), ("mean", "max")]


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from(KINDS))
def test_aggregates_match_naive_reference(
    series: list[tuple[float, float, float]], kinds: tuple[str, ...]
) -> None:
    w = RollingWindow(LENGTH, kinds)
    kept: list[tuple[float, float]] = []
    t = 1000.0
    horizon = -math.inf
    for dt, value, lag in series:
        t += dt
        w.append(t, value)
        kept.append((t, value))
        now = t + lag
        horizon = max(horizon, now - LENGTH)
        ref = [v for ts, v in kept if ts > horizon]
        if not ref:
            for kind in {*kinds, "last"}:
                assert w.aggregate(kind, now) is None
            continue
        if "max" in kinds:
            assert w.aggregate("max", now) == max(ref)
        if "min" in kinds:
            assert w.aggregate("min", now) == min(ref)
        assert w.aggregate("last", now) == ref[-1]
        if "mean" in kinds:
            mean = w.aggregate("mean", now)
            assert mean is not None
            assert mean == pytest.approx(math.fsum(ref) / len(ref), rel=1e-9, abs=1e-6)
        # only the mean needs the readings themselves
        assert len(w) == (len(ref) if "mean" in kinds else 0)


def test_windows_without_a_mean_keep_no_readings() -> None:
    """A day at 1 Hz: the max window holds its monotonic deque, the last window one
    reading, neither the 86,400 readings."""
    day = 86400.0
    wmax, wlast = RollingWindow(day, ["max"]), RollingWindow(day, ["last"])
    add_max, add_last = wmax.appender(), wlast.appender()
    for i in range(86400):
        v = 50.0 + (i * 7919) % 101  # no trend: the monotonic deque stays short
        add_max(float(i), v)
        add_last(float(i), v)
    assert len(wmax) == 0 and len(wlast) == 0
    assert len(wmax._maxq) < 200
    assert wmax.max(86399.0) == 150.0 and wlast.last(86399.0) == 50.0 + (86399 * 7919) % 101
    assert wlast.last(86399.0 + day) is None  # the newest reading left the window


def test_an_aggregate_added_to_a_window_without_readings_starts_empty() -> None:
    w = RollingWindow(60.0, ["max"])
    w.append(0.0, 90.0)
    w.want(["mean", "min"])  # cannot be rebuilt: they cover the readings from now on
    assert w.aggregate("max", 0.0) == 90.0
    assert w.aggregate("mean", 0.0) is None and w.aggregate("min", 0.0) is None
    w.append(1.0, 10.0)
    assert (w.aggregate("mean", 1.0), w.aggregate("min", 1.0), w.aggregate("max", 1.0)) == (
        10.0,
        10.0,
        90.0,
    )


def test_running_sum_does_not_drift_over_many_updates() -> None:
    # 1e8 + small values: naive running sums lose the small part quickly
    w = RollingWindow(100.0, kinds=["mean"])
    for i in range(50_000):
        w.append(float(i), 1e8 if i % 2 else 0.1)
    ref = [1e8 if i % 2 else 0.1 for i in range(49_900, 50_000)]
    got = w.aggregate("mean", 49_999.0)
    assert got == pytest.approx(math.fsum(ref) / len(ref), rel=1e-12)


def test_only_requested_aggregates_are_kept_and_can_be_added_later() -> None:
    w = RollingWindow(60.0, kinds=["mean"])
    for i, v in enumerate([5.0, 9.0, 1.0]):
        w.append(float(i), v)
    with pytest.raises(ValueError):
        w.aggregate("max", 2.0)
    w.want(["max", "min"])
    assert w.aggregate("max", 2.0) == 9.0
    assert w.aggregate("min", 2.0) == 1.0
    assert w.aggregate("last", 2.0) == 1.0


def test_window_is_half_open_and_evicts_on_query() -> None:
    w = RollingWindow(10.0)
    w.append(0.0, 1.0)
    w.append(5.0, 3.0)
    assert w.aggregate("mean", 9.9) == 2.0
    assert w.aggregate("mean", 10.0) == 3.0  # the reading at t=0 is exactly 10 s old: out
    assert w.aggregate("mean", 15.0) is None


def test_series_bad_status_makes_it_unknown_but_keeps_the_window_clean() -> None:
    s = Series()
    s.window(60.0, ["mean"])
    s.add(0.0, 10.0, ok=True)
    s.add(1.0, 20.0, ok=True)
    assert s.value("mean", 60.0, 1.0, stale_after=10.0) == 15.0
    s.add(2.0, 999.0, ok=False)  # calibrating: not in the aggregate, and unknown for now
    assert s.value("mean", 60.0, 2.0, stale_after=10.0) is None
    s.add(3.0, 30.0, ok=True)
    assert s.value("mean", 60.0, 3.0, stale_after=10.0) == 20.0
    assert s.bad_readings == 1
    # stale: no ok reading for longer than stale_after
    assert s.value("mean", 60.0, 13.5, stale_after=10.0) is None


def test_device_track_rejects_duplicates_and_out_of_order() -> None:
    t = DeviceTrack(factor=3.0, lo=2.0, hi=100.0)
    assert t.accept(10.0, 1) is None
    assert t.accept(10.0, 1) == "duplicate"
    assert t.accept(9.0, 0) == "out_of_order"
    assert t.accept(11.0, 2) is None
    assert t.last_seq == 2


def test_poll_interval_is_a_median_and_ignores_one_outage() -> None:
    t = DeviceTrack(factor=3.0, lo=1.0, hi=1000.0)
    assert t.stale_after == 1000.0  # before the second reading: the upper bound
    ts = 0.0
    for _ in range(10):
        ts += 5.0
        t.accept(ts, 0)
    assert t.interval == 5.0
    assert t.stale_after == 15.0
    t.accept(ts + 300.0, 0)  # one long outage does not change the estimate
    assert t.interval == 5.0
    assert t.stale_after == 15.0


def test_stale_limit_is_clamped() -> None:
    t = DeviceTrack(factor=3.0, lo=10.0, hi=60.0)
    for i in range(5):
        t.accept(float(i), i)  # 1 s interval -> 3 s, clamped up to 10 s
    assert t.stale_after == 10.0
    slow = DeviceTrack(factor=3.0, lo=10.0, hi=60.0)
    for i in range(5):
        slow.accept(i * 100.0, i)  # 100 s interval -> 300 s, clamped down to 60 s
    assert slow.stale_after == 60.0


def test_reconfigure_keeps_the_interval_estimate() -> None:
    t = DeviceTrack(factor=3.0, lo=1.0, hi=100.0)
    for i in range(5):
        t.accept(i * 2.0, i)
    assert t.stale_after == 6.0
    t.configure(factor=5.0, lo=1.0, hi=100.0)
    assert t.stale_after == 10.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([1000, 1000, 1000, 2000, 500, 30_000, 1001]), max_size=60))
def test_staleness_is_the_median_of_the_last_16_gaps_in_ms(gaps_ms: list[int]) -> None:
    """Whatever shortcut accept() takes, stale_after is factor x the median of the last 16
    gaps, as whole milliseconds (float differences of ms timestamps do not count)."""
    t = DeviceTrack(factor=3.0, lo=1.0, hi=1000.0)
    ms = 1_780_000_000_123
    assert t.accept(ms / 1000.0, 0) is None
    for i, gap in enumerate(gaps_ms):
        ms += gap
        assert t.accept(ms / 1000.0, i + 1) is None
        last = sorted(g / 1000.0 for g in gaps_ms[max(0, i - 15) : i + 1])
        n = len(last)
        median = last[n // 2] if n % 2 else (last[n // 2 - 1] + last[n // 2]) / 2
        assert t.stale_after == min(max(3.0 * median, 1.0), 1000.0)
        assert t.interval == median


# ------------------------------------------------ magnitude cannot poison the mean

finite = st.floats(allow_nan=False, allow_infinity=False)
magnitudes = st.one_of(
    finite,
    st.floats(min_value=-1000.0, max_value=1000.0),
    st.sampled_from([1e300, -1e300, 1.7e308, -1.7e308, 1e20, 5e-324, 0.0, 300.0, 0.1]),
)


def _exact_mean(values: list[float]) -> float:
    return float(sum(map(Fraction, values), Fraction(0)) / len(values))


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), magnitudes, st.booleans()),
        min_size=1,
        max_size=120,
    ),
    st.sampled_from([("mean",), ("mean", "max"), AGGREGATES]),
)
def test_mean_is_the_mean_of_its_readings_for_any_finite_sequence(
    series: list[tuple[float, float, bool]], kinds: tuple[str, ...]
) -> None:
    """Whatever magnitudes came and went, the mean is the exact mean of the readings
    inside, to 1e-9 of the largest of them (float tolerance)."""
    w = RollingWindow(4.0, kinds)
    append = w.appender()
    kept: list[tuple[float, float]] = []
    t = 0.0
    for dt, value, query in series:
        t += dt
        append(t, value)
        kept.append((t, value))
        if not query:
            continue
        inside = [v for ts, v in kept if ts > t - 4.0]
        mean = w.mean(t)
        assert mean is not None and math.isfinite(mean)
        ref = _exact_mean(inside)
        assert abs(mean - ref) <= 1e-9 * max(map(abs, inside)), (mean, ref, inside)


def test_a_huge_reading_leaving_the_window_does_not_poison_the_mean() -> None:
    """The issue's case: pm10 1e300 once, then 300 every second, a 4 s window: the mean
    printed 0.0 once the 1e300 had left (the plain running sum kept its rounding)."""
    for kinds in (("mean",), ("mean", "max")):
        w = RollingWindow(4.0, kinds)
        append = w.appender()
        append(0.0, 1e300)
        means = []
        for t in range(1, 12):
            append(float(t), 300.0)
            means.append(w.mean(float(t)))
        assert means[2] == pytest.approx(2.5e299)  # t=3: 1e300 and three 300s
        assert means[3:] == [300.0] * 8


def test_readings_near_the_float_limit_have_a_finite_mean() -> None:
    w = RollingWindow(10.0, ["mean"])
    for t in range(5):
        w.append(float(t), 1.7e308)
    assert w.mean(4.0) == pytest.approx(1.7e308)
    for t in range(5, 20):
        w.append(float(t), 2.0)
    assert w.mean(19.0) == 2.0
