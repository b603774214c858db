"""Edge agent benchmarks, each figure next to a baseline measured in the same run.

    .venv/bin/python tests/bench/bench_agent.py [--only cpu,bus,replay] [--window 20]

(a)+(b) ``cpu``: 32 simulated Modbus TCP devices (one server each, profile ``dust-station``:
    10 registers in one FC03) polled at 1 Hz by the agent (``dustgate agent``, a child process)
    into a local mosquitto. Printed: the agent's RSS (goal <= 50 MB) and CPU per reading
    (process CPU time over a steady window / readings the broker received in it) next to the
    bare loop run right after it on the same devices: pymodbus reads of the same registers +
    paho QoS 1 publishes of the same JSON (goal <= 1.2x).
(c) ``bus``: 16 units x 10 registers on one simulated RTU bus that enforces 9600 baud 8N1
    timing (a reply is written when its last byte would have arrived: request bytes + 3.5
    character silence + reply bytes after the request's first byte; a request sent before
    the line has been silent 3.5 characters after the last reply is lost, as on a real line).
    Every device asks for a poll every 50 ms, so the bus is saturated. Printed: achieved
    transactions/s over the theoretical maximum for those frame sizes and gaps (goal >= 0.9).
(d) ``replay``: the outbox holds what 32 devices at 1 Hz read during a 10-minute outage
    (19,200 readings, written through ``gateway.outbox`` with the agent's own payloads); the
    agent starts with the broker up and drains it. Printed: readings/s until the broker has
    all of them (goal >= 5,000/s) and disk bytes per stored reading, next to a bare paho QoS 1
    publisher pushing the same payloads to the same broker.

The simulators run in their own processes so that only the code under test is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import paho.mqtt.client as paho  # noqa: E402
import yaml  # noqa: E402

from gateway.localservices import Mosquitto  # noqa: E402

SITE = "bench"
TCP_DEVICES = 32
BUS_DEVICES = 16
BAUD = 9600
CHAR_S = 10 / BAUD  # 8N1: start + 8 data + stop
T35_S = 3.5 * CHAR_S
REQ_BYTES = 8  # FC03 request: unit, fc, addr(2), count(2), crc(2)
REPLY_BYTES = 5 + 2 * 10  # unit, fc, byte count, 10 registers, crc(2)
OUTAGE_S = 600


# ------------------------------------------------------------------ process figures


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds, unlike /proc/PID/stat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Counter:
    """Counts telemetry messages arriving at the broker (QoS 0 subscription: cheap)."""

    def __init__(self, port: int) -> None:
        self.n = 0
        self.seen: set[tuple[str, int]] = set()
        self.track = False
        self._lock = threading.Lock()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"dustgate/v1/{SITE}/+/telemetry", qos=0)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.n += 1
            if self.track:
                doc = json.loads(msg.payload)
                self.seen.add((msg.topic, doc["seq"]))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def spawn(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, text=True, stdin=subprocess.PIPE, **kw
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def steady_window(pid: int, counter: Counter, warmup: float, window: float) -> tuple[float, int]:
    time.sleep(warmup)
    c0, n0 = cpu_seconds(pid), counter.n
    time.sleep(window)
    return cpu_seconds(pid) - c0, counter.n - n0


# ------------------------------------------------------------------ simulators (own process)


def station_source() -> Any:
    import itertools

    n = itertools.count()

    def values() -> dict[str, float]:
        i = next(n) % 100
        return {
            "wind_speed": 2.0 + i / 100, "wind_force": 2, "wind_sector": 3, "wind_dir": 135,
            "rh": 55.0, "temp": 12.5, "noise": 61.0 + i / 10, "pm25": 40 + i,
            "pm10": 80 + i, "pressure": 1013,
        }  # fmt: skip

    return values


async def serve_tcp(n: int) -> None:
    from drivers.profiles import resolve_profile
    from drivers.sim.modbus_server import TcpServer
    from drivers.sim.units import ProfileUnit

    spec = resolve_profile("dust-station")
    servers = [TcpServer([ProfileUnit(spec, station_source())]) for _ in range(n)]
    ports = [await s.start() for s in servers]
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed


async def serve_timed_rtu(n: int) -> None:
    """RTU slaves on a pty with 9600-baud 8N1 frame timing; prints answered counts each 0.5 s."""
    from timed_rtu import TimedRtuLine

    from drivers.profiles import resolve_profile
    from drivers.sim.units import ProfileUnit

    spec = resolve_profile("dust-station")
    units = {i: ProfileUnit(spec, station_source(), unit_id=i) for i in range(1, n + 1)}
    line = TimedRtuLine(units, BAUD)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    print(json.dumps({"path": line.path}), flush=True)
    while True:
        await asyncio.sleep(0.5)
        print(json.dumps({"t": loop.time(), "n": line.answered, "v": line.violations}), flush=True)


async def bare_loop(ports: list[int], mqtt_port: int) -> None:
    """Baseline: pymodbus reads + paho QoS 1 publishes of the same JSON, 1 Hz per device."""
    from pymodbus.client import AsyncModbusTcpClient

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bare", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(500)
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    loop = asyncio.get_running_loop()
    scales = [0.1, 1, 1, 1, 0.1, 0.1, 0.1, 1, 1, 1]
    names = ["wind_speed", "wind_force", "wind_sector", "wind_dir", "rh", "temp", "noise",
             "pm25", "pm10", "pressure"]  # fmt: skip

    async def device(i: int, port: int) -> None:
        mb = AsyncModbusTcpClient("127.0.0.1", port=port)
        await mb.connect()
        topic = f"dustgate/v1/{SITE}/dev-{i}/telemetry"
        seq, due = 0, loop.time()
        while True:
            rr = await mb.read_holding_registers(0x01F4, count=10, device_id=1)
            regs = rr.registers
            values = {n: r * s for n, r, s in zip(names, regs, scales, strict=True)}
            values["temp"] = (regs[5] - 65536 if regs[5] > 32767 else regs[5]) * 0.1
            doc = {"ts": round(time.time() * 1000), "seq": seq, "values": values,
                   "status": "ok", "model": "dust-station"}  # fmt: skip
            client.publish(topic, json.dumps(doc, separators=(",", ":")), qos=1)
            seq += 1
            due += 1.0
            await asyncio.sleep(max(0.0, due - loop.time()))

    await asyncio.gather(*(device(i, p) for i, p in enumerate(ports)))


# ------------------------------------------------------------------ the agent


def write_config(
    path: Path, mqtt_port: int, buses: list[dict[str, Any]], devices: list[dict[str, Any]]
) -> Path:
    cfg = {
        "site": SITE,
        "gateway": "gw",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_min": 0.2, "reconnect_max": 1},
        "buses": buses,
        "devices": devices,
        "outbox": {"path": str(path.parent / "outbox.db")},
        "status": {"interval": "5s"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_agent(config: Path, log: Path) -> subprocess.Popen[str]:
    return spawn(
        ["-m", "gateway.cli", "agent", "--config", str(config), "--log-level", "WARNING"],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def bench_cpu(tmp: Path, broker: Mosquitto, window: float) -> None:
    sim = spawn([__file__, "--serve-tcp", str(TCP_DEVICES)], stdout=subprocess.PIPE)
    assert sim.stdout is not None
    ports = json.loads(sim.stdout.readline())
    counter = Counter(broker.port)
    try:
        buses = [{"id": f"tcp-{i}", "type": "tcp", "host": "127.0.0.1", "port": p}
                 for i, p in enumerate(ports)]  # fmt: skip
        devices = [{"id": f"dev-{i}", "bus": f"tcp-{i}", "profile": "dust-station", "interval": 1}
                   for i in range(len(ports))]  # fmt: skip
        cfg = write_config(tmp / "cpu" / "site.yaml", broker.port, buses, devices)
        agent = start_agent(cfg, tmp / "cpu" / "agent.log")
        try:
            cpu_a, n_a = steady_window(agent.pid, counter, 8.0, window)
            rss_a, hwm_a = rss_mb(agent.pid), rss_mb(agent.pid, "VmHWM")
        finally:
            stop(agent)
        bare = spawn(
            [__file__, "--bare", json.dumps(ports), str(broker.port)], stdout=subprocess.DEVNULL
        )
        try:
            cpu_b, n_b = steady_window(bare.pid, counter, 5.0, window)
            rss_b = rss_mb(bare.pid)
        finally:
            stop(bare)
    finally:
        counter.stop()
        if sim.stdin:
            sim.stdin.close()
        stop(sim)
    per_a = cpu_a / max(n_a, 1) * 1000
    per_b = cpu_b / max(n_b, 1) * 1000
    print(f"(a) agent RSS with {TCP_DEVICES} devices at 1 Hz: {rss_a:.1f} MB "
          f"(peak {hwm_a:.1f} MB); bare loop {rss_b:.1f} MB; goal <= 50 MB")  # fmt: skip
    print(f"(b) CPU per reading, read to PUBACK, over {window:.0f}s: agent {per_a:.3f} ms "
          f"({n_a} readings, {cpu_a / window * 100:.1f}% of a core); bare pymodbus+paho loop "
          f"{per_b:.3f} ms ({n_b} readings, {cpu_b / window * 100:.1f}%); "
          f"ratio {per_a / per_b:.2f}x; goal <= 1.2x")  # fmt: skip


def bench_bus(tmp: Path, broker: Mosquitto, window: float) -> None:
    sim = spawn([__file__, "--serve-rtu", str(BUS_DEVICES)], stdout=subprocess.PIPE)
    assert sim.stdout is not None
    path = json.loads(sim.stdout.readline())["path"]
    samples: list[dict[str, float]] = []

    def read_samples() -> None:
        assert sim.stdout is not None
        for line in sim.stdout:
            samples.append(json.loads(line))

    threading.Thread(target=read_samples, daemon=True).start()
    buses = [{"id": "rs485", "type": "rtu", "port": path, "baudrate": BAUD}]
    devices = [{"id": f"st-{i}", "bus": "rs485", "profile": "dust-station", "slave_id": i,
                "interval": 0.05} for i in range(1, BUS_DEVICES + 1)]  # fmt: skip
    cfg = write_config(tmp / "bus" / "site.yaml", broker.port, buses, devices)
    agent = start_agent(cfg, tmp / "bus" / "agent.log")
    try:
        time.sleep(4.0)
        s0 = samples[-1]
        time.sleep(window)
        s1 = samples[-1]
    finally:
        stop(agent)
        if sim.stdin:
            sim.stdin.close()
        stop(sim)
    achieved = (s1["n"] - s0["n"]) / (s1["t"] - s0["t"])
    per_tx = REQ_BYTES * CHAR_S + T35_S + REPLY_BYTES * CHAR_S + T35_S
    theory = 1 / per_tx
    print(f"(c) bus efficiency, {BUS_DEVICES} devices x 10 registers on a 9600-baud 8N1 RTU bus: "
          f"{achieved:.2f} transactions/s of a theoretical {theory:.2f}/s "
          f"({REQ_BYTES}+{REPLY_BYTES} bytes + 2 x 3.5 chars = {per_tx * 1000:.2f} ms each): "
          f"{achieved / theory:.3f}; timing violations {int(s1['v'])}; goal >= 0.9")  # fmt: skip


def fill_outbox(db: Path, devices: int, seconds: int) -> tuple[list[tuple[str, bytes]], int]:
    """The outbox after ``seconds`` of outage; returns (topic, payload) list and bytes on disk."""
    from gateway import protocol as p
    from gateway.outbox import Outbox

    ob = Outbox(db, max_rows=2_000_000, max_age_s=7 * 86400.0)
    t0 = time.time() - seconds
    out = []
    for s in range(seconds):
        wall = t0 + s
        for d in range(devices):
            key = f"dev-{d}"
            values = {"wind_speed": 2.3, "wind_force": 2.0, "wind_sector": 3.0, "wind_dir": 135.0,
                      "rh": 55.1, "temp": 12.5, "noise": 61.2 + s % 10, "pm25": 40.0 + s % 50,
                      "pm10": 80.0 + s % 70, "pressure": 1013.0}  # fmt: skip
            reading = p.Telemetry(ts=p.now_ms(wall), seq=ob.next_seq(key), values=values,
                                  model="dust-station")  # fmt: skip
            topic = p.telemetry_topic(SITE, key)
            payload = p.encode(reading)
            ob.put(key, topic, payload, reading.ts, wall)
            out.append((topic, payload))
    ob.commit(time.time())
    ob.close()
    with contextlib.closing(__import__("sqlite3").connect(db)) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return out, db.stat().st_size


def count_messages(port: int, total: int) -> None:
    """Subscriber process: prints first/last arrival times of ``total`` telemetry messages."""
    done = threading.Event()
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_message(_c: Any, _u: Any, _m: paho.MQTTMessage) -> None:
        now = time.monotonic()
        if state["n"] == 0:
            state["first"] = now
        state["n"] += 1
        state["last"] = now
        if state["n"] >= total:
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"count-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_: print("ready", flush=True)
    client.connect("127.0.0.1", port)
    client.subscribe(f"dustgate/v1/{SITE}/+/telemetry", qos=0)
    client.loop_start()
    done.wait(180)
    client.disconnect()
    client.loop_stop()
    print(json.dumps(state), flush=True)


def bare_publish(port: int, db: str) -> None:
    """Baseline publisher process: the outbox's payloads, paho QoS 1, 500 in flight."""
    import sqlite3

    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT stream.topic, msg.payload FROM msg JOIN stream ON stream.id = msg.stream "
        "ORDER BY msg.id"
    ).fetchall()
    con.close()
    acked = threading.Event()
    left = {"n": len(rows)}

    def on_publish(*_: Any) -> None:
        left["n"] -= 1
        if left["n"] == 0:
            acked.set()

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id="bare-replay", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    for topic, payload in rows:
        client.publish(topic, payload, qos=1)
    acked.wait(120)
    client.disconnect()
    client.loop_stop()


