"""Scale-out: one engine against two partitioned engines, and a sustained city run.

Setup: a local mosquitto; S sites x 10 devices x 10 metrics; on each site one
rule (mean pm10 over 1 min across its 10 devices above 500, leasing the site's
cannon). Engines are ``rules.service.RulesService`` as ``dustgate rules`` runs
it (no sink), each in its own process, ``--partition K/N``. Every process is
separate: publisher(s), engines, probe.

1. **Throughput, 1 vs 2 engines** on the same published load. Each engine
   first opens its persistent MQTT 5 session (its partition's subscriptions)
   and goes away; the publisher publishes M readings over all sites (QoS 1),
   which the broker queues; then the engine(s) start together and drain;
   then their sessions are ended, so the other layout's round queues nothing
   for them. Each engine is timed from the start of its session (connect,
   subscribe, drain, as bench_engine times it) to the last reading of its
   own sites (the orchestrator knows how many: the slot of a site is
   deterministic); a partitioned engine's start-up check before that (it
   reads the other engines' presences for a second) is not counted.
   Aggregate = M / the slower engine's time. CPU per message = the engine
   process's CPU time / its messages. Rounds alternate 1 and 2 engines
   (paired); medians and ranges are printed. Goals (issue 19): 2 engines
   >= 1.7x one, per-engine CPU per message within 10 % of the single one.
2. **City run**: S sites x 10 devices at 1 Hz (one reading per device per
   second, stamped with the wall clock), 2 engines (partitions 0/2, 1/2),
   for ``--city-seconds`` (default 120). Reported: readings/s offered and
   handled; the engines' lag (handled time - reading time, sampled every
   100th reading: p50/p99/max); decision latency (a probe publishes an
   exceeding reading on a site and times its lease command: p50/p99); and
   where the CPU went (broker, generators, engines, probe), from /proc.
   Goal: >= 1,000 sites (10,000 msg/s) with lag bounded and decision
   latency p99 <= 50 ms.

    .venv/bin/python tests/bench/bench_scale.py [--sites 1000] [--messages 40000]
        [--rounds 3] [--city-seconds 120] [--city-sites 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
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

# the orchestration helpers of the engine benchmark (this folder is on sys.path)
from bench_engine import reading, result, settings  # noqa: E402
from bench_engine import stop_engine as stop  # noqa: E402

from gateway import protocol as p  # noqa: E402
from gateway.localservices import Mosquitto  # noqa: E402
from gateway.mqttclient import make_client  # noqa: E402
from rules.core.partition import Partition, parse_partition, slot  # noqa: E402

DEVICES = [f"dev-{i}" for i in range(10)]
PROBE_DEVICE = DEVICES[-1]
THRESHOLD = 500.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def site_name(i: int) -> str:
    return f"site-{i:04d}"


def rules_yaml(port: int, state_dir: Path, n_sites: int) -> dict[str, Any]:
    sites = [site_name(i) for i in range(n_sites)]
    return {
        "mqtt": {"host": "127.0.0.1", "port": port},
        "state_dir": str(state_dir),
        "actuators": {f"{s}/cannon": {"litres_per_minute": 10} for s in sites},
        "rules": [
            {
                "id": "pm10",
                "site": sites,
                "metric": "pm10",
                "devices": DEVICES,
                "combine": "any",
                "aggregate": "max",
                "window": "1m",
                "above": THRESHOLD,
                "clear": THRESHOLD * 0.8,
                "actions": {"lease": ["cannon"], "run_for": "2m", "cooldown": "10s"},
            }
        ],
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its waited-for children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# ------------------------------------------------------------------ roles


async def role_engine(
    port: int, n: int, config: Path, part: Partition, prime: bool, forget: bool = False
) -> None:
    """One engine of ``part``; prints when it has handled ``n`` messages (0: never;
    then it samples its lag until SIGTERM and prints the samples)."""
    from rules.core.config import load_rules_file
    from rules.service import presence
    from rules.service.service import RulesService, ServiceOptions

    rf = load_rules_file(config)
    client_id = f"bench-engine-{part.index}-of-{part.count}"
    t0, cpu0 = time.perf_counter(), time.process_time()
    lags: list[float] = []
    check = presence.wait_until_clear

    async def timed_check(svc: RulesService, stop: asyncio.Event) -> bool:
        """The partition check, then the clock starts (the session connects next)."""
        nonlocal t0, cpu0
        ok = await check(svc, stop)
        t0, cpu0 = time.perf_counter(), time.process_time()
        return ok

    presence.wait_until_clear = timed_check  # the harness's clock only; the same check

    class Timed(RulesService):
        count = 0

        def on_message(self, topic: str, payload: bytes, now: float, evaluate: bool = True) -> Any:
            out = super().on_message(topic, payload, now, evaluate)
            self.count += 1
            if n and self.count == n:
                secs = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                print(json.dumps({"n": n, "seconds": secs, "cpu": cpu}), flush=True)
            elif not n and self.count % 100 == 0 and topic.endswith("/telemetry"):
                ts = json.loads(payload)["ts"]
                lags.append(time.time() - ts / 1000)
            return out

    svc = Timed(config, rf, ServiceOptions(client_id=client_id, partition=part))
    if forget:  # end the persistent session: nothing more is queued for it
        async with make_client(settings(port), client_id, persistent=False):
            pass
        print(json.dumps({"forgotten": True}), flush=True)
        return
    if prime:
        client = make_client(settings(port), client_id, persistent=True)
        async with client:
            for sub in svc.subscriptions():
                await client.subscribe(sub, qos=1)
        print(json.dumps({"primed": True}), flush=True)
        return
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if not n:

        async def announce() -> None:
            await svc.connected.wait()
            print(json.dumps({"live": True}), flush=True)

        announcer = asyncio.get_running_loop().create_task(announce())
    await svc.run(stop)
    if not n:
        announcer.cancel()
        print(json.dumps({"lags": lags, "handled": svc.count}), flush=True)


async def role_publish(port: int, n: int, n_sites: int, round_: int) -> None:
    """``n`` readings over all sites' devices, round robin, QoS 1, as fast as it goes."""
    rnd = random.Random(1 + round_)
    topics = [p.telemetry_topic(site_name(s), d) for s in range(n_sites) for d in DEVICES]
    per_dev = -(-n // len(topics))
    base = p.now_ms(time.time()) - per_dev * 1000 - 5000
    client = make_client(settings(port), "bench-pub")
    client.pending_calls_threshold = 1000
    async with client:
        pending: set[asyncio.Task[None]] = set()
        sent = 0
        for k in range(per_dev):
            for topic in topics:
                if sent == n:
                    break
                payload = reading(rnd, base + k * 1000, round_ * per_dev + k + 1)
                task = asyncio.create_task(client.publish(topic, payload, qos=1, timeout=60))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
                if len(pending) >= 400:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    print(json.dumps({"published": sent}), flush=True)


def role_generate(port: int, first: int, last: int, skip: set[str]) -> None:
    """Sites ``first..last-1`` x 10 devices at 1 Hz with the wall clock, QoS 1,
    until SIGTERM (paho's own loop thread: the cheapest publisher we have).
    The probe device of the sites in ``skip`` is left to the probe (a device
    has one publisher)."""
    import paho.mqtt.client as mqtt

    from gateway.mqttinternals import lean_paho_properties

    lean_paho_properties()  # as a dustgate gateway's client has it (make_client)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rnd = random.Random(first)
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-gen-{first}", protocol=mqtt.MQTTv5
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    topics = [
        p.telemetry_topic(site_name(s), d)
        for s in range(first, last)
        for d in DEVICES
        if not (d == PROBE_DEVICE and site_name(s) in skip)
    ]
    print(json.dumps({"generating": len(topics)}), flush=True)
    seq = 0
    sent = 0
    t0 = time.monotonic()
    while not stop:
        seq += 1
        start = t0 + (seq - 1)
        for i, topic in enumerate(topics):
            # spread each second's readings evenly over the second
            due = start + i / len(topics)
            if (delay := due - time.monotonic()) > 0.002:
                time.sleep(delay)
            c.publish(topic, reading(rnd, p.now_ms(time.time()), seq), qos=1)
            sent += 1
            if stop:
                break
    c.loop_stop()
    c.disconnect()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)


