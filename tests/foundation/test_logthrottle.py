"""Rate-limited log lines: one per kind per period, the rest counted (clock injected)."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.logthrottle import Throttle, ThrottledLog


def test_one_line_per_kind_per_period_with_the_count_held_back() -> None:
    t = Throttle(period=60)
    assert t.admit("crc", 0.0) == 0
    assert [t.admit("crc", s) for s in (1.0, 30.0, 59.9)] == [None, None, None]
    assert t.admit("other", 10.0) == 0  # kinds are independent
    assert t.held("crc") == 3
    assert t.admit("crc", 60.0) == 3  # the next line says how many were held back
    assert t.admit("crc", 61.0) is None and t.suppressed_total == 4


def test_kinds_are_bounded() -> None:
    t = Throttle(period=60, max_kinds=4)
    for i in range(100):
        assert t.admit(f"kind-{i}", float(i)) == 0  # a new kind always gets its line
    assert len(t._kinds) <= 4


def test_logger_shell(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("test.throttle"), period=60, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.throttle")
    for i in range(50):
        now[0] = i * 2.0  # 100 s of a warning every 2 s
        log.warning("bad", "bad data: %s", i)
    log.info("req", "request %s", "1011", now=5.0)  # a caller's own clock
    assert [r.getMessage() for r in caplog.records] == [
        "bad data: 0",
        "bad data: 30 (and 29 more like this since the last such line)",
        "request 1011",
    ]
    caplog.set_level(logging.ERROR, logger="test.throttle")
    assert log.warning("bad", "not shown") is False


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(0, 10, allow_nan=False)),
        max_size=200,
    )
)
def test_lines_and_held_counts_account_for_every_occurrence(
    events: list[tuple[str, float]],
) -> None:
    t = Throttle(period=5)
    now = 0.0
    lines: dict[str, list[float]] = {}
    reported: dict[str, int] = {}
    for kind, step in events:
        now += step
        held = t.admit(kind, now)
        if held is not None:
            lines.setdefault(kind, []).append(now)
            reported[kind] = reported.get(kind, 0) + held
    for kind in "abc":
        n = sum(1 for k, _ in events if k == kind)
        got = lines.get(kind, [])
        # every occurrence is a line, or counted in a later line, or still held
        assert len(got) + reported.get(kind, 0) + t.held(kind) == n
        # never two lines of one kind within a period
        assert all(b - a >= 5 for a, b in itertools.pairwise(got))
