"""``dustgate status``: a live terminal table of sites, gateways, devices, actuators, backlog.

Everything comes from the broker, as any other consumer sees it: the retained gateway
``status`` (online/offline, uptime, backlog, per-device health) and actuator ``state`` topics,
plus live ``telemetry`` for each device's last values and the rules' transitions
(``events``: pending, on, interlock, ...). :class:`View` folds messages into a snapshot,
:func:`board` turns a snapshot into rows at a given time, each with its state (ok, pending,
spraying, interlocked, stale, offline), and :func:`render` into plain text (all pure). The
shell subscribes and redraws once a second: on a terminal in colour and in place
(:mod:`gateway.livescreen`, rich), otherwise as plain text. ``--once`` collects for
``--wait`` seconds, prints one table and exits (for scripts and tests): 0 when some gateway
status was seen, 1 when none was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiomqtt

from gateway import protocol as p
from gateway.configfile import ConfigError, MqttSettings, parse_duration
from gateway.session import make_client


@dataclass
class DeviceView:
    values: dict[str, float] = field(default_factory=dict)
    status: str = ""
    ts_ms: int | None = None  # read time of the last telemetry seen
    seq: int | None = None


@dataclass
class SiteView:
    gateways: dict[str, p.GatewayStatus] = field(default_factory=dict)
    devices: dict[str, DeviceView] = field(default_factory=dict)
    actuators: dict[str, p.ActuatorState] = field(default_factory=dict)
    rules: dict[str, p.Event] = field(default_factory=dict)  # rule -> its last transition


RULE_PHASE_STATE = {
    "pending": "pending",
    "on": "spraying",
    "interlock": "interlocked",
    "stale": "stale",
    "max_on": "stale",
    "off": "ok",
}
"""A rule's transition events (``events`` topic) and the state their row shows."""


@dataclass
class View:
    """Everything seen so far, by site."""

    sites: dict[str, SiteView] = field(default_factory=dict)
    ignored: int = 0

    def feed(self, topic: str, payload: bytes) -> None:
        """Fold one message in; anything not following the contract is counted and skipped."""
        try:
            t = p.parse_topic(topic)
            site = self.sites.setdefault(t.site, SiteView())
            if t.kind == "status" and t.name:
                site.gateways[t.name] = p.decode(p.GatewayStatus, payload)
            elif t.kind == "state" and t.name:
                if payload:  # an empty retained message clears the topic
                    site.actuators[t.name] = p.decode(p.ActuatorState, payload)
            elif t.kind == "telemetry" and t.name:
                reading = p.decode(p.Telemetry, payload)
                dev = site.devices.setdefault(t.name, DeviceView())
                if dev.ts_ms is None or reading.ts >= dev.ts_ms:
                    dev.values = dict(reading.values) or dev.values
                    dev.status = reading.status.value
                    dev.ts_ms = reading.ts
                    dev.seq = reading.seq
            elif t.kind == "events":
                ev = p.decode(p.Event, payload)
                if ev.rule is not None and ev.kind in RULE_PHASE_STATE:
                    last = site.rules.get(ev.rule)
                    if last is None or ev.ts >= last.ts:
                        site.rules[ev.rule] = ev
        except p.ProtocolError:
            self.ignored += 1


