"""Modbus wire format: CRC, RTU and MBAP framing, PDUs for function codes 1-6, 15, 16.

Pure and synchronous: no I/O, no clock. The async client (``drivers.modbus_client``) and the
simulators (``drivers.sim``) both frame with these functions.

Frame layouts (Modbus Application Protocol v1.1b3, Modbus over serial line v1.02)::

    PDU           function(1) data(n)
    RTU ADU       unit(1) PDU CRC16(2, low byte first)   CRC-16/MODBUS: init 0xFFFF, poly 0xA001
    MBAP ADU      transaction(2) protocol=0(2) length(2)=1+len(PDU) unit(1) PDU   big-endian

    read request  (FC 01 02 03 04)   fc address(2) count(2)
    read reply    (FC 01 02)         fc bytecount(1) bits, LSB of first byte = first coil
                  (FC 03 04)         fc bytecount(1) registers(2 each, big-endian)
    FC 05         fc address(2) 0xFF00|0x0000      reply echoes the request
    FC 06         fc address(2) value(2)           reply echoes the request
    FC 15         fc address(2) count(2) bytecount(1) bits     reply: fc address(2) count(2)
    FC 16         fc address(2) count(2) bytecount(1) words    reply: fc address(2) count(2)
    exception     fc|0x80 code(1)

Example: ``01 03 01 F4 00 0E 84 00`` reads 14 holding registers from 0x01F4 of unit 1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.errors import CrcError, FrameError, ModbusExceptionResponse, WrongSlave

READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02
READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
WRITE_SINGLE_COIL = 0x05
WRITE_SINGLE_REGISTER = 0x06
WRITE_MULTIPLE_COILS = 0x0F
WRITE_MULTIPLE_REGISTERS = 0x10

BIT_READS = frozenset({READ_COILS, READ_DISCRETE_INPUTS})
REGISTER_READS = frozenset({READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS})
ECHO_WRITES = frozenset({WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER})
MULTI_WRITES = frozenset({WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS})

MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_BITS = 1968
MAX_WRITE_REGISTERS = 123
COIL_ON = 0xFF00

_REQUEST_HEAD = struct.Struct(">BHH")
_MBAP = struct.Struct(">HHHB")


def _crc_table() -> tuple[int, ...]:
    """The 8 shift rounds of the reflected 0xA001 polynomial for each byte value.

    HJ 212's CRC (gateway.uplinks.hj212) uses the same rounds, fed differently.
    """
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC_A001_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS of ``data`` (sent low byte first)."""
    crc = 0xFFFF
    table = CRC_A001_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


# ---------------------------------------------------------------- PDUs (requests)


def _check_address(address: int) -> None:
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"address {address} outside 0..65535")


def read_request(function: int, address: int, count: int) -> bytes:
    """PDU for FC 01/02 (``count`` bits) or FC 03/04 (``count`` registers)."""
    limit = MAX_READ_BITS if function in BIT_READS else MAX_READ_REGISTERS
    if function not in BIT_READS and function not in REGISTER_READS:
        raise ValueError(f"function {function} is not a read")
    _check_address(address)
    if not 1 <= count <= limit or address + count > 0x10000:
        raise ValueError(f"count {count} at {address} outside 1..{limit} / address space")
    return _REQUEST_HEAD.pack(function, address, count)


def write_single_coil_request(address: int, on: bool) -> bytes:
    _check_address(address)
    return _REQUEST_HEAD.pack(WRITE_SINGLE_COIL, address, COIL_ON if on else 0)


def write_single_coil_value_request(address: int, value: int) -> bytes:
    """FC05 with a raw value; boards use values other than FF00/0000 for extras (Waveshare
    "flash": the value is an on-time in 100 ms units)."""
    _check_address(address)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"coil value {value} outside 0..65535")
    return _REQUEST_HEAD.pack(WRITE_SINGLE_COIL, address, value)


def write_single_register_request(address: int, value: int) -> bytes:
    _check_address(address)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"register value {value} outside 0..65535")
    return _REQUEST_HEAD.pack(WRITE_SINGLE_REGISTER, address, value)


def pack_bits(bits: Sequence[bool]) -> bytes:
    """Coils to bytes, first coil in the least significant bit of the first byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]


def write_multiple_coils_request(address: int, bits: Sequence[bool]) -> bytes:
    _check_address(address)
    if not 1 <= len(bits) <= MAX_WRITE_BITS or address + len(bits) > 0x10000:
        raise ValueError(f"{len(bits)} coils at {address}: outside 1..{MAX_WRITE_BITS}")
    data = pack_bits(bits)
    return _REQUEST_HEAD.pack(WRITE_MULTIPLE_COILS, address, len(bits)) + bytes([len(data)]) + data


def write_multiple_registers_request(address: int, words: Sequence[int]) -> bytes:
    _check_address(address)
    if not 1 <= len(words) <= MAX_WRITE_REGISTERS or address + len(words) > 0x10000:
        raise ValueError(f"{len(words)} registers at {address}: outside 1..{MAX_WRITE_REGISTERS}")
    try:
        data = struct.pack(f">{len(words)}H", *words)
    except struct.error as exc:
        raise ValueError(f"register values must be 0..65535: {exc}") from None
    head = _REQUEST_HEAD.pack(WRITE_MULTIPLE_REGISTERS, address, len(words))
    return head + bytes([len(data)]) + data


# ---------------------------------------------------------------- PDUs (replies)


def check_exception(pdu: bytes, function: int) -> None:
    """Raise the device's exception, or FrameError if ``pdu`` answers another function."""
    if not pdu:
        raise FrameError("empty PDU")
    got = pdu[0]
    if got == function | 0x80:
        raise ModbusExceptionResponse(pdu[1] if len(pdu) > 1 else 0, function)
    if got != function:
        raise FrameError(f"reply function {got:#04x}, expected {function:#04x}")


