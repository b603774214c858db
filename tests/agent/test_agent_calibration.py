"""Calibration end to end: a technician calibrates, the agent publishes calibrated values with
the factors in force, and the raw value is recovered from the message.

A generic Modbus PM sensor (Modbus TCP simulator) calibrated in site.yaml, and an SDS011 on a
pty calibrated with ``dustgate calibrate`` (two co-location pairs), both read by the real
agent process into a real mosquitto.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from agent_harness import AgentProcess, Watcher, start_servers, wait_until, write_site

from drivers.sim.uart import Sds011Sim, open_pty_sim
from gateway import protocol as p
from gateway.cli import main
from gateway.localservices import Mosquitto

SDS_PM = (0.0, 35.2, 71.9)  # what the SDS011 measures: (pm1, pm25, pm10)


def test_calibrated_readings_carry_their_factors_and_the_raw_value_is_recoverable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    servers = start_servers(pm_tcp_units=1)

    async def start_sds() -> tuple[Sds011Sim, str]:
        sim, path = open_pty_sim("sds011", lambda: SDS_PM, period=0.3)
        sim.start()
        return sim, path  # type: ignore[return-value]

    sds, sds_path = servers.sim.run(start_sds())
    devices = [
        {
            "id": "pm-1",
            "bus": "tcp-1",
            "profile": "generic-pm",
            "slave_id": 1,
            "interval": 0.5,
            "calibration": {"pm10": {"scale": 0.5, "offset": 3.0, "reference": "BJ-07"}},
        },
        {"id": "sds", "driver": "sds011", "port": sds_path, "interval": 0.5},
    ]
    cfg = write_site(tmp_path / "site.yaml", broker.port, servers, devices=devices)
    pairs = ["--pair", "20:25", "--pair", "60:75"]  # (published, reference): x1.25
    who = ["--reference", "BJ-07", "--by", "Li Wei", "--yes"]
    rc = main(["calibrate", "--config", str(cfg), "sds", "pm25", *pairs, *who])
    assert rc == 0, capsys.readouterr().err
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        wait_until(
            lambda: len(watcher.telemetry("pm-1")) >= 3 and len(watcher.telemetry("sds")) >= 3,
            20,
            "readings of both devices",
        )
    finally:
        agent.stop()
        watcher.stop()
        servers.sim.run(sds.stop())
        servers.stop()
        broker.stop()
    pm = [p.decode(p.Telemetry, m.payload) for m in watcher.on("/pm-1/telemetry")]
    for msg in pm:
        assert msg.status is p.Status.OK and msg.cal == {"pm10": (0.5, 3.0)}
        raw = msg.raw_value("pm10")  # the simulator's pm10: 20 + n, n = 0..49
        assert raw == round(raw) and 20 <= raw <= 69
        assert msg.values["pm10"] == raw * 0.5 + 3.0
        assert msg.raw_value("pm25") == msg.values["pm25"]  # not calibrated: as read
    sds_msgs = [p.decode(p.Telemetry, m.payload) for m in watcher.on("/sds/telemetry")]
    for msg in sds_msgs:
        assert msg.cal == {"pm25": (1.25, 0.0)}
        assert math.isclose(msg.values["pm25"], 44.0) and msg.values["pm10"] == 71.9
        assert math.isclose(msg.raw_value("pm25"), 35.2)
