"""The agent reports upward: readings from the bus reach two HJ 212 platforms."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.localservices import Mosquitto
from tests.agent.agent_harness import (
    AgentProcess,
    Watcher,
    pm_devices,
    start_servers,
    wait_until,
    write_site,
)
from tests.agent.hj212_platform import PlatformSim

pytestmark = pytest.mark.integration


def test_agent_uploads_realtime_pm10_to_two_platforms(tmp_path: Path, mosquitto: Mosquitto) -> None:
    servers = start_servers(pm_tcp_units=2)
    city = PlatformSim(mn="MN0001")
    district = PlatformSim(mn="MN0002", pw="222222")
    servers.sim.run(city.start())
    servers.sim.run(district.start())

    def realtime_pm10(platform: PlatformSim) -> list[dict[str, str]]:
        got = [r.values() for r in platform.uploads("2011") if "a34002-Rtd" in r.values()]
        return got

    def uplink(name: str, platform: PlatformSim, device: str) -> dict[str, object]:
        return {
            "type": "hj212",
            "name": name,
            "host": "127.0.0.1",
            "port": platform.port,
            "mn": platform.mn,
            "pw": platform.pw,
            "realtime_interval": "1s",
            "devices": [device],
        }

    devices = pm_devices("tcp-1", 2, interval=0.5)
    devices[1]["quality"] = {"mode": "stopped"}  # pm-2's site section is shut: flag F
    config = write_site(
        tmp_path / "site.yaml",
        mosquitto.port,
        servers,
        devices=devices,
        uplinks=[uplink("city", city, "pm-1"), uplink("district", district, "pm-2")],
    )
    watcher = Watcher(mosquitto.port).start()
    agent = AgentProcess(config).start()
    try:
        try:
            first = wait_until(lambda: realtime_pm10(city), 20, "real-time PM10 at the city")
            second = wait_until(
                lambda: realtime_pm10(district), 20, "real-time PM10 at the district"
            )
        except AssertionError:
            raise AssertionError(f"{city.received[-3:]}\n{agent.log()[-3000:]}") from None
        # generic-pm unit 1 serves pm10 from its counter (>= 10): a real value, flag N
        assert float(first[-1]["a34002-Rtd"]) >= 10
        assert first[-1]["a34002-Flag"] == "N"
        assert second[-1]["a34002-Flag"] == "F"
        header = city.uploads("2011")[-1].header
        assert header["ST"] == "39" and header["MN"] == "MN0001"
        assert district.uploads("2011")[-1].header["MN"] == "MN0002"
        # the gateway's retained status shows both platform links
        status = wait_until(
            lambda: (s := watcher.status()) and len(s.get("uplinks", {})) == 2 and s,
            10,
            "both uplinks in the gateway status",
        )
        assert status["uplinks"]["city"]["connected"] is True
        assert status["uplinks"]["district"]["connected"] is True
        assert city.problems == [] and district.problems == []
    finally:
        agent.stop()
        watcher.stop()
        servers.sim.run(city.stop())
        servers.sim.run(district.stop())
        servers.stop()