async def role_probe(port: int, sites: list[str], samples: int) -> None:
    """An exceeding reading on each probe site in turn (once each: the rule then
    stays active for its run), and the time until its lease command."""
    from gateway.mqttinternals import set_nodelay

    rnd = random.Random(2)
    client = make_client(settings(port), "bench-probe")
    got: dict[str, float] = {}
    waiting: dict[str, asyncio.Event] = {}
    async with client:
        set_nodelay(client)
        for s in sites:
            await client.subscribe(p.cmd_topic(s, "cannon"), qos=1)

        async def receive() -> None:
            async for m in client.messages:
                topic = m.topic.value
                if topic not in got and json.loads(m.payload)["action"] == "on":  # type: ignore[arg-type]
                    got[topic] = time.perf_counter()
                    if (ev := waiting.get(topic)) is not None:
                        ev.set()

        rx = asyncio.create_task(receive())
        lat: list[float] = []
        missed = 0
        seq = 10_000_000
        for k in range(samples):
            site = sites[k % len(sites)]
            topic = p.cmd_topic(site, "cannon")
            got.pop(topic, None)
            ev = waiting[topic] = asyncio.Event()
            seq += 1
            t_pub = time.perf_counter()
            payload = reading(rnd, p.now_ms(time.time()), seq, exceed=True)
            await client.publish(p.telemetry_topic(site, PROBE_DEVICE), payload, qos=1)
            try:
                await asyncio.wait_for(ev.wait(), 3.0)
                lat.append(got[topic] - t_pub)
            except TimeoutError:
                missed += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t_pub)))
        rx.cancel()
    print(json.dumps({"latencies": lat, "missed": missed}), flush=True)


