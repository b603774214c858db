"""HJ 212 uplink without sockets: settings, what gets uploaded, platform requests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway import hj212
from gateway.configfile import ConfigError, load
from gateway.hj212 import Packet
from gateway.protocol import Status, Telemetry
from gateway.uplink import Hj212Settings, Hj212Uplink

T0 = datetime(2026, 11, 27, 2, 0, 10, tzinfo=UTC).timestamp()  # 10:00:10 Beijing time

YAML = """\
type: hj212
host: 127.0.0.1
port: 8212
mn: MN0001
pw: {env: HJ212_TEST_PW}
realtime_interval: 30s
reply_timeout: 5s
devices: [dust1]
factors: {noise: NOIS, temp: null}
"""


def later() -> float:
    """The uplink's clock in tests that do not care: after every reading here."""
    return T0 + 10 * 86400


def settings(**over: Any) -> Hj212Settings:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 8212, "mn": "MN0001", "pw": "123456"}
    return Hj212Settings.model_validate(base | over)


def reading(ts: float, values: dict[str, float], **kw: Any) -> Telemetry:
    return Telemetry(ts=round(ts * 1000), seq=0, values=values, **kw)


def test_settings_from_yaml_with_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HJ212_TEST_PW", "654321")
    s = load(Hj212Settings, "site.yaml", text=YAML)
    assert s.pw.get_secret_value() == "654321"
    assert "654321" not in repr(s)
    assert s.realtime_interval == 30.0 and s.reply_timeout == 5.0 and s.st == "39"
    assert s.flag_version == 1
    fmap = s.factor_map()
    assert fmap["noise"] == "NOIS" and "temp" not in fmap and fmap["pm10"] == "a34002"


@pytest.mark.parametrize(
    "extra, where",
    [
        ("version: 2025\n", "version_bits"),
        ("minute_interval: 90s\n", "minute_interval"),
        ("mn: 'MN;1'\n", "mn"),
        ("st: dust\n", "st"),
        ("factors: {pm10: 'a34-002'}\n", "factors"),
        ("colour: blue\n", "unknown key"),
    ],
)
def test_settings_errors_name_the_field(
    monkeypatch: pytest.MonkeyPatch, extra: str, where: str
) -> None:
    monkeypatch.setenv("HJ212_TEST_PW", "x")
    text = "\n".join(line for line in YAML.splitlines() if not line.startswith(extra.split(":")[0]))
    with pytest.raises(ConfigError, match=where):
        load(Hj212Settings, "site.yaml", text=text + "\n" + extra)


def test_version_2025_with_explicit_bits() -> None:
    s = settings(version=2025, version_bits=2)
    assert s.flag_version == 2
    assert settings(factor_names="legacy").factor_map()["pm25"] == "PM25"


def test_realtime_upload_has_the_freshest_value_and_flag_of_each_factor() -> None:
    up = Hj212Uplink(settings(devices=["dust1"]), "site1", clock=later)
    up.on_reading("dust1", reading(T0, {"pm10": 80.0, "pm25": 40.0, "rain": 1.0}))
    up.on_reading("dust1", reading(T0 + 5, {"pm10": 500.0}, status=Status.FAULT))
    up.on_reading("dust1", reading(T0 - 5, {"pm10": 1.0}))  # older: not the latest
    up.on_reading("other", reading(T0 + 6, {"pm10": 9999.0}))  # not an uplink device
    up.on_reading(
        "dust1",
        reading(T0 + 6, {"noise": 61.25, "temp": -3.0}, flags={"temp": Status.CALIBRATING}),
    )
    unit = up.realtime_unit(T0 + 50)
    assert unit is not None
    [p] = unit.packets
    assert p.cn == "2011" and p.qn == "20261127100100000" and p.flag == 5
    assert p.st == "39" and p.pw == "123456" and p.mn == "MN0001"
    assert p.cp == (
        "DataTime=20261127100100;a34002-Rtd=500.0,a34002-Flag=D;a34004-Rtd=40.0,a34004-Flag=N;"
        "a01001-Rtd=-3.0,a01001-Flag=C;LA-Rtd=61.2,LA-Flag=N"
    )
    # stale values are left out (default: 3 intervals, at least 3 minutes)
    assert up.realtime_unit(T0 + 181) is not None
    assert up.realtime_unit(T0 + 400) is None


