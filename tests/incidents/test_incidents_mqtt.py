"""Incidents against a real mosquitto, the real rule engine and a webhook receiver.

A dust spike reaches the engine; its ``on`` event opens an incident (within
5 s); the site's first contact is notified with the incident's link; with the
service's clock moved 31 minutes on, the incident turns overdue and the
second contact is notified exactly once; the inspector acknowledges and
resolves; a restart of the incident service duplicates nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from running import running, until
from webhooks import Hook

from gateway import protocol as p
from gateway.configfile import MqttSettings
from gateway.localservices import Mosquitto
from rules.core.config import load_rules_file
from rules.incidents.service import IncidentService
from rules.incidents.settings import IncidentsSettings
from rules.incidents.store import IncidentStore
from rules.service.service import RulesService, ServiceOptions

pytestmark = pytest.mark.integration
SITE = "site-01"


class Clock:
    """Wall time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def settings(hook: Hook, **causes: Any) -> IncidentsSettings:
    return IncidentsSettings.model_validate(
        {
            "base_url": "http://127.0.0.1:8080",
            "notifiers": {"hook": {"type": "webhook", "url": hook.url, "timeout": 2}},
            "sites": {
                SITE: {
                    "contacts": [
                        {"name": "Li Wei", "role": "site manager", "notify": "hook"},
                        {"name": "Zhang Min", "role": "inspector", "notify": "hook", "level": 1},
                    ]
                }
            },
            "causes": causes,
        }
    )


def mqtt(port: int) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, client_id="incidents-under-test",
                        reconnect_min=0.2, reconnect_max=1)  # fmt: skip


@contextlib.asynccontextmanager
async def incidents(
    s: IncidentsSettings, db: Path, port: int, clock: Clock
) -> AsyncIterator[IncidentService]:
    store = IncidentStore(db)
    svc = IncidentService(s, store, clock=clock)
    try:
        async with running(lambda stop: svc.run(mqtt(port), stop), svc.connected):
            yield svc
    finally:
        store.close()


@contextlib.asynccontextmanager
async def engine(
    tmp_path: Path, port: int, unless: list[dict[str, Any]] | None = None
) -> AsyncIterator[RulesService]:
    cfg = {
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min": 0.2, "reconnect_max": 1},
        "state_dir": str(tmp_path / "state"),
        "sites": [SITE],
        "actuators": {f"{SITE}/cannon-1": {}},
        "defaults": {"lease_s": 3, "min_staleness": 3, "max_staleness": 30},
        "rules": [
            {"id": "pm10-gate", "site": SITE, "metric": "pm10", "devices": ["gate"],
             "aggregate": "last", "window": 5, "above": 150, "clear": 100,
             "actions": {"lease": ["cannon-1"], "lease_s": 3}, "unless": unless or []},
        ],
    }  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    opts = ServiceOptions(tick_interval=0.2, persist_interval=0.2, client_id="engine-under-test")
    svc = RulesService(path, load_rules_file(path), opts)
    async with running(svc.run, svc.connected):
        yield svc