# ------------------------------------------------------------ orchestrator


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def expected_per_engine(m: int, n_sites: int, count: int) -> list[int]:
    """Readings of each partition's sites among the first ``m`` published (round robin)."""
    topics_sites = [s for s in range(n_sites) for _ in DEVICES]
    per = [0] * count
    for i in range(m):
        per[slot(site_name(topics_sites[i % len(topics_sites)]), count)] += 1
    return per


def throughput(tmp: Path, port: int, n_sites: int, m: int, rounds: int) -> None:
    config = tmp / "rules.yaml"
    config.write_text(yaml.safe_dump(rules_yaml(port, tmp / "state", n_sites)))
    common = ["--port", str(port), "--config", str(config), "--sites", str(n_sites)]
    layouts = {1: [Partition(0, 1)], 2: [Partition(0, 2), Partition(1, 2)]}
    agg: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}  # us per message, each engine
    for r in range(rounds):
        for count, parts in layouts.items():
            # the same load for both layouts; only this layout's sessions queue it
            for part in parts:
                result(spawn("--role", "engine", "--partition", str(part), "--prime", *common))
            result(spawn("--role", "publish", *common, "--messages", str(m), "--round", str(r)))
            want = expected_per_engine(m, n_sites, count)
            engines = [
                spawn(
                    "--role",
                    "engine",
                    "--partition",
                    str(part),
                    "--messages",
                    str(want[part.index]),
                    *common,
                )
                for part in parts
            ]
            res = [result(e) for e in engines]
            for e in engines:
                stop(e)
            for part in parts:
                result(spawn("--role", "engine", "--partition", str(part), "--forget", *common))
            agg[count].append(m / max(x["seconds"] for x in res))
            cpu[count].extend(x["cpu"] / x["n"] * 1e6 for x in res)
            print(
                f"round {r + 1}, {count} engine(s): {agg[count][-1]:,.0f} msg/s aggregate; "
                + ", ".join(
                    f"engine {i}: {x['n']:,} msgs in {x['seconds']:.2f}s, "
                    f"{x['cpu'] / x['n'] * 1e6:.0f} us CPU/msg"
                    for i, x in enumerate(res)
                ),
                flush=True,
            )
    ratios = [b / a for a, b in zip(agg[1], agg[2], strict=True)]
    cpu_ratio = statistics.median(cpu[2]) / statistics.median(cpu[1])
    print(
        f"throughput, {rounds} paired rounds, {m:,} readings of {n_sites} sites: "
        f"1 engine median {statistics.median(agg[1]):,.0f} msg/s "
        f"({min(agg[1]):,.0f}-{max(agg[1]):,.0f}); 2 engines median "
        f"{statistics.median(agg[2]):,.0f} msg/s ({min(agg[2]):,.0f}-{max(agg[2]):,.0f})"
    )
    print(
        f"  ratio 2 engines / 1 engine: median {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f}) (goal >= 1.7: "
        f"{'ok' if statistics.median(ratios) >= 1.7 else 'BELOW GOAL'})"
    )
    print(
        f"  CPU per message: 1 engine median {statistics.median(cpu[1]):.0f} us, 2 engines "
        f"median {statistics.median(cpu[2]):.0f} us each; ratio {cpu_ratio:.2f} (goal <= 1.10: "
        f"{'ok' if cpu_ratio <= 1.10 else 'ABOVE GOAL'})"
    )


