"""The fake site end to end: sensors read over Modbus RTU on ptys, cannons switched over the
relay bus pull the plume down, UART sensors stream frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator

import pytest

from drivers.modbus_client import ModbusClient
from drivers.profiles import resolve_profile
from drivers.relay import RelayOutput
from drivers.sim.site import FakeSite, SiteEndpoints

STATION = resolve_profile("dust-station")
GATE_PM = resolve_profile("generic-pm")
RELAYS = resolve_profile("relay-8ch")


@pytest.fixture(params=["rtu", "tcp"])
async def site(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeSite, SiteEndpoints]]:
    # a huge tick: the model only moves when the test calls advance()
    fake = FakeSite(seed=5, relay_transport=request.param, tick=3600.0)
    endpoints = await fake.start()
    try:
        yield fake, endpoints
    finally:
        await fake.stop()


def _relay_client(endpoints: SiteEndpoints) -> ModbusClient:
    if endpoints.relay_tcp is not None:
        return ModbusClient.tcp(*endpoints.relay_tcp)
    assert endpoints.relay_bus is not None
    return ModbusClient.rtu(endpoints.relay_bus)


async def test_dust_event_and_cannons_through_the_wire(
    site: tuple[FakeSite, SiteEndpoints],
) -> None:
    fake, endpoints = site
    sensors = ModbusClient.rtu(endpoints.sensor_bus, baudrate=9600)
    relays = _relay_client(endpoints)
    await sensors.connect()
    await relays.connect()
    try:
        fake.advance(30)
        quiet = await sensors.read_device(STATION)
        assert quiet["pm10"] == pytest.approx(fake.readings()["pm10"], abs=1)
        assert 40 <= quiet["pm10"] <= 80
        gate = await sensors.read_device(GATE_PM)
        assert gate["pm10"] == pytest.approx(fake.readings()["pm10"] * 0.92, abs=1)

        fake.trigger_event()
        fake.advance(90)
        dusty = await sensors.read_device(STATION)
        assert dusty["pm10"] > 200
        assert dusty["noise"] > quiet["noise"] + 10

        cannons = [RelayOutput.from_profile(relays, RELAYS, ch) for ch in range(2)]
        for cannon in cannons:
            assert await cannon.switch(True) is True
        assert fake.active_cannons() == 2
        fake.advance(60)
        assert (await sensors.read_device(STATION))["pm10"] < 80

        for cannon in cannons:
            assert await cannon.switch(False) is False
        assert fake.active_cannons() == 0
        assert await relays.read_device(RELAYS) == {f"relay{i}": False for i in range(1, 9)}
    finally:
        await sensors.close()
        await relays.close()


def test_agent_config_points_at_the_endpoints() -> None:
    endpoints = SiteEndpoints(
        sensor_bus="/dev/pts/7", relay_tcp=("127.0.0.1", 1502), uart={"sds011": "/dev/pts/9"}
    )
    config = endpoints.agent_config()
    assert config["buses"][0]["port"] == "/dev/pts/7"
    assert config["buses"][1] == {"id": "relays", "type": "tcp", "host": "127.0.0.1", "port": 1502}
    assert [d["id"] for d in config["devices"]] == ["station", "gate-pm", "sds011"]
    assert [(a["id"], a["channel"]) for a in config["actuators"]] == [
        ("cannon-1", 0),
        ("cannon-2", 1),
    ]


async def test_uart_sensors_stream_frames() -> None:
    fake = FakeSite(seed=2, tick=3600.0)
    endpoints = await fake.start()
    try:
        if not endpoints.uart:
            pytest.skip("drivers.sim.uart not available")
        fd = os.open(endpoints.uart["sds011"], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            data = b""
            deadline = asyncio.get_running_loop().time() + 10
            while b"\xaa\xc0" not in data and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
                with contextlib.suppress(BlockingIOError):
                    data += os.read(fd, 64)
            assert b"\xaa\xc0" in data  # an SDS011 data frame header
        finally:
            os.close(fd)
    finally:
        await fake.stop()
