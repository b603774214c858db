"""The live views on a terminal: ``dustgate status`` and the demo's table drawn with rich.

The rows and each site's state come from :func:`gateway.statusview.board` (pure); the
colours and the in-place redraw from :mod:`gateway.livescreen`. Rendered into a rich
console forced to be a terminal, and, end to end, ``dustgate status`` on a pty against a
real mosquitto holding a site's retained status and cannon state.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from gateway import demo
from gateway import protocol as p
from gateway.livescreen import STYLES, Screen, status_tables
from gateway.localservices import Mosquitto
from gateway.statusview import STATES, View, board, render

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_000.0
CYAN_BOLD = "\x1b[1;36m"  # STYLES["spraying"] in the standard 16 colours
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def styled(raw: str, sgr: str, text: str) -> bool:
    """``text`` drawn with the escape ``sgr`` (its cell's padding inside the style)."""
    return re.search(re.escape(sgr + text) + r" *\x1b\[0m", raw) is not None


def terminal(width: int = 160) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="standard", width=width), out


def gateway(state: str = "online", backlog: int = 0, **devices: str) -> bytes:
    health = {
        name: p.DeviceHealth(state=s, last_ok_ts=int(NOW * 1000) - 2000)  # type: ignore[arg-type]
        for name, s in devices.items()
    }
    return p.encode(
        p.GatewayStatus(state=state, ts=int(NOW * 1000) - 1000, backlog=backlog, devices=health)  # type: ignore[arg-type]
    )


def reading(pm10: float, status: p.Status = p.Status.OK, age_s: float = 2.0) -> bytes:
    ts = int((NOW - age_s) * 1000)
    return p.encode(p.Telemetry(ts=ts, seq=1, values={"pm10": pm10}, status=status))


def cannon(on: bool) -> bytes:
    since = int(NOW * 1000) - 5000
    lease = since + 20_000 if on else None
    return p.encode(
        p.ActuatorState(state="on" if on else "off", since=since, source="rule", lease_until=lease)
    )


def event(kind: str, rule: str = "pm10-gate", ts_s: float = NOW - 3) -> bytes:
    return p.encode(p.Event(ts=int(ts_s * 1000), kind=kind, text=f"{rule}: {kind}", rule=rule))


def site_view(*messages: tuple[str, bytes]) -> View:
    view = View()
    for topic, payload in messages:
        view.feed(topic, payload)
    return view


S = "s1"
STATUS = p.status_topic(S, "gw")
STATION = p.telemetry_topic(S, "station")
CANNON = p.state_topic(S, "cannon-1")
EVENTS = p.subscription("events", S)


def test_each_site_state_from_what_the_broker_says() -> None:
    base = [(STATUS, gateway(station="online")), (STATION, reading(80))]
    cases = {
        "ok": [*base, (CANNON, cannon(False))],
        "pending": [*base, (EVENTS, event("pending"))],
        "spraying": [*base, (EVENTS, event("on")), (CANNON, cannon(True))],
        "interlocked": [
            *base,
            (EVENTS, event("pending", ts_s=NOW - 9)),
            (EVENTS, event("interlock")),
        ],
        "stale": [(STATUS, gateway(station="online")), (STATION, reading(80, age_s=600))],
        "offline": [(STATUS, gateway("offline", station="online")), (STATION, reading(80))],
    }
    for want, messages in cases.items():
        (site,) = board(site_view(*messages), NOW)
        assert site.state == want, (want, site)
    # a flagged reading or a device backing off is stale too; an older event does not win
    flagged = site_view((STATUS, gateway(station="online")), (STATION, reading(9, p.Status.FAULT)))
    assert board(flagged, NOW)[0].state == "stale"
    backoff = site_view((STATUS, gateway(station="backoff")), (STATION, reading(9)))
    assert [r.state for r in board(backoff, NOW)[0].devices] == ["stale"]
    late = site_view(*base, (EVENTS, event("pending")), (EVENTS, event("interlock", ts_s=NOW - 60)))
    assert board(late, NOW)[0].state == "pending"


def test_plain_text_has_no_escape_codes_and_no_rules_table() -> None:
    view = site_view(
        (STATUS, gateway(backlog=12, station="online")),
        (STATION, reading(180)),
        (CANNON, cannon(True)),
        (EVENTS, event("on")),
    )
    text = render(view, NOW)
    assert "\x1b" not in text and "RULE" not in text
    assert "backlog 12" in text and "pm10=180" in text


def test_the_terminal_view_colours_each_state() -> None:
    view = site_view(
        (STATUS, gateway(backlog=12, station="online", dead="offline")),
        (STATION, reading(180)),
        (CANNON, cannon(True)),
        (p.state_topic(S, "cannon-2"), cannon(False)),
        (EVENTS, event("on")),
        (p.status_topic("s2", "gw"), gateway("offline")),
    )
    console, out = terminal()
    console.print(status_tables(board(view, NOW)))
    raw = out.getvalue()
    plain = ANSI.sub("", raw)
    lines = plain.splitlines()
    assert "site s1  SPRAYING" in plain and "site s2  OFFLINE" in plain
    c1 = next(line for line in lines if line.startswith("cannon-1"))
    assert c1.split()[1:4] == ["ON", "rule", "15s"]
    assert next(line for line in lines if line.startswith("cannon-2")).split()[1] == "OFF"
    gw = next(line for line in lines if line.startswith("gw ") and "ONLINE" in line)
    assert gw.split()[4] == "12"  # backlog
    assert "pm10=180" in plain and "pm10-gate" in plain
    # the spraying cannon's state in bold cyan, the site's title too; the dead device in red
    assert styled(raw, CYAN_BOLD, "ON") and styled(raw, CYAN_BOLD, "SPRAYING")
    assert styled(raw, "\x1b[1;31m", "offline")  # STYLES["offline"]: bold red
    assert styled(raw, "\x1b[33m", "12")  # a backlog in yellow
    assert styled(raw, "\x1b[2m", "OFF")  # a cannon at rest dimmed
    assert not styled(raw, CYAN_BOLD, "OFF")


