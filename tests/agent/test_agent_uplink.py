"""The agent reports upward: readings from the bus reach two HJ 212 platforms."""

from __future__ import annotations

import itertools
import time
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


def _adversarial_garbage(size: int) -> bytes:
    """What made the old stream parser quadratic: '##9999' (a 10 kB claim) every
    16 bytes of printable text, and '##0000' candidates back to back."""
    decoys = (b"##9999" + b"a" * 10) * (size // 32)
    return decoys + b"##0000" * (size // 12)


def test_agent_polls_on_time_while_a_platform_floods_it_with_garbage(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    servers = start_servers(pm_tcp_units=2)
    city = PlatformSim(mn="MN0001")
    servers.sim.run(city.start())
    uplink = {
        "type": "hj212",
        "name": "city",
        "host": "127.0.0.1",
        "port": city.port,
        "mn": city.mn,
        "pw": city.pw,
        "realtime_interval": "1s",
        "devices": ["pm-1"],
    }
    interval = 0.5
    config = write_site(
        tmp_path / "site.yaml",
        mosquitto.port,
        servers,
        devices=pm_devices("tcp-1", 2, interval=interval),
        uplinks=[uplink],
    )
    watcher = Watcher(mosquitto.port).start()
    agent = AgentProcess(config).start()
    try:
        wait_until(lambda: city.connections == 1 and city.uploads("2011"), 20, "the link up")
        wait_until(lambda: len(watcher.telemetry("pm-1")) >= 4, 20, "polling under way")
        garbage = _adversarial_garbage(1 << 20)  # 1 MB, the old parser's hours of CPU
        step = 64 * 1024
        t0 = time.time()
        for i in range(0, len(garbage), step):
            servers.sim.call(lambda chunk=garbage[i : i + step]: city.send(chunk))  # type: ignore[misc]
            time.sleep(0.1)
        qn = "20261127100106000"
        servers.sim.call(lambda: city.request(qn, "1011"))
        wait_until(lambda: len(city.answers_to(qn)) == 3, 10, "the answer after the garbage")
        t1 = time.time()
        for dev in ("pm-1", "pm-2"):
            wait_until(
                lambda d=dev: any(r["ts"] / 1000 >= t1 for r in watcher.telemetry(d)),  # type: ignore[misc]
                10,
                f"{dev} read after the garbage",
            )
        for dev in ("pm-1", "pm-2"):
            ts = sorted(r["ts"] / 1000 for r in watcher.telemetry(dev) if t0 <= r["ts"] / 1000)
            gaps = [b - a for a, b in itertools.pairwise(ts)]
            assert ts and ts[-1] >= t1 and len(gaps) >= (t1 - t0) / interval - 2, (dev, ts)
            off = sorted(abs(g - interval) / interval for g in gaps)
            p95 = off[int(0.95 * (len(off) - 1))]
            assert p95 <= 0.10 and max(gaps) <= 2 * interval, f"{dev}: {gaps}"
        assert city.connections == 1  # the session was kept through all of it
        log = agent.log()
        assert log.count("bad data from platform") == 1, log[-3000:]  # once a minute
        assert "Traceback" not in log
    finally:
        agent.stop()
        watcher.stop()
        servers.sim.run(city.stop())
        servers.stop()
