"""``dustgate actuate`` and ``dustgate status --once`` against a running agent and broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_harness import (
    ROOT,
    SITE,
    AgentProcess,
    Servers,
    Watcher,
    command,
    pm_devices,
    start_servers,
    wait_until,
    write_site,
)

from gateway import protocol as p
from gateway.localservices import Mosquitto
from gateway.statusview import View, render

ACT = "cannon"


@dataclass
class Rig:
    broker: Mosquitto
    servers: Servers
    watcher: Watcher
    agent: AgentProcess
    config: Path

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("cli")
    broker = Mosquitto(tmp / "mq").start()
    servers = start_servers(pm_tcp_units=2, relay=True)
    acts = [
        {
            "id": ACT,
            "bus": "relays",
            "profile": "relay-8ch",
            "channel": 0,
            "limits": {"min_off": "2s", "max_lease": "10m"},
        }
    ]
    cfg = write_site(
        tmp / "site.yaml",
        broker.port,
        servers,
        devices=pm_devices("tcp-1", 2, 0.5),
        actuators=acts,
    )
    watcher = Watcher(broker.port).start()
    rig = Rig(broker, servers, watcher, AgentProcess(cfg).start(), cfg)
    try:
        # min_off also runs from start-up
        wait_until(lambda: (s := watcher.status()) and s["uptime_s"] >= 2.2, 20, "agent up 2 s")
        yield rig
    finally:
        rig.agent.stop()  # a test may have replaced it with a restarted agent
        watcher.stop()
        servers.stop()
        broker.stop()


def test_actuate_on_goes_through_the_agent_and_its_limits(rig: Rig) -> None:
    res = rig.cli("actuate", f"{SITE}/{ACT}", "on", "--for", "1h", "--config", str(rig.config))
    assert res.returncode == 0, res.stderr
    # accepted, and the agent's max_lease (10m) shortened the lease
    assert res.stdout.startswith("accepted:") and "max_lease" in res.stdout, res.stdout
    wait_until(lambda: rig.servers.coil(0), 5, "relay on")
    state = wait_until(
        lambda: (s := rig.watcher.last(f"/{ACT}/state")) and s["state"] == "on" and s, 5, "on"
    )
    assert state["source"] == "manual"
    assert 590_000 <= state["lease_until"] - state["since"] <= 601_000
    cmd = [m.json() for m in rig.watcher.on(f"/{ACT}/cmd")][-1]
    assert cmd["source"] == "manual" and cmd["lease_s"] == 3600

    res = rig.cli(
        "actuate", f"{SITE}/{ACT}", "off", "--host", "127.0.0.1", "--port", str(rig.broker.port)
    )
    assert res.returncode == 0 and res.stdout.startswith("accepted:"), res
    wait_until(lambda: not rig.servers.coil(0), 5, "relay off")

    # min_off (2s) refuses an ON right after the OFF: exit 1 with the agent's reason
    res = rig.cli("actuate", f"{SITE}/{ACT}", "on", "--for", "30s", "--config", str(rig.config))
    assert res.returncode == 1
    assert res.stdout.startswith("refused: min_off"), res.stdout
    assert not rig.servers.coil(0)


def test_actuate_without_an_agent_to_answer_fails(rig: Rig) -> None:
    res = rig.cli(
        "actuate", f"{SITE}/no-such", "off", "--config", str(rig.config), "--timeout", "1s"
    )
    assert res.returncode == 1 and "no answer" in res.stderr, res
    res = rig.cli("actuate", "Not A Site/x", "off", "--port", str(rig.broker.port))
    assert res.returncode == 2 and "site" in res.stderr
    res = rig.cli("actuate", f"{SITE}/{ACT}", "on", "--port", "1", "--timeout", "2s")
    assert res.returncode == 1 and "broker" in res.stderr


def test_status_once_shows_gateway_devices_and_actuators(rig: Rig) -> None:
    wait_until(lambda: rig.servers.coil(0) is False, 5, "relay off")
    wait_until(
        lambda: (
            rig.cli(
                "actuate", f"{SITE}/{ACT}", "on", "--for", "5m", "--config", str(rig.config)
            ).returncode
            == 0
        ),
        10,
        "an accepted ON",
        step=0.5,
    )
    res = rig.cli("status", "--config", str(rig.config), "--once", "--wait", "1.5s")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"site {SITE}" in out
    assert "gateway gw: ONLINE" in out and "backlog" in out
    lines = out.splitlines()
    pm1 = next(line for line in lines if line.strip().startswith("pm-1 "))
    assert "online" in pm1 and "pm25=" in pm1
    cannon = next(line for line in lines if line.strip().startswith(f"{ACT} "))
    assert " ON " in cannon and "manual" in cannon
    lease_left = int(cannon.split()[3].rstrip("s"))
    assert 280 <= lease_left <= 300
    # all sites when no --config: ours is among them
    res = rig.cli("status", "--port", str(rig.broker.port), "--once", "--wait", "1s")
    assert res.returncode == 0 and f"site {SITE}" in res.stdout


def test_status_once_with_no_site_says_so(tmp_path: Path, rig: Rig) -> None:
    res = rig.cli(
        "status", "--port", str(rig.broker.port), "--site", "nobody", "--once", "--wait", "0.5s"
    )
    assert res.returncode == 1
    assert "no dustgate site" in res.stdout


def test_render_is_pure_and_skips_junk() -> None:
    view = View()
    view.feed("dustgate/v1/s1/gateway/gw/status", b"not json")
    view.feed("elsewhere/topic", b"{}")
    t = p.Telemetry(ts=1_000_000, seq=3, values={"pm10": 88.5}, status=p.Status.OK)
    view.feed(p.telemetry_topic("s1", "dev"), p.encode(t))
    older = p.Telemetry(ts=999_000, seq=2, values={"pm10": 1.0}, status=p.Status.OK)
    view.feed(p.telemetry_topic("s1", "dev"), p.encode(older))  # late duplicate: ignored
    st = p.ActuatorState(state="on", since=990_000, source="rule", lease_until=1_030_000)
    view.feed(p.state_topic("s1", "fog"), p.encode(st))
    assert view.ignored == 2
    out = render(view, now=1_002.0)
    dev = next(line for line in out.splitlines() if line.strip().startswith("dev "))
    assert "pm10=88.5" in dev and "2.0s" in dev
    fog = next(line for line in out.splitlines() if line.strip().startswith("fog "))
    assert fog.split()[1:4] == ["ON", "rule", "28s"]


def test_a_manual_command_expires_if_the_agent_is_away(rig: Rig) -> None:
    # runs last: it restarts the module's agent
    assert rig.agent.terminate() == 0
    res = rig.cli("actuate", f"{SITE}/{ACT}", "on", "--for", "5m", "--config", str(rig.config),
                  "--timeout", "1s")  # fmt: skip
    assert res.returncode == 1 and "no answer" in res.stderr
    cmd_id = [m.json() for m in rig.watcher.on(f"/{ACT}/cmd")][-1]["id"]
    time.sleep(1.5)  # past the command's expiry on the broker
    rig.agent = AgentProcess(rig.config).start()  # same client id: its session is still there
    wait_until(
        lambda: any(not m.retain and m.json().get("state") == "online"
                    for m in rig.watcher.on("/gateway/gw/status")[-3:]),
        15,
        "the agent back online",
    )  # fmt: skip
    rig.watcher.publish(*command(ACT, "marker", "off"))
    rig.watcher.ack_for(ACT, "marker")
    assert [a for a in rig.watcher.acks(ACT) if a["cmd_id"] == cmd_id] == []
    assert not rig.servers.coil(0)


def test_render_shows_each_platform_link() -> None:
    view = View()
    status = p.GatewayStatus(
        state="online",
        ts=1_000_000,
        uplinks={
            "city": p.UplinkHealth(connected=False, backlog=37, records_sent=12),
            "district": p.UplinkHealth(connected=True, records_sent=49, platform_skew_s=-95.2),
        },
    )
    view.feed(p.status_topic("s1", "gw"), p.encode(status))
    lines = render(view, now=1_001.0).splitlines()
    city = next(line for line in lines if "uplink city" in line)
    district = next(line for line in lines if "uplink district" in line)
    assert "DOWN" in city and "backlog 37" in city and "sent 12" in city
    assert "connected" in district and "clock -95s" in district
