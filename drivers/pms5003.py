"""Plantower PMS5003 / PMS7003 particulate sensors over UART (9600 8N1); same frame.

Frame layouts (Plantower PMS5003 / PMS7003 datasheets; every field a big-endian u16)::

    data frame, sensor -> host, 32 bytes
      0  1  2  3        4..9                 10..15                    16..27
      42 4D 00 1C       PM1 PM2.5 PM10       PM1 PM2.5 PM10            counts per 0.1 L of
      start  length=28  at CF=1 (ug/m3)      "atmospheric" (ug/m3)     particles > 0.3 0.5 1.0
                                                                       2.5 5 10 um
      28..29 reserved (PMS7003: version, error code)
      30..31 checksum = u16 sum of bytes 0..29

    command, host -> sensor, 7 bytes
      42 4D CMD DATAH DATAL LRCH LRCL              LRC = u16 sum of bytes 0..4
      E1 00 00 passive      -> 42 4D E1 00 00 01 70
      E1 00 01 active       -> 42 4D E1 00 01 01 71
      E2 00 00 read (passive mode) -> 42 4D E2 00 00 01 71
      E4 00 00 sleep        -> 42 4D E4 00 00 01 73
      E4 00 01 wake         -> 42 4D E4 00 01 01 74

Active by default (a frame every ~2.3 s when stable, 200-800 ms when changing). Data is
trustworthy 30 s after wake (fan spin-up); the caller decides what to do with earlier frames.
The sensor does not confirm commands in a documented way, so the reader does not wait for one.
"""

from __future__ import annotations

import asyncio
from dataclasses import astuple, dataclass

from drivers.serial_reader import (
    NEED_MORE,
    NOT_A_FRAME,
    ChecksumMismatch,
    FrameReader,
    MalformedFrame,
    ReportingMode,
    SerialFrameLink,
    StreamParser,
)

START = b"BM"  # 0x42 0x4D
DATA_LENGTH = 28
FRAME_LEN = 32
COMMAND_LEN = 7

CMD_MODE = 0xE1
CMD_READ = 0xE2
CMD_SLEEP = 0xE4
COMMANDS = (CMD_MODE, CMD_READ, CMD_SLEEP)


@dataclass(frozen=True, slots=True)
class PmsReading:
    """A data frame. Mass concentrations in ug/m3; counts are particles per 0.1 L."""

    pm1_cf1: float
    pm25_cf1: float
    pm10_cf1: float
    pm1: float  # "atmospheric environment" values: the ones to report outdoors
    pm25: float
    pm10: float
    n0_3: int
    n0_5: int
    n1_0: int
    n2_5: int
    n5_0: int
    n10: int
    reserved: int = 0

    def values(self) -> dict[str, float]:
        """Metric names of the wire contract (atmospheric values)."""
        return {"pm1": self.pm1, "pm25": self.pm25, "pm10": self.pm10}


@dataclass(frozen=True, slots=True)
class PmsCommand:
    """A 7-byte command as the sensor sees it (used by the simulator)."""

    command: int
    data: int  # DATAH << 8 | DATAL


PmsFrame = PmsReading | PmsCommand


def _sum16(data: bytes | bytearray) -> int:
    return sum(data) & 0xFFFF


def parse_frame(frame: bytes) -> PmsFrame:
    """Strictly parse one whole data frame or command.

    Raises MalformedFrame (length, start bytes, length field, command) or ChecksumMismatch.
    """
    if frame[:2] != START:
        raise MalformedFrame(f"PMS: frame must start with 42 4D, got {frame[:2].hex(' ')!r}")
    if len(frame) >= 3 and frame[2] in COMMANDS:
        if len(frame) != COMMAND_LEN:
            raise MalformedFrame(f"PMS: command must be 7 bytes, got {len(frame)}")
        if _sum16(frame[:5]) != int.from_bytes(frame[5:7], "big"):
            raise ChecksumMismatch(f"PMS: command checksum mismatch in {frame.hex(' ')}")
        return PmsCommand(command=frame[2], data=int.from_bytes(frame[3:5], "big"))
    if len(frame) != FRAME_LEN:
        raise MalformedFrame(f"PMS: data frame must be 32 bytes, got {len(frame)}")
    length = int.from_bytes(frame[2:4], "big")
    if length != DATA_LENGTH:
        raise MalformedFrame(f"PMS: length field must be 28 (00 1C), got {length}")
    expected = _sum16(frame[:30])
    got = int.from_bytes(frame[30:32], "big")
    if expected != got:
        raise ChecksumMismatch(f"PMS: checksum {got:04X}, computed {expected:04X}")
    words = [int.from_bytes(frame[i : i + 2], "big") for i in range(4, 30, 2)]
    pm1_cf1, pm25_cf1, pm10_cf1, pm1, pm25, pm10 = (float(w) for w in words[:6])
    n0_3, n0_5, n1_0, n2_5, n5_0, n10, reserved = words[6:]
    return PmsReading(
        pm1_cf1, pm25_cf1, pm10_cf1, pm1, pm25, pm10, n0_3, n0_5, n1_0, n2_5, n5_0, n10, reserved
    )


