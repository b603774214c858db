"""Three partitioned rule engines against a real mosquitto and influxd.

30 simulated sites publish at 1 Hz; each site has a rule leasing its cannon
and notifying a webhook. Every engine runs as ``dustgate rules --partition
K/3`` in a process of its own. Checked: every reading is stored exactly
once; each site's commands come from one engine only, its owner; each alarm
is notified once; an engine killed (SIGKILL) while it sprays sends nothing
more (the cannon stops by its lease), and after its restart the rule resumes
from its saved timers (no new alarm, renewals again) and the readings
published meanwhile are stored; a second engine started for a partition
that is already served waits instead of acting.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from webhooks import Hook

from gateway import protocol as p
from gateway.configfile import MqttSettings
from gateway.localservices import Influxd, Mosquitto
from gateway.mqttclient import make_client
from rules.core.partition import PRESENCE_ROOT, slot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N = 3
SITES = [f"site-{i:02d}" for i in range(30)]
DB = "partitions"
LEASE_S = 6


def owner(site: str) -> int:
    return slot(site, N)


# one spraying site per partition
HOT = {k: next(s for s in SITES if owner(s) == k) for k in range(N)}


def write_rules(path: Path, mq: Mosquitto, ix: Influxd, hook: Hook) -> None:
    doc = {
        "mqtt": {"host": mq.host, "port": mq.port},
        "influx": {"url": ix.url, "database": DB, "flush_interval": 0.1},
        "state_dir": str(path.parent / "state"),
        "actuators": {f"{s}/cannon": {} for s in SITES},
        "notifiers": {"ops": {"type": "webhook", "url": hook.url, "min_interval": "1s"}},
        "defaults": {"lease_s": f"{LEASE_S}s"},
        "rules": [
            {
                "id": "pm10",
                "site": SITES,
                "metric": "pm10",
                "devices": ["gate"],
                "aggregate": "last",
                "window": "30s",
                "above": 150,
                "clear": 100,
                "notify": ["ops"],
                "actions": {"lease": ["cannon"], "lease_s": f"{LEASE_S}s", "run_for": "5m"},
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc))


def start_engine(config: Path, k: int, client_id: str | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway.cli", "rules", "--config", str(config)]
    argv += ["--partition", f"{k}/{N}", "--persist-interval", "0.5", "--tick", "0.2"]
    if client_id:
        argv += ["--client-id", client_id]
    log = open(config.parent / f"engine-{k}-{client_id or 'main'}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Watch:
    """Everything the engines send: commands (with the sending engine), events,
    presences; recorded with the time they arrived."""

    def __init__(self) -> None:
        self.commands: list[tuple[float, str, str, dict[str, Any]]] = []  # t, site, engine, cmd
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.online: dict[str, bool] = {}

    async def run(self, settings: MqttSettings, ready: asyncio.Event) -> None:
        async with make_client(settings, "test-watch") as client:
            await client.subscribe("dustgate/v1/+/+/cmd", qos=1)
            await client.subscribe("dustgate/v1/+/events", qos=1)
            await client.subscribe(f"{PRESENCE_ROOT}/+", qos=1)
            ready.set()
            async for m in client.messages:
                topic = m.topic.value
                data = json.loads(m.payload) if m.payload else {}  # type: ignore[arg-type]
                if topic.startswith(PRESENCE_ROOT):
                    self.online[data.get("member", topic)] = bool(data.get("online"))
                    continue
                site = topic.split("/")[2]
                if topic.endswith("/cmd"):
                    props = dict(getattr(m.properties, "UserProperty", []) or [])
                    self.commands.append((time.monotonic(), site, props.get("engine", "?"), data))
                else:
                    self.events.append((site, data))


async def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish(settings: MqttSettings, seconds: float, seq0: int, hot: set[str]) -> int:
    """One reading a second per site (pm10 300 on the hot sites, 50 elsewhere)."""
    sent = 0
    async with make_client(settings, "test-sites") as client:
        for k in range(int(seconds)):
            t = time.time()
            for s in SITES:
                pm10 = 300.0 if s in hot else 50.0
                msg = p.Telemetry(ts=p.now_ms(t), seq=seq0 + k, values={"pm10": pm10})
                await client.publish(p.telemetry_topic(s, "gate"), p.encode(msg), qos=1)
                sent += 1
            await asyncio.sleep(max(0.0, t + 1.0 - time.time()))
    return sent


def stored_per_site(ix: Influxd) -> dict[str, int]:
    res: Any = ix.query("SELECT count(seq) FROM telemetry GROUP BY site", DB)
    out = {}
    for series in res["results"][0].get("series", []):
        out[series["tags"]["site"]] = series["values"][0][1]
    return out


async def test_three_partitions_each_site_on_one_engine(
    mosquitto: Mosquitto, influxd: Influxd, hook: Hook, tmp_path: Path
) -> None:
    config = tmp_path / "rules.yaml"
    write_rules(config, mosquitto, influxd, hook)
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    watch = Watch()
    ready = asyncio.Event()
    watcher = asyncio.create_task(watch.run(settings, ready))
    await ready.wait()
    engines = {k: start_engine(config, k) for k in range(N)}
    spare: subprocess.Popen[bytes] | None = None
    try:
        await wait_for(lambda: sum(watch.online.values()) == N, 30, "three engines online")
        member = {k: next(m for m in watch.online if m.endswith(f"-p{k}")) for k in range(N)}
        await asyncio.sleep(1.0)  # subscribed (presence comes first)

        # a second engine for partition 1 waits: it sends nothing for partition 1's sites
        spare = start_engine(config, 1, client_id="spare-p1")

        sent = await publish(settings, 6, 1, set(HOT.values()))
        await wait_for(lambda: len(hook.received) >= N, 10, "the three alarms")

        # each site's commands come from its owner only
        by_site: dict[str, set[str]] = defaultdict(set)
        for _, site, engine, _cmd in watch.commands:
            by_site[site].add(engine)
        assert set(by_site) == set(HOT.values())
        for k, site in HOT.items():
            assert by_site[site] == {member[k]}, (site, by_site[site])
        assert "spare-p1" not in watch.online or not watch.online["spare-p1"]

        # kill the engine spraying HOT[0] (the publisher paused a second: its sink flushed)
        victim = HOT[0]
        engines[0].send_signal(signal.SIGKILL)
        engines[0].wait(5)
        t_kill = time.monotonic()
        sent += await publish(settings, 4, 100, set(HOT.values()))
        after = [c for t, s, _, c in watch.commands if s == victim and t > t_kill]
        assert after == []  # nobody else commands its cannon: the agent lets the lease run out
        last_on = max(
            (c for t, s, _, c in watch.commands if s == victim and c["action"] == "on"),
            key=lambda c: c["ts"],
        )
        assert last_on["lease_s"] == LEASE_S  # so the cannon stops within LEASE_S of the kill

        engines[0] = start_engine(config, 0)
        # resumed from the saved timers: renewals again, no second "active" alarm
        await wait_for(
            lambda: any(s == victim and t > t_kill for t, s, _, _ in watch.commands),
            20,
            "the restarted engine's renewal",
        )
        sent += await publish(settings, 2, 200, set(HOT.values()))
        await asyncio.sleep(1.0)
        resumed = [c for t, s, _, c in watch.commands if s == victim and t > t_kill]
        assert resumed[0]["action"] == "on" and resumed[0]["reason"].endswith(": renew")
        alarms = [m for m in hook.received if m["site"] == victim]
        assert len(alarms) == 1, alarms
        actives = [e for s, e in watch.events if s == victim and e.get("kind") == "on"]
        assert len(actives) == 1, actives

        # every reading stored exactly once (the killed engine's backlog included)
        per_site = {s: sent // len(SITES) for s in SITES}
        await wait_for(lambda: stored_per_site(influxd) == per_site, 20, "all readings stored")
    finally:
        watcher.cancel()
        for proc in [*engines.values(), *([spare] if spare else [])]:
            stop(proc)
    spare_log = (tmp_path / "engine-1-spare-p1.log").read_text()
    assert "partition 1/3: waiting, not acting on any site" in spare_log
    assert os.path.exists(tmp_path / "state" / "engine-state.p0-3.json")
