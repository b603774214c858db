"""Incident notifications against a real HTTP receiver on loopback: sent, retried with
backoff, failed, recorded on their rows; a slow target delays nobody else."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from webhooks import Hook, serve_hook

from gateway.localservices import free_port
from rules.incidents.dispatch import Dispatcher, backoff, notifications_for
from rules.incidents.machine import Changed, Notify, Signal
from rules.incidents.settings import IncidentsSettings
from rules.incidents.store import IncidentStore


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def settings(
    notifiers: dict[str, Any], contacts: list[dict[str, Any]], **kw: Any
) -> IncidentsSettings:
    return IncidentsSettings.model_validate(
        {
            "base_url": "http://127.0.0.1:8080",
            "notifiers": notifiers,
            "sites": {"site-01": {"contacts": contacts}},
            "delivery": {"attempts": 3, "backoff": 10, "backoff_max": 60},
            **kw,
        }
    )


def open_incident(store: IncidentStore, s: IncidentsSettings, now: float) -> int:
    book = store.load_book(s.policies())
    fx = book.signal(Signal("site-01", "rule_active", "pm10-gate", True, now, "pm10 = 180.0"), now)
    rows = [r for e in fx if isinstance(e, Notify) for r in notifications_for(e, s)]
    store.commit(book, [e for e in fx if isinstance(e, Changed)], rows)
    return next(e.incident.id for e in fx if isinstance(e, Changed))


def test_text_names_the_incident_and_links_its_page() -> None:
    s = settings(
        {"w": {"type": "webhook", "url": "http://127.0.0.1:1/x"}},
        [{"name": "Li", "notify": "w"}, {"name": "Zhang", "notify": "w", "level": 1}],
    )
    from rules.incidents.machine import Book

    book = Book(s.policies())
    fx = book.signal(Signal("site-01", "rule_active", "r", True, 0, "pm10 = 180.0"), 0)
    (n,) = [e for e in fx if isinstance(e, Notify)]
    (row,) = notifications_for(n, s)
    assert row.contact == "Li" and row.level == 0
    assert "incident #1 at site-01" in row.text and "pm10 = 180.0" in row.text
    assert row.text.endswith("http://127.0.0.1:8080/incidents/1")


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    assert backoff(1, 10, 60, 1.0) == 10 and backoff(1, 10, 60, 0.0) == 5
    assert backoff(2, 10, 60, 1.0) == 20 and backoff(9, 10, 60, 1.0) == 60


async def test_sent_and_recorded(tmp_path: Path, hook: Hook) -> None:
    s = settings({"w": {"type": "webhook", "url": hook.url}}, [{"name": "Li", "notify": "w"}])
    store = IncidentStore(tmp_path / "i.db")
    clock = Clock()
    inc = open_incident(store, s, clock())
    d = Dispatcher(store, s, clock=clock, rand=lambda: 1.0)
    assert await d.idle(10)
    (row,) = store.notifications(inc)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, "")
    (body,) = hook.received
    assert body["site"] == "site-01" and body["rule"] == f"incident-{inc}"
    assert "/incidents/1" in body["text"]
    store.close()


async def test_a_dead_endpoint_is_retried_with_backoff_then_failed(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens
    s = settings(
        {"w": {"type": "webhook", "url": dead, "timeout": 1}}, [{"name": "Li", "notify": "w"}]
    )
    store = IncidentStore(tmp_path / "i.db")
    clock = Clock()
    inc = open_incident(store, s, clock())
    d = Dispatcher(store, s, clock=clock, rand=lambda: 1.0)
    assert await d.idle(10)
    (row,) = store.notifications(inc)
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.next_at == clock() + 10 and "Connection refused" in row.last_error
    clock.t += 9
    assert await d.idle(10) and store.notifications(inc)[0].attempts == 1  # not due yet
    clock.t += 1
    assert await d.idle(10)
    assert store.notifications(inc)[0].next_at == clock() + 20  # doubled
    clock.t += 20
    assert await d.idle(10)
    (row,) = store.notifications(inc)
    assert (row.status, row.attempts) == ("failed", 3)
    assert d.counters == {"retried": 2, "failed": 1}
    store.close()


async def test_garbage_and_server_errors_are_retried_then_sent(tmp_path: Path, hook: Hook) -> None:
    hook.raw.append(b"\x00\x01 this is not HTTP\r\n\r\n")
    hook.script.append((503, b"busy"))
    s = settings({"w": {"type": "webhook", "url": hook.url}}, [{"name": "Li", "notify": "w"}])
    store = IncidentStore(tmp_path / "i.db")
    clock = Clock()
    inc = open_incident(store, s, clock())
    d = Dispatcher(store, s, clock=clock, rand=lambda: 0.0)
    for _ in range(3):
        assert await d.idle(10)
        clock.t += 60
    (row,) = store.notifications(inc)
    assert (row.status, row.attempts) == ("sent", 3)
    assert d.counters == {"retried": 2, "sent": 1}
    store.close()


async def test_a_robot_refusal_fails_at_once(tmp_path: Path, hook: Hook) -> None:
    hook.script.append((200, b'{"errcode": 310000, "errmsg": "keywords not in content"}'))
    s = settings({"r": {"type": "robot", "url": hook.url}}, [{"name": "Li", "notify": "r"}])
    store = IncidentStore(tmp_path / "i.db")
    inc = open_incident(store, s, 0.0)
    d = Dispatcher(store, s, clock=Clock(0.0))
    assert await d.idle(10)
    (row,) = store.notifications(inc)
    assert row.status == "failed" and "310000" in row.last_error
    store.close()


async def test_a_slow_endpoint_delays_nobody_else(tmp_path: Path, hook: Hook) -> None:
    with serve_hook() as slow:
        slow.delay = 3.0
        s = settings(
            {
                "slow": {"type": "webhook", "url": slow.url, "timeout": 1},
                "fast": {"type": "webhook", "url": hook.url},
            },
            [{"name": "Slow", "notify": "slow"}, {"name": "Fast", "notify": "fast"}],
        )
        store = IncidentStore(tmp_path / "i.db")
        inc = open_incident(store, s, 0.0)
        d = Dispatcher(store, s, clock=Clock(0.0))
        t0 = time.monotonic()
        d.start_due()
        while not hook.received:
            await __import__("asyncio").sleep(0.01)
        assert time.monotonic() - t0 < 0.9  # before the slow one's timeout
        assert await d.idle(10)
        rows = {r.contact: r for r in store.notifications(inc)}
        assert rows["Fast"].status == "sent"
        assert rows["Slow"].status == "pending" and "timed out" in rows["Slow"].last_error
        store.close()


@pytest.mark.parametrize("level", [0, 1])
def test_no_contact_no_row(level: int) -> None:
    s = settings({"w": {"type": "webhook", "url": "http://127.0.0.1:1/"}}, [])
    from rules.incidents.machine import Book

    book = Book(s.policies())
    fx = book.signal(Signal("site-01", "rule_active", "r", True, 0), 0)
    n = next(e for e in fx if isinstance(e, Notify))
    assert notifications_for(Notify(n.incident, level, "x"), s) == []
