"""Incidents on disk: SQLite tables for incidents, their history, the causes'
tracks, the machine's clock and the notification outbox.

Every change of the :class:`~rules.incidents.machine.Book` is written in one
transaction together with the notifications it causes (:meth:`IncidentStore.commit`),
so a restart at any point finds either all of a step or none of it: no
incident lost or duplicated, and the clock continues from where it was.

Two writers (two console workers, or the console and a CLI) are kept honest
by the incidents' ``version``: an update names the version it replaces and
fails with :class:`StaleWrite` if someone else wrote first.

The schema is created by :func:`migrate`, recorded per component in
``schema_migrations`` as the console's store does (:mod:`rules.console.store`),
so the incidents live in the console's database when it runs them, and in a
file of their own under ``dustgate incidents``. The tables are all named
``incident*``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rules.incidents.machine import (
    Book,
    CausePolicy,
    Changed,
    Incident,
    Note,
    Track,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS incident_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS incidents (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        cause TEXT NOT NULL,
        status TEXT NOT NULL,
        version INTEGER NOT NULL,
        opened_at REAL NOT NULL,
        cause_since REAL NOT NULL,
        updated_at REAL NOT NULL,
        detail TEXT NOT NULL,
        repeats INTEGER NOT NULL,
        cleared_at REAL,
        acked_at REAL,
        acked_by TEXT,
        resolved_at REAL,
        resolved_by TEXT,
        overdue_at REAL,
        notes TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS incidents_site_opened ON incidents (site, opened_at);
    CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_unresolved
        ON incidents (site, cause) WHERE status != 'resolved';
    CREATE TABLE IF NOT EXISTS incident_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        incident INTEGER NOT NULL REFERENCES incidents (id),
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        who TEXT,
        text TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS incident_log_incident ON incident_log (incident, seq);
    CREATE TABLE IF NOT EXISTS incident_tracks (
        site TEXT NOT NULL, cause TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (site, cause)
    );
    CREATE TABLE IF NOT EXISTS incident_notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident INTEGER NOT NULL REFERENCES incidents (id),
        level INTEGER NOT NULL,
        reason TEXT NOT NULL,
        contact TEXT NOT NULL,
        target TEXT NOT NULL,
        text TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        done_at REAL
    );
    CREATE INDEX IF NOT EXISTS incident_notifications_due
        ON incident_notifications (status, next_at);
    """,
)

_COLUMNS = (
    "id", "site", "cause", "status", "version", "opened_at", "cause_since", "updated_at",
    "detail", "repeats", "cleared_at", "acked_at", "acked_by", "resolved_at", "resolved_by",
    "overdue_at", "notes",
)  # fmt: skip


class StaleWrite(RuntimeError):
    """Another writer changed the incident first (its version moved on)."""


@dataclass(frozen=True, slots=True)
class NewNotification:
    incident: int
    level: int
    reason: str
    contact: str
    target: str
    text: str


@dataclass(frozen=True, slots=True)
class NotificationRow:
    id: int
    incident: int
    level: int
    reason: str
    contact: str
    target: str
    text: str
    created_at: float
    status: str
    attempts: int
    next_at: float
    last_error: str
    done_at: float | None


@dataclass(frozen=True, slots=True)
class LogRow:
    incident: int
    at: float
    kind: str
    who: str | None
    text: str
    version: int


