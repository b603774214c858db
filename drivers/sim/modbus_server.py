"""Modbus slave transports for the simulators: RTU on a pseudo-terminal, TCP and RTU-over-TCP.

Why not pymodbus's ``ModbusSerialServer`` for RTU: it opens its port by path through pyserial
(``serial_for_url``, exclusive). A pty's master side has no path (opening ``/dev/ptmx`` creates a
new pair), so it could only run on a second pty bridged to ours byte by byte. This responder
sits directly on the master fd and frames with ``drivers.modbus_pdu``; the client gets the slave
path, exactly like a USB-RS485 adapter. Like a real RS485 slave it stays silent on a bad CRC or
a frame for another unit, and treats a pause of more than ``gap_s`` as the start of a new frame.

The TCP server here (MBAP or RTU framing) answers pipelined requests one after another; as
a gateway it answers exception 0x0B for a unit it does not have, or (``absent="silent"``,
like gateways that wait out their serial timeout and give up) nothing.
``drivers.sim.pymodbus_tcp`` serves the same units through pymodbus's own TCP server.

:class:`Faults` makes a responder misbehave on purpose (silence, bad CRC, wrong unit id,
truncated reply, garbage, exception) for the driver's tests. Every responder counts the
function codes it hears (``functions_heard``, whatever the unit), so a test can prove what a
client sent. On the pty, a unit may be set to a baud rate of its own (``bauds``): it hears
only requests sent at that rate (read from the pty's line settings, as the client set them),
like a real slave that sees garbage at any other. A pty carries no parity (Linux clears
``PARENB`` on it), so only the rate is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from drivers import modbus_pdu as pdu
from drivers.errors import FrameError
from drivers.sim.units import SimUnit, handle_request

FaultMode = Literal["silent", "bad_crc", "wrong_slave", "truncated", "garbage", "exception"]


@dataclass
class Faults:
    """Misbehaviour for the next ``count`` replies (``count=None``: until cleared); or, ahead
    of that, one entry of ``script`` per reply: a mode, None (a good reply) or raw bytes
    sent on the line instead of the reply (RTU)."""

    mode: FaultMode | None = None
    count: int | None = None
    script: deque[FaultMode | bytes | None] = field(default_factory=deque)

    def take(self) -> FaultMode | bytes | None:
        if self.script:
            return self.script.popleft()
        if self.mode is None:
            return None
        mode = self.mode
        if self.count is not None:
            self.count -= 1
            if self.count <= 0:
                self.mode, self.count = None, None
        return mode


def apply_rtu_fault(mode: FaultMode | bytes | None, unit: int, reply_pdu: bytes) -> bytes | None:
    """The RTU bytes to send for ``reply_pdu`` under fault ``mode`` (None: stay silent)."""
    if isinstance(mode, bytes):
        return mode
    if mode == "silent":
        return None
    if mode == "exception":
        reply_pdu = bytes([reply_pdu[0] | 0x80, 4])
    adu = pdu.build_rtu((unit + 1) & 0xFF if mode == "wrong_slave" else unit, reply_pdu)
    if mode == "bad_crc":
        return adu[:-1] + bytes([adu[-1] ^ 0x5A])
    if mode == "truncated":
        return adu[: max(3, len(adu) // 2)]
    if mode == "garbage":
        return bytes([unit, 0x47, 0x12, 0x99, 0x00])
    return adu


class _Units:
    def __init__(self, units: Iterable[SimUnit]) -> None:
        self.by_id = {u.unit_id: u for u in units}
        self.faults = Faults()
        self.requests = 0
        self.functions_heard: Counter[int] = Counter()  # every request's function code
        self.asked: Counter[int] = Counter()  # every well-formed request, by unit id

    def answer_rtu(self, frame: bytes, now: float, baud: int | None = None) -> bytes | None:
        """The RTU reply to an RTU request; None (silence) on a bad CRC, a foreign unit or
        (with ``baud``, the line's rate) a unit set to another rate."""
        try:
            pdu.check_rtu_crc(frame)
        except FrameError:
            return None
        self.functions_heard[frame[1]] += 1
        self.asked[frame[0]] += 1
        unit = self.by_id.get(frame[0])
        if unit is None:
            return None  # another device's frame on the bus
        if baud is not None and self.unit_baud(frame[0]) not in (None, baud):
            return None  # garbage at this unit's rate: a real slave stays silent
        return self._answer_unit(unit, frame, now)

    def unit_baud(self, unit_id: int) -> int | None:
        return None

    def _answer_unit(self, unit: SimUnit, frame: bytes, now: float) -> bytes | None:
        self.requests += 1
        reply = handle_request(unit, frame[1:-2], now)
        return apply_rtu_fault(self.faults.take(), unit.unit_id, reply)


_BAUD_OF_SPEED = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
}


