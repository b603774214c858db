"""Serve simulated units through pymodbus's own Modbus TCP server (pymodbus 3.16 simulator API).

Used to check our client against an independent implementation of the protocol. Our
:class:`drivers.sim.units.SimUnit` stays the source of truth: each unit becomes a pymodbus
``SimDevice`` with four separate blocks (coils, discrete inputs, holding, input registers)
covering the unit's addresses, and a ``SimDevice.action`` hook copies the unit's live values
into pymodbus's block before every request and passes writes to the unit.

Known limits of pymodbus 3.16.1, which is why the site simulator uses
``drivers.sim.modbus_server`` by default: only the first of several pipelined requests in one
TCP packet is answered; a request for an unknown unit id logs a traceback; FC05 values other
than 0xFF00/0x0000 (Waveshare "flash") are not passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.sim.units import SimException, SimUnit

_TABLE_OF_FUNCTION = {1: "coil", 5: "coil", 15: "coil", 2: "discrete"}
_TABLE_OF_FUNCTION.update({3: "holding", 6: "holding", 16: "holding", 4: "input"})
_BIT_TABLES = ("coil", "discrete")


def _runs(addresses: Iterable[int]) -> list[list[int]]:
    """Contiguous runs of sorted addresses."""
    runs: list[list[int]] = []
    for a in sorted(addresses):
        if runs and runs[-1][-1] + 1 == a:
            runs[-1].append(a)
        else:
            runs.append([a])
    return runs


def _block(unit: SimUnit, table: str) -> list[SimData]:
    values = unit.tables[table]
    if not values:  # pymodbus wants every block non-empty: park a dummy at the top
        if table in _BIT_TABLES:
            return [SimData(address=0xFFF0, values=[False] * 16, datatype=DataType.BITS)]
        return [SimData(address=0xFFFE, count=1, datatype=DataType.INVALID)]
    blocks = []
    for run in _runs(values):
        if table in _BIT_TABLES:
            bits = [bool(values[a]) for a in run]
            blocks.append(SimData(address=run[0], values=bits, datatype=DataType.BITS))
        else:
            words = [values[a] for a in run]
            blocks.append(SimData(address=run[0], values=words, datatype=DataType.REGISTERS))
    return blocks


def to_sim_device(unit: SimUnit) -> SimDevice:
    """A pymodbus ``SimDevice`` mirroring ``unit``."""

    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _TABLE_OF_FUNCTION.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        now = asyncio.get_running_loop().time()
        try:
            if set_values is not None:
                unit.write(table, address, [int(v) for v in set_values], now)
            else:
                unit.refresh(now)
        except SimException as exc:
            return ExcCodes(exc.code)
        values = unit.tables[table]
        if table in _BIT_TABLES:
            # bit blocks are packed 16 to a register, first coil in bit 0
            for i in range(len(registers)):
                word = registers[i]
                for bit in range(16):
                    a = (start_address + i) * 16 + bit
                    if a in values:
                        word = word | 1 << bit if values[a] else word & ~(1 << bit)
                registers[i] = word
        else:
            for i in range(len(registers)):
                if (a := start_address + i) in values:
                    registers[i] = values[a]
        return None

    blocks = tuple(_block(unit, t) for t in ("coil", "discrete", "holding", "input"))
    return SimDevice(id=unit.unit_id, simdata=blocks, action=action)  # type: ignore[arg-type]


class PymodbusTcpServer:
    """pymodbus ``ModbusTcpServer`` on 127.0.0.1 serving ``units``."""

    def __init__(self, units: Iterable[SimUnit], port: int) -> None:
        self.units = list(units)
        self.port = port
        self._server: ModbusTcpServer | None = None

    async def start(self) -> int:
        devices = [to_sim_device(u) for u in self.units]
        self._server = ModbusTcpServer(devices, address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)
        listener = getattr(self._server, "transport", None)
        sockets = getattr(listener, "sockets", None)
        if self.port == 0 and sockets:  # asked for any free port: find out which
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await server.shutdown()
