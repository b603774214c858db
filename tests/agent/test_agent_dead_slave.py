"""One RS485 slave stops answering: the others keep their rhythm; it goes offline and comes back.

Four units on one simulated RTU bus (a pty), polled at 1 Hz with a 0.3 s timeout. Unit 3 is
taken off the bus (it stays silent, as a dead slave does) and later put back. The bus's
``backoff_max`` is 3 s so that the recovery is seen quickly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent_harness import AgentProcess, Watcher, pm_devices, start_servers, wait_until, write_site

from gateway.localservices import Mosquitto

DEVICES = 4
DEAD = 3
WINDOW_S = 12.0


def health(watcher: Watcher, dev: str) -> str | None:
    status = watcher.status()
    return status["devices"].get(dev, {}).get("state") if status else None


def mean_interval(readings: list[dict[str, Any]], t0: float, t1: float) -> tuple[float, int]:
    ts = sorted(r["ts"] / 1000 for r in readings if t0 <= r["ts"] / 1000 <= t1)
    return (ts[-1] - ts[0]) / (len(ts) - 1), len(ts)


def test_dead_slave_costs_the_others_nothing_and_recovers(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    servers = start_servers(pm_rtu_units=DEVICES)
    assert servers.pm_rtu is not None
    rtu = servers.pm_rtu
    cfg = write_site(
        tmp_path / "site.yaml",
        broker.port,
        servers,
        devices=pm_devices("rs485-1", DEVICES, 1.0, timeout=0.3, retries=0),
    )
    # the knob under test: a dead slave is retried at least every 3 s
    text = cfg.read_text().replace("type: rtu\n", "type: rtu\n  backoff_max: 3s\n")
    cfg.write_text(text)
    ids = [f"pm-{i}" for i in range(1, DEVICES + 1)]
    dead = f"pm-{DEAD}"
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: all(len(watcher.telemetry(d)) >= 3 for d in ids), 20, "readings")
        wait_until(lambda: health(watcher, dead) == "online", 5, f"{dead} online")
        unit = servers.sim.call(lambda: rtu.by_id.pop(DEAD))
        t_dead = time.time()
        wait_until(lambda: health(watcher, dead) == "offline", 20, f"{dead} offline in status")
        wait_until(lambda: time.time() > t_dead + WINDOW_S + 1.5, WINDOW_S + 5, "the window")
        for dev in ids:
            if dev == dead:
                continue
            mean, n = mean_interval(watcher.telemetry(dev), t_dead, t_dead + WINDOW_S)
            assert abs(mean - 1.0) <= 0.1, f"{dev}: mean poll interval {mean:.3f}s over {n}"
            assert health(watcher, dev) == "online"
        errors = [r for r in watcher.telemetry(dead) if r["ts"] / 1000 > t_dead]
        assert errors and all(r["status"] == "comm_error" for r in errors)
        # every reading, failed ones too, says what it stands for: the device's interval
        assert all(r["interval_s"] == 1.0 for d in ids for r in watcher.telemetry(d))
        # backoff, not hammering: at most one attempt per second even at the start
        assert len(errors) <= WINDOW_S / 2, f"{len(errors)} attempts on the dead slave"

        servers.sim.call(lambda: rtu.by_id.__setitem__(DEAD, unit))
        t_back = time.time()
        wait_until(lambda: health(watcher, dead) == "online", 10, f"{dead} online again")
        back = wait_until(
            lambda: [
                r
                for r in watcher.telemetry(dead)
                if r["status"] == "ok" and r["ts"] / 1000 > t_back
            ],
            5,
            f"good readings from {dead}",
        )
        assert back[0]["ts"] / 1000 - t_back <= 3.0 * 1.2 + 1.0  # backoff_max (+ jitter)
    finally:
        agent.stop()
        watcher.stop()
        servers.stop()
        broker.stop()


def test_rebooted_tcp_device_server_is_reconnected(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    servers = start_servers(pm_tcp_units=2)
    tcp = servers.pm_tcp
    assert tcp is not None
    cfg = write_site(
        tmp_path / "site.yaml", broker.port, servers, devices=pm_devices("tcp-1", 2, 0.5)
    )
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: len(watcher.telemetry("pm-1")) >= 3, 20, "readings")
        servers.sim.run(tcp.stop())  # the device server reboots: connections drop
        t_down = time.time()
        wait_until(lambda: health(watcher, "pm-1") == "offline", 15, "pm-1 offline")
        servers.sim.run(tcp.start())  # same port
        t_up = time.time()
        for dev in ("pm-1", "pm-2"):
            wait_until(
                lambda d=dev: [
                    r for r in watcher.telemetry(d) if r["status"] == "ok" and r["ts"] / 1000 > t_up
                ],
                15,
                f"{dev} read again after the reboot",
            )
        wait_until(lambda: health(watcher, "pm-1") == "online", 5, "pm-1 online")
        down = [r for r in watcher.telemetry("pm-2") if t_down < r["ts"] / 1000 < t_up]
        assert down and all(r["status"] == "comm_error" for r in down)
        assert agent.running
    finally:
        agent.stop()
        watcher.stop()
        servers.stop()
        broker.stop()
