"""Property tests for the HJ 212 core: round trips, garbage, resync, aggregation."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import Status, Telemetry
from gateway.uplinks import hj212
from gateway.uplinks.hj212 import Hj212Error, Packet, StreamParser
from gateway.uplinks.hj212_periods import PeriodAggregator
from gateway.uplinks.hj212_settings import Hj212Settings
from gateway.uplinks.hj212_station import Station
from tests.agent.hj212_platform import crc as reference_crc  # bitwise, as the standard says


@given(st.binary(max_size=300))
def test_table_crc_matches_the_bitwise_definition(data: bytes) -> None:
    assert hj212.crc16(data) == reference_crc(data)


printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
header_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";=&"), max_size=24
)
maybe_value = st.none() | header_value
maybe_int = st.none() | st.integers(0, 10**6)

packets = st.builds(
    Packet,
    cn=st.from_regex(r"\A[0-9]{4}\Z"),
    cp=printable,
    qn=maybe_value,
    st=maybe_value,
    pw=maybe_value,
    mn=maybe_value,
    flag=maybe_int,
    pnum=maybe_int,
    pno=maybe_int,
)


@given(packets)
def test_build_parse_round_trip(p: Packet) -> None:
    raw = hj212.encode_packet(p, limit=9999)
    assert raw[2:6] == b"%04d" % (len(raw) - 12)
    assert int(raw[-6:-2], 16) == reference_crc(raw[6:-6])
    assert hj212.decode_packet(raw) == p


cp_key = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";,=&"),
    min_size=1,
    max_size=12,
)
cp_value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";,&"), max_size=12
)
cp_group = st.dictionaries(cp_key, cp_value, min_size=1, max_size=4)


@given(st.lists(cp_group, max_size=6))
def test_cp_groups_round_trip(groups: list[dict[str, str]]) -> None:
    text = hj212.join_cp(groups)
    p = Packet(cn="2011", cp=text, qn="20261127100000000", flag=4)
    back = hj212.decode_packet(hj212.encode_packet(p, limit=9999))
    assert hj212.cp_groups(back.cp) == groups


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_hj212error(data: bytes) -> None:
    with contextlib.suppress(Hj212Error):
        hj212.decode_packet(data)


@given(st.binary(max_size=200).map(lambda b: b"##%04d" % len(b) + b))
def test_well_framed_garbage_raises_only_hj212error(body: bytes) -> None:
    for tail in (b"0000\r\n", b"%04X\r\n" % reference_crc(body[6:])):
        with contextlib.suppress(Hj212Error):
            hj212.decode_packet(body + tail)


@given(st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=200))
def test_segment_parser_raises_only_hj212error(text: str) -> None:
    try:
        p = hj212.parse_segment(text)
    except Hj212Error:
        return
    assert len(p.cn) == 4


@given(st.text(max_size=200))
def test_cp_parsers_raise_only_hj212error(text: str) -> None:
    for parse in (hj212.cp_fields, hj212.cp_groups, hj212.cp_pairs):
        with contextlib.suppress(Hj212Error):
            parse(text)


small_packets = st.builds(
    Packet,
    cn=st.from_regex(r"\A[0-9]{4}\Z"),
    cp=printable,
    qn=maybe_value,
    mn=maybe_value,
    flag=maybe_int,
)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(st.binary(max_size=40), small_packets), max_size=5),
    st.binary(max_size=40),
    st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_stream_parser_recovers_packets_spliced_into_garbage(
    chunks: list[tuple[bytes, Packet]], trailer: bytes, cuts: list[int]
) -> None:
    stream = b"".join(g + hj212.encode_packet(p, limit=9999) for g, p in chunks) + trailer
    parser = StreamParser()
    got: list[Packet] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += parser.feed(stream[pos : pos + step])
        pos += step
        i += 1
    # Every spliced packet comes out, in order; garbage can only add packets
    # that really are valid HJ 212 (a CRC collision in random bytes).
    want = [p for _, p in chunks]
    it = iter(got)
    assert all(any(g == w for g in it) for w in want)


@given(st.binary(max_size=2000))
def test_stream_parser_never_raises_and_stays_bounded(data: bytes) -> None:
    parser = StreamParser()
    for i in range(0, len(data), 97):
        parser.feed(data[i : i + 97])
    assert len(parser._buf) <= 9999 + 12


# bytes that make candidates, lengths, CRLFs and near-packets: what hurts a parser
hostile_byte = st.sampled_from(b"##########0123456789\r\n\x00&;=QNCPaz")
hostile = st.lists(
    st.binary(max_size=30)
    | st.lists(hostile_byte, max_size=60).map(bytes)
    | st.integers(0, 9999).map(lambda n: b"##%04d" % n)
    | st.integers(1, 40).map(lambda n: b"##9999" * n),
    max_size=25,
).map(b"".join)


def _feed_in_chunks(parser: StreamParser, stream: bytes, cuts: list[int]) -> list[Packet]:
    """Feed ``stream`` cut by ``cuts`` (cycled); ``parser.calls`` counts the calls."""
    got: list[Packet] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += parser.feed(stream[pos : pos + step])
        pos += step
        i += 1
    parser.calls = i  # type: ignore[attr-defined]
    return got


def _linear_bound(parser: StreamParser, n: int) -> int:
    # a constant per byte, plus a constant per call (a header cut by a call is
    # looked at again: at most 5 bytes)
    return 4 * n + 8 * parser.calls + 16  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(hostile, st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_stream_parser_work_is_linear_in_any_input(data: bytes, cuts: list[int]) -> None:
    """Bytes examined (regex passes, CRCs) stay within a constant times the input,
    however it is cut: the old parser rescanned up to 10 kB per '##'."""
    parser = StreamParser()
    _feed_in_chunks(parser, data, cuts)
    assert parser.work <= _linear_bound(parser, len(data))
    assert len(parser._buf) <= 9999 + 12
    assert parser.garbage_bytes <= len(data)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(hostile, small_packets), min_size=1, max_size=4),
    hostile,
    st.lists(st.integers(1, 200), min_size=1, max_size=8),
)
def test_stream_parser_finds_packets_in_hostile_garbage(
    chunks: list[tuple[bytes, Packet]], trailer: bytes, cuts: list[int]
) -> None:
    # garbage ends in a CRLF before each packet, as any line does, or runs into it
    stream = b"".join(g + hj212.encode_packet(p, limit=9999) for g, p in chunks) + trailer
    parser = StreamParser()
    got = _feed_in_chunks(parser, stream, cuts)
    want = [p for _, p in chunks]
    it = iter(got)
    assert all(any(g == w for g in it) for w in want)
    assert parser.work <= _linear_bound(parser, len(stream))


readings = st.lists(
    st.tuples(
        st.floats(0, 600, allow_nan=False),
        st.sampled_from(["pm10", "noise"]),
        st.floats(-1000, 1000, allow_nan=False),
        st.sampled_from(list("NSDBCMTF")),
    ),
    max_size=60,
)


@given(readings)
def test_aggregation_matches_a_direct_computation(
    rows: list[tuple[float, str, float, str]],
) -> None:
    agg = PeriodAggregator(period_s=60, grace_s=0)
    for ts, metric, value, flag in rows:
        agg.add(ts, metric, value, flag)
    closed = dict(agg.close(10_000))
    for start, stats in closed.items():
        for metric, s in stats.items():
            mine = [(v, f) for ts, m, v, f in rows if m == metric and start <= ts < start + 60]
            valid = [v for v, f in mine if f in "NS"]
            use = valid or [v for v, _ in mine]
            assert s.count == len(valid)
            assert s.min == min(use) and s.max == max(use)
            assert math.isclose(s.avg, sum(use) / len(use), rel_tol=1e-9, abs_tol=1e-9)
            flags = {f for _, f in mine}
            assert s.flag in flags
            if flags <= {"N"}:
                assert s.flag == "N"
            if any(f not in "NS" for f in flags):
                assert s.flag not in "NS"
    assert sum(len(v) for v in closed.values()) >= len({(int(ts // 60), m) for ts, m, _, _ in rows})


@given(st.lists(cp_group, min_size=1, max_size=60), st.integers(200, 1024))
def test_split_parts_fit_and_carry_every_group_once_in_order(
    groups: list[dict[str, str]], limit: int
) -> None:
    head = [{"DataTime": "20261127100000"}]
    template = Packet(cn="2051", qn="20261127100100000", st="39", pw="123456", mn="M1", flag=5)
    try:
        parts = hj212.split_upload(template, head + groups, limit=limit)
    except Hj212Error:
        return  # a single group too large for the limit: refused, not truncated
    carried: list[dict[str, str]] = []
    for p in parts:
        back = hj212.decode_packet(hj212.encode_packet(p, limit=limit))
        assert back.qn == template.qn and back.wants_reply
        assert back.is_split == (len(parts) > 1)
        if len(parts) > 1:
            assert back.pnum == len(parts)
        got = hj212.cp_groups(back.cp)
        assert got[0] == head[0]
        carried += got[1:]
    assert carried == groups
    assert [p.pno for p in parts] == ([None] if len(parts) == 1 else list(range(1, len(parts) + 1)))


# --- station: minute and hour records against a direct computation -------------------

STATION_T0 = 1_795_708_800.0  # 2026-11-26 16:00 UTC = 2026-11-27 00:00 Beijing time
station_readings = st.lists(
    st.tuples(
        st.integers(0, 3 * 3600 - 1),  # within three local hours: gaps are likely
        st.sampled_from(list(Status)),
        st.floats(-50, 1000, allow_nan=False).map(lambda v: round(v, 3)),
    ),
    max_size=80,
)


def _text(x: float) -> str:
    out = f"{x:.1f}"
    return "0.0" if out == "-0.0" else out


def _reference(rows: list[tuple[int, Status, float]], period: int) -> dict[str, dict[str, str]]:
    """Per period start (local DataTime): the a34002 fields HJ 212 asks for."""
    rank = "NSTCMFBD"  # worst flag wins; N and S are the valid ones
    out: dict[str, dict[str, str]] = {}
    for start in sorted({off // period * period for off, _, _ in rows}):
        mine = [(v, s.hj212_flag) for off, s, v in rows if start <= off < start + period]
        valid = [v for v, f in mine if f in "NS"]
        use = valid or [v for v, _ in mine]
        when = datetime.fromtimestamp(STATION_T0 + start + 8 * 3600, UTC)
        out[when.strftime("%Y%m%d%H%M%S")] = {
            "a34002-Min": _text(min(use)),
            "a34002-Avg": _text(math.fsum(use) / len(use)),
            "a34002-Max": _text(max(use)),
            "a34002-Flag": max((f for _, f in mine), key=rank.index),
        }
    return out


@settings(max_examples=150, deadline=None)
@given(station_readings, st.randoms(use_true_random=False))
def test_station_records_equal_a_direct_computation(
    rows: list[tuple[int, Status, float]], rnd: Random
) -> None:
    station = Station(
        Hj212Settings.model_validate(
            {"host": "127.0.0.1", "port": 1, "mn": "M", "pw": "p", "grace": 0}
        )
    )
    shuffled = rows[:]
    rnd.shuffle(shuffled)  # arrival order within open periods does not matter
    end = STATION_T0 + 3 * 3600
    for off, status, value in shuffled:
        t = Telemetry(ts=round((STATION_T0 + off) * 1000), seq=0, values={"pm10": value})
        station.on_reading("d", t.model_copy(update={"status": status}), end)
    records = station.close_periods(end)
    got: dict[tuple[str, str], dict[str, str]] = {}
    for r in records:
        [packet] = station.record_packets(r, end)
        fields = hj212.cp_fields(packet.cp)
        assert fields.pop("DataTime") == r.data_time
        got[(r.cn, r.data_time)] = fields
    want = {("2051", k): v for k, v in _reference(rows, 60).items()}
    want |= {("2061", k): v for k, v in _reference(rows, 3600).items()}
    assert got == want
    # minutes in order, then the hours: the order they are sent in
    minutes = [r.data_time for r in records if r.cn == "2051"]
    assert minutes == sorted(minutes)


def test_period_average_does_not_depend_on_arrival_order() -> None:
    """Summed in arrival order these give 524.4499999999999 one way (sent as
    524.4) and 524.45 the other (524.5); the exact sum gives one answer."""
    values = [821.092, 173.692, 449.984, 49.617, 820.452, 831.863]
    results = set()
    for order in (values, values[::-1]):
        agg = PeriodAggregator(period_s=60, grace_s=0)
        for v in order:
            agg.add(10.0, "pm10", v, "N")
        [(_, stats)] = agg.close(1000)
        results.add(stats["pm10"].avg)
    assert results == {math.fsum(values) / len(values)}


def test_a_snapshot_from_before_exact_sums_is_restored() -> None:
    agg = PeriodAggregator(period_s=60, grace_s=0)
    old = [2, 30.5, 10.0, 20.5, 2, 30.5, 10.0, 20.5, "N"]  # total was one float
    agg.restore({"period_s": 60, "closed_before": None, "open": [[0.0, {"pm10": old}]]})
    agg.add(1.0, "pm10", 9.5, "N")
    [(_, stats)] = agg.close(1000)
    assert stats["pm10"].avg == 40.0 / 3 and stats["pm10"].count == 3
    again = PeriodAggregator(period_s=60, grace_s=0)
    again.add(1.0, "pm10", 0.1, "N")
    again.restore(json.loads(json.dumps(again.snapshot())))  # partials survive JSON
    assert again.snapshot()["open"][0][1]["pm10"][1] == [0.1]


def test_parser_reasons_quote_at_most_200_characters_of_the_peer() -> None:
    segment = "QN=1;" + "X" * 5000 + ";CN=1011;CP=&&&&"
    raw = b"##%04d%s%04X\r\n" % (len(segment), segment.encode(), hj212.crc16(segment.encode()))
    parser = StreamParser()
    assert parser.feed(raw * 3) == []
    assert len(parser.errors) == 3 and all(len(e) <= 200 for e in parser.errors)
    assert "has no '='" in parser.errors[0]
