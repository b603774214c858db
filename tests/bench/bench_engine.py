"""Rule engine service: throughput against a bare subscriber, and decision latency.

Setup: a local mosquitto; 1,000 devices x 10 metrics on one site; 200 rules
(each: max of pm10 or pm25 over 5 min across 5 devices, ``combine: any``, a
high-wind interlock on the same devices, its own cannon to lease). Every
process below is separate: publisher, bare subscriber, engine.

1. **Throughput** (messages/s). Every consumer first opens a persistent MQTT
   5 session (QoS 1 subscription to ``dustgate/v1/site-01/+/telemetry``) and
   goes away; the publisher process then publishes N readings (QoS 1), which
   the broker queues for every session; each consumer then reconnects and
   drains its queue (the broker sends it right after CONNACK). Timed from
   the start of its connection to its N-th message handled, so the figure is
   the consumer's own capacity, not the publisher's, and includes the MQTT
   client's receiving: paho parsing each packet, building its MQTT 5
   properties and sending a PUBACK, about 100-150 us CPU a message on this
   machine, which dwarfs everything else. (The engine is timed from the
   start of ``run()``: a ``gc.freeze`` of a few ms, then the connection.)

   Three consumers:

   - the *bare subscriber* of the issue: the same client library (aiomqtt,
     same ``make_client`` settings) used as documented (``async for m in
     client.messages``), the same decode
     (``gateway.protocol.decode(Telemetry)``), nothing else;
   - the *batched bare subscriber*: the same, but taking the messages queued
     behind the first in batches (``gateway.mqttinternals.Inbox``) and with
     Nagle off (``set_nodelay``), as the engine does. aiomqtt's iterator
     costs a task and an ``asyncio.wait`` per message; with Nagle off every
     PUBACK is sent at once, which costs some 20-30 us of kernel time a
     message here (the engine needs it for command latency). So this one is
     the like-for-like baseline: engine / batched bare is the cost of the
     engine's own work;
   - the *engine*: ``rules.service.service.RulesService`` as ``dustgate rules`` runs
     it (no ``influx:`` configured, so no sink), restarted between rounds
     (its state file carries over). It keeps up with the client, so no
     backlog builds up (``rules.service.receive``: with 64 or more
     queued it would evaluate the rules once per 5,000 messages / 0.25 s)
     and it evaluates the rules reading by reading, as when live.

   The bare subscribers do not subscribe again (their session keeps the
   subscription); the engine does, as it always does, while it receives.
   Five rounds, the consumers back to back in each, because this machine is
   shared and noisy; the best of each is compared (and, for a steadier
   figure, the median of the per-round ratios and of the per-round
   CPU-per-message ratios is printed too), and each round also prints the
   time spent in the cyclic garbage collector and, with
   ``BENCH_HANDLER_TIMING=1``, the engine's time inside its message handler
   (a timer the bare subscribers do not pay for, so off by default). Goal
   (the issue's): engine / bare >= 0.8.
2. **Decision latency**: with the engine live and a background process
   publishing 1,000 readings/s, a probe process publishes one exceeding
   reading for each rule in turn and times until that rule's lease command
   arrives on its cmd topic. p50 / p99; goal p99 <= 50 ms on loopback.

    .venv/bin/python tests/bench/bench_engine.py [--messages 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

logging.getLogger("mqtt").setLevel(logging.ERROR)

from gateway import protocol as p  # noqa: E402
from gateway.configfile import MqttSettings  # noqa: E402
from gateway.localservices import Mosquitto  # noqa: E402
from gateway.mqttclient import make_client  # noqa: E402
from gateway.mqttinternals import Inbox, set_nodelay  # noqa: E402

SITE = "site-01"
DEVICES = [f"dev-{i:04d}" for i in range(1000)]
METRICS = [
    "pm1",
    "pm25",
    "pm10",
    "tsp",
    "noise",
    "wind_speed",
    "wind_dir",
    "temp",
    "rh",
    "pressure",
]
N_RULES = 200
THRESHOLD = 500.0
BARE_ID = "bench-bare"
BATCHED_ID = "bench-bare-batched"
# BENCH_HANDLER_TIMING=1: also time the engine's message handler (costs it ~0.5 us a message)
TIME_HANDLER = bool(os.environ.get("BENCH_HANDLER_TIMING"))
ENGINE_ID = "bench-engine"


def rules_yaml(port: int, state_dir: Path) -> dict[str, Any]:
    rules = []
    for i in range(N_RULES):
        devs = DEVICES[5 * i : 5 * i + 5]
        rules.append(
            {
                "id": f"rule-{i:03d}",
                "site": SITE,
                "metric": "pm10" if i % 2 == 0 else "pm25",
                "devices": devs,
                "combine": "any",
                "aggregate": "max",
                "window": "5m",
                "above": THRESHOLD,
                "clear": THRESHOLD - 100,
                "actions": {"lease": [f"cannon-{i:03d}"], "run_for": "10m"},
                "unless": [
                    {
                        "name": "high_wind",
                        "metric": "wind_speed",
                        "devices": devs,
                        "aggregate": "last",
                        "window": "1m",
                        "above": 20,
                        "clear": 15,
                        "on_unknown": "ignore",
                    }
                ],
            }
        )
    return {
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(state_dir),
        "sites": [SITE],
        "actuators": {f"{SITE}/cannon-{i:03d}": {} for i in range(N_RULES)},
        # readings are drained up to a minute after their sensor time: keep them fresh
        "defaults": {"lease_s": 60, "min_staleness": "5m", "max_staleness": "10m"},
        "rules": rules,
    }


def reading(rnd: random.Random, ts_ms: int, seq: int, exceed: bool = False) -> bytes:
    values = {
        "pm1": rnd.uniform(5, 40),
        "pm25": rnd.uniform(10, 90),
        "pm10": rnd.uniform(20, 120),
        "tsp": rnd.uniform(50, 250),
        "noise": rnd.uniform(50, 75),
        "wind_speed": rnd.uniform(0, 8),
        "wind_dir": rnd.uniform(0, 360),
        "temp": rnd.uniform(5, 25),
        "rh": rnd.uniform(30, 90),
        "pressure": rnd.uniform(990, 1020),
    }
    if exceed:
        values["pm10"] = values["pm25"] = 999.0
    values = {k: round(v, 1) for k, v in values.items()}
    return p.encode(p.Telemetry(ts=ts_ms, seq=seq, values=values))


# ------------------------------------------------------------------ roles


class GcMeter:
    """Time spent in the cyclic garbage collector (per generation), once started."""

    def __init__(self) -> None:
        self.on = False
        self.t0 = 0.0
        self.seconds = 0.0
        self.counts = [0, 0, 0]
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self.t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self.t0
            self.counts[info["generation"]] += 1

    def report(self) -> dict[str, Any]:
        return {"gc_s": self.seconds, "gc_counts": self.counts}


def settings(port: int) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port)


class Clock:
    """Wall and CPU time of one consumer, from the start of its connection to its
    N-th message handled."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def report(self, n: int) -> dict[str, Any]:
        return {
            "n": n,
            "seconds": time.perf_counter() - self.start,
            "cpu": time.process_time() - self.cpu_start,
        }


