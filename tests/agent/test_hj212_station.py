"""HJ 212 station without sockets: settings, what gets uploaded, platform requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.configfile import ConfigError, load
from gateway.protocol import Status, Telemetry
from gateway.uplinks import hj212
from gateway.uplinks.hj212 import Packet
from gateway.uplinks.hj212_settings import Hj212Settings
from gateway.uplinks.hj212_station import Record, Runtime, Station

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


LATER = T0 + 10 * 86400
"""The clock in tests that do not care: after every reading here."""


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
        ("dialect: hj212-2025\n", "version_bits"),
        ("dialect: hj212-2099\n", "dialect"),
        ("heartbeat: {interval: 60s}\n", "cn"),
        ("minute_interval: 7m\n", "minute_interval"),
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


def test_dialects_set_version_bits_and_factor_names() -> None:
    assert settings(dialect="hj212-2025", version_bits=2).flag_version == 2
    legacy = settings(dialect="hj212-2005")
    assert legacy.flag_version == 0
    assert legacy.factor_map()["pm25"] == "PM25" and legacy.factor_map()["noise"] == "NOIS"
    assert settings(dialect="hj212-2005", factors={"pm25": "a34004"}).factor_map()["pm25"] == (
        "a34004"
    )
    assert settings().key == "127.0.0.1:8212" and settings(name="city").key == "city"


def test_realtime_upload_has_the_freshest_value_and_flag_of_each_factor() -> None:
    st = Station(settings(devices=["dust1"]))
    st.on_reading("dust1", reading(T0, {"pm10": 80.0, "pm25": 40.0, "rain": 1.0}), LATER)
    st.on_reading("dust1", reading(T0 + 5, {"pm10": 500.0}, status=Status.FAULT), LATER)
    st.on_reading("dust1", reading(T0 - 5, {"pm10": 1.0}), LATER)  # older: not the latest
    st.on_reading("other", reading(T0 + 6, {"pm10": 9999.0}), LATER)  # not an uplink device
    st.on_reading(
        "dust1",
        reading(T0 + 6, {"noise": 61.25, "temp": -3.0}, flags={"temp": Status.CALIBRATING}),
        LATER,
    )
    packets = st.realtime_packets(T0 + 50)
    assert packets is not None
    [p] = packets
    assert p.cn == "2011" and p.qn == "20261127100100000" and p.flag == 5
    assert p.st == "39" and p.pw == "123456" and p.mn == "MN0001"
    assert p.cp == (
        "DataTime=20261127100100;a34002-Rtd=500.0,a34002-Flag=D;a34004-Rtd=40.0,a34004-Flag=N;"
        "a01001-Rtd=-3.0,a01001-Flag=C;LA-Rtd=61.2,LA-Flag=N"
    )
    # stale values are left out (default: 3 intervals, at least 3 minutes)
    assert st.realtime_packets(T0 + 181) is not None
    assert st.realtime_packets(T0 + 400) is None


def test_qn_is_unique_even_within_one_millisecond() -> None:
    st = Station(settings())
    st.on_reading("d", reading(T0, {"pm10": 1.0}), LATER)
    a, b = st.realtime_packets(T0), st.realtime_packets(T0)
    assert a is not None and b is not None
    assert a[0].qn == "20261127100010000" and b[0].qn == "20261127100010001"


def fields_of(st: Station, record: Record) -> dict[str, str]:
    [p] = st.record_packets(record, LATER)
    return p.cp_fields()


def test_minute_and_hour_records_close_when_their_period_ends() -> None:
    st = Station(settings(reply=False, grace=5))
    for i, v in enumerate([80.0, 100.0, 120.0]):
        st.on_reading("d", reading(T0 + 10 * i, {"pm10": v}), LATER)  # 10:00:10 .. 10:00:30
    st.on_reading("d", reading(T0 + 15, {"pm10": 999.0}, status=Status.COMM_ERROR), LATER)
    st.on_reading("d", reading(T0 + 60, {"pm10": 60.0}), LATER)  # 10:01:10
    assert st.close_periods(T0 + 54) == []  # 10:01:04, still within grace
    [first] = st.close_periods(T0 + 55)
    [p] = st.record_packets(first, T0 + 55)
    assert p.cn == "2051" and p.flag == 4
    assert p.cp == (
        "DataTime=20261127100000;a34002-Min=80.0,a34002-Avg=100.0,a34002-Max=120.0,a34002-Flag=B"
    )
    later = st.close_periods(T0 + 3600)  # past 11:00:05: minute 10:01 and the hour 10:00
    assert [(r.cn, r.data_time) for r in later] == [
        ("2051", "20261127100100"),
        ("2061", "20261127100000"),
    ]
    hour = fields_of(st, later[1])
    assert hour["a34002-Avg"] == "90.0" and hour["a34002-Min"] == "60.0"
    assert hour["a34002-Flag"] == "B"
    st.on_reading("d", reading(T0 + 30, {"pm10": 1.0}), LATER)  # a closed minute: late
    assert st.counts["late_readings"] == 2  # minute and hour


def test_realtime_is_due_on_interval_boundaries_while_on() -> None:
    st = Station(settings(realtime_interval=60))
    assert not st.realtime_due(T0)
    assert not st.realtime_due(T0 + 49)
    assert st.realtime_due(T0 + 50)  # 10:01:00
    assert not st.realtime_due(T0 + 51)
    assert st.realtime_due(T0 + 110)
    st.runtime.realtime_on = False
    assert not st.realtime_due(T0 + 170)


def test_open_periods_survive_a_snapshot_and_restore() -> None:
    a = Station(settings(hourly=True))
    a.on_reading("d", reading(T0, {"pm10": 10.0}), LATER)
    a.on_reading("d", reading(T0 + 20, {"pm10": 30.0}, status=Status.MAINTENANCE), LATER)
    snap = json.loads(json.dumps(a.snapshot()))
    b = Station(settings(hourly=True))
    b.restore(snap)
    b.on_reading("d", reading(T0 + 30, {"pm10": 50.0}), LATER)
    records = b.close_periods(T0 + 3600)
    minute = fields_of(b, records[0])
    assert (minute["a34002-Avg"], minute["a34002-Max"], minute["a34002-Flag"]) == (
        "30.0",
        "50.0",
        "M",
    )
    assert fields_of(b, records[-1])["a34002-Min"] == "10.0"


def test_saved_runtime_applies_unless_site_yaml_changed_since() -> None:
    base = Runtime.from_settings(settings(realtime_interval=60))
    saved = {"pw": "NEWPW1", "rtd_interval": 30.0}
    assert base.merged(saved, {"pw": "123456", "rtd_interval": 60.0}).pw == "NEWPW1"
    assert base.merged(saved, {"pw": "123456", "rtd_interval": 60.0}).rtd_interval == 30.0
    # the operator has since put another password into site.yaml: it wins
    assert base.merged(saved, {"pw": "OLDCFG", "rtd_interval": 60.0}).pw == "123456"


def request(cn: str, cp: str = "", **kw: Any) -> Packet:
    base: dict[str, Any] = {
        "qn": "20261127100106000",
        "st": "91",
        "pw": "123456",
        "mn": "MN0001",
        "flag": 5,
    }
    return Packet(cn=cn, cp=cp, **(base | kw))


def answers(st: Station, req: Packet, now: float = T0) -> list[tuple[str, str]]:
    out = []
    for p in st.handle_request(req, now):
        raw = hj212.encode_packet(p)  # must be encodable
        back = hj212.decode_packet(raw)
        assert back.qn == req.qn and back.flag == 4 and back.mn == "MN0001"
        out.append((back.cn, back.cp))
    return out


def test_get_time_answers_system_time_in_platform_time() -> None:
    st = Station(settings())
    assert answers(st, request("1011", "PolId=a34002")) == [
        ("9011", "QnRtn=1"),
        ("1011", "PolId=a34002;SystemTime=20261127100010"),
        ("9012", "ExeRtn=1"),
    ]
    assert answers(st, request("1011"))[1] == ("1011", "SystemTime=20261127100010")


def test_set_time_is_acknowledged_and_the_skew_kept(caplog: pytest.LogCaptureFixture) -> None:
    st = Station(settings())
    got = answers(st, request("1012", "SystemTime=20261127100210"))
    assert got == [("9011", "QnRtn=1"), ("9012", "ExeRtn=1")]
    assert st.platform_skew == 120.0
    assert "+120.0 s" in caplog.text and "not applied" in caplog.text
    assert answers(st, request("1012", "SystemTime=2026"))[1] == ("9012", "ExeRtn=3")
    p = st.time_request(T0)
    assert (p.cn, p.cp, p.flag) == ("1013", "", 4)


def test_realtime_interval_get_set_and_start_stop() -> None:
    st = Station(settings(realtime_interval=60))
    assert answers(st, request("1061"))[1] == ("1061", "RtdInterval=60")
    assert answers(st, request("1062", "RtdInterval=30")) == [
        ("9011", "QnRtn=1"),
        ("9012", "ExeRtn=1"),
    ]
    assert st.runtime.rtd_interval == 30.0 and st.runtime_changed
    assert answers(st, request("1062", "RtdInterval=5"))[1] == ("9012", "ExeRtn=3")
    assert answers(st, request("1062", "RtdInterval=x"))[1] == ("9012", "ExeRtn=3")
    assert st.runtime.rtd_interval == 30.0
    assert answers(st, request("2012")) == [("9013", "")]
    assert st.runtime.realtime_on is False
    assert answers(st, request("2011")) == [("9011", "QnRtn=1")]
    assert st.runtime.realtime_on is True


def test_minute_interval_change_waits_for_a_common_boundary() -> None:
    st = Station(settings(hourly=False, grace=0))
    assert answers(st, request("1063"))[1] == ("1063", "MinInterval=1")
    assert answers(st, request("1064", "MinInterval=7"))[1] == ("9012", "ExeRtn=3")
    assert answers(st, request("1064", "MinInterval=x"))[1] == ("9012", "ExeRtn=3")
    # at 10:03:10 local: 1-minute records go on until 10:05, then every 5 minutes
    now = T0 + 180
    assert answers(st, request("1064", "MinInterval=5"), now)[1] == ("9012", "ExeRtn=1")
    assert answers(st, request("1063"), now)[1] == ("1063", "MinInterval=5")
    for minute in range(3, 12):
        st.on_reading("d", reading(T0 + 60 * minute, {"pm10": float(minute)}), LATER)
    records = st.close_periods(T0 + 3600)
    assert [(r.data_time[8:12], fields_of(st, r)["a34002-Avg"]) for r in records] == [
        ("1003", "3.0"),
        ("1004", "4.0"),
        ("1005", "7.0"),  # minutes 5..9
        ("1010", "10.5"),  # minutes 10 and 11
    ]


def test_new_password_from_the_platform() -> None:
    st = Station(settings())
    got = st.handle_request(request("1072", "NewPW=654321"), T0)
    assert [p.pw for p in got] == ["123456", "123456"]  # answered under the old one
    assert [p.cp for p in got] == ["QnRtn=1", "ExeRtn=1"]
    assert st.runtime.pw == "654321" and st.runtime_changed
    assert st.handle_request(request("1011"), T0)[0].cp == "QnRtn=3"  # the old one is gone
    assert st.handle_request(request("1011", pw="654321"), T0)[0].cp == "QnRtn=1"
    assert answers(st, request("1072", "NewPW=a;b", pw="654321"))[1] == ("9012", "ExeRtn=3")


def test_timeout_and_retries_from_cn_1000() -> None:
    st = Station(settings())
    assert answers(st, request("1000", "OverTime=7;ReCount=2"))[1] == ("9012", "ExeRtn=1")
    assert (st.runtime.reply_timeout, st.runtime.retries) == (7.0, 2)
    assert answers(st, request("1000", "OverTime=0;ReCount=2"))[1] == ("9012", "ExeRtn=3")


def test_bad_requests_get_the_standard_refusals() -> None:
    st = Station(settings())
    assert answers(st, request("1011", pw="000000")) == [("9011", "QnRtn=3")]
    assert answers(st, request("1011", mn="OTHER")) == [("9011", "QnRtn=4")]
    assert answers(st, request("1011", st="22")) == [("9011", "QnRtn=5")]
    assert st.handle_request(request("1011", qn="2026"), T0)[0].cp == "QnRtn=7"
    assert answers(st, request("3020")) == [("9011", "QnRtn=8")]
    assert answers(st, request("1013")) == [("9011", "QnRtn=8")]  # ours to send, not to get
    assert [p.cp for p in st.refuse_crc(request("1011"))] == ["QnRtn=9"]
    assert st.refuse_crc(request("9014")) == []  # never answer an answer
    assert st.counts["requests"] == 7 and st.counts["refused"] == 7


def test_daily_record_is_dated_at_local_midnight() -> None:
    st = Station(settings(minute=False, hourly=False, daily=True))
    st.on_reading("d", reading(T0, {"pm10": 10.0}), LATER)  # 10:00:10 on the 27th, Beijing
    st.on_reading("d", reading(T0 + 13 * 3600, {"pm10": 30.0}), LATER)  # 23:00:10, same day
    # the local day ends at 16:00 UTC; it is closed once grace (5 s) has passed
    end_of_day = datetime(2026, 11, 27, 16, 0, 0, tzinfo=UTC).timestamp()
    assert st.close_periods(end_of_day + 4) == []
    [record] = st.close_periods(end_of_day + 5)
    assert (record.cn, record.data_time) == ("2031", "20261127000000")
    assert fields_of(st, record)["a34002-Avg"] == "20.0"


def test_malformed_request_parameters_are_a_condition_error() -> None:
    st = Station(settings())
    assert answers(st, request("1062", "RtdInterval"))[1] == ("9012", "ExeRtn=3")
    assert answers(st, request("1000", "OverTime=5"))[1] == ("9012", "ExeRtn=3")


def test_readings_from_the_future_are_ignored() -> None:
    st = Station(settings())
    st.on_reading("d", reading(T0 + 3600, {"pm10": 1.0}), T0)
    assert st.counts["future_readings"] == 1
    assert st.realtime_packets(T0 + 3600) is None
    st.on_reading("d", reading(T0 + 60, {"pm10": 2.0}), T0)  # a little ahead is fine
    assert st.realtime_packets(T0 + 60) is not None


def test_heartbeat_packet_when_configured() -> None:
    assert Station(settings()).heartbeat_packet(T0) is None
    st = Station(settings(heartbeat={"interval": "60s", "cn": "9015"}))
    p = st.heartbeat_packet(T0)
    assert p is not None and (p.cn, p.st, p.cp, p.flag) == ("9015", "91", "", 4)


def test_a_request_without_the_a_bit_gets_no_acknowledgement() -> None:
    st = Station(settings())
    got = [(p.cn, p.cp) for p in st.handle_request(request("1011", flag=4), T0)]
    assert got == [("1011", "SystemTime=20261127100010"), ("9012", "ExeRtn=1")]
    assert st.handle_request(request("2012", flag=4), T0) == []
    assert not st.runtime.realtime_on
    refused = st.handle_request(request("1011", flag=4, pw="x"), T0)
    assert [(p.cn, p.cp) for p in refused] == [("9011", "QnRtn=3")]
    # legacy packets without Flag get every answer
    assert len(st.handle_request(request("1011", flag=None), T0)) == 3


def test_realtime_may_go_without_the_a_bit_while_records_keep_it() -> None:
    st = Station(settings(realtime_reply=False))
    st.on_reading("d", reading(T0, {"pm10": 1.0}), LATER)
    realtime = st.realtime_packets(T0)
    assert realtime is not None and realtime[0].flag == 4
    [record] = st.close_periods(T0 + 3600)[:1]
    assert st.record_packets(record, T0 + 3600)[0].flag == 5
