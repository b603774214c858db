"""HJ 212-2017 packets: CRC, framing, data segment, CP builders, split, aggregation."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.protocol import Status
from gateway.uplinks import hj212
from gateway.uplinks.hj212 import (
    Hj212Error,
    Packet,
    Sample,
    Stats,
    StreamParser,
    crc16,
    decode_packet,
    encode_packet,
)
from gateway.uplinks.hj212_periods import PeriodAggregator, worst_flag
from tests.agent.hj212_platform import crc as reference_crc  # the standard's bitwise routine

# The example printed in HJ 212-2017 itself (as quoted on whycan.com, topic 3594).
STANDARD_EXAMPLE = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
)
CST = 8 * 3600  # Beijing time, the platforms' clock


def test_crc_of_the_standard_example() -> None:
    segment = STANDARD_EXAMPLE[6:-6]
    assert len(segment) == 101
    assert crc16(segment) == 0x1C80
    assert reference_crc(segment) == 0x1C80


def modbus_crc(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_crc_is_not_the_modbus_crc() -> None:
    request = bytes.fromhex("010301F4000E")  # DOMAIN.md: on the wire as ... 84 00
    assert modbus_crc(request) == 0x0084
    assert crc16(request) != modbus_crc(request)
    assert crc16(STANDARD_EXAMPLE[6:-6]) != modbus_crc(STANDARD_EXAMPLE[6:-6])


def test_decode_and_reencode_the_standard_example() -> None:
    p = decode_packet(STANDARD_EXAMPLE)
    assert p == Packet(
        cn="1062",
        cp="RtdInterval=30",
        qn="20160801085857223",
        st="32",
        pw="100000",
        mn="010000A8900016F000169DC0",
        flag=5,
    )
    assert p.wants_reply and not p.is_split and p.version_bits == 1
    assert p.cp_fields() == {"RtdInterval": "30"}
    assert encode_packet(p) == STANDARD_EXAMPLE


def test_encode_realtime_packet_byte_exact() -> None:
    groups = hj212.realtime_groups(
        "20261127100000",
        {"a34002": Sample(95.0, "N"), "a34004": Sample(41.26, "D")},
    )
    p = Packet(
        cn="2011",
        cp=hj212.join_cp(groups),
        qn="20261127100000123",
        st="39",
        pw="123456",
        mn="MN001",
        flag=hj212.make_flag(1, reply=False),
    )
    segment = (
        "QN=20261127100000123;ST=39;CN=2011;PW=123456;MN=MN001;Flag=4;"
        "CP=&&DataTime=20261127100000;a34002-Rtd=95.0,a34002-Flag=N;"
        "a34004-Rtd=41.3,a34004-Flag=D&&"
    )
    want = b"##%04d%s%04X\r\n" % (len(segment), segment.encode(), reference_crc(segment.encode()))
    assert encode_packet(p) == want


def test_flags() -> None:
    assert hj212.make_flag(1, reply=False) == 4
    assert hj212.make_flag(1, reply=True) == 5
    assert hj212.make_flag(1, reply=True, split=True) == 7
    with pytest.raises(Hj212Error):
        hj212.make_flag(64, reply=False)


def test_aggregate_groups_and_formatting() -> None:
    groups = hj212.aggregate_groups(
        "20261127100000", {"a34002": Stats(80.04, 95.25, 120.0, "N", 3)}, decimals=1
    )
    assert hj212.join_cp(groups) == (
        "DataTime=20261127100000;a34002-Min=80.0,a34002-Avg=95.2,a34002-Max=120.0,a34002-Flag=N"
    )
    assert hj212.format_value(-0.01, 1) == "0.0"
    assert hj212.format_value(-3.26, 1) == "-3.3"


def test_times_are_local_platform_time() -> None:
    ts = datetime.fromisoformat("2026-11-27T02:00:05.042+00:00").timestamp()
    assert hj212.data_time(ts, CST) == "20261127100005"
    assert hj212.qn_text(round(ts * 1000), CST) == "20261127100005042"
    assert hj212.parse_data_time("20261127100005", CST) == pytest.approx(ts - 0.042)
    for bad in ("2026112710000", "20261327100005", "2026112710000x"):
        with pytest.raises(Hj212Error):
            hj212.parse_data_time(bad, CST)


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "12 bytes"),
        (b"##01x1QN=1;CN=2011;CP=&&&&0000\r\n", "4 decimal digits"),
        (STANDARD_EXAMPLE.replace(b"1C80", b"1C81"), "does not match"),
        (STANDARD_EXAMPLE.replace(b"0101", b"0100"), "length field says"),
        (STANDARD_EXAMPLE[:-2] + b"\n\n", "CRLF"),
        (STANDARD_EXAMPLE.replace(b"1C80", b"1CXY"), "hex"),
    ],
)
def test_decode_rejects(raw: bytes, why: str) -> None:
    with pytest.raises(Hj212Error, match=why):
        decode_packet(raw)


def framed(segment: str) -> bytes:
    data = segment.encode("latin-1")
    return b"##%04d%s%04X\r\n" % (len(data), data, reference_crc(data))


@pytest.mark.parametrize(
    "segment, why",
    [
        ("QN=1;ST=39;PW=1;MN=2;CP=&&x=1&&", "CN missing"),
        ("QN=1;CN=20x1;CP=&&&&", "CN missing or not 4 digits"),
        ("QN=1;CN=2011;Flag=x;CP=&&&&", "not a number"),
        ("QN=1;CN=2011;CN=2012;CP=&&&&", "twice"),
        ("QN=1;CN=2011;CP=&&x=1", "end with '&&'"),
        ("QN=1;CN=2011", "no 'CP=&&'"),
        ("QN=1;CN=2011;garbage;CP=&&&&", "no '='"),
        ("QN=1;CN=2011;CP=&&é&&", "not ASCII"),
        ("QN=1;CN=2011;CP=&&\t&&", "printable ASCII"),
    ],
)
def test_segment_rejects(segment: str, why: str) -> None:
    with pytest.raises(Hj212Error, match=why):
        decode_packet(framed(segment))


def test_legacy_packet_without_qn_and_flag_and_unknown_keys() -> None:
    p = decode_packet(
        framed("ST=39;CN=2011;PW=123456;MN=X1;Flage=5;CP=&&DataTime=20261127100000&&")
    )
    assert p.qn is None and p.flag is None and not p.wants_reply
    assert p.cp_fields() == {"DataTime": "20261127100000"}


def test_encode_rejects_separators_in_header_values_and_too_long() -> None:
    with pytest.raises(Hj212Error):
        encode_packet(Packet(cn="2011", mn="a;b"))
    with pytest.raises(Hj212Error):
        encode_packet(Packet(cn="211"))
    with pytest.raises(Hj212Error, match="exceeds"):
        encode_packet(Packet(cn="2011", cp="x=" + "1" * 1100))


def test_cp_parsing() -> None:
    cp = "DataTime=20261127100000;a34002-Rtd=95.0,a34002-Flag=N;LA-Rtd=61.2,LA-Flag=N"
    assert hj212.cp_groups(cp) == [
        {"DataTime": "20261127100000"},
        {"a34002-Rtd": "95.0", "a34002-Flag": "N"},
        {"LA-Rtd": "61.2", "LA-Flag": "N"},
    ]
    assert hj212.join_cp(hj212.cp_groups(cp)) == cp
    assert hj212.cp_fields(cp)["LA-Rtd"] == "61.2"
    with pytest.raises(Hj212Error):
        hj212.cp_fields("a=1;a=2")
    with pytest.raises(Hj212Error):
        hj212.cp_fields("novalue")
    with pytest.raises(Hj212Error):
        hj212.join_cp([{"a": "1;2"}])


def test_split_upload_keeps_every_segment_within_1024_and_numbers_parts() -> None:
    stats = {f"a{i:05d}": Stats(1.0, 2.0, 3.0, "N", 1) for i in range(40)}
    groups = hj212.aggregate_groups("20261127100000", stats)
    template = Packet(cn="2051", qn="20261127100100000", st="39", pw="123456", mn="MN001", flag=5)
    parts = hj212.split_upload(template, groups)
    assert len(parts) > 1
    assert [p.pno for p in parts] == list(range(1, len(parts) + 1))
    seen: list[dict[str, str]] = []
    for p in parts:
        raw = encode_packet(p)  # raises past 1024
        assert len(raw) - 12 <= 1024
        back = decode_packet(raw)
        assert back.is_split and back.wants_reply and back.pnum == len(parts)
        assert back.qn == template.qn
        part_groups = hj212.cp_groups(back.cp)
        assert part_groups[0] == {"DataTime": "20261127100000"}
        seen += part_groups[1:]
    assert seen == groups[1:]


def test_small_upload_is_not_split() -> None:
    groups = hj212.realtime_groups("20261127100000", {"a34002": Sample(1.0)})
    [p] = hj212.split_upload(Packet(cn="2011", flag=4), groups)
    assert p.pnum is None and p.flag == 4


def test_split_refuses_a_group_that_cannot_fit() -> None:
    groups = [{"DataTime": "20261127100000"}, {"x": "1" * 1100}]
    with pytest.raises(Hj212Error):
        hj212.split_upload(Packet(cn="2051", flag=4), groups)


def test_stream_parser_handles_chunks_and_garbage() -> None:
    parser = StreamParser()
    stream = b"\x00\xff##12##zz" + STANDARD_EXAMPLE + b"junk##0050" + STANDARD_EXAMPLE
    got = []
    for i in range(0, len(stream), 7):
        got += parser.feed(stream[i : i + 7])
    assert len(got) == 2 and all(p.cn == "1062" for p in got)
    assert parser.bad_packets >= 3
    assert parser.garbage_bytes > 0


def test_worst_flag_and_status_mapping() -> None:
    assert worst_flag("N", "S") == "S"
    assert worst_flag("D", "N") == "D"
    assert worst_flag("B", "T") == "B"
    assert Status.CALIBRATING.hj212_flag == "C"


def test_period_aggregator_minute_stats_ignore_invalid_data_for_averages() -> None:
    base = datetime.fromisoformat("2026-11-27T02:00:00+00:00").timestamp()
    agg = PeriodAggregator(period_s=60, utc_offset_s=CST, grace_s=5)
    agg.add(base + 1, "pm10", 80.0, "N")
    agg.add(base + 20, "pm10", 100.0, "S")
    agg.add(base + 30, "pm10", 999.0, "D")  # fault: not averaged, but flags the minute
    agg.add(base + 40, "noise", 60.0, "N")
    agg.add(base + 61, "pm10", 50.0, "N")  # next minute
    assert agg.close(base + 64) == []  # inside the grace time
    [(start, stats)] = agg.close(base + 65)
    assert start == base
    assert stats["pm10"] == Stats(80.0, 90.0, 100.0, "D", 2)
    assert stats["noise"] == Stats(60.0, 60.0, 60.0, "N", 1)
    assert not agg.add(base + 59, "pm10", 1.0, "N")  # late for a closed minute
    assert agg.late == 1
    [(start2, stats2)] = agg.close(base + 125)
    assert start2 == base + 60 and stats2["pm10"].avg == 50.0


def test_period_aggregator_all_invalid_reports_values_under_the_invalid_flag() -> None:
    agg = PeriodAggregator(period_s=60)
    agg.add(0.5, "pm10", 10.0, "B")
    agg.add(1.5, "pm10", 30.0, "C")
    [(_, stats)] = agg.close(100)
    assert stats["pm10"] == Stats(10.0, 20.0, 30.0, "B", 0)


def test_hours_align_to_local_time() -> None:
    agg = PeriodAggregator(period_s=3600, utc_offset_s=5.5 * 3600)
    ts = datetime.fromisoformat("2026-11-27T02:40:00+00:00").timestamp()  # 08:10 local
    assert agg.period_start(ts) == ts - 600
