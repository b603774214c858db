"""The incidents' pages in the console: list, incident page, ranking, board badges.

Mounted by the console (:data:`rules.console.app.PAGE_MODULES`); the service
(:class:`~rules.incidents.service.IncidentService`) runs inside the console
(:func:`background`) on the console's database and MQTT settings, with the
``incidents:`` section of console.yaml.

- ``GET /incidents``: unresolved first (``?all=1``: the last 500), per site
  (``?site=``); overdue ones highlighted. Inspector or above.
- ``GET /incidents/{id}``: the incident, its history (who, when), notes (shown
  as text: markup is inert), its notifications and their outcome; forms to
  acknowledge, add a note and resolve, each carrying the version the page
  showed: if another inspector acted meanwhile the action is refused (409) and
  the page shows what they did.
- ``POST /incidents/{id}/acknowledge|note|resolve``: inspector or above, CSRF.
- ``GET /incidents/ranking``: per site incidents, overdue, median/p90 minutes to
  acknowledge and to resolve, hours over the limit (``?days=7`` by default).
- The board: a site with unresolved incidents gets a badge linking to them,
  red when one is overdue, updated live when an incident changes; the site
  page lists the site's last ten incidents.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rules.console.auth import Role
from rules.console.web import Auth, Ctx, NavItem, action, field_text, read_form, render, view
from rules.core.config import load_rules_file
from rules.incidents.machine import CAUSE_TEXT, ActionError, Conflict, Incident
from rules.incidents.service import IncidentService
from rules.incidents.settings import IncidentsSettings
from rules.incidents.store import MIGRATIONS as STORE_MIGRATIONS
from rules.incidents.store import IncidentStore
from rules.sink.settings import InfluxSettings
from rules.sink.writer import InfluxSink

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
NAV = [
    NavItem("Incidents", "/incidents", Role.INSPECTOR),
    NavItem("Ranking", "/incidents/ranking", Role.VIEWER),
]
MIGRATIONS = [("incidents", list(STORE_MIGRATIONS))]
KEY = "incidents"
RANGE_DAYS = (1, 7, 14, 30)


@dataclass(frozen=True, slots=True)
class Badge:
    cls: str
    text: str
    href: str


def service_of(ctx: Ctx) -> IncidentService:
    """The console's incident service, made on first use (one per console)."""
    svc = ctx.extra.get(KEY)
    if isinstance(svc, IncidentService):
        return svc
    settings = ctx.config.incidents or IncidentsSettings()
    if "base_url" not in settings.model_fields_set:  # links point at this console
        c = ctx.config.console
        scheme = "https" if c.tls_cert_file is not None else "http"
        settings = settings.model_copy(update={"base_url": f"{scheme}://{c.listen}:{c.port}"})
    try:
        rules = load_rules_file(ctx.config.rules_file)
    except Exception as exc:  # the board runs without it too; unsprayed then judged without
        log.warning("incidents: rules file not read (%s); every rule taken as leasing", exc)
        rules = None
    svc = IncidentService(
        settings,
        IncidentStore(ctx.config.store),
        rules=rules,
        rules_path=ctx.config.rules_file,
        clock=ctx.clock,
        sink=None,
    )
    ctx.extra[KEY] = svc

    def changed(site: str) -> None:
        if ctx.hub is not None:
            ctx.hub.changed(site)

    svc.listeners.append(changed)
    return svc


def card_badges(ctx: Ctx, site: str) -> list[Badge]:
    n, late = service_of(ctx).unresolved_by_site().get(site, (0, 0))
    if not n:
        return []
    href = f"/incidents?site={site}"
    if late:
        return [Badge("incident overdue", f"{late} overdue incident{'s' * (late > 1)}", href)]
    return [Badge("incident", f"{n} open incident{'s' * (n > 1)}", href)]


async def background(ctx: Ctx, stop: asyncio.Event, mqtt: bool) -> None:
    """Run the incident service for the console's lifetime (with the broker when the
    console has its MQTT link on; else only the clock and the notifications)."""
    svc = service_of(ctx)
    sink = _sink(ctx) if svc.sink is None else None
    if sink is not None:
        await sink.start()
        svc.sink = sink
    try:
        if mqtt:
            mq = ctx.config.mqtt
            client_id = (mq.client_id or "dustgate-console")[:50] + "-incidents"
            link = ctx.mqtt  # the console's own link reads the telemetry: decoded once
            if link is not None:
                link.telemetry_taps.append(svc.deriver.telemetry)
            settings = mq.model_copy(update={"client_id": client_id})
            await svc.run(settings, stop, telemetry=link is None)
        else:
            await svc.run_offline(stop)
    finally:
        if sink is not None:
            await sink.close()
            svc.sink = None
        if ctx.extra.get(KEY) is svc:  # the app is stopping: the next start makes a new one
            del ctx.extra[KEY]
            svc.store.close()


def _sink(ctx: Ctx) -> InfluxSink | None:
    """The incident measurement goes to the console's InfluxDB (spooled beside its store)."""
    cfg = ctx.config.influx
    if cfg is None:
        return None
    settings = InfluxSettings(
        url=cfg.url, database=cfg.database, username=cfg.username, password=cfg.password
    )
    return InfluxSink(settings, ctx.config.store.parent / "incident-sink")


# ----------------------------------------------------------------- pages


