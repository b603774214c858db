"""Store-and-forward outbox: readings are committed to SQLite before they are published.

The agent puts every QoS 1 message (telemetry readings, events) here, publishes
what :meth:`Outbox.pending_for_publish` hands out, and deletes a row when the
broker acknowledges it (PUBACK). A 4G outage, a broker restart, a SIGKILL or a
power cut therefore costs no committed reading; after the link returns the
backlog is replayed with each reading's original ``ts`` and ``seq``, so
InfluxDB puts it in the right place and overwrites a duplicate.

Contract and semantics
----------------------
* **Committed before published.** :meth:`put` buffers in memory and commits in
  batches (one transaction per ``commit_interval_s`` or per ``max_batch`` rows)
  so an SD card is not written once per reading. :meth:`pending_for_publish`
  returns only committed rows: a reading becomes publishable at the next
  commit, i.e. within ``commit_interval_s``. When the link is up the caller
  calls :meth:`commit` right before fetching a batch, so latency stays low.
* **Order and fairness.** Rows are handed out oldest first by row id, which is
  assigned at :meth:`put`; per-device order therefore holds trivially and no
  device can starve another: a reading waits exactly as long as every reading
  put before it. We chose this over round-robin across devices because it keeps
  the table append-only (one B-tree, no secondary index): a commit dirties the
  last page or two instead of one page per device, which is what an SD card
  wears out on. The outbox drains far faster than the uplink (see
  ``tests/bench/bench_outbox.py``), so after an outage the backlog is gone
  within seconds and live readings follow right behind it.
* **In flight.** A row handed out is not handed out again until it is acked or
  :meth:`requeue_inflight` is called (on reconnect), which hands the unacked
  ones out again, in order, before newer rows.
* **At least once.** :meth:`ack` only marks a row; the delete is part of the
  next commit. A crash before that republishes the row with the same ``ts``
  and ``seq``, which InfluxDB overwrites.
* **Sequence numbers.** :meth:`next_seq` counts per key (device). The
  high-water mark is saved in the same transaction as the rows, so after a
  crash every committed (hence every possibly published) reading keeps a seq
  that is never issued again. Seqs handed out to readings that were still in
  the buffer at the crash are issued again: those readings were never
  published, so nobody saw them.
* **Bounds.** At each commit, first rows at the head (lowest ids) whose ``ts``
  is older than ``now - max_age_s`` are evicted (the scan stops at the first
  young row, so a stale row behind a younger one waits its turn), then the
  oldest rows beyond ``max_rows``. Every evicted row is counted; the counter is
  persisted with the rows. Between commits the backlog may exceed
  ``max_rows`` by at most the buffer (``max_batch`` rows).
* **Durability.** WAL journal. With ``synchronous="NORMAL"`` (default) a commit
  is not fsynced until the next checkpoint: a *process* crash (SIGKILL, OOM)
  loses nothing committed, a *power* cut may lose the last commits but never
  corrupts the file. Such a lost commit may already have been published, so its
  seqs may be issued again to new readings (they carry a different ``ts``).
  ``synchronous="FULL"`` fsyncs every commit, closing that gap at the cost of
  one fsync per commit (about one a second: fine for most SD cards).
* **Clock.** ``now`` is wall-clock seconds (``time.time()``): it is compared with
  readings' ``ts`` for ``max_age_s``. If it steps backwards a commit is due at
  once, so an NTP correction never stalls commits.

Not thread-safe: one caller at a time (it may be a worker thread).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

SCHEMA_VERSION = 1
# version n -> n + 1: SQL that turns an outbox written by version n into one of n + 1,
# run in one transaction; whoever bumps SCHEMA_VERSION adds its step here. A file is
# migrated, never emptied: the readings in it have not reached the broker yet.
MIGRATIONS: dict[int, str] = {}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    topic TEXT NOT NULL,
    UNIQUE (key, topic)
);
CREATE TABLE IF NOT EXISTS msg (
    id INTEGER PRIMARY KEY,      -- rowid: append-only, hand-out order
    stream INTEGER NOT NULL,     -- (key, topic) stored once in `stream`
    ts INTEGER NOT NULL,         -- reading time, ms since the epoch
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seq (key TEXT PRIMARY KEY, next INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""

_AGE_SCAN = 512  # rows read per step while looking for stale rows at the head


class OutboxError(Exception):
    """The outbox database cannot be opened or written (path and cause in the message)."""


class Row(NamedTuple):
    """One stored message, as handed out for publishing."""

    id: int
    key: str
    topic: str
    payload: bytes
    ts: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int  # rows put and not yet acked (committed + still buffered)
    inflight: int  # handed out, not yet acked
    evicted: int  # rows dropped by max_rows / max_age since the database was created
    committed: int  # of the backlog, rows already committed (publishable or in flight)
    bytes_on_disk: int  # database + WAL file


class Outbox:
    """SQLite (WAL) store-and-forward queue; see the module docstring for the contract."""

    def __init__(
        self,
        path: Path | str,
        max_rows: int,
        max_age_s: float,
        commit_interval_s: float = 1.0,
        max_batch: int = 500,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if max_rows < 1 or max_batch < 1:
            raise ValueError("max_rows and max_batch must be >= 1")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.commit_interval_s = commit_interval_s
        self.max_batch = max_batch
        # If commits keep failing (disk full, I/O error) the buffer is capped:
        # beyond this, the oldest buffered rows are evicted and counted.
        self.max_buffer = max(max_batch * 20, 10_000)
        self.commits = 0  # successful commits: new rows may be publishable when it changes
        self.commit_errors = 0
        self.last_error: str | None = None
        self._con = self._open(synchronous)
        self._load()

    # ------------------------------------------------------------ opening

    def _open(self, synchronous: str) -> sqlite3.Connection:
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: cannot switch to WAL journal (got {mode})")
            con.execute(f"PRAGMA synchronous={synchronous}")
            con.execute("PRAGMA journal_size_limit=4194304")  # trim the WAL after checkpoints
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path}: outbox schema version {version} is newer than this "
                    f"release's ({SCHEMA_VERSION}); run the release that wrote it to send "
                    "its readings"
                )
            if 0 < version < SCHEMA_VERSION:
                self._migrate(con, version)
            con.executescript(_SCHEMA)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return con
        except sqlite3.Error as exc:
            raise OutboxError(
                f"{self.path}: cannot open outbox database ({exc}); "
                "move the file aside to start with an empty outbox"
            ) from None
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot open outbox database ({exc})") from None

    def _migrate(self, con: sqlite3.Connection, version: int) -> None:
        """Bring an outbox of an older schema ``version`` to SCHEMA_VERSION, all steps
        in one transaction (a crash leaves the old file)."""
        script = "".join(MIGRATIONS[v] + ";\n" for v in range(version, SCHEMA_VERSION))
        con.executescript(f"BEGIN;\n{script}PRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")

    def _load(self) -> None:
        con = self._con
        try:
            self._streams: dict[tuple[str, str], int] = {}
            self._stream_names: dict[int, tuple[str, str]] = {}
            for sid, key, topic in con.execute("SELECT id, key, topic FROM stream"):
                self._streams[(key, topic)] = sid
                self._stream_names[sid] = (key, topic)
            self._seq: dict[str, int] = dict(con.execute("SELECT key, next FROM seq").fetchall())
            meta = dict(con.execute("SELECT name, value FROM meta").fetchall())
            max_id = con.execute("SELECT max(id) FROM msg").fetchone()[0] or 0
            self._count: int = con.execute("SELECT count(*) FROM msg").fetchone()[0]
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: cannot read outbox database ({exc})") from None
        self._evicted: int = meta.get("evicted", 0)
        self._next_id: int = max(max_id, meta.get("last_id", 0)) + 1
        self._next_stream: int = max(self._stream_names, default=0) + 1
        self._saved_meta = {"evicted": self._evicted, "last_id": self._next_id - 1}
        # pending writes
        self._buf: list[tuple[int, int, int, bytes]] = []  # (id, stream, ts, payload)
        self._new_streams: list[tuple[int, str, str]] = []
        self._dirty_seq: set[str] = set()
        self._acked: set[int] = set()  # acked, still in the database until the next commit
        # hand-out state
        self._cursor = 0  # every committed row with id > cursor has not been handed out
        self._inflight: set[int] = set()
        self._requeued: set[int] = set()  # handed out before requeue, not yet handed again
        self._last_commit: float | None = None

    # ------------------------------------------------------------- writing

    def next_seq(self, key: str) -> int:
        """The next sequence number for ``key``; saved with the next commit."""
        n = self._seq.get(key, 0)
        self._seq[key] = n + 1
        self._dirty_seq.add(key)
        return n

    def put(self, key: str, topic: str, payload: bytes, ts_ms: int, now: float) -> int:
        """Buffer one message; returns its row id. Commits when due (never raises for that)."""
        sid = self._streams.get((key, topic))
        if sid is None:
            sid = self._next_stream
            self._next_stream += 1
            self._streams[(key, topic)] = sid
            self._stream_names[sid] = (key, topic)
            self._new_streams.append((sid, key, topic))
        row_id = self._next_id
        self._next_id += 1
        self._buf.append((row_id, sid, int(ts_ms), bytes(payload)))
        if len(self._buf) > self.max_buffer:  # commits are failing: bound memory
            drop = len(self._buf) - self.max_buffer
            del self._buf[:drop]
            self._evicted += drop
        self.maybe_commit(now)
        return row_id

    def _due(self, now: float) -> bool:
        last = self._last_commit
        return (
            last is None
            or now - last >= self.commit_interval_s
            or now < last  # the wall clock stepped back
        )

    def _dirty(self) -> bool:
        return bool(
            self._buf
            or self._acked
            or self._dirty_seq
            or self._new_streams
            or self._evicted != self._saved_meta["evicted"]
        )

    def maybe_commit(self, now: float) -> bool:
        """Commit if the buffer is full or ``commit_interval_s`` has passed.

        Returns True if a commit happened. A failing commit is counted
        (``commit_errors``, ``last_error``) and retried one interval later;
        nothing is lost from the buffer.
        """
        if len(self._buf) < self.max_batch and not self._due(now):
            return False
        if not self._dirty() and not (self._count and self._due(now)):
            return False
        try:
            self.commit(now)
        except OutboxError as exc:
            self.commit_errors += 1
            self.last_error = str(exc)
            self._last_commit = now  # back off for one interval
            return False
        return True

    def commit(self, now: float) -> None:
        """Write buffered rows, acks, evictions and seqs in one transaction.

        Raises :class:`OutboxError` if the database refuses; the in-memory
        state is then unchanged, so a later commit retries everything.
        """
        con = self._con
        buf, acked = self._buf, self._acked
        count = self._count
        evicted_upto = 0
        n_evicted = 0
        try:
            con.execute("BEGIN IMMEDIATE")
            if self._new_streams:
                con.executemany(
                    "INSERT INTO stream (id, key, topic) VALUES (?, ?, ?)", self._new_streams
                )
            if buf:
                con.executemany("INSERT INTO msg (id, stream, ts, payload) VALUES (?,?,?,?)", buf)
                count += len(buf)
            for lo, hi in _runs(acked):
                count -= con.execute("DELETE FROM msg WHERE id BETWEEN ? AND ?", (lo, hi)).rowcount
            if count and self.max_age_s > 0:
                upto = self._stale_prefix(int((now - self.max_age_s) * 1000))
                if upto:
                    n = con.execute("DELETE FROM msg WHERE id <= ?", (upto,)).rowcount
                    count -= n
                    n_evicted += n
                    evicted_upto = upto
            if count > self.max_rows:
                excess = count - self.max_rows
                upto = con.execute(
                    "SELECT id FROM msg ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)
                ).fetchone()[0]
                n = con.execute("DELETE FROM msg WHERE id <= ?", (upto,)).rowcount
                count -= n
                n_evicted += n
                evicted_upto = max(evicted_upto, upto)
            if self._dirty_seq:
                con.executemany(
                    "INSERT INTO seq (key, next) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET next = excluded.next",
                    [(k, self._seq[k]) for k in self._dirty_seq],
                )
            meta = {"evicted": self._evicted + n_evicted, "last_id": self._next_id - 1}
            changed = [(k, v) for k, v in meta.items() if self._saved_meta.get(k) != v]
            if changed:
                con.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    changed,
                )
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            if con.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            raise OutboxError(f"{self.path}: commit failed ({exc})") from None
        # The transaction is durable (as far as `synchronous` promises): adopt it.
        self._count = count
        self._evicted = meta["evicted"]
        self._saved_meta = meta
        self._buf = []
        self._acked = set()
        self._new_streams = []
        self._dirty_seq = set()
        self._last_commit = now
        self.commits += 1
        if evicted_upto:
            self._inflight = {i for i in self._inflight if i > evicted_upto}
            self._requeued = {i for i in self._requeued if i > evicted_upto}

    def _stale_prefix(self, cutoff_ms: int) -> int:
        """Highest id of the run of rows at the head whose ts is older than the cutoff."""
        upto, after = 0, 0
        while True:
            rows = self._con.execute(
                "SELECT id, ts FROM msg WHERE id > ? ORDER BY id LIMIT ?", (after, _AGE_SCAN)
            ).fetchall()
            for row_id, ts in rows:
                if ts >= cutoff_ms:
                    return upto
                upto = row_id
            if len(rows) < _AGE_SCAN:
                return upto
            after = upto

    # ----------------------------------------------------------- draining

    def pending_for_publish(self, limit: int) -> list[Row]:
        """Up to ``limit`` committed rows not yet handed out, oldest first; marks them in flight."""
        out: list[Row] = []
        names = self._stream_names
        while len(out) < limit:
            want = limit - len(out)
            rows = self._con.execute(
                "SELECT id, stream, ts, payload FROM msg WHERE id > ? ORDER BY id LIMIT ?",
                (self._cursor, want),
            ).fetchall()
            if not rows:
                break
            self._cursor = rows[-1][0]
            for row_id, sid, ts, payload in rows:
                if row_id in self._acked:  # acked before a requeue; delete is pending
                    continue
                key, topic = names[sid]
                out.append(Row(row_id, key, topic, payload, ts))
            if len(rows) < want:
                break
        ids = [r.id for r in out]
        self._inflight.update(ids)
        if self._requeued:
            self._requeued.difference_update(ids)
        return out

    def ack(self, row_id: int) -> None:
        """The broker has the row: delete it at the next commit. Unknown ids are ignored."""
        if row_id in self._inflight:
            self._inflight.discard(row_id)
        elif row_id in self._requeued:
            self._requeued.discard(row_id)
        else:
            return
        self._acked.add(row_id)

    def ack_many(self, row_ids: Iterable[int]) -> None:
        for row_id in row_ids:
            self.ack(row_id)

    def requeue_inflight(self) -> int:
        """Hand the unacked rows out again (call on reconnect); returns how many."""
        n = len(self._inflight)
        self._requeued |= self._inflight
        self._inflight = set()
        self._cursor = 0
        return n

    # --------------------------------------------------------------- status

    def stats(self) -> OutboxStats:
        committed = self._count - len(self._acked)
        return OutboxStats(
            backlog=committed + len(self._buf),
            inflight=len(self._inflight),
            evicted=self._evicted,
            committed=committed,
            bytes_on_disk=self._bytes_on_disk(),
        )

    def _bytes_on_disk(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    def close(self, commit: bool = True, now: float | None = None) -> None:
        """Commit what is buffered (unless ``commit`` is False) and close the database."""
        try:
            if commit and self._dirty():
                self.commit(time.time() if now is None else now)
        finally:
            self._con.close()


def _runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive integers."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out
