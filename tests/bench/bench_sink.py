"""Benchmark: InfluxSink throughput into a real influxd vs a plain bulk POST.

Run: ``.venv/bin/python tests/bench/bench_sink.py [N_POINTS]``

Both write the same telemetry line protocol (``N_POINTS`` readings, 5000
lines per request) into their own database of one local influxd, in the same
run.  Reported: points/s for each, the ratio sink/bulk (goal >= 0.8), and CPU
seconds per point in this process (``time.process_time``: encoding excluded,
the sink's ``add`` calls, batching, gzip and HTTP included; influxd's own CPU
is not ours and not counted).
"""

from __future__ import annotations

import asyncio
import http.client
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.localservices import Influxd  # noqa: E402
from gateway.protocol import Telemetry  # noqa: E402
from rules.sink.points import telemetry_line  # noqa: E402
from rules.sink.settings import InfluxSettings  # noqa: E402
from rules.sink.writer import InfluxSink  # noqa: E402

BATCH = 5000


def make_lines(n: int) -> list[str]:
    out = []
    t0 = 1_700_000_000_000
    for i in range(n):
        dev = f"dev-{i % 20}"
        msg = Telemetry(
            ts=t0 + (i // 20) * 1000,
            seq=i // 20,
            values={
                "pm25": 30.0 + i % 17,
                "pm10": 60.0 + i % 23,
                "tsp": 120.5,
                "noise": 61.2,
                "wind_speed": 2.4,
                "wind_dir": 270.0,
            },
        )
        line = telemetry_line(f"site-{i % 3}", dev, msg)
        assert line is not None
        out.append(line)
    return out


def count(ix: Influxd, db: str) -> int:
    res = ix.query('SELECT count("seq") FROM "telemetry"', db=db)
    return int(res["results"][0]["series"][0]["values"][0][1])  # type: ignore[index]


def bulk_post(ix: Influxd, db: str, lines: list[str]) -> tuple[float, float]:
    ix.create_database(db)
    host, port = "127.0.0.1", ix.port
    path = "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})
    t, c = time.perf_counter(), time.process_time()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for i in range(0, len(lines), BATCH):
        body = ("\n".join(lines[i : i + BATCH]) + "\n").encode()
        conn.request("POST", path, body=body)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204, resp.status
    conn.close()
    return time.perf_counter() - t, time.process_time() - c


async def sink_run(
    ix: Influxd, db: str, lines: list[str], gzip: bool, state: Path
) -> tuple[float, float]:
    s = InfluxSettings(url=ix.url, database=db, batch_size=BATCH, gzip=gzip)
    sink = InfluxSink(s, state)
    await sink.start()
    t, c = time.perf_counter(), time.process_time()
    for line in lines:
        sink.add(line)
    assert await sink.flush(300)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    await sink.close()
    assert sink.counters.written == len(lines), sink.counters
    return wall, cpu


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    lines = make_lines(n)
    with tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        ix = Influxd(Path(tmp) / "influxd").start()
        try:
            # Warm up influxd (first shard creation, WAL) outside the measurements.
            bulk_post(ix, "warmup", lines[:BATCH])
            results = {}
            results["bulk POST"] = bulk_post(ix, "bulk", lines)
            results["sink (gzip)"] = asyncio.run(
                sink_run(ix, "sink_gz", lines, True, Path(tmp) / "s1")
            )
            results["sink (no gzip)"] = asyncio.run(
                sink_run(ix, "sink_plain", lines, False, Path(tmp) / "s2")
            )
            for db in ("bulk", "sink_gz", "sink_plain"):
                assert count(ix, db) == n, db
        finally:
            ix.stop()
    print(f"{n} points, batches of {BATCH}, one local influxd 1.x")
    bulk_rate = n / results["bulk POST"][0]
    for name, (wall, cpu) in results.items():
        rate = n / wall
        print(
            f"{name:15s} {rate:10.0f} points/s  ratio {rate / bulk_rate:5.2f}  "
            f"CPU {cpu / n * 1e6:6.2f} us/point"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
