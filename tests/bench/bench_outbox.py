"""Outbox throughput and disk use, each next to a raw-sqlite baseline from the same run.

    .venv/bin/python tests/bench/bench_outbox.py [N]

Figures:
* put+commit: ``Outbox.put`` of N telemetry payloads with the agent's batching
  (commit every 500 rows) vs a bare ``executemany`` INSERT of the same rows into
  a naive table (topic text per row), same pragmas, one commit per 500 rows.
* drain: ``pending_for_publish(500)`` + ``ack_many`` + ``commit`` until empty, vs
  a bare SELECT ... LIMIT 500 + DELETE ... WHERE id IN (...) loop. The agent must
  replay >= 5,000 readings/s to the broker after an outage; the outbox side has
  to be far faster than that.
* bytes per stored reading: database + WAL after a checkpoint, divided by N.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.outbox import Outbox  # noqa: E402
from gateway.protocol import Telemetry, encode, telemetry_topic  # noqa: E402

DEVICES = [f"dev{i:02d}" for i in range(32)]
T0 = 1_790_000_000.0


def readings(n: int) -> list[tuple[str, str, bytes, int]]:
    out = []
    for i in range(n):
        dev = DEVICES[i % len(DEVICES)]
        ts = int((T0 + i / len(DEVICES)) * 1000)
        payload = encode(
            Telemetry(
                ts=ts,
                seq=i // len(DEVICES),
                values={"pm25": 35.0 + i % 17, "pm10": 80.0 + i % 23, "noise": 61.5},
            )
        )
        out.append((dev, telemetry_topic("site1", dev), payload, ts))
    return out


def disk_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def bench_outbox(tmp: Path, rows: list[tuple[str, str, bytes, int]]) -> dict[str, float]:
    path = tmp / "outbox.db"
    ob = Outbox(path, max_rows=10**8, max_age_s=1e9, commit_interval_s=1e9, max_batch=500)
    t = time.perf_counter()
    for key, topic, payload, ts in rows:
        ob.put(key, topic, payload, ts, T0)
    ob.commit(T0)
    put_s = time.perf_counter() - t
    ob._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = disk_bytes(path)
    t = time.perf_counter()
    drained = 0
    while batch := ob.pending_for_publish(500):
        ob.ack_many(r.id for r in batch)
        ob.commit(T0)
        drained += len(batch)
    drain_s = time.perf_counter() - t
    assert drained == len(rows)
    ob.close()
    return {"put": len(rows) / put_s, "drain": drained / drain_s, "bytes": size / len(rows)}


def bench_baseline(tmp: Path, rows: list[tuple[str, str, bytes, int]]) -> dict[str, float]:
    path = tmp / "baseline.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, key TEXT, topic TEXT, ts INTEGER, payload BLOB)"
    )
    t = time.perf_counter()
    for i in range(0, len(rows), 500):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO q (key, topic, payload, ts) VALUES (?, ?, ?, ?)", rows[i : i + 500]
        )
        con.execute("COMMIT")
    put_s = time.perf_counter() - t
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = disk_bytes(path)
    t = time.perf_counter()
    drained = 0
    while batch := con.execute("SELECT id, key, topic, payload, ts FROM q LIMIT 500").fetchall():
        con.execute("BEGIN")
        con.executemany("DELETE FROM q WHERE id = ?", [(r[0],) for r in batch])
        con.execute("COMMIT")
        drained += len(batch)
    drain_s = time.perf_counter() - t
    con.close()
    return {"put": len(rows) / put_s, "drain": drained / drain_s, "bytes": size / len(rows)}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rows = readings(n)
    payload_bytes = sum(len(r[2]) for r in rows) / n
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_outbox(Path(tmp), rows)
        base = bench_baseline(Path(tmp), rows)
    print(
        f"outbox benchmark: {n} readings, {len(DEVICES)} devices, "
        f"mean payload {payload_bytes:.0f} B (JSON telemetry)"
    )
    print(f"{'':28}{'outbox':>14}{'raw sqlite':>14}")
    print(f"{'put+commit (rows/s)':28}{ours['put']:>14,.0f}{base['put']:>14,.0f}")
    print(f"{'drain pending+ack (rows/s)':28}{ours['drain']:>14,.0f}{base['drain']:>14,.0f}")
    print(f"{'disk bytes per reading':28}{ours['bytes']:>14,.1f}{base['bytes']:>14,.1f}")
    print("target: replay >= 5,000 readings/s to the broker (outbox side must be far faster)")


if __name__ == "__main__":
    main()
