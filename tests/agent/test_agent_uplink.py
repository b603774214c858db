"""The agent reports upward: readings from the bus reach an HJ 212 platform."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.localservices import Mosquitto
from tests.agent.agent_harness import (
    AgentProcess,
    pm_devices,
    start_servers,
    wait_until,
    write_site,
)
from tests.agent.test_uplink_platform import FakePlatform, check_frame, fields

pytestmark = pytest.mark.integration


def test_agent_uploads_realtime_pm10_to_the_platform(tmp_path: Path, mosquitto: Mosquitto) -> None:
    servers = start_servers(pm_tcp_units=2)
    platform = FakePlatform()
    servers.sim.run(platform.start())
    packets: list[dict[str, str]] = []

    def drain() -> list[dict[str, str]]:
        async def take() -> None:
            while not platform.received.empty():
                segment = check_frame(platform.received.get_nowait())
                packets.append({**fields(segment), "CP": segment.partition("CP=&&")[2]})

        servers.sim.run(take())
        return [f for f in packets if f.get("CN") == "2011" and "a34002-Rtd" in f.get("CP", "")]

    uplink = {
        "type": "hj212",
        "host": "127.0.0.1",
        "port": platform.port,
        "mn": "MN0001",
        "pw": "123456",
        "realtime_interval": "1s",
        "devices": ["pm-1"],
    }
    config = write_site(
        tmp_path / "site.yaml",
        mosquitto.port,
        servers,
        devices=pm_devices("tcp-1", 2, interval=0.5),
        uplinks=[uplink],
    )
    agent = AgentProcess(config).start()
    try:
        try:
            realtime = wait_until(drain, 20, "a real-time HJ 212 packet with PM10")
        except AssertionError:
            raise AssertionError(f"{packets[-3:]}\n{agent.log()[-3000:]}") from None
        cp = realtime[-1]["CP"]
        assert realtime[-1]["ST"] == "39" and realtime[-1]["MN"] == "MN0001"
        # generic-pm unit 1 serves pm10 from its counter (>= 10): a real value, flag N
        value = float(cp.split("a34002-Rtd=")[1].split(",")[0].split(";")[0])
        assert value >= 10
        assert "a34002-Flag=N" in cp
    finally:
        agent.stop()
        servers.sim.run(platform.stop())
        servers.stop()
