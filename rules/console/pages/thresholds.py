"""Thresholds: edit a rule, preview the change over the last 7 days, save, roll back.

Every form carries ``base`` = the SHA-256 of the rules file it was made
from. Preview and save refuse when the file on disk is no longer that text
(another operator saved, or someone edited the file): the page shows what
changed since (the diff from the version the form was made from, which the
store keeps, to the file now). Saving writes the file atomically, keeps the
new text as a version, and records who, when and the diff in the audit log;
the rule engine's hot reload picks the file up and its ``reload`` /
``reload_error`` event reaches the page over the live feed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rules.console import history, rulesedit
from rules.console.auth import Role
from rules.console.charts import HLine, Line, line_chart
from rules.console.store import Version, sha256
from rules.console.web import (
    Auth,
    Ctx,
    Handler,
    NavItem,
    action,
    field_text,
    read_form,
    render,
    view,
)
from rules.core.config import RulesFile

NAV = [NavItem("Rules", "/rules")]
PREVIEW_DAYS = 7


def rules_lock(ctx: Ctx) -> asyncio.Lock:
    """The lock every write of the rules file takes (check-then-write is one step)."""
    lock = ctx.extra.get("rules_lock")
    if lock is None:
        lock = ctx.extra["rules_lock"] = asyncio.Lock()
    assert isinstance(lock, asyncio.Lock)
    return lock


def _disk_text(ctx: Ctx) -> str:
    return ctx.config.rules_file.read_text(encoding="utf-8")


def readable(fn: Handler) -> Handler:
    """The rules file missing or unreadable: a page saying so (503), not a crash."""

    @functools.wraps(fn)
    async def handler(request: Request, auth: Auth) -> Response:
        try:
            return await fn(request, auth)
        except (OSError, UnicodeDecodeError) as exc:
            path = auth.ctx.config.rules_file
            msg = f"cannot read the rules file {path}: {exc}"
            return render(request, auth, "error.html", {"title": "Rules file", "message": msg}, 503)

    return handler


@view(Role.VIEWER)
@readable
async def rules_index(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    text = _disk_text(ctx)
    rf = rulesedit.validate(ctx.config.rules_file, text, "").rules_file
    return render(
        request,
        auth,
        "rules.html",
        {
            "title": "Rules",
            "rules": rf.rules if rf is not None else [],
            "invalid": rf is None,
            "versions": ctx.store.versions(50),
            "current_sha": sha256(text),
            "reloads": list(reversed(ctx.live.reloads)),
            "audit": ctx.store.audit_entries("rules", 30),
        },
    )


def _form_page(
    request: Request,
    auth: Auth,
    rule_id: str,
    *,
    values: dict[str, str],
    base: str,
    errors: dict[str, list[str]] | None = None,
    general: list[str] | None = None,
    conflict: str = "",
    preview: dict[str, Any] | None = None,
    saved: str = "",
    status: int = 200,
) -> Response:
    ctx = auth.ctx
    return render(
        request,
        auth,
        "rule_edit.html",
        {
            "title": f"Rule {rule_id}",
            "rule_id": rule_id,
            "fields": rulesedit.FIELDS,
            "values": values,
            "base": base,
            "errors": errors or {},
            "general": general or [],
            "conflict": conflict,
            "preview": preview,
            "saved": saved,
            "reloads": list(reversed(ctx.live.reloads))[:5],
            "rules_path": str(ctx.config.rules_file),
        },
        status_code=status,
    )


@view(Role.VIEWER)
@readable
async def rule_form(request: Request, auth: Auth) -> Response:
    rule_id = request.path_params["rule"]
    text = _disk_text(auth.ctx)
    try:
        values = rulesedit.current_values(text, rule_id)
    except rulesedit.EditError as exc:
        return render(
            request, auth, "error.html", {"title": "No such rule", "message": str(exc)}, 404
        )
    auth.ctx.store.record_version(text, "disk", "seen on disk", auth.ctx.clock())
    return _form_page(
        request,
        auth,
        rule_id,
        values=values,
        base=sha256(text),
        saved=request.query_params.get("saved", ""),
    )


class _Edit:
    """The checks preview and save share."""

    def __init__(self, ctx: Ctx, rule_id: str, form: dict[str, str]) -> None:
        self.rule_id = rule_id
        self.raw = {f.name: form.get(f.name, "") for f in rulesedit.FIELDS}
        self.base = form.get("base", "")
        self.disk = _disk_text(ctx)
        self.conflict = ""
        self.merged = dict(self.raw)  # on a conflict: the file now + this operator's edits
        if self.base != sha256(self.disk):
            old = ctx.store.version_by_sha(self.base)
            if old is None:
                self.conflict = "(the version this form was made from is unknown)\n"
            else:
                self.conflict = rulesedit.diff(
                    old.text, self.disk, "the file when you opened the form", "the file now"
                )
            self.merged = _merge(self.raw, old.text if old else None, self.disk, rule_id)
        values, errors = rulesedit.parse_form(self.raw)
        self.errors: dict[str, list[str]] = {k: [v] for k, v in errors.items()}
        self.general: list[str] = []
        self.new_text = ""
        self.after: RulesFile | None = None
        if not errors and not self.conflict:
            try:
                self.new_text = rulesedit.apply_edit(self.disk, rule_id, values)
            except rulesedit.EditError as exc:
                self.general.append(str(exc))
                return
            check = rulesedit.validate(ctx.config.rules_file, self.new_text, rule_id)
            self.errors.update(check.fields)
            self.general.extend(check.general)
            self.after = check.rules_file

    @property
    def ok(self) -> bool:
        return not self.conflict and not self.errors and not self.general and self.after is not None

    def page(self, request: Request, auth: Auth, **kw: Any) -> Response:
        status = 409 if self.conflict else (400 if not self.ok else 200)
        return _form_page(
            request,
            auth,
            self.rule_id,
            values=self.merged,
            base=self.base if not self.conflict else sha256(self.disk),
            errors=self.errors,
            general=self.general,
            conflict=self.conflict,
            status=kw.pop("status", status),
            **kw,
        )


def _merge(raw: dict[str, str], base_text: str | None, disk: str, rule_id: str) -> dict[str, str]:
    """The form after a conflict: each field the operator changed from the version the
    form was made from keeps their value; every other field shows the file now."""
    try:
        now = rulesedit.current_values(disk, rule_id)
        base = rulesedit.current_values(base_text, rule_id) if base_text is not None else None
    except rulesedit.EditError:
        return dict(raw)
    if base is None:
        return now
    return {k: (raw[k] if raw.get(k, "").strip() != base.get(k, "") else now[k]) for k in now}


async def _form(request: Request) -> dict[str, str]:
    form = await read_form(request)
    return {k: field_text(form, k, 200) for k in form}


@action(Role.OPERATOR)
@readable
async def preview(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    edit = _Edit(ctx, request.path_params["rule"], await _form(request))
    if not edit.ok:
        return edit.page(request, auth)
    before = rulesedit.validate(ctx.config.rules_file, edit.disk, edit.rule_id).rules_file
    assert edit.after is not None
    rule_after = next(r for r in edit.after.rules if r.id == edit.rule_id)
    site = rule_after.site[0]
    now = ctx.clock()
    start = now - PREVIEW_DAYS * 86400
    result: dict[str, Any] = {"site": site, "days": PREVIEW_DAYS, "error": ""}
    if ctx.config.influx is None:
        result["error"] = "no influx: in console.yaml; cannot replay"
    elif before is None:
        result["error"] = "the rules file on disk is invalid; nothing to compare with"
    else:
        rule_before = next((r for r in before.rules if r.id == edit.rule_id), None)
        cfg = ctx.config.influx
        try:
            pv, data = await asyncio.gather(
                asyncio.to_thread(
                    history.preview, cfg, site, before, edit.after, edit.rule_id, start, now
                ),
                asyncio.to_thread(history.series, cfg, site, [rule_after.metric], start, now),
            )
        except history.HistoryError as exc:
            result["error"] = str(exc)
        else:
            b = pv.before.rules.get(edit.rule_id)
            a = pv.after.rules.get(edit.rule_id)
            result["before"] = b.row() if b else None
            result["after"] = a.row() if a else None
            result["readings"] = pv.readings
            hl = [HLine(rule_after.threshold, "new ON", "on")]
            if rule_before is not None:
                hl.append(HLine(rule_before.threshold, "old ON", "old"))
            hl.append(HLine(rule_after.clear_level, "new clear", "clear"))
            result["chart"] = line_chart(
                [Line(rule_after.metric, "pm10", data[rule_after.metric])],
                start,
                now,
                hl,
                title=f"{rule_after.metric} at {site}, last {PREVIEW_DAYS} days",
            )
    result["diff"] = rulesedit.diff(edit.disk, edit.new_text, "now", "after")
    return edit.page(request, auth, preview=result)


@action(Role.OPERATOR)
@readable
async def save(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    rule_id = request.path_params["rule"]
    form = await _form(request)
    async with rules_lock(ctx):
        edit = _Edit(ctx, rule_id, form)
        if not edit.ok:
            return edit.page(request, auth)
        version = _write(ctx, auth.user, edit.disk, edit.new_text, f"edit rule {rule_id}")
    return RedirectResponse(f"/rules/{rule_id}?saved={version}", status_code=303)


def _write(ctx: Ctx, user: str, old: str, new: str, note: str) -> int:
    from rules.console.app import load_rules

    now = ctx.clock()
    ctx.store.record_version(old, "disk", "seen on disk", now)
    rulesedit.write_atomic(ctx.config.rules_file, new.encode("utf-8"))
    version = ctx.store.record_version(new, user, note, now)
    ctx.store.audit(now, user, "rules_save", f"rules:{note}", rulesedit.diff(old, new))
    load_rules(ctx, new)
    return version.id


def _requested_version(request: Request, auth: Auth) -> Version | None:
    """The stored rules version the URL names, or None."""
    try:
        vid = int(request.path_params["vid"])
    except ValueError:
        return None
    return auth.ctx.store.version(vid)


def _no_version(request: Request, auth: Auth) -> Response:
    return render(request, auth, "error.html", {"title": "No such version", "message": ""}, 404)


def _version_view(
    request: Request, auth: Auth, v: Version, disk: str, conflict: str | None = None
) -> Response:
    """Version ``v`` against the file on disk; with ``conflict`` (the other edit),
    the refused roll back (409)."""
    context: dict[str, Any] = {
        "title": f"Rules version {v.id}",
        "v": v,
        "diff": rulesedit.diff(disk, v.text, "the file now", f"version {v.id}"),
        "base": sha256(disk),
    }
    if conflict is None:
        return render(request, auth, "version.html", context)
    return render(request, auth, "version.html", {**context, "conflict": conflict}, 409)


@view(Role.VIEWER)
@readable
async def version_page(request: Request, auth: Auth) -> Response:
    v = _requested_version(request, auth)
    if v is None:
        return _no_version(request, auth)
    return _version_view(request, auth, v, _disk_text(auth.ctx))


@action(Role.OPERATOR)
@readable
async def rollback(request: Request, auth: Auth) -> Response:
    ctx = auth.ctx
    form = await _form(request)
    v = _requested_version(request, auth)
    if v is None:
        return _no_version(request, auth)
    async with rules_lock(ctx):
        disk = _disk_text(ctx)
        if form.get("base", "") != sha256(disk):
            old = ctx.store.version_by_sha(form.get("base", ""))
            changed = rulesedit.diff(old.text if old else "", disk, "when you looked", "now")
            return _version_view(request, auth, v, disk, changed)
        check = rulesedit.validate(ctx.config.rules_file, v.text, "")
        if not check.ok:
            return render(
                request,
                auth,
                "error.html",
                {"title": "Version is not valid now", "message": "; ".join(check.general)},
                400,
            )
        _write(ctx, auth.user, disk, v.text, f"roll back to version {v.id}")
    return RedirectResponse("/rules?rolled=1", status_code=303)


def routes(ctx: Ctx) -> list[BaseRoute]:
    return [
        Route("/rules", rules_index),
        Route("/rules/versions/{vid}", version_page),
        Route("/rules/versions/{vid}/rollback", rollback, methods=["POST"]),
        Route("/rules/{rule}", rule_form),
        Route("/rules/{rule}/preview", preview, methods=["POST"]),
        Route("/rules/{rule}/save", save, methods=["POST"]),
    ]
