"""A site's page: live card, PM10/PM2.5 history with thresholds and spray periods,
events, rules, and the manual override (operators)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiomqtt
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import protocol as p
from gateway.configfile import parse_duration
from rules.console import history
from rules.console.auth import Role
from rules.console.charts import HLine, Line, line_chart
from rules.console.pages.board import render_card
from rules.console.web import Auth, Ctx, action, field_text, read_form, render, view

HOURS = (1, 6, 24, 72, 168)
MAX_OVERRIDE_S = 86400.0
NAV: list[Any] = []


def _site_or_404(auth: Auth, site: str) -> bool:
    return site in auth.ctx.live.sites


@view(Role.VIEWER)
async def site_page(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    site = request.path_params["site"]
    if not _site_or_404(auth, site):
        return render(request, auth, "error.html", {"title": "No such site", "message": site}, 404)
    try:
        hours = int(request.query_params.get("hours", "24"))
    except ValueError:
        hours = 24
    if hours not in HOURS:
        hours = 24
    now = ctx.clock()
    start = now - hours * 3600
    view_ = ctx.live.site_view(site, now)
    gov = ctx.live.governing.get(site, {})
    charts = []
    stored: list[history.StoredEvent] = []
    influx_error = ""
    if ctx.config.influx is None:
        influx_error = "no influx: in console.yaml; history is not shown"
    else:
        cfg = ctx.config.influx
        try:
            data, bands, stored = await asyncio.gather(
                asyncio.to_thread(history.series, cfg, site, ["pm10", "pm25"], start, now),
                asyncio.to_thread(history.spray_periods, cfg, site, start, now),
                asyncio.to_thread(history.events, cfg, site, start),
            )
            for metric, label in (("pm10", "PM10"), ("pm25", "PM2.5")):
                g = gov.get(metric)
                hl = []
                if g is not None:
                    hl = [HLine(g.threshold, "ON", "on"), HLine(g.clear, "clear", "clear")]
                charts.append(
                    line_chart(
                        [Line(f"{label} µg/m³", metric, data[metric])],
                        start,
                        now,
                        hl,
                        [(a, b) for a, b, _ in bands],
                        title=f"{label}, last {hours} h"
                        + (f" — rule {g.rule}" if g is not None else ""),
                    )
                )
        except history.HistoryError as exc:
            influx_error = str(exc)
    rules = ctx.live.site_rules.get(site, [])
    return render(
        request,
        auth,
        "site.html",
        {
            "title": f"Site {site}",
            "site": site,
            "card": render_card(ctx, site),
            "v": view_,
            "hours": hours,
            "hours_choices": HOURS,
            "charts": charts,
            "influx_error": influx_error,
            "live_events": ctx.live.events(site),
            "stored_events": stored,
            "rules": rules,
            "actuators": [a.id for a in view_.actuators],
            "done": request.query_params.get("done", ""),
            "overrides": [
                a for a in ctx.store.audit_entries(f"site:{site}/", 20) if a.action == "override"
            ],
        },
    )


@action(Role.OPERATOR)
async def override(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    site = request.path_params["site"]
    form = await read_form(request)
    actuator = field_text(form, "actuator", 64)
    mode = field_text(form, "mode", 8)
    for_text = field_text(form, "for", 20) or "30m"
    reason = field_text(form, "reason", 200)
    problems = []
    try:
        p.check_id(site, "site")
        p.check_id(actuator, "actuator")
    except p.ProtocolError as exc:
        problems.append(str(exc))
    if mode not in ("on", "off", "auto"):
        problems.append("mode must be on, off or auto")
    for_s: float | None = None
    if mode in ("on", "off"):
        try:
            for_s = float(parse_duration(for_text))
        except ValueError as exc:
            problems.append(f"for: {exc}")
        else:
            if not 0 < for_s <= MAX_OVERRIDE_S:
                problems.append("for: more than 0 and at most 24h")
    if problems:
        return render(
            request,
            auth,
            "error.html",
            {"title": "Override not sent", "message": "; ".join(problems)},
            400,
        )
    req = p.OverrideRequest(
        id=f"ovr-{secrets.token_hex(6)}",
        mode=mode,  # type: ignore[arg-type]
        for_s=for_s,
        who=f"console:{auth.user}"[:64],
        ts=p.now_ms(ctx.clock()),
        reason=reason,
    )
    if ctx.mqtt is None:
        answer_text = "broker link is off"
        answer = None
    else:
        try:
            answer = await ctx.mqtt.override(site, actuator, req)
            answer_text = answer.text if answer is not None else "no answer from the rule engine"
        except aiomqtt.MqttError as exc:
            answer = None
            answer_text = f"broker away: {exc}"
    ctx.store.audit(
        ctx.clock(),
        auth.user,
        "override",
        f"site:{site}/{actuator}",
        f"{mode} for {for_text if for_s else '-'}: {answer_text}",
    )
    done = "applied" if answer is not None and answer.kind == "override" else "not-applied"
    return RedirectResponse(f"/site/{site}?done={done}", status_code=303)


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [
        Route("/site/{site}", site_page),
        Route("/site/{site}/override", override, methods=["POST"]),
    ]
