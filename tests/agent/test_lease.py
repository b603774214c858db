"""Lease state machine of one relay output: limits, interlocks, wire payloads."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from gateway.configfile import ConfigError, load
from gateway.configfile import StrictModel as _Strict
from gateway.lease import (
    ActuatorLimits,
    LeaseMachine,
    manual_command,
    to_ack,
    to_state_payload,
)
from gateway.protocol import Ack, ActuatorState, Command, decode, encode

WALL0 = datetime(2026, 11, 25, 10, 0, 0)  # a Wednesday, 10:00 local


def wall(t: float) -> datetime:
    return WALL0 + timedelta(seconds=t)


def on(cmd_id: str, lease: float, source: str = "rule", **kw: object) -> Command:
    return Command(id=cmd_id, action="on", lease_s=lease, source=source, **kw)  # type: ignore[arg-type]


def off(cmd_id: str, source: str = "rule") -> Command:
    return Command(id=cmd_id, action="off", source=source)  # type: ignore[arg-type]


def machine(t0: float = -1000.0, **limits: object) -> LeaseMachine:
    """A machine created long ago, so min_off from start-up is over at t=0."""
    return LeaseMachine(ActuatorLimits.model_validate(limits), t0, wall(t0))


def tick(
    m: LeaseMachine,
    t: float,
    broker_up: bool = True,
    down_since: float | None = None,
    bus_ok: bool = True,
) -> tuple[bool, str | None]:
    _, output, reason = m.tick(t, wall(t), broker_up, down_since, bus_ok)
    return output, reason


# ------------------------------------------------------------------ limits model


def test_limits_parse_durations_and_windows() -> None:
    lim = ActuatorLimits.model_validate(
        {
            "max_on": "15m",
            "min_off": "1m",
            "max_lease": "10m",
            "broker_grace": "60s",
            "default_lease": "5m",
            "allowed_hours": ["mon-fri 06:00-22:00", "sat 08:00-12:00"],
        }
    )
    assert (lim.max_on, lim.min_off, lim.max_lease, lim.default_lease) == (900, 60, 600, 300)
    assert lim.hours_text() == "mon-fri 06:00-22:00, sat 08:00-12:00"
    assert lim.in_allowed_hours(datetime(2026, 11, 27, 21, 59))  # Friday
    assert not lim.in_allowed_hours(datetime(2026, 11, 27, 22, 0))
    assert lim.in_allowed_hours(datetime(2026, 11, 28, 9, 0))  # Saturday morning
    assert not lim.in_allowed_hours(datetime(2026, 11, 29, 9, 0))  # Sunday


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("06:00-22:00", [(0, 6, 0), (6, 21, 59)], [(0, 5, 59), (3, 22, 0)]),
        ("fri 22:00-02:00", [(4, 22, 0), (5, 1, 59)], [(5, 22, 30), (4, 1, 0), (6, 1, 0)]),
        ("fri-mon 00:00-24:00", [(4, 0, 0), (0, 23, 59)], [(1, 12, 0), (3, 23, 59)]),
        ("sat,sun 07:30-08:00", [(5, 7, 30), (6, 7, 59)], [(5, 8, 0), (0, 7, 45)]),
    ],
)
def test_hours_windows(
    text: str, inside: list[tuple[int, int, int]], outside: list[tuple[int, int, int]]
) -> None:
    lim = ActuatorLimits.model_validate({"allowed_hours": [text]})
    monday = datetime(2026, 11, 23)
    for day, hh, mm in inside:
        assert lim.in_allowed_hours(monday + timedelta(days=day, hours=hh, minutes=mm)), (
            day,
            hh,
            mm,
        )
    for day, hh, mm in outside:
        wall = monday + timedelta(days=day, hours=hh, minutes=mm)
        assert not lim.in_allowed_hours(wall), (day, hh, mm)


class _Site(_Strict):
    limits: ActuatorLimits


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("limits:\n  allowed_hours: ['25:00-26:00']\n", "not a time of day"),
        ("limits:\n  allowed_hours: ['mon-frx 06:00-22:00']\n", "unknown day"),
        ("limits:\n  allowed_hours: ['06:00-06:00']\n", "empty"),
        ("limits:\n  allowed_hours: []\n", "could never run"),
        ("limits:\n  max_on: 0\n", "max_on must be greater than 0"),
        ("limits:\n  min_of: 5m\n", "unknown key"),
        ("limits:\n  min_off: soon\n", "expected a duration"),
    ],
)
def test_bad_limits_are_config_errors_with_a_line(yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(_Site, "site.yaml", text=yaml_text)
    assert info.value.issues[0].line >= 1


# ------------------------------------------------------------------ commands


def test_on_is_granted_for_the_lease_and_expires() -> None:
    m = machine()
    st, d = m.on_command(on("c1", 30), 0.0, wall(0))
    assert d.accepted and d.output and d.changed and d.reason == ""
    assert st.lease_end == 30 and st.source == "rule" and st.cmd_id == "c1"
    assert tick(m, 29.9) == (True, None)
    assert tick(m, 30.0) == (False, "lease expired")
    assert m.state.source == "rule" and m.state.reason == "lease expired"


def test_renewal_extends_but_never_shortens_or_passes_max_on() -> None:
    m = machine(max_on=100, max_lease=1000)
    m.on_command(on("c1", 60), 0.0, wall(0))
    st, d = m.on_command(on("c2", 10), 20.0, wall(20))
    assert d.accepted and not d.changed and st.lease_end == 60  # not shortened
    st, d = m.on_command(on("c3", 60), 50.0, wall(50))
    assert st.lease_end == 100 and "capped at max_on" in d.reason
    assert st.on_since == 0 and st.cmd_id == "c3"
    assert tick(m, 99) == (True, None)
    assert tick(m, 100) == (False, "max_on reached (100s)")


def test_max_lease_caps_one_lease() -> None:
    m = machine(max_lease=120)
    st, d = m.on_command(on("c1", 3600), 0.0, wall(0))
    assert d.accepted and st.lease_end == 120
    assert d.reason == "lease capped at max_lease 120s"


def test_min_off_between_runs_and_after_start_up() -> None:
    m = machine(t0=0.0, min_off=60)
    _, d = m.on_command(on("c1", 30), 37.0, wall(37))
    assert not d.accepted and d.reason == "min_off: 23s left"
    _, d = m.on_command(on("c2", 30), 60.0, wall(60))
    assert d.accepted
    m.on_command(off("c3"), 70.0, wall(70))
    _, d = m.on_command(on("c4", 30), 100.0, wall(100))
    assert d.reason == "min_off: 30s left"
    _, d = m.on_command(on("c5", 30), 130.0, wall(130))
    assert d.accepted
    assert m.state.refused == 2


def test_after_max_on_the_refusal_says_so() -> None:
    m = machine(max_on=100, min_off=60)
    m.on_command(on("c1", 100), 0.0, wall(0))
    assert tick(m, 100.5) == (False, "max_on reached (100s)")
    _, d = m.on_command(on("c2", 30), 120.0, wall(120))
    assert not d.accepted and d.reason == "max_on reached: off for 41s more"


def test_one_call_never_switches_off_and_on_again() -> None:
    m = machine(max_on=100, min_off=0, max_lease=1000)
    m.on_command(on("c1", 100), 0.0, wall(0))
    st, d = m.on_command(on("c2", 100), 100.0, wall(100))  # arrives as max_on cuts the run
    assert not d.accepted and not st.output
    assert d.reason == "max_on reached (100s) at this moment; a new command may start a new run"
    st, d = m.on_command(on("c3", 100), 100.0, wall(100))  # min_off is 0: a new run may start
    assert d.accepted and st.output and st.on_since == 100


def test_off_is_always_accepted_and_does_not_restart_min_off() -> None:
    m = machine(min_off=60)
    m.on_command(on("c1", 30), 0.0, wall(0))
    st, d = m.on_command(off("c2", source="manual"), 10.0, wall(10))
    assert d.accepted and d.changed and not st.output and st.source == "manual"
    st, d = m.on_command(off("c3"), 40.0, wall(40))
    assert d.accepted and d.reason == "already off" and st.off_since == 10 and st.cmd_id == "c3"


def test_lease_missing_is_refused() -> None:
    m = machine()
    bad = Command.model_construct(
        id="x", action="on", lease_s=None, reason="", source="rule", ts=None, rule=None
    )
    _, d = m.on_command(bad, 0.0, wall(0))
    assert not d.accepted and d.reason.startswith("lease_s missing")


def test_stale_commands_are_refused_when_configured() -> None:
    m = machine(max_command_age="30s")
    sent = int(wall(0).timestamp() * 1000)
    _, d = m.on_command(on("c1", 60, ts=sent), 45.0, wall(45))
    assert not d.accepted and d.reason == "stale command: sent 45s ago (max_command_age 30s)"
    _, d = m.on_command(on("c2", 60, ts=sent + 40_000), 45.0, wall(45))
    assert d.accepted


# ------------------------------------------------------------------ interlocks


def test_broker_loss_switches_off_after_grace_and_refuses_on() -> None:
    m = machine(broker_grace=60, max_lease=600)
    m.on_command(on("c1", 600), 0.0, wall(0))
    assert tick(m, 10, broker_up=False, down_since=5.0) == (True, None)
    assert tick(m, 65, broker_up=False, down_since=5.0) == (True, None)  # exactly the grace
    out, reason = tick(m, 66, broker_up=False, down_since=5.0)
    assert not out and reason == "broker unreachable for 61s (broker_grace 60s)"
    assert m.state.source == "failsafe"
    _, d = m.on_command(on("c2", 60, source="manual"), 200.0, wall(200))
    assert not d.accepted and d.reason.startswith("broker unreachable")
    tick(m, 201)  # broker back
    _, d = m.on_command(on("c3", 60), 202.0, wall(202))
    assert d.accepted


def test_broker_down_clock_starts_at_first_tick_when_unknown() -> None:
    m = machine(broker_grace=60, max_lease=600)
    m.on_command(on("c1", 600), 0.0, wall(0))
    assert tick(m, 10, broker_up=False) == (True, None)
    assert tick(m, 70, broker_up=False) == (True, None)
    assert tick(m, 71, broker_up=False)[0] is False


def test_bus_loss_is_failsafe_off_and_blocks_on() -> None:
    m = machine()
    m.on_command(on("c1", 60), 0.0, wall(0))
    assert tick(m, 1, bus_ok=False) == (False, "bus down")
    assert m.state.source == "failsafe"
    _, d = m.on_command(on("c2", 60), 100.0, wall(100))
    assert not d.accepted and d.reason == "bus down"
    assert tick(m, 101) == (False, None)  # no automatic resume
    _, d = m.on_command(on("c3", 60), 102.0, wall(102))
    assert d.accepted


def test_allowed_hours_refuse_and_cut_off() -> None:
    m = machine(allowed_hours=["06:00-10:01"], max_lease=600)
    _, d = m.on_command(on("c1", 600), 0.0, wall(0))  # 10:00
    assert d.accepted
    assert tick(m, 59) == (True, None)
    assert tick(m, 60) == (False, "outside allowed hours 06:00-10:01")
    assert m.state.source == "local"
    _, d = m.on_command(on("c2", 60), 500.0, wall(500))
    assert not d.accepted and d.reason == "outside allowed hours 06:00-10:01"


def test_shutdown_is_off_for_good() -> None:
    m = machine()
    m.on_command(on("c1", 60), 0.0, wall(0))
    st, reason = m.on_shutdown(1.0, wall(1))
    assert not st.output and reason == "shutdown"
    _, d = m.on_command(on("c2", 60), 500.0, wall(500))
    assert not d.accepted and d.reason == "shutting down"


def test_readback_mismatch_is_recorded_not_obeyed() -> None:
    m = machine()
    st = m.on_readback(True, 0.0)  # relay reads ON while we want OFF
    assert not st.output and not st.readback_ok and st.readback_mismatches == 1
    assert tick(m, 1) == (False, None)
    assert to_state_payload(m.state, 0).readback_ok is False
    st = m.on_readback(False, 2.0)
    assert st.readback_ok and st.readback_mismatches == 1


def test_clock_stepping_back_is_no_time_passing() -> None:
    m = machine()
    m.on_command(on("c1", 30), 100.0, wall(100))
    assert tick(m, 50) == (True, None)
    assert m.state.last_now == 100
    assert tick(m, 130) == (False, "lease expired")


# ------------------------------------------------------------------ wire payloads


def test_state_and_ack_payloads_round_trip() -> None:
    m = machine()
    cmd = on("c1", 30, reason="pm10 above 150")
    st, d = m.on_command(cmd, 0.0, wall(0))
    payload = to_state_payload(st, 123)
    assert payload == decode(ActuatorState, encode(payload))
    t0_ms = int(wall(0).timestamp() * 1000)
    assert payload.state == "on" and payload.since == t0_ms
    assert payload.lease_until == t0_ms + 30_000 and payload.cmd_id == "c1"
    assert payload.source == "rule" and payload.reason == "pm10 above 150"
    ack = to_ack(d, cmd, 456)
    assert ack == Ack(cmd_id="c1", accepted=True, reason="", ts=456)
    assert m.on_command(on("c2", 30), 1.0, wall(1))[1].accepted
    assert m.on_command(off("c3"), 2.0, wall(2))[1].changed
    refused = m.on_command(on("c4", 30), 3.0, wall(3))[1]
    ack = to_ack(refused, on("c4", 30), 789)
    assert not ack.accepted and ack.reason.startswith("min_off")
    off_payload = to_state_payload(m.state, 999)
    assert off_payload.state == "off" and off_payload.lease_until is None


def test_manual_command_uses_default_lease_and_same_limits() -> None:
    lim = ActuatorLimits(default_lease=120, max_lease=60)
    cmd = manual_command("on", lim, "cli-1")
    assert cmd.source == "manual" and cmd.lease_s == 120
    m = LeaseMachine(lim, -1000.0, wall(-1000))
    st, d = m.on_command(cmd, 0.0, wall(0))
    assert d.accepted and st.lease_end == 60 and st.source == "manual"
    assert manual_command("off", lim, "cli-2").lease_s is None
    assert manual_command("on", lim, "cli-3", lease_s=300).lease_s == 300