async def publish(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    client = aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
    async with client:
        await client.publish(topic, payload, qos=1, retain=retain)


def texts(hook: Hook) -> list[str]:
    return [str(b["text"]) for b in list(hook.received)]


async def test_spike_incident_notify_overdue_escalation_ack_resolve_restart(
    tmp_path: Path, mosquitto: Mosquitto, hook: Hook
) -> None:
    port = mosquitto.port
    clock = Clock()
    s = settings(hook)
    db = tmp_path / "incidents.db"
    events: list[p.Event] = []
    async with engine(tmp_path, port), incidents(s, db, port, clock) as svc:
        sub = aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
        async with sub:
            await sub.subscribe(p.subscription("events", SITE), qos=1)

            async def watch() -> None:
                async for m in sub.messages:
                    events.append(p.decode(p.Event, bytes(m.payload)))  # type: ignore[arg-type]

            watcher = asyncio.create_task(watch())
            reading = p.Telemetry(ts=p.now_ms(time.time()), seq=1, values={"pm10": 320.0})
            await publish(port, p.telemetry_topic(SITE, "gate"), p.encode(reading))
            await until(lambda: any(e.kind == "on" for e in events), what="the rule going on")
            on = next(e for e in events if e.kind == "on")
            await until(lambda: svc.book.open_incident(SITE, "rule_active") is not None, 5)
            inc = svc.book.open_incident(SITE, "rule_active")
            assert inc is not None
            assert inc.opened_at - on.ts / 1000 < 5.0
            watcher.cancel()

        # the first contact, with the link to the incident's page
        await until(lambda: len(hook.received) == 1, what="the first notification")
        assert texts(hook)[0].endswith(f"http://127.0.0.1:8080/incidents/{inc.id}")
        assert "320.0" in texts(hook)[0]

        # bad input on the way: garbage, a duplicate event; nothing breaks
        await publish(port, p.events_topic(SITE), b"{not json")
        await publish(port, p.events_topic(SITE), p.encode(on))
        await until(lambda: svc.counters["bad_messages"] == 1, what="the garbage counted")
        await until(lambda: svc.book.counters["duplicate"] >= 1, what="the duplicate seen")

        # 31 minutes later (the service's clock): overdue, escalated once
        clock.offset += 31 * 60
        await until(lambda: len(hook.received) == 2, what="the escalation")
        assert texts(hook)[1].startswith(f"OVERDUE: incident #{inc.id}")
        await asyncio.sleep(2.5)  # two more ticks
        assert len(hook.received) == 2
        rows = svc.store.notifications(inc.id)
        assert [(r.contact, r.level, r.status) for r in rows] == [
            ("Li Wei", 0, "sent"),
            ("Zhang Min", 1, "sent"),
        ]

        current = svc.book.incidents[inc.id]
        acked = svc.acknowledge(inc.id, "inspector-1", current.version)
        resolved = svc.resolve(inc.id, "inspector-1", acked.version, "hose fixed")
        assert resolved.status == "resolved" and resolved.overdue_at is not None

    async with incidents(s, db, port, clock) as svc:
        await asyncio.sleep(1.5)  # retained status, queued events, ticks
        assert [i.id for i in svc.store.incidents()] == [inc.id]
        assert len(svc.store.notifications()) == 2 and len(hook.received) == 2
        start = resolved.opened_at - 1
        (fig,) = svc.figures(start, clock() + 1)
        assert fig.incidents == 1 and fig.overdue == 1
        assert fig.resolve_median_min is not None and fig.resolve_median_min > 30


async def test_gateway_offline_retained_opens_one_incident_across_restarts(
    tmp_path: Path, mosquitto: Mosquitto, hook: Hook
) -> None:
    port = mosquitto.port
    clock = Clock()
    s = settings(hook, gateway_offline={"open_after": 0})
    db = tmp_path / "incidents.db"
    offline = p.GatewayStatus(state="offline", ts=p.now_ms(time.time()))
    await publish(port, p.status_topic(SITE, "gw-01"), p.encode(offline), retain=True)
    async with incidents(s, db, port, clock) as svc:
        await until(lambda: svc.book.open_incident(SITE, "gateway_offline") is not None)
    async with incidents(s, db, port, clock) as svc:  # the retained status again
        await asyncio.sleep(1.5)
        assert len(svc.store.incidents()) == 1
        online = p.GatewayStatus(state="online", ts=p.now_ms(time.time()))
        await publish(port, p.status_topic(SITE, "gw-01"), p.encode(online), retain=True)
        await until(
            lambda: (
                (i := svc.book.open_incident(SITE, "gateway_offline")) is not None
                and i.cleared_at is not None
            ),
            what="cleared",
        )
    await until(lambda: len(hook.received) == 1, what="one notification")


async def test_over_the_limit_under_frost_opens_an_unsprayed_incident(
    tmp_path: Path, mosquitto: Mosquitto, hook: Hook
) -> None:
    """The real engine blocks the spray for frost; its interlock event opens the
    'over the limit, nothing spraying' incident (and no rule_active one)."""
    port = mosquitto.port
    frost = [{"name": "frost", "metric": "temp", "devices": ["gate"], "window": 5,
              "aggregate": "last", "below": 3, "clear": 4}]  # fmt: skip
    s = settings(hook, unsprayed={"open_after": 0})
    async with engine(tmp_path, port, frost), incidents(s, tmp_path / "i.db", port, Clock()) as svc:
        reading = p.Telemetry(ts=p.now_ms(time.time()), seq=1, values={"pm10": 300.0, "temp": -2.0})
        await publish(port, p.telemetry_topic(SITE, "gate"), p.encode(reading))
        await until(lambda: svc.book.open_incident(SITE, "unsprayed") is not None, 5)
        inc = svc.book.open_incident(SITE, "unsprayed")
        assert inc is not None and "frost" in inc.detail
        assert svc.book.open_incident(SITE, "rule_active") is None
        await until(lambda: len(hook.received) == 1, what="the notification")
        assert "nothing is spraying" in texts(hook)[0]


async def test_dustgate_incidents_runs_alone_and_stops_on_sigterm(
    tmp_path: Path, mosquitto: Mosquitto, hook: Hook
) -> None:
    import os
    import signal
    import subprocess
    import sys

    cfg = tmp_path / "incidents.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "client_id": "inc-cli"},
                "incidents": {
                    "db": "state/incidents.db",
                    "notifiers": {"hook": {"type": "webhook", "url": hook.url}},
                    "sites": {SITE: {"contacts": [{"name": "Li Wei", "notify": "hook"}]}},
                },
            }
        )
    )
    log = tmp_path / "incidents.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "incidents", "--config", str(cfg)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await until(lambda: "connected to mqtt" in log.read_text(), 20, "service up")
        on = p.Event(ts=p.now_ms(time.time()), kind="on", text="pm10-gate: on", rule="pm10-gate")
        await publish(mosquitto.port, p.events_topic(SITE), p.encode(on))
        await until(lambda: len(hook.received) == 1, what="the notification")
        os.killpg(proc.pid, signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    store = IncidentStore(tmp_path / "state" / "incidents.db")
    (inc,) = store.incidents()
    assert (inc.site, inc.cause, inc.status) == (SITE, "rule_active", "open")
    store.close()