def _incident_or_none(request: Request, svc: IncidentService) -> Incident | None:
    try:
        incident_id = int(request.path_params["incident_id"])
    except (KeyError, ValueError):
        return None
    return svc.store.incident(incident_id)


@view(Role.INSPECTOR)
async def incident_list(request: Request, auth: Auth) -> Response:
    svc = service_of(auth.ctx)
    site = request.query_params.get("site") or None
    everything = request.query_params.get("all") == "1"
    items = svc.store.incidents(site=site, unresolved=None if everything else True)
    return render(
        request,
        auth,
        "incidents.html",
        {
            "title": "Incidents",
            "items": items,
            "site": site,
            "everything": everything,
            "causes": CAUSE_TEXT,
            "counts": {
                **{f"notifications {k}": v for k, v in sorted(svc.dispatcher.counters.items())},
                **{k.replace("_", " "): v for k, v in sorted(svc.counters.items())},
                **{k.replace("_", " "): v for k, v in sorted(svc.book.counters.items())},
            },
        },
    )


def _incident_page(
    request: Request, auth: Auth, inc: Incident, message: str = "", status: int = 200
) -> Response:
    svc = service_of(auth.ctx)
    return render(
        request,
        auth,
        "incident.html",
        {
            "title": f"Incident #{inc.id}",
            "inc": inc,
            "cause_text": CAUSE_TEXT.get(inc.cause, inc.cause),
            "log": svc.store.log(inc.id),
            "notifications": svc.store.notifications(inc.id),
            "message": message,
            "can_act": auth.can(Role.INSPECTOR) and inc.unresolved,
        },
        status_code=status,
    )


@view(Role.INSPECTOR)
async def incident_page(request: Request, auth: Auth) -> Response:
    inc = _incident_or_none(request, service_of(auth.ctx))
    if inc is None:
        return render(
            request, auth, "error.html", {"title": "No such incident", "message": ""}, 404
        )
    return _incident_page(request, auth, inc)


async def _act(request: Request, auth: Auth, what: str) -> Response:
    svc = service_of(auth.ctx)
    inc = _incident_or_none(request, svc)
    if inc is None:
        return render(
            request, auth, "error.html", {"title": "No such incident", "message": ""}, 404
        )
    form = await read_form(request)
    try:
        version = int(field_text(form, "version", 12))
    except ValueError:
        return _incident_page(request, auth, inc, "The form carried no valid version.", 400)
    text = field_text(form, "text", 4000)
    try:
        if what == "acknowledge":
            svc.acknowledge(inc.id, auth.user, version)
        elif what == "note":
            svc.note(inc.id, auth.user, text, version)
        else:
            svc.resolve(inc.id, auth.user, version, text)
    except Conflict as exc:
        current = exc.current
        who = current.resolved_by or current.acked_by or "someone"
        msg = (
            f"Not done: the incident changed after you opened the page"
            f" (now {current.status}, last by {who}). Here it is as it is now."
        )
        return _incident_page(request, auth, current, msg, 409)
    except ActionError as exc:
        current = svc.store.incident(inc.id) or inc
        return _incident_page(request, auth, current, f"Not done: {exc}", 400)
    auth.ctx.store.audit(
        auth.ctx.clock(), auth.user, f"incident_{what}", f"incident:{inc.id}", text
    )
    return RedirectResponse(f"/incidents/{inc.id}", status_code=303)


@action(Role.INSPECTOR)
async def acknowledge(request: Request, auth: Auth) -> Response:
    return await _act(request, auth, "acknowledge")


@action(Role.INSPECTOR)
async def note(request: Request, auth: Auth) -> Response:
    return await _act(request, auth, "note")


@action(Role.INSPECTOR)
async def resolve(request: Request, auth: Auth) -> Response:
    return await _act(request, auth, "resolve")


@view(Role.VIEWER)
async def ranking(request: Request, auth: Auth) -> Response:
    svc = service_of(auth.ctx)
    try:
        days = int(request.query_params.get("days", "7"))
    except ValueError:
        days = 7
    if days not in RANGE_DAYS:
        days = 7
    end = auth.ctx.clock()
    rows = svc.figures(end - days * 86400, end + 1)
    rows.sort(key=lambda r: (-r.overdue, -r.incidents, r.site))
    return render(
        request,
        auth,
        "incident_ranking.html",
        {
            "title": "Ranking",
            "rows": rows,
            "days": days,
            "choices": RANGE_DAYS,
            "start": end - days * 86400,
            "end": end,
        },
    )


def routes(ctx: Ctx) -> list[BaseRoute]:
    env = ctx.templates.env
    ours = jinja2.FileSystemLoader(str(HERE / "templates"))
    if env.loader is not None and not getattr(env, "_incident_templates", False):
        env.loader = jinja2.ChoiceLoader([env.loader, ours])
        env._incident_templates = True  # type: ignore[attr-defined]
    env.globals["card_badges"] = lambda site: card_badges(ctx, site)
    env.globals["site_incidents"] = lambda site: service_of(ctx).store.incidents(
        site=site, limit=10
    )
    return [
        Route("/incidents", incident_list),
        Route("/incidents/ranking", ranking),
        Route("/incidents/{incident_id:int}", incident_page),
        Route("/incidents/{incident_id:int}/acknowledge", acknowledge, methods=["POST"]),
        Route("/incidents/{incident_id:int}/note", note, methods=["POST"]),
        Route("/incidents/{incident_id:int}/resolve", resolve, methods=["POST"]),
    ]
