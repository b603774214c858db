"""The SQLite store: restarts, two writers, the notification outbox rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.incidents.machine import Changed, Signal
from rules.incidents.store import IncidentStore, NewNotification, StaleWrite

POLICIES: dict = {}  # type: ignore[type-arg]


def changes(fx: list) -> list[Changed]:  # type: ignore[type-arg]
    return [e for e in fx if isinstance(e, Changed)]


def test_a_restart_continues_ids_clock_and_history(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path / "i.db")
    book = store.load_book(POLICIES)
    fx = book.signal(Signal("site-01", "rule_active", "r1", True, 10.0, "pm10 180"), 12.0)
    store.commit(book, changes(fx), [NewNotification(1, 0, "opened", "li", "wecom", "text")])
    store.close()

    store = IncidentStore(tmp_path / "i.db")
    book = store.load_book(POLICIES)
    assert book.clock == 12.0 and book.next_id == 2
    inc = book.open_incident("site-01", "rule_active")
    assert inc is not None and inc.detail == "pm10 180"
    fx = book.acknowledge(inc.id, "li", inc.version, 5.0)  # clock behind: held at 12
    store.commit(book, changes(fx))
    assert [r.kind for r in store.log(inc.id)] == ["opened", "acknowledged"]
    stored = store.incident(inc.id)
    assert stored is not None and stored.acked_at == 12.0 and stored.version == 2
    (n,) = store.notifications(inc.id)
    assert (n.status, n.contact, n.target, n.attempts) == ("pending", "li", "wecom", 0)
    store.close()


def test_two_writers_the_second_is_refused(tmp_path: Path) -> None:
    first = IncidentStore(tmp_path / "i.db")
    book1 = first.load_book(POLICIES)
    first.commit(book1, changes(book1.signal(Signal("s", "rule_active", "r", True, 1, ""), 1)))
    second = IncidentStore(tmp_path / "i.db")  # another process on the same file
    book2 = second.load_book(POLICIES)
    inc = book1.open_incident("s", "rule_active")
    assert inc is not None
    first.commit(book1, changes(book1.acknowledge(inc.id, "first", inc.version, 2)))
    with pytest.raises(StaleWrite):
        second.commit(book2, changes(book2.resolve(inc.id, "second", inc.version, 3)))
    stored = first.incident(inc.id)
    assert stored is not None and stored.status == "acknowledged" and stored.acked_by == "first"
    first.close()
    second.close()


def test_the_console_database_and_ours_share_one_migration_record(tmp_path: Path) -> None:
    from rules.console.store import Store
    from rules.incidents.store import MIGRATIONS, migrate

    console = Store(tmp_path / "console.db")
    assert console.migrate("incidents", MIGRATIONS) == len(MIGRATIONS)
    ours = IncidentStore(tmp_path / "console.db")  # finds the tables, migrates nothing
    assert migrate(ours.conn) == 0
    ours.close()
    console.close()
    fresh = IncidentStore(tmp_path / "alone.db")
    console = Store(tmp_path / "alone.db")
    assert console.migrate("incidents", MIGRATIONS) == 0
    console.close()
    fresh.close()


def test_a_step_the_disk_refuses_is_forgotten_in_memory_too(tmp_path: Path) -> None:
    from sqlite3 import OperationalError

    from rules.incidents.service import IncidentService
    from rules.incidents.settings import IncidentsSettings

    store = IncidentStore(tmp_path / "i.db")
    svc = IncidentService(IncidentsSettings(), store, clock=lambda: 100.0)
    spike = Signal("s", "rule_active", "r", True, 99.0, "pm10 300")
    store.conn.execute("PRAGMA query_only = ON")  # the disk refuses writes
    with pytest.raises(OperationalError):
        svc.signals([spike])
    assert svc.book.incidents == {} and svc.counters["store_errors"] == 1
    store.conn.execute("PRAGMA query_only = OFF")
    svc.signals([spike])  # the engine's next word is taken as new
    (inc,) = store.incidents()
    assert inc.opened_at == 100.0 and svc.book.open_incident("s", "rule_active") == inc
    store.close()
