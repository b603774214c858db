"""Sign in and out.

The login form carries a token that must match a short-lived cookie
(double submit), so another site cannot sign a browser in under its own
account. Failed logins are throttled per user name and per client address
(:class:`rules.console.auth.Throttle`); an unknown user costs the same hash
verification as a known one.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rules.console.auth import DUMMY_HASH, Role, verify_password
from rules.console.web import COOKIE, Auth, Ctx, NavItem, action, field_text, read_form, render

LOGIN_COOKIE = "dg_login"
NAV: list[NavItem] = []


def _safe_next(target: str) -> str:
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target[:500]
    return "/"


def _login_page(request: Request, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    nxt = _safe_next(request.query_params.get("next", "/"))
    resp = render(
        request,
        None,
        "login.html",
        {"title": "Sign in", "error": error, "login_token": token, "next": nxt},
        status_code=status,
    )
    ctx = request.app.state.ctx
    resp.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=1800,
        httponly=True,
        samesite="strict",
        secure=ctx.config.console.cookies_secure,
    )
    return resp


async def login_form(request: Request) -> Response:
    return _login_page(request)


async def login(request: Request) -> Response:
    ctx: Ctx = request.app.state.ctx
    form = await read_form(request)
    token = field_text(form, "login_token", 100)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not token or not hmac.compare_digest(token.encode(), cookie.encode()):
        return _login_page(request, "The form expired; please sign in again.", 403)
    name = field_text(form, "username", 64).lower()
    password = form.get("password")
    password = password if isinstance(password, str) else ""
    now = ctx.clock()
    client = request.client.host if request.client else "?"
    keys = [f"user:{name}", f"ip:{client}"]
    wait = ctx.throttle.retry_after(keys, now)
    if wait > 0:
        return _login_page(
            request, f"Too many failed sign-ins; try again in {wait:.0f} s.", status=429
        )
    user = ctx.store.user(name) if name else None
    ok = verify_password(user.pw_hash if user else DUMMY_HASH, password)
    if not ok or user is None or user.disabled:
        ctx.throttle.failed(keys, now)
        ctx.store.audit(now, name or "?", "login_failed", f"user:{name}", f"from {client}")
        return _login_page(request, "Wrong user name or password.", 401)
    ctx.throttle.succeeded(f"user:{name}")
    session_token, _csrf = ctx.store.create_session(user.name, now)
    ctx.store.audit(now, user.name, "login", f"user:{user.name}", f"from {client}")
    nxt = _safe_next(field_text(form, "next", 500) or "/")
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(
        COOKIE,
        session_token,
        max_age=int(ctx.config.console.session_max),
        httponly=True,
        samesite="strict",
        secure=ctx.config.console.cookies_secure,
    )
    resp.delete_cookie(LOGIN_COOKIE)
    return resp


@action(Role.VIEWER)
async def logout(request: Request, auth: Auth) -> Response:
    token = request.cookies.get(COOKIE, "")
    auth.ctx.store.end_session(token)
    auth.ctx.store.audit(auth.ctx.clock(), auth.user, "logout", f"user:{auth.user}")
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
