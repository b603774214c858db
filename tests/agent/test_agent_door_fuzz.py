"""The agent's command door under fuzz: hypothesis-made commands (valid OFFs, and every
kind of malformed one the contract refuses: wrong JSON types, a string lease, NaN, control
characters, unknown fields, truncated, binary, over 64 kB) published through a real
mosquitto to a real agent process driving a simulated relay board. Per corpus: every
command is answered on ``ack`` (accepted exactly when it decodes), every refusal is
counted in the gateway status, the relay is never switched by a refused command; at the
end the agent is alive, obeys a good command and logged no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
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
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway import protocol as p
from gateway.localservices import Mosquitto

pytestmark = pytest.mark.integration

ACT = "cannon"
TOPIC = f"dustgate/v1/{SITE}/{ACT}/cmd"

# changes to a valid OFF command, each making it invalid
MUTATIONS: list[dict[str, Any]] = [
    {"action": "blast"},
    {"action": "on"},  # no lease
    {"action": "on", "lease_s": "60"},  # was taken as 60 s: a string switched the cannon on
    {"action": "on", "lease_s": True},
    {"action": "on", "lease_s": 0},
    {"action": "on", "lease_s": 1e9},
    {"reason": "two\nlines"},
    {"reason": "x" * 201},
    {"ts": "1780000000000"},
    {"ts": True},
    {"source": "hacker"},
    {"rule": "Bad Rule"},
    {"extra": 1},
    {"id": 5},
    {"id": ""},
]
RAW = [
    b'{"id": "%s", "action": "on", "lease_s": NaN}',
    b'{"id": "%s", "action": "on", "lease_s": Infinity}',
    b'{"id": "%s", "action": "off"',
    b"[]",
    b"",
    b'{"id": "%s", "action": "off", "reason": "' + b"x" * 70_000 + b'"}',
]

payloads = st.one_of(
    st.tuples(st.just("valid"), st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)),
    st.tuples(st.just("mutated"), st.sampled_from(range(len(MUTATIONS)))),
    st.tuples(st.just("raw"), st.sampled_from(range(len(RAW)))),
    st.tuples(st.just("binary"), st.binary(max_size=48)),
)  # fmt: skip


@dataclass
class Rig:
    watcher: Watcher
    servers: Servers
    agent: AgentProcess
    refused: int = 0  # refusals expected so far
    blank_acks: int = 0  # acks without a command id expected so far
    ids: Iterator[int] = field(default_factory=count)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("agent-fuzz")
    broker = Mosquitto(tmp / "mq").start()
    servers = start_servers(relay=True)
    acts = [{"id": ACT, "bus": "relays", "profile": "relay-8ch", "channel": 0,
             "limits": {"min_off": "100ms"}}]  # fmt: skip
    cfg = write_site(tmp / "site.yaml", broker.port, servers, actuators=acts)
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        wait_until(lambda: watcher.status(), 15, "gateway status")
        yield Rig(watcher, servers, agent)
        assert agent.running, "the agent died"
        watcher.publish(*command(ACT, "good-on", "on", 30))
        assert watcher.ack_for(ACT, "good-on")["accepted"]
        wait_until(lambda: servers.coil(0), 5, "relay on after a good command")
        assert "Traceback" not in agent.log()
    finally:
        agent.stop()
        watcher.stop()
        servers.stop()
        broker.stop()


def refused_in_status(w: Watcher) -> int:
    s = w.status()
    return int(s["refused_commands"]) if s else -1


@settings(
    max_examples=8,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: bounded time
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(payloads, min_size=3, max_size=12))
def test_the_agent_command_door_under_fuzz(rig: Rig, corpus: list[tuple[str, Any]]) -> None:
    w = rig.watcher
    expect: dict[str, bool] = {}  # command id -> accepted
    blank = 0
    for kind, x in corpus:
        cid = f"fz-{next(rig.ids)}"
        doc: dict[str, Any] = {"id": cid, "action": "off", "source": "rule"}
        if kind == "valid":
            doc["reason"] = x
            raw = json.dumps(doc).encode()
        elif kind == "mutated":
            doc.update(MUTATIONS[x])
            raw = json.dumps(doc).encode()
        elif kind == "raw":
            raw = RAW[x].replace(b"%s", cid.encode())
        else:
            raw = x
        try:
            p.decode(p.Command, raw)
            ok = True
        except p.ProtocolError:
            ok = False
        assert ok == (kind == "valid"), (kind, raw[:80])
        try:
            doc_id = json.loads(raw).get("id") if len(raw) < 16 * p.MAX_PAYLOAD else None
        except (ValueError, AttributeError, UnicodeDecodeError):
            doc_id = None
        if isinstance(doc_id, str) and doc_id:
            expect[doc_id] = ok
        else:
            blank += 1
        if not ok:
            rig.refused += 1
        w.publish(TOPIC, raw)
    rig.blank_acks += blank
    for cid, ok in expect.items():
        ack = w.ack_for(ACT, cid)
        assert ack["accepted"] is ok, ack
        if not ok:
            assert ack["reason"], ack
    wait_until(
        lambda: len([a for a in w.acks(ACT) if a["cmd_id"] == ""]) >= rig.blank_acks,
        10,
        "acks of the commands without an id",
    )
    wait_until(lambda: refused_in_status(w) == rig.refused, 10, f"{rig.refused} refused")
    assert not rig.servers.coil(0)  # only OFFs were valid: the relay never went on
    assert rig.agent.running