def city(tmp: Path, broker: Mosquitto, n_sites: int, seconds: float, generators: int) -> None:
    port = broker.port
    config = tmp / "city-rules.yaml"
    config.write_text(yaml.safe_dump(rules_yaml(port, tmp / "city-state", n_sites)))
    common = ["--port", str(port), "--config", str(config), "--sites", str(n_sites)]
    # every 10th site's probe device is the probe's; one probe a second, each site once
    probes = [site_name(i) for i in range(0, n_sites, 10)]
    engines = [
        spawn("--role", "engine", "--partition", f"{k}/2", "--messages", "0", *common)
        for k in range(2)
    ]
    procs: dict[str, list[subprocess.Popen[str]]] = {"engines": engines}
    try:
        for e in engines:
            result(e)  # live
        cuts = [n_sites * g // generators for g in range(generators + 1)]
        gens = [
            spawn(
                "--role",
                "generate",
                *common,
                "--first",
                str(cuts[g]),
                "--last",
                str(cuts[g + 1]),
                "--skip",
                ",".join(probes),
            )
            for g in range(generators)
        ]
        procs["generators"] = gens
        offered = sum(result(g)["generating"] for g in gens)
        time.sleep(5)  # windows fill, the engines settle
        cpu0 = {k: [cpu_seconds(x.pid) for x in v] for k, v in procs.items()}
        broker_pid = broker.pid()
        b0 = cpu_seconds(broker_pid)
        t0 = time.monotonic()
        samples = min(len(probes), int(seconds))
        probe = spawn(
            "--role", "probe", *common, "--probe-sites", ",".join(probes), "--samples", str(samples)
        )
        procs["probe"] = [probe]
        cpu0["probe"] = [cpu_seconds(probe.pid)]
        lat = result(probe, timeout=seconds * 3 + 60)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        elapsed = time.monotonic() - t0
        cpu1 = {k: [cpu_seconds(x.pid) for x in v] for k, v in procs.items() if k != "probe"}
        b1 = cpu_seconds(broker_pid)
        for g in gens:
            stop(g)
        gen_res = [result(g, 30) for g in gens]
        for e in engines:
            e.send_signal(signal.SIGTERM)
        eng_res = [result(e, 60) for e in engines]
    finally:
        for v in procs.values():
            for x in v:
                stop(x)
    sent = sum(g["sent"] for g in gen_res)
    gen_s = max(g["seconds"] for g in gen_res)
    handled = sum(e["handled"] for e in eng_res)
    lags = [x * 1000 for e in eng_res for x in e["lags"]]
    ms = [x * 1000 for x in lat["latencies"]]
    print(
        f"city run: {n_sites} sites x 10 devices at 1 Hz ({offered:,} readings/s offered), "
        f"2 engines, {elapsed:.0f}s measured: generators sent {sent / gen_s:,.0f}/s, engines "
        f"handled {handled:,} ({handled / sent:.3f} of sent)"
    )
    if lags:
        print(
            f"  engine lag (handled - reading time, every 100th): p50 {pct(lags, 0.5):.0f} ms, "
            f"p99 {pct(lags, 0.99):.0f} ms, max {max(lags):.0f} ms; first tenth p50 "
            f"{statistics.median(lags[: len(lags) // 10 or 1]):.0f} ms, last tenth p50 "
            f"{statistics.median(lags[-(len(lags) // 10 or 1) :]):.0f} ms (bounded if not growing)"
        )
    if ms:
        p99 = pct(ms, 0.99)
        print(
            f"  decision latency ({len(ms)} probes): p50 {statistics.median(ms):.1f} ms, "
            f"p99 {p99:.1f} ms, max {max(ms):.1f} ms, missed {lat['missed']} "
            f"(goal p99 <= 50 ms: {'ok' if p99 <= 50 else 'ABOVE GOAL'})"
        )
    shares = {
        "broker": b1 - b0,
        **{k: sum(cpu1[k]) - sum(cpu0[k]) for k in cpu1},
    }
    total = sum(shares.values())
    print(
        "  CPU over the measured span (of 2 cores = "
        f"{2 * elapsed:.0f} core-s): "
        + ", ".join(f"{k} {v:.0f} core-s ({v / elapsed:.2f} cores)" for k, v in shares.items())
        + f"; total {total / elapsed:.2f} cores"
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_s:
        tmp = Path(tmp_s)
        broker = Mosquitto(tmp / "mosquitto", extra_conf="set_tcp_nodelay true\n").start()
        try:
            if args.rounds:
                throughput(tmp, broker.port, args.sites, args.messages, args.rounds)
            if args.city_seconds:
                city(tmp, broker, args.city_sites, args.city_seconds, args.generators)
        finally:
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--role", default=None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--sites", type=int, default=200, help="sites in the throughput phase")
    ap.add_argument("--messages", type=int, default=40_000, help="readings per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round", type=int, default=0)
    ap.add_argument("--partition", default="0/1")
    ap.add_argument("--prime", action="store_true")
    ap.add_argument("--forget", action="store_true")
    ap.add_argument("--city-seconds", type=float, default=120.0)
    ap.add_argument("--city-sites", type=int, default=1000)
    ap.add_argument("--generators", type=int, default=2)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--last", type=int, default=0)
    ap.add_argument("--skip", default="")
    ap.add_argument("--probe-sites", default="")
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    if args.role is None:
        t0 = time.monotonic()
        run(args)
        print(f"(benchmark took {time.monotonic() - t0:.0f}s)")
        return
    if args.role == "engine":
        logging.basicConfig(level=logging.WARNING, filename=os.devnull)
        part = parse_partition(args.partition)
        asyncio.run(
            role_engine(args.port, args.messages, args.config, part, args.prime, args.forget)
        )
    elif args.role == "publish":
        asyncio.run(role_publish(args.port, args.messages, args.sites, args.round))
    elif args.role == "generate":
        role_generate(args.port, args.first, args.last, set(filter(None, args.skip.split(","))))
    elif args.role == "probe":
        asyncio.run(role_probe(args.port, args.probe_sites.split(","), args.samples))
    else:
        raise SystemExit(f"unknown role {args.role}")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