class PmsParser(StreamParser[PmsFrame]):
    """Incremental parser for one direction of a PMS5003/7003 line (see StreamParser).

    By default it reads what a sensor sends (32-byte data frames); with ``from_host=True``
    what a host sends (7-byte commands, for the simulator).
    """

    start_byte = START[0]

    def __init__(self, *, from_host: bool = False) -> None:
        super().__init__()
        self.from_host = from_host
        self.max_frame_len = COMMAND_LEN if from_host else FRAME_LEN

    def _candidate_length(self, buf: bytearray, pos: int) -> int:
        have = len(buf) - pos
        if have >= 2 and buf[pos + 1] != START[1]:
            return NOT_A_FRAME  # decided early, so a lone 42 does not stall the scan
        if self.from_host:
            if have < 3:
                return NEED_MORE
            return COMMAND_LEN if buf[pos + 2] in COMMANDS else NOT_A_FRAME
        if have < 4:
            return NEED_MORE
        if buf[pos + 2] == 0 and buf[pos + 3] == DATA_LENGTH:
            return FRAME_LEN
        return NOT_A_FRAME

    def _parse(self, frame: bytes) -> PmsFrame:
        return parse_frame(frame)


# -- encoders -------------------------------------------------------------------------------


def _u16(value: float, name: str) -> bytes:
    raw = round(value)
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"PMS {name} must be 0..65535, got {value}")
    return raw.to_bytes(2, "big")


def encode_reading(reading: PmsReading) -> bytes:
    """The 32-byte data frame for a reading (values rounded to integers)."""
    names = (
        "pm1_cf1", "pm25_cf1", "pm10_cf1", "pm1", "pm25", "pm10",
        "n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10", "reserved",
    )  # fmt: skip
    body = START + DATA_LENGTH.to_bytes(2, "big")
    body += b"".join(_u16(v, n) for v, n in zip(astuple(reading), names, strict=True))
    return body + _sum16(body).to_bytes(2, "big")


def build_command(command: int, data: int = 0) -> bytes:
    if not 0 <= command <= 0xFF or not 0 <= data <= 0xFFFF:
        raise ValueError("PMS command byte must be 0..255 and data 0..65535")
    body = START + bytes([command]) + data.to_bytes(2, "big")
    return body + _sum16(body).to_bytes(2, "big")


def encode_command(command: PmsCommand) -> bytes:
    return build_command(command.command, command.data)


def build_set_mode(mode: ReportingMode) -> bytes:
    return build_command(CMD_MODE, 1 if mode is ReportingMode.ACTIVE else 0)


def build_read() -> bytes:
    """Ask for one data frame in passive mode."""
    return build_command(CMD_READ, 0)


def build_sleep() -> bytes:
    return build_command(CMD_SLEEP, 0)


def build_wake() -> bytes:
    return build_command(CMD_SLEEP, 1)


# -- async reader ---------------------------------------------------------------------------


def _is_reading(frame: PmsFrame) -> bool:
    return isinstance(frame, PmsReading)


class Pms5003Reader(FrameReader[PmsFrame]):
    """Reads one PMS5003 or PMS7003 on a serial port.

    ``read`` for active mode (newest frame not yet returned), ``query`` for passive mode.
    ``set_mode``/``sleep``/``wake`` only send (the sensor does not confirm); the next
    ``read``/``query`` shows whether it listened. Errors: DeviceTimeout, LinkDown.
    """

    def __init__(self, port: str, *, baudrate: int = 9600) -> None:
        super().__init__(SerialFrameLink(port, PmsParser(), baudrate=baudrate))
        self.woke_at: float | None = None  # loop time of the last wake (data good 30 s later)

    async def read(self, timeout: float = 5.0, *, max_age: float | None = None) -> PmsReading:
        """Active mode: the newest reading not returned before (waits up to ``timeout``)."""
        got = await self.link.wait_frame(
            _is_reading, after_seq=self._consumed, timeout=timeout, newest=True, max_age=max_age
        )
        self._consumed = got.seq
        assert isinstance(got.frame, PmsReading)
        return got.frame

    async def query(self, timeout: float = 3.0) -> PmsReading:
        """Passive mode: send the read command and wait for the frame."""
        after = self.link.last_seq
        self.link.write(build_read())
        got = await self.link.wait_frame(_is_reading, after_seq=after, timeout=timeout)
        self._consumed = max(self._consumed, got.seq)
        assert isinstance(got.frame, PmsReading)
        return got.frame

    def _send(self, command: bytes) -> None:
        self.link.write(command)
        # Readings from before a setting was sent are not news any more.
        self._consumed = self.link.last_seq

    async def set_mode(self, mode: ReportingMode) -> None:
        self._send(build_set_mode(mode))

    async def sleep(self) -> None:
        self._send(build_sleep())

    async def wake(self) -> None:
        """Wake the sensor; its fan needs ~30 s before the data is trustworthy (``woke_at``)."""
        self._send(build_wake())
        self.woke_at = asyncio.get_running_loop().time()
