"""The board: every site on one page, kept live over server-sent events (``/live``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from rules.console.auth import Role
from rules.console.live import BOARD_METRICS, METRIC_LABELS
from rules.console.web import Auth, Ctx, NavItem, render, view

NAV = [NavItem("Board", "/")]


def render_card(ctx: Ctx, site: str) -> str:
    """One site's card as HTML (the board and the live feed use the same template)."""
    now = ctx.clock()
    tpl = ctx.templates.env.get_template("_site_card.html")
    return tpl.render(v=ctx.live.site_view(site, now), now=now)


@view(Role.VIEWER)
async def board(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    now = ctx.clock()
    views = [ctx.live.site_view(s, now) for s in ctx.live.site_ids()]
    counts: dict[str, int] = {}
    for v in views:
        counts[v.state] = counts.get(v.state, 0) + 1
    return render(
        request,
        auth,
        "board.html",
        {
            "title": "Board",
            "views": views,
            "counts": counts,
            "metrics": [METRIC_LABELS[m] for m in BOARD_METRICS],
            "reload": ctx.live.last_reload(),
        },
    )


@view(Role.VIEWER)
async def live(request: Request, auth: Auth) -> Response:
    hub = auth.ctx.hub
    if hub is None:
        return Response("live updates are off", status_code=503)
    site = request.query_params.get("site") or None
    return StreamingResponse(
        hub.stream(site),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [Route("/", board), Route("/live", live)]
