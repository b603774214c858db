"""PMS5003/PMS7003 frames: hand-checked bytes, strict parsing, stream parser properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import pms5003
from drivers.errors import FrameError
from drivers.pms5003 import PmsCommand, PmsParser, PmsReading
from drivers.serial_reader import ChecksumMismatch, MalformedFrame, ReportingMode


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# PM1/2.5/10 CF=1 = 5/8/10, atmospheric = 5/8/10, counts 1000/300/60/6/2/1, reserved 0x9700.
# Checksum by hand: 42+4D+1C = AB; +05+08+0A = C2; +05+08+0A = D9; +03+E8 = 1C4; +01+2C = 1F1;
# +3C = 22D; +06 = 233; +02 = 235; +01 = 236; +97 = 2CD.
HAND_FRAME = h(
    "42 4D 00 1C 00 05 00 08 00 0A 00 05 00 08 00 0A"
    " 03 E8 01 2C 00 3C 00 06 00 02 00 01 97 00 02 CD"
)
HAND_READING = PmsReading(5, 8, 10, 5, 8, 10, 1000, 300, 60, 6, 2, 1, 0x9700)


def test_hand_checked_data_frame() -> None:
    reading = pms5003.parse_frame(HAND_FRAME)
    assert reading == HAND_READING
    assert isinstance(reading, PmsReading)
    assert reading.values() == {"pm1": 5.0, "pm25": 8.0, "pm10": 10.0}
    assert pms5003.encode_reading(HAND_READING) == HAND_FRAME


def test_datasheet_commands() -> None:
    assert pms5003.build_set_mode(ReportingMode.PASSIVE) == h("42 4D E1 00 00 01 70")
    assert pms5003.build_set_mode(ReportingMode.ACTIVE) == h("42 4D E1 00 01 01 71")
    assert pms5003.build_read() == h("42 4D E2 00 00 01 71")
    assert pms5003.build_sleep() == h("42 4D E4 00 00 01 73")
    assert pms5003.build_wake() == h("42 4D E4 00 01 01 74")


def test_command_parses_as_seen_by_the_sensor() -> None:
    assert pms5003.parse_frame(h("42 4D E4 00 01 01 74")) == PmsCommand(0xE4, 1)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (HAND_FRAME[:-1] + b"\xce", ChecksumMismatch),
        (HAND_FRAME[:3] + b"\x14" + HAND_FRAME[4:], MalformedFrame),  # length field 20
        (HAND_FRAME[:-1], MalformedFrame),
        (b"\x42\x4e" + HAND_FRAME[2:], MalformedFrame),
        (h("42 4D E2 00 00 01 72"), ChecksumMismatch),
        (h("42 4D E2 00 00 01"), MalformedFrame),
        (b"", MalformedFrame),
    ],
)
def test_parse_frame_rejects_with_typed_error(frame: bytes, error: type[FrameError]) -> None:
    with pytest.raises(error):
        pms5003.parse_frame(frame)


def test_stream_resyncs_after_bad_frame_and_counts_it() -> None:
    parser = PmsParser()
    bad = bytearray(HAND_FRAME)
    bad[10] ^= 0x01
    frames = parser.feed(b"\x42\x42\x4d\x00" + bytes(bad) + HAND_FRAME)
    assert frames == [HAND_READING]
    assert parser.bad_checksum == 1
    assert parser.garbage_bytes == 4 + 32


u16 = st.integers(0, 0xFFFF)
readings = st.builds(
    PmsReading,
    *[u16.map(float)] * 6,
    *[u16] * 6,
    reserved=u16,
)
commands = st.builds(PmsCommand, st.sampled_from(pms5003.COMMANDS), u16)
any_frame = st.one_of(readings, commands)
garbage = st.binary(max_size=60).map(lambda b: b.replace(b"\x42", b"\x24"))


def encode(frame: pms5003.PmsFrame) -> bytes:
    if isinstance(frame, PmsReading):
        return pms5003.encode_reading(frame)
    return pms5003.encode_command(frame)


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
def test_encode_decode_round_trip(frame: pms5003.PmsFrame) -> None:
    wire = encode(frame)
    assert pms5003.parse_frame(wire) == frame
    assert encode(pms5003.parse_frame(wire)) == wire


direction = pytest.mark.parametrize("from_host", [False, True], ids=["from_sensor", "from_host"])


@direction
@given(data=line_noise, cuts=st.lists(st.integers(1, 80), max_size=20))
def test_arbitrary_bytes_never_raise_and_yield_only_valid_frames(
    from_host: bool, data: bytes, cuts: list[int]
) -> None:
    parser = PmsParser(from_host=from_host)
    frames = []
    pos = 0
    for cut in cuts:
        frames += parser.feed(data[pos : pos + cut])
        pos += cut
    frames += parser.feed(data[pos:])
    assert frames == PmsParser(from_host=from_host).feed(data)  # chunking changes nothing
    wire = [encode(f) for f in frames]
    for frame, raw in zip(frames, wire, strict=True):
        assert pms5003.parse_frame(raw) == frame
        assert isinstance(frame, PmsCommand) is from_host
    assert sum(map(len, wire)) + parser.garbage_bytes + parser.buffered == len(data)
    assert parser.buffered < parser.max_frame_len


@direction
@given(data=st.data())
def test_frames_between_garbage_are_all_recovered_in_order_at_any_split(
    from_host: bool, data: st.DataObject
) -> None:
    frames: st.SearchStrategy[pms5003.PmsFrame] = commands if from_host else readings
    chunks = data.draw(st.lists(st.tuples(garbage, frames), max_size=8))
    tail = data.draw(garbage)
    stream = b"".join(g + encode(f) for g, f in chunks) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = PmsParser(from_host=from_host)
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += parser.feed(stream[prev:cut])
        prev = cut
    assert got == [f for _, f in chunks]
    assert parser.bad_checksum == parser.bad_frame == 0
    assert parser.garbage_bytes + parser.buffered == sum(len(g) for g, _ in chunks) + len(tail)


def test_sensor_side_parser_ignores_commands_and_vice_versa() -> None:
    line = pms5003.build_read() + HAND_FRAME
    assert PmsParser().feed(line) == [HAND_READING]
    assert PmsParser(from_host=True).feed(line) == [PmsCommand(pms5003.CMD_READ, 0)]


def test_long_garbage_keeps_the_buffer_bounded() -> None:
    parser = PmsParser()
    for _ in range(200):
        assert parser.feed(b"\x42\x4d\x00\x1c" + b"\x42" * 50) == []
        assert parser.buffered < pms5003.FRAME_LEN
    assert parser.feed(HAND_FRAME) == [HAND_READING]