def test_qn_is_unique_even_within_one_millisecond() -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    up.on_reading("d", reading(T0, {"pm10": 1.0}))
    a, b = up.realtime_unit(T0), up.realtime_unit(T0)
    assert a is not None and b is not None
    assert a.packets[0].qn == "20261127100010000" and b.packets[0].qn == "20261127100010001"


def test_minute_and_hour_aggregates_are_queued_when_their_period_closes() -> None:
    up = Hj212Uplink(settings(reply=False, grace=5), "site1", clock=later)
    for i, v in enumerate([80.0, 100.0, 120.0]):
        up.on_reading("d", reading(T0 + 10 * i, {"pm10": v}))  # 10:00:10 .. 10:00:30
    up.on_reading("d", reading(T0 + 15, {"pm10": 999.0}, status=Status.COMM_ERROR))
    up.on_reading("d", reading(T0 + 60, {"pm10": 60.0}))  # 10:01:10
    assert up.collect(T0 + 54) == 0  # 10:01:04, still within grace
    assert up.collect(T0 + 55) == 1
    unit = up._backlog[0]
    [p] = unit.packets
    assert p.cn == "2051" and p.flag == 4
    assert p.cp == (
        "DataTime=20261127100000;a34002-Min=80.0,a34002-Avg=100.0,a34002-Max=120.0,a34002-Flag=B"
    )
    up.collect(T0 + 3600)  # past 11:00:05: minutes 10:01 and the hour 10:00
    cns = [(u.packets[0].cn, u.packets[0].cp_fields()["DataTime"]) for u in up._backlog]
    assert cns == [
        ("2051", "20261127100000"),
        ("2051", "20261127100100"),
        ("2061", "20261127100000"),
    ]
    hour = up._backlog[2].packets[0].cp_fields()
    assert hour["a34002-Avg"] == "90.0" and hour["a34002-Min"] == "60.0"
    assert hour["a34002-Flag"] == "B"
    up.on_reading("d", reading(T0 + 30, {"pm10": 1.0}))  # a closed minute: late
    assert up.stats()["late_readings"] == 2  # minute and hour


def test_backlog_is_bounded_and_drops_the_oldest() -> None:
    up = Hj212Uplink(settings(backlog_max=2, hourly=False), "site1", clock=later)
    for minute in range(4):
        up.on_reading("d", reading(T0 + 60 * minute, {"pm10": float(minute)}))
    up.collect(T0 + 3600)
    assert [u.packets[0].cp_fields()["a34002-Avg"] for u in up._backlog] == ["2.0", "3.0"]
    assert up.stats()["dropped"] == 2 and up.stats()["backlog"] == 2


def test_tick_schedules_realtime_on_interval_boundaries_only_when_connected() -> None:
    up = Hj212Uplink(settings(realtime_interval=60), "site1", clock=later)
    up.on_reading("d", reading(T0, {"pm10": 1.0}))
    up.tick(T0)
    up.tick(T0 + 49)
    assert up._realtime_slot is None
    up.tick(T0 + 50)  # 10:01:00, but no connection
    assert up._realtime_slot is None and up.stats()["realtime_skipped"] == 1
    up._connected = True
    up.tick(T0 + 110)
    assert up._realtime_slot is not None
    assert up._realtime_slot.packets[0].cp_fields()["DataTime"] == "20261127100200"


def request(cn: str, cp: str = "", **kw: Any) -> Packet:
    base: dict[str, Any] = {
        "qn": "20261127100106000",
        "st": "91",
        "pw": "123456",
        "mn": "MN0001",
        "flag": 5,
    }
    return Packet(cn=cn, cp=cp, **(base | kw))


def answers(up: Hj212Uplink, req: Packet, now: float = T0) -> list[tuple[str, str]]:
    out = []
    for p in up.handle_request(req, now):
        raw = hj212.encode_packet(p)  # must be encodable
        back = hj212.decode_packet(raw)
        assert back.qn == req.qn and back.flag == 4 and back.mn == "MN0001"
        out.append((back.cn, back.cp))
    return out


def test_get_time_answers_system_time_in_platform_time() -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    assert answers(up, request("1011", "PolId=a34002")) == [
        ("9011", "QnRtn=1"),
        ("1011", "PolId=a34002;SystemTime=20261127100010"),
        ("9012", "ExeRtn=1"),
    ]
    assert answers(up, request("1011"))[1] == ("1011", "SystemTime=20261127100010")


