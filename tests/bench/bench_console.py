"""Benchmark: the web console with a district of 150 sites x 10 devices.

Run: ``.venv/bin/python tests/bench/bench_console.py [--sites 150] [--samples 200] [--rounds 3]``

A real mosquitto; ``dustgate console`` as its own process (its RSS is what is
measured); the district published as the gateways would: a retained status per
site (10 devices each), two retained cannon states per site, and telemetry
from every device at 1 Hz (1,500 readings/s) for the whole run.

Reported:

- board page (``GET /``, signed in, 150 cards): the server's time to answer
  (its ``Server-Timing`` header) p50/p95 and the client's round trip, per
  round, with the sign-in page (``GET /login``, same framework, no board) as
  the baseline measured in the same rounds; bytes of the board page;
  goal p95 <= 100 ms;
- reading published -> page updated: a reading with a value never seen
  before is published for one site (from a device of its own, so the 1 Hz
  load does not replace it on the card), the clock stops when an open ``/live``
  stream (as the browser's EventSource holds it) delivers that site's card with
  the value; p50/p99 over ``--samples``; goal p99 <= 2 s;
- the console's RSS (VmRSS and peak VmHWM from /proc) after the run;
  goal <= 120 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from gateway import protocol as p  # noqa: E402
from gateway.localservices import Mosquitto, free_port  # noqa: E402

PASSWORD = "bench-password"
DEVICES = 10


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def rules_text(sites: int) -> str:
    lines = ["actuators:"]
    for i in range(sites):
        lines += [f"  s{i:03d}/cannon-1: {{}}", f"  s{i:03d}/cannon-2: {{}}"]
    lines.append("rules:")
    for i in range(sites):
        lines += [
            f"  - id: pm10-s{i:03d}",
            f"    site: s{i:03d}",
            "    metric: pm10",
            "    devices: [" + ", ".join([*(f"d{d}" for d in range(DEVICES)), "probe"]) + "]",
            "    window: 15m",
            "    above: 150",
            "    clear: 100",
            "    actions: {lease: [cannon-1, cannon-2], run_for: 10m}",
        ]
    return "\n".join(lines) + "\n"


class District:
    """Publishes what 150 gateways would: retained status and states, 1 Hz telemetry."""

    def __init__(self, port: int, sites: int) -> None:
        self.sites = [f"s{i:03d}" for i in range(sites)]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def retained(self) -> None:
        now = int(time.time() * 1000)
        for site in self.sites:
            devs = {
                f"d{d}": p.DeviceHealth(state="online", poll_interval_s=1.0) for d in range(DEVICES)
            }
            st = p.GatewayStatus(state="online", ts=now, backlog=3, devices=devs)
            self.client.publish(p.status_topic(site, "gw"), p.encode(st), qos=1, retain=True)
            for c in ("cannon-1", "cannon-2"):
                a = p.ActuatorState(state="off", since=now, source="rule")
                self.client.publish(p.state_topic(site, c), p.encode(a), qos=1, retain=True)

    def readings(self, value_of: dict[str, float] | None = None) -> None:
        now = int(time.time() * 1000)
        self.seq += 1
        for site in self.sites:
            for d in range(DEVICES):
                pm10 = 60.0 + (self.seq + d) % 30
                msg = p.Telemetry(
                    ts=now, seq=self.seq, values={"pm10": pm10, "pm25": pm10 / 2, "noise": 61.0}
                )
                self.client.publish(p.telemetry_topic(site, f"d{d}"), p.encode(msg), qos=0)

    def _run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            self.readings()
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


def rss_mb(pid: int) -> tuple[float, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    return rss, hwm


def login(client: httpx.Client) -> None:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post(
        "/login",
        data={"username": "bench", "password": PASSWORD, "login_token": token, "next": "/"},
    )
    assert r.status_code in (200, 303), r.status_code


def timed_get(client: httpx.Client, path: str) -> tuple[float, float, int]:
    t = time.perf_counter()
    r = client.get(path)
    wall = (time.perf_counter() - t) * 1000
    assert r.status_code == 200, (path, r.status_code)
    server = float(r.headers["server-timing"].split("dur=")[1])
    return server, wall, len(r.content)


def update_latency(
    url: str, cookies: httpx.Cookies, district: District, samples: int
) -> list[float]:
    """Publish a never-seen value for one site; time until /live delivers that card."""
    arrived: dict[str, float] = {}
    cond = threading.Condition()
    ready = threading.Event()

    state = {"lines": 0, "error": ""}

    def listen() -> None:
        try:
            _listen()
        except Exception as exc:  # reported by the main thread's timeout
            state["error"] = repr(exc)[:200]

    def _listen() -> None:
        client = httpx.Client(base_url=url, cookies=cookies, timeout=httpx.Timeout(30, read=60))
        with client, client.stream("GET", "/live") as resp:
            assert resp.status_code == 200, resp.status_code
            ready.set()
            event = None
            for line in resp.iter_lines():
                state["lines"] += 1  # type: ignore[operator]
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "site":
                    html = json.loads(line[6:])["html"]
                    for m in re.finditer(r'<td class="val">(9\d\d\d)</td>', html):
                        with cond:
                            arrived.setdefault(m.group(1), time.perf_counter())
                            cond.notify_all()
                if len(arrived) >= samples:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(10)
    time.sleep(0.5)
    lags = []
    for i in range(samples):
        site = district.sites[(i * 37) % len(district.sites)]
        value = 9000 + i
        msg = p.Telemetry(ts=int(time.time() * 1000), seq=10**6 + i, values={"pm10": float(value)})
        sent = time.perf_counter()
        district.client.publish(p.telemetry_topic(site, "probe"), p.encode(msg), qos=0)
        with cond:
            ok = cond.wait_for(lambda v=str(value): v in arrived, timeout=10)
        if not ok:
            raise SystemExit(f"sample {i}: no update within 10 s (stream: {state})")
        lags.append((arrived[str(value)] - sent) * 1000)
        time.sleep(0.05)
    return lags


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=150)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100, help="board requests per round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dg-bench-console-") as tmp_s:
        tmp = Path(tmp_s)
        mq = Mosquitto(tmp / "mosquitto").start()
        (tmp / "rules.yaml").write_text(rules_text(args.sites))
        port = free_port()
        (tmp / "console.yaml").write_text(
            f"console: {{listen: 127.0.0.1, port: {port}}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mq.port}}}\n"
            "rules_file: rules.yaml\nstore: console.db\n"
        )
        env = {**os.environ, "DUSTGATE_CONSOLE_PASSWORD": PASSWORD}
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "console", "adduser", "--config", str(tmp / "console.yaml"), "bench", "--role", "operator"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        console = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "console", "--config", str(tmp / "console.yaml"), "--log-level", "warning"],
            stdout=(tmp / "console.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        district = District(mq.port, args.sites)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/login", timeout=1)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or console.poll() is not None:
                        raise SystemExit((tmp / "console.log").read_text()[-2000:]) from None
                    time.sleep(0.2)
            district.retained()
            district.readings()
            district.thread.start()
            with httpx.Client(base_url=url, timeout=30) as client:
                login(client)
                while client.get("/").text.count('class="card ') < args.sites:
                    time.sleep(0.2)
                time.sleep(2.0)  # a couple of seconds of 1 Hz load before measuring
                rounds = []
                for _ in range(args.rounds):
                    base = [timed_get(client, "/login") for _ in range(args.requests)]
                    board = [timed_get(client, "/") for _ in range(args.requests)]
                    rounds.append((base, board))
                size = board[-1][2]
                lags = update_latency(url, client.cookies, district, args.samples)
            rss, hwm = rss_mb(console.pid)
        finally:
            district.close()
            os.killpg(console.pid, signal.SIGTERM)
            console.wait(15)
            mq.stop()
    print(
        f"console bench: {args.sites} sites x {DEVICES} devices, telemetry {args.sites * DEVICES}/s, {args.rounds} rounds of {args.requests} requests"
    )
    print(
        "round  board server p50/p95 ms  board round trip p95 ms  baseline (/login) server p95 ms  ratio p95"
    )
    p95s = []
    for i, (base, board) in enumerate(rounds):
        bs = [s for s, _, _ in board]
        b95, base95 = pct(bs, 95), pct([s for s, _, _ in base], 95)
        p95s.append(b95)
        print(
            f"{i + 1:5d}  {pct(bs, 50):8.1f} / {b95:6.1f}         {pct([w for _, w, _ in board], 95):8.1f}                  {base95:8.2f}                       {b95 / base95:6.1f}"
        )
    print(
        f"board p95 median {statistics.median(p95s):.1f} ms (range {min(p95s):.1f}-{max(p95s):.1f}); goal <= 100 ms"
    )
    print(f"board page {size:,} bytes ({size / args.sites:.0f} per site)")
    print(
        f"reading -> page updated over SSE, {len(lags)} samples under load: p50 {pct(lags, 50):.0f} ms, "
        f"p99 {pct(lags, 99):.0f} ms, max {max(lags):.0f} ms; goal p99 <= 2000 ms"
    )
    print(f"console RSS {rss:.1f} MB (peak {hwm:.1f} MB); goal <= 120 MB")
    ok = statistics.median(p95s) <= 100 and pct(lags, 99) <= 2000 and hwm <= 120
    print("goals met" if ok else "GOALS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
