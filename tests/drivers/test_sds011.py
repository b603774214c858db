"""SDS011 frames: datasheet examples, strict parsing, and the stream parser's properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import sds011
from drivers.errors import FrameError
from drivers.sds011 import Sds011Command, Sds011Parser, Sds011Reading, Sds011Reply
from drivers.serial_reader import ChecksumMismatch, MalformedFrame, ReportingMode

DATASHEET_FRAME = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")
ZEROS = "00 " * 12


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- hand-checked frames ----------------------------------------------------------------------


def test_datasheet_data_frame() -> None:
    reading = sds011.parse_frame(DATASHEET_FRAME)
    assert reading == Sds011Reading(pm25=123.6, pm10=261.8, device_id=0xA160)
    assert reading.values() == {"pm25": 123.6, "pm10": 261.8}


def test_datasheet_data_frame_encodes_back() -> None:
    assert sds011.encode_reading(Sds011Reading(123.6, 261.8, 0xA160)) == DATASHEET_FRAME


def test_query_command_bytes() -> None:
    assert sds011.build_query() == h("AA B4 04" + ZEROS + "FF FF 02 AB")


def test_passive_mode_command_bytes() -> None:
    expected = h("AA B4 02 01 01" + "00 " * 10 + "FF FF 02 AB")
    assert sds011.build_set_mode(ReportingMode.PASSIVE) == expected


def test_active_mode_command_bytes() -> None:
    expected = h("AA B4 02 01 00" + "00 " * 10 + "FF FF 01 AB")
    assert sds011.build_set_mode(ReportingMode.ACTIVE) == expected


def test_sleep_and_wake_command_bytes() -> None:
    assert sds011.build_sleep() == h("AA B4 06 01 00" + "00 " * 10 + "FF FF 05 AB")
    assert sds011.build_wake() == h("AA B4 06 01 01" + "00 " * 10 + "FF FF 06 AB")


def test_work_period_command_bytes() -> None:
    # 08 + 01 + 0A(10 min) + FF + FF = 0x211 -> 11
    assert sds011.build_set_work_period(10) == h("AA B4 08 01 0A" + "00 " * 10 + "FF FF 11 AB")
    with pytest.raises(ValueError):
        sds011.build_set_work_period(31)


def test_addressed_command_uses_device_id_in_checksum() -> None:
    # 04 + A1 + 60 = 0x105 -> 05
    assert sds011.build_query(0xA160) == h("AA B4 04" + ZEROS + "A1 60 05 AB")


def test_sleep_reply_from_datasheet() -> None:
    # Datasheet: reply to "set sleep" is AA C5 06 01 00 00 A1 60 08 AB
    reply = sds011.parse_frame(h("AA C5 06 01 00 00 A1 60 08 AB"))
    assert reply == Sds011Reply(command=6, data=b"\x01\x00\x00", device_id=0xA160)
    assert sds011.encode_reply(reply) == h("AA C5 06 01 00 00 A1 60 08 AB")


def test_command_parses_as_seen_by_the_sensor() -> None:
    cmd = sds011.parse_frame(sds011.build_set_work_period(5, 0x0102))
    assert cmd == Sds011Command(command=8, data=bytes([1, 5]) + bytes(10), device_id=0x0102)


# -- strict parse errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (h("AA C0 D4 04 3A 0A A1 60 1E AB"), ChecksumMismatch),
        (h("AA C0 D4 04 3A 0A A1 60 1D AC"), MalformedFrame),
        (h("AB C0 D4 04 3A 0A A1 60 1D AB"), MalformedFrame),
        (h("AA C1 D4 04 3A 0A A1 60 1D AB"), MalformedFrame),
        (h("AA C0 D4 04 3A 0A A1 60 1D"), MalformedFrame),
        (h("AA C0 D4 04 3A 0A A1 60 1D AB AB"), MalformedFrame),
        (b"", MalformedFrame),
    ],
)
def test_parse_frame_rejects_with_typed_error(frame: bytes, error: type[FrameError]) -> None:
    with pytest.raises(error):
        sds011.parse_frame(frame)


# -- stream parser ----------------------------------------------------------------------------


def test_stream_resyncs_after_garbage_and_counts_it() -> None:
    parser = Sds011Parser()
    bad = bytearray(DATASHEET_FRAME)
    bad[8] ^= 0xFF
    frames = parser.feed(b"\x00\x11" + bytes(bad) + b"\xaa" + DATASHEET_FRAME)
    assert frames == [Sds011Reading(123.6, 261.8, 0xA160)]
    assert parser.bad_checksum == 1
    # 2 leading bytes + the bad frame (10) + the lone AA
    assert parser.garbage_bytes == 13
    assert parser.buffered == 0


def test_frame_hidden_inside_a_false_header_is_found() -> None:
    # The false candidate AA C0 01 02 <first 6 bytes of the real frame> fails its tail check;
    # the parser must skip one byte, not ten, or it loses the real frame.
    parser = Sds011Parser()
    assert parser.feed(h("AA C0 01 02") + DATASHEET_FRAME) == [sds011.parse_frame(DATASHEET_FRAME)]
    assert parser.bad_frame == 1
    assert parser.garbage_bytes == 4


def test_header_flood_keeps_the_buffer_bounded() -> None:
    parser = Sds011Parser()
    for _ in range(200):
        assert parser.feed(h("AA C5") * 30 + h("AA")) == []
        assert parser.buffered < sds011.FRAME_LEN
    assert parser.feed(DATASHEET_FRAME) == [sds011.parse_frame(DATASHEET_FRAME)]


def test_stream_waits_for_the_rest_of_a_split_frame() -> None:
    parser = Sds011Parser()
    assert parser.feed(DATASHEET_FRAME[:7]) == []
    assert parser.buffered == 7
    assert parser.feed(DATASHEET_FRAME[7:]) == [sds011.parse_frame(DATASHEET_FRAME)]


pm_values = st.integers(min_value=0, max_value=0xFFFF).map(lambda raw: raw / 10)
readings = st.builds(Sds011Reading, pm_values, pm_values, st.integers(0, 0xFFFF))
replies = st.builds(
    Sds011Reply, st.integers(0, 255), st.binary(min_size=3, max_size=3), st.integers(0, 0xFFFF)
)
commands = st.builds(
    Sds011Command, st.integers(0, 255), st.binary(min_size=12, max_size=12), st.integers(0, 0xFFFF)
)


def encode(frame: sds011.Sds011Frame) -> bytes:
    if isinstance(frame, Sds011Reading):
        return sds011.encode_reading(frame)
    if isinstance(frame, Sds011Reply):
        return sds011.encode_reply(frame)
    return sds011.encode_command(frame)


any_frame = st.one_of(readings, replies, commands)
DIRECTIONS = {"from_sensor": st.one_of(readings, replies), "from_host": commands}
direction = pytest.mark.parametrize("from_host", [False, True], ids=["from_sensor", "from_host"])
# Garbage without the start byte AA cannot contain or fake a frame start.
garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\xaa", b"\x55"))


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A valid frame with one byte changed."""
    wire = bytearray(encode(draw(any_frame)))
    i = draw(st.integers(0, len(wire) - 1))
    wire[i] ^= draw(st.integers(1, 255))
    return bytes(wire)


