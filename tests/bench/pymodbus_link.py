"""pymodbus's async client behind dustgate's ``ModbusClient`` surface (the bench's candidate).

``bench_modbus.py`` measures this against ``drivers.modbus_client`` in the same run, over the
same simulators. It is the best this project found to do with pymodbus's public API
(``AsyncModbusSerialClient`` / ``AsyncModbusTcpClient``, ``trace_packet``,
``set_max_no_responses``), in two flavours:

- ``tuned=False``: pymodbus as shipped, as an integrator would use it: its own timeout and
  retry count (one per client: the first device's), no pause before a send.
- ``tuned=True``: what a wrapper can add on top: pymodbus's retries off and ours per request
  (so a unit in backoff is probed once), the per-request timeout as a cancellation around
  ``execute`` (pymodbus has one timeout per client), the 3.5-character silent interval kept
  from the last received byte (seen through ``trace_packet``), the "close the TCP link after
  retries+3 missing replies" rule switched off, and the bytes seen during a failed attempt
  classified afterwards (CRC error, wrong unit, truncated) because pymodbus drops such frames
  silently and reports only a timeout.

Everything above the link (register maps, plans, decoding) is ``drivers.modbus`` as in the
product; only ``connect``/``close``/``connected``/``transact`` differ.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import DecodePDU

from drivers import modbus_pdu as pdu
from drivers.errors import DeviceTimeout, DriverError, FrameError, LinkDown
from drivers.modbus_client import DEFAULT_TIMEOUT, ModbusClient

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every timeout with frames

_REQUESTS = DecodePDU(True)  # decodes request PDUs into pymodbus request objects


class PymodbusClient(ModbusClient):
    """One link through pymodbus; build it with :meth:`make`."""

    def __init__(self, name: str, framing: str, factory: Any, *, tuned: bool, silent: float):
        super().__init__(name, framing, _no_opener, silent_interval=silent)  # type: ignore[arg-type]
        self._factory = factory
        self.tuned = tuned
        self.client: Any = None
        self._rx: list[bytes] = []
        self._last_rx = 0.0
        self.timeouts = 0

    @classmethod
    def make(
        cls,
        kind: str,
        where: str | tuple[str, int],
        *,
        tuned: bool,
        baudrate: int = 9600,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        local_echo: bool = False,
    ) -> PymodbusClient:
        """``kind``: rtu (``where`` a port path), tcp or rtu_over_tcp (``where`` host, port).

        ``timeout``/``retries`` are what pymodbus as shipped applies to every request.
        """
        silent = 0.0
        if kind == "rtu":
            silent = 1.75e-3 if baudrate > 19200 else 3.5 * 10 / baudrate

        def factory(trace: Any) -> Any:
            common: dict[str, Any] = {
                "reconnect_delay": 0,  # the bus scheduler reconnects, with its own backoff
                "timeout": 60.0 if tuned else timeout,
                "retries": 0 if tuned else retries,
                "trace_packet": trace,
            }
            if kind == "rtu":
                return AsyncModbusSerialClient(
                    str(where), baudrate=baudrate, handle_local_echo=local_echo, **common
                )
            host, port = where  # type: ignore[misc,str-unpack]
            framer = FramerType.SOCKET if kind == "tcp" else FramerType.RTU
            return AsyncModbusTcpClient(host, port=int(port), framer=framer, **common)

        return cls(
            f"pymodbus-{kind}",
            "mbap" if kind == "tcp" else "rtu",
            factory,
            tuned=tuned,
            silent=silent,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx.append(data)
            self._last_rx = asyncio.get_running_loop().time()
        return data

    @property
    def connected(self) -> bool:
        return self.client is not None and bool(self.client.connected)

    async def connect(self) -> None:
        await self.close()
        self.client = self._factory(self._trace)
        if self.tuned:
            self.client.set_max_no_responses(1 << 30)
        ok = await self.client.connect()
        if not ok:
            self.client = None
            raise LinkDown(f"{self.name}: cannot connect")
        self._connected_at = asyncio.get_running_loop().time()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
            await asyncio.sleep(0)

    async def transact(
        self,
        unit: int,
        request: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 1,
        pause_after: float = 0.0,
    ) -> bytes:
        if self.tuned:  # our retry loop, per-request timeout and pauses around _once
            return await super().transact(
                unit, request, timeout=timeout, retries=retries, pause_after=pause_after
            )
        if not 0 <= unit <= 255:
            raise DriverError(f"unit id {unit} outside 0..255")
        async with self._lock:  # pymodbus retries by itself, with its own timeout
            reply = await self._once(unit, request, None)
            pdu.check_exception(reply, request[0])
            return reply

    async def _once(self, unit: int, request: bytes, timeout: float | None) -> bytes:  # type: ignore[override]
        client = self.client
        if client is None or not client.connected:
            raise LinkDown(f"{self.name}: not connected")
        loop = asyncio.get_running_loop()
        if self.tuned:
            wait = max(self._next_send, self._last_rx + self._silent_interval) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        message = _REQUESTS.decode(request)
        if message is None:
            raise DriverError(f"pymodbus cannot encode request {request.hex(' ')}")
        message.dev_id = unit
        self._rx = []
        try:
            if timeout is None:
                reply = await client.execute(False, message)
            else:
                async with asyncio.timeout(timeout):
                    reply = await client.execute(False, message)
        except (TimeoutError, ModbusIOException):
            self.timeouts += 1
            raise self._classify(unit, timeout) from None
        except ConnectionException as exc:
            raise LinkDown(f"{self.name}: {exc}") from None
        if reply.function_code & 0x80:
            return bytes([reply.function_code, reply.exception_code])
        return bytes([reply.function_code]) + reply.encode()

    def _classify(self, unit: int, timeout: float | None) -> DriverError:
        """What the bytes pymodbus dropped during the attempt were (it reports a timeout)."""
        seen = self._rx[-1] if self._rx else b""
        if not seen or self.framing != "rtu" or not self.tuned:  # as shipped: a timeout
            return DeviceTimeout(f"{self.name} unit {unit}: no reply in {timeout}s")
        try:
            length = pdu.rtu_reply_length(seen)
            if length is None or len(seen) < length:
                return FrameError(f"{self.name} unit {unit}: truncated reply {seen.hex(' ')}")
            pdu.parse_rtu_reply(seen[:length], unit)
        except FrameError as exc:  # CrcError, WrongSlave
            return exc
        return FrameError(f"{self.name} unit {unit}: reply dropped by pymodbus {seen.hex(' ')}")


async def _no_opener(factory: Any) -> tuple[Any, Any]:
    raise AssertionError("PymodbusClient connects through pymodbus")
