"""Async Modbus client over one link: RTU on a serial port, Modbus TCP, or RTU over TCP.

One :class:`ModbusClient` owns one link (a serial port or one TCP connection) and runs one
transaction at a time on it (an ``asyncio.Lock``), so several devices on one RS485 bus are
polled in turn and a TCP gateway never sees pipelined requests. Framing comes from
``drivers.modbus_pdu``; this module only moves bytes and keeps time:

- RTU: before each request the bytes left in the receive buffer (late replies, line noise) are
  discarded and the 3.5-character silent interval since the last byte on the line is kept
  (1.75 ms above 19200 baud, as the serial-line spec says). A reply is complete when the
  length announced by its header has arrived; the CRC and the unit id are then checked.
- TCP: the MBAP transaction id pairs replies with requests; a stale reply to an earlier,
  timed-out request is dropped, and so are bytes left over from a garbled frame.

Every call is bounded by the per-request timeout and retried ``retries`` times on a timeout or
a bad frame (not on a Modbus exception reply, which is the device's considered answer).
Nothing but :class:`drivers.errors.DriverError` subclasses leaves this module. A broken link
raises :class:`LinkDown` until :meth:`ModbusClient.connect` succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from drivers import modbus_pdu as pdu
from drivers.errors import (
    DeviceTimeout,
    DriverError,
    FrameError,
    LinkDown,
    ModbusExceptionResponse,
    WrongSlave,
)
from drivers.modbus import DeviceSpec, ReadRequest, Value, decode_values

log = logging.getLogger(__name__)

Framing = Literal["rtu", "mbap"]
FrameLength = Callable[[bytearray], int | None]
Opener = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, object]]]

DEFAULT_TIMEOUT = 1.0
CONNECT_TIMEOUT = 5.0


class _FrameProtocol(asyncio.Protocol):
    """Collects received bytes; completes a waiter once a whole frame is buffered."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.last_rx = 0.0
        self._waiter: asyncio.Future[bytes] | None = None
        self._frame_length: FrameLength | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_rx = self._loop.time()
        if self._waiter is not None:
            self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("closed by peer")
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(LinkDown(f"link lost: {self.lost}"))

    def expect(self, frame_length: FrameLength) -> asyncio.Future[bytes]:
        """A future for the next frame whose length ``frame_length`` tells from its head."""
        self._frame_length = frame_length
        waiter = self._waiter = self._loop.create_future()
        if self.buffer:
            self._try_complete()  # may complete (and forget) the waiter right away
        return waiter

    def drop_waiter(self) -> None:
        self._waiter = None
        self._frame_length = None

    def _try_complete(self) -> None:
        waiter, measure = self._waiter, self._frame_length
        if waiter is None or measure is None or waiter.done():
            return
        try:
            length = measure(self.buffer)
        except FrameError as exc:
            self.buffer.clear()
            self._waiter = None
            waiter.set_exception(exc)
            return
        if length is not None and len(self.buffer) >= length:
            frame = bytes(self.buffer[:length])
            del self.buffer[:length]
            self._waiter = None
            waiter.set_result(frame)


