"""The board's picture (rules.console.live): states, thresholds, leases, completeness."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol as p
from rules.console.live import STATES, Live
from rules.core.config import RulesFile

RULES = RulesFile.model_validate(
    {
        "actuators": {"s1/cannon-1": {}},
        "rules": [
            {
                "id": "pm10-gate", "site": "s1", "metric": "pm10", "devices": ["mon"],
                "above": 150, "clear": 100, "for": "1m", "actions": {"lease": ["cannon-1"]},
            },
            {
                "id": "pm10-loose", "site": "s1", "metric": "pm10", "devices": ["mon"],
                "above": 300, "actions": {"lease": ["cannon-1"]},
            },
        ],
    }
)  # fmt: skip
T0 = 1_800_000_000.0


def tele(live: Live, now: float, pm10: float, device: str = "mon", status: str = "ok") -> None:
    msg = p.Telemetry(ts=int(now * 1000), seq=int(now), values={"pm10": pm10}, status=status)
    assert live.on_message(p.telemetry_topic("s1", device), p.encode(msg), now) == "s1"


def event(live: Live, now: float, kind: str, rule: str = "pm10-gate") -> None:
    e = p.Event(ts=int(now * 1000), kind=kind, text=kind, rule=rule)
    live.on_message(p.events_topic("s1"), p.encode(e), now)


def make() -> Live:
    live = Live(stale_after=60)
    live.set_rules(RULES)
    return live


def test_strictest_rule_governs_and_states_follow_the_engine() -> None:
    live = make()
    assert live.site_view("s1", T0).state == "offline"  # never heard
    tele(live, T0, 90)
    v = live.site_view("s1", T0)
    assert v.state == "ok"
    pm10 = v.metrics[0]
    assert (pm10.rule, pm10.threshold, pm10.clear, pm10.beyond) == ("pm10-gate", 150, 100, False)
    tele(live, T0 + 1, 180)
    assert live.site_view("s1", T0 + 1).state == "over"
    event(live, T0 + 1, "pending")
    assert live.site_view("s1", T0 + 1).state == "pending"
    event(live, T0 + 2, "interlock")
    assert live.site_view("s1", T0 + 2).state == "interlocked"
    on = p.ActuatorState(
        state="on", since=int((T0 + 3) * 1000), source="rule", lease_until=int((T0 + 63) * 1000)
    )
    live.on_message(p.state_topic("s1", "cannon-1"), p.encode(on), T0 + 3)
    v = live.site_view("s1", T0 + 13)
    assert v.state == "spraying"
    assert (
        v.actuators[0].on
        and v.actuators[0].lease_left_s == 50.0
        and v.actuators[0].source == "rule"
    )
    # nothing heard for longer than stale_after: offline, whatever was last said
    assert live.site_view("s1", T0 + 200).state == "offline"


def test_stale_data_and_offline_gateway() -> None:
    live = make()
    tele(live, T0, 90, status="comm_error")
    assert live.site_view("s1", T0).state == "stale"
    status = p.GatewayStatus(state="offline", ts=int(T0 * 1000), backlog=42)
    live.on_message(p.status_topic("s1", "gw"), p.encode(status), T0)
    v = live.site_view("s1", T0)
    assert (v.state, v.gateway_online, v.backlog) == ("offline", False, 42)


def test_completeness_counts_ok_readings_against_the_poll_interval() -> None:
    live = make()
    status = p.GatewayStatus(
        state="online", ts=int(T0 * 1000),
        devices={"mon": p.DeviceHealth(state="online", poll_interval_s=10.0)},
    )  # fmt: skip
    live.on_message(p.status_topic("s1", "gw"), p.encode(status), T0)
    for i in range(360):  # an hour at 10 s, every other reading a comm error
        tele(live, T0 + i * 10, 50, status="ok" if i % 2 == 0 else "comm_error")
    c = live.completeness("s1", T0 + 3600)
    assert c is not None and abs(c - 0.5) < 0.02


@settings(max_examples=200, deadline=None)
@given(
    topic=st.sampled_from(
        ["dustgate/v1/s1/mon/telemetry", "dustgate/v1/s1/events", "dustgate/v1/s1/gateway/gw/status",
         "dustgate/v1/s1/cannon-1/state", "dustgate/v1/S1/x/telemetry", "elsewhere/x", "dustgate/v1/s1/x/cmd"]
    ),
    payload=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
)  # fmt: skip
def test_any_message_is_taken_or_counted_never_raises(topic: str, payload: bytes) -> None:
    live = make()
    tele(live, T0, 90)
    before = live.counters["bad_messages"]
    changed = live.on_message(topic, payload, T0)
    assert changed in (None, "s1")
    if changed is None and topic.endswith(("telemetry", "events", "status", "state")):
        assert live.counters["bad_messages"] == before + 1 or payload == b""
    assert live.site_view("s1", T0).state in STATES


def test_completeness_uses_each_readings_interval_and_leaves_out_flagged_ones() -> None:
    live = make()
    for i in range(120):  # 20 minutes at 10 s, as the agent stamps interval_s
        now = T0 + i * 10
        flags = {"pm10": p.Status.OVER_RANGE} if i % 4 == 0 else None
        msg = p.Telemetry(
            ts=int(now * 1000), seq=i, values={"pm10": 50.0}, interval_s=10.0, flags=flags
        )
        live.on_message(p.telemetry_topic("s1", "mon"), p.encode(msg), now)
    c = live.completeness("s1", T0 + 1200)
    assert c is not None and abs(c - 0.75) < 0.02  # a quarter flagged: not valid data


def test_worst_first_orders_every_state() -> None:
    from rules.console.pages.board import WORST_FIRST

    assert sorted(WORST_FIRST) == sorted(STATES)
    assert WORST_FIRST[0] == "over" and WORST_FIRST[-1] == "ok"


def test_no_completeness_figure_from_the_first_seconds() -> None:
    live = make()
    for i in range(5):
        msg = p.Telemetry(ts=int((T0 + i) * 1000), seq=i, values={"pm10": 50.0}, interval_s=1.0)
        live.on_message(p.telemetry_topic("s1", "mon"), p.encode(msg), T0 + i)
    assert live.completeness("s1", T0 + 5) is None
    assert live.site_view("s1", T0 + 5).completeness is None


def test_a_device_reading_too_often_makes_up_no_other_devices_gap() -> None:
    live = make()
    for i in range(600):  # 10 minutes: "fast" stamps 10 s but reads every second
        now = T0 + i
        fast = p.Telemetry(ts=int(now * 1000), seq=i, values={"pm10": 50.0}, interval_s=10.0)
        live.on_message(p.telemetry_topic("s1", "fast"), p.encode(fast), now)
        if i == 0:  # "dead" sent one reading and then nothing
            dead = p.Telemetry(ts=int(now * 1000), seq=0, values={"pm10": 50.0}, interval_s=1.0)
            live.on_message(p.telemetry_topic("s1", "dead"), p.encode(dead), now)
    c = live.completeness("s1", T0 + 600)
    assert c is not None and 0.49 < c < 0.52  # one device complete, one empty
