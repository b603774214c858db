"""Pure parts of the agent's hot path: the telemetry encoder, value checks, quality, backoff."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from gateway import protocol as p
from gateway.agent import encode_telemetry
from gateway.backoff import Backoff
from gateway.quality import StuckTracker, assess

metric = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
statuses = st.sampled_from(list(p.Status))


@given(
    ts=st.integers(0, 10**13 - 1),
    seq=st.integers(0, 2**53),
    values=st.dictionaries(metric, finite, max_size=64),
    status=statuses,
    flags=st.none() | st.dictionaries(metric, statuses, min_size=1, max_size=8),
    model=st.none()
    | st.text(
        st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"),
        min_size=1,
        max_size=64,
    ),
    interval_s=st.none() | st.floats(0.05, 366 * 86400),
    cal=st.none()
    | st.dictionaries(metric, st.tuples(st.floats(1e-6, 1e6), finite), min_size=1, max_size=8),
)
def test_fast_encoder_matches_the_contract(
    ts: int,
    seq: int,
    values: dict[str, float],
    status: p.Status,
    flags: dict[str, p.Status] | None,
    model: str | None,
    interval_s: float | None,
    cal: dict[str, tuple[float, float]] | None,
) -> None:
    fast = encode_telemetry(ts, seq, values, status, flags, model, interval_s, cal)
    slow = p.encode(
        p.Telemetry(
            ts=ts,
            seq=seq,
            values=values,
            status=status,
            flags=flags,
            model=model,
            interval_s=interval_s,
            cal=cal,
        )
    )
    assert json.loads(fast) == json.loads(slow)
    assert p.decode(p.Telemetry, fast) == p.decode(p.Telemetry, slow)


def test_fast_encoder_refuses_non_finite_values() -> None:
    try:
        encode_telemetry(1, 0, {"pm10": math.nan}, p.Status.OK, None, None)
    except ValueError:
        return
    raise AssertionError("NaN was encoded")


def test_a_non_finite_metric_is_a_fault_and_the_rest_stays_ok() -> None:
    status, flags = assess(
        {"pm25": 12.0}, 0.0, StuckTracker(), {}, 0.0, None, None, {"pm10": p.Status.FAULT}
    )
    assert status is p.Status.OK and flags == {"pm10": p.Status.FAULT}
    status, flags = assess({}, 0.0, StuckTracker(), {}, 0.0, None, None, {"pm10": p.Status.FAULT})
    assert status is p.Status.FAULT and flags is None


@given(failures=st.integers(1, 200), draw=st.floats(0, 1, exclude_max=True))
def test_backoff_is_capped_and_jittered(failures: int, draw: float) -> None:
    b = Backoff(base=2.0, maximum=3.0)
    d = b.delay(failures, draw)
    assert 0 < d <= 3.0 * 1.2
    assert b.delay(failures, 0.5) == min(3.0, 2.0 * 2 ** (failures - 1))


def test_quality_flags_over_range_and_stuck_values() -> None:
    tracker = StuckTracker()
    ranges = {"pm10": (0.0, 1000.0)}
    status, flags = assess({"pm10": 1200.0, "pm25": 30.0}, 0.0, tracker, ranges, 60.0, None, None)
    assert status is p.Status.OK and flags == {"pm10": p.Status.OVER_RANGE}
    # pm25 frozen at 30.0 for 60 s: a fault; pm10 keeps moving
    for t in (10.0, 30.0):
        assess({"pm10": 100.0 + t, "pm25": 30.0}, t, tracker, ranges, 60.0, None, None)
    status, flags = assess({"pm10": 200.0, "pm25": 30.0}, 61.0, tracker, ranges, 60.0, None, None)
    assert flags == {"pm25": p.Status.FAULT} and status is p.Status.OK
    # only listed metrics are watched for sticking
    t2 = StuckTracker()
    for t in (0.0, 61.0):
        status, flags = assess({"pm10": 5.0, "rh": 50.0}, t, t2, {}, 60.0, ["pm10"], None)
    assert status is p.Status.OK and flags == {"pm10": p.Status.FAULT}
    # every metric bad: the device itself is
    status, flags = assess({"pm10": -1.0}, 0.0, StuckTracker(), ranges, 0.0, None, None)
    assert status is p.Status.OVER_RANGE and flags is None


def test_operator_mode_wins_over_quality() -> None:
    status, flags = assess({"pm10": 5.0}, 0.0, StuckTracker(), {}, 0.0, None, p.Status.MAINTENANCE)
    assert status is p.Status.MAINTENANCE and flags is None
