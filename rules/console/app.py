"""The console's Starlette application: middleware, the routes of every page module,
and the background tasks (MQTT link, live feed, rules-file watch).

:data:`PAGE_MODULES` lists the modules whose ``routes(ctx)`` are mounted, in
order; a module may also have ``NAV`` (menu entries), ``MIGRATIONS`` (its
SQLite tables, ``(component, [sql, ...])``, applied at start) and
``background(ctx, stop, mqtt)`` (a coroutine run while the app runs). Another
package adds its pages by appending its module here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.configfile import ConfigError
from rules.console.auth import Throttle
from rules.console.config import ConsoleFile
from rules.console.live import Live
from rules.console.mqttlink import MqttLink
from rules.console.sse import Hub
from rules.console.store import Store
from rules.console.web import HERE, Ctx, make_templates
from rules.core.config import load_rules_file

log = logging.getLogger(__name__)

PAGE_MODULES: list[str] = [
    "rules.console.pages.auth",
    "rules.console.pages.board",
    "rules.console.pages.site",
    "rules.console.pages.thresholds",
    "rules.console.pages.users",
    "rules.incidents.pages",
]
RULES_POLL_S = 2.0

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


class Limits:
    """Pure ASGI middleware: body size limit (413), security headers and a Server-Timing
    header (time until the answer starts) on every answer."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(send)
            return
        seen = 0
        started = False
        t0 = time.perf_counter()

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        async def secured_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                    # time to the first byte of the answer (benchmarks, browser dev tools)
                    (b"server-timing", b"app;dur=%.2f" % ((time.perf_counter() - t0) * 1000)),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send) -> None:
    body = b"request body too large"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_ctx(config: ConsoleFile, clock: Callable[[], float] | None = None) -> Ctx:
    store = Store(config.store)
    live = Live(config.console.stale_after)
    live.order = list(config.sites) if config.sites else None
    ctx = Ctx(
        config=config,
        store=store,
        live=live,
        templates=make_templates(),
        throttle=Throttle(),
        clock=clock or time.time,
    )
    for name in PAGE_MODULES:
        mod = importlib.import_module(name)
        for component, migrations in getattr(mod, "MIGRATIONS", ()):
            store.migrate(component, migrations)
        ctx.nav.extend(getattr(mod, "NAV", []))
    load_rules(ctx)
    return ctx


def load_rules(ctx: Ctx, text: str | None = None) -> str | None:
    """Read the rules file into the board (and keep it as a version); its text, or None
    if it cannot be read or is invalid (the board keeps the rules it had)."""
    path = ctx.config.rules_file
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
        rf = load_rules_file(path, text=text)
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read rules file %s: %s", path, exc)
        return None
    except ConfigError as exc:
        log.warning("rules file %s has errors; board keeps its rules:\n%s", path, exc)
        if text is not None:
            ctx.store.record_version(text, "disk", "seen on disk (invalid)", ctx.clock())
        return None
    ctx.live.set_rules(rf)
    ctx.extra["rules_sha"] = ctx.store.record_version(text, "disk", "seen on disk", ctx.clock()).sha
    return text


async def _watch_rules(ctx: Ctx) -> None:
    path: Path = ctx.config.rules_file
    last: tuple[int, int] | None = None
    while True:
        await asyncio.sleep(RULES_POLL_S)
        try:
            st = path.stat()
        except OSError:
            continue
        sig = (st.st_mtime_ns, st.st_size)
        if sig != last:
            if last is not None:
                load_rules(ctx)
                if ctx.hub is not None:
                    for site in ctx.live.sites:
                        ctx.hub.changed(site)
            last = sig


def create_app(ctx: Ctx, mqtt: bool = True) -> Starlette:
    from rules.console.pages.board import render_card

    routes: list[BaseRoute] = []
    for name in PAGE_MODULES:
        routes.extend(importlib.import_module(name).routes(ctx))
    routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub = Hub(lambda site: render_card(ctx, site))
        ctx.hub = hub
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(hub.run()),
            asyncio.create_task(_watch_rules(ctx)),
        ]
        if mqtt:

            def on_event(site: str, event: Any) -> None:
                tpl = ctx.templates.env.get_template("_event.html")
                html = tpl.render(e=event)
                hub.publish("event", {"site": site, "kind": event.kind, "html": html}, site)
                if event.kind in ("reload", "reload_error"):
                    hub.publish("reload", {"site": site, "kind": event.kind, "html": html})

            link = MqttLink(ctx.config.mqtt, ctx.live, ctx.clock, hub.changed, on_event)
            ctx.mqtt = link
            tasks.append(asyncio.create_task(link.run(stop)))
        for name in PAGE_MODULES:
            background = getattr(importlib.import_module(name), "background", None)
            if background is not None:
                tasks.append(asyncio.create_task(background(ctx, stop, mqtt)))
        try:
            yield
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Limits, max_body=ctx.config.console.max_body_bytes)],
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    return app
