"""Lease-based actuation end to end: real mosquitto, the agent as a process, a simulated relay.

Observed on both sides: the relay board's coil (the simulator) and the retained ``state``
topic / ``ack`` messages on the broker.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import (
    AgentProcess,
    Servers,
    Watcher,
    command,
    start_servers,
    wait_until,
    write_site,
)

from gateway.localservices import Mosquitto


def actuator(act_id: str, channel: int, **limits: Any) -> dict[str, Any]:
    base = {"min_off": "200ms", "max_on": "60s", "broker_grace": "60s"}
    return {
        "id": act_id,
        "bus": "relays",
        "profile": "relay-8ch",
        "channel": channel,
        "limits": {**base, **limits},
    }


ACTUATORS = [
    actuator("c-lease", 0),
    actuator("c-maxon", 1, max_on="4s", min_off="3s"),
    actuator("c-minoff", 2, min_off="4s"),
    actuator("c-grace", 3, broker_grace="3s"),
    {**actuator("c-timer", 4), "hardware_timer": "2s"},
]


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = Mosquitto(tmp / "mq").start()
        self.servers: Servers = start_servers(relay=True)
        cfg = write_site(tmp / "site.yaml", self.broker.port, self.servers, actuators=ACTUATORS)
        self.watcher = Watcher(self.broker.port).start()
        self.agent = AgentProcess(cfg).start()
        wait_until(lambda: self.state("c-lease"), 15, "retained state of c-lease")

    def state(self, act: str) -> dict[str, Any] | None:
        return self.watcher.last(f"/{act}/state")

    def send(self, act: str, cmd_id: str, action: str, lease_s: float | None = None) -> None:
        self.watcher.publish(*command(act, cmd_id, action, lease_s))

    def switch_on(
        self,
        act: str,
        cmd_id: str,
        lease_s: float,
        within: float = 10.0,
        retry_on: tuple[str, ...] = ("min_off",),
    ) -> None:
        """ON, repeated while min_off (which also runs from start-up) refuses it."""
        deadline = time.monotonic() + within
        for n in range(1000):
            attempt = f"{cmd_id}-{n}" if n else cmd_id
            self.send(act, attempt, "on", lease_s)
            ack = self.watcher.ack_for(act, attempt)
            if ack["accepted"]:
                return
            assert ack["reason"].startswith(retry_on), ack
            assert time.monotonic() < deadline, f"ON still refused: {ack}"
            time.sleep(0.2)

    def close(self) -> None:
        self.agent.stop()
        self.watcher.stop()
        self.servers.stop()
        self.broker.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_lease_runs_out_without_renewal(rig: Rig) -> None:
    rig.switch_on("c-lease", "on-1", 5)
    wait_until(lambda: rig.servers.coil(0), 5, "relay 0 on")
    t_on = time.monotonic()
    on_state = wait_until(
        lambda: (s := rig.state("c-lease")) and s["state"] == "on" and s, 5, "state on"
    )
    assert on_state["cmd_id"].startswith("on-1") and on_state["source"] == "rule"
    assert on_state["lease_until"] > on_state["since"]
    wait_until(lambda: not rig.servers.coil(0), 10, "relay 0 off after the lease")
    held = time.monotonic() - t_on
    assert 4.0 <= held <= 7.0, f"relay held {held:.1f}s for a 5s lease"
    off_state = wait_until(
        lambda: (s := rig.state("c-lease")) and s["state"] == "off" and s, 5, "state off"
    )
    assert off_state["reason"] == "lease expired"
    assert off_state["readback_ok"] is True


def test_max_on_holds_under_endless_renewals(rig: Rig) -> None:
    rig.switch_on("c-maxon", "r0", 2)
    t0 = time.monotonic()
    samples: list[tuple[float, bool]] = []
    n = 0
    while time.monotonic() - t0 < 10:  # renew every 0.5 s, sample the coil every 0.1 s
        if len(samples) % 5 == 0:
            n += 1
            rig.send("c-maxon", f"r{n}", "on", 2)
        samples.append((time.monotonic() - t0, rig.servers.coil(1)))
        time.sleep(0.1)
    runs, start = [], 0.0  # continuous ON runs as seen on the coil
    for (_, prev), (t, on) in itertools.pairwise(samples):
        if on and not prev:
            start = t
        if prev and not on:
            runs.append(t - start)
    assert runs, "the relay never went off under endless renewals"
    assert runs[0] <= 5.0, f"first run lasted {runs[0]:.1f}s with max_on 4s"
    assert max(runs) <= 5.0, runs
    acks = [rig.watcher.ack_for("c-maxon", f"r{i}") for i in range(1, n + 1)]
    refused = [a for a in acks if not a["accepted"]]
    assert refused, "no renewal was refused after max_on"
    assert all(a["reason"].startswith("max_on reached") for a in refused), refused
    capped = [a for a in acks if a["accepted"] and "max_on" in a["reason"]]
    assert capped, "no renewal said its lease was capped by max_on"


def test_min_off_refuses_an_early_on(rig: Rig) -> None:
    rig.switch_on("c-minoff", "first", 30)
    wait_until(lambda: rig.servers.coil(2), 5, "relay 2 on")
    rig.send("c-minoff", "stop", "off")
    assert rig.watcher.ack_for("c-minoff", "stop")["accepted"]
    wait_until(lambda: not rig.servers.coil(2), 5, "relay 2 off")
    rig.send("c-minoff", "early", "on", 30)
    ack = rig.watcher.ack_for("c-minoff", "early")
    assert ack["accepted"] is False
    assert "min_off" in ack["reason"], ack
    time.sleep(0.5)  # the refusal must not have touched the relay
    assert not rig.servers.coil(2)
    state = rig.state("c-minoff")
    assert state is not None and state["state"] == "off"


def test_broker_loss_switches_off_after_grace(rig: Rig) -> None:
    rig.switch_on("c-grace", "g1", 60)
    wait_until(lambda: rig.servers.coil(3), 5, "relay 3 on")
    rig.broker.kill()
    t_kill = time.monotonic()
    wait_until(lambda: not rig.servers.coil(3), 10, "relay 3 off after broker_grace")
    held = time.monotonic() - t_kill
    assert 2.5 <= held <= 6.0, f"off {held:.1f}s after the broker died (grace 3s)"
    assert rig.servers.coil(0) is False
    # the broker comes back: the retained state says why the relay is off
    rig.broker.start()
    state = wait_until(
        lambda: (s := rig.state("c-grace")) and s["state"] == "off" and s, 15, "state after grace"
    )
    assert state["source"] == "failsafe" and "broker" in state["reason"], state


def test_shutdown_writes_off_to_the_relay(rig: Rig) -> None:
    rig.switch_on("c-lease", "s1", 60)
    wait_until(lambda: rig.servers.coil(0), 5, "relay 0 on")
    assert rig.agent.terminate() == 0
    assert not rig.servers.coil(0), "relay left ON after SIGTERM"
    state = wait_until(
        lambda: (s := rig.state("c-lease")) and s["state"] == "off" and s, 5, "state off"
    )
    assert state["reason"] == "shutdown"
    status = rig.watcher.status()
    assert status is not None and status["state"] == "offline"


def test_losing_the_relay_bus_is_failsafe_off(rig: Rig) -> None:
    rig.switch_on("c-lease", "b1", 60)
    wait_until(lambda: rig.servers.coil(0), 5, "relay 0 on")
    relay = rig.servers.relay
    assert relay is not None
    rig.servers.sim.run(relay.stop())  # the relay board's device server goes away
    state = wait_until(
        lambda: (s := rig.state("c-lease")) and s["state"] == "off" and s, 10, "failsafe off"
    )
    assert state["source"] == "failsafe" and state["reason"] == "bus down", state
    rig.send("c-lease", "while-down", "on", 60)
    ack = rig.watcher.ack_for("c-lease", "while-down")
    assert ack["accepted"] is False and ack["reason"] == "bus down"
    rig.servers.sim.run(relay.start())  # back on the same port: the agent reconnects
    wait_until(lambda: not rig.servers.coil(0), 15, "OFF written once the bus is back")
    # the machine sees the bus back at its next tick (0.5 s)
    rig.switch_on("c-lease", "b2", 5, retry_on=("min_off", "bus down"))
    wait_until(lambda: rig.servers.coil(0), 5, "relay 0 on again")


def test_hardware_timer_drops_the_relay_when_the_agent_dies(rig: Rig) -> None:
    rig.switch_on("c-timer", "t1", 60)
    wait_until(lambda: rig.servers.coil(4), 5, "relay 4 on")
    time.sleep(2.5)  # longer than the board's timer: the agent must have re-armed it
    assert rig.servers.coil(4), "the agent did not re-arm the hardware timer"
    rig.agent.kill()
    t_kill = time.monotonic()
    wait_until(lambda: not rig.servers.coil(4), 5, "the board's own timer to switch off")
    assert time.monotonic() - t_kill <= 2.5
