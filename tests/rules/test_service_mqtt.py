"""The rule engine service against a real mosquitto (and influxd for the sink).

The service runs in-process as an asyncio task (or as ``dustgate rules`` in a
subprocess); telemetry comes from a separate MQTT client, commands and events
are watched on the broker. Windows, leases and timers are seconds long so the
tests stay fast; waits poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from rulehelpers import ListSink
from running import running, until
from webhooks import Hook

from gateway import protocol as p
from gateway.localservices import Influxd, Mosquitto
from rules.core.config import load_rules_file
from rules.service.service import RulesService, ServiceOptions
from rules.service.state import STATE_FILE

ROOT = Path(__file__).resolve().parents[2]
SITE = "site-01"


def rules_config(
    tmp_path: Path,
    port: int,
    *,
    above: float = 150,
    for_s: float = 0,
    cooldown_s: float = 0,
    max_on_s: float | None = None,
    notify_url: str | None = None,
    influx_url: str | None = None,
    window: float = 5,
) -> dict[str, Any]:
    actions: dict[str, Any] = {"lease": ["cannon-1"], "lease_s": 3, "cooldown": cooldown_s}
    if max_on_s is not None:
        actions["max_on"] = max_on_s
    rule: dict[str, Any] = {
        "id": "pm10-gate",
        "site": SITE,
        "metric": "pm10",
        "devices": ["gate"],
        "aggregate": "last",
        "window": window,
        "above": above,
        "clear": min(100, above),
        "for": for_s,
        "actions": actions,
    }
    cfg: dict[str, Any] = {
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min": 0.2, "reconnect_max": 1},
        "state_dir": str(tmp_path / "state"),
        "sites": [SITE],
        "actuators": {f"{SITE}/cannon-1": {}, f"{SITE}/cannon-2": {}},
        "defaults": {
            "lease_s": 3,
            "override_lease_s": 3,
            "min_staleness": 3,
            "max_staleness": 30,
        },
        "rules": [rule],
    }
    if notify_url:
        cfg["notifiers"] = {"office": {"type": "robot", "url": notify_url, "min_interval": 60}}
        rule["notify"] = ["office"]
    if influx_url:
        cfg["influx"] = {"url": influx_url, "database": "dustgate", "flush_interval": 0.2}
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Seen:
    topic: str
    at: float
    payload: bytes
    expiry: int | None

    def command(self) -> p.Command:
        return p.decode(p.Command, self.payload)

    def event(self) -> p.Event:
        return p.decode(p.Event, self.payload)


@dataclass
class Bus:
    """A test client: feeds telemetry for ``gate`` and records cmd and events."""

    client: aiomqtt.Client
    seen: list[Seen] = field(default_factory=list)
    pm10: float = 80.0
    seq: int = 0

    def commands(self, actuator: str = "cannon-1") -> list[tuple[Seen, p.Command]]:
        topic = p.cmd_topic(SITE, actuator)
        return [(s, s.command()) for s in list(self.seen) if s.topic == topic]

    def actions(self, actuator: str = "cannon-1") -> list[str]:
        return [c.action for _, c in self.commands(actuator)]

    def events(self, kind: str | None = None) -> list[p.Event]:
        out = [s.event() for s in list(self.seen) if s.topic == p.events_topic(SITE)]
        return [e for e in out if kind is None or e.kind == kind]

    async def publish_reading(self) -> None:
        self.seq += 1
        msg = p.Telemetry(ts=p.now_ms(time.time()), seq=self.seq, values={"pm10": self.pm10})
        await self.client.publish(p.telemetry_topic(SITE, "gate"), p.encode(msg), qos=1)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    # Python 3.11's asyncio.wait_for (inside aiomqtt's publish) can swallow a
    # cancellation that races with completion: cancel until the tasks are done.
    for _ in range(100):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
    raise AssertionError("tasks did not stop")


@contextlib.asynccontextmanager
async def bus(port: int, feed_every: float = 0.25) -> AsyncIterator[Bus]:
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier="test-bus", protocol=aiomqtt.ProtocolVersion.V5
    )
    async with client:
        b = Bus(client)
        await client.subscribe(p.subscription("cmd", SITE), qos=1)
        await client.subscribe(p.subscription("events", SITE), qos=1)

        async def receive() -> None:
            async for m in client.messages:
                props = m.properties
                expiry = getattr(props, "MessageExpiryInterval", None) if props else None
                b.seen.append(Seen(m.topic.value, time.time(), bytes(m.payload), expiry))  # type: ignore[arg-type]

        running = True

        async def feed() -> None:
            while running:
                await b.publish_reading()
                await asyncio.sleep(feed_every)

        tasks = [asyncio.create_task(receive()), asyncio.create_task(feed())]
        try:
            yield b
        finally:
            running = False
            await cancel_all(tasks)


@contextlib.asynccontextmanager
async def engine(path: Path, client_id: str = "engine-under-test") -> AsyncIterator[RulesService]:
    text = path.read_text()
    opts = ServiceOptions(
        tick_interval=0.2,
        persist_interval=0.2,
        watch_interval=0.1,
        stats_interval=0.5,
        client_id=client_id,
    )
    svc = RulesService(path, load_rules_file(path, text=text), opts, rules_text=text)
    async with running(svc.run, svc.connected):
        yield svc


# -------------------------------------------------------------------- tests


async def test_spike_leases_renews_stops_and_notifies(
    tmp_path: Path, mosquitto: Mosquitto, hook: Hook
) -> None:
    path = write_config(
        tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port, notify_url=hook.url)
    )
    async with engine(path) as svc, bus(mosquitto.port) as b:
        await asyncio.sleep(0.8)
        assert b.actions() == []  # 80 is below the threshold
        b.pm10 = 220.0
        await until(lambda: b.actions()[:1] == ["on"], what="lease command")
        seen, first = b.commands()[0]
        assert first.lease_s == 3 and first.source == "rule" and first.rule == "pm10-gate"
        assert seen.expiry is not None and 1 <= seen.expiry <= 3  # MQTT 5 message expiry
        # renewals continue while the rule holds (every lease_s / 3 = 1 s)
        await until(lambda: b.actions().count("on") >= 3, what="renewals")
        assert "off" not in b.actions()
        b.pm10 = 60.0
        await until(lambda: "off" in b.actions(), what="explicit off")
        off_at = next(s.at for s, c in b.commands() if c.action == "off")
        await asyncio.sleep(2.0)
        assert all(s.at <= off_at for s, c in b.commands() if c.action == "on")
        assert [e.kind for e in b.events() if e.kind in ("on", "off")] == ["on", "off"]
        # one notification (on); the off is inside min_interval and suppressed
        await until(lambda: len(hook.received) >= 1, what="notification")
        await asyncio.sleep(0.5)
        assert len(hook.received) == 1
        assert hook.received[0]["msgtype"] == "text"
        assert "pm10-gate: on" in hook.received[0]["text"]["content"]
        assert svc.engine.counters["notify_suppressed"] == 1
        assert svc.counters["commands_sent"] >= 4


async def test_broken_edit_keeps_rules_valid_edit_applies(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    good = path.read_text()
    async with engine(path), bus(mosquitto.port) as b:
        path.write_text(good.replace("clear: 100", "clear: 900").replace("window: 5", "window: 0"))
        await until(lambda: b.events("reload_error"), what="reload_error event")
        (err,) = b.events("reload_error")
        assert err.severity == "warning"
        line_no = next(i for i, ln in enumerate(good.splitlines(), 1) if "clear: 100" in ln)
        assert f"{path}:{line_no}:" in err.text  # file:line of the bad clear
        assert err.data is not None and len(err.data["errors"]) == 2
        # the old rules still run
        b.pm10 = 220.0
        await until(lambda: "on" in b.actions(), what="lease under the old rules")
        b.pm10 = 80.0
        await until(lambda: "off" in b.actions(), what="off under the old rules")
        # a valid edit: threshold 50, so 80 now sprays
        path.write_text(good.replace("above: 150", "above: 50").replace("clear: 100", "clear: 50"))
        await until(lambda: b.events("reload"), what="reload event")
        assert b.events("reload")[0].data == {"added": [], "changed": ["pm10-gate"], "removed": []}
        n_on = b.actions().count("on")
        await until(lambda: b.actions().count("on") > n_on, what="lease under the new rules")


async def test_restart_in_the_middle_of_for_resumes_the_timer(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port, for_s=5))
    async with bus(mosquitto.port) as b:
        async with engine(path):
            b.pm10 = 220.0
            await until(lambda: b.events("pending"), what="pending event")
        pending = b.events("pending")[0]
        assert b.actions() == []
        saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
        assert saved["engine"]["rules"]["pm10-gate@site-01"]["state"]["phase"] == "pending"
        await asyncio.sleep(1.5)  # down for a while; the on-delay keeps running
        restart = time.time()
        async with engine(path) as svc:
            st = svc.engine.state("pm10-gate", SITE)
            assert st.phase == "pending" and round(st.since * 1000) == pending.ts
            await until(lambda: b.events("on"), what="on after the on-delay")
        on = b.events("on")[0]
        assert on.ts - pending.ts >= 5000  # the full on-delay ...
        assert on.ts < (restart + 5) * 1000  # ... counted from before the restart
        assert b.actions()[:1] == ["on"]


async def test_restart_in_cooldown_resumes_the_cooldown(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = rules_config(tmp_path, mosquitto.port, cooldown_s=5, max_on_s=1)
    path = write_config(tmp_path / "rules.yaml", cfg)
    async with bus(mosquitto.port) as b:
        b.pm10 = 220.0  # stays high: only the cooldown keeps the rule from restarting
        async with engine(path):
            await until(lambda: b.events("off"), what="max_on stop")
        off = b.events("off")[0]
        assert off.data is not None and off.data["reason"] == "max_on"
        await asyncio.sleep(0.5)
        async with engine(path) as svc:
            st = svc.engine.state("pm10-gate", SITE)
            assert st.phase == "cooldown"
            assert st.cooldown_until is not None
            assert abs(st.cooldown_until * 1000 - (off.ts + 5000)) < 2
            await until(lambda: len(b.events("on")) >= 2, timeout=15, what="on after cooldown")
        second_on = b.events("on")[1]
        assert second_on.ts >= off.ts + 5000 - 1


def run_override(port: int, *args: str) -> int:
    from rules.service.override import main

    return main([*args, "--host", "127.0.0.1", "--port", str(port), "--timeout", "10"])


async def test_override_on_off_auto_with_expiry_and_who(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    port = mosquitto.port
    async with engine(path), bus(port) as b:
        # ON for 3 s on an actuator no rule touches, then it expires by itself
        rc = await asyncio.to_thread(
            run_override, port, "site-01/cannon-2", "on", "--for", "3s", "--who", "alice"
        )
        assert rc == 0
        assert "alice set cannon-2 on" in capsys.readouterr().out
        await until(lambda: "on" in b.actions("cannon-2"), what="override on command")
        (_, cmd) = b.commands("cannon-2")[0]
        assert cmd.source == "override"
        applied = b.events("override")[0]
        assert applied.data is not None and applied.data["who"] == "alice"
        assert applied.data["until"] - applied.ts == 3000
        await until(lambda: "off" in b.actions("cannon-2"), what="off at expiry")
        expired = [e for e in b.events("override") if e.data and e.data.get("mode") == "auto"]
        assert expired and "expired" in expired[0].text
        # OFF blocks the rule during a spike; AUTO hands back and the rule sprays
        rc = await asyncio.to_thread(
            run_override, port, "site-01/cannon-1", "off", "--for", "10m", "--who", "bob"
        )
        assert rc == 0
        b.pm10 = 220.0
        await asyncio.sleep(1.5)
        assert "on" not in b.actions("cannon-1")
        rc = await asyncio.to_thread(run_override, port, "site-01/cannon-1", "auto", "--who", "bob")
        assert rc == 0
        await until(lambda: "on" in b.actions("cannon-1"), what="rule back in charge")
        # refused: an actuator the rules file does not declare
        rc = await asyncio.to_thread(run_override, port, "site-01/pump-9", "on", "--for", "1m")
        assert rc == 1
        assert "not declared" in capsys.readouterr().out


def test_override_cli_times_out_without_an_engine(
    mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    from rules.service.override import main

    rc = main(["site-01/cannon-1", "on", "--port", str(mosquitto.port), "--timeout", "0.5"])
    assert rc == 3
    assert "no answer" in capsys.readouterr().err


def test_cli_subprocess_writes_influx_and_stops_cleanly(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    cfg = rules_config(tmp_path, mosquitto.port, influx_url=influxd.url)
    path = write_config(tmp_path / "rules.yaml", cfg)
    log_path = tmp_path / "engine.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "rules", "--config", str(path),
             "--client-id", "engine-proc", "--stats-interval", "0.5"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "subscribed to" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

        async def scenario() -> tuple[list[str], int]:
            async with bus(mosquitto.port) as b:
                state = p.ActuatorState(state="on", since=p.now_ms(time.time()), source="rule")
                await b.client.publish(
                    p.state_topic(SITE, "cannon-1"), p.encode(state), qos=1, retain=True
                )
                await asyncio.sleep(0.5)
                b.pm10 = 220.0
                await until(lambda: "on" in b.actions(), what="lease from the subprocess")
                await asyncio.sleep(1.0)
                return b.actions(), b.seq

        actions, published = asyncio.run(scenario())
        assert actions[0] == "on"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = log_path.read_text()
    assert "stopping: saving state" in text and "Traceback" not in text
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    assert saved["engine"]["rules"]["pm10-gate@site-01"]["state"]["phase"] == "active"

    def count(q: str) -> int:
        res: Any = influxd.query(q, db="dustgate")
        series = res["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    # every reading published is stored (QoS 1 all the way, flushed on SIGTERM)
    assert count("SELECT count(\"pm10\") FROM telemetry WHERE device = 'gate'") == published
    assert count('SELECT count("on") FROM actuator') >= 1
    assert count("SELECT count(\"text\") FROM rule_event WHERE kind = 'on'") == 1
    assert count("SELECT count(\"messages_per_s\") FROM gateway WHERE engine = 'engine-proc'") >= 1


async def test_reconnects_after_broker_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    async with engine(path) as svc:
        mosquitto.stop()
        await until(lambda: not svc.connected.is_set(), what="disconnect noticed")
        mosquitto.start()  # same port
        await until(svc.connected.is_set, timeout=15, what="reconnected")
        async with bus(mosquitto.port) as b:
            b.pm10 = 220.0
            await until(lambda: "on" in b.actions(), what="lease after the reconnect")


async def test_sigterm_switches_off_held_actuators_before_exit(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    log_path = tmp_path / "engine.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "rules", "--config", str(path),
             "--client-id", "engine-term"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        async with bus(mosquitto.port) as b:
            await until(lambda: "subscribed to" in log_path.read_text(), 20, "engine up")
            b.pm10 = 220.0
            await until(lambda: "on" in b.actions(), what="lease")
            assert "off" not in b.actions()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 20) == 0
            # the OFF was sent before the session ended: it is already at (or on its
            # way to) the bus, no lease has to run out
            await until(lambda: "off" in b.actions(), timeout=2, what="off on SIGTERM")
        (off,) = [c for _, c in b.commands() if c.action == "off"]
        assert off.reason == "engine stopping" and off.source == "rule"
        assert b.actions()[-1] == "off"  # nothing leased after it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert "switching off 1 actuator" in log_path.read_text()
    saved = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    # the rule stays active (a restart resumes it), the actuator is recorded as off
    assert saved["engine"]["rules"]["pm10-gate@site-01"]["state"]["phase"] == "active"
    assert saved["engine"]["actuators"]["site-01/cannon-1"]["on"] is False


async def test_restart_after_a_clean_stop_leases_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    async with bus(mosquitto.port) as b:
        b.pm10 = 220.0
        async with engine(path):
            await until(lambda: "on" in b.actions(), what="lease")
        await until(lambda: b.actions()[-1:] == ["off"], timeout=2, what="off on stop")
        n = len(b.actions())
        async with engine(path) as svc:
            assert svc.engine.state("pm10-gate", SITE).phase == "active"
            await until(lambda: "on" in b.actions()[n:], what="lease after the restart")


async def publish_backlog(port: int, pm10s: list[float]) -> None:
    """One ``gate`` reading per value, seq 1, 2, ..., stamped 1 ms apart up to now
    (queued by the broker for the engine's session while it is away)."""
    base = p.now_ms(time.time()) - len(pm10s)
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="test-pub", protocol=aiomqtt.ProtocolVersion.V5
    ) as pub:
        for k, pm10 in enumerate(pm10s):
            msg = p.Telemetry(ts=base + k, seq=k + 1, values={"pm10": pm10})
            await pub.publish(p.telemetry_topic(SITE, "gate"), p.encode(msg), qos=1)