def test_set_time_is_acknowledged_not_applied(caplog: pytest.LogCaptureFixture) -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    got = answers(up, request("1012", "SystemTime=20261127100110"))
    assert got == [("9011", "QnRtn=1"), ("9012", "ExeRtn=1")]
    assert "+60.0 s" in caplog.text and "ignored" in caplog.text
    assert answers(up, request("1012", "SystemTime=2026"))[1] == ("9012", "ExeRtn=3")


def test_realtime_interval_get_set_and_start_stop() -> None:
    up = Hj212Uplink(settings(realtime_interval=60), "site1", clock=later)
    assert answers(up, request("1061"))[1] == ("1061", "RtdInterval=60")
    assert answers(up, request("1062", "RtdInterval=30")) == [
        ("9011", "QnRtn=1"),
        ("9012", "ExeRtn=1"),
    ]
    assert up.rtd_interval == 30.0
    assert answers(up, request("1062", "RtdInterval=5"))[1] == ("9012", "ExeRtn=3")
    assert answers(up, request("1062", "RtdInterval=x"))[1] == ("9012", "ExeRtn=3")
    assert up.rtd_interval == 30.0
    assert answers(up, request("2012")) == [("9013", "")]
    assert up.realtime_on is False
    assert answers(up, request("2011")) == [("9011", "QnRtn=1")]
    assert up.realtime_on is True
    assert answers(up, request("1063"))[1] == ("1063", "MinInterval=1")
    assert answers(up, request("1064", "MinInterval=10")) == [("9011", "QnRtn=2")]


def test_timeout_and_retries_from_cn_1000() -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    assert answers(up, request("1000", "OverTime=7;ReCount=2"))[1] == ("9012", "ExeRtn=1")
    assert (up.reply_timeout, up.retries) == (7.0, 2)
    assert answers(up, request("1000", "OverTime=0;ReCount=2"))[1] == ("9012", "ExeRtn=3")


def test_requests_with_wrong_credentials_or_unknown_cn_are_refused() -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    assert answers(up, request("1011", pw="000000")) == [("9011", "QnRtn=3")]
    assert answers(up, request("1011", mn="OTHER")) == [("9011", "QnRtn=4")]
    assert answers(up, request("3020")) == [("9011", "QnRtn=8")]
    s = up.stats()
    assert s["requests"] == 3 and s["refused"] == 3


def test_daily_aggregate_is_dated_at_local_midnight() -> None:
    up = Hj212Uplink(settings(minute=False, hourly=False, daily=True), "site1", clock=later)
    up.on_reading("d", reading(T0, {"pm10": 10.0}))  # 10:00:10 on the 27th, Beijing
    up.on_reading("d", reading(T0 + 13 * 3600, {"pm10": 30.0}))  # 23:00:10, same local day
    # the local day ends at 16:00 UTC; it is closed once grace (5 s) has passed
    end_of_day = datetime(2026, 11, 27, 16, 0, 0, tzinfo=UTC).timestamp()
    assert up.collect(end_of_day + 4) == 0
    assert up.collect(end_of_day + 5) == 1
    [p] = up._backlog[0].packets
    assert p.cn == "2031"
    assert p.cp_fields()["DataTime"] == "20261127000000"
    assert p.cp_fields()["a34002-Avg"] == "20.0"


def test_malformed_request_parameters_are_a_condition_error() -> None:
    up = Hj212Uplink(settings(), "site1", clock=later)
    assert answers(up, request("1062", "RtdInterval"))[1] == ("9012", "ExeRtn=3")
    assert answers(up, request("1000", "OverTime=5"))[1] == ("9012", "ExeRtn=3")


def test_readings_from_the_future_are_ignored() -> None:
    up = Hj212Uplink(settings(), "site1", clock=lambda: T0)
    up.on_reading("d", reading(T0 + 3600, {"pm10": 1.0}))
    assert up.stats()["future_readings"] == 1
    assert up.realtime_unit(T0 + 3600) is None
    up.on_reading("d", reading(T0 + 60, {"pm10": 2.0}))  # a little ahead is fine
    assert up.realtime_unit(T0 + 60) is not None