def test_every_state_has_a_colour_of_its_own() -> None:
    assert set(STYLES) == set(STATES)
    assert len(set(STYLES.values())) == len(STYLES)


def test_the_screen_redraws_in_place() -> None:
    console, out = terminal(80)
    view = site_view((STATUS, gateway(station="online")), (CANNON, cannon(False)))
    with Screen(out, console) as screen:
        screen.show(status_tables(board(view, NOW)))
        first = len(out.getvalue())
        view.feed(CANNON, cannon(True))
        screen.show(status_tables(board(view, NOW)))
    second = out.getvalue()[first:]
    # the second frame moves the cursor up over the first and rewrites it: no clear-screen,
    # no scrolling copy of the table
    assert "\x1b[1A" in second and "\x1b[2K" in second and "\x1b[2J" not in out.getvalue()
    assert styled(second, CYAN_BOLD, "ON") and "SPRAYING" in second


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["online", "offline", "backoff", "starting", "gone"]),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.booleans(), max_size=3),
    st.lists(st.sampled_from(["pending", "on", "off", "interlock", "stale", "max_on"]), max_size=4),
    st.booleans(),
)
def test_the_site_state_follows_its_order(
    health: list[str], cannons: list[bool], kinds: list[str], gw_online: bool
) -> None:
    devs = {f"d{i}": h for i, h in enumerate(health) if h != "gone"}
    msgs = [(STATUS, gateway("online" if gw_online else "offline", **devs))]
    msgs += [(p.telemetry_topic(S, f"d{i}"), reading(50)) for i in range(len(health))]
    msgs += [(p.state_topic(S, f"c{i}"), cannon(on)) for i, on in enumerate(cannons)]
    msgs += [(EVENTS, event(k, rule=f"r{i}")) for i, k in enumerate(kinds)]
    (site,) = board(site_view(*msgs), NOW)
    unhealthy = any(h not in ("online", "gone") for h in health)
    want = (
        "offline" if not gw_online
        else "spraying" if any(cannons)
        else "interlocked" if "interlock" in kinds
        else "pending" if "pending" in kinds
        else "stale" if unhealthy
        else "ok"
    )  # fmt: skip
    assert site.state == want
    assert [r.state == "spraying" for r in site.actuators] == cannons


def test_the_demo_view_in_a_terminal() -> None:
    view = demo.View()
    now_ms = int(time.time() * 1000)
    for i in range(5):
        payload = p.Telemetry(ts=now_ms - 1000 * (5 - i), seq=i, values={"pm10": 200.0 + i})
        view.on_message(p.telemetry_topic(demo.SITE, "station"), p.encode(payload))
    on = p.ActuatorState(state="on", since=now_ms, source="rule", lease_until=now_ms + 15_000)
    view.on_message(p.state_topic(demo.SITE, "cannon-1"), p.encode(on))
    console, out = terminal()
    console.print(view.screen(None))
    raw = out.getvalue()
    plain = ANSI.sub("", raw)
    assert "PM10 30s mean  202.0 ug/m3" in plain and "ON above 150, clear at 90" in plain
    assert "[x] spray started" in plain and "[ ] spray stopped" in plain
    assert styled(raw, CYAN_BOLD, "ON")  # the spraying cannon
    assert styled(raw, "\x1b[1;31m", " 202.0")  # the mean over the ON threshold in red
    assert "\x1b" not in view.render(None)  # the plain text of a pipe is unchanged


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(t, m, qos=1, retain=True) for t, m in messages]
    for info in infos:
        info.wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


@pytest.mark.integration
def test_status_on_a_pty_is_coloured_and_in_place(mosquitto: Mosquitto) -> None:
    broker = mosquitto
    now_ms = int(time.time() * 1000)
    status = p.GatewayStatus(
        state="online",
        ts=now_ms,
        backlog=7,
        devices={"station": p.DeviceHealth(state="online", last_ok_ts=now_ms)},
    )
    on = p.ActuatorState(state="on", since=now_ms, source="rule", lease_until=now_ms + 60_000)
    _publish(
        broker.port,
        [(p.status_topic("north", "gw"), p.encode(status)), (p.state_topic("north", "fog"), p.encode(on))],
    )  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "status", "--port", str(broker.port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "150", "LINES": "40"},
    )
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + 20
    try:
        # until the table with the cannon has been drawn twice (a redraw, a second on)
        while time.monotonic() < deadline and raw.count(b"fog") < 2:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                raw += os.read(master, 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        os.close(master)
    text = raw.decode(errors="replace")
    plain = ANSI.sub("", text)
    assert raw.count(b"fog") >= 2, (text[-2000:], err)
    assert "site north  SPRAYING" in plain and "fog" in plain
    assert re.search(r"gw +ONLINE +\? +\d+s +7 ", plain), plain[-1500:]
    assert re.search(r"\x1b\[1;36m(\x1b\[[0-9;]*m)*ON", text), text[-1500:]  # cannon on: cyan
    assert "\x1b[2J" not in text  # redrawn in place, not cleared
    assert proc.returncode == 0, err
