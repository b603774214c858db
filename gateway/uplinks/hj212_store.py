"""HJ 212 backlog and run-time state on disk, in the agent's outbox database.

A platform that is unreachable for hours (a 4G outage, the bureau's server
down) must still get every minute, hour and day record afterwards, in order,
and a restart of the agent in between must not lose them. So each closed
record is committed here before it is sent and deleted only when the platform
acknowledges it (9014), or, for a platform that wants no replies, once it is
written to the socket.

Tables (next to the readings in ``outbox.db``; WAL, its own connection):

- ``hj212_backlog(id, uplink, cn, data_time, cp, qn)``: records in the order
  they closed; bounded per uplink by ``backlog_max`` (oldest evicted,
  counted). ``qn`` is given at the first send and kept for every resend, after
  a reconnect or a restart too: a platform that got a record whose
  acknowledgement was lost sees the same QN again and can drop the copy;
- ``hj212_state(uplink, runtime, base, periods)``: what the platform changed
  (password, intervals, ...), what site.yaml said then, and the statistics of
  the periods still open (saved each minute and at shutdown).

A disk error is logged and counted, never raised: records that could not be
saved are kept in memory and saved with the next ones.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from gateway.uplinks.hj212_station import Record

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hj212_backlog (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uplink TEXT NOT NULL,
    cn TEXT NOT NULL,
    data_time TEXT NOT NULL,
    cp TEXT NOT NULL,
    qn TEXT  -- set at the first send; a resend keeps it, so the platform can tell
);
CREATE INDEX IF NOT EXISTS hj212_backlog_by_uplink ON hj212_backlog (uplink, id);
CREATE TABLE IF NOT EXISTS hj212_state (
    uplink TEXT PRIMARY KEY,
    runtime TEXT NOT NULL DEFAULT '{}',
    base TEXT NOT NULL DEFAULT '{}',
    periods TEXT NOT NULL DEFAULT '{}'
);
"""


class Hj212Store:
    """One uplink's backlog and state; ``path=None`` keeps them in memory (tests, tools)."""

    def __init__(self, path: Path | None, uplink: str, max_records: int) -> None:
        self.uplink = uplink
        self.max_records = max_records
        self.evicted = 0
        self.errors = 0
        self._unsaved: list[Record] = []
        target = ":memory:" if path is None else str(path)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA busy_timeout=5000")  # the outbox writes the same file
        if path is not None:
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.executescript(_SCHEMA)

    def close(self) -> None:
        self._con.close()

    # ------------------------------------------------------------ backlog

    def append(self, records: list[Record]) -> None:
        """Commit records at the tail, evicting the oldest beyond ``max_records``."""
        todo = self._unsaved + records
        if not todo:
            return
        try:
            with self._transaction() as con:
                con.executemany(
                    "INSERT INTO hj212_backlog (uplink, cn, data_time, cp) VALUES (?, ?, ?, ?)",
                    [(self.uplink, r.cn, r.data_time, r.cp) for r in todo],
                )
                over = self._count(con) - self.max_records
                if over > 0:
                    con.execute(
                        "DELETE FROM hj212_backlog WHERE id IN (SELECT id FROM hj212_backlog "
                        "WHERE uplink = ? ORDER BY id LIMIT ?)",
                        (self.uplink, over),
                    )
                    self.evicted += over
                    log.warning(
                        "hj212 %s: backlog full (%d records), dropped the %d oldest",
                        self.uplink,
                        self.max_records,
                        over,
                    )
            self._unsaved = []
        except sqlite3.Error as exc:
            self.errors += 1
            self._unsaved = todo[-self.max_records :]
            log.error("hj212 %s: cannot save records (%s); kept in memory", self.uplink, exc)

    def head(self) -> tuple[int, Record, str | None] | None:
        """The oldest record not yet acknowledged, its row id and QN (if sent before)."""
        if self._unsaved:
            self.append([])
        try:
            row = self._con.execute(
                "SELECT id, cn, data_time, cp, qn FROM hj212_backlog WHERE uplink = ? "
                "ORDER BY id LIMIT 1",
                (self.uplink,),
            ).fetchone()
        except sqlite3.Error as exc:
            self.errors += 1
            log.error("hj212 %s: cannot read the backlog (%s)", self.uplink, exc)
            return None
        return None if row is None else (row[0], Record(row[1], row[2], row[3]), row[4])

    def set_qn(self, row_id: int, qn: str) -> None:
        try:
            self._con.execute("UPDATE hj212_backlog SET qn = ? WHERE id = ?", (qn, row_id))
        except sqlite3.Error as exc:
            self.errors += 1  # a resend then gets a new QN: a duplicate at worst
            log.error("hj212 %s: cannot save a QN (%s)", self.uplink, exc)

    def remove(self, row_id: int) -> None:
        try:
            self._con.execute("DELETE FROM hj212_backlog WHERE id = ?", (row_id,))
        except sqlite3.Error as exc:
            self.errors += 1  # it is sent again later: at least once
            log.error("hj212 %s: cannot delete a sent record (%s)", self.uplink, exc)

    def count(self) -> int:
        try:
            return self._count(self._con) + len(self._unsaved)
        except sqlite3.Error:
            return len(self._unsaved)

    def _count(self, con: sqlite3.Connection) -> int:
        row = con.execute(
            "SELECT count(*) FROM hj212_backlog WHERE uplink = ?", (self.uplink,)
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ state

    def load_state(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """``(runtime, base, periods)`` as saved, or empty dicts."""
        try:
            row = self._con.execute(
                "SELECT runtime, base, periods FROM hj212_state WHERE uplink = ?", (self.uplink,)
            ).fetchone()
            if row is None:
                return {}, {}, {}
            parts = tuple(json.loads(x) for x in row)
            if all(isinstance(x, dict) for x in parts):
                return parts[0], parts[1], parts[2]
        except (sqlite3.Error, ValueError) as exc:
            self.errors += 1
            log.error("hj212 %s: saved state unreadable (%s); starting fresh", self.uplink, exc)
        return {}, {}, {}

    def save_runtime(self, runtime: dict[str, Any], base: dict[str, Any]) -> None:
        self._save(
            "INSERT INTO hj212_state (uplink, runtime, base) VALUES (?, ?, ?) "
            "ON CONFLICT (uplink) DO UPDATE SET runtime = excluded.runtime, base = excluded.base",
            (self.uplink, json.dumps(runtime), json.dumps(base)),
        )

    def save_periods(self, periods: dict[str, Any]) -> None:
        self._save(
            "INSERT INTO hj212_state (uplink, periods) VALUES (?, ?) "
            "ON CONFLICT (uplink) DO UPDATE SET periods = excluded.periods",
            (self.uplink, json.dumps(periods)),
        )

    def _save(self, sql: str, params: tuple[str, ...]) -> None:
        try:
            self._con.execute(sql, params)
        except sqlite3.Error as exc:
            self.errors += 1
            log.error("hj212 %s: cannot save state (%s)", self.uplink, exc)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._con)


class _Transaction:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
