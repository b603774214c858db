"""An RS485 line for the benchmarks: RTU slaves on a pty that keep 8N1 timing at a baud rate.

A pty moves bytes at once; this line puts them where a real one would. A request occupies the
line from its first byte for its length in characters; the reply is written when its last
byte would have arrived (request + 3.5 characters of turnaround + reply), and the line is
busy until 3.5 characters after that. A request that starts before then talks over the line:
it is garbled and lost, and counted in ``violations``, as a slave on a real line would miss
it. ``respond`` decides what goes on the line after a request (default: the unit's proper
reply), so a benchmark can make a unit late, wrong or noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable

from drivers import modbus_pdu as pdu
from drivers.errors import FrameError
from drivers.sim.units import SimUnit, handle_request

# what to send after a request (None: silence) and whether it counts as an answer
Respond = Callable[[bytes, float], tuple[bytes, bool] | None]


class TimedRtuLine:
    """Slaves ``units`` (by unit id) on a new pty; clients open :attr:`path`."""

    def __init__(self, units: dict[int, SimUnit], baud: int = 9600) -> None:
        self.units = units
        self.char_s = 10 / baud  # 8N1: start + 8 data + stop
        self.t35_s = 3.5 * self.char_s
        self.answered = 0
        self.violations = 0
        self.respond: Respond = self.proper_reply
        self._first = 0.0
        self._line_free = 0.0
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()
        self._master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(slave)
        self._loop.add_reader(self._master, self._on_readable)

    def proper_reply(self, frame: bytes, now: float) -> tuple[bytes, bool] | None:
        unit = self.units.get(frame[0])
        if unit is None:
            return None  # another unit's request, or a dead one: silence
        return pdu.build_rtu(unit.unit_id, handle_request(unit, frame[1:-2], now)), True

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return
        now = self._loop.time()
        if not self._buf:
            self._first = now  # first byte of a new request on the line
        self._buf.extend(data)
        while self._buf:
            try:
                length = pdu.rtu_request_length(self._buf)
            except FrameError:
                self._buf.clear()
                return
            if length is None or len(self._buf) < length:
                return
            frame = bytes(self._buf[:length])
            del self._buf[:length]
            start = self._first
            if start < self._line_free:  # talked over the line: the frame is garbled
                self.violations += 1
                continue
            out = self.respond(frame, now)
            if out is None:
                continue
            reply, counts = out
            done = start + len(frame) * self.char_s + self.t35_s + len(reply) * self.char_s
            self._line_free = done + self.t35_s
            self._loop.call_at(done, self._write, reply, counts)

    def _write(self, reply: bytes, counts: bool) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, reply)
        self.answered += counts
