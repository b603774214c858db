"""Nova Fitness SDS011 particulate sensor over UART (9600 8N1).

Frame layouts (laser dust sensor control protocol V1.3)::

    data frame, sensor -> host, 10 bytes
      0  1  2     3     4     5     6   7   8   9
      AA C0 PM25L PM25H PM10L PM10H ID1 ID2 CHK AB
      PM = (H * 256 + L) / 10 ug/m3 (0 - 999.9);  CHK = sum(bytes 2..7) & 0xFF

    reply to a command, sensor -> host, 10 bytes
      AA C5 CMD D1 D2 D3 ID1 ID2 CHK AB            CHK = sum(bytes 2..7) & 0xFF

    command, host -> sensor, 19 bytes
      0  1  2   3 .. 14       15  16  17  18
      AA B4 CMD 12 data bytes ID1 ID2 CHK AB       CHK = sum(bytes 2..16) & 0xFF
      ID1 ID2 = FF FF addresses every sensor on the line.

Commands (CMD, then data bytes D1 D2 ...; D1 = 0 asks the current value, 1 sets it):
  02 reporting mode: D2 = 0 active, 1 query (passive); reply ``AA C5 02 D1 D2 00 ID CHK AB``
  04 query data: the sensor answers with a data frame
  06 sleep / work: D2 = 0 sleep, 1 work; reply ``AA C5 06 D1 D2 00 ...``
  08 working period: D2 = 0 continuous, 1-30 minutes; reply ``AA C5 08 D1 D2 00 ...``
Asleep, the sensor ignores everything but the wake command.

Examples checked against the datasheet: ``AA C0 D4 04 3A 0A A1 60 1D AB`` is PM2.5 123.6,
PM10 261.8 from sensor A160; query ``AA B4 04 00*12 FF FF 02 AB``; query mode
``AA B4 02 01 01 00*10 FF FF 02 AB``; sleep ``... 06 01 00 ... 05 AB``;
wake ``... 06 01 01 ... 06 AB``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import DeviceTimeout
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

HEAD = 0xAA
TAIL = 0xAB
DATA = 0xC0
REPLY = 0xC5
COMMAND = 0xB4
FRAME_LEN = 10
COMMAND_LEN = 19
ALL_DEVICES = 0xFFFF

CMD_REPORTING_MODE = 0x02
CMD_QUERY = 0x04
CMD_SET_ID = 0x05
CMD_SLEEP_WORK = 0x06
CMD_FIRMWARE = 0x07
CMD_WORK_PERIOD = 0x08

MAX_PM = 999.9  # the sensor's documented range
MAX_WORK_PERIOD_MIN = 30


@dataclass(frozen=True, slots=True)
class Sds011Reading:
    """A data frame: PM2.5 and PM10 in ug/m3 (0.1 resolution) and the 16-bit sensor id."""

    pm25: float
    pm10: float
    device_id: int

    def values(self) -> dict[str, float]:
        """Metric names of the wire contract."""
        return {"pm25": self.pm25, "pm10": self.pm10}


@dataclass(frozen=True, slots=True)
class Sds011Reply:
    """An ``AA C5`` reply: the command it answers and its three data bytes."""

    command: int
    data: bytes  # D1 D2 D3
    device_id: int


@dataclass(frozen=True, slots=True)
class Sds011Command:
    """An ``AA B4`` command as the sensor sees it (used by the simulator)."""

    command: int
    data: bytes  # the 12 data bytes
    device_id: int

    def addresses(self, device_id: int) -> bool:
        return self.device_id in (ALL_DEVICES, device_id)


Sds011Frame = Sds011Reading | Sds011Reply | Sds011Command


def _checksum(body: bytes | bytearray) -> int:
    return sum(body) & 0xFF


def parse_frame(frame: bytes) -> Sds011Frame:
    """Strictly parse one whole frame (data, reply or command).

    Raises MalformedFrame (length, header, kind, tail) or ChecksumMismatch.
    """
    if len(frame) < 2 or frame[0] != HEAD:
        raise MalformedFrame(f"SDS011: frame must start with AA, got {frame[:2].hex(' ')!r}")
    kind = frame[1]
    expected = COMMAND_LEN if kind == COMMAND else FRAME_LEN
    if kind not in (DATA, REPLY, COMMAND):
        raise MalformedFrame(f"SDS011: unknown frame kind {kind:02X}, expected C0, C5 or B4")
    if len(frame) != expected:
        raise MalformedFrame(f"SDS011: {kind:02X} frame must be {expected} bytes, got {len(frame)}")
    if frame[-1] != TAIL:
        raise MalformedFrame(f"SDS011: frame must end with AB, got {frame[-1]:02X}")
    body = frame[2:-2]
    if _checksum(body) != frame[-2]:
        raise ChecksumMismatch(
            f"SDS011: checksum {frame[-2]:02X}, computed {_checksum(body):02X} over {body.hex(' ')}"
        )
    device_id = (frame[-4] << 8) | frame[-3]
    if kind == DATA:
        pm25 = ((frame[3] << 8) | frame[2]) / 10
        pm10 = ((frame[5] << 8) | frame[4]) / 10
        return Sds011Reading(pm25=pm25, pm10=pm10, device_id=device_id)
    if kind == REPLY:
        return Sds011Reply(command=frame[2], data=bytes(frame[3:6]), device_id=device_id)
    return Sds011Command(command=frame[2], data=bytes(frame[3:15]), device_id=device_id)


class Sds011Parser(StreamParser[Sds011Frame]):
    """Incremental parser for one direction of an SDS011 line (see StreamParser).

    By default it reads what a sensor sends (``AA C0`` data, ``AA C5`` replies); with
    ``from_host=True`` what a host sends (``AA B4`` commands, for the simulator). One
    direction only, so a stray ``AA B4`` on the sensor line cannot hold back a real frame
    while the parser waits for 19 bytes.
    """

    start_byte = HEAD

    def __init__(self, *, from_host: bool = False) -> None:
        super().__init__()
        self.from_host = from_host
        self.max_frame_len = COMMAND_LEN if from_host else FRAME_LEN

    def _candidate_length(self, buf: bytearray, pos: int) -> int:
        if len(buf) - pos < 2:
            return NEED_MORE
        kind = buf[pos + 1]
        if self.from_host:
            return COMMAND_LEN if kind == COMMAND else NOT_A_FRAME
        return FRAME_LEN if kind in (DATA, REPLY) else NOT_A_FRAME

    def _parse(self, frame: bytes) -> Sds011Frame:
        return parse_frame(frame)


# -- encoders -------------------------------------------------------------------------------


def _id_bytes(device_id: int) -> bytes:
    if not 0 <= device_id <= 0xFFFF:
        raise ValueError(f"SDS011 device id must be 0..0xFFFF, got {device_id}")
    return device_id.to_bytes(2, "big")


def _pm_raw(value: float, name: str) -> int:
    raw = round(value * 10)
    if not 0 <= raw <= 0xFFFF:
        raise ValueError(f"SDS011 {name} must be 0..6553.5 ug/m3, got {value}")
    return raw


def encode_reading(reading: Sds011Reading) -> bytes:
    """The 10-byte ``AA C0`` data frame for a reading (values rounded to 0.1 ug/m3)."""
    body = (
        _pm_raw(reading.pm25, "pm25").to_bytes(2, "little")
        + _pm_raw(reading.pm10, "pm10").to_bytes(2, "little")
        + _id_bytes(reading.device_id)
    )
    return bytes([HEAD, DATA]) + body + bytes([_checksum(body), TAIL])


def encode_reply(reply: Sds011Reply) -> bytes:
    """The 10-byte ``AA C5`` reply frame."""
    if len(reply.data) != 3 or not 0 <= reply.command <= 0xFF:
        raise ValueError("SDS011 reply needs a command byte and exactly 3 data bytes")
    body = bytes([reply.command]) + reply.data + _id_bytes(reply.device_id)
    return bytes([HEAD, REPLY]) + body + bytes([_checksum(body), TAIL])


def build_command(command: int, data: bytes = b"", device_id: int = ALL_DEVICES) -> bytes:
    """A 19-byte ``AA B4`` command; ``data`` (at most 12 bytes) is zero-padded."""
    if len(data) > 12 or not 0 <= command <= 0xFF:
        raise ValueError("SDS011 command takes one command byte and at most 12 data bytes")
    body = bytes([command]) + data.ljust(12, b"\x00") + _id_bytes(device_id)
    return bytes([HEAD, COMMAND]) + body + bytes([_checksum(body), TAIL])


def encode_command(command: Sds011Command) -> bytes:
    return build_command(command.command, command.data, command.device_id)


def build_query(device_id: int = ALL_DEVICES) -> bytes:
    """Ask for one data frame (the way to read in query/passive mode)."""
    return build_command(CMD_QUERY, b"", device_id)


def build_set_mode(mode: ReportingMode, device_id: int = ALL_DEVICES) -> bytes:
    """Set active (streaming) or query (passive) reporting mode."""
    return build_command(CMD_REPORTING_MODE, bytes([1, mode is ReportingMode.PASSIVE]), device_id)


def build_sleep(device_id: int = ALL_DEVICES) -> bytes:
    return build_command(CMD_SLEEP_WORK, bytes([1, 0]), device_id)


def build_wake(device_id: int = ALL_DEVICES) -> bytes:
    return build_command(CMD_SLEEP_WORK, bytes([1, 1]), device_id)


def build_set_work_period(minutes: int, device_id: int = ALL_DEVICES) -> bytes:
    """Working period: 0 = continuous (a frame a second), n = one measurement every n min."""
    if not 0 <= minutes <= MAX_WORK_PERIOD_MIN:
        raise ValueError(f"SDS011 work period must be 0..30 minutes, got {minutes}")
    return build_command(CMD_WORK_PERIOD, bytes([1, minutes]), device_id)


# -- async reader ---------------------------------------------------------------------------


class Sds011Reader(FrameReader[Sds011Frame]):
    """Reads one SDS011 on a serial port.

    ``read`` for active mode (newest frame not yet returned), ``query`` for passive mode.
    Settings wait for the sensor's ``AA C5`` confirmation. Errors: DeviceTimeout, LinkDown
    (both subclasses of drivers.errors.DriverError); nothing else escapes.
    """

    def __init__(self, port: str, *, device_id: int = ALL_DEVICES, baudrate: int = 9600) -> None:
        _id_bytes(device_id)
        self.device_id = device_id
        super().__init__(SerialFrameLink(port, Sds011Parser(), baudrate=baudrate))

    def _ours(self, device_id: int) -> bool:
        return self.device_id in (ALL_DEVICES, device_id)

    def _is_reading(self, frame: Sds011Frame) -> bool:
        return isinstance(frame, Sds011Reading) and self._ours(frame.device_id)

    async def read(self, timeout: float = 3.0, *, max_age: float | None = None) -> Sds011Reading:
        """Active mode: the newest reading not returned before (waits up to ``timeout``)."""
        got = await self.link.wait_frame(
            self._is_reading,
            after_seq=self._consumed,
            timeout=timeout,
            newest=True,
            max_age=max_age,
        )
        self._consumed = got.seq
        assert isinstance(got.frame, Sds011Reading)
        return got.frame

    async def query(self, timeout: float = 3.0) -> Sds011Reading:
        """Passive (query) mode: ask for a reading and wait for it."""
        after = self.link.last_seq
        self.link.write(build_query(self.device_id))
        got = await self.link.wait_frame(self._is_reading, after_seq=after, timeout=timeout)
        self._consumed = max(self._consumed, got.seq)
        assert isinstance(got.frame, Sds011Reading)
        return got.frame

    async def _command(self, frame: bytes, command: int, expect: bytes, timeout: float) -> None:
        after = self.link.last_seq

        def confirms(reply: Sds011Frame) -> bool:
            return (
                isinstance(reply, Sds011Reply)
                and reply.command == command
                and reply.data[: len(expect)] == expect
                and self._ours(reply.device_id)
            )

        self.link.write(frame)
        got = await self.link.wait_frame(confirms, after_seq=after, timeout=timeout)
        # Readings from before a setting took effect are not news any more.
        self._consumed = max(self._consumed, got.seq)

    async def set_mode(self, mode: ReportingMode, timeout: float = 3.0) -> None:
        want = bytes([1, mode is ReportingMode.PASSIVE])
        await self._command(build_set_mode(mode, self.device_id), CMD_REPORTING_MODE, want, timeout)

    async def sleep(self, timeout: float = 3.0) -> None:
        await self._command(build_sleep(self.device_id), CMD_SLEEP_WORK, b"\x01\x00", timeout)

    async def wake(self, timeout: float = 3.0) -> None:
        """Wake the sensor. The command is sent twice if the first gets no answer in half the
        timeout (the UART of a sleeping sensor may lose the first bytes)."""
        frame = build_wake(self.device_id)
        try:
            await self._command(frame, CMD_SLEEP_WORK, b"\x01\x01", timeout / 2)
        except DeviceTimeout:
            await self._command(frame, CMD_SLEEP_WORK, b"\x01\x01", timeout / 2)

    async def set_work_period(self, minutes: int, timeout: float = 3.0) -> None:
        frame = build_set_work_period(minutes, self.device_id)
        await self._command(frame, CMD_WORK_PERIOD, bytes([1, minutes]), timeout)
