"""Shared layer for the UART particulate sensors (SDS011, PMS5003/7003).

Two parts, kept apart on purpose:

* :class:`StreamParser` — the pure, synchronous core. Bytes go in, whole checked frames come
  out. The skeleton is the same for every UART sensor: scan for the header byte, ask the
  protocol how long the candidate frame is, wait for that many bytes, then let the protocol's
  strict ``parse_frame`` accept or reject it. A rejected candidate costs one byte (the scan
  resumes at the next byte, so a real frame hidden behind a false header is still found).
  Every discarded byte is counted in ``garbage_bytes``, rejected candidates in
  ``bad_checksum`` / ``bad_frame``. ``feed`` never raises and the buffer never holds more than
  one incomplete frame, whatever the line throws at it.

* :class:`SerialFrameLink` — the imperative shell. It opens the port with
  ``serial_asyncio_fast`` (event driven: the loop wakes only when bytes arrive, no polling),
  feeds the parser from ``data_received``, keeps the last few frames with their arrival time,
  and lets callers wait for a matching frame with a deadline. Port errors become
  :class:`~drivers.errors.LinkDown`, deadlines :class:`~drivers.errors.DeviceTimeout`;
  nothing waits forever. ``reopen`` works after the port has gone and come back (USB adapter
  re-plugged, pty recreated behind the same symlink).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import serial
import serial_asyncio_fast

from drivers.errors import DeviceTimeout, FrameError, LinkDown

F = TypeVar("F")
T = TypeVar("T")


class ChecksumMismatch(FrameError):
    """A frame's checksum does not match its content."""


class MalformedFrame(FrameError):
    """A frame has the wrong length, header, length field, tail byte or command code."""


class ReportingMode(enum.StrEnum):
    """How a UART sensor delivers readings."""

    ACTIVE = "active"  # the sensor streams a frame every second or so
    PASSIVE = "passive"  # the sensor answers only when asked ("query mode" for SDS011)


LINK_CHECK_S = 1.0  # longest a waiting caller goes without re-checking the port
NEED_MORE = -1  # _candidate_length: not enough bytes yet to judge the candidate
NOT_A_FRAME = 0  # _candidate_length: the bytes at this position cannot start a frame