def timed_drain(broker: Mosquitto, total: int, publisher: list[str], log: Path) -> float:
    """Seconds from the first to the last of ``total`` messages at a subscriber process."""
    counter = spawn([__file__, "--count", str(broker.port), str(total)], stdout=subprocess.PIPE)
    assert counter.stdout is not None
    assert counter.stdout.readline().strip() == "ready"
    proc = spawn(publisher, stdout=log.open("a"), stderr=subprocess.STDOUT)
    try:
        result = json.loads(counter.stdout.readline())
    finally:
        stop(proc)
        stop(counter)
    if result["n"] < total:
        raise RuntimeError(f"only {result['n']} of {total} messages arrived")
    return float(result["last"] - result["first"])


def bench_replay(tmp: Path, broker: Mosquitto) -> None:
    d = tmp / "replay"
    d.mkdir(parents=True, exist_ok=True)
    rows, size = fill_outbox(d / "outbox.db", TCP_DEVICES, OUTAGE_S)
    total = len(rows)
    copy = d / "baseline.db"
    copy.write_bytes((d / "outbox.db").read_bytes())
    # the agent with the backlog only (no devices): from the first replayed reading to the last
    cfg = write_config(d / "site.yaml", broker.port, [], [])
    agent_s = timed_drain(
        broker,
        total,
        ["-m", "gateway.cli", "agent", "--config", str(cfg), "--log-level", "WARNING"],
        d / "agent.log",
    )
    bare_s = timed_drain(broker, total, [__file__, "--bare-publish", str(broker.port), str(copy)],
                         d / "bare.log")  # fmt: skip
    print(f"(d) outbox replay after a {OUTAGE_S // 60}-minute outage of {TCP_DEVICES} devices at "
          f"1 Hz: {total} readings in {agent_s:.2f}s = {total / agent_s:,.0f} readings/s "
          f"(goal >= 5,000/s); bare paho QoS 1 publisher of the same payloads "
          f"{total / bare_s:,.0f}/s; ratio {bare_s / agent_s:.2f}; disk {size / total:.0f} "
          f"bytes per stored reading ({size / 1e6:.1f} MB)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="cpu,bus,replay")
    parser.add_argument("--window", type=float, default=20.0, help="steady window, seconds")
    parser.add_argument("--serve-tcp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-rtu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-publish", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_tcp:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_tcp(args.serve_tcp))
        return 0
    if args.serve_rtu:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve_timed_rtu(args.serve_rtu))
        return 0
    if args.bare:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(bare_loop(json.loads(args.bare[0]), int(args.bare[1])))
        return 0
    if args.count:
        count_messages(*args.count)
        return 0
    if args.bare_publish:
        bare_publish(int(args.bare_publish[0]), args.bare_publish[1])
        return 0
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="dustgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "mq").start()
        try:
            if "cpu" in only:
                bench_cpu(tmp, broker, args.window)
            if "bus" in only:
                bench_bus(tmp, broker, args.window)
            if "replay" in only:
                bench_replay(tmp, broker)
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
