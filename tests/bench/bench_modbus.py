"""Modbus transports side by side: dustgate's own master against pymodbus's async client.

    .venv/bin/python tests/bench/bench_modbus.py [--rounds 2] [--window 3]   (about 2.5 minutes)

Three clients under the same register-map layer (``drivers.modbus``), over the same
simulators, in one run (``tests/bench/pymodbus_link.py`` says what the pymodbus ones do):

- ``own``: ``drivers.modbus_client`` (the product's transport);
- ``pymodbus``: pymodbus as shipped: one timeout and retry count per client, no pause before
  a send, its own "close the TCP link after retries+3 missing replies";
- ``pymodbus+``: pymodbus with what a wrapper can add through its public API (our retries and
  per-request timeout, the 3.5-character silent interval, no closing on missing replies).

Scenarios (each client runs in a process of its own; the simulators in another):

- ``bus``: 16 units x 10 registers on a simulated RTU line that keeps 9600 baud 8N1 timing (a
  reply is written when its last byte would have arrived; a request that starts before the
  line has been silent 3.5 characters after the last reply is garbled and lost, as on a real
  line), read back to back: transactions/s over the 24.0/s theoretical (8 + 25 bytes + 2 x
  3.5 characters = 41.7 ms), and the timing violations the line saw.
- ``dead``: 4 units on that line, unit 3 dead, polled at 1 Hz by the agent's bus scheduler
  (timeout 0.3 s, 1 retry): how long each poll of the dead unit holds the bus, and the live
  units' poll-interval error (p95 of |interval - 1 s| / 1 s, share off by more than 10 %).
- ``flaky``: the same with unit 3 alive on a bad wire (every other reply fails its CRC).
- ``tcpclose``: over Modbus TCP, six requests to a unit the gateway never answers for, then
  one to a live unit: read, or the link closed under it.
- ``late``: unit 1 answers too late (after the master gave up), so its reply arrives during
  the next transaction, a read of unit 2: what that read returned (right values, an error,
  or unit 1's values taken for unit 2's) and how long it took.
- ``wrong``: every other reply of unit 1 carries unit 2's address: time per good read and
  the error class a read without retry reports.
- ``noise``: 3 random bytes on the line before every other reply: time per good read and
  reads lost (1 retry).
- ``cpu``: 2,000 reads of 10 registers over Modbus TCP: CPU per read, and the client
  process's RSS.
- ``restarts`` (our transport; the bus scheduler's handling of dead units): 6 live units and a silent
  one behind one Modbus TCP gateway, 1 Hz, timeout 1 s, 1 retry, three agent runs (two
  restarts, the backoff kept in ``device-backoff.json``), before and after: bus held per
  probe, the live units' interval error p95 (goal <= 10 %).

Medians of the paired rounds (alternating order) are printed with their ranges, and the
last line sets bus efficiency against its bar (>= 0.95) and pymodbus+ against ours per round.
The choice these figures made is recorded in docs/DESIGN.md (Modbus transport amendment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

BAUD = 9600
CHAR_S = 10 / BAUD  # 8N1: start + 8 data + stop
T35_S = 3.5 * CHAR_S
REQ_BYTES = 8
REPLY_BYTES = 5 + 2 * 10
PER_TX = (REQ_BYTES + REPLY_BYTES) * CHAR_S + 2 * T35_S
THEORY = 1 / PER_TX
CLIENTS = ("own", "pymodbus", "pymodbus+")
TIMEOUT = 0.3


# ------------------------------------------------------------------ simulators (own process)


def values_of(unit: int) -> dict[str, float]:
    """Each unit's values differ, so a reply taken for another unit's shows."""
    return {
        "wind_speed": 2.0, "wind_force": 2, "wind_sector": 3, "wind_dir": 135, "rh": 55.0,
        "temp": 12.5, "noise": 60.0 + unit, "pm25": 10 * unit, "pm10": 100 * unit,
        "pressure": 1013,
    }  # fmt: skip


async def serve_rtu(n: int, dead: set[int], fault: str) -> None:
    """RTU units on a 9600-baud timed line with one fault; prints counters on request."""
    from timed_rtu import TimedRtuLine

    from drivers import modbus_pdu as pdu
    from drivers.profiles import resolve_profile
    from drivers.sim.units import ProfileUnit, handle_request

    spec = resolve_profile("dust-station")
    units = {
        i: ProfileUnit(spec, lambda i=i: values_of(i), unit_id=i)
        for i in range(1, n + 1)
        if i not in dead
    }
    line = TimedRtuLine(units, BAUD)  # type: ignore[arg-type]
    held: list[bytes] = []  # "late": unit 1's reply, sent during the next transaction
    rng = random.Random(7)
    seen = flaky = 0

    def respond(frame: bytes, now: float) -> tuple[bytes, bool] | None:
        nonlocal seen, flaky
        unit = units.get(frame[0])
        prefix = held.pop() if held else b""  # a late reply still on its way arrives first
        if unit is None:
            return (prefix, False) if prefix else None
        seen += 1
        odd = seen % 2 == 1
        wrong = fault == "wrong" and unit.unit_id == 1 and odd
        reply = pdu.build_rtu(2 if wrong else unit.unit_id, handle_request(unit, frame[1:-2], now))
        if fault == "late" and unit.unit_id == 1:
            held.append(reply)  # sent after the master gave up: with its next request
            return (prefix, False) if prefix else None
        if fault == "noise" and odd:
            prefix += bytes(rng.randrange(256) for _ in range(3))
        if fault == "flaky" and unit.unit_id == 3:
            flaky += 1
            if flaky % 2:  # a bad wire: every other reply of unit 3 fails its CRC
                reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
        return prefix + reply, True

    line.respond = respond
    loop = asyncio.get_running_loop()
    print(json.dumps({"path": line.path}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():  # a line asks for the counters; EOF ends
        counters = {"answered": line.answered, "violations": line.violations}
        print(json.dumps({"t": loop.time(), **counters}), flush=True)


async def serve_tcp(dead: set[int]) -> None:
    """A Modbus TCP gateway (MBAP) with units 1..7 (10 registers each); dead units stay silent
    (the gateway sends no exception 0x0B)."""
    from drivers import modbus_pdu as pdu
    from drivers.profiles import resolve_profile
    from drivers.sim.units import ProfileUnit, handle_request

    spec = resolve_profile("dust-station")
    units = {i: ProfileUnit(spec, lambda i=i: values_of(i), unit_id=i) for i in range(1, 8)}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray()
        with contextlib.suppress(Exception):
            while True:
                length = pdu.mbap_length(buf)
                if length is None or len(buf) < length:
                    data = await reader.read(4096)
                    if not data:
                        break
                    buf += data
                    continue
                frame = bytes(buf[:length])
                del buf[:length]
                tid, unit_id, request = pdu.parse_mbap(frame)
                if unit_id in dead or unit_id not in units:
                    continue
                reply = handle_request(units[unit_id], request, loop.time())
                writer.write(pdu.build_mbap(tid, unit_id, reply))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# ------------------------------------------------------------------ clients (own process)


def make_client(kind: str, link: str, where: Any) -> Any:
    if kind == "own":  # pymodbus not even imported: its RSS is not charged to ours
        from drivers.modbus_client import ModbusClient

        if link == "rtu":
            return ModbusClient.rtu(where, baudrate=BAUD)
        return ModbusClient.tcp(*where)
    from pymodbus_link import PymodbusClient

    tuned = kind == "pymodbus+"
    return PymodbusClient.make(
        link, where if link == "rtu" else tuple(where), tuned=tuned, timeout=TIMEOUT, retries=1
    )


def spec_of(unit: int, retries: int = 1, timeout: float = TIMEOUT) -> Any:
    from drivers.profiles import resolve_profile

    return resolve_profile("dust-station", {"slave_id": unit, "timeout": timeout,
                                            "retries": retries})  # fmt: skip


async def client_bus(kind: str, where: str, window: float) -> dict[str, Any]:
    """Back-to-back reads for ``window`` s; the rate is good reads over the time between the
    first and the last one (not a count in a fixed window: finer than one read)."""
    client = make_client(kind, "rtu", where)
    await client.connect()
    specs = [spec_of(u) for u in range(1, 17)]
    loop = asyncio.get_running_loop()
    done: list[float] = []
    errors = 0
    end = loop.time() + window
    i = 0
    while loop.time() < end:
        try:
            await client.read_device(specs[i % 16])
            done.append(loop.time())
        except Exception:
            errors += 1
            if not client.connected:
                await client.connect()
        i += 1
    await client.close()
    rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else 0.0
    return {"reads": len(done), "rate": rate, "errors": errors}


async def scheduled(
    kind: str,
    link: str,
    where: Any,
    *,
    units: int,
    dead: int,
    window: float,
    timeout: float = TIMEOUT,
    new: bool = True,
    runs: int = 1,
    state: str = "",
) -> dict[str, Any]:
    """Units 1..``units`` polled at 1 Hz by the agent's bus scheduler; ``dead`` is counted
    apart. ``runs`` > 1: the agent restarts in between (a new client and scheduler), the
    backoff carried over in ``state`` as the agent does. ``new=False``: the scheduling before
    this bench's change (probes with the retry count, no yielding, backoff from scratch)."""
    from gateway.backoff import Backoff
    from gateway.backoffstore import BackoffStore
    from gateway.devices import modbus_poll, modbus_probe, poll_budget
    from gateway.scheduler import BusScheduler

    loop = asyncio.get_running_loop()
    errs: list[float] = []
    dead_hold: list[float] = []
    live_fail = reconnects = 0
    for _ in range(runs):
        client = make_client(kind, link, where)
        store = BackoffStore(Path(state)) if state else None
        seen: dict[int, list[float]] = {}

        def on_result(dev: str, wall: float, values: Any, error: Any, seen: Any = seen) -> None:
            nonlocal live_fail
            if error is None:
                seen.setdefault(int(dev), []).append(loop.time())
            elif int(dev) != dead:
                live_fail += 1

        bus = BusScheduler(
            "bench",
            client,
            on_result,
            device_backoff=Backoff(base=2.0, maximum=300.0),
            on_backoff=store.update if store and new else None,
        )
        for u in range(1, units + 1):
            spec = spec_of(u, timeout=timeout)
            extra: dict[str, Any] = {}
            if new:
                extra = {"probe": modbus_probe(client, spec), "probe_hold": spec.timeout}
                extra["resume"] = store.resume(str(u)) if store else None
            bus.add_device(str(u), 1.0, modbus_poll(client, spec), poll_budget(spec), **extra)
        original = bus._poll  # time each poll of the dead unit

        async def timed_poll(slot: Any, due: float, lp: Any, original: Any = original) -> None:
            t0 = lp.time()
            await original(slot, due, lp)
            if slot.id == str(dead):
                dead_hold.append(lp.time() - t0)

        bus._poll = timed_poll  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(bus.run())
        await asyncio.sleep(window)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
        reconnects += bus.reconnects - 1
        for dev, ts in seen.items():
            if dev != dead:  # from the second poll on (the first is due at once)
                errs += [abs((b - a) - 1.0) for a, b in itertools.pairwise(ts[1:])]
    return {
        "hold": statistics.median(dead_hold) if dead_hold else None,
        "p95": sorted(errs)[int(0.95 * (len(errs) - 1))] if errs else None,
        "off": sum(e > 0.1 for e in errs) / len(errs) if errs else None,
        "live_errors": live_fail,
        "reconnects": reconnects,
    }


