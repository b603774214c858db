"""The console's chart draws valid data only: a frozen or over-range sensor leaves a gap,
never a line of clean air (real influxd, points stored as the sink stores them)."""

from __future__ import annotations

import pytest

from gateway.localservices import Influxd
from gateway.protocol import Status, Telemetry
from rules.console.config import ConsoleInflux
from rules.console.history import series
from rules.sink.points import telemetry_line

pytestmark = pytest.mark.integration

T0 = 1_780_000_000  # s, on a 10 s bucket boundary


def test_chart_leaves_flagged_values_out(influxd: Influxd) -> None:
    influxd.create_database("dg")
    readings = [
        Telemetry(ts=(T0 + 0) * 1000, seq=0, values={"pm10": 80.0, "pm25": 40.0}),
        # frozen: the gateway flagged the whole reading
        Telemetry(
            ts=(T0 + 10) * 1000, seq=1, values={"pm10": 35.0, "pm25": 20.0}, status=Status.FAULT
        ),
        # PM10 over its range, PM2.5 fine
        Telemetry(
            ts=(T0 + 20) * 1000,
            seq=2,
            values={"pm10": 9000.0, "pm25": 44.0},
            flags={"pm10": Status.OVER_RANGE},
        ),
    ]
    influxd.write("dg", "\n".join(telemetry_line("s1", "gate", r) or "" for r in readings))
    cfg = ConsoleInflux(url=influxd.url, database="dg")
    got = series(cfg, "s1", ["pm10", "pm25"], T0, T0 + 30)
    assert got == {"pm10": [(T0, 80.0)], "pm25": [(T0, 40.0), (T0 + 20, 44.0)]}
