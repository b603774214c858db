"""Engine events, gateway status and telemetry -> incident signals."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import DeviceHealth, Event, GatewayStatus, Status, Telemetry
from rules.core.config import load_rules_file
from rules.incidents.machine import Book
from rules.incidents.settings import Completeness
from rules.incidents.signals import Deriver

RF = load_rules_file(
    "test-rules.yaml",
    text="""
actuators:
  site-01/cannon-1: {}
rules:
  - id: pm10-gate
    site: site-01
    metric: pm10
    devices: [m]
    window: 1m
    above: 150
    clear: 100
    actions: {lease: [cannon-1], run_for: 1m}
    unless:
      - {name: frost, metric: temp, devices: [m], below: 3, clear: 4}
  - id: noise
    site: site-01
    metric: noise
    devices: [m]
    window: 1m
    above: 70
""",
)


def ev(kind: str, ts: int = 1_000, rule: str | None = "pm10-gate", **data: Any) -> Event:
    return Event(ts=ts, kind=kind, text=f"{rule}: {kind}", rule=rule, data=data or None)


def sig(d: Deriver, e: Event) -> list[tuple[str, str, bool]]:
    return [(s.cause, s.source, s.on) for s in d.event("site-01", e)]


def test_a_rule_going_on_and_off() -> None:
    d = Deriver(RF)
    assert sig(d, ev("on", value=180.0)) == [
        ("rule_active", "pm10-gate", True),
        ("unsprayed", "pm10-gate", False),
    ]
    assert sig(d, ev("off", 2_000, reason="cleared", value=90.0)) == [
        ("rule_active", "pm10-gate", False),
        ("unsprayed", "pm10-gate", False),
    ]


def test_a_rule_without_cannons_is_over_the_limit_unsprayed() -> None:
    d = Deriver(RF)
    assert ("unsprayed", "noise", True) in sig(d, ev("on", rule="noise", value=80.0))


def test_interlocked_over_the_limit() -> None:
    d = Deriver(RF)
    assert sig(d, ev("interlock", value=180.0, interlocks=["frost"])) == [
        ("unsprayed", "pm10-gate", True)
    ]
    assert sig(d, ev("interlock", value=120.0)) == []  # pending/active, below the threshold
    # an active rule stopped by frost with the dust still high
    assert sig(d, ev("off", reason="interlock:frost", value=170.0)) == [
        ("rule_active", "pm10-gate", False),
        ("unsprayed", "pm10-gate", True),
    ]
    assert sig(d, ev("pending", 3_000, value=170.0)) == [("unsprayed", "pm10-gate", False)]


def test_held_back_and_its_end() -> None:
    d = Deriver(RF)
    assert sig(d, ev("held_back", value=180.0)) == [("unsprayed", "pm10-gate", True)]
    assert sig(d, ev("held_back_end", 2_000, value=90.0)) == [("unsprayed", "pm10-gate", False)]
    # the rule started with its cannon overridden off: its `on` decides, not the end
    off = Event(ts=3_000, kind="override", text="off", actuator="cannon-1",
                data={"mode": "off", "who": "op"})  # fmt: skip
    d.event("site-01", off)
    d.event("site-01", ev("held_back", 4_000, value=180.0))
    assert ("unsprayed", "pm10-gate", True) in sig(d, ev("on", 5_000, value=180.0))
    assert sig(d, ev("held_back_end", 5_000)) == []


def test_an_override_off_stops_the_spray_of_an_active_rule() -> None:
    d = Deriver(RF)
    d.event("site-01", ev("on", value=180.0))
    off = Event(ts=2_000, kind="override", text="off", actuator="cannon-1",
                data={"mode": "off", "who": "op"})  # fmt: skip
    assert [(s.cause, s.on) for s in d.event("site-01", off)] == [("unsprayed", True)]
    auto = Event(ts=3_000, kind="override", text="auto", actuator="cannon-1",
                 data={"mode": "auto", "who": "op"})  # fmt: skip
    assert [(s.cause, s.on) for s in d.event("site-01", auto)] == [("unsprayed", False)]


def test_a_reload_ends_the_changed_and_removed_rules() -> None:
    d = Deriver(RF)
    d.event("site-01", ev("on", value=180.0))
    reload = Event(ts=5_000, kind="reload", text="2 rules, 1 changed",
                   data={"added": [], "changed": ["pm10-gate"], "removed": ["noise"]})  # fmt: skip
    assert sig(d, reload) == [
        ("rule_active", "pm10-gate", False),
        ("unsprayed", "pm10-gate", False),
        ("rule_active", "noise", False),
        ("unsprayed", "noise", False),
    ]


def test_other_events_say_nothing() -> None:
    d = Deriver(RF)
    assert sig(d, ev("reload", rule=None)) == []
    assert sig(d, ev("max_on")) == []


def test_gateway_status_and_last_will() -> None:
    d = Deriver(RF)
    online = GatewayStatus(state="online", ts=5_000)
    (s,) = d.status("site-01", "gw-01", online)
    assert (s.cause, s.source, s.on, s.ts) == ("gateway_offline", "gw-01", False, 5.0)
    (s,) = d.status("site-01", "gw-01", GatewayStatus(state="offline", ts=6_000))
    assert s.on


def reading(t: int, ok: bool = True) -> Telemetry:
    if ok:
        return Telemetry(ts=t * 1000, seq=t, values={"pm10": 1.0})
    return Telemetry(ts=t * 1000, seq=t, values={}, status=Status.COMM_ERROR)


def test_completeness_per_minute_after_a_whole_window() -> None:
    d = Deriver(None, Completeness(below_pct=80, window=600, interval=60))  # 10 readings
    health = DeviceHealth(state="online", poll_interval_s=60)
    d.status("site-01", "gw", GatewayStatus(state="online", ts=0, devices={"m": health}))
    for t in range(0, 660, 60):
        d.telemetry("site-01", "m", reading(t), t)
    assert d.tick(600) == []  # not known for a whole window yet
    assert d.tick(660) == []  # 10 of 10 in minutes 1..10: complete, nothing to say
    assert d.tick(700) == []  # judged once a minute
    # the device falls silent: minutes 11.. stay empty
    assert d.tick(720) == []  # 9 of 10: 90 %
    (s,) = d.tick(840)  # minutes 4..13: 7 of 10
    assert (s.cause, s.source, s.on) == ("data_incomplete", "m", True)
    assert "70 %" in s.detail
    for t in range(840, 1500, 60):
        d.telemetry("site-01", "m", reading(t), t)
    (s,) = d.tick(1500)  # minutes 15..24 all there again
    assert not s.on


def test_bad_readings_do_not_count_and_memory_is_per_minute() -> None:
    d = Deriver(None, Completeness(below_pct=50, window=120, interval=1))
    for t in range(0, 180):
        d.telemetry("s", "m", reading(t, ok=t % 4 == 0), t)  # a quarter ok, 1 Hz
    (s,) = d.tick(180)
    assert s.on and "25 %" in s.detail
    assert len(d._devices[("s", "m")].per_minute) <= 3


_kinds = st.sampled_from(
    ["on", "off", "interlock", "pending", "stale", "override", "reload", "held_back",
     "held_back_end"]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(_kinds, st.sampled_from(["pm10-gate", "noise"]), st.booleans(), st.booleans()),
        max_size=40,
    )
)
def test_rule_active_follows_the_last_word_of_each_rule(
    steps: list[tuple[str, str, bool, bool]],
) -> None:
    """Whatever the engine says in whatever order (events in time order, with repeats),
    the machine's rule_active source of a rule is on exactly when that rule's last
    on/off/reload word was "on", and at most one incident is unresolved."""
    d = Deriver(RF)
    book = Book()
    expect: dict[str, bool] = {}
    for i, (kind, rule, high, mode_off) in enumerate(steps):
        ts = 1_000 * (i + 1)
        if kind == "override":
            e = Event(ts=ts, kind="override", text="o", actuator="cannon-1",
                      data={"mode": "off" if mode_off else "auto", "who": "op"})  # fmt: skip
        elif kind == "reload":
            e = Event(ts=ts, kind="reload", text="r", data={"changed": [rule], "removed": []})
            expect[rule] = False
        else:
            e = ev(kind, ts, rule, value=180.0 if high else 90.0, reason="cleared")
            if kind in ("on", "off"):
                expect[rule] = kind == "on"
        for s in d.event("site-01", e):
            book.signal(s, ts / 1000)
    track = book.tracks.get(("site-01", "rule_active"))
    got = {name: on for name, on, _ in track.sources} if track else {}
    assert got == expect
    assert len(book.incidents) <= 2  # rule_active and unsprayed at most
    assert (track is not None and track.on) == any(expect.values())
