"""Hot reload of the rules file while the service runs.

The rules file is polled (mtime, size, inode; then a hash of the text) every
``watch_interval`` and must be unchanged for one more poll before it is read
(no half-written files): :class:`FileWatch`. Valid -> ``engine.reload``
(unchanged rules keep their state) and a ``reload`` event naming what was
added, changed and removed; invalid -> every ``file:line:col`` error logged,
a ``reload_error`` event (warning) and the running rules stay
(:func:`reload_text`). Changes of ``mqtt:``, ``influx:`` or ``state_dir:``
need a restart (logged, as does ``service.partition``); changed sites ask
the session to resubscribe. The events go to the sites this engine acts for
(a partition's own sites, not the background sites it only reads).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from gateway import protocol as p
from gateway.configfile import ConfigError
from rules.core.config import RulesFile, load_rules_file
from rules.core.engine import Action, EmitEvent, rule_digest
from rules.service.outbound import Publish

log = logging.getLogger("rules.service")


class FileWatch:
    """Change detection for the rules file by polling (robust on SD cards and editors).

    :meth:`poll` returns the new text once a change has been seen on two
    consecutive polls with the same (mtime, size, inode) and the text's hash
    differs from the last one returned or given as ``text``.
    """

    def __init__(self, path: Path, text: str | None = None) -> None:
        self.path = path
        self._sig = self._stat()
        self._pending: tuple[int, int, int] | None = None
        self._hash = _digest(text) if text is not None else None
        self.missing = False

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def poll(self) -> str | None:
        sig = self._stat()
        if sig is None:
            if not self.missing:
                log.warning("rules file %s is missing; keeping the running rules", self.path)
            self.missing = True
            return None
        self.missing = False
        if sig == self._sig:
            self._pending = None
            return None
        if sig != self._pending:
            self._pending = sig  # wait one more poll: the editor may still be writing
            return None
        self._sig, self._pending = sig, None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read %s: %s; keeping the running rules", self.path, exc)
            return None
        h = _digest(text)
        if h == self._hash:
            return None
        self._hash = h
        return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Reloadable(Protocol):
    """What a reload needs of the service (:class:`rules.service.service.RulesService`)."""

    rules_path: Path
    rules_file: RulesFile
    full_rules: RulesFile  # the whole file (a partition's rules_file is cut to its sites)
    served: frozenset[str]
    owned: frozenset[str]  # the sites it acts for (a partition's own)
    counters: Counter[str]
    watch: FileWatch

    def subscriptions(self) -> list[str]: ...
    def resubscribe(self) -> None: ...
    def rules_changed(self, new: RulesFile, now: float) -> list[Action]: ...
    def apply(
        self, actions: Iterable[Action], now: float, override: bool = False
    ) -> list[Publish]: ...


def check_reload(svc: Reloadable, now: float) -> list[Publish]:
    """Poll the rules file; reload it if it changed."""
    text = svc.watch.poll()
    if text is None:
        return []
    return reload_text(svc, text, now)


def reload_text(svc: Reloadable, text: str, now: float) -> list[Publish]:
    """Validate ``text`` as the new rules file; swap it in or report why not."""
    old = svc.full_rules  # the whole file: what the operator changed
    old_subscriptions = svc.subscriptions()
    sites = sorted(svc.owned)
    try:
        new = load_rules_file(svc.rules_path, text=text)
    except ConfigError as exc:
        svc.counters["reload_errors"] += 1
        log.error(
            "rules file %s has %d error(s); keeping the running rules:",
            svc.rules_path,
            len(exc.issues),
        )
        for issue in exc.issues:
            log.error("  %s", issue)
        lines = [str(i) for i in exc.issues]
        body = "\n".join(lines)
        text_ = f"rules not reloaded, {len(lines)} error(s); running rules kept:\n{body}"
        events: list[Action] = [
            EmitEvent(
                s,
                p.Event(
                    ts=p.now_ms(now),
                    kind="reload_error",
                    text=text_[:1000],
                    severity="warning",
                    data={"file": str(svc.rules_path), "errors": lines[:20]},
                ),
            )
            for s in sites
        ]
        return svc.apply(events, now)
    old_d = {r.id: rule_digest(r) for r in old.rules}
    new_d = {r.id: rule_digest(r) for r in new.rules}
    added = sorted(set(new_d) - set(old_d))
    removed = sorted(set(old_d) - set(new_d))
    changed = sorted(r for r in set(old_d) & set(new_d) if old_d[r] != new_d[r])
    kept = len(new_d) - len(added) - len(changed)
    actions = svc.rules_changed(new, now)
    if old.service.partition != new.service.partition:
        log.warning("service.partition: changed in %s; restart the engines", svc.rules_path)
    for what in ("mqtt", "influx", "state_dir"):
        if getattr(old, what) != getattr(new, what):
            log.warning("%s: changed in %s; restart the service to apply", what, svc.rules_path)
    if svc.subscriptions() != old_subscriptions:
        svc.resubscribe()  # the sites changed
    parts = [f"{len(new_d)} rules, {kept} unchanged (state kept)"]
    for label, ids in (("added", added), ("changed", changed), ("removed", removed)):
        if ids:
            parts.append(f"{label}: {', '.join(ids)}")
    summary = f"rules reloaded from {svc.rules_path.name}: " + "; ".join(parts)
    data: dict[str, Any] = {"added": added, "changed": changed, "removed": removed}
    out_actions: list[Action] = [
        EmitEvent(s, p.Event(ts=p.now_ms(now), kind="reload", text=summary[:1000], data=data))
        for s in sorted(svc.owned | set(sites))
    ]
    return svc.apply([*out_actions, *actions], now)