def decode_read_registers(pdu: bytes, function: int, count: int) -> tuple[int, ...]:
    """Register values of a FC 03/04 reply PDU for a request of ``count`` registers."""
    check_exception(pdu, function)
    if len(pdu) != 2 + 2 * count or pdu[1] != 2 * count:
        raise FrameError(f"register reply of {len(pdu)} bytes for {count} registers")
    return struct.unpack_from(f">{count}H", pdu, 2)


def decode_read_bits(pdu: bytes, function: int, count: int) -> list[bool]:
    """Bit values of a FC 01/02 reply PDU for a request of ``count`` bits."""
    check_exception(pdu, function)
    nbytes = (count + 7) // 8
    if len(pdu) != 2 + nbytes or pdu[1] != nbytes:
        raise FrameError(f"bit reply of {len(pdu)} bytes for {count} bits")
    return unpack_bits(pdu[2:], count)


def check_write_reply(pdu: bytes, request: bytes) -> None:
    """Validate a write reply: FC 05/06 echo the request, FC 15/16 echo address and count."""
    function = request[0]
    check_exception(pdu, function)
    expected = request if function in ECHO_WRITES else request[:5]
    if pdu != expected:
        raise FrameError(f"write reply {pdu.hex(' ')} does not echo {expected.hex(' ')}")


# ---------------------------------------------------------------- RTU framing


def build_rtu(unit: int, pdu: bytes) -> bytes:
    """RTU ADU: unit, PDU, CRC low byte first."""
    if not 0 <= unit <= 255:
        raise ValueError(f"unit id {unit} outside 0..255")
    body = bytes([unit]) + pdu
    crc = crc16(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def rtu_reply_length(head: bytes | bytearray) -> int | None:
    """Total length of the RTU reply starting at ``head[0]``; None until enough is known."""
    if len(head) < 2:
        return None
    function = head[1]
    if function & 0x80:
        return 5
    if function in BIT_READS or function in REGISTER_READS:
        return 5 + head[2] if len(head) >= 3 else None
    if function in ECHO_WRITES or function in MULTI_WRITES:
        return 8
    raise FrameError(f"reply with unknown function {function:#04x}")


def rtu_request_length(head: bytes | bytearray) -> int | None:
    """Total length of the RTU request starting at ``head[0]`` (server side)."""
    if len(head) < 2:
        return None
    function = head[1]
    if function in MULTI_WRITES:
        return 9 + head[6] if len(head) >= 7 else None
    if function in BIT_READS or function in REGISTER_READS or function in ECHO_WRITES:
        return 8
    raise FrameError(f"request with unsupported function {function:#04x}")


def check_rtu_crc(adu: bytes | bytearray) -> None:
    if len(adu) < 4:
        raise FrameError(f"RTU frame of {len(adu)} bytes is too short")
    crc = crc16(memoryview(adu)[:-2])
    if adu[-2] != crc & 0xFF or adu[-1] != crc >> 8:
        got = adu[-2] | adu[-1] << 8
        raise CrcError(f"CRC {got:#06x}, computed {crc:#06x} over {bytes(adu).hex(' ')}")


def parse_rtu_reply(adu: bytes, unit: int) -> bytes:
    """Validate an RTU reply (length, CRC, unit) and return its PDU."""
    check_rtu_crc(adu)
    if adu[0] != unit:
        raise WrongSlave(unit, adu[0])
    return adu[1:-2]


# ---------------------------------------------------------------- MBAP (TCP) framing

MBAP_HEADER_LENGTH = 7


def build_mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    return _MBAP.pack(transaction & 0xFFFF, 0, 1 + len(pdu), unit) + pdu


def mbap_length(head: bytes | bytearray) -> int | None:
    """Total length of the MBAP frame starting at ``head[0]``; None until the header is in."""
    if len(head) < 6:
        return None
    protocol = head[2] << 8 | head[3]
    length = head[4] << 8 | head[5]
    if protocol != 0 or not 2 <= length <= 254:
        raise FrameError(f"bad MBAP header {bytes(head[:6]).hex(' ')}")
    return 6 + length


def parse_mbap(adu: bytes) -> tuple[int, int, bytes]:
    """Split an MBAP frame into (transaction id, unit, PDU)."""
    if len(adu) < MBAP_HEADER_LENGTH + 1:
        raise FrameError(f"MBAP frame of {len(adu)} bytes is too short")
    transaction, protocol, length, unit = _MBAP.unpack_from(adu)
    if protocol != 0 or length != len(adu) - 6:
        raise FrameError(f"bad MBAP header {adu[:7].hex(' ')}")
    return transaction, unit, adu[MBAP_HEADER_LENGTH:]