class StreamParser(ABC, Generic[F]):
    """Incremental resynchronising parser; subclasses describe one protocol.

    Subclasses set ``start_byte`` and ``max_frame_len`` (the longest frame they accept) and
    implement ``_candidate_length``
    and ``_parse``. Counters are cumulative over the parser's life (``reset`` keeps them).
    """

    start_byte: int
    max_frame_len: int

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames = 0
        self.garbage_bytes = 0
        self.bad_checksum = 0
        self.bad_frame = 0

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of a possibly incomplete frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop a partial frame (after a reopen); the counters stay."""
        self.garbage_bytes += len(self._buf)
        self._buf.clear()

    def stats(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "garbage_bytes": self.garbage_bytes,
            "bad_checksum": self.bad_checksum,
            "bad_frame": self.bad_frame,
        }

    @abstractmethod
    def _candidate_length(self, buf: bytearray, pos: int) -> int:
        """Length of the frame that would start at ``buf[pos]`` (which is ``start_byte``),
        or NEED_MORE if the header is not complete yet, or NOT_A_FRAME."""

    @abstractmethod
    def _parse(self, frame: bytes) -> F:
        """Strict parse of exactly one frame; raises FrameError subclasses."""

    def feed(self, data: bytes) -> list[F]:
        """Add received bytes; return the complete valid frames, in order. Never raises."""
        buf = self._buf
        buf += data
        out: list[F] = []
        pos = 0
        end = len(buf)
        start_byte = self.start_byte
        while pos < end:
            start = buf.find(start_byte, pos)
            if start < 0:
                self.garbage_bytes += end - pos
                pos = end
                break
            self.garbage_bytes += start - pos
            pos = start
            length = self._candidate_length(buf, pos)
            if length == NEED_MORE:
                break
            if length == NOT_A_FRAME:
                self.garbage_bytes += 1
                pos += 1
                continue
            if end - pos < length:
                break
            try:
                frame = self._parse(bytes(buf[pos : pos + length]))
            except ChecksumMismatch:
                self.bad_checksum += 1
            except FrameError:
                self.bad_frame += 1
            except Exception:  # a parser bug must not kill a long-running reader
                self.bad_frame += 1
            else:
                out.append(frame)
                self.frames += 1
                pos += length
                continue
            # Rejected candidate: skip only its first byte, a real frame may start inside it.
            self.garbage_bytes += 1
            pos += 1
        del buf[:pos]
        return out


@dataclass(frozen=True, slots=True)
class Received(Generic[F]):
    """A frame with its arrival sequence number and loop time."""

    seq: int
    at: float
    frame: F


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: SerialFrameLink[Any]) -> None:
        self._link = link

    def data_received(self, data: bytes) -> None:
        if self._link._protocol is self:  # ignore a stale transport after a reopen
            self._link._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._on_lost(self, exc)


class SerialFrameLink(Generic[F]):
    """An async serial port that turns its byte stream into frames.

    ``open``/``close``/``reopen``; ``write`` sends bytes; ``wait_frame`` waits, with a
    deadline, for a frame that matches a predicate and arrived after a given sequence number.
    """

    def __init__(
        self,
        port: str,
        parser: StreamParser[F],
        *,
        baudrate: int = 9600,
        open_timeout: float = 5.0,
        keep: int = 16,
    ) -> None:
        self.port = port
        self.parser = parser
        self.baudrate = baudrate
        self.open_timeout = open_timeout
        self._recent: deque[Received[F]] = deque(maxlen=keep)
        self._seq = 0
        self._transport: asyncio.Transport | None = None
        self._protocol: _LinkProtocol | None = None
        self._closed_event = asyncio.Event()
        self._changed = asyncio.Event()
        self.last_error: str | None = None
        self.opens = 0
        self.link_losses = 0

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest frame received (0: none yet)."""
        return self._seq

    async def open(self) -> None:
        """Open the port (no-op if already open). Raises LinkDown if it cannot be opened."""
        if self.is_open:
            return
        loop = asyncio.get_running_loop()
        protocol = _LinkProtocol(self)
        try:
            transport, _ = await asyncio.wait_for(
                serial_asyncio_fast.create_serial_connection(
                    loop, lambda: protocol, url=self.port, baudrate=self.baudrate
                ),
                self.open_timeout,
            )
        except (serial.SerialException, OSError, ValueError, TimeoutError) as exc:
            self.last_error = f"{self.port}: cannot open: {exc}"
            raise LinkDown(self.last_error) from exc
        ser = getattr(transport, "serial", None)
        if ser is not None:
            # Bytes queued while nobody listened are stale; a real UART would have lost them.
            with contextlib.suppress(serial.SerialException, OSError):
                ser.reset_input_buffer()
        self.parser.reset()
        self._recent.clear()
        self._transport = transport
        self._protocol = protocol
        self._closed_event = asyncio.Event()
        self.opens += 1
        self.last_error = None

    async def close(self) -> None:
        """Close the port; waiting callers get LinkDown. Safe to call twice."""
        transport, self._transport = self._transport, None
        self._protocol = None
        self._wake_waiters()
        if transport is None:
            return
        closed = self._closed_event
        if not transport.is_closing():
            transport.abort()  # drop unsent bytes; no tcdrain that could hang on a dead adapter
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), 2.0)

    async def reopen(self) -> None:
        await self.close()
        await self.open()

    def write(self, data: bytes) -> None:
        """Send bytes now; LinkDown if the port is closed or the write fails."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise LinkDown(self._down_reason())
        ser = getattr(transport, "serial", None)
        if ser is None or transport.get_write_buffer_size():
            transport.write(data)
            return
        # Write directly so a dead port is a LinkDown here, not a traceback in the loop's log.
        try:
            written = ser.write(data) or 0
        except (serial.SerialException, OSError) as exc:
            self._mark_lost(f"{self.port}: {exc}")
            transport.abort()
            raise LinkDown(self._down_reason()) from exc
        if written < len(data):
            transport.write(data[written:])  # kernel buffer full: let the transport finish

    def _down_reason(self) -> str:
        if self.last_error:
            return self.last_error
        if self._transport is not None:
            return f"{self.port}: link lost"
        return f"{self.port}: not open"

    async def wait_frame(
        self,
        predicate: Callable[[F], bool],
        *,
        after_seq: int,
        timeout: float,
        newest: bool = False,
        max_age: float | None = None,
    ) -> Received[F]:
        """Wait for a frame with ``seq > after_seq`` matching ``predicate``.

        ``newest`` picks the latest match already buffered, else the first one. ``max_age``
        ignores buffered frames older than that many seconds. Raises DeviceTimeout after
        ``timeout`` seconds, LinkDown when the port is or goes away.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.is_open:
                raise LinkDown(self._down_reason())
            now = loop.time()
            found = self._find(
                predicate, after_seq, newest, None if max_age is None else now - max_age
            )
            if found is not None:
                return found
            remaining = deadline - now
            if remaining <= 0:
                raise DeviceTimeout(f"{self.port}: no valid frame within {timeout:g} s")
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                # Re-check at least once a second: the transport reports a dead port only after
                # closing it in an executor thread, which a wedged adapter could delay.
                await asyncio.wait_for(changed.wait(), min(remaining, LINK_CHECK_S))

    def _find(
        self, predicate: Callable[[F], bool], after_seq: int, newest: bool, not_before: float | None
    ) -> Received[F] | None:
        candidates = reversed(self._recent) if newest else iter(self._recent)
        for item in candidates:
            if item.seq <= after_seq or (not_before is not None and item.at < not_before):
                continue
            if predicate(item.frame):
                return item
        return None

    def _wake_waiters(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_data(self, data: bytes) -> None:
        frames = self.parser.feed(data)
        if not frames:
            return
        now = asyncio.get_running_loop().time()
        for frame in frames:
            self._seq += 1
            self._recent.append(Received(self._seq, now, frame))
        self._wake_waiters()

    def _mark_lost(self, reason: str) -> None:
        if self._transport is not None:
            self.link_losses += 1
            self.last_error = reason
            self._transport = None
            self._protocol = None
            self._wake_waiters()

    def _on_lost(self, protocol: _LinkProtocol, exc: Exception | None) -> None:
        if protocol is self._protocol:  # not a close() we asked for: the port went away
            self._mark_lost(f"{self.port}: link lost: {exc or 'closed by peer'}")
        self._closed_event.set()


class FrameReader(Generic[F]):
    """What every UART sensor reader shares: one link, and which frame was consumed last.

    ``open``/``reopen`` skip frames that arrived before, so the first ``read`` returns
    a fresh reading, never one buffered while nobody was listening.
    """

    def __init__(self, link: SerialFrameLink[F]) -> None:
        self.link = link
        self._consumed = 0

    @property
    def is_open(self) -> bool:
        return self.link.is_open

    def stats(self) -> dict[str, int]:
        return {
            **self.link.parser.stats(),
            "opens": self.link.opens,
            "link_losses": self.link.link_losses,
        }

    async def open(self) -> None:
        await self.link.open()
        self._consumed = self.link.last_seq

    async def close(self) -> None:
        await self.link.close()

    async def reopen(self) -> None:
        await self.link.reopen()
        self._consumed = self.link.last_seq
