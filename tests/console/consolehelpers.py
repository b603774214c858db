"""Shared by the console tests: a console.yaml in a temp dir, users, a signed-in client."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway import protocol as p
from rules.console.app import create_app, make_ctx
from rules.console.auth import hash_password
from rules.console.config import load_console_file
from rules.console.web import Ctx

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
_HASH = hash_password(PASSWORD)  # one hash for every test user: argon2 is slow on purpose


def write_console(tmp: Path, extra: str = "", rules_text: str | None = None) -> Path:
    rules = tmp / "rules.yaml"
    if rules_text is None:
        shutil.copy(ROOT / "examples" / "rules.yaml", rules)
    else:
        rules.write_text(rules_text)
    cfg = tmp / "console.yaml"
    cfg.write_text(
        "console: {listen: 127.0.0.1, port: 8480}\n"
        "rules_file: rules.yaml\n"
        "store: console.db\n" + extra
    )
    return cfg


def make_console(tmp: Path, **kw: Any) -> tuple[Ctx, TestClient]:
    cfg = load_console_file(write_console(tmp, **kw))
    ctx = make_ctx(cfg)
    for name, role in (
        ("vera", "viewer"),
        ("ines", "inspector"),
        ("otto", "operator"),
        ("ada", "admin"),
    ):
        ctx.store.add_user(name, role, _HASH, time.time())
    app = create_app(ctx, mqtt=False)
    return ctx, TestClient(app, base_url="http://127.0.0.1")


def login(client: TestClient, user: str, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    return client.post(
        "/login",
        data={"username": user, "password": password, "login_token": token.group(1), "next": "/"},
        follow_redirects=False,
    )


def csrf_of(client: TestClient, path: str = "/") -> str:
    page = client.get(path)
    m = re.search(r'data-csrf="([^"]*)"', page.text)
    assert m is not None and m.group(1), page.text[:300]
    return m.group(1)


def feed(ctx: Ctx, topic: str, payload: p.Payload, now: float | None = None) -> None:
    ctx.live.on_message(topic, p.encode(payload), time.time() if now is None else now)


def week_lines(site: str, device: str, end: float, step_s: int = 60, days: int = 7) -> str:
    """A week of PM10/PM2.5 as the sink stores it: 60-100 most of the time, a 30-minute
    rise to ~135 four times a day and to ~210 once a day (so a threshold of 150 is
    crossed daily and one of 120 four times as often); mild weather (15 C, 2 m/s), so
    no frost or wind interlock holds."""
    from rules.sink.points import telemetry_line

    lines = []
    start = int(end - days * 86400) // step_s * step_s
    for i, ts in enumerate(range(start, int(end), step_s)):
        minute_of_day = (ts // 60) % 1440
        pm10 = 70.0 + 20.0 * ((i * 7919) % 100) / 100.0
        if minute_of_day % 360 < 30:
            pm10 = 135.0
        if 600 <= minute_of_day < 630:
            pm10 = 210.0
        values = {"pm10": pm10, "pm25": pm10 * 0.45, "temp": 15.0, "wind_speed": 2.0}
        msg = p.Telemetry(ts=ts * 1000, seq=i, values=values)
        line = telemetry_line(site, device, msg)
        assert line is not None
        lines.append(line)
    return "\n".join(lines) + "\n"


class Served:
    """The console app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import threading

        import uvicorn

        from gateway.localservices import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("console did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def http_login(client: Any, user: str, password: str = PASSWORD) -> str:
    """Sign an httpx client in; returns the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post(
        "/login",
        data={"username": user, "password": password, "login_token": token.group(1), "next": "/"},
        follow_redirects=True,
    )
    m = re.search(r'data-csrf="([^"]+)"', r.text)
    assert m is not None, r.text[:300]
    return m.group(1)