# Noise that often contains real and nearly-real frames, so the property sees both.
line_noise = st.lists(
    st.one_of(st.binary(max_size=30), any_frame.map(encode), corrupted()), max_size=12
).map(b"".join)


@given(any_frame)
def test_encode_decode_round_trip(frame: sds011.Sds011Frame) -> None:
    wire = encode(frame)
    assert sds011.parse_frame(wire) == frame
    assert encode(sds011.parse_frame(wire)) == wire


@direction
@given(data=line_noise, cuts=st.lists(st.integers(1, 64), max_size=20))
def test_arbitrary_bytes_never_raise_and_yield_only_valid_frames(
    from_host: bool, data: bytes, cuts: list[int]
) -> None:
    parser = Sds011Parser(from_host=from_host)
    frames = []
    pos = 0
    for cut in cuts:
        frames += parser.feed(data[pos : pos + cut])
        pos += cut
    frames += parser.feed(data[pos:])
    assert frames == Sds011Parser(from_host=from_host).feed(data)  # chunking changes nothing
    wire = [encode(f) for f in frames]
    for frame, raw in zip(frames, wire, strict=True):
        assert sds011.parse_frame(raw) == frame  # checksum-valid and consistent
        assert isinstance(frame, Sds011Command) is from_host
    # Every byte fed is in a frame, counted as garbage, or held as a partial frame.
    assert sum(map(len, wire)) + parser.garbage_bytes + parser.buffered == len(data)
    assert parser.buffered < parser.max_frame_len


@direction
@given(data=st.data())
def test_frames_between_garbage_are_all_recovered_in_order_at_any_split(
    from_host: bool, data: st.DataObject
) -> None:
    frames = DIRECTIONS["from_host" if from_host else "from_sensor"]
    chunks = data.draw(st.lists(st.tuples(garbage, frames), max_size=8))
    tail = data.draw(garbage)
    stream = b"".join(g + encode(f) for g, f in chunks) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = Sds011Parser(from_host=from_host)
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += parser.feed(stream[prev:cut])
        prev = cut
    assert got == [f for _, f in chunks]
    assert parser.bad_checksum == parser.bad_frame == 0
    assert parser.garbage_bytes + parser.buffered == sum(len(g) for g, _ in chunks) + len(tail)


def test_sensor_side_parser_ignores_commands_and_vice_versa() -> None:
    line = sds011.build_query() + DATASHEET_FRAME
    assert Sds011Parser().feed(line) == [sds011.parse_frame(DATASHEET_FRAME)]
    assert Sds011Parser(from_host=True).feed(line) == [sds011.parse_frame(sds011.build_query())]


@given(st.binary(min_size=1, max_size=200), readings.filter(lambda r: 0xAA not in encode(r)[1:]))
def test_frames_after_arbitrary_noise_recovered_once_aligned(
    noise: bytes, reading: Sds011Reading
) -> None:
    # Noise may fake a header and swallow the start of the first frames, but a false candidate
    # that starts in the noise spans at most 18 bytes, and frames without an inner AA offer no
    # new false start: the third copy is always found.
    parser = Sds011Parser()
    got = parser.feed(noise + sds011.encode_reading(reading) * 3)
    assert got[-1] == reading
    assert parser.buffered == 0
