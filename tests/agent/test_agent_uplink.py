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
from tests.agent.hj212_platform import PlatformSim

pytestmark = pytest.mark.integration


def test_agent_uploads_realtime_pm10_to_the_platform(tmp_path: Path, mosquitto: Mosquitto) -> None:
    servers = start_servers(pm_tcp_units=2)
    platform = PlatformSim()
    servers.sim.run(platform.start())

    def realtime_pm10() -> list[dict[str, str]]:
        return [r.values() for r in platform.uploads("2011") if "a34002-Rtd" in r.values()]

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
            realtime = wait_until(realtime_pm10, 20, "a real-time HJ 212 packet with PM10")
        except AssertionError:
            raise AssertionError(f"{platform.received[-3:]}\n{agent.log()[-3000:]}") from None
        last = realtime[-1]
        # generic-pm unit 1 serves pm10 from its counter (>= 10): a real value, flag N
        assert float(last["a34002-Rtd"]) >= 10
        assert last["a34002-Flag"] == "N"
        header = platform.uploads("2011")[-1].header
        assert header["ST"] == "39" and header["MN"] == "MN0001"
        assert platform.problems == []
    finally:
        agent.stop()
        servers.sim.run(platform.stop())
        servers.stop()