def _age(now: float, ts_ms: int | None) -> str:
    if ts_ms is None:
        return "-"
    s = max(0.0, now - ts_ms / 1000)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _values(values: dict[str, float], limit: int = 6) -> str:
    parts = [f"{k}={v:g}" for k, v in list(values.items())[:limit]]
    if len(values) > limit:
        parts.append("...")
    return " ".join(parts) or "-"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        out.append(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return out


# ------------------------------------------------------------------ rows (pure)

STALE_AFTER_S = 120.0
"""A device whose newest reading is older than this is ``stale`` on the board."""

STATES: tuple[str, ...] = ("ok", "pending", "spraying", "interlocked", "stale", "offline", "off")
"""What a row or a site can be; the terminal view gives each its colour."""

DEVICE_HEADER = ["DEVICE", "HEALTH", "DATA", "LAST VALUES", "AGE", "ERR", ""]
ACTUATOR_HEADER = ["ACTUATOR", "STATE", "SOURCE", "LEASE LEFT", "SINCE", "READBACK", "REASON"]
RULE_HEADER = ["RULE", "LAST TRANSITION", "AGE", "WHAT"]


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: its cells as text, and the state that colours it."""

    cells: tuple[str, ...]
    state: str


@dataclass(frozen=True, slots=True)
class UplinkLine:
    name: str
    connected: bool
    backlog: int
    sent: int
    evicted: int
    skew_s: float | None


@dataclass(frozen=True, slots=True)
class GatewayLine:
    name: str
    online: bool
    version: str
    uptime_s: float
    backlog: int
    evicted: int
    poll_errors: int
    refused: int
    age: str
    uplinks: tuple[UplinkLine, ...]


@dataclass(frozen=True, slots=True)
class SiteBoard:
    """What the live view shows of one site; ``state`` is the site's, first match wins:
    ``offline`` (a gateway says so), ``spraying`` (an actuator is on), ``interlocked`` /
    ``pending`` (a rule's last transition seen), ``stale`` (a device offline, backing off,
    flagged or older than :data:`STALE_AFTER_S`), ``ok``."""

    site: str
    state: str
    gateways: tuple[GatewayLine, ...]
    devices: tuple[Row, ...]
    actuators: tuple[Row, ...]
    rules: tuple[Row, ...]


def _device_state(h: p.DeviceHealth | None, d: DeviceView | None, age_s: float | None) -> str:
    if h is not None and h.state == "offline":
        return "offline"
    if h is not None and h.state != "online":
        return "stale"
    if d is not None and d.status and d.status != p.Status.OK.value:
        return "stale"
    if age_s is None or age_s > STALE_AFTER_S:
        return "stale"
    return "ok"


def board(view: View, now: float) -> list[SiteBoard]:
    """The rows of every site in ``view`` at wall-clock time ``now`` (seconds), sorted by
    site; both the plain text (:func:`render`) and the terminal view are drawn from this."""
    boards = []
    for site_id in sorted(view.sites):
        site = view.sites[site_id]
        gateways = tuple(
            GatewayLine(
                gw_id,
                gw.state == "online",
                gw.version or "?",
                gw.uptime_s,
                gw.backlog,
                gw.evicted,
                gw.poll_errors,
                gw.refused_commands,
                _age(now, gw.ts),
                tuple(
                    UplinkLine(
                        name,
                        up.connected,
                        up.backlog,
                        up.records_sent,
                        up.evicted,
                        up.platform_skew_s,
                    )
                    for name, up in sorted(gw.uplinks.items())
                ),
            )
            for gw_id, gw in sorted(site.gateways.items())
        )
        health: dict[str, p.DeviceHealth] = {}
        for gw in site.gateways.values():
            health.update(gw.devices)
        devices = []
        for name in sorted(set(health) | set(site.devices)):
            h = health.get(name)
            d = site.devices.get(name)
            last_ts = d.ts_ms if d and d.ts_ms is not None else (h.last_ok_ts if h else None)
            age_s = None if last_ts is None else max(0.0, now - last_ts / 1000)
            cells: tuple[str, ...] = (
                name,
                h.state if h else "?",
                d.status if d else "-",
                _values(d.values) if d else "-",
                _age(now, last_ts),
                str(h.errors) if h else "-",
                (h.last_error or "")[:40] if h else "",
            )
            devices.append(Row(cells, _device_state(h, d, age_s)))
        actuators = []
        for name, st in sorted(site.actuators.items()):
            left = "-"
            if st.state == "on" and st.lease_until is not None:
                left = f"{max(0.0, st.lease_until / 1000 - now):.0f}s"
            acells: tuple[str, ...] = (
                name,
                st.state.upper(),
                st.source,
                left,
                _age(now, st.since),
                "ok" if st.readback_ok else "MISMATCH",
                st.reason[:50],
            )
            actuators.append(Row(acells, "spraying" if st.state == "on" else "off"))
        rules = tuple(
            Row(
                (rule, ev.kind, _age(now, ev.ts), ev.text[:60]),
                RULE_PHASE_STATE.get(ev.kind, "ok"),
            )
            for rule, ev in sorted(site.rules.items())
        )
        phases = {r.state for r in rules}
        if any(not g.online for g in gateways):
            state = "offline"
        elif actuators and any(a.state == "spraying" for a in actuators):
            state = "spraying"
        elif "interlocked" in phases:
            state = "interlocked"
        elif "pending" in phases:
            state = "pending"
        elif any(dv.state != "ok" for dv in devices):
            state = "stale"
        else:
            state = "ok"
        boards.append(SiteBoard(site_id, state, gateways, tuple(devices), tuple(actuators), rules))
    return boards


def render(view: View, now: float) -> str:
    """The table for ``view`` at wall-clock time ``now`` (seconds), as plain text."""
    if not view.sites:
        return "no dustgate site seen on this broker yet\n"
    lines: list[str] = []
    for site in board(view, now):
        lines.append(f"site {site.site}")
        for gw in site.gateways:
            lines.append(
                f"  gateway {gw.name}: {'ONLINE' if gw.online else 'OFFLINE'}  version "
                f"{gw.version}  up {gw.uptime_s:.0f}s  backlog {gw.backlog}  evicted {gw.evicted}  "
                f"poll errors {gw.poll_errors}  refused commands {gw.refused}  "
                f"(status {gw.age} old)"
            )
            for up in gw.uplinks:
                skew = "" if up.skew_s is None else f"  clock {up.skew_s:+.0f}s"
                lines.append(
                    f"    uplink {up.name}: {'connected' if up.connected else 'DOWN'}  "
                    f"backlog {up.backlog}  sent {up.sent}  evicted {up.evicted}{skew}"
                )
        if site.devices:
            lines += _table(DEVICE_HEADER, [list(r.cells) for r in site.devices])
        if site.actuators:
            lines += _table(ACTUATOR_HEADER, [list(r.cells) for r in site.actuators])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ shell


def _duration(text: str) -> float:
    try:
        return float(parse_duration(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dustgate status",
        description="Live table of sites, devices, actuators and backlog from the broker.",
    )
    parser.add_argument("--config", "-c", type=Path, help="site.yaml (broker settings, site)")
    parser.add_argument("--host", help="broker host (overrides --config)")
    parser.add_argument("--port", type=int, help="broker port (overrides --config)")
    parser.add_argument("--site", help="only this site (default: the --config site, else all)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--wait",
        type=_duration,
        default=2.0,
        help="with --once: collect this long before printing (default 2s)",
    )
    return parser


async def collect(
    settings: MqttSettings, site: str, once: bool, wait: float, out: TextIO = sys.stdout
) -> View:
    view = View()
    client = make_client(settings, f"dustgate-status-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(client)
        screen = None
        if not once and out.isatty():  # a terminal: rich, redrawn in place, in colour
            from gateway.livescreen import Screen, status_tables

            screen = stack.enter_context(Screen(out))
        for kind in ("status", "state", "telemetry", "events"):
            await client.subscribe(p.subscription(kind, site), qos=0)  # type: ignore[arg-type]
        deadline = time.monotonic() + wait
        next_draw = 0.0
        while True:
            now = time.monotonic()
            if once and now >= deadline:
                return view
            if not once and now >= next_draw:
                next_draw = now + 1.0
                if screen is not None:
                    screen.show(status_tables(board(view, time.time())))
                else:  # clear the screen, cursor home
                    out.write("\x1b[2J\x1b[H" + render(view, time.time()))
                    out.flush()
            limit = (deadline if once else next_draw) - now
            try:
                async with asyncio.timeout(max(0.01, limit)):
                    message = await anext(aiter(client.messages))
            except TimeoutError:
                continue
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                view.feed(str(message.topic), bytes(payload))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = MqttSettings()
    site = args.site or "+"
    if args.config is not None:
        from gateway.config import load_site_config

        try:
            cfg = load_site_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        settings = cfg.mqtt
        site = args.site or cfg.site
    update = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=update)
    if site != "+":
        try:
            p.check_id(site, "site")
        except p.ProtocolError as exc:
            print(f"dustgate status: {exc}", file=sys.stderr)
            return 2
    try:
        view = asyncio.run(collect(settings, site, args.once, args.wait))
    except aiomqtt.MqttError as exc:
        print(f"broker {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    if sys.stdout.isatty():
        from gateway.livescreen import console_for, status_tables

        console_for(sys.stdout).print(status_tables(board(view, time.time())))
    else:
        sys.stdout.write(render(view, time.time()))
    return 0 if any(s.gateways for s in view.sites.values()) else 1
