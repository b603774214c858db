"""The async client against the simulators over a real pty and real TCP sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.errors import (
    CrcError,
    DeviceTimeout,
    DriverError,
    FrameError,
    LinkDown,
    ModbusExceptionResponse,
    WrongSlave,
)
from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.sim.modbus_server import RtuPtyServer, TcpServer
from drivers.sim.units import ProfileUnit

STATION = resolve_profile("dust-station", {"timeout": 0.5, "retries": 0})
VALUES: dict[str, float] = {
    "wind_speed": 3.4,
    "wind_force": 3,
    "wind_sector": 5,
    "wind_dir": 225,
    "rh": 61.2,
    "temp": -2.5,
    "noise": 71.3,
    "pm25": 48,
    "pm10": 133,
    "pressure": 1009,
}

Setup = tuple[ModbusClient, Any, dict[str, float]]


async def _start(kind: str) -> tuple[ModbusClient, Any, dict[str, float]]:
    values = dict(VALUES)
    unit = ProfileUnit(STATION, lambda: values)
    server: RtuPtyServer | TcpServer
    if kind == "rtu":
        server = RtuPtyServer([unit])
        client = ModbusClient.rtu(await server.start(), baudrate=115200)
    else:
        server = TcpServer([unit], framing="mbap" if kind == "tcp" else "rtu")
        port = await server.start()
        if kind == "tcp":
            client = ModbusClient.tcp("127.0.0.1", port)
        else:
            client = ModbusClient.rtu_over_tcp("127.0.0.1", port)
    await client.connect()
    return client, server, values


@pytest.fixture(params=["rtu", "tcp", "rtu_over_tcp"])
async def link(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    client, server, values = await _start(request.param)
    try:
        yield client, server, values
    finally:
        await client.close()
        await server.stop()


@pytest.fixture
async def rtu() -> AsyncIterator[Setup]:
    client, server, values = await _start("rtu")
    try:
        yield client, server, values
    finally:
        await client.close()
        await server.stop()


async def test_reads_the_simulators_current_values(link: Setup) -> None:
    client, _server, values = link
    assert await client.read_device(STATION) == pytest.approx(VALUES)
    values["pm10"] = 402
    values["temp"] = 31.7
    got = await client.read_device(STATION)
    assert got["pm10"] == 402
    assert got["temp"] == pytest.approx(31.7)


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("bad_crc", CrcError),
        ("wrong_slave", WrongSlave),
        ("truncated", FrameError),
        ("garbage", FrameError),
        ("silent", DeviceTimeout),
    ],
)
async def test_faulty_replies_give_typed_errors(
    rtu: Setup, mode: str, error: type[DriverError]
) -> None:
    client, server, _ = rtu
    server.faults.mode = mode
    with pytest.raises(error):
        await client.read_registers(1, 0x01F4, 10, timeout=0.3, retries=0)
    server.faults.mode = None
    # the link is usable again right away: stale bytes are discarded
    assert (await client.read_registers(1, 0x01FC, 1, timeout=1.0))[0] == 133


async def test_exception_reply_is_not_retried(link: Setup) -> None:
    client, server, _ = link
    server.faults.mode, server.faults.count = "exception", 1
    with pytest.raises(ModbusExceptionResponse) as info:
        await client.read_registers(1, 0x01F4, 2, retries=3)
    assert info.value.code == 4
    assert server.requests == 1


async def test_one_bad_reply_is_retried(link: Setup) -> None:
    client, server, _ = link
    server.faults.mode, server.faults.count = "wrong_slave", 1
    words = await client.read_registers(1, 0x01FB, 2, timeout=0.5, retries=1)
    assert words == (48, 133)
    assert server.requests == 2


async def test_absent_unit_times_out_bounded(link: Setup) -> None:
    client, _server, _ = link
    if client.framing == "mbap":
        # a TCP gateway answers for an absent unit with exception 0x0B
        with pytest.raises(ModbusExceptionResponse) as info:
            await client.read_registers(9, 0, 1, timeout=0.2, retries=1)
        assert info.value.code == 0x0B
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeviceTimeout):
        await client.read_registers(9, 0, 1, timeout=0.2, retries=1)
    assert loop.time() - started < 5.0  # bounded, generous for a loaded machine


async def test_tcp_server_restart_then_reconnect() -> None:
    client, server, _ = await _start("tcp")
    try:
        assert (await client.read_registers(1, 0x01FC, 1))[0] == 133
        await server.stop()
        deadline = asyncio.get_running_loop().time() + 5
        while client.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        with pytest.raises(LinkDown):
            await client.read_registers(1, 0x01FC, 1)
        with pytest.raises(LinkDown):
            await client.connect()  # nobody listening
        await server.start()  # same port
        await client.connect()
        assert (await client.read_registers(1, 0x01FC, 1))[0] == 133
    finally:
        await client.close()
        await server.stop()


async def test_serial_close_and_reopen(rtu: Setup) -> None:
    client, _server, _ = rtu
    await client.close()
    assert not client.connected
    with pytest.raises(LinkDown):
        await client.read_device(STATION)
    await client.connect()
    assert (await client.read_device(STATION))["pm10"] == 133


async def test_unopenable_links_raise_link_down() -> None:
    with pytest.raises(LinkDown):
        await ModbusClient.rtu("/dev/does-not-exist-dustgate").connect()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LinkDown):
        await ModbusClient.tcp("127.0.0.1", port).connect()


async def test_bad_arguments_are_driver_errors(link: Setup) -> None:
    client, _server, _ = link
    with pytest.raises(DriverError):
        await client.read_registers(1, 0, 200)
    with pytest.raises(DriverError):
        await client.write_register(1, 0, -5)
    with pytest.raises(DriverError):
        await client.read_registers(256, 0, 1)


async def test_concurrent_callers_are_serialised(link: Setup) -> None:
    client, server, _ = link
    results = await asyncio.gather(*(client.read_device(STATION) for _ in range(8)))
    assert all(r["pm10"] == 133 for r in results)
    assert server.requests == 8