async def role_bare(port: int, n: int, prime: bool, batched: bool) -> None:
    """Decode every message, nothing else: through aiomqtt's iterator, or
    (``batched``) taking what is queued in batches as the engine does."""
    inbox = Inbox() if batched else None
    client = make_client(
        settings(port), BATCHED_ID if batched else BARE_ID, persistent=True, inbox=inbox
    )
    clock = Clock()
    meter = GcMeter()
    meter.on = not prime
    async with client:
        if batched:  # like the engine: Nagle off (each PUBACK then goes out at once)
            set_nodelay(client)
        if prime:  # the persistent session keeps the subscription from here on
            await client.subscribe(p.subscription("telemetry", SITE), qos=1)
            print(json.dumps({"primed": True}), flush=True)
            return
        count = 0
        async for first_m in client.messages:
            for m in inbox.queued(first_m) if inbox is not None else (first_m,):
                p.decode(p.Telemetry, m.payload)  # type: ignore[arg-type]
                count += 1
            if count >= n:
                break
        print(json.dumps({**clock.report(count), **meter.report()}), flush=True)


async def role_engine(port: int, n: int, config: Path, prime: bool) -> None:
    from rules.core.config import load_rules_file
    from rules.service.service import RulesService, ServiceOptions

    rf = load_rules_file(config)

    meter = GcMeter()
    clock = Clock()

    class Timed(RulesService):
        count = 0
        inside = 0.0

        def on_message(self, topic: str, payload: bytes, now: float, evaluate: bool = True) -> Any:
            if TIME_HANDLER:
                t0 = time.perf_counter()
                out = super().on_message(topic, payload, now, evaluate)
                self.inside += time.perf_counter() - t0
            else:  # the bare subscriber has no timer around its decode either
                out = super().on_message(topic, payload, now, evaluate)
            self.count += 1
            if n and self.count == n:
                out_ = {
                    **clock.report(n),
                    "handler": self.inside if TIME_HANDLER else None,
                    "ticks": self.counters["coalesced_ticks"],
                    **meter.report(),
                }
                print(json.dumps(out_), flush=True)
            return out

    svc = Timed(config, rf, ServiceOptions(client_id=ENGINE_ID))
    if n == 0:  # the latency phase: say when we are subscribed

        async def announce() -> None:
            await svc.connected.wait()
            print(json.dumps({"live": True}), flush=True)

        announcer = asyncio.get_running_loop().create_task(announce())
    if prime:
        client = make_client(settings(port), ENGINE_ID, persistent=True)
        async with client:
            for sub in svc.subscriptions():
                await client.subscribe(sub, qos=1)
        print(json.dumps({"primed": True}), flush=True)
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # timed from here: run() connects (after a gc.freeze of a few ms)
    clock.restart()
    meter.on = True
    await svc.run(stop)
    if n == 0:
        announcer.cancel()
    with contextlib.suppress(BrokenPipeError):  # the orchestrator may be gone
        print(json.dumps({"engine_counters": dict(svc.counters)}), flush=True)