class RtuPtyServer(_Units):
    """Modbus RTU slaves on the master side of a new pty; clients open :attr:`path`."""

    def __init__(
        self,
        units: Iterable[SimUnit],
        gap_s: float = 0.05,
        local_echo: bool = False,
        bauds: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(units)
        self.bauds = dict(bauds or {})  # unit id -> the only baud rate it hears
        self.gap_s = gap_s
        self.local_echo = local_echo  # like a 2-wire RS485 adapter that hears itself
        self.path = ""
        self._master = -1
        self._slave = -1
        self._buffer = bytearray()
        self._last_rx = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> str:
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline until the client sets its own
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._loop.add_reader(self._master, self._on_readable)
        return self.path

    async def stop(self) -> None:
        if self._master >= 0 and self._loop is not None:
            self._loop.remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)  # held open so the master survives client reconnects
        self._master = self._slave = -1

    def unit_baud(self, unit_id: int) -> int | None:
        return self.bauds.get(unit_id)

    def _line_baud(self) -> int | None:
        """The rate the client set on the pty (None: no unit cares, or not known)."""
        if not self.bauds:
            return None
        try:
            speed = termios.tcgetattr(self._slave)[5]
        except termios.error:
            return None
        return _BAUD_OF_SPEED.get(speed)

    def _on_readable(self) -> None:
        assert self._loop is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:  # EAGAIN; EIO cannot happen while we hold the slave open
            return
        if self.local_echo:
            with contextlib.suppress(OSError):
                os.write(self._master, data)
        now = self._loop.time()
        if now - self._last_rx > self.gap_s:
            self._buffer.clear()  # silence on the line: a new frame starts
        self._last_rx = now
        self._buffer += data
        while self._buffer:
            try:
                length = pdu.rtu_request_length(self._buffer)
            except FrameError:
                self._buffer.clear()
                return
            if length is None or len(self._buffer) < length:
                return
            frame = bytes(self._buffer[:length])
            del self._buffer[:length]
            reply = self.answer_rtu(frame, now, self._line_baud())
            if reply:
                with contextlib.suppress(OSError):  # nobody reading: the reply is lost on the line
                    os.write(self._master, reply)


class TcpServer(_Units):
    """Modbus TCP (``framing="mbap"``) or RTU-over-TCP slaves on 127.0.0.1."""

    def __init__(
        self,
        units: Iterable[SimUnit],
        framing: Literal["mbap", "rtu"] = "mbap",
        port: int = 0,
        absent: Literal["exception", "silent"] = "exception",
    ) -> None:
        super().__init__(units)
        self.framing = framing
        self.absent = absent  # MBAP: how the gateway answers for a unit it cannot reach
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen (again, on the same port after a stop) and return the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection, like a gateway rebooting."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._handlers:  # they end on the EOF that closing their transport feeds
                await asyncio.wait(list(self._handlers), timeout=2.0)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        measure = pdu.mbap_length if self.framing == "mbap" else pdu.rtu_request_length
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        try:
            while True:
                length = measure(buffer)
                if length is None or len(buffer) < length:
                    data = await reader.read(4096)
                    if not data:
                        return
                    buffer += data
                    continue
                frame = bytes(buffer[:length])
                del buffer[:length]
                reply = self._answer(frame, loop.time())
                if reply:
                    writer.write(reply)
                    await writer.drain()
        except (FrameError, OSError):
            return  # garbage or a reset: drop the connection, as gateways do
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()

    def _answer(self, frame: bytes, now: float) -> bytes | None:
        if self.framing == "rtu":
            return self.answer_rtu(frame, now)
        transaction, unit_id, request = pdu.parse_mbap(frame)
        self.functions_heard[request[0] if request else 0] += 1
        self.asked[unit_id] += 1
        unit = self.by_id.get(unit_id)
        if unit is None:  # as a TCP gateway: "target device failed to respond", or nothing
            if self.absent == "silent":
                return None
            return pdu.build_mbap(transaction, unit_id, bytes([request[0] | 0x80, 0x0B]))
        self.requests += 1
        reply = handle_request(unit, request, now)
        mode = self.faults.take()
        if isinstance(mode, bytes):
            return mode  # raw bytes instead of the reply
        if mode == "silent":
            return None
        if mode == "exception":
            reply = bytes([reply[0] | 0x80, 4])
        if mode == "wrong_slave":
            unit_id = (unit_id + 1) & 0xFF
        return pdu.build_mbap(transaction, unit_id, reply)