async def client_tcpclose(kind: str, port: int) -> dict[str, Any]:
    """Six reads of a silent unit in a row, then a live unit: is the link still there?"""
    client = make_client(kind, "tcp", ["127.0.0.1", port])
    await client.connect()
    for _ in range(6):
        with contextlib.suppress(Exception):
            await client.read_device(spec_of(3, retries=0, timeout=0.1))
    try:
        await client.read_device(spec_of(1))
        live = "read"
    except Exception as exc:
        live = type(exc).__name__
    await client.close()
    return {"live": live}


async def client_fault(kind: str, where: str, fault: str) -> dict[str, Any]:
    client = make_client(kind, "rtu", where)
    await client.connect()
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    expect2 = 200.0
    if fault == "late":
        got = {"right": 0, "error": 0, "foreign": 0}
        times = []
        for _ in range(6):
            with contextlib.suppress(Exception):
                await client.read_device(spec_of(1, retries=0))
            t0 = loop.time()
            try:
                values = await client.read_device(spec_of(2, retries=0))
                got["right" if values["pm10"] == expect2 else "foreign"] += 1
            except Exception:
                got["error"] += 1
            times.append(loop.time() - t0)
        out = {**got, "ms": 1000 * statistics.median(times)}
    else:
        times, lost = [], 0
        for _ in range(6):
            t0 = loop.time()
            try:
                values = await client.read_device(spec_of(1, retries=1))
                assert values["pm10"] == 100.0
                times.append(loop.time() - t0)
            except Exception:
                lost += 1
        kinds = set()
        for _ in range(2):  # without retry: what the bad reply is reported as
            try:
                await client.read_device(spec_of(1, retries=0))
            except Exception as exc:
                kinds.add(type(exc).__name__)
        out = {"ms": 1000 * statistics.median(times) if times else None, "lost": lost,
               "errors": sorted(kinds)}  # fmt: skip
    await client.close()
    return out


