"""The console against a real broker (and a real rule engine for overrides): retained
state on start, readings pushed to open pages over SSE, overrides answered by the
engine, a broker that goes away said on the page while the board keeps what it has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.publish as publish
import pytest
from consolehelpers import Served, http_login, write_console
from paho.mqtt.client import MQTTv5

from gateway import protocol as p
from gateway.localservices import Mosquitto
from rules.console.app import create_app, make_ctx
from rules.console.auth import hash_password
from rules.console.config import load_console_file

pytestmark = pytest.mark.integration

RULES = """\
mqtt: {{host: 127.0.0.1, port: {port}}}
state_dir: ./state
actuators:
  s1/cannon-1: {{}}
rules:
  - id: pm10-gate
    site: s1
    metric: pm10
    devices: [mon]
    window: 1m
    above: 150
    clear: 100
    actions: {{lease: [cannon-1], run_for: 1m}}
"""


def pub(mq: Mosquitto, topic: str, payload: p.Payload, retain: bool = False) -> None:
    publish.single(
        topic,
        p.encode(payload),
        qos=1,
        retain=retain,
        hostname="127.0.0.1",
        port=mq.port,
        protocol=MQTTv5,
    )


def make(tmp: Path, mq: Mosquitto):  # type: ignore[no-untyped-def]
    cfg_path = write_console(
        tmp, f"mqtt: {{host: 127.0.0.1, port: {mq.port}}}\n", RULES.format(port=mq.port)
    )
    ctx = make_ctx(load_console_file(cfg_path))
    ctx.store.add_user("otto", "operator", hash_password("correct horse battery"), time.time())
    return ctx, create_app(ctx)


def sse_frames(lines: Iterator[str], want: str, timeout: float) -> dict[str, object]:
    """The first ``site`` frame whose HTML contains ``want``."""
    deadline = time.monotonic() + timeout
    event = None
    for line in lines:
        if time.monotonic() > deadline:
            break
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "site":
            data = json.loads(line[6:])
            if want in data["html"]:
                return data  # type: ignore[no-any-return]
    raise AssertionError(f"no site frame with {want!r} within {timeout}s")


def test_retained_state_on_start_and_readings_live_over_sse(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    now = time.time()
    pub(
        mosquitto,
        p.status_topic("s1", "gw"),
        p.GatewayStatus(state="online", ts=int(now * 1000), backlog=7),
        retain=True,
    )
    pub(
        mosquitto,
        p.state_topic("s1", "cannon-1"),
        p.ActuatorState(state="off", since=int(now * 1000), source="rule"),
        retain=True,
    )
    _ctx, app = make(tmp_path, mosquitto)
    with (
        Served(app) as srv,
        httpx.Client(base_url=srv.url, timeout=10, follow_redirects=True) as client,
    ):
        http_login(client, "otto")
        deadline = time.monotonic() + 10
        while "backlog 7" not in (page := client.get("/").text):  # retained status, no reading yet
            assert time.monotonic() < deadline, page
            time.sleep(0.1)
        assert "cannon-1: <b>off</b>" in page
        lags = []
        with client.stream("GET", "/live", timeout=httpx.Timeout(10, read=10)) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            for i, value in enumerate((123.0, 177.0, 181.0)):
                sent = time.monotonic()
                pub(
                    mosquitto,
                    p.telemetry_topic("s1", "mon"),
                    p.Telemetry(ts=int(time.time() * 1000), seq=i, values={"pm10": value}),
                )
                frame = sse_frames(lines, f'<td class="val">{value:.0f}</td>', timeout=5)
                lags.append(time.monotonic() - sent)
                assert frame["site"] == "s1"
            assert 'data-state="over"' in str(frame["html"])  # 181 > 150, nothing spraying
            # the engine refusing a rules file reaches open pages as a reload frame
            bad = p.Event(
                ts=int(time.time() * 1000), kind="reload_error", text="rules not reloaded: <i>x</i>"
            )
            pub(mosquitto, p.events_topic("s1"), bad)
            event = None
            for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "reload":
                    data = json.loads(line[6:])
                    assert data["kind"] == "reload_error"
                    assert "rules not reloaded: &lt;i&gt;x&lt;/i&gt;" in data["html"]
                    break
        assert max(lags) < 2.0, lags


def test_override_from_the_site_page_is_answered_by_the_engine(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    ctx, app = make(tmp_path, mosquitto)
    engine = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "rules", "--config", str(ctx.config.rules_file)],
        stdout=(tmp_path / "rules.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        pub(
            mosquitto,
            p.telemetry_topic("s1", "mon"),
            p.Telemetry(ts=int(time.time() * 1000), seq=1, values={"pm10": 40.0}),
        )
        with (
            Served(app) as srv,
            httpx.Client(base_url=srv.url, timeout=15, follow_redirects=True) as client,
        ):
            csrf = http_login(client, "otto")
            deadline = time.monotonic() + 20
            while True:  # the engine subscribes a moment after it starts
                r = client.post(
                    "/site/s1/override",
                    data={
                        "csrf": csrf,
                        "actuator": "cannon-1",
                        "mode": "on",
                        "for": "10m",
                        "reason": "<b>dust</b> test",
                    },
                )
                assert r.status_code == 200  # followed to the site page
                if "Override applied" in r.text or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert "Override applied by the rule engine." in r.text, (
                tmp_path / "rules.log"
            ).read_text()[-2000:]
            assert "<b>dust</b>" not in r.text
            entries = [e for e in ctx.store.audit_entries("site:s1") if e.action == "override"]
            assert entries[0].user == "otto" and entries[0].detail.startswith("on for 10m")
            assert "<b>otto</b> s1/cannon-1: on for 10m" in client.get("/site/s1").text
            # a bad request never reaches the broker
            r = client.post(
                "/site/s1/override", data={"csrf": csrf, "actuator": "Cannon<1>", "mode": "on"}
            )
            assert r.status_code == 400 and "Cannon&lt;1&gt;" in r.text
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(15)


def test_broker_away_is_said_and_the_board_keeps_what_it_has(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    _ctx, app = make(tmp_path, mosquitto)
    with (
        Served(app) as srv,
        httpx.Client(base_url=srv.url, timeout=10, follow_redirects=True) as client,
    ):
        http_login(client, "otto")
        pub(
            mosquitto,
            p.telemetry_topic("s1", "mon"),
            p.Telemetry(ts=int(time.time() * 1000), seq=1, values={"pm10": 99.0}),
        )
        deadline = time.monotonic() + 10
        while '<td class="val">99</td>' not in client.get("/").text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        mosquitto.stop()
        deadline = time.monotonic() + 10
        while "broker away" not in (page := client.get("/").text):
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert '<td class="val">99</td>' in page
        csrf = http_login(client, "otto")
        r = client.post(
            "/site/s1/override",
            data={"csrf": csrf, "actuator": "cannon-1", "mode": "off", "for": "5m"},
        )
        assert (
            r.status_code == 200 and "not confirmed" in r.text
        )  # refused politely, console lives on
        assert client.get("/site/s1").status_code == 200


def test_incident_service_in_the_console_counts_each_reading_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    from rules.incidents.pages import service_of

    ctx, app = make(tmp_path, mosquitto)
    with (
        Served(app) as srv,
        httpx.Client(base_url=srv.url, timeout=10, follow_redirects=True) as client,
    ):
        http_login(client, "otto")
        svc = service_of(ctx)
        deadline = time.monotonic() + 10
        while not (svc.connected.is_set() and ctx.mqtt is not None and ctx.mqtt.connected.is_set()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = int(time.time() * 1000)
        for i in range(20):
            pub(
                mosquitto,
                p.telemetry_topic("s1", "mon"),
                p.Telemetry(ts=t0 + i, seq=i, values={"pm10": 40.0}),
            )
        while '<td class="val">40</td>' not in client.get("/").text:
            assert time.monotonic() < deadline + 10
            time.sleep(0.1)
        time.sleep(0.5)  # a second subscription would deliver its copies meanwhile
        counted = sum(svc.deriver._devices[("s1", "mon")].per_minute.values())
        assert counted == 20  # through the console's link, not decoded on a second connection
        assert ctx.mqtt.telemetry_taps == [svc.deriver.telemetry]