async def role_publish(port: int, n: int, round_: int) -> None:
    rnd = random.Random(1 + round_)
    per_dev = -(-n // len(DEVICES))
    # 1 s apart per device, ending a little before now; later rounds are newer
    base = p.now_ms(time.time()) - per_dev * 1000 - 5000
    client = make_client(settings(port), "bench-pub")
    client.pending_calls_threshold = 1000  # we keep 400 in flight on purpose
    t0 = time.perf_counter()
    async with client:
        pending: set[asyncio.Task[None]] = set()
        sent = 0
        for k in range(per_dev):
            for dev in DEVICES:
                if sent == n:
                    break
                topic = p.telemetry_topic(SITE, dev)
                task = asyncio.create_task(
                    client.publish(
                        topic,
                        reading(rnd, base + k * 1000, round_ * per_dev + k + 1),
                        qos=1,
                        timeout=60,
                    )
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
                if len(pending) >= 400:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    print(json.dumps({"published": sent, "seconds": time.perf_counter() - t0}), flush=True)


def probe_device(rule: int) -> str:
    """The device whose exceeding reading triggers ``rule`` in the latency phase."""
    return DEVICES[5 * rule + 1]


async def role_background(port: int) -> None:
    """1,000 readings/s over the devices that are not probed, until SIGTERM.

    Probe devices are left to the latency process: two publishers stamping
    the same device with wall-clock times would make one of them look out of
    order (a real device has one publisher).
    """
    rnd = random.Random(3)
    probes = {probe_device(r) for r in range(N_RULES)}
    devices = [d for d in DEVICES if d not in probes]
    client = make_client(settings(port), "bench-background")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    seq = 2_000_000
    async with client:
        print(json.dumps({"background": True}), flush=True)
        t0 = time.perf_counter()
        sent = 0
        while not stop.is_set():
            seq += 1
            for dev in devices:
                payload = reading(rnd, p.now_ms(time.time()), seq)
                await client.publish(p.telemetry_topic(SITE, dev), payload, qos=1)
                sent += 1
                if sent % 100 == 0:  # pace at 1,000/s
                    await asyncio.sleep(max(0.0, t0 + sent / 1000 - time.perf_counter()))
                if stop.is_set():
                    break


async def role_latency(port: int, samples: int) -> None:
    """One exceeding reading per rule in turn; time until its lease command arrives."""
    rnd = random.Random(2)
    client = make_client(settings(port), "bench-latency")
    got: dict[str, float] = {}
    waiting: dict[str, asyncio.Event] = {}
    async with client:
        set_nodelay(client)  # as the engine does: no Nagle delay on our probe
        await client.subscribe(p.subscription("cmd", SITE), qos=1)

        async def receive() -> None:
            async for m in client.messages:
                t = time.perf_counter()
                topic = m.topic.value
                if topic not in got:
                    got[topic] = t
                    ev = waiting.get(topic)
                    if ev is not None:
                        ev.set()

        rx = asyncio.create_task(receive())
        await asyncio.sleep(2.0)  # the windows fill and the engine settles
        lat: list[float] = []
        missed = 0
        for k in range(samples):
            rule = k % N_RULES
            dev = probe_device(rule)
            topic = p.cmd_topic(SITE, f"cannon-{rule:03d}")
            got.pop(topic, None)
            ev = waiting[topic] = asyncio.Event()
            payload = reading(rnd, p.now_ms(time.time()), 3_000_000 + k, exceed=True)
            t_pub = time.perf_counter()
            await client.publish(p.telemetry_topic(SITE, dev), payload, qos=1)
            try:
                await asyncio.wait_for(ev.wait(), 2.0)
                lat.append(got[topic] - t_pub)
            except TimeoutError:
                missed += 1
            await asyncio.sleep(0.03)
        rx.cancel()
    print(json.dumps({"latencies": lat, "missed": missed}), flush=True)


# ------------------------------------------------------------ orchestrator


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def result(proc: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise SystemExit(f"a benchmark process gave no result within {timeout:g}s: {proc.args!r}")
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout)
        raise SystemExit(f"a benchmark process failed (exit {proc.returncode})")
    return json.loads(line)


def stop_engine(engine: subprocess.Popen[str] | None) -> None:
    if engine is not None and engine.poll() is None:
        engine.send_signal(signal.SIGTERM)
        try:
            engine.wait(20)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait(5)


def run(n: int, samples: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        # Nagle off on the broker's client sockets (mosquitto defaults to on): small
        # command packets otherwise wait for delayed ACKs (~40 ms) on loopback
        broker = Mosquitto(Path(tmp) / "mosquitto", extra_conf="set_tcp_nodelay true\n").start()
        engine: subprocess.Popen[str] | None = None
        try:
            port = str(broker.port)
            config = Path(tmp) / "rules.yaml"
            config.write_text(yaml.safe_dump(rules_yaml(broker.port, Path(tmp) / "state")))
            common = ["--port", port, "--messages", str(n), "--config", str(config)]
            for role in ("bare", "bare-batched", "engine"):
                result(spawn("--role", role, "--prime", *common))
            names = ("bare", "batched", "engine")
            rates: dict[str, list[float]] = {k: [] for k in names}
            cpus: dict[str, list[float]] = {k: [] for k in names}  # us per message
            for r in range(rounds):
                # the publisher starts its device sequences where the last round ended
                pub = result(spawn("--role", "publish", *common, "--round", str(r)))
                bare = result(spawn("--role", "bare", *common))
                batched = result(spawn("--role", "bare-batched", *common))
                engine = spawn("--role", "engine", *common)
                eng = result(engine)
                stop_engine(engine)  # offline again, so the next round queues for it
                engine = None
                for name, res in zip(names, (bare, batched, eng), strict=True):
                    rates[name].append(res["n"] / res["seconds"])
                    cpus[name].append(res["cpu"] / res["n"] * 1e6)
                print(
                    f"round {r + 1}: published {pub['published']:,} readings in "
                    f"{pub['seconds']:.1f}s; "
                    + ", ".join(
                        f"{k} {rates[k][-1]:,.0f}/s ({cpus[k][-1]:.0f} us CPU/msg)" for k in names
                    )
                    + f"; {eng['ticks']} coalesced evaluations; in the garbage collector: bare "
                    f"{bare['gc_s'] / bare['n'] * 1e6:.1f} us/msg {bare['gc_counts']}, batched "
                    f"{batched['gc_s'] / batched['n'] * 1e6:.1f} us/msg, engine "
                    f"{eng['gc_s'] / eng['n'] * 1e6:.1f} us/msg {eng['gc_counts']}"
                    + (
                        f"; engine handler (decode+ingest+rules) "
                        f"{eng['handler'] / eng['n'] * 1e6:.1f} us/msg"
                        if eng["handler"] is not None
                        else ""
                    )
                )
            best = {k: max(v) for k, v in rates.items()}
            print(f"best of {rounds}, from the connection to the last message handled:")
            print(f"  bare subscriber (aiomqtt iterator + decode): {best['bare']:10,.0f} msg/s")
            print(f"  bare subscriber, queued in batches:          {best['batched']:10,.0f} msg/s")
            print(f"  rule engine (200 rules):                     {best['engine']:10,.0f} msg/s")
            ratio = best["engine"] / best["bare"]
            verdict = "ok" if ratio >= 0.8 else "BELOW GOAL"
            print(f"  ratio engine / bare: {ratio:.2f} (goal >= 0.8: {verdict})")
            print(
                f"  ratio engine / batched bare: {best['engine'] / best['batched']:.2f} "
                "(like for like: the same receive loop)"
            )
            # each round's consumers ran back to back: their ratios are paired, and CPU
            # time per message is less sensitive to other guests than wall time
            for base in ("bare", "batched"):
                per_round = [e / b for e, b in zip(rates["engine"], rates[base], strict=True)]
                cpu_ratio = [b / e for e, b in zip(cpus["engine"], cpus[base], strict=True)]
                delta = statistics.median(
                    e - b for e, b in zip(cpus["engine"], cpus[base], strict=True)
                )
                print(
                    f"  per round, median of {rounds}, engine against {base}: ratio "
                    f"{statistics.median(per_round):.2f}, CPU per message {base} / engine "
                    f"{statistics.median(cpu_ratio):.2f} (engine {delta:+.1f} us)"
                )
            engine = spawn("--role", "engine", *common, "--messages", "0")
            result(engine)  # subscribed
            background = spawn("--role", "background", *common)
            result(background)
            try:
                lat = result(spawn("--role", "latency", *common, "--samples", str(samples)))
            finally:
                background.send_signal(signal.SIGTERM)
                background.wait(20)
            ms = sorted(x * 1000 for x in lat["latencies"])
            if ms:
                p50 = statistics.median(ms)
                p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
                verdict = "ok" if p99 <= 50 else "ABOVE GOAL"
                print(
                    f"decision latency, reading published -> lease command received "
                    f"({len(ms)} samples, 1,000 readings/s background): p50 {p50:.1f} ms, "
                    f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms (goal p99 <= 50 ms: {verdict})"
                )
            if lat["missed"]:
                print(f"MISSED: {lat['missed']} exceeding readings got no command within 2 s")
        finally:
            stop_engine(engine)
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--role", default=None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--messages", type=int, default=20_000, help="per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round", type=int, default=0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--prime", action="store_true")
    args = ap.parse_args()
    if args.role is None:
        t0 = time.monotonic()
        run(args.messages, args.samples, args.rounds)
        print(f"(benchmark took {time.monotonic() - t0:.0f}s)")
        return
    if args.role in ("bare", "bare-batched"):
        asyncio.run(role_bare(args.port, args.messages, args.prime, args.role == "bare-batched"))
    elif args.role == "engine":
        logging.basicConfig(level=logging.INFO, filename=os.devnull)
        if os.environ.get("BENCH_PROFILE") and not args.prime:
            import cProfile

            cProfile.runctx(
                "asyncio.run(role_engine(args.port, args.messages, args.config, False))",
                globals(),
                {"args": args},
                f"/tmp/bench-engine-{args.messages}.prof",
            )
        else:
            asyncio.run(role_engine(args.port, args.messages, args.config, args.prime))
    elif args.role == "publish":
        asyncio.run(role_publish(args.port, args.messages, args.round))
    elif args.role == "background":
        asyncio.run(role_background(args.port))
    elif args.role == "latency":
        asyncio.run(role_latency(args.port, args.samples))
    else:
        raise SystemExit(f"unknown role {args.role}")
    sys.stdout.flush()
    os._exit(0) if args.role in ("latency",) else None


if __name__ == "__main__":
    main()