COMPONENT = "incidents"
SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "component TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY(component, version))"
)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the steps of :data:`MIGRATIONS` not yet recorded in ``schema_migrations``
    (the console's per-component table: the console applies the same steps when the
    incidents live in its database); returns how many ran."""
    conn.execute(SCHEMA_MIGRATIONS)
    (done,) = conn.execute(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
        (COMPONENT,),
    ).fetchone()
    ran = 0
    for version, sql in enumerate(MIGRATIONS, start=1):
        if version <= done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(component, version) VALUES (?, ?)",
                (COMPONENT, version),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        ran += 1
    return ran


def _notes_json(notes: Sequence[Note]) -> str:
    return json.dumps([[n.at, n.who, n.text] for n in notes], ensure_ascii=False)


def _incident_row(inc: Incident) -> tuple[Any, ...]:
    return (
        inc.id, inc.site, inc.cause, inc.status, inc.version, inc.opened_at, inc.cause_since,
        inc.updated_at, inc.detail, inc.repeats, inc.cleared_at, inc.acked_at, inc.acked_by,
        inc.resolved_at, inc.resolved_by, inc.overdue_at, _notes_json(inc.notes),
    )  # fmt: skip


def _incident(row: Sequence[Any]) -> Incident:
    d = dict(zip(_COLUMNS, row, strict=True))
    d["notes"] = tuple(Note(float(a), str(w), str(t)) for a, w, t in json.loads(d["notes"]))
    return Incident(**d)


def _track_json(t: Track) -> str:
    return json.dumps(
        {
            "sources": [list(s) for s in t.sources],
            "since": t.since,
            "incident": t.incident,
            "handled": t.handled,
            "detail": t.detail,
        },
        ensure_ascii=False,
    )


def _track(text: str) -> Track:
    d = json.loads(text)
    return Track(
        sources=tuple((str(s), bool(on), float(ts)) for s, on, ts in d["sources"]),
        since=d["since"],
        incident=d["incident"],
        handled=bool(d["handled"]),
        detail=str(d["detail"]),
    )


class IncidentStore:
    """The incident tables in one SQLite file (WAL, so pages read while the service writes)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection, used from the event loop's thread (and a test client's): a lock
        self.conn = sqlite3.connect(
            str(path), timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self.lock = threading.RLock()
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        migrate(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    # ---------------------------------------------------------------- book

    def load_book(self, policies: Mapping[str, CausePolicy]) -> Book:
        """The machine as the last commit left it."""
        meta = dict(self._rows("SELECT key, value FROM incident_meta"))
        clock = float(meta.get("clock", 0.0))
        max_id = self._rows("SELECT coalesce(max(id), 0) FROM incidents")[0][0]
        next_id = max(int(meta.get("next_id", 1)), int(max_id) + 1)
        unresolved = [
            _incident(r)
            for r in self._rows(
                f"SELECT {', '.join(_COLUMNS)} FROM incidents WHERE status != 'resolved'"
            )
        ]
        tracks = {
            (site, cause): _track(data)
            for site, cause, data in self._rows("SELECT site, cause, data FROM incident_tracks")
        }
        return Book.restore(policies, clock, next_id, unresolved, tracks)

    def commit(
        self,
        book: Book,
        changes: Iterable[Changed],
        notifications: Iterable[NewNotification] = (),
    ) -> None:
        """Write one step of ``book`` (its changed incidents, tracks, clock) and the
        notifications it causes, atomically. Raises :class:`StaleWrite` (and writes
        nothing) if an incident's stored version is not the one this step replaced."""
        changes = list(changes)
        with self._tx() as c:
            latest: dict[int, Incident] = {}
            first_version: dict[int, int] = {}
            for ch in changes:
                latest[ch.incident.id] = ch.incident
                first_version.setdefault(ch.incident.id, ch.incident.version)
            # updates before inserts: one unresolved incident per (site, cause) holds per row
            known = {
                i
                for i in latest
                if c.execute("SELECT 1 FROM incidents WHERE id = ?", (i,)).fetchone()
            }
            order = sorted(latest.items(), key=lambda kv: kv[0] not in known)
            for inc_id, inc in order:
                row = c.execute("SELECT version FROM incidents WHERE id = ?", (inc_id,)).fetchone()
                before = first_version[inc_id] - 1  # the version the first change replaced
                if row is None:
                    if first_version[inc_id] != 1:
                        raise StaleWrite(f"incident {inc_id} is missing from the store")
                    c.execute(
                        f"INSERT INTO incidents ({', '.join(_COLUMNS)})"
                        f" VALUES ({', '.join('?' * len(_COLUMNS))})",
                        _incident_row(inc),
                    )
                    continue
                if row[0] != before:
                    raise StaleWrite(
                        f"incident {inc_id}: stored version {row[0]}, this change replaces {before}"
                    )
                sets = ", ".join(f"{col} = ?" for col in _COLUMNS[1:])
                c.execute(
                    f"UPDATE incidents SET {sets} WHERE id = ?", (*_incident_row(inc)[1:], inc_id)
                )
            for ch in changes:
                c.execute(
                    "INSERT INTO incident_log (incident, at, kind, who, text, version)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        ch.incident.id,
                        ch.incident.updated_at,
                        ch.kind,
                        ch.who,
                        ch.text,
                        ch.incident.version,
                    ),
                )
            for (site, cause), t in book.take_dirty_tracks().items():
                c.execute(
                    "INSERT INTO incident_tracks (site, cause, data) VALUES (?, ?, ?)"
                    " ON CONFLICT (site, cause) DO UPDATE SET data = excluded.data",
                    (site, cause, _track_json(t)),
                )
            for key, value in (("clock", repr(book.clock)), ("next_id", str(book.next_id))):
                c.execute(
                    "INSERT INTO incident_meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            for n in notifications:
                c.execute(
                    "INSERT INTO incident_notifications (incident, level, reason, contact,"
                    " target, text, created_at, status, next_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        n.incident,
                        n.level,
                        n.reason,
                        n.contact,
                        n.target,
                        n.text,
                        book.clock,
                        "pending",
                        book.clock,
                    ),
                )

    # ------------------------------------------------------------- queries

    def incident(self, incident_id: int) -> Incident | None:
        rows = self._rows(
            f"SELECT {', '.join(_COLUMNS)} FROM incidents WHERE id = ?", (incident_id,)
        )
        return _incident(rows[0]) if rows else None

    def incidents(
        self,
        *,
        site: str | None = None,
        unresolved: bool | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 500,
    ) -> list[Incident]:
        """Newest first."""
        where: list[str] = []
        args: list[object] = []
        if site is not None:
            where.append("site = ?")
            args.append(site)
        if unresolved is True:
            where.append("status != 'resolved'")
        elif unresolved is False:
            where.append("status = 'resolved'")
        if since is not None:
            where.append("opened_at >= ?")
            args.append(since)
        if until is not None:
            where.append("opened_at < ?")
            args.append(until)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY opened_at DESC, id DESC LIMIT ?"
        return [_incident(r) for r in self._rows(sql, (*args, limit))]

    def log(self, incident_id: int) -> list[LogRow]:
        return [
            LogRow(*r)
            for r in self._rows(
                "SELECT incident, at, kind, who, text, version FROM incident_log"
                " WHERE incident = ? ORDER BY seq",
                (incident_id,),
            )
        ]

    # ------------------------------------------------------- notifications

    def notifications(self, incident_id: int | None = None) -> list[NotificationRow]:
        sql = "SELECT * FROM incident_notifications"
        args: tuple[Any, ...] = ()
        if incident_id is not None:
            sql += " WHERE incident = ?"
            args = (incident_id,)
        return [NotificationRow(*r) for r in self._rows(sql + " ORDER BY id", args)]

    def due_notifications(self, now: float, limit: int = 20) -> list[NotificationRow]:
        return [
            NotificationRow(*r)
            for r in self._rows(
                "SELECT * FROM incident_notifications WHERE status = 'pending' AND next_at <= ?"
                " ORDER BY next_at, id LIMIT ?",
                (now, limit),
            )
        ]

    def next_notification_at(self) -> float | None:
        (row,) = self._rows(
            "SELECT min(next_at) FROM incident_notifications WHERE status = 'pending'"
        )
        return None if row[0] is None else float(row[0])

    def notification_result(
        self,
        notification_id: int,
        *,
        status: str,
        attempts: int,
        next_at: float,
        error: str,
        done_at: float | None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE incident_notifications SET status = ?, attempts = ?, next_at = ?,"
                " last_error = ?, done_at = ? WHERE id = ?",
                (status, attempts, next_at, error[:500], done_at, notification_id),
            )
