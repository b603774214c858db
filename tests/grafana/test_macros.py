"""Grafana macro expansion used by ``dustgate report`` and the dashboard tests (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from rules.history.report import expand_macros, regex_value, week_start

CST = timezone(timedelta(hours=8))


def test_time_filter_interval_and_range_variables():
    q = (
        "SELECT count(x) * $read_period * 1000 / $__interval_ms FROM m WHERE $timeFilter "
        "AND a = ${__from} AND b = ${__to} GROUP BY time($__interval), [[site]]"
    )
    out = expand_macros(
        q,
        start_ms=1000,
        end_ms=61_000,
        interval_ms=10_000,
        variables={"read_period": "10", "site": "x"},
    )
    assert out == (
        "SELECT count(x) * 10 * 1000 / 10000 FROM m WHERE time >= 1000ms and "
        "time <= 61000ms AND a = 1000 AND b = 61000 GROUP BY time(10s), x"
    )


def test_date_formats_follow_the_time_zone():
    # 2026-11-26 20:00 UTC is already the 27th in China
    end = int(datetime(2026, 11, 26, 20, tzinfo=UTC).timestamp() * 1000)
    q = "time >= '${__to:date:YYYY-MM-DD}T00:00:00${__to:date:Z}'"
    assert expand_macros(q, start_ms=0, end_ms=end, tz=CST) == "time >= '2026-11-27T00:00:00+08:00'"
    assert expand_macros(q, start_ms=0, end_ms=end, tz=UTC) == "time >= '2026-11-26T00:00:00+00:00'"


def test_variables_are_formatted_as_grafana_regexes():
    assert regex_value(["site-1"]) == "site\\-1"
    assert regex_value(["a.b", "c/d"]) == "(a\\.b|c\\/d)"
    assert regex_value(".*") == ".*"  # the All value is inserted as is
    assert (
        expand_macros("$unknown $site", start_ms=0, end_ms=1, variables={"site": ["s"]})
        == "$unknown s"
    )


def test_week_starts_on_monday_midnight_local():
    fri = datetime(2026, 11, 27, 4, 30, tzinfo=CST)
    assert week_start(fri) == datetime(2026, 11, 23, tzinfo=CST)
    mon = datetime(2026, 11, 23, 0, 0, 1, tzinfo=CST)
    assert week_start(mon) == datetime(2026, 11, 23, tzinfo=CST)
