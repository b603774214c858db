"""Modbus wire core: CRC, RTU/MBAP framing, request PDUs and reply validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import modbus_pdu as pdu
from drivers.errors import (
    CrcError,
    DriverError,
    FrameError,
    ModbusExceptionResponse,
    WrongSlave,
)
from drivers.sim.units import SimUnit, handle_request


def test_known_frames_from_the_datasheets() -> None:
    read_station = pdu.build_rtu(1, pdu.read_request(pdu.READ_HOLDING_REGISTERS, 0x01F4, 14))
    assert read_station == bytes.fromhex("01 03 01 F4 00 0E 84 00")
    assert pdu.build_rtu(1, pdu.write_single_coil_request(0, True)) == bytes.fromhex(
        "01 05 00 00 FF 00 8C 3A"
    )
    assert pdu.build_rtu(1, pdu.write_single_coil_request(0, False)) == bytes.fromhex(
        "01 05 00 00 00 00 CD CA"
    )


def test_crc_check_value() -> None:
    # CRC-16/MODBUS catalogue check value over ASCII "123456789"
    assert pdu.crc16(b"123456789") == 0x4B37


def _reply(unit: int, body: bytes) -> bytes:
    return pdu.build_rtu(unit, body)


def test_register_reply_decodes() -> None:
    frame = _reply(1, bytes([3, 4, 0x00, 0x58, 0xFF, 0xDE]))
    body = pdu.parse_rtu_reply(frame, 1)
    assert pdu.decode_read_registers(body, 3, 2) == (0x58, 0xFFDE)


def test_bit_reply_decodes_lsb_first() -> None:
    body = pdu.parse_rtu_reply(_reply(1, bytes([1, 2, 0b0000_0101, 0b1])), 1)
    assert pdu.decode_read_bits(body, 1, 9) == [True, False, True] + [False] * 5 + [True]


def test_bad_crc_is_a_crc_error() -> None:
    frame = bytearray(_reply(1, bytes([3, 2, 0, 1])))
    frame[-1] ^= 0xFF
    with pytest.raises(CrcError):
        pdu.parse_rtu_reply(bytes(frame), 1)


def test_wrong_slave_is_reported_with_both_ids() -> None:
    with pytest.raises(WrongSlave) as info:
        pdu.parse_rtu_reply(_reply(7, bytes([3, 2, 0, 1])), 1)
    assert (info.value.expected, info.value.got) == (1, 7)


def test_exception_reply_carries_the_code() -> None:
    body = pdu.parse_rtu_reply(_reply(1, bytes([0x83, 0x02])), 1)
    with pytest.raises(ModbusExceptionResponse) as info:
        pdu.decode_read_registers(body, 3, 1)
    assert info.value.code == 2
    assert info.value.function_code == 3


def test_truncated_and_mismatched_replies_are_frame_errors() -> None:
    with pytest.raises(FrameError):
        pdu.parse_rtu_reply(b"\x01\x03", 1)
    # byte count says 2 registers, we asked for 3
    body = pdu.parse_rtu_reply(_reply(1, bytes([3, 4, 0, 1, 0, 2])), 1)
    with pytest.raises(FrameError):
        pdu.decode_read_registers(body, 3, 3)
    # reply to another function
    with pytest.raises(FrameError):
        pdu.decode_read_registers(bytes([4, 2, 0, 1]), 3, 1)


def test_write_replies_must_echo() -> None:
    request = pdu.write_single_coil_request(3, True)
    pdu.check_write_reply(request, request)
    with pytest.raises(FrameError):
        pdu.check_write_reply(pdu.write_single_coil_request(3, False), request)
    multi = pdu.write_multiple_registers_request(10, [1, 2, 3])
    pdu.check_write_reply(multi[:5], multi)
    with pytest.raises(FrameError):
        pdu.check_write_reply(bytes([0x10, 0, 10, 0, 2]), multi)


def test_rtu_reply_length_from_header() -> None:
    assert pdu.rtu_reply_length(b"\x01") is None
    assert pdu.rtu_reply_length(b"\x01\x03") is None
    assert pdu.rtu_reply_length(b"\x01\x03\x1c") == 5 + 28
    assert pdu.rtu_reply_length(b"\x01\x83") == 5
    assert pdu.rtu_reply_length(b"\x01\x05") == 8
    with pytest.raises(FrameError):
        pdu.rtu_reply_length(b"\x01\x47")


def test_mbap_round_trip_and_bad_header() -> None:
    frame = pdu.build_mbap(0x1234, 9, pdu.read_request(4, 7, 2))
    assert pdu.mbap_length(frame[:6]) == len(frame)
    assert pdu.parse_mbap(frame) == (0x1234, 9, pdu.read_request(4, 7, 2))
    with pytest.raises(FrameError):
        pdu.mbap_length(b"\x00\x01\x00\x07\x00\x06")  # protocol id 7


def test_request_limits_are_value_errors() -> None:
    with pytest.raises(ValueError):
        pdu.read_request(3, 0, 126)
    with pytest.raises(ValueError):
        pdu.read_request(1, 0, 2001)
    with pytest.raises(ValueError):
        pdu.read_request(3, 0xFFFF, 2)
    with pytest.raises(ValueError):
        pdu.write_single_register_request(0, 0x10000)


@given(st.binary(max_size=300), st.integers(0, 255))
def test_garbage_replies_raise_only_driver_errors(data: bytes, unit: int) -> None:
    for function, count in ((3, 2), (1, 9), (5, 1)):
        try:
            body = pdu.parse_rtu_reply(data, unit)
            if function == 3:
                pdu.decode_read_registers(body, function, count)
            elif function == 1:
                pdu.decode_read_bits(body, function, count)
            else:
                pdu.check_write_reply(body, pdu.write_single_coil_request(0, True))
        except DriverError:
            pass
    try:
        pdu.rtu_reply_length(data)
        pdu.mbap_length(data)
        pdu.parse_mbap(data)
    except DriverError:
        pass


@given(st.binary(min_size=1, max_size=40))
def test_any_single_bit_flip_is_caught_by_the_crc(body: bytes) -> None:
    frame = bytearray(pdu.build_rtu(body[0], body))
    for i in range(len(frame) * 8):
        flipped = bytearray(frame)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CrcError):
            pdu.check_rtu_crc(flipped)


@given(
    st.integers(0, 0xFE00),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
    st.lists(st.booleans(), min_size=1, max_size=200),
)
def test_requests_round_trip_through_a_simulated_unit(
    address: int, words: list[int], bits: list[bool]
) -> None:
    unit = SimUnit(1)
    for a in range(address, address + 256):
        unit.tables["holding"][a] = 0
        unit.tables["coil"][a] = 0
    request = pdu.write_multiple_registers_request(address, words)
    pdu.check_write_reply(handle_request(unit, request, 0.0), request)
    reply = handle_request(unit, pdu.read_request(3, address, len(words)), 0.0)
    assert list(pdu.decode_read_registers(reply, 3, len(words))) == words

    request = pdu.write_multiple_coils_request(address, bits)
    pdu.check_write_reply(handle_request(unit, request, 0.0), request)
    reply = handle_request(unit, pdu.read_request(1, address, len(bits)), 0.0)
    assert pdu.decode_read_bits(reply, 1, len(bits)) == bits

    request = pdu.write_single_register_request(address, words[0])
    pdu.check_write_reply(handle_request(unit, request, 0.0), request)
    # outside the unit's registers: exception 2, as from a real device
    reply = handle_request(unit, pdu.read_request(3, address + 250, 10), 0.0)
    with pytest.raises(ModbusExceptionResponse) as info:
        pdu.decode_read_registers(reply, 3, 10)
    assert info.value.code == 2