async def client_cpu(kind: str, port: int, n: int) -> dict[str, Any]:
    client = make_client(kind, "tcp", ["127.0.0.1", port])
    await client.connect()
    spec = spec_of(1)
    for _ in range(100):
        await client.read_device(spec)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await client.read_device(spec)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    await client.close()
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6, "rss": rss}


def client_main(args: argparse.Namespace) -> None:
    where = json.loads(args.where)
    if args.scenario == "bus":
        coro = client_bus(args.client, where, args.window)
    elif args.scenario in ("dead", "flaky"):
        coro = scheduled(args.client, "rtu", where, units=4, dead=3, window=args.window)
    elif args.scenario == "tcpclose":
        coro = client_tcpclose(args.client, where)
    elif args.scenario in ("restarts-old", "restarts-new"):
        coro = scheduled(args.client, "tcp", ["127.0.0.1", where], units=7, dead=7,
                         window=args.window, timeout=1.0, new=args.scenario.endswith("new"),
                         runs=3, state=args.state)  # fmt: skip
    elif args.scenario == "cpu":
        coro = client_cpu(args.client, where, args.reads)
    else:
        coro = client_fault(args.client, where, args.scenario)
    print(json.dumps(asyncio.run(coro)), flush=True)


# ------------------------------------------------------------------ orchestration


def spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_client(client: str, scenario: str, where: Any, args: argparse.Namespace) -> Any:
    cmd = ["--client", client, "--scenario", scenario, "--where", json.dumps(where),
           "--window", str(args.window), "--reads", str(args.reads),
           "--state", getattr(args, "state", "")]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, *cmd], cwd=ROOT, text=True, capture_output=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{client} {scenario} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_rtu_sim(sim_args: list[str], fn: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    sim = spawn(["--serve-rtu", *sim_args])
    assert sim.stdin and sim.stdout
    try:
        path = json.loads(sim.stdout.readline())["path"]

        def counters() -> dict[str, Any]:
            assert sim.stdin and sim.stdout
            sim.stdin.write("\n")
            sim.stdin.flush()
            return json.loads(sim.stdout.readline())  # type: ignore[no-any-return]

        before = counters()
        result = fn(path)
        return result, before, counters()
    finally:
        finish(sim)


def with_tcp_sim(dead: str, fn: Any) -> Any:
    sim = spawn([f"--serve-tcp={dead}"])
    assert sim.stdout
    try:
        return fn(json.loads(sim.stdout.readline())["port"])
    finally:
        finish(sim)


def med(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1 or max(values) == min(values):
        return f"{m:.3g}"
    return f"{m:.3g} [{min(values):.3g}-{max(values):.3g}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--client")
    ap.add_argument("--scenario")
    ap.add_argument("--where")
    ap.add_argument("--state", default="")
    ap.add_argument("--serve-rtu", nargs=3, metavar=("N", "DEAD", "FAULT"))
    ap.add_argument("--serve-tcp", metavar="DEAD", help="dead unit ids, comma-separated")
    args = ap.parse_args()
    if args.serve_rtu is not None:
        n, dead, fault = args.serve_rtu
        asyncio.run(serve_rtu(int(n), {int(d) for d in dead.split(",") if d}, fault))
        return 0
    if args.serve_tcp is not None:
        asyncio.run(serve_tcp({int(d) for d in args.serve_tcp.split(",") if d}))
        return 0
    if args.client is not None:
        client_main(args)
        return 0

    import pymodbus

    rows: dict[str, dict[str, list[Any]]] = {c: {} for c in CLIENTS}

    def add(client: str, key: str, value: Any) -> None:
        rows[client].setdefault(key, []).append(value)

    started = time.monotonic()
    for r in range(args.rounds):  # paired rounds, the order alternating
        for c in CLIENTS if r % 2 == 0 else CLIENTS[::-1]:
            res, b, a = with_rtu_sim(
                ["16", "", "none"], lambda p, c=c: run_client(c, "bus", p, args)
            )
            add(c, "eff", res["rate"] / THEORY)
            add(c, "viol", (a["violations"] - b["violations"]) / max(1, res["reads"]))
            cpu = with_tcp_sim("", lambda p, c=c: run_client(c, "cpu", p, args))
            add(c, "cpu", cpu["cpu_us"])
            add(c, "rss", cpu["rss"])
    sched = argparse.Namespace(**{**vars(args), "window": max(3.0, args.window)})
    for c in CLIENTS:
        for scenario, sim in (("dead", ["4", "3", "none"]), ("flaky", ["4", "", "flaky"])):
            res, _, _ = with_rtu_sim(sim, lambda p, c=c, s=scenario: run_client(c, s, p, sched))
            for key in ("hold", "p95", "off", "live_errors"):
                add(c, f"{scenario}_{key}", res[key])
        res = with_tcp_sim("3", lambda p, c=c: run_client(c, "tcpclose", p, args))
        add(c, "tcpclose", res["live"])
        for fault in ("late", "wrong", "noise"):
            res, _, _ = with_rtu_sim(
                ["2", "", fault], lambda p, c=c, f=fault: run_client(c, f, p, args)
            )
            add(c, fault, res)
    # the scheduling change, on our transport: 6 live units and a dead one behind one TCP
    # gateway, timeout 1 s, 1 retry, 1 Hz, three agent runs (two restarts)
    restarts: dict[str, dict[str, Any]] = {}
    for variant in ("old", "new"):
        with tempfile.TemporaryDirectory() as tmp:
            run = argparse.Namespace(**{**vars(args), "window": max(4.0, 2 * args.window),
                                        "state": str(Path(tmp) / "device-backoff.json")})  # fmt: skip
            restarts[variant] = with_tcp_sim(
                "7", lambda p, v=variant, a=run: run_client("own", f"restarts-{v}", p, a)
            )

    print(f"Modbus transports, pymodbus {pymodbus.__version__}, {args.rounds} paired rounds "
          f"(median [range]), {time.monotonic() - started:.0f} s")  # fmt: skip
    width = 34

    def line(label: str, cells: list[str]) -> None:
        print(f"{label:{width}}" + "".join(f"{x:>24}" for x in cells))

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f} %"

    line("", list(CLIENTS))
    line(f"bus efficiency (of {THEORY:.1f}/s)", [med(rows[c]["eff"]) for c in CLIENTS])
    line("RTU timing violations / read", [med(rows[c]["viol"]) for c in CLIENTS])
    for scenario, label in (("dead", "dead unit"), ("flaky", "bad-wire unit")):
        line(f"{label}: bus held per poll", [ms(rows[c][f"{scenario}_hold"][0]) for c in CLIENTS])
        line(f"{label}: live p95 interval error",
             [pct(rows[c][f"{scenario}_p95"][0]) for c in CLIENTS])  # fmt: skip
        line(f"{label}: live intervals off >10%",
             [pct(rows[c][f"{scenario}_off"][0]) for c in CLIENTS])  # fmt: skip
        line(f"{label}: live polls failed",
             [str(rows[c][f"{scenario}_live_errors"][0]) for c in CLIENTS])  # fmt: skip
    line("TCP: 6 silent replies, then live", [rows[c]["tcpclose"][0] for c in CLIENTS])
    cells = []
    for c in CLIENTS:
        late = rows[c]["late"][0]
        cells.append(f"{late['right']}/{late['error']}/{late['foreign']} {late['ms']:.0f} ms")
    line("late reply: right/error/foreign", cells)
    for fault in ("wrong", "noise"):
        cells = []
        for c in CLIENTS:
            got = rows[c][fault][0]
            cells.append(f"{'-' if got['ms'] is None else round(got['ms'])} ms, {got['lost']} lost")
        line(f"{fault}: per good read, reads lost", cells)
        line(f"{fault}: reported as", ["/".join(rows[c][fault][0]["errors"]) for c in CLIENTS])
    line("CPU per read (TCP), us", [med(rows[c]["cpu"]) for c in CLIENTS])
    line("client process RSS, MB", [med(rows[c]["rss"]) for c in CLIENTS])
    print()
    print("dead unit behind a TCP gateway, 6 live units at 1 Hz, timeout 1 s, 1 retry, the "
          "agent's bus restarted twice (own transport):")  # fmt: skip
    for variant, label in (("old", "before (retries, no yield, backoff reset)"),
                           ("new", "now (one-try probe, yields, backoff kept)")):  # fmt: skip
        r = restarts[variant]
        print(f"  {label:44} bus held per probe {ms(r['hold'])}, live p95 error "
              f"{pct(r['p95'])}, off >10% {pct(r['off'])} (goal p95 <= 10 %)")  # fmt: skip
    paired = [p / o for p, o in zip(rows["pymodbus+"]["eff"], rows["own"]["eff"], strict=True)]
    print()
    print(f"bus efficiency, pymodbus+ / own in each round: {med(paired)}; bar >= 0.95: own "
          f"{statistics.median(rows['own']['eff']):.3f}, pymodbus "
          f"{statistics.median(rows['pymodbus']['eff']):.3f}, pymodbus+ "
          f"{statistics.median(rows['pymodbus+']['eff']):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
