"""Users (admins): list, add or reset, change role, disable."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rules.console.auth import ROLE_NAMES, Role, check_username, hash_password
from rules.console.web import Auth, Ctx, NavItem, action, field_text, read_form, render, view

NAV = [NavItem("Users", "/users", Role.ADMIN)]


@view(Role.ADMIN)
async def users(request: Request, auth: Auth, error: str = "") -> Response:
    return render(
        request,
        auth,
        "users.html",
        {
            "title": "Users",
            "users": auth.ctx.store.users(),
            "roles": ROLE_NAMES,
            "error": error,
            "audit": auth.ctx.store.audit_entries("user:", 30),
        },
    )


@action(Role.ADMIN)
async def save_user(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    form = await read_form(request)
    name = field_text(form, "username", 64).lower()
    role_text = field_text(form, "role", 20)
    password = form.get("password")
    password = password if isinstance(password, str) else ""
    disable = field_text(form, "disable", 5) == "1"
    try:
        check_username(name)
        role = Role.parse(role_text) if role_text else None
        existing = ctx.store.user(name)
        if disable:
            if name == auth.user:
                raise ValueError("you cannot disable yourself")
            ctx.store.set_disabled(name, True)
            what = "disabled"
        elif password:
            if role is None:
                raise ValueError("choose a role")
            ctx.store.add_user(name, role.label, hash_password(password), ctx.clock())
            what = f"set password, role {role.label}"
        elif existing is not None and role is not None:
            ctx.store.set_role(name, role.label)
            what = f"role {role.label}"
        else:
            raise ValueError("a new user needs a password")
    except ValueError as exc:
        return render(
            request,
            auth,
            "users.html",
            {
                "title": "Users",
                "users": ctx.store.users(),
                "roles": ROLE_NAMES,
                "error": str(exc),
                "audit": ctx.store.audit_entries("user:", 30),
            },
            400,
        )
    ctx.store.audit(ctx.clock(), auth.user, "user", f"user:{name}", what)
    return RedirectResponse("/users", status_code=303)


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [
        Route("/users", users),
        Route("/users", save_user, methods=["POST"]),
    ]