class ModbusClient:
    """One Modbus link; build it with :meth:`rtu`, :meth:`tcp` or :meth:`rtu_over_tcp`."""

    def __init__(
        self,
        name: str,
        framing: Framing,
        opener: Opener,
        *,
        silent_interval: float = 0.0,
        local_echo: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.name = name
        self.framing = framing
        self._opener = opener
        self._silent_interval = silent_interval
        self._local_echo = local_echo
        self._connect_timeout = connect_timeout
        self._protocol: _FrameProtocol | None = None
        self._lock = asyncio.Lock()
        self._transaction = 0
        self._connected_at = 0.0
        self._next_send = 0.0
        self._plans: dict[int, tuple[DeviceSpec, tuple[ReadRequest, ...]]] = {}

    # ------------------------------------------------------------ construction

    @classmethod
    def rtu(
        cls,
        port: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
        local_echo: bool = False,
    ) -> ModbusClient:
        """Modbus RTU on a serial port (RS485 adapter, pty)."""
        import serial_asyncio_fast

        async def open_serial(
            factory: Callable[[], asyncio.Protocol],
        ) -> tuple[asyncio.BaseTransport, object]:
            return await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(),
                factory,
                port,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
            )

        bits_per_char = 1 + bytesize + (parity != "N") + stopbits
        # Modbus over serial line v1.02, 2.5.1.1: fixed 1.75 ms above 19200 baud
        silent = 1.75e-3 if baudrate > 19200 else 3.5 * bits_per_char / baudrate
        return cls(f"rtu:{port}", "rtu", open_serial, silent_interval=silent, local_echo=local_echo)

    @classmethod
    def tcp(cls, host: str, port: int = 502) -> ModbusClient:
        """Modbus TCP (MBAP framing)."""
        return cls(f"tcp:{host}:{port}", "mbap", _tcp_opener(host, port))

    @classmethod
    def rtu_over_tcp(cls, host: str, port: int) -> ModbusClient:
        """RTU frames carried over a TCP socket (serial device servers in transparent mode)."""
        return cls(f"rtu-tcp:{host}:{port}", "rtu", _tcp_opener(host, port))

    # ------------------------------------------------------------ link state

    @property
    def connected(self) -> bool:
        p = self._protocol
        return p is not None and p.lost is None and p.transport is not None

    async def connect(self) -> None:
        """Open (or reopen) the link; raises LinkDown if it cannot be opened in time."""
        await self.close()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, protocol = await self._opener(_FrameProtocol)
        except TimeoutError:
            raise LinkDown(f"{self.name}: connect timed out") from None
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            raise LinkDown(f"{self.name}: cannot open: {exc}") from None
        assert isinstance(protocol, _FrameProtocol)
        # serial transports call connection_made on the next loop turn
        protocol.transport = protocol.transport or transport  # type: ignore[assignment]
        self._protocol = protocol
        self._connected_at = asyncio.get_running_loop().time()

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await asyncio.sleep(0)  # let the transport release the fd/socket

    async def __aenter__(self) -> ModbusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ transactions

    async def transact(
        self,
        unit: int,
        request: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        pause_after: float = 0.0,
    ) -> bytes:
        """Send one request PDU to ``unit`` and return the reply PDU (exception replies raise)."""
        if not 0 <= unit <= 255:
            raise DriverError(f"unit id {unit} outside 0..255")
        async with self._lock:
            attempt = 0
            while True:
                try:
                    reply = await self._once(unit, request, timeout)
                    pdu.check_exception(reply, request[0])
                    return reply
                except ModbusExceptionResponse:
                    raise
                except (DeviceTimeout, FrameError) as exc:
                    if attempt >= retries:
                        raise
                    attempt += 1
                    log.debug("%s unit %d: %s; retry %d", self.name, unit, exc, attempt)
                finally:
                    loop_time = asyncio.get_running_loop().time()
                    self._next_send = max(self._next_send, loop_time + pause_after)

    async def _once(self, unit: int, request: bytes, timeout: float) -> bytes:
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or protocol.transport is None:
            raise LinkDown(f"{self.name}: not connected")
        loop = asyncio.get_running_loop()
        wait = max(self._next_send, protocol.last_rx + self._silent_interval) - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # no request is outstanding: whatever is buffered is stale (an earlier, timed-out
        # reply, line noise, or over TCP the rest of a garbled frame whose length cannot be
        # trusted: kept, it would swallow the next replies as the body of a bogus frame)
        protocol.buffer.clear()
        if self.framing == "rtu":
            adu = pdu.build_rtu(unit, request)
        else:
            self._transaction = (self._transaction + 1) & 0xFFFF
            adu = pdu.build_mbap(self._transaction, unit, request)
        try:
            protocol.transport.write(adu)
            async with asyncio.timeout(timeout):
                if self.framing == "mbap":
                    return await self._mbap_reply(protocol, unit)
                if self._local_echo:
                    echo = await protocol.expect(lambda _buf: len(adu))
                    if echo != adu:
                        raise FrameError(f"local echo {echo.hex(' ')} differs from request")
                frame = await protocol.expect(pdu.rtu_reply_length)
                return pdu.parse_rtu_reply(frame, unit)
        except TimeoutError:
            partial = len(protocol.buffer)
            protocol.drop_waiter()
            if partial:
                raise FrameError(
                    f"{self.name} unit {unit}: truncated reply ({partial} bytes) "
                    f"{bytes(protocol.buffer).hex(' ')}"
                ) from None
            raise DeviceTimeout(f"{self.name} unit {unit}: no reply in {timeout}s") from None
        except (OSError, RuntimeError) as exc:
            raise LinkDown(f"{self.name}: {exc}") from None

    async def _mbap_reply(self, protocol: _FrameProtocol, unit: int) -> bytes:
        while True:
            frame = await protocol.expect(pdu.mbap_length)
            transaction, got_unit, reply = pdu.parse_mbap(frame)
            if transaction != self._transaction:
                continue  # reply to an earlier request that timed out
            if got_unit != unit:
                raise WrongSlave(unit, got_unit)
            return reply

    # ------------------------------------------------------------ reads and writes

    async def read_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        table: Literal["holding", "input"] = "holding",
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
    ) -> tuple[int, ...]:
        function = pdu.READ_HOLDING_REGISTERS if table == "holding" else pdu.READ_INPUT_REGISTERS
        request = _request(pdu.read_request, function, address, count)
        reply = await self.transact(unit, request, timeout=timeout, retries=retries)
        return pdu.decode_read_registers(reply, function, count)

    async def read_bits(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        table: Literal["coil", "discrete"] = "coil",
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
    ) -> list[bool]:
        function = pdu.READ_COILS if table == "coil" else pdu.READ_DISCRETE_INPUTS
        request = _request(pdu.read_request, function, address, count)
        reply = await self.transact(unit, request, timeout=timeout, retries=retries)
        return pdu.decode_read_bits(reply, function, count)

    async def read_coils(
        self, unit: int, address: int, count: int = 1, *, timeout: float = DEFAULT_TIMEOUT
    ) -> list[bool]:
        return await self.read_bits(unit, address, count, table="coil", timeout=timeout)

    async def settle(self, pause_after_connect: float) -> None:
        """Wait until ``pause_after_connect`` seconds have passed since the link opened
        (devices and gateways that drop requests sent right after a connect)."""
        if pause_after_connect > 0:
            left = self._connected_at + pause_after_connect - asyncio.get_running_loop().time()
            if left > 0:
                await asyncio.sleep(left)

    async def read_device(self, spec: DeviceSpec) -> dict[str, Value]:
        """Read every field of ``spec`` with the fewest requests; all or nothing."""
        await self.settle(spec.pause_after_connect)
        values: dict[str, Value] = {}
        for request in self._plan(spec):
            reply = await self.transact(
                spec.slave_id,
                request.pdu,
                timeout=spec.timeout,
                retries=spec.retries,
                pause_after=spec.pause_between_requests,
            )
            if request.function in pdu.REGISTER_READS:
                block: tuple[int, ...] | list[bool] = pdu.decode_read_registers(
                    reply, request.function, request.count
                )
            else:
                block = pdu.decode_read_bits(reply, request.function, request.count)
            values.update(decode_values(request, block))
        return values

    def _plan(self, spec: DeviceSpec) -> tuple[ReadRequest, ...]:
        # looked up by identity: cheaper per poll than the spec's own (pydantic private) cache
        cached = self._plans.get(id(spec))
        if cached is None or cached[0] is not spec:
            cached = self._plans[id(spec)] = (spec, spec.plan())
        return cached[1]

    async def write(
        self, unit: int, request: bytes, *, timeout: float = DEFAULT_TIMEOUT, retries: int = 1
    ) -> None:
        """Send a write request PDU (FC 05/06/15/16) and check that the reply echoes it."""
        reply = await self.transact(unit, request, timeout=timeout, retries=retries)
        pdu.check_write_reply(reply, request)

    async def write_coils(
        self,
        unit: int,
        address: int,
        values: Sequence[bool],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
    ) -> None:
        request = _request(pdu.write_multiple_coils_request, address, values)
        await self.write(unit, request, timeout=timeout, retries=retries)

    async def write_register(
        self,
        unit: int,
        address: int,
        value: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
    ) -> None:
        request = _request(pdu.write_single_register_request, address, value)
        await self.write(unit, request, timeout=timeout, retries=retries)


def _request(build: Callable[..., bytes], *args: object) -> bytes:
    """Build a request PDU, turning bad arguments into a DriverError."""
    try:
        return build(*args)
    except ValueError as exc:
        raise DriverError(f"bad request: {exc}") from None


def _tcp_opener(host: str, port: int) -> Opener:
    async def open_tcp(
        factory: Callable[[], asyncio.Protocol],
    ) -> tuple[asyncio.BaseTransport, object]:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            factory, host, port
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport, protocol

    return open_tcp
