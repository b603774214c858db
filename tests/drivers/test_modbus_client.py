"""The async client against the simulators over a real pty and real TCP sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def test_local_echo_of_the_adapter_is_skipped() -> None:
    server = RtuPtyServer([ProfileUnit(STATION, lambda: VALUES)], local_echo=True)
    path = await server.start()
    try:
        async with ModbusClient.rtu(path, baudrate=115200, local_echo=True) as client:
            assert (await client.read_device(STATION))["pm10"] == 133
        async with ModbusClient.rtu(path, baudrate=115200) as unaware:
            with pytest.raises(CrcError):  # its own request taken for the reply
                await unaware.read_registers(1, 0x01F4, 10, retries=0)
    finally:
        await server.stop()


async def test_first_request_waits_for_pause_after_connect() -> None:
    seen: list[float] = []

    class Recording(ProfileUnit):
        def refresh(self, now: float) -> None:
            seen.append(now)
            super().refresh(now)

    slow = resolve_profile("noise", {"pause_after_connect": 0.3})
    server = TcpServer([Recording(slow, lambda: {"noise": 60.0})])
    port = await server.start()
    try:
        before_connect = asyncio.get_running_loop().time()
        async with ModbusClient.tcp("127.0.0.1", port) as client:
            assert (await client.read_device(slow))["noise"] == 60.0
            assert seen[0] >= before_connect + 0.3  # a lower bound: a slow box cannot break it
            await client.read_device(slow)  # later polls do not wait again
            assert len(seen) == 2
    finally:
        await server.stop()


async def test_serial_port_vanishing_is_link_down(rtu: Setup) -> None:
    client, server, _ = rtu
    await server.stop()  # like a USB adapter pulled out: the pty is gone
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while client.connected and loop.time() < deadline:
        await asyncio.sleep(0.01)
    with pytest.raises(LinkDown):
        await client.read_device(STATION)


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


class _ScriptedTransport(asyncio.Transport):
    """Answers every write with the given byte chunks, each in its own loop turn."""

    def __init__(self, protocol: asyncio.Protocol, chunks: list[bytes]) -> None:
        super().__init__()
        self._protocol = protocol
        self._chunks = chunks
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        loop = asyncio.get_running_loop()
        for chunk in self._chunks:
            loop.call_soon(self._protocol.data_received, chunk)

    def close(self) -> None:
        self._closing = True

    def is_closing(self) -> bool:
        return self._closing


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


@settings(max_examples=60, deadline=None)
@given(
    framing=st.sampled_from(["rtu", "mbap"]),
    base=st.sampled_from(["valid", "exception", "random"]),
    noise=st.binary(max_size=40),
    edits=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=3),
    cut=st.none() | st.integers(0, 12),
    split=st.integers(1, 7),
)
def test_any_reply_bytes_give_values_or_a_driver_error(
    framing: str, base: str, noise: bytes, edits: list[tuple[int, int]], cut: int | None, split: int
) -> None:
    from drivers import modbus_pdu as pdu

    body = {"valid": bytes([3, 4, 0, 7, 0, 9]), "exception": bytes([0x83, 2])}.get(base)
    if body is None:
        reply = noise
    elif framing == "rtu":
        reply = _mutated(pdu.build_rtu(1, body), edits, cut)
    else:
        reply = _mutated(pdu.build_mbap(1, 1, body), edits, cut)
    chunks = [reply[i : i + split] for i in range(0, len(reply), split)]

    async def opener(factory: Any) -> tuple[asyncio.BaseTransport, object]:
        protocol = factory()
        transport = _ScriptedTransport(protocol, chunks)
        protocol.connection_made(transport)
        return transport, protocol

    async def run() -> None:
        client = ModbusClient("scripted", framing, opener)  # type: ignore[arg-type]
        await client.connect()
        try:
            words = await client.read_registers(1, 0, 2, timeout=0.02, retries=1)
        except DriverError:
            return
        finally:
            await client.close()
        assert len(words) == 2 and all(0 <= w <= 0xFFFF for w in words)
        if framing == "rtu" and len(edits) <= 1:
            # one corrupted byte is a burst the CRC always catches: only an intact reply
            # passes (MBAP has no checksum of its own; TCP guards the bytes)
            assert words == (7, 9)

    asyncio.run(run())
