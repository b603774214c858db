"""The request side shared by every page: context, sessions, CSRF, role checks, templates.

A page module (``rules/console/pages/*.py``, or another package's) writes
handlers as ``async def handler(request, auth) -> Response`` and wraps them:

- :func:`view` (GET): needs a session with at least ``role``; without one the
  browser is sent to the login page, with a lower role it gets 403.
- :func:`action` (POST and other writes): needs a session (else 401), the role
  (else 403) and the session's CSRF token in the form field ``csrf`` or the
  ``X-CSRF-Token`` header (else 403). Every write goes through it.

Sessions are server-side (:class:`rules.console.store.Store`): the cookie
holds a random token (HttpOnly, SameSite=Strict, Secure when configured), the
store its digest, the session's CSRF token and its times.

Templates are Jinja2 with autoescaping on for every file, so ids, names and
notes with markup are shown as text. :func:`render` adds what the base
template needs (user, navigation, CSRF token).
"""

from __future__ import annotations

import functools
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from rules.console.auth import Role, Throttle
from rules.console.config import ConsoleFile
from rules.console.live import Live
from rules.console.store import Session, Store

if TYPE_CHECKING:
    from rules.console.mqttlink import MqttLink
    from rules.console.sse import Hub

COOKIE = "dg_session"
HERE = Path(__file__).parent
TEMPLATE_DIRS: list[Path] = [HERE / "templates"]


@dataclass
class NavItem:
    label: str
    path: str
    role: Role = Role.VIEWER


@dataclass
class Ctx:
    """Everything a handler may need; one per running console."""

    config: ConsoleFile
    store: Store
    live: Live
    templates: Jinja2Templates
    throttle: Throttle = field(default_factory=Throttle)
    clock: Callable[[], float] = time.time
    hub: Hub | None = None
    mqtt: MqttLink | None = None
    nav: list[NavItem] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # for other packages' state


@dataclass(frozen=True, slots=True)
class Auth:
    ctx: Ctx
    session: Session

    @property
    def user(self) -> str:
        return self.session.user.name

    @property
    def role(self) -> Role:
        return Role.parse(self.session.user.role)

    def can(self, role: Role) -> bool:
        return self.role >= role


Handler = Callable[[Request, Auth], Awaitable[Response]]


def make_templates(dirs: list[Path] | None = None) -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in (dirs or TEMPLATE_DIRS)]),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["hhmm"] = _hhmm
    env.filters["num"] = _num
    env.filters["dur"] = _dur
    return Jinja2Templates(env=env)


def ctx_of(request: Request) -> Ctx:
    ctx: Ctx = request.app.state.ctx
    return ctx


def current_session(request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 200:
        return None
    ctx = ctx_of(request)
    c = ctx.config.console
    return ctx.store.session(token, ctx.clock(), c.session_idle, c.session_max)


def view(role: Role = Role.VIEWER) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            session = current_session(request)
            if session is None:
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            auth = Auth(ctx_of(request), session)
            if not auth.can(role):
                return forbidden(request, auth, role)
            return await fn(request, auth)

        return handler

    return wrap


def action(
    role: Role = Role.OPERATOR,
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A write endpoint: session (401), role (403), CSRF (403), then the handler."""

    def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(fn)
        async def handler(request: Request) -> Response:
            session = current_session(request)
            if session is None:
                return PlainTextResponse("not signed in", status_code=401)
            auth = Auth(ctx_of(request), session)
            if not auth.can(role):
                return PlainTextResponse(
                    f"your role ({auth.role.label}) may not do this: needs {role.label}",
                    status_code=403,
                )
            token = request.headers.get("x-csrf-token")
            if token is None:
                form = await read_form(request)
                value = form.get("csrf")
                token = value if isinstance(value, str) else None
            if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                return PlainTextResponse("missing or wrong CSRF token", status_code=403)
            return await fn(request, auth)

        return handler

    return wrap


async def read_form(request: Request) -> FormData:
    """The request's form (parsed once; bounded: no files, at most 200 fields)."""
    form: FormData = await request.form(max_files=0, max_fields=200, max_part_size=64 * 1024)
    return form


def field_text(form: FormData, name: str, max_len: int = 1000) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value.strip()[:max_len]


def forbidden(request: Request, auth: Auth, role: Role) -> Response:
    return render(
        request,
        auth,
        "error.html",
        {"title": "Not allowed", "message": f"This needs the {role.label} role."},
        status_code=403,
    )


def render(
    request: Request,
    auth: Auth | None,
    template: str,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    ctx = ctx_of(request)
    base = {
        "title": "",
        "console_title": ctx.config.console.title,
        "user": auth.user if auth else None,
        "role": auth.role.label if auth else None,
        "csrf": auth.session.csrf if auth else "",
        "nav": [n for n in ctx.nav if auth is not None and auth.can(n.role)],
        "now": ctx.clock(),
        "broker": ctx.mqtt.status() if ctx.mqtt is not None else None,
        "Role": Role,
        "can_operate": auth is not None and auth.can(Role.OPERATOR),
        "can_admin": auth is not None and auth.can(Role.ADMIN),
    }
    base.update(context or {})
    return ctx.templates.TemplateResponse(request, template, base, status_code=status_code)


# ------------------------------------------------------------------ filters


def _ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    age = (now if now is not None else time.time()) - ts
    if age < 0:
        age = 0
    if age < 90:
        return f"{age:.0f}s ago"
    if age < 5400:
        return f"{age / 60:.0f} min ago"
    if age < 172800:
        return f"{age / 3600:.1f} h ago"
    return f"{age / 86400:.0f} d ago"


def _hhmm(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