async def test_a_backlog_queued_while_away_is_drained_and_acted_on(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The readings a persistent session queued while the engine was away come in
    as a burst, ahead of the SUBACKs of its resubscription: handled as they come,
    every one counted, and the spike at its end still leases. (The readings are
    stamped when the backlog is published; a window of a minute keeps the spike in
    it however long a loaded machine takes to publish and start the engine.)"""
    config = rules_config(tmp_path, mosquitto.port, window=60)
    path = write_config(tmp_path / "rules.yaml", config)
    async with engine(path):
        pass  # the session and its subscriptions outlive the engine
    n = 2000
    recorder = aiomqtt.Client(
        "127.0.0.1", mosquitto.port, identifier="test-rec", protocol=aiomqtt.ProtocolVersion.V5
    )
    async with recorder:
        await recorder.subscribe(p.cmd_topic(SITE, "cannon-1"), qos=1)
        await publish_backlog(mosquitto.port, [80.0] * (n - 5) + [220.0] * 5)
        async with engine(path) as svc:
            # the broker sent the queue before the SUBACKs, and it was handled as it
            # came (not read into memory whole first, then handled)
            assert svc.counters["messages"] >= n // 2
            await until(lambda: svc.engine.counters["readings"] == n, what="backlog stored")
            assert svc.counters["messages"] == n
            async with asyncio.timeout(10):
                async for m in recorder.messages:
                    cmd = p.decode(p.Command, m.payload)  # type: ignore[arg-type]
                    assert cmd.action == "on"
                    break


async def test_stopping_in_the_middle_of_a_backlog_loses_no_reading(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """paho acknowledges a message as it queues it: whatever is still queued when
    the session ends (and the one aiomqtt's cancelled iterator had taken) is
    stored and sunk then; what the broker had not sent yet comes in the next
    session. Every reading reaches the sink exactly once. (Where the backlog
    splits between the sessions, and how much is still queued at the end,
    depends on timing: a stop first waits for the publishes in flight, the
    engine consuming meanwhile. The inbox and service unit tests cover the
    queued-at-the-end paths deterministically.)"""
    path = write_config(tmp_path / "rules.yaml", rules_config(tmp_path, mosquitto.port))
    async with engine(path):
        pass  # the session and its subscriptions outlive the engine
    n = 3000
    await publish_backlog(mosquitto.port, [80.0] * n)
    text = path.read_text()
    stop = asyncio.Event()

    class StopsMidway(RulesService):
        def on_message(self, topic: str, payload: bytes, now: float, evaluate: bool = True) -> Any:
            if self.counters["messages"] == 300:
                stop.set()  # the session ends while the backlog is coming in
            return super().on_message(topic, payload, now, evaluate)

    sinks = [ListSink(), ListSink()]
    services = []
    for cls, sink in zip((StopsMidway, RulesService), sinks, strict=True):
        svc = cls(
            path,
            load_rules_file(path, text=text),
            ServiceOptions(client_id="engine-under-test"),
            sink=sink,
            rules_text=text,
        )
        services.append(svc)
        stop.clear()
        task = asyncio.create_task(svc.run(stop))
        try:
            if cls is RulesService:
                await until(lambda: len(sinks[0].seqs() + sinks[1].seqs()) >= n, what="the rest")
                stop.set()
        finally:
            async with asyncio.timeout(15):
                await task
    first, second = sinks[0].seqs(), sinks[1].seqs()
    assert len(first) >= 300
    assert sorted(first + second) == list(range(1, n + 1))
