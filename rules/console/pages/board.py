"""The board: every site on one page, kept live over server-sent events (``/live``)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from rules.console.auth import Role
from rules.console.live import BOARD_METRICS, METRIC_LABELS
from rules.console.web import Auth, Ctx, NavItem, ctx_of, current_session, render, view

NAV = [NavItem("Board", "/")]
SESSION_RECHECK_S = 10.0
# ?order=worst: what needs someone first
WORST_FIRST = ("over", "interlocked", "spraying", "pending", "offline", "stale", "ok")


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
    worst_first = request.query_params.get("order") == "worst"
    if worst_first:  # stable: the configured order within a state
        views.sort(key=lambda v: WORST_FIRST.index(v.state))
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
            "worst_first": worst_first,
        },
    )


@view(Role.VIEWER)
async def live(request: Request, auth: Auth) -> Response:
    hub = auth.ctx.hub
    if hub is None:
        return Response("live updates are off", status_code=503)
    site = request.query_params.get("site") or None
    return StreamingResponse(
        hub.stream(site, session_check(request)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def session_check(request: Request, every: float = SESSION_RECHECK_S) -> Callable[[], bool]:
    """Is the session that opened this stream still alive? Asked at most every ``every``
    seconds (a store query), so a page left open stops getting data soon after its user
    signs out, is disabled or the session expires."""
    ctx = ctx_of(request)
    checked = [ctx.clock()]

    def still_valid() -> bool:
        now = ctx.clock()
        if now - checked[0] < every:
            return True
        checked[0] = now
        return current_session(request) is not None

    return still_valid


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [Route("/", board), Route("/live", live)]
