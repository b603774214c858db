"""The console's SQLite store: migrations per component, users, sessions, audit, rules versions.

One file (``store:`` in console.yaml), WAL mode, one connection guarded by a
lock (every statement is short; the console is one process). Schema changes
are *migrations*, numbered per component (``console``, and whatever another
package adds, e.g. ``incidents``), so packages evolve their tables without
coordinating numbers: :meth:`Store.migrate` applies the ones not yet applied,
each in a transaction, and records them in ``schema_migrations``.

Session tokens are stored as SHA-256 digests: a copy of the database does not
hand out live sessions. Passwords are stored as argon2 hashes (:mod:`.auth`).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONSOLE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        pw_hash TEXT NOT NULL,
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created REAL NOT NULL,
        seen REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        user TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_target ON audit(target, ts);
    CREATE TABLE rules_versions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        user TEXT NOT NULL,
        sha TEXT NOT NULL,
        text TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX rules_versions_sha ON rules_versions(sha);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    pw_hash: str
    created: float
    disabled: bool


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    user: User
    csrf: str
    created: float
    seen: float


@dataclass(frozen=True, slots=True)
class Version:
    id: int
    ts: float
    user: str
    sha: str
    text: str
    note: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    ts: float
    user: str
    action: str
    target: str
    detail: str


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "component TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY(component, version))"
        )
        self.migrate("console", CONSOLE_MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ plumbing

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply ``migrations[n:]`` of ``component`` (n = how many are recorded); returns
        how many ran. Each runs in one transaction with its record."""
        ran = 0
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?",
                (component,),
            ).fetchone()
            done = int(row[0])
            for version, sql in enumerate(migrations, start=1):
                if version <= done:
                    continue
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in sql.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(
                        "INSERT INTO schema_migrations(component, version) VALUES (?, ?)",
                        (component, version),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                ran += 1
        return ran

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement (autocommit); for packages keeping their own tables here."""
        with self._lock:
            return self._db.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ users

    def add_user(self, name: str, role: str, pw_hash: str, now: float) -> None:
        """Create or replace (new password and role) a user; their sessions end."""
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self._db.execute(
                "INSERT INTO users(name, role, pw_hash, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET role = excluded.role, "
                "pw_hash = excluded.pw_hash, disabled = 0",
                (name, role, pw_hash, now),
            )

    def set_role(self, name: str, role: str) -> bool:
        return self.execute("UPDATE users SET role = ? WHERE name = ?", (role, name)).rowcount > 0

    def set_password_hash(self, name: str, pw_hash: str) -> None:
        self.execute("UPDATE users SET pw_hash = ? WHERE name = ?", (pw_hash, name))

    def set_disabled(self, name: str, disabled: bool) -> bool:
        with self._lock:
            if disabled:
                self._db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            cur = self._db.execute(
                "UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name)
            )
            return cur.rowcount > 0

    def user(self, name: str) -> User | None:
        rows = self.query(
            "SELECT name, role, pw_hash, created, disabled FROM users WHERE name = ?", (name,)
        )
        return _user(rows[0]) if rows else None

    def users(self) -> list[User]:
        return [
            _user(r)
            for r in self.query(
                "SELECT name, role, pw_hash, created, disabled FROM users ORDER BY name"
            )
        ]

    # ------------------------------------------------------------ sessions

    def create_session(self, user: str, now: float) -> tuple[str, str]:
        """A new session: (token for the cookie, CSRF token for the forms)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self.execute(
            "INSERT INTO sessions(token_hash, user, csrf, created, seen) VALUES (?, ?, ?, ?, ?)",
            (sha256(token), user, csrf, now, now),
        )
        return token, csrf

    def session(self, token: str, now: float, idle: float, max_age: float) -> Session | None:
        """The live session of ``token`` (its last-seen time updated), or None if it is
        unknown, idle longer than ``idle``, older than ``max_age`` or its user disabled."""
        th = sha256(token)
        with self._lock:
            rows = self._db.execute(
                "SELECT s.csrf, s.created, s.seen, u.name, u.role, u.pw_hash, u.created, "
                "u.disabled FROM sessions s JOIN users u ON u.name = s.user "
                "WHERE s.token_hash = ?",
                (th,),
            ).fetchall()
            if not rows:
                return None
            csrf, created, seen, *urow = rows[0]
            if now - seen > idle or now - created > max_age or urow[4]:
                self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (th,))
                return None
            if now - seen > 30.0:  # one write a half minute per session at most
                self._db.execute("UPDATE sessions SET seen = ? WHERE token_hash = ?", (now, th))
                seen = now
        return Session(th, _user(tuple(urow)), str(csrf), float(created), float(seen))

    def end_session(self, token: str) -> None:
        self.execute("DELETE FROM sessions WHERE token_hash = ?", (sha256(token),))

    def expire_sessions(self, now: float, idle: float, max_age: float) -> int:
        cur = self.execute(
            "DELETE FROM sessions WHERE seen < ? OR created < ?", (now - idle, now - max_age)
        )
        return cur.rowcount

    # ------------------------------------------------------------ audit

    def audit(self, ts: float, user: str, action: str, target: str, detail: str = "") -> int:
        cur = self.execute(
            "INSERT INTO audit(ts, user, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            (ts, user, action, target, detail),
        )
        return int(cur.lastrowid or 0)

    def audit_entries(self, target_prefix: str = "", limit: int = 100) -> list[AuditEntry]:
        rows = self.query(
            "SELECT id, ts, user, action, target, detail FROM audit "
            "WHERE substr(target, 1, ?) = ? ORDER BY id DESC LIMIT ?",
            (len(target_prefix), target_prefix, limit),
        )
        return [AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    # ------------------------------------------------------------ rules versions

    def record_version(self, text: str, user: str, note: str, now: float) -> Version:
        """Keep ``text`` as a version unless it is already the latest one."""
        sha = sha256(text)
        latest = self.latest_version()
        if latest is not None and latest.sha == sha:
            return latest
        cur = self.execute(
            "INSERT INTO rules_versions(ts, user, sha, text, note) VALUES (?, ?, ?, ?, ?)",
            (now, user, sha, text, note),
        )
        return Version(int(cur.lastrowid or 0), now, user, sha, text, note)

    def latest_version(self) -> Version | None:
        rows = self.query(
            "SELECT id, ts, user, sha, text, note FROM rules_versions ORDER BY id DESC LIMIT 1"
        )
        return _version(rows[0]) if rows else None

    def version(self, vid: int) -> Version | None:
        rows = self.query(
            "SELECT id, ts, user, sha, text, note FROM rules_versions WHERE id = ?", (vid,)
        )
        return _version(rows[0]) if rows else None

    def version_by_sha(self, sha: str) -> Version | None:
        rows = self.query(
            "SELECT id, ts, user, sha, text, note FROM rules_versions WHERE sha = ? "
            "ORDER BY id DESC LIMIT 1",
            (sha,),
        )
        return _version(rows[0]) if rows else None

    def versions(self, limit: int = 200) -> list[Version]:
        rows = self.query(
            "SELECT id, ts, user, sha, '', note FROM rules_versions ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [_version(r) for r in rows]

    # ------------------------------------------------------------ secrets

    def secret(self, key: str) -> str:
        """A random secret kept in the store, made on first use."""
        value = self.meta(key)
        if value is None:
            value = secrets.token_urlsafe(32)
            self.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            value = self.meta(key) or value
        return value


def _user(r: tuple[Any, ...]) -> User:
    return User(str(r[0]), str(r[1]), str(r[2]), float(r[3]), bool(r[4]))


def _version(r: tuple[Any, ...]) -> Version:
    return Version(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]))
