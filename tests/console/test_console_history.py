"""The site page's spray shading and stored events from a real influxd, stored as the
engine's sink stores them."""

from __future__ import annotations

import pytest

from gateway.localservices import Influxd
from gateway.protocol import ActuatorState, Event
from rules.console.charts import HLine, Line, line_chart
from rules.console.config import ConsoleInflux
from rules.console.history import events, spray_periods
from rules.sink.points import actuator_line, event_line

pytestmark = pytest.mark.integration
T0 = 1_780_000_000


def state(on: bool, at: int) -> ActuatorState:
    return ActuatorState(state="on" if on else "off", since=at * 1000, source="rule")


def test_spray_periods_and_events(influxd: Influxd) -> None:
    influxd.create_database("dg")
    lines = [
        actuator_line("s1", "cannon-1", state(True, T0 - 100)),  # on before the range
        actuator_line("s1", "cannon-1", state(False, T0 + 50)),
        actuator_line("s1", "cannon-1", state(True, T0 + 200)),  # still on at the end
        actuator_line("s1", "cannon-2", state(True, T0 + 60)),
        actuator_line("s1", "cannon-2", state(False, T0 + 90)),
        actuator_line("s2", "cannon-1", state(True, T0 + 10)),  # another site
        event_line(
            "s1", Event(ts=(T0 + 60) * 1000, kind="on", text="pm10-gate: on <b>", rule="pm10-gate")
        ),
        event_line("s2", Event(ts=(T0 + 61) * 1000, kind="on", text="elsewhere")),
    ]
    influxd.write("dg", "\n".join(lines) + "\n")
    cfg = ConsoleInflux(url=influxd.url, database="dg")
    got = sorted(spray_periods(cfg, "s1", T0, T0 + 300))
    assert got == [
        (T0, T0 + 50, "cannon-1"),
        (T0 + 60, T0 + 90, "cannon-2"),
        (T0 + 200, T0 + 300, "cannon-1"),
    ]
    evs = events(cfg, "s1", T0)
    assert [(e.kind, e.rule, e.text) for e in evs] == [("on", "pm10-gate", "pm10-gate: on <b>")]
    svg = line_chart([Line("PM10 <i>", "pm10", [(T0, 50.0), (T0 + 300, 90.0)])], T0, T0 + 300,
                     [HLine(80, "ON", "on")], [(a, b) for a, b, _ in got], title="t <script>")  # fmt: skip
    assert svg.count('class="spray"') == 3
    assert "<script>" not in svg and "<i>" not in svg and "&lt;script&gt;" in svg
