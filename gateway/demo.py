"""``dustgate demo``: the closed loop on one machine, no hardware.

Starts a real mosquitto and a real influxd (state under ``--dir``), a fake
site (``drivers.sim.site``: a dust/weather station on Modbus RTU over a pty,
an SDS011 and a PMS5003 on ptys, a relay board with two fog cannons, all
driven by a small plume model), then the agent and the rule engine as their
own processes, exactly as they run on a site. About 20 s in, an earthwork
dust event starts at the gate; the view shows PM10 rising past the rule's
threshold, the cannons switching on, PM10 falling and the cannons switching
off (on a terminal in colour, redrawn in place each second; otherwise as
plain text every 5 s). The district console (``dustgate console``) runs beside them on
loopback; its URL and demo logins are printed, so the same spike can be
watched in a browser. With ``--duration`` it ends by itself and exits
non-zero if the loop did not close (CI runs it that way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import yaml

from gateway import protocol as p
from gateway import statusview
from gateway.localservices import Influxd, Mosquitto, stop_groups

if TYPE_CHECKING:
    from rich.console import RenderableType

    from gateway.livescreen import Screen

SITE = "demo-site"
DB = "dustgate"
THRESHOLD = 150.0
CLEAR = 90.0
WINDOW_S = 30.0
EVENT_AT_S = 20.0


def demo_rules(mqtt_port: int, influx_url: str, state_dir: Path) -> dict[str, object]:
    return {
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "influx": {"url": influx_url, "database": DB, "flush_interval": "1s"},
        "state_dir": str(state_dir),
        "sites": [SITE],
        "actuators": {
            f"{SITE}/cannon-1": {"litres_per_minute": 25},
            f"{SITE}/cannon-2": {"litres_per_minute": 25},
        },
        "defaults": {"lease_s": "15s", "min_staleness": "5s"},
        "rules": [
            {
                "id": "pm10-gate",
                "description": "PM10 at the gate, 30-second mean (a demo-sized window)",
                "site": SITE,
                "metric": "pm10",
                "devices": ["station"],
                "aggregate": "mean",
                "window": f"{int(WINDOW_S)}s",
                "above": THRESHOLD,
                "clear": CLEAR,
                "for": "5s",
                "min_clear": "5s",
                "actions": {
                    "lease": ["cannon-1", "cannon-2"],
                    "run_for": "20s",
                    "cooldown": "30s",
                    "max_on": "5m",
                },
                "unless": [
                    {
                        "name": "frost",
                        "metric": "temp",
                        "devices": ["station"],
                        "aggregate": "mean",
                        "window": "1m",
                        "below": 3,
                        "clear": 4,
                    },
                    {
                        "name": "high_wind",
                        "metric": "wind_speed",
                        "devices": ["station"],
                        "aggregate": "mean",
                        "window": "30s",
                        "above": 10,
                        "clear": 8,
                    },
                ],
                "severity": "warning",
            }
        ],
    }


def demo_site(mqtt_port: int, endpoints: dict[str, object], outbox: Path) -> dict[str, object]:
    site = {
        "site": SITE,
        "gateway": "gw-demo",
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "outbox": {"path": str(outbox), "commit_interval": "500ms"},
        "status": {"interval": "2s"},
        **endpoints,
    }
    for act in site["actuators"]:  # type: ignore[attr-defined]
        act["limits"] = {"max_on": "5m", "min_off": "10s", "broker_grace": "30s"}
        act["hardware_timer"] = "30s"
    return site


DEMO_USERS = (("operator", "demo-operator", "operator"), ("viewer", "demo-viewer", "viewer"))
"""(user, password, role) of the demo console: demo only, loopback only."""


def demo_console(workdir: Path, mqtt_port: int, influx_url: str, rules: Path) -> tuple[Path, str]:
    """console.yaml for the demo (loopback, a free port) and its users, made with
    ``dustgate console adduser`` as an operator would; returns (file, URL)."""
    from gateway.localservices import free_port

    port = free_port()
    cfg = workdir / "console.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "console": {"listen": "127.0.0.1", "port": port, "stale_after": "30s"},
                "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
                "influx": {"url": influx_url, "database": DB},
                "rules_file": str(rules),
                "store": str(workdir / "console.db"),
            },
            sort_keys=False,
        )
    )
    for user, password, role in DEMO_USERS:
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "console", "adduser", "--config", str(cfg),
             user, "--role", role],
            env={**os.environ, "DUSTGATE_CONSOLE_PASSWORD": password},
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    return cfg, f"http://127.0.0.1:{port}/"


@dataclass
class View:
    """What the demo has seen on the broker; the loop-closed verdict."""

    started: float = field(default_factory=time.monotonic)
    latest: dict[str, dict[str, float]] = field(default_factory=dict)
    pm10: deque[tuple[float, float]] = field(default_factory=deque)
    cannons: dict[str, p.ActuatorState] = field(default_factory=dict)
    backlog: int = 0
    gateway: str = "?"
    events: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    spray_started: float | None = None
    fell_below_clear: float | None = None
    spray_stopped: float | None = None
    peak: float = 0.0
    status: statusview.View = field(default_factory=statusview.View)  # for the terminal view

    def rolling_pm10(self) -> float | None:
        if not self.pm10:
            return None
        return sum(v for _, v in self.pm10) / len(self.pm10)

    def on_message(self, topic: str, payload: bytes) -> None:
        self.status.feed(topic, payload)
        try:
            t = p.parse_topic(topic)
            if t.kind == "telemetry" and t.name:
                reading = p.decode(p.Telemetry, payload)
                self.latest[t.name] = reading.values
                if t.name == "station" and "pm10" in reading.values:
                    now = reading.ts / 1000
                    self.pm10.append((now, reading.values["pm10"]))
                    while self.pm10 and self.pm10[0][0] < now - WINDOW_S:
                        self.pm10.popleft()
            elif t.kind == "state" and t.name:
                self.cannons[t.name] = p.decode(p.ActuatorState, payload)
            elif t.kind == "status":
                st = p.decode(p.GatewayStatus, payload)
                self.backlog, self.gateway = st.backlog, st.state
            elif t.kind == "events":
                ev = p.decode(p.Event, payload)
                self.events.append(f"{time.strftime('%H:%M:%S')} {ev.kind}: {ev.text}"[:100])
        except p.ProtocolError:
            return
        self._judge()

    def _judge(self) -> None:
        now = time.monotonic()
        on = any(s.state == "on" for s in self.cannons.values())
        mean = self.rolling_pm10()
        if mean is not None:
            self.peak = max(self.peak, mean)
        if on and self.spray_started is None:
            self.spray_started = now
        if self.spray_started and mean is not None and mean < CLEAR and not self.fell_below_clear:
            self.fell_below_clear = now
        if self.spray_started and not on and self.spray_stopped is None:
            self.spray_stopped = now

    @property
    def closed(self) -> bool:
        return bool(self.spray_started and self.fell_below_clear and self.spray_stopped)

    def render(self, event_in: float | None) -> str:
        el = time.monotonic() - self.started
        lines = [
            f"dustgate demo — site {SITE} — {el:5.0f}s   gateway {self.gateway}, "
            f"outbox backlog {self.backlog}"
        ]
        if event_in is not None and event_in > 0:
            lines.append(f"earthwork dust event starts in {event_in:.0f}s")
        mean = self.rolling_pm10()
        bar = ""
        if mean is not None:
            width = int(min(mean, 300) / 300 * 40)
            mark = int(THRESHOLD / 300 * 40)
            bar = "".join("#" if i < width else ("|" if i == mark else ".") for i in range(41))
        lines.append(
            f"PM10 {int(WINDOW_S)}s mean {mean or 0:6.1f} ug/m3  [{bar}]  "
            f"ON above {THRESHOLD:.0f}, clear at {CLEAR:.0f}"
        )
        for dev in sorted(self.latest):
            vals = self.latest[dev]
            shown = " ".join(
                f"{k}={vals[k]:g}"
                for k in ("pm25", "pm10", "noise", "wind_speed", "temp")
                if k in vals
            )
            lines.append(f"  {dev:<10} {shown}")
        for name in sorted(self.cannons):
            s = self.cannons[name]
            left = ""
            if s.state == "on" and s.lease_until:
                left = f" lease {max(0.0, s.lease_until / 1000 - time.time()):4.1f}s left"
            lines.append(f"  {name:<10} {s.state.upper():<3} ({s.source}){left} {s.reason[:50]}")
        lines.extend(f"  event {e}" for e in self.events)
        verdict = self.verdict()
        lines.append("loop: " + "  ".join(f"[{'x' if t else ' '}] {n}" for n, t in verdict))
        return "\n".join(lines)

    def verdict(self) -> list[tuple[str, bool]]:
        return [
            ("spray started", bool(self.spray_started)),
            (f"PM10 below {CLEAR:.0f}", bool(self.fell_below_clear)),
            ("spray stopped", bool(self.spray_stopped)),
        ]

    def screen(self, event_in: float | None) -> RenderableType:
        """The view for a terminal (rich, in colour): what :meth:`render` says, as tables."""
        from gateway.livescreen import demo_screen

        return demo_screen(
            f"dustgate demo — site {SITE} — {time.monotonic() - self.started:5.0f}s",
            f"earthwork dust event starts in {event_in:.0f}s"
            if event_in and event_in > 0
            else None,
            self.rolling_pm10(),
            (WINDOW_S, THRESHOLD, CLEAR),
            statusview.board(self.status, time.time()),
            self.events,
            self.verdict(),
        )


def influx_counts(influx: Influxd) -> dict[str, int]:
    out = {}
    for what, q in (
        ("telemetry", 'SELECT count("pm10") FROM "telemetry"'),
        ("actuator", 'SELECT count("on") FROM "actuator"'),
    ):
        try:
            res = influx.query(q, DB)
            out[what] = int(res["results"][0]["series"][0]["values"][0][1])  # type: ignore[index]
        except (KeyError, IndexError, TypeError, OSError, ValueError):
            out[what] = 0
    return out


async def run_demo(workdir: Path, duration: float | None, exit_when_closed: bool) -> int:
    from drivers.sim.site import FakeSite

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tty = sys.stdout.isatty()
    print(f"dustgate demo: state and logs in {workdir}/", flush=True)
    mq = Mosquitto(workdir / "mosquitto")
    influx = Influxd(workdir / "influxdb")
    site = FakeSite(seed=7, cannons=2)
    procs: list[subprocess.Popen[bytes]] = []
    live: Screen | None = None
    view = View()
    try:
        mq.start()
        influx.start()
        influx.create_database(DB)
        endpoints = await site.start()
        site_yaml = workdir / "site.yaml"
        rules_yaml = workdir / "rules.yaml"
        site_yaml.write_text(
            yaml.safe_dump(
                demo_site(mq.port, endpoints.agent_config(), workdir / "outbox.db"), sort_keys=False
            )
        )
        rules_yaml.write_text(
            yaml.safe_dump(
                demo_rules(mq.port, influx.url, workdir / "rules-state"), sort_keys=False
            )
        )
        console_yaml, console_url = demo_console(workdir, mq.port, influx.url, rules_yaml)
        for name, cfg in (("agent", site_yaml), ("rules", rules_yaml), ("console", console_yaml)):
            log = (workdir / f"{name}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", name, "--config", str(cfg)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        logins = " or ".join(f"{u} / {pw}" for u, pw, _ in DEMO_USERS)
        print(
            f"console: {console_url}  (sign in as {logins}; log: {workdir}/console.log)",
            flush=True,
        )
        print(
            f"mosquitto on 127.0.0.1:{mq.port}, influxd on {influx.url}; "
            f"agent and rule engine started (logs: {workdir}/agent.log, rules.log)",
            flush=True,
        )
        event_fired = False
        deadline = None if duration is None else time.monotonic() + duration
        closed_at = None
        if tty:  # a terminal: rich tables in colour, redrawn in place
            from gateway.livescreen import Screen

            live = Screen(sys.stdout).start()
        async with aiomqtt.Client("127.0.0.1", mq.port) as client:
            await client.subscribe(f"{p.ROOT}/#", qos=1)
            last_draw = 0.0
            messages = client.messages
            while deadline is None or time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        msg = await anext(messages)
                        view.on_message(str(msg.topic), bytes(msg.payload))  # type: ignore[arg-type]
                el = time.monotonic() - view.started
                if not event_fired and el >= EVENT_AT_S:
                    site.trigger_event(hold_s=40.0, peak_pm10=300.0)
                    event_fired = True
                    view.events.append(f"{time.strftime('%H:%M:%S')} demo: earthwork starts")
                if time.monotonic() - last_draw >= (1.0 if tty else 5.0):
                    last_draw = time.monotonic()
                    event_in = None if event_fired else EVENT_AT_S - el
                    if live is not None:
                        live.show(view.screen(event_in))
                    else:
                        print(view.render(event_in) + "\n", flush=True)
                for proc in procs:
                    if proc.poll() is not None:
                        print(
                            f"a process exited early (code {proc.returncode}); see the logs "
                            f"in {workdir}",
                            file=sys.stderr,
                        )
                        return 1
                if view.closed and closed_at is None:
                    closed_at = time.monotonic()
                if exit_when_closed and closed_at and time.monotonic() - closed_at > 3:
                    break
        if live is not None:
            live.show(view.screen(None))
            live.stop()
        counts = influx_counts(influx)
        if live is None:
            print(view.render(None))
        print(
            f"\nInfluxDB: {counts['telemetry']} PM10 readings and {counts['actuator']} cannon "
            f"state changes in database {DB!r} at {influx.url}"
        )
        print(
            f'  try: curl -G {influx.url}/query --data-urlencode "db={DB}" --data-urlencode '
            '"q=SELECT mean(pm10) FROM telemetry WHERE time > now() - 10m GROUP BY '
            'time(30s), device"'
        )
        print(
            "  Grafana: add an InfluxDB (InfluxQL) data source with this URL and database, or "
            "use deploy/grafana/ provisioning (datasource + dashboards)."
        )
        ok = view.closed and counts["telemetry"] > 0 and counts["actuator"] > 0
        print(f"\nconsole: {console_url}  (operator / demo-operator)")
        print(
            "\nloop closed: dust rose, the cannons sprayed, PM10 fell, the cannons stopped."
            if ok
            else "\nloop did NOT close (see the logs above)"
        )
        return 0 if ok else 1
    finally:
        if live is not None:
            live.stop()
        stop_groups(procs)
        await site.stop()
        influx.stop()
        mq.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dustgate demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-data"), help="state and logs (recreated on each run)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after N seconds (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--exit-when-closed",
        action="store_true",
        help="stop a few seconds after the loop has closed",
    )
    args = parser.parse_args(argv)

    async def runner() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            return await run_demo(args.dir.resolve(), args.duration, args.exit_when_closed)
        except asyncio.CancelledError:
            print("\nstopped", file=sys.stderr)
            return 130

    return asyncio.run(runner())
