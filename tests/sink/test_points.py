"""Protocol models -> points: the storage schema Grafana and the report rely on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol import (
    ActuatorState,
    DeviceHealth,
    Event,
    GatewayStatus,
    Status,
    Telemetry,
    UplinkHealth,
)
from rules.sink.lineprotocol import parse_line
from rules.sink.points import (
    EngineStats,
    actuator_line,
    engine_line,
    event_line,
    gateway_line,
    metric_field,
    telemetry_line,
)


def test_telemetry_schema():
    msg = Telemetry(
        ts=1_700_000_000_123,
        seq=42,
        values={"pm10": 88, "pm25": 40.5, "wind_dir": 270.0},
        status=Status.OK,
        flags={"pm10": Status.OVER_RANGE, "pm25": Status.OK},
        model="sds011",
        interval_s=10,
    )
    p = parse_line(telemetry_line("site-1", "gate", msg) or "")
    assert p.measurement == "telemetry"
    assert p.tags == {
        "site": "site-1", "device": "gate", "model": "sds011",
        "status": "ok", "quality": "over_range", "pm10_flag": "over_range",
    }  # fmt: skip
    assert p.ts_ms == 1_700_000_000_123  # the sensor read time
    assert p.fields == {
        "pm10": 88.0, "pm25": 40.5, "wind_dir": 270.0, "seq": 42, "interval_s": 10.0,
    }  # fmt: skip
    assert isinstance(p.fields["pm10"], float)  # an int reading must not change the field type


def test_interval_from_the_message_else_from_the_caller_else_none():
    with_iv = Telemetry(ts=1, seq=0, values={}, status=Status.COMM_ERROR, interval_s=5)
    without = Telemetry(ts=1, seq=0, values={}, status=Status.COMM_ERROR)
    assert parse_line(telemetry_line("s", "d", with_iv, interval_s=60) or "").fields == {
        "seq": 0,
        "interval_s": 5.0,
    }
    assert parse_line(telemetry_line("s", "d", without, interval_s=60) or "").fields == {
        "seq": 0,
        "interval_s": 60.0,
    }
    p = parse_line(telemetry_line("s", "d", without) or "")
    assert p.fields == {"seq": 0} and p.tags["quality"] == p.tags["status"] == "comm_error"


statuses = st.sampled_from(list(Status))


@given(
    status=statuses,
    flags=st.none()
    | st.dictionaries(st.sampled_from(["pm10", "pm25", "noise"]), statuses, max_size=3),
)
def test_quality_is_ok_only_for_an_all_ok_reading(status: Status, flags: dict[str, Status] | None):
    msg = Telemetry(ts=1, seq=0, values={"pm10": 1.0, "pm25": 2.0, "noise": 3.0},
                    status=status, flags=flags)  # fmt: skip
    tags = parse_line(telemetry_line("s", "d", msg) or "").tags
    assert tags["status"] == status.value
    every = [status, *(flags or {}).values()]
    assert (tags["quality"] == "ok") == all(s is Status.OK for s in every)
    assert tags["quality"] == max(every, key=lambda s: s.severity).value
    for metric in ("pm10", "pm25", "noise"):
        # a metric is valid (what the queries select) iff the reading's and its own status are ok
        valid = tags["status"] == "ok" and tags.get(f"{metric}_flag", "") in ("", "ok")
        assert valid == (msg.metric_status(metric) is Status.OK and status is Status.OK)


@given(
    st.dictionaries(
        st.from_regex(r"^[a-z0-9_]{1,32}$", fullmatch=True), st.floats(-1e9, 1e9), max_size=8
    )
)
def test_telemetry_field_types_never_vary(values: dict[str, float]):
    msg = Telemetry(ts=1, seq=0, values=values)
    p = parse_line(telemetry_line("s", "d", msg) or "")
    for metric, value in values.items():
        assert p.fields[metric_field(metric)] == float(value)
        assert isinstance(p.fields[metric_field(metric)], float)
    assert p.tags["status"] == p.tags["quality"] == "ok" and p.fields["seq"] == 0


def test_a_calibrated_metric_stores_its_raw_value_too():
    msg = Telemetry(
        ts=1, seq=0, values={"pm10": 88.0, "pm25": 40.0, "seq": 7.0},
        cal={"pm10": (0.8, 2.0), "seq": (2.0, 0.0)},
    )  # fmt: skip
    p = parse_line(telemetry_line("s", "d", msg) or "")
    assert p.fields == {
        "pm10": 88.0, "pm10_raw": 107.5, "pm25": 40.0,
        "seq": 0, "seq_value": 7.0, "seq_value_raw": 3.5,
    }  # fmt: skip
    assert msg.raw_value("pm10") == 107.5 and msg.raw_value("pm25") == 40.0
    p = parse_line(telemetry_line("s", "d", Telemetry(ts=1, seq=0, values={"x_raw": 1.0})) or "")
    assert p.fields == {"x_raw_value": 1.0, "seq": 0}  # a metric named like a raw field


def test_reserved_metric_names_do_not_collide():
    p = parse_line(telemetry_line("s", "d", Telemetry(ts=1, seq=3, values={"seq": 1.5})) or "")
    assert p.fields["seq"] == 3 and p.fields["seq_value"] == 1.5
    names = {"site": 1.0, "quality": 2.0, "interval_s": 3.0, "model": 4.0}
    p = parse_line(telemetry_line("s", "d", Telemetry(ts=1, seq=3, values=names)) or "")
    assert set(p.fields) == {
        "seq",
        "site_value",
        "quality_value",
        "interval_s_value",
        "model_value",
    }


def test_actuator_schema():
    st_ = ActuatorState(
        state="on", since=5000, source="rule", cmd_id="c1", lease_until=65000, reason="pm10-gate"
    )
    p = parse_line(actuator_line("s", "cannon-1", st_))
    assert (p.measurement, p.ts_ms) == ("actuator", 5000)
    assert p.tags == {"site": "s", "actuator": "cannon-1", "source": "rule"}
    assert p.fields == {
        "on": 1,
        "readback_ok": 1,
        "reason": "pm10-gate",
        "cmd_id": "c1",
        "lease_until": 65000,
    }
    off = parse_line(
        actuator_line("s", "cannon-1", ActuatorState(state="off", since=9, source="failsafe"))
    )
    assert off.fields["on"] == 0 and off.tags["source"] == "failsafe"


def test_event_schema():
    ev = Event(
        ts=7000,
        kind="rule_on",
        text='PM10 "high", spraying\nnow',
        severity="warning",
        rule="pm10-gate",
    )
    p = parse_line(event_line("s", ev))
    assert p.measurement == "rule_event" and p.ts_ms == 7000
    assert p.tags == {"site": "s", "kind": "rule_on", "severity": "warning", "rule": "pm10-gate"}
    # a newline cannot be stored as one by InfluxDB 1.x: our own texts have it as a space
    assert p.fields == {"text": 'PM10 "high", spraying now'}


def test_gateway_and_engine_schema():
    gs = GatewayStatus(
        state="online",
        ts=9000,
        uptime_s=12.5,
        backlog=3,
        evicted=1,
        poll_errors=7,
        refused_commands=2,
        devices={
            "a": DeviceHealth(state="online"),
            "b": DeviceHealth(state="backoff"),
            "c": DeviceHealth(state="offline"),
        },
        uplinks={
            "city": UplinkHealth(connected=False, backlog=40),
            "district": UplinkHealth(connected=True, backlog=2),
        },
    )
    p = parse_line(gateway_line("s", "gw1", gs))
    assert p.tags == {"site": "s", "gateway": "gw1"} and p.ts_ms == 9000
    assert p.fields == {
        "online": 1,
        "backlog": 3,
        "evicted": 1,
        "poll_errors": 7,
        "refused_commands": 2,
        "devices": 3,
        "devices_offline": 2,
        "uptime": 12.5,
        "uplinks": 2,
        "uplinks_down": 1,
        "uplink_backlog": 42,
    }
    e = parse_line(engine_line("eng-1", EngineStats(10, 55.5, 2, 1), {"written": 9}))
    assert e.measurement == "gateway" and e.tags == {"engine": "eng-1"}
    assert e.fields == {"messages_per_s": 55.5, "decode_errors": 2, "dropped": 1, "sink_written": 9}
