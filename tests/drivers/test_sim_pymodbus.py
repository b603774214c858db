"""Our client against pymodbus's own TCP server (an independent Modbus implementation)."""

from __future__ import annotations

import socket

import pytest

from drivers.errors import ModbusExceptionResponse
from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.relay import RelayOutput
from drivers.sim.pymodbus_tcp import PymodbusTcpServer
from drivers.sim.relay_board import RelayBoardUnit
from drivers.sim.units import ProfileUnit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_client_reads_and_switches_through_pymodbus_server() -> None:
    station = resolve_profile("dust-station")
    values = {"pm10": 210, "pm25": 95, "temp": -7.5, "wind_speed": 4.2, "wind_dir": 270}
    board = RelayBoardUnit(2, channels=8)
    server = PymodbusTcpServer([ProfileUnit(station, lambda: values), board], _free_port())
    client = ModbusClient.tcp("127.0.0.1", await server.start())
    try:
        await client.connect()
        got = await client.read_device(station)
        assert {k: got[k] for k in values} == pytest.approx(values)
        values["pm10"] = 55
        assert (await client.read_device(station))["pm10"] == 55

        relay = RelayOutput.from_profile(client, resolve_profile("relay-8ch", {"slave_id": 2}), 5)
        assert await relay.switch(True) is True
        assert board.active_count(0.0) == 1
        assert await relay.switch(False) is False
        await client.write_coils(2, 0, [True, True])
        assert await client.read_coils(2, 0, 3) == [True, True, False]
        assert board.active_count(0.0) == 2

        with pytest.raises(ModbusExceptionResponse) as info:
            await client.read_registers(1, 0x0100, 2)  # outside the station's block
        assert info.value.code == 2
    finally:
        await client.close()
        await server.stop()
