"""Bad commands are refused with a reason, counted in the status, and do not hurt the agent."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import (
    SITE,
    AgentProcess,
    Servers,
    Watcher,
    command,
    start_servers,
    wait_until,
    write_site,
)

from gateway.localservices import Mosquitto

ACT = "cannon"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Watcher, Servers, AgentProcess]]:
    broker = Mosquitto(tmp_path / "mq").start()
    servers = start_servers(relay=True)
    acts = [
        {
            "id": ACT,
            "bus": "relays",
            "profile": "relay-8ch",
            "channel": 0,
            "limits": {"min_off": "100ms"},
        }
    ]
    cfg = write_site(tmp_path / "site.yaml", broker.port, servers, actuators=acts)
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: watcher.status(), 15, "gateway status")
        yield watcher, servers, agent
    finally:
        agent.stop()
        watcher.stop()
        servers.stop()
        broker.stop()


def refused(status: dict[str, Any] | None) -> int:
    return int(status["refused_commands"]) if status else -1


def test_bad_commands_are_refused_counted_and_survived(
    rig: tuple[Watcher, Servers, AgentProcess],
) -> None:
    watcher, servers, agent = rig
    cmd_topic = f"dustgate/v1/{SITE}/{ACT}/cmd"
    assert refused(watcher.status()) == 0

    watcher.publish(cmd_topic, b'{"id": "bad-json", "action": "on", "lease_s": ')
    watcher.publish(cmd_topic, b"\xff\xfe not even utf-8")
    huge = {"id": "huge", "action": "on", "lease_s": 5, "reason": "x" * 70_000}
    watcher.publish(cmd_topic, json.dumps(huge).encode())
    watcher.publish(*command("no-such-cannon", "unknown", "on", 5))
    watcher.publish(cmd_topic, json.dumps({"id": "no-lease", "action": "on"}).encode())
    watcher.publish(cmd_topic, json.dumps({"id": "bad-action", "action": "blast"}).encode())

    # each refusal that names our actuator is acked with a reason
    for cmd_id, words in (
        ("huge", "exceeds"),
        ("no-lease", "lease_s"),
        ("bad-action", "action"),
    ):
        ack = watcher.ack_for(ACT, cmd_id)
        assert ack["accepted"] is False and words in ack["reason"], ack
    # no id to quote when the JSON does not parse: acked with an empty cmd_id
    junk = wait_until(
        lambda: (a := [a for a in watcher.acks(ACT) if a["cmd_id"] == ""]) and len(a) == 2 and a,
        5,
        "acks of the two unparseable payloads",
    )
    assert all(not a["accepted"] and "malformed" in a["reason"] for a in junk), junk
    assert watcher.acks("no-such-cannon") == []  # nobody to answer for
    wait_until(lambda: refused(watcher.status()) == 6, 5, "6 refused commands in the status")

    assert agent.running
    assert not servers.coil(0)
    watcher.publish(*command(ACT, "good", "on", 30))
    assert watcher.ack_for(ACT, "good")["accepted"]
    wait_until(lambda: servers.coil(0), 5, "relay on after a good command")
    state = wait_until(
        lambda: (s := watcher.last(f"/{ACT}/state")) and s["state"] == "on" and s, 5, "state on"
    )
    assert state["cmd_id"] == "good"
    time.sleep(1.5)  # two status periods: the good command is not counted
    assert refused(watcher.status()) == 6


def test_commands_for_another_site_never_reach_us(
    rig: tuple[Watcher, Servers, AgentProcess],
) -> None:
    watcher, servers, agent = rig
    topic, payload = command(ACT, "foreign", "on", 30)
    watcher.publish(topic.replace(f"/{SITE}/", "/other-site/"), payload)
    # a marker command on our own site: once its ack is here, the foreign one has had its chance
    watcher.publish(*command(ACT, "marker", "off"))
    watcher.ack_for(ACT, "marker")
    assert [a for a in watcher.snapshot() if "/other-site/" in a.topic and "/ack" in a.topic] == []
    assert [a for a in watcher.acks(ACT) if a["cmd_id"] == "foreign"] == []
    assert not servers.coil(0)
    time.sleep(1.2)  # one status period
    assert refused(watcher.status()) == 0
    assert agent.running


def test_a_command_flood_is_counted_and_logged_once_a_minute(
    rig: tuple[Watcher, Servers, AgentProcess],
) -> None:
    """A peer must not be able to flood the agent's log (an SD card): 40 commands
    for an actuator we do not have give one line, and each is still counted;
    malformed ones for ours are acked and counted, not logged."""
    watcher, _, agent = rig
    for i in range(40):
        watcher.publish(*command("no-such-cannon", f"ghost-{i}", "on", 5))
        watcher.publish(*command(ACT, f"long-{i}", "on", 10**6))  # lease_s past a day
    wait_until(lambda: refused(watcher.status()) == 80, 10, "80 refused commands counted")
    assert agent.running
    log = agent.log()
    assert log.count("refused command on") == 1, log[-3000:]
    assert "long-" not in log
