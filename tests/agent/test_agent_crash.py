"""SIGKILL mid-stream: no reading committed to the outbox is lost (at least once, same ts).

The agent runs as a process. It is killed twice: once while publishing normally, once with
the broker away (a backlog in the outbox). After each kill the test reads what the outbox
database holds (what was committed) and checks that all of it reaches the broker after the
restart, that every device's seqs run from 0 without a gap, and that a duplicate carries the
same ``ts`` as the original.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from agent_harness import (
    AgentProcess,
    Watcher,
    pm_devices,
    seq_report,
    start_servers,
    wait_until,
    write_site,
)

from gateway.localservices import Mosquitto

DEVICES = 4


def committed_rows(db: Path) -> set[tuple[str, int, int]]:
    """(device, seq, ts) of every row in the outbox database."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT stream.key, msg.payload FROM msg JOIN stream ON stream.id = msg.stream"
        ).fetchall()
    finally:
        con.close()
    out = set()
    for key, payload in rows:
        doc = json.loads(payload)
        out.add((key, doc["seq"], doc["ts"]))
    return out


def received(watcher: Watcher, ids: list[str]) -> set[tuple[str, int, int]]:
    return {(d, r["seq"], r["ts"]) for d in ids for r in watcher.telemetry(d)}


def test_sigkill_loses_no_committed_reading(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    servers = start_servers(pm_tcp_units=DEVICES)
    devices = pm_devices("tcp-1", DEVICES, 0.2)
    cfg = write_site(tmp_path / "site.yaml", broker.port, servers, devices=devices)
    db = tmp_path / "outbox.db"
    ids = [d["id"] for d in devices]
    watcher = Watcher(broker.port).start()
    agent = AgentProcess(cfg).start()
    try:
        # 1: killed while publishing normally
        wait_until(lambda: all(len(watcher.telemetry(d)) >= 15 for d in ids), 20, "readings")
        agent.kill()
        first = committed_rows(db)
        # the broker published the last will: the retained status says offline
        wait_until(lambda: watcher.status()["state"] == "offline", 10, "last will")  # type: ignore[index]
        agent = AgentProcess(cfg).start()
        wait_until(lambda: first <= received(watcher, ids), 20, "committed rows after restart 1")

        # 2: killed with the broker away, so the outbox holds a backlog
        top = {d: max(r["seq"] for r in watcher.telemetry(d)) for d in ids}
        broker.stop()
        time.sleep(3.0)  # build up a backlog (the broker outage is the point)
        agent.kill()
        second = committed_rows(db)
        backlog = {row for row in second if row[1] > top[row[0]]}
        assert len(backlog) >= DEVICES * 5, f"only {len(backlog)} rows in the backlog"
        broker.start()
        agent = AgentProcess(cfg).start()
        wait_until(lambda: second <= received(watcher, ids), 20, "committed rows after restart 2")
        # and the agent carries on from there
        wait_until(
            lambda: all(max(r["seq"] for r in watcher.telemetry(d)) > top[d] + 30 for d in ids),
            20,
            "live readings after restart 2",
        )
    finally:
        agent.stop()
        watcher.stop()
        servers.stop()
        broker.stop()
    for dev in ids:
        missing, by_seq = seq_report(watcher.telemetry(dev))
        assert missing == [], f"{dev}: seqs missing {missing[:20]}"
        changed = {s: ts for s, ts in by_seq.items() if len(ts) > 1}
        assert changed == {}, f"{dev}: duplicates with a different ts"
