"""Notification rate limits per (notifier, site, rule), folding what they hold back. Pure.

A notifier's ``min_interval`` limits each (site, rule) on its own: two sites
sharing one district robot, or two rules of one site, never take each
other's turn. Within the interval a message is held back, never dropped:

- the next message of the same (notifier, site, rule) that is let through
  carries the count and the time of the first held-back one: ``pm10-gate:
  on, mean(pm10) = 180.0 (3 more since 10:02)``;
- if none comes, :meth:`NotifyLimiter.due` (called on every engine tick)
  sends the latest held-back message when the interval has run out, with the
  count of the others it stands for, so the last word (often the "off" after
  an "on") always arrives.

A folded message has the worst severity of those it stands for. The state
(:meth:`to_json` / :meth:`from_json`) survives an engine restart with the
rest of the engine's snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rules.core.evaluator import Notify

Key = tuple[str, str, str]  # (notifier, site, rule)

_SEVERITY = {"info": 0, "warning": 1, "critical": 2}


def hhmm(ts: float) -> str:
    """Local wall-clock time of ``ts`` (s), as people read it in a chat: ``10:02``."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%H:%M")


def worst(a: str, b: str) -> str:
    return a if _SEVERITY.get(a, 0) >= _SEVERITY.get(b, 0) else b


@dataclass(frozen=True, slots=True)
class Held:
    """What a (notifier, site, rule) holds back: how many, since when, the latest one."""

    count: int
    since: float
    latest: Notify
    severity: str


def fold_text(text: str, more: int, since: float) -> str:
    """``text`` standing for ``more`` other messages held back since ``since``."""
    return f"{text} ({more} more since {hhmm(since)})" if more else text


class NotifyLimiter:
    """See the module docstring. ``interval(notifier)`` gives a notifier's ``min_interval``
    (``None``: unknown notifier, let through)."""

    __slots__ = ("_held", "_interval", "_last")

    def __init__(self, interval: Callable[[str], float | None]) -> None:
        self._interval = interval
        self._last: dict[Key, float] = {}
        self._held: dict[Key, Held] = {}

    def offer(self, n: Notify, now: float) -> Notify | None:
        """``n`` to send now (with what it stands for folded in), or ``None``: held back."""
        key = (n.notifier, n.site, n.rule)
        interval = self._interval(n.notifier)
        last = self._last.get(key)
        if interval is not None and last is not None and now - last < interval:
            h = self._held.get(key)
            self._held[key] = (
                Held(1, now, n, n.severity)
                if h is None
                else Held(h.count + 1, h.since, n, worst(h.severity, n.severity))
            )
            return None
        self._last[key] = now
        h = self._held.pop(key, None)
        if h is None:
            return n
        return dataclasses.replace(
            n, text=fold_text(n.text, h.count, h.since), severity=worst(h.severity, n.severity)
        )

    def due(self, now: float) -> list[Notify]:
        """The held-back messages whose interval has run out, each as one folded message."""
        out: list[Notify] = []
        for key, h in list(self._held.items()):
            interval = self._interval(key[0])
            last = self._last.get(key)
            if interval is not None and last is not None and now - last < interval:
                continue
            del self._held[key]
            self._last[key] = now
            out.append(
                dataclasses.replace(
                    h.latest,
                    text=fold_text(h.latest.text, h.count - 1, h.since),
                    severity=h.severity,
                )
            )
        return out

    def held(self) -> int:
        """Messages held back now (each will be delivered, alone or folded)."""
        return sum(h.count for h in self._held.values())

    def next_due(self) -> float | None:
        """When :meth:`due` will next have something (None: nothing held)."""
        times = []
        for key in self._held:
            interval = self._interval(key[0])
            times.append(self._last.get(key, 0.0) + (interval or 0.0))
        return min(times, default=None)

    # ------------------------------------------------------------ snapshot

    def to_json(self) -> dict[str, Any]:
        return {
            "last": [[*k, t] for k, t in self._last.items()],
            "held": [
                [*k, h.count, h.since, h.severity, h.latest.text, h.latest.severity]
                for k, h in self._held.items()
            ],
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Adopt :meth:`to_json`'s output; raises ValueError/TypeError/KeyError if unreadable."""
        last = {(str(a), str(b), str(c)): float(t) for a, b, c, t in data.get("last", [])}
        held = {}
        for notifier, site, rule, count, since, sev, text, latest_sev in data.get("held", []):
            latest = Notify(str(notifier), str(rule), str(site), str(text), str(latest_sev))
            held[(str(notifier), str(site), str(rule))] = Held(
                int(count), float(since), latest, str(sev)
            )
        self._last, self._held = last, held
