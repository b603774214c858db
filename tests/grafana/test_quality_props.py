"""The quality report's arithmetic, pure, against brute force on random data."""

from __future__ import annotations

import itertools
from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import Status
from rules.history.quality import (
    BUCKET_MS,
    SeriesCount,
    device_day,
    longest_gap,
    longest_unchanged,
    stuck_metrics,
)
from rules.sink.points import reading_quality

statuses = st.sampled_from(list(Status))
series = st.builds(
    lambda status, flag, n, iv: (status, flag, n, iv),
    statuses,
    st.none() | statuses,
    st.integers(0, 500),
    st.sampled_from([1.0, 5.0, 10.0, 60.0]),
)


@given(st.lists(series, max_size=8), st.sampled_from([3600.0, 86400.0]))
def test_completeness_and_shares_add_up(spec: list[tuple], span: float) -> None:
    counts = []
    for status, flag, n, iv in spec:
        tags = {"site": "s", "device": "d", "status": status.value}
        flags = {"pm10": flag} if flag is not None and flag != status else None
        if flags:
            tags["pm10_flag"] = flag.value
        tags["quality"] = reading_quality(status, flags).value
        counts.append(SeriesCount(tags, n, n * iv))
    d = device_day("s", "d", date(2026, 11, 24), span, counts, 0.0)
    valid = sum(c.cover_s for c in counts if c.tags["quality"] == "ok")
    answered = sum(c.cover_s for c in counts if c.tags["status"] != "comm_error")
    assert d.valid_pct == 100 * valid / span  # only ok readings with no flag count
    assert d.received_pct == 100 * answered / span
    assert d.valid_pct <= d.received_pct
    readings = sum(c.readings for c in counts)
    assert d.readings == readings
    if readings:
        ok = sum(c.readings for c in counts if c.tags["quality"] == "ok")
        assert abs(sum(d.causes.values()) + 100 * ok / readings - 100) < 1e-9
        assert "ok" not in d.causes
        assert d.interval_s == sum(c.cover_s for c in counts) / readings
    else:
        assert d.causes == {} and d.valid_pct == 0 and d.interval_s is None


@given(
    st.lists(st.integers(0, 86_400_000), max_size=30, unique=True).map(sorted),
)
def test_longest_gap_is_the_longest_stretch_without_a_valid_reading(valid: list[int]) -> None:
    start, end = 0, 86_400_000
    between = max((b - a for a, b in itertools.pairwise(valid)), default=None)
    got = longest_gap(
        start, end, valid[0] if valid else None, valid[-1] if valid else None, between
    )
    edges = [start, *valid, end]
    assert got == max(b - a for a, b in itertools.pairwise(edges)) / 1000


@settings(max_examples=200)
@given(
    step_s=st.sampled_from([1, 10, 60]),
    runs=st.lists(st.tuples(st.sampled_from([20.0, 21.0, 35.5]), st.integers(1, 200)), min_size=1),
    offset=st.integers(0, 50),
)
def test_unchanged_runs_measured_on_buckets_within_two_buckets(
    step_s: int, runs: list[tuple[float, int]], offset: int
) -> None:
    """Readings every step (a divisor of the bucket), values in runs: the estimate from
    5-minute minima and maxima is within two buckets of the true longest constant run."""
    step = step_s * 1000
    values = [v for v, n in runs for _ in range(n)]
    times = [(offset + i) * step for i in range(len(values))]
    # brute force: the longest run of equal consecutive values, in time it stands for
    best = cur = step
    for i in range(1, len(values)):
        cur = cur + step if values[i] == values[i - 1] else step
        best = max(best, cur)
    # what InfluxQL's GROUP BY time(5m) min/max gives
    buckets: dict[int, list[float]] = {}
    for t, v in zip(times, values, strict=True):
        buckets.setdefault(t // BUCKET_MS * BUCKET_MS, []).append(v)
    rows = [(b, min(vs), max(vs)) for b, vs in sorted(buckets.items())]
    est = longest_unchanged(rows)
    assert abs(est - best) < 2 * BUCKET_MS


def test_a_hole_or_a_change_ends_a_run() -> None:
    b = BUCKET_MS
    assert longest_unchanged([(0, 5.0, 5.0), (b, 5.0, 5.0), (2 * b, 5.0, 5.0)]) == 3 * b
    assert longest_unchanged([(0, 5.0, 5.0), (b, None, None), (2 * b, 5.0, 5.0)]) == b
    assert longest_unchanged([(0, 5.0, 5.0), (2 * b, 5.0, 5.0)]) == b  # a bucket missing
    assert longest_unchanged([(0, 5.0, 5.0), (b, 6.0, 6.0)]) == b
    assert longest_unchanged([(0, 5.0, 6.0)]) == 0


def test_stuck_metrics_from_the_bucket_columns() -> None:
    b = BUCKET_MS
    cols = ["time", "min_pm10", "min_pm10_raw", "min_rain", "min_seq", "max_pm10",
            "max_pm10_raw", "max_rain", "max_seq"]  # fmt: skip
    rows = [[k * b, 35.0, 17.5, 0.0, k, 35.0, 17.5, 0.0, k + 1] for k in range(12)]
    # an hour unchanged; the raw twin of a calibrated metric, rain and seq are no metrics here
    assert stuck_metrics(cols, rows, 1800) == {"pm10": 12 * b / 1000}
    assert stuck_metrics(cols, rows, 12 * b / 1000 + 1) == {}
