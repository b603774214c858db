"""Incident notifications: who is told what, and the worker that tells them.

:func:`notifications_for` (pure) turns the machine's
:class:`~rules.incidents.machine.Notify` into one row per contact of that
level, with the text and the link to the incident's page; the rows are
committed with the step that caused them (:meth:`IncidentStore.commit`), so
a notification is never lost to a restart and never sent twice for one step.

:class:`Dispatcher` sends the due rows through the engine's notifiers (the
request bodies of :func:`rules.service.notify.build_request`, the POST of
:func:`rules.service.notify.post`, the verdict of
:func:`rules.service.notify.judge_response`: generic webhooks and
WeCom/DingTalk-style robots alike) and records each outcome on its row:
``sent``; ``pending`` again with ``attempts`` + 1 and the next try after an
exponential backoff with jitter (no answer, a timeout, HTTP 5xx/429, an
answer that is not HTTP at all); ``failed`` when the attempts are used up or
the target refused for good (other HTTP errors, a robot's errcode). Each
row is sent in its own thread with the target's timeout, so a slow or dead
endpoint delays nobody else, and incident handling never waits for any.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from rules.incidents.machine import CAUSE_TEXT, Notify
from rules.incidents.settings import IncidentsSettings
from rules.incidents.store import IncidentStore, NewNotification, NotificationRow
from rules.service.notify import Message, Outcome, Request, build_request, judge_response, post

log = logging.getLogger(__name__)

Sender = Callable[[Request, float], tuple[int, bytes]]


def _hhmm(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def notifications_for(n: Notify, settings: IncidentsSettings) -> list[NewNotification]:
    """One row per contact of the site at ``n.level``. Pure."""
    inc = n.incident
    what = CAUSE_TEXT.get(inc.cause, inc.cause)
    if n.reason == "overdue":
        head = (
            f"OVERDUE: incident #{inc.id} at {inc.site} not resolved since {_hhmm(inc.opened_at)}"
        )
    else:
        head = f"incident #{inc.id} at {inc.site}: {what}"
    detail = f" ({inc.detail})" if inc.detail else ""
    text = f"{head}{detail}. {settings.link(inc.id)}"[:1000]
    return [
        NewNotification(inc.id, n.level, n.reason, c.name, c.notify, text)
        for c in settings.contacts(inc.site, n.level)
    ]


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Delay before try ``attempt + 1``: doubling from ``base``, at most ``cap``, jittered
    into [d/2, d]. Pure."""
    d = min(cap, base * 2 ** max(0, attempt - 1))
    return d / 2 + rand * d / 2


class Dispatcher:
    """Sends due notification rows; see the module docstring.

    ``counters``: ``sent``, ``retried``, ``failed``, ``unknown_target``.
    """

    def __init__(
        self,
        store: IncidentStore,
        settings: IncidentsSettings,
        *,
        clock: Callable[[], float] = time.time,
        sender: Sender = post,
        rand: Callable[[], float] = random.random,
        poll: float = 1.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.sender = sender
        self.rand = rand
        self.poll = poll
        self.counters: Counter[str] = Counter()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: start a send for every due row not already being sent."""
        try:
            while True:
                try:
                    self.start_due()
                except sqlite3.Error as exc:  # a busy or failing disk: try again later
                    self.counters["store_errors"] += 1
                    log.warning("incident notifications: store: %s", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            for t in self._in_flight.values():
                t.cancel()
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    def start_due(self) -> int:
        started = 0
        for row in self.store.due_notifications(self.clock(), limit=50):
            if row.id in self._in_flight:
                continue
            task = asyncio.create_task(self._send(row), name=f"incident-notify-{row.id}")
            self._in_flight[row.id] = task
            task.add_done_callback(functools.partial(self._done, row.id))
            started += 1
        return started

    def _done(self, row_id: int, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(row_id, None)
        if not task.cancelled() and task.exception() is not None:
            # the outcome could not be recorded: the row stays due and is sent again
            self.counters["store_errors"] += 1
            log.warning("incident notification %d: %s", row_id, task.exception())

    async def idle(self, timeout: float) -> bool:
        """Wait until nothing is being sent and nothing is due now (tests, shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    self.start_due()
                    if not self._in_flight:
                        return True
                    await asyncio.gather(*list(self._in_flight.values()), return_exceptions=True)
        return False

    async def _send(self, row: NotificationRow) -> None:
        spec = self.settings.notifiers.get(row.target)
        attempts = row.attempts + 1
        if spec is None:
            self.counters["unknown_target"] += 1
            outcome = Outcome(False, why=f"no notifier named {row.target!r}")
        else:
            inc = self.store.incident(row.incident)
            msg = Message(
                notifier=row.target,
                rule=f"incident-{row.incident}",
                site=inc.site if inc is not None else "",
                text=row.text,
                severity="critical" if row.level > 0 else "warning",
                ts_ms=round(row.created_at * 1000),
            )
            try:
                status, body = await asyncio.to_thread(
                    self.sender, build_request(spec, msg), spec.timeout
                )
                outcome = judge_response(spec, status, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no answer, timeout, not HTTP at all
                outcome = Outcome(False, retry=True, why=f"{type(exc).__name__}: {exc}")
        now = self.clock()
        if outcome.ok:
            self.counters["sent"] += 1
            self.store.notification_result(
                row.id, status="sent", attempts=attempts, next_at=now, error="", done_at=now
            )
            log.info("incident %d: notified %s via %s", row.incident, row.contact, row.target)
            return
        d = self.settings.delivery
        if outcome.retry and attempts < d.attempts:
            self.counters["retried"] += 1
            delay = backoff(attempts, d.backoff, d.backoff_max, self.rand())
            self.store.notification_result(
                row.id,
                status="pending",
                attempts=attempts,
                next_at=now + delay,
                error=outcome.why,
                done_at=None,
            )
            log.info(
                "incident %d: %s via %s: %s, retry in %.1fs",
                row.incident, row.contact, row.target, outcome.why, delay,
            )  # fmt: skip
            return
        self.counters["failed"] += 1
        self.store.notification_result(
            row.id, status="failed", attempts=attempts, next_at=now, error=outcome.why, done_at=now
        )
        log.warning(
            "incident %d: notifying %s via %s failed after %d attempt(s): %s",
            row.incident, row.contact, row.target, attempts, outcome.why,
        )  # fmt: skip
